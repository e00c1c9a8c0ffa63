"""Drives a running `factum serve` with KurrentDB's Python clients
(kurrentdbclient or esdbclient, from PyPI; see harness.py): the client
decides what is right, not us.

Usage: python_client.py HOST:PORT [kurrentdbclient|esdbclient]
(the server runs with --max-append-bytes 1048576)
"""
import queue
import threading
import time
import uuid

from harness import (
    CA, PACKAGE, PREFIX_FILTERS, MaximumAppendSizeExceeded, NewEvent, NotFound, StreamIsDeleted, StreamState,
    WrongCurrentVersion, connect, known_gap, name, raises, row, run,
)

client = connect()


def ev(t, data=b"{}"):
    return NewEvent(type=t, data=data)


def take_until(items, last_id, seconds=10):
    """The ids `items` yields up to and including `last_id` (events only;
    read on a thread, so a missing event fails instead of hanging)."""
    q = queue.Queue()

    def run():
        try:
            for item in items:
                if type(item).__name__ in ("RecordedEvent", "PersistentSubscriptionEvent") or hasattr(item, "ack_id"):
                    q.put(item)
        except Exception as err:  # the call ended: stop() or an error
            q.put(err)

    threading.Thread(target=run, daemon=True).start()
    got = []
    deadline = time.time() + seconds
    while True:
        try:
            item = q.get(timeout=max(0.0, deadline - time.time()))
        except queue.Empty:
            raise AssertionError(f"{last_id} not delivered within {seconds}s; got {got}")
        if isinstance(item, Exception):
            raise AssertionError(f"the subscription ended: {item!r}; got {got}")
        got.append(item)
        if item.id == last_id:
            return got


def test_000_positions_on_an_empty_store():
    """Runs first (name order), while the store is empty. The first event of a store is
    at commit position 1: this client takes 0 for "before everything"
    (an empty store's commit position, an exclusive start), so
    "read the current position, then subscribe from it" and "subscribe
    from the stored checkpoint, 0 at first" must deliver the first event
    (issue 13.1). The same for a $all consumer group started at 0.

    A secure store is never empty (its first start writes the users
    `admin` and `ops`, as KurrentDB's does): there the check does not apply."""
    if CA:
        print(f"{PACKAGE} (secure: the store holds its users; no empty-store check)")
        return
    start = client.get_commit_position(filter_exclude=[])
    assert start == 0, start
    from_current = client.subscribe_to_all(commit_position=start, filter_exclude=[])
    from_zero = client.subscribe_to_all(commit_position=0, filter_exclude=[])
    s = name("first")
    client.append_to_stream(s, current_version=StreamState.NO_STREAM,
                            events=[ev(f"First{i}") for i in range(3)])
    written = list(client.read_all(filter_exclude=[]))
    ids = [e.id for e in written]
    assert [e.stream_name for e in written] == [s] * 3, written
    assert [e.commit_position for e in written] == [1, 2, 3], [e.commit_position for e in written]
    assert client.get_commit_position(filter_exclude=[]) == 3
    for what, sub in (("from the empty store's position", from_current), ("from 0", from_zero)):
        got = [e.id for e in take_until(sub, ids[-1])]
        sub.stop()
        assert got == ids, (what, got, ids)
    # Reading from 0 is inclusive of nothing before the first event.
    assert [e.id for e in client.read_all(commit_position=0, filter_exclude=[])] == ids
    group = name("from0")
    client.create_subscription_to_all(group, commit_position=0)
    sub = client.read_subscription_to_all(group)
    got = take_until(sub, ids[-1])
    for e in got:
        sub.ack(e)
    sub.stop()
    assert [e.id for e in got] == ids, ("$all group from 0", [e.id for e in got], ids)


def test_resume_from_a_checkpoint_taken_mid_stream():
    """A subscriber stores the position of the last event it handled and
    resumes from it: every event exactly once."""
    tag = uuid.uuid4().hex[:8]
    s = name("mid")
    client.append_to_stream(s, current_version=StreamState.NO_STREAM,
                            events=[ev(f"Mid{tag}", f'{{"i":{i}}}'.encode()) for i in range(10)])
    ids = [e.id for e in client.get_stream(s)]
    sub = client.subscribe_to_all(commit_position=0, filter_include=[f"Mid{tag}"])
    first = take_until(sub, ids[4])
    sub.stop()
    checkpoint = first[-1].commit_position
    sub = client.subscribe_to_all(commit_position=checkpoint, filter_include=[f"Mid{tag}"])
    rest = take_until(sub, ids[-1])
    sub.stop()
    assert [e.id for e in first] + [e.id for e in rest] == ids, (checkpoint, first, rest)


def test_expected_revision_forms_and_conflicts():
    s = name("acct")
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("Opened")])
    raises(WrongCurrentVersion, client.append_to_stream, s,
           current_version=StreamState.NO_STREAM, events=[ev("X")])
    client.append_to_stream(s, current_version=0, events=[ev("Deposited"), ev("Deposited")])
    raises(WrongCurrentVersion, client.append_to_stream, s, current_version=0, events=[ev("X")])
    client.append_to_stream(s, current_version=StreamState.EXISTS, events=[ev("Withdrawn")])
    raises(WrongCurrentVersion, client.append_to_stream, name("none"),
           current_version=StreamState.EXISTS, events=[ev("X")])
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev("Closed")])
    assert client.get_current_version(s) == 4
    assert client.get_current_version(name("none")) is StreamState.NO_STREAM
    e = raises(WrongCurrentVersion, client.append_to_stream, s, current_version=1, events=[ev("X")])
    assert "4" in str(e), e  # KurrentDB's message names the actual version
    # The same check guards deletes, tombstones and metadata.
    raises(WrongCurrentVersion, client.delete_stream, s, current_version=3)
    raises(WrongCurrentVersion, client.tombstone_stream, s, current_version=StreamState.NO_STREAM)
    raises(WrongCurrentVersion, client.set_stream_metadata, s, metadata={}, current_version=0)
    assert client.get_current_version(s) == 4


def test_idempotent_retry():
    s = name("idem")
    e = ev("Once")
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[e])
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[e])
    assert len(client.get_stream(s)) == 1


def test_read_forwards_backwards_and_from():
    s = name("rd")
    client.append_to_stream(s, current_version=StreamState.ANY,
                            events=[ev(f"E{i}", f'{{"i":{i}}}'.encode()) for i in range(10)])
    fwd = client.get_stream(s)
    assert [e.stream_position for e in fwd] == list(range(10))
    bwd = client.get_stream(s, backwards=True, limit=3)
    assert [e.stream_position for e in bwd] == [9, 8, 7]
    frm = client.get_stream(s, stream_position=5, limit=2)
    assert [e.type for e in frm] == ["E5", "E6"]
    assert fwd[3].data == b'{"i":3}' and fwd[3].content_type == "application/json"
    assert fwd[0].recorded_at is not None


def test_read_all_with_filters():
    tag = uuid.uuid4().hex[:8]
    s1, s2 = f"flt{tag}-1", f"other{tag}-1"
    client.append_to_stream(s1, current_version=StreamState.ANY, events=[ev(f"Alpha{tag}"), ev(f"Beta{tag}")])
    client.append_to_stream(s2, current_version=StreamState.ANY, events=[ev(f"Alpha{tag}")])
    by_type = list(client.read_all(filter_include=[f"Alpha{tag}"]))
    assert [e.stream_name for e in by_type] == [s1, s2], by_type
    # Regular expressions on event types and on stream names.
    by_type_regex = list(client.read_all(filter_include=[f"(Al|Be)[a-z]+{tag}"]))
    assert [(e.stream_name, e.type) for e in by_type_regex] == \
        [(s1, f"Alpha{tag}"), (s1, f"Beta{tag}"), (s2, f"Alpha{tag}")], by_type_regex
    by_name_regex = list(client.read_all(filter_include=[f"flt{tag}-.*"], filter_by_stream_name=True))
    assert [e.type for e in by_name_regex] == [f"Alpha{tag}", f"Beta{tag}"], by_name_regex
    if PREFIX_FILTERS:
        by_prefix = list(client.read_all(filter_include=[f"flt{tag}"], filter_by_stream_name=True,
                                         filter_by_prefix=True))
        assert [e.type for e in by_prefix] == [f"Alpha{tag}", f"Beta{tag}"]
        by_type_prefix = list(client.read_all(filter_include=[f"Alpha{tag}"], filter_by_prefix=True))
        assert [e.stream_name for e in by_type_prefix] == [s1, s2]
    # Max count with a filter counts matching events only.
    assert len(list(client.read_all(filter_include=[f"flt{tag}-.*"], filter_by_stream_name=True, limit=1))) == 1
    # The default filter excludes system events with a look-ahead regex.
    assert all(not e.type.startswith("$") for e in client.read_all(limit=500))
    back = list(client.read_all(backwards=True, limit=2, filter_exclude=[]))
    assert back[0].commit_position > back[1].commit_position
    pos = by_type[1].commit_position
    again = list(client.read_all(commit_position=pos, limit=1, filter_exclude=[]))
    assert again[0].id == by_type[1].id


def test_catch_up_then_live_stream_subscription():
    s = name("sub")
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev("Before")])
    sub = client.subscribe_to_stream(s, include_caught_up=True)
    seen = []
    for item in sub:
        kind = type(item).__name__
        seen.append(kind if kind == "CaughtUp" else item.type)
        if kind == "CaughtUp":
            client.append_to_stream(s, current_version=0, events=[ev("After")])
        if seen[-1] == "After":
            break
    sub.stop()
    assert seen == ["Before", "CaughtUp", "After"], seen


def test_filtered_all_subscription_with_checkpoints():
    tag = uuid.uuid4().hex[:8]
    start = client.get_commit_position(filter_exclude=[])
    client.append_to_stream(name("noise"), current_version=StreamState.ANY,
                            events=[ev("Noise") for _ in range(30)])
    client.append_to_stream(name("hit"), current_version=StreamState.ANY, events=[ev(f"Hit{tag}")])
    sub = client.subscribe_to_all(commit_position=start, filter_include=[f"Hit{tag}"],
                                  include_checkpoints=True, window_size=5,
                                  checkpoint_interval_multiplier=2, include_caught_up=True)
    checkpoints, hits = 0, 0
    for item in sub:
        kind = type(item).__name__
        if kind == "Checkpoint":
            checkpoints += 1
        elif kind == "RecordedEvent":
            assert item.type == f"Hit{tag}"
            hits += 1
        elif kind == "CaughtUp":
            break
    sub.stop()
    assert hits == 1 and checkpoints >= 3, (hits, checkpoints)


def test_catch_up_subscriptions_from_the_start_and_from_a_checkpoint():
    s = name("ckpt")
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev(f"E{i}") for i in range(5)])
    recorded = client.get_stream(s)

    def take(sub, n, then=None):
        """The next n events of sub (past CaughtUp and checkpoints), then nothing more."""
        got = []
        for item in sub:
            kind = type(item).__name__
            if kind == "CaughtUp" and then:
                then()
                then = None
            elif kind == "RecordedEvent":
                got.append(item)
                if len(got) == n:
                    break
        sub.stop()
        return got

    # From a checkpoint in $all (exclusive): the events after it, each once,
    # and live ones after catching up.
    checkpoint = recorded[2].commit_position
    sub = client.subscribe_to_all(commit_position=checkpoint, filter_include=[s], filter_by_stream_name=True,
                                  include_caught_up=True)
    got = take(sub, 3, then=lambda: client.append_to_stream(s, current_version=4, events=[ev("E5")]))
    assert [e.type for e in got] == ["E3", "E4", "E5"], got
    # From a checkpoint in the stream (exclusive).
    got = take(client.subscribe_to_stream(s, stream_position=2), 3)
    assert [e.stream_position for e in got] == [3, 4, 5], got
    # From the start of $all: the store's first event first.
    first = list(client.read_all(limit=1, filter_exclude=[]))[0]
    got = take(client.subscribe_to_all(filter_exclude=[]), 1)
    assert got[0].id == first.id, (got[0], first)
    # From commit position 0, the checkpoint clients store before they have
    # seen anything: in KurrentDB no event is at 0, so the first comes too.
    with row("position-0: subscribe_to_all(commit_position=0) delivers the first event"):
        got = take(client.subscribe_to_all(commit_position=0, filter_exclude=[]), 1)
        assert got[0].id == first.id, f"first event {first.commit_position}, got {got[0].commit_position}"


def test_delete_and_tombstone():
    s = name("del")
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev("A"), ev("B")])
    raises(WrongCurrentVersion, client.delete_stream, s, current_version=0)
    client.delete_stream(s, current_version=1)
    raises(NotFound, client.get_stream, s)
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("C")])
    assert [e.stream_position for e in client.get_stream(s)] == [2]
    client.tombstone_stream(s, current_version=StreamState.ANY)
    raises(StreamIsDeleted, client.get_stream, s)
    raises(StreamIsDeleted, client.append_to_stream, s, current_version=StreamState.ANY, events=[ev("D")])
    raises(NotFound, client.delete_stream, name("never"), current_version=StreamState.ANY)


def deleted_stream():
    """A stream with revisions 0..1, soft-deleted with expected revision 1."""
    s = name("soft")
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("A"), ev("B")])
    client.delete_stream(s, current_version=1)
    return s


def test_soft_delete_and_recreate_as_kurrentdb():
    # Each row of KurrentDB's soft-delete rules on a stream of its own, so
    # a gap in one does not hide another.
    s = deleted_stream()
    raises(NotFound, client.get_stream, s)
    assert client.get_current_version(s) is StreamState.NO_STREAM
    # Appending with "no stream" recreates it after the old last revision.
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("C")])
    assert [(e.stream_position, e.type) for e in client.get_stream(s)] == [(2, "C")]
    # So does "any".
    s = deleted_stream()
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev("C")])
    assert [e.stream_position for e in client.get_stream(s)] == [2]

    with row("soft-delete: metadata right after the delete is $tb = i64::MAX"):
        md, _ = client.get_stream_metadata(deleted_stream())
        assert md == {"$tb": 9223372036854775807}, md
    with row("soft-delete: deleting again with the last revision succeeds"):
        client.delete_stream(deleted_stream(), current_version=1)
    with row("soft-delete: deleting again with an older revision is WrongExpectedVersion"):
        raises(WrongCurrentVersion, client.delete_stream, deleted_stream(), current_version=0)
    with row("soft-delete: deleting again with 'exists' is StreamDeleted"):
        raises(StreamIsDeleted, client.delete_stream, deleted_stream(), current_version=StreamState.EXISTS)
    with row("soft-delete: appending with 'exists' is StreamDeleted"):
        raises(StreamIsDeleted, client.append_to_stream, deleted_stream(), current_version=StreamState.EXISTS,
               events=[ev("C")])
    with row("soft-delete: appending with the last revision recreates the stream, $tb moves"):
        s = deleted_stream()
        client.append_to_stream(s, current_version=1, events=[ev("C")])
        assert [e.stream_position for e in client.get_stream(s)] == [2]
        md, _ = client.get_stream_metadata(s)
        assert md.get("$tb") == 2, md
    with row("soft-delete: a user's $tb = i64::MAX is a soft delete, and an append recreates"):
        s = name("usertb")
        client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("A"), ev("B")])
        client.set_stream_metadata(s, metadata={"$tb": 9223372036854775807})
        raises(NotFound, client.get_stream, s)
        client.append_to_stream(s, current_version=1, events=[ev("C")])
        assert [e.stream_position for e in client.get_stream(s)] == [2]


def test_soft_delete_versions_all_order_and_metadata_recreate():
    # KurrentDB's answers around a soft delete (ADR 26): metadata versions,
    # the server's own $metadata event in $all, a metadata write recreating.
    s = name("sdel")
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev("A"), ev("B")])
    client.delete_stream(s, current_version=1)
    md, version = client.get_stream_metadata(s)
    assert md == {"$tb": 9223372036854775807} and version == 0, (md, version)
    client.delete_stream(s, current_version=1)
    raises(WrongCurrentVersion, client.delete_stream, s, current_version=0)
    raises(StreamIsDeleted, client.delete_stream, s, current_version=StreamState.EXISTS)
    raises(StreamIsDeleted, client.append_to_stream, s, current_version=StreamState.EXISTS, events=[ev("X")])
    raises(WrongCurrentVersion, client.append_to_stream, s, current_version=0, events=[ev("X")])
    client.append_to_stream(s, current_version=1, events=[ev("C")])
    assert [e.stream_position for e in client.get_stream(s)] == [2]
    md, version = client.get_stream_metadata(s)
    assert md == {"$tb": 2} and version == 2, (md, version)
    # In $all the recreating event, then the server's own $metadata event.
    tail = list(client.read_all(backwards=True, limit=2, filter_exclude=[]))
    assert [(e.stream_name, e.type) for e in reversed(tail)] == [(s, "C"), ("$$" + s, "$metadata")], tail
    raises(WrongCurrentVersion, client.append_to_stream, s, current_version=StreamState.NO_STREAM, events=[ev("D")])

    # A metadata write recreates too; a user's $tb = i64::MAX soft-deletes.
    m = name("sdel")
    client.append_to_stream(m, current_version=StreamState.ANY, events=[ev("A"), ev("B")])
    client.set_stream_metadata(m, metadata={"$tb": 9223372036854775807, "owner": "ops"}, current_version=StreamState.NO_STREAM)
    raises(NotFound, client.get_stream, m)
    client.append_to_stream(m, current_version=StreamState.NO_STREAM, events=[ev("C")])
    assert [e.stream_position for e in client.get_stream(m)] == [2]
    md, version = client.get_stream_metadata(m)
    assert md == {"$tb": 2, "owner": "ops"} and version == 1, (md, version)


def test_stream_metadata():
    s = name("meta")
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev(f"E{i}") for i in range(5)])
    md, version = client.get_stream_metadata(s)
    assert md == {} and version is StreamState.NO_STREAM, (md, version)
    client.set_stream_metadata(s, metadata={"$maxCount": 2, "owner": "ops"}, current_version=StreamState.NO_STREAM)
    md, version = client.get_stream_metadata(s)
    assert md["$maxCount"] == 2 and md["owner"] == "ops" and version == 0, (md, version)
    assert [e.type for e in client.get_stream(s)] == ["E3", "E4"]
    raises(WrongCurrentVersion, client.set_stream_metadata, s, metadata={}, current_version=5)


def test_category_and_event_type_streams():
    cat = "cat" + uuid.uuid4().hex[:8]
    t = "Typ" + uuid.uuid4().hex[:8]
    client.append_to_stream(f"{cat}-1", current_version=StreamState.ANY, events=[ev(t)])
    client.append_to_stream(f"{cat}-2", current_version=StreamState.ANY, events=[ev("Other")])
    links = client.get_stream(f"$ce-{cat}")
    assert [e.type for e in links] == ["$>", "$>"]
    assert links[0].data == f"0@{cat}-1".encode(), links[0].data
    resolved = client.get_stream(f"$ce-{cat}", resolve_links=True)
    assert [e.stream_name for e in resolved] == [f"{cat}-1", f"{cat}-2"]
    assert resolved[1].link.stream_name == f"$ce-{cat}" and resolved[1].link.stream_position == 1
    by_type = client.get_stream(f"$et-{t}", resolve_links=True)
    assert [e.stream_name for e in by_type] == [f"{cat}-1"]
    assert by_type[0].link.type == "$>"


def test_bad_input_and_server_keeps_serving():
    raises(NotFound, client.get_stream, name("unknown"))
    # Over the server's append limit (1 MiB), in two events or one (which
    # the server refuses unread): KurrentDB's error, the client's own type.
    for events in ([ev("Big", b"x" * (700 * 1024)), ev("Big", b"x" * (700 * 1024))],
                   [ev("Big", b"x" * (1536 * 1024))], [ev("Huge", b"x" * (3 * 1024 * 1024))]):
        s = name("big")
        raises(MaximumAppendSizeExceeded, client.append_to_stream, s, current_version=StreamState.ANY, events=events)
        raises(NotFound, client.get_stream, s)
    # Invalid names: the server answers INVALID_ARGUMENT with a reason.
    for bad in ["bad\x00name", ""]:
        try:
            client.append_to_stream(bad, current_version=StreamState.ANY, events=[ev("X")])
        except Exception as e:
            assert "stream name" in str(e) or "control character" in str(e), repr(e)
        else:
            raise AssertionError(f"the stream name {bad!r} was accepted")
    raises(Exception, client.get_stream, "")
    s = name("after")
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("Fine")])
    assert len(client.get_stream(s)) == 1


def test_discover_connection_string():
    c = connect(discover=True)
    s = name("disc")
    c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("Found")])
    assert len(c.get_stream(s)) == 1
    members = c.read_gossip()
    assert len(members) == 1 and members[0].state == "NODE_STATE_LEADER", members
    c.close()


run("client", globals(), client)
