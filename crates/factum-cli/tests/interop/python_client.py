"""Drives a running `factum serve` with KurrentDB's Python client
(kurrentdbclient, from PyPI): the client decides what is right, not us.

Usage: python_client.py HOST:PORT   (the server runs with --max-append-bytes 1048576)
"""
import queue
import sys
import threading
import time
import traceback
import uuid

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import (
    MaximumAppendSizeExceededError,
    NotFoundError,
    StreamIsDeletedError,
    WrongCurrentVersionError,
)

ADDR = sys.argv[1]
client = KurrentDBClient(uri=f"esdb://{ADDR}?tls=false")


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ev(t, data=b"{}"):
    return NewEvent(type=t, data=data)


def raises(exc, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc:
        return
    raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}")


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


def positions_on_an_empty_store():
    """Runs first, while the store is empty. The first event of a store is
    at commit position 1: this client takes 0 for "before everything"
    (an empty store's commit position, an exclusive start), so
    "read the current position, then subscribe from it" and "subscribe
    from the stored checkpoint, 0 at first" must deliver the first event
    (issue 13.1). The same for a $all consumer group started at 0."""
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
    raises(WrongCurrentVersionError, client.append_to_stream, s,
           current_version=StreamState.NO_STREAM, events=[ev("X")])
    client.append_to_stream(s, current_version=0, events=[ev("Deposited"), ev("Deposited")])
    raises(WrongCurrentVersionError, client.append_to_stream, s, current_version=0, events=[ev("X")])
    client.append_to_stream(s, current_version=StreamState.EXISTS, events=[ev("Withdrawn")])
    raises(WrongCurrentVersionError, client.append_to_stream, name("none"),
           current_version=StreamState.EXISTS, events=[ev("X")])
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev("Closed")])
    assert client.get_current_version(s) == 4
    assert client.get_current_version(name("none")) is StreamState.NO_STREAM
    try:
        client.append_to_stream(s, current_version=1, events=[ev("X")])
    except WrongCurrentVersionError as e:
        assert e.actual_version == 4, e.actual_version


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
    by_prefix = list(client.read_all(filter_include=[f"flt{tag}"], filter_by_stream_name=True, filter_by_prefix=True))
    assert [e.type for e in by_prefix] == [f"Alpha{tag}", f"Beta{tag}"]
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


def test_delete_and_tombstone():
    s = name("del")
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev("A"), ev("B")])
    raises(WrongCurrentVersionError, client.delete_stream, s, current_version=0)
    client.delete_stream(s, current_version=1)
    raises(NotFoundError, client.get_stream, s)
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("C")])
    assert [e.stream_position for e in client.get_stream(s)] == [2]
    client.tombstone_stream(s, current_version=StreamState.ANY)
    raises(StreamIsDeletedError, client.get_stream, s)
    raises(StreamIsDeletedError, client.append_to_stream, s, current_version=StreamState.ANY, events=[ev("D")])
    raises(NotFoundError, client.delete_stream, name("never"), current_version=StreamState.ANY)


def test_stream_metadata():
    s = name("meta")
    client.append_to_stream(s, current_version=StreamState.ANY, events=[ev(f"E{i}") for i in range(5)])
    md, version = client.get_stream_metadata(s)
    assert md == {} and version is StreamState.NO_STREAM, (md, version)
    client.set_stream_metadata(s, metadata={"$maxCount": 2, "owner": "ops"}, current_version=StreamState.NO_STREAM)
    md, version = client.get_stream_metadata(s)
    assert md["$maxCount"] == 2 and md["owner"] == "ops" and version == 0, (md, version)
    assert [e.type for e in client.get_stream(s)] == ["E3", "E4"]
    raises(WrongCurrentVersionError, client.set_stream_metadata, s, metadata={}, current_version=5)


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
    raises(NotFoundError, client.get_stream, name("unknown"))
    # Over the server's append limit (1 MiB): KurrentDB's error.
    raises(MaximumAppendSizeExceededError, client.append_to_stream, name("big"),
           current_version=StreamState.ANY, events=[ev("Big", b"x" * (1536 * 1024))])
    # Over the gRPC message limit: RESOURCE_EXHAUSTED from the transport.
    try:
        client.append_to_stream(name("huge"), current_version=StreamState.ANY,
                                events=[ev("Huge", b"x" * (3 * 1024 * 1024))])
    except Exception as e:
        assert "RESOURCE_EXHAUSTED" in str(e), repr(e)
    else:
        raise AssertionError("a 3 MiB message was accepted")
    try:
        client.append_to_stream("bad\x00name", current_version=StreamState.ANY, events=[ev("X")])
    except Exception as e:  # the server answers INVALID_ARGUMENT
        assert "invalid stream name" in str(e) or "control character" in str(e), repr(e)
    else:
        raise AssertionError("a name with a NUL was accepted")
    s = name("after")
    client.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("Fine")])
    assert len(client.get_stream(s)) == 1


def test_discover_connection_string():
    c = KurrentDBClient(uri=f"esdb+discover://{ADDR}?tls=false")
    s = name("disc")
    c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev("Found")])
    assert len(c.get_stream(s)) == 1
    members = c.read_gossip()
    assert len(members) == 1 and members[0].state == "NODE_STATE_LEADER", members
    c.close()


def main():
    # The empty-store scenario first, while the store is empty.
    tests = [("positions_on_an_empty_store", positions_on_an_empty_store)]
    tests += [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_")]
    passed = failed = 0
    for n, f in tests:
        t0 = time.time()
        try:
            f()
            passed += 1
            print(f"python ok   {n} ({time.time() - t0:.2f}s)")
        except Exception:
            failed += 1
            print(f"python FAIL {n}")
            traceback.print_exc()
    print(f"python client: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


main()
