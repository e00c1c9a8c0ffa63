"""Persistent subscriptions (consumer groups) of a running `factum serve`,
driven by KurrentDB's Python clients (kurrentdbclient or esdbclient, from
PyPI; see harness.py): the client decides what is right, not us.

Usage: python_persistent.py HOST:PORT [kurrentdbclient|esdbclient]
"""
import queue
import threading
import time
import uuid

from harness import (
    INFO_HAS_CONNECTIONS, AlreadyExists, MaximumSubscriptionsReached, NewEvent, NotFound, StreamState, connect, name,
    raises, run,
)

client = connect()
# Checkpoints as soon as anything was handled, so info shows them quickly.
FAST = dict(checkpoint_after=0.1, min_checkpoint_count=1, max_checkpoint_count=1000)
WAIT = 10.0


def append(stream, n, t="Happened"):
    client.append_to_stream(stream, current_version=StreamState.ANY,
                            events=[NewEvent(type=t, data=b"{}") for _ in range(n)])


class Consumer:
    """A subscription read on a thread into a queue, so reads can time out."""

    def __init__(self, group, stream=None, buffer=10):
        if stream is None:
            self.sub = client.read_subscription_to_all(group, event_buffer_size=buffer)
        else:
            self.sub = client.read_subscription_to_stream(group, stream, event_buffer_size=buffer)
        self.q = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for e in self.sub:
                self.q.put(("event", e))
            self.q.put(("end", None))
        except Exception as err:  # the server ended the call with an error
            self.q.put(("error", err))

    def next(self, timeout=WAIT):
        try:
            kind, item = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None
        if kind != "event":
            raise AssertionError(f"the subscription ended ({kind}: {item!r})")
        return item

    def nothing_for(self, seconds):
        try:
            kind, item = self.q.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected {kind}: {item!r}")

    def ended(self, timeout=WAIT):
        """Waits for the end of the call; the events still queued are returned."""
        left = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                kind, item = self.q.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if kind == "event":
                left.append(item)
            else:
                return left
        raise AssertionError("the subscription did not end")

    def stop(self):
        self.sub.stop()


def poll(what, fn, timeout=WAIT):
    """Calls fn until it returns something truthy; fails with `what`."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def info(group, stream=None):
    return client.get_subscription_info(group, stream)



def commit_of(position):
    """C:123/P:123 → 123; -1 when there is none."""
    if not position:
        return -1
    commit, prepare = position.split("/")
    assert commit.startswith("C:") and prepare.startswith("P:"), position
    return int(commit[2:])


def settled(group, stream=None):
    """Acks travel in batches: wait until the group has nothing in flight."""
    return poll("no events in flight", lambda: (lambda i: i if i.total_in_flight_messages == 0 else None)(info(group, stream)))


def test_create_errors_update_list_delete():
    s = name("orders")
    append(s, 3)
    client.create_subscription_to_stream("g", s, consumer_strategy="RoundRobin", max_subscriber_count=2, **FAST)
    raises(AlreadyExists, client.create_subscription_to_stream, "g", s)
    raises(NotFound, client.delete_subscription, "nope", s)
    raises(NotFound, client.get_subscription_info, "nope", s)
    i = info("g", s)
    assert (i.group_name, i.event_source, i.start_from) == ("g", s, "0"), i
    assert i.consumer_strategy == "RoundRobin" and i.max_subscriber_count == 2, i
    assert i.checkpoint_after == 0.1 and i.min_checkpoint_count == 1, i

    # Update: settings change, group stays (the client reads info first and
    # sends every setting back).
    client.update_subscription_to_stream("g", s, max_subscriber_count=3, message_timeout=5.0, max_retry_count=4)
    i = info("g", s)
    assert (i.max_subscriber_count, i.message_timeout, i.max_retry_count) == (3, 5.0, 4), i
    assert i.consumer_strategy == "RoundRobin" and i.start_from == "0", i
    client.update_subscription_to_stream("g", s, consumer_strategy="Pinned")
    assert info("g", s).consumer_strategy == "Pinned"
    client.update_subscription_to_stream("g", s, consumer_strategy="DispatchToSingle")
    got = info("g", s).consumer_strategy
    assert got == "DispatchToSingle", got
    raises(NotFound, client.update_subscription_to_stream, "nope", s)

    # List: all, and per stream; another stream's groups are not listed.
    other = name("other")
    client.create_subscription_to_stream("g2", other, from_end=True)
    everything = {(x.event_source, x.group_name) for x in client.list_subscriptions()}
    assert {(s, "g"), (other, "g2")} <= everything, everything
    mine = client.list_subscriptions_to_stream(s)
    assert [(x.event_source, x.group_name) for x in mine] == [(s, "g")], mine
    assert client.get_subscription_info("g2", other).start_from == "-1"

    # Delete; then the group is gone everywhere.
    client.delete_subscription("g", s)
    client.delete_subscription("g2", other)
    raises(NotFound, client.get_subscription_info, "g", s)
    raises(NotFound, client.delete_subscription, "g", s)
    assert client.list_subscriptions_to_stream(s) == []  # the client maps NOT_FOUND to []
    everything = {(x.event_source, x.group_name) for x in client.list_subscriptions()}
    assert (s, "g") not in everything and (other, "g2") not in everything, everything
    # A deleted group can be created again.
    client.create_subscription_to_stream("g", s)
    client.delete_subscription("g", s)


def test_round_robin_two_consumers_and_maximum():
    s = name("jobs")
    append(s, 20)
    client.create_subscription_to_stream("g", s, consumer_strategy="RoundRobin", max_subscriber_count=2, **FAST)
    a = Consumer("g", s, buffer=10)
    b = Consumer("g", s, buffer=10)
    # Each holds at most 10 unacked: 20 events are shared, none twice.
    got = {"a": [a.next() for _ in range(10)], "b": [b.next() for _ in range(10)]}
    revs = sorted(e.stream_position for es in got.values() for e in es)
    assert revs == list(range(20)), f"missing or duplicated: {revs}"
    for c, label in ((a, "a"), (b, "b")):
        for e in got[label]:
            c.sub.ack(e)
    settled("g", s)
    i = info("g", s)
    assert i.consumer_strategy == "RoundRobin", i
    if INFO_HAS_CONNECTIONS:
        assert len(i.connections) == 2, i.connections
        assert i.connections[0].from_, i.connections

    # A third consumer is over the maximum of two.
    try:
        third = Consumer("g", s)
    except MaximumSubscriptionsReached:
        pass
    else:
        third.stop()
        raise AssertionError("a third consumer was accepted over the maximum of 2")

    # Live events go round robin: with both idle, 10 new ones split 5/5.
    append(s, 10)
    live = {"a": [a.next() for _ in range(5)], "b": [b.next() for _ in range(5)]}
    a.nothing_for(0.3)
    b.nothing_for(0.1)
    revs = sorted(e.stream_position for es in live.values() for e in es)
    assert revs == list(range(20, 30)), revs
    for c, label in ((a, "a"), (b, "b")):
        for e in live[label]:
            c.sub.ack(e)
    settled("g", s)
    poll("checkpoint at 29", lambda: info("g", s).last_checkpointed_event_position == "29")
    a.stop()
    b.stop()
    if INFO_HAS_CONNECTIONS:
        poll("no connections after stop", lambda: info("g", s).connections == [])
    client.delete_subscription("g", s)


def test_nack_park_retry_skip_replay_and_stop():
    s = name("work")
    append(s, 4)
    client.create_subscription_to_stream("g", s, consumer_strategy="RoundRobin", **FAST)
    a = Consumer("g", s, buffer=10)
    first = [a.next() for _ in range(4)]
    assert [e.stream_position for e in first] == [0, 1, 2, 3], first
    assert all(e.retry_count == 0 for e in first), [e.retry_count for e in first]
    a.sub.nack(first[0], "park")
    a.sub.nack(first[1], "retry")
    a.sub.nack(first[2], "skip")
    a.sub.ack(first[3])
    again = a.next()
    assert again.stream_position == 1 and again.retry_count == 1, (again.stream_position, again.retry_count)
    assert again.id == first[1].id
    a.sub.ack(again)
    a.nothing_for(0.3)  # parked and skipped events do not come back by themselves

    # Info: one parked, the checkpoint past everything handled, our connection.
    i = poll("one parked event and the checkpoint at 3",
             lambda: (lambda i: i if i.parked_message_count == 1
                      and i.last_checkpointed_event_position == "3" else None)(info("g", s)))
    assert i.total_in_flight_messages == 0, i
    assert not INFO_HAS_CONNECTIONS or len(i.connections) == 1, i
    assert i.last_known_event_position == "3", i.last_known_event_position

    # Replay the parked event: it is delivered again, to the same group.
    client.replay_parked_events("g", s)
    replayed = a.next()
    assert replayed.stream_position == 0 and replayed.id == first[0].id, replayed
    a.sub.ack(replayed)
    poll("no parked events after the replay", lambda: info("g", s).parked_message_count == 0)
    raises(NotFound, client.replay_parked_events, "nope", s)

    # Stop: the server ends the consumer's call; the event goes to the next.
    append(s, 1)
    e = a.next()
    assert e.stream_position == 4, e.stream_position
    a.sub.nack(e, "stop")
    a.ended()
    if INFO_HAS_CONNECTIONS:
        poll("no connections after a stop nack", lambda: info("g", s).connections == [])
    b = Consumer("g", s)
    e = b.next()
    assert e.stream_position == 4, e.stream_position
    b.sub.ack(e)
    settled("g", s)
    b.stop()
    client.delete_subscription("g", s)


def test_all_with_filter():
    tag = uuid.uuid4().hex[:8]
    mine, noise = f"pick{tag}-1", f"skip{tag}-1"
    append(mine, 5)
    append(noise, 5)
    append(f"pick{tag}-2", 2, t="Other")
    group = name("all")
    client.create_subscription_to_all(group, filter_include=[f"pick{tag}-.*"], filter_by_stream_name=True,
                                      consumer_strategy="RoundRobin", **FAST)
    raises(AlreadyExists, client.create_subscription_to_all, group, filter_include=[f"pick{tag}-.*"],
           filter_by_stream_name=True)
    c = Consumer(group, buffer=50)
    seen = [c.next() for _ in range(7)]
    assert sorted((e.stream_name, e.stream_position) for e in seen) == \
        sorted([(mine, r) for r in range(5)] + [(f"pick{tag}-2", 0), (f"pick{tag}-2", 1)]), seen
    c.nothing_for(0.3)
    for e in seen:
        c.sub.ack(e)
    i = settled(group)
    assert i.event_source == "$all" and i.group_name == group, i
    assert i.start_from == "C:0/P:0", i.start_from
    last = max(e.commit_position for e in seen)
    # The checkpoint covers every matching event handled (a filtered group
    # may checkpoint further, at what it scanned).
    poll(f"an $all checkpoint at or past {last}", lambda: commit_of(info(group).last_checkpointed_event_position) >= last)

    # Live events through the filter; a nack parks on $all as well.
    append(noise, 1)
    append(mine, 1)
    e = c.next()
    assert (e.stream_name, e.stream_position) == (mine, 5), e
    c.sub.nack(e, "park")
    poll("one parked event on $all", lambda: info(group).parked_message_count == 1)
    client.replay_parked_events(group)
    again = c.next()
    assert again.id == e.id, again
    c.sub.ack(again)
    settled(group)

    everything = {(x.event_source, x.group_name) for x in client.list_subscriptions()}
    assert ("$all", group) in everything, everything
    c.stop()
    client.update_subscription_to_all(group, max_retry_count=3)
    assert info(group).max_retry_count == 3
    client.delete_subscription(group)
    raises(NotFound, client.get_subscription_info, group)
    raises(NotFound, client.delete_subscription, group)


def test_all_from_commit_position_zero():
    # 0 is the checkpoint a consumer stores before it has seen anything; in
    # KurrentDB no event is at 0, so a group started there sees the store's
    # first event.
    append(name("zero"), 1)  # tests run in name order: this one may come first
    first = list(client.read_all(limit=1, filter_exclude=[]))[0]
    group = name("all-zero")
    client.create_subscription_to_all(group, commit_position=0, filter_exclude=[], **FAST)
    c = Consumer(group)
    try:
        e = c.next()
        c.sub.ack(e)
        assert e.id == first.id, f"first event at {first.commit_position}, got {e.commit_position}"
    finally:
        c.stop()
        client.delete_subscription(group)


def test_all_with_the_clients_default_filter():
    # Without filter arguments the client still sends a filter: its default
    # exclusion of system event types, as a regex with a negative look-ahead,
    # ^(?!(\$.+$|PersistentConfig\d+$|Result$)) (common.py
    # construct_filter_exclude_regex, DEFAULT_EXCLUDE_FILTER).
    group = name("all-default")
    client.create_subscription_to_all(group, from_end=True, **FAST)
    tag = uuid.uuid4().hex[:8]
    c = Consumer(group)
    try:
        client.append_to_stream(f"$sys{tag}", current_version=StreamState.ANY,
                                events=[NewEvent(type="$System", data=b"{}")])
        append(f"user{tag}", 1, t=f"User{tag}")
        # Other clients may append too: read until ours, no system event on the way.
        types = []
        while f"User{tag}" not in types:
            e = c.next()
            types.append(e.type)
            c.sub.ack(e)
        assert not any(t.startswith("$") for t in types), f"a system event came through: {types}"
    finally:
        c.stop()
        client.delete_subscription(group)


run("persistent", globals(), client)
