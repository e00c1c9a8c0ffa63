"""Server-side projections of a running `factum serve`, driven by KurrentDB's
Python client (kurrentdbclient; see harness.py): create, state with
partitions, statistics, update, disable/enable, reset, abort, restart the
subsystem, delete, and the errors for unknown names and invalid queries.

Usage: python_projections.py HOST:PORT [kurrentdbclient]
"""
import time

from harness import NewEvent, NotFound, StreamState, connect, name, raises, run

client = connect()
WAIT = 10.0


def append(stream, events):
    client.append_to_stream(stream, current_version=StreamState.ANY,
                            events=[NewEvent(type=t, data=d) for t, d in events])


def eventually(what, check):
    deadline = time.time() + WAIT
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # not there yet
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {WAIT}s (last: {last!r})")


def state(projection, partition=""):
    return client.get_projection_state(projection, partition=partition).value


def test_counting_projection_lifecycle():
    category = name("order").replace("-", "")
    for i in range(3):
        append(f"{category}-{i % 2}", [("Placed", b'{"amount": %d}' % (i + 1))])
    p = name("count")
    query = """fromCategory("%s").when({
        $init: function () { return { count: 0, total: 0 } },
        Placed: function (s, e) { s.count += 1; s.total += e.body.amount; return s }
    }).outputState()""" % category
    client.create_projection(name=p, query=query)
    eventually("the state counts 3", lambda: state(p) == {"count": 3, "total": 6})
    stats = client.get_projection_statistics(p)
    assert stats.status == "Running" and stats.mode == "Continuous", stats
    assert p in [s.name for s in client.list_continuous_projection_statistics()]
    assert p in [s.name for s in client.list_all_projection_statistics()]

    client.disable_projection(p)
    eventually("stopped", lambda: client.get_projection_statistics(p).status == "Stopped")
    append(f"{category}-9", [("Placed", b'{"amount": 10}')])
    client.enable_projection(p)
    eventually("resumed after enable", lambda: state(p) == {"count": 4, "total": 16})

    # Update (doubles the total), then reset: the whole log is replayed.
    client.update_projection(p, query=query.replace("s.total += e.body.amount", "s.total += 2 * e.body.amount"))
    client.reset_projection(p)
    eventually("replayed after reset", lambda: state(p) == {"count": 4, "total": 32})
    client.abort_projection(p)
    client.restart_projections_subsystem()
    client.delete_projection(p, delete_state_stream=True, delete_checkpoint_stream=True)
    raises(NotFound, client.get_projection_statistics, p)


def test_partitioned_state():
    category = name("acct").replace("-", "")
    append(f"{category}-a", [("Deposited", b'{"amount": 5}'), ("Deposited", b'{"amount": 7}')])
    append(f"{category}-b", [("Deposited", b'{"amount": 1}')])
    p = name("balances")
    client.create_projection(name=p, query="""fromCategory("%s").foreachStream().when({
        $init: () => ({ balance: 0 }),
        Deposited: (s, e) => { s.balance += e.body.amount; return s }
    })""" % category)
    eventually("partition a", lambda: state(p, f"{category}-a") == {"balance": 12})
    eventually("partition b", lambda: state(p, f"{category}-b") == {"balance": 1})
    client.disable_projection(p)
    client.delete_projection(p, delete_state_stream=True, delete_checkpoint_stream=True)


def test_emitting_projection():
    category = name("cart").replace("-", "")
    target = name("carts-seen")
    p = name("emitter")
    client.create_projection(name=p, emit_enabled=True, track_emitted_streams=True, query="""
        fromCategory("%s").when({ $any: (s, e) => { emit("%s", "Seen", { from: e.streamId }) } })""" % (category, target))
    append(f"{category}-1", [("Added", b"{}"), ("Added", b"{}")])
    seen = eventually("two emitted events", lambda: len(list(client.get_stream(target))) == 2 and list(client.get_stream(target)))
    assert [e.type for e in seen] == ["Seen", "Seen"]
    client.disable_projection(p)
    client.delete_projection(p, delete_emitted_streams=True, delete_state_stream=True, delete_checkpoint_stream=True)


def test_errors_for_unknown_names_and_invalid_queries():
    missing = name("missing")
    raises(NotFound, client.get_projection_statistics, missing)
    raises(NotFound, client.get_projection_state, missing)
    raises(NotFound, client.enable_projection, missing)
    raises(NotFound, client.disable_projection, missing)
    raises(NotFound, client.reset_projection, missing)
    raises(NotFound, client.delete_projection, missing)
    raises(Exception, client.create_projection, name=name("bad"), query="fromAll().when(")


run("projections", globals(), client)
