"""What the Python interop scripts share: which official client they drive,
the few names in which its releases differ, and how results are reported.

Usage of a script: SCRIPT.py HOST:PORT [PACKAGE]
PACKAGE is `kurrentdbclient` (the current client, the default) or
`esdbclient` (the older one, still widely deployed); their APIs differ only
in names, listed below, so one script serves both.

A check that fails because of a known server gap is wrapped in
`known_gap("label: what")`: it still runs, prints GAP instead of failing, and
prints FIXED once the server behaves (then drop the wrapper). Labels in use:
"position-0" (the first event is at commit position 0, which clients treat
as "before everything") and "soft-delete" (KurrentDB's soft-delete rules);
both are fixed (ADR 25, 26) and run as rows (`row("label: what")`).
"""
import gc
import os
import sys
import time
import traceback
import uuid

# The clients' streamer registries finalize a dropped read or subscription
# under the same (non-reentrant) lock they take to register a new one: when
# the cycle collector happens to run inside that registration, the script
# deadlocks (seen in kurrentdbclient 1.3.5: `BaseGrpcStreamers.add` ->
# GC -> `RecordedEventIterator.__del__` -> `remove`). Cycles are collected
# between tests instead (`run`).
gc.disable()

ADDR = sys.argv[1]
PACKAGE = sys.argv[2] if len(sys.argv) > 2 else "kurrentdbclient"

if PACKAGE == "kurrentdbclient":
    from kurrentdbclient import KurrentDBClient as Client, NewEvent, StreamState  # noqa: F401
    from kurrentdbclient.exceptions import (  # noqa: F401
        AlreadyExistsError as AlreadyExists,
        MaximumAppendSizeExceededError as MaximumAppendSizeExceeded,
        MaximumSubscriptionsReachedError as MaximumSubscriptionsReached,
        NotFoundError as NotFound,
        StreamIsDeletedError as StreamIsDeleted,
        WrongCurrentVersionError as WrongCurrentVersion,
    )
    # Only the current client can ask for prefix filters (`filter_by_prefix`)
    # and shows a group's consumers in its info (`connections`).
    PREFIX_FILTERS = True
    INFO_HAS_CONNECTIONS = True
elif PACKAGE == "esdbclient":
    from esdbclient import EventStoreDBClient as Client, NewEvent, StreamState  # noqa: F401
    from esdbclient.exceptions import (  # noqa: F401
        AlreadyExists,
        MaximumAppendSizeExceededError as MaximumAppendSizeExceeded,
        MaximumSubscriptionsReached,
        NotFound,
        StreamIsDeleted,
        WrongCurrentVersion,
    )
    PREFIX_FILTERS = False
    INFO_HAS_CONNECTIONS = False
else:
    sys.exit(f"unknown client package {PACKAGE!r}")

gaps = []


# Set for a secure server (`factum serve --dev`): the development CA.
CA = os.environ.get("FACTUM_INTEROP_CA")


def uri(discover=False, user="admin", password="changeit"):
    """The connection string: TLS with the CA and credentials when secure."""
    # kurrentdbclient takes esdb:// too; its users write kurrentdb://.
    scheme = "kurrentdb" if PACKAGE == "kurrentdbclient" else "esdb"
    scheme += "+discover" if discover else ""
    if CA:
        login = f"{user}:{password}@" if user is not None else ""
        return f"{scheme}://{login}{ADDR}?tls=true&tlsCaFile={CA}"
    return f"{scheme}://{ADDR}?tls=false"


def connect(discover=False, user="admin", password="changeit"):
    return Client(uri=uri(discover, user, password))


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def raises(exc, fn, *args, **kwargs):
    """Calls fn, which must raise exc; returns the exception."""
    try:
        fn(*args, **kwargs)
    except exc as e:
        return e
    except Exception as e:
        raise AssertionError(f"{fn.__name__} raised {type(e).__name__}: {e}, not {exc.__name__}") from e
    raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}")


class row:
    """A named check that must pass: a failure names the row."""

    def __init__(self, label):
        self.label = label

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, Exception):
            raise AssertionError(f"{self.label}: {type(err).__name__}: {err}") from err
        return False


class known_gap:
    """A check the server does not pass yet (see the label): GAP, not FAIL."""

    def __init__(self, reason):
        self.reason = reason

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None:
            print(f"{PACKAGE} FIXED known gap now passes, remove the marker: {self.reason}")
            return False
        if isinstance(err, Exception):
            gaps.append(self.reason)
            first = str(err).strip().splitlines()[:3]
            print(f"{PACKAGE} GAP  {self.reason}: {type(err).__name__}: {' | '.join(first)}")
            return True
        return False


def run(what, scope, client):
    """Runs every test_* of `scope` in name order, prints a summary, exits."""
    tests = [(n, f) for n, f in sorted(scope.items()) if n.startswith("test_")]
    passed = failed = 0
    for n, f in tests:
        gc.collect()
        t0 = time.time()
        try:
            f()
            passed += 1
            print(f"{PACKAGE} ok   {n} ({time.time() - t0:.2f}s)")
        except Exception:
            failed += 1
            print(f"{PACKAGE} FAIL {n}")
            traceback.print_exc(file=sys.stdout)
    for g in gaps:
        print(f"{PACKAGE} known gap: {g}")
    print(f"{PACKAGE} {what}: {passed} passed, {failed} failed, {len(gaps)} known gaps")
    sys.stdout.flush()
    client.close()
    sys.exit(1 if failed else 0)
