"""Secure mode with the official Python client (`kurrentdbclient`) against
`factum serve --dev` (ADR 30, 31): TLS trusting the development CA, users
managed over HTTPS (the Python client has no Users API), credentials
refused and access denied as the client reports them, stream ACLs from
metadata and `$settings`.

Usage: python_secure.py HOST:PORT kurrentdbclient  (FACTUM_INTEROP_CA set)
"""
import base64
import json
import ssl
import urllib.error
import urllib.request

from harness import ADDR, CA, PACKAGE, NewEvent, StreamState, connect, name, raises, run

from kurrentdbclient.exceptions import AccessDeniedError, UnauthenticatedError

assert CA, "python_secure.py runs against a secure server (FACTUM_INTEROP_CA)"

admin = connect()
READER = name("reader")


def https(method, path, body=None, user="admin", password="changeit"):
    """One HTTPS request trusting the CA: (status, JSON body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"https://{ADDR}{path}", data=data, method=method)
    req.add_header("content-type", "application/json")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req.add_header("authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=CA)
    try:
        with urllib.request.urlopen(req, context=context) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, None


def ev(t="Happened"):
    return NewEvent(type=t, data=b"{}")


def test_a_users_are_managed_over_https():
    status, _ = https("POST", "/users", {"loginName": READER, "password": "pw", "fullName": "R", "groups": ["readers"]})
    assert status == 201, status
    status, body = https("GET", f"/users/{READER}", user=READER, password="pw")
    assert status == 200 and body["data"]["groups"] == ["readers"], (status, body)
    status, _ = https("GET", "/users", user=READER, password="pw")
    assert status == 401, "only admins list users"
    status, _ = https("POST", "/users", {"loginName": READER, "password": "x"})
    assert status == 409, "a taken login is a conflict"


def test_b_a_user_reads_and_writes_user_streams_but_not_system_ones():
    reader = connect(user=READER, password="pw")
    s = name("orders")
    reader.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev()])
    assert len(reader.get_stream(s)) == 1
    raises(AccessDeniedError, lambda: list(reader.read_all()))
    raises(AccessDeniedError, reader.get_stream, "$user-admin")
    raises(AccessDeniedError, reader.append_to_stream, "$settings",
           current_version=StreamState.ANY, events=[ev("$settings")])
    reader.close()


def test_c_a_stream_acl_in_metadata_is_enforced():
    s = name("secret")
    admin.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev()])
    admin.set_stream_metadata(s, metadata={"$acl": {"$r": ["$admins"], "$w": ["$admins"]}})
    reader = connect(user=READER, password="pw")
    raises(AccessDeniedError, reader.get_stream, s)
    raises(AccessDeniedError, reader.append_to_stream, s, current_version=StreamState.ANY, events=[ev()])
    assert len(admin.get_stream(s)) == 1
    reader.close()


def test_d_wrong_credentials_are_refused():
    # (This client refuses TLS without credentials itself: the anonymous
    # user is covered by the server's own tests.)
    for login, password in (("admin", "wrong"), ("nobody", "x")):
        wrong = connect(user=login, password=password)
        raises(UnauthenticatedError, wrong.append_to_stream, name("x"),
               current_version=StreamState.ANY, events=[ev()])
        wrong.close()


def test_e_a_disabled_user_is_refused_at_once():
    reader = connect(user=READER, password="pw")
    reader.append_to_stream(name("x"), current_version=StreamState.ANY, events=[ev()])
    status, _ = https("POST", f"/users/{READER}/command/disable")
    assert status == 200, status
    raises(UnauthenticatedError, reader.append_to_stream, name("x"),
           current_version=StreamState.ANY, events=[ev()])
    status, _ = https("POST", f"/users/{READER}/command/enable")
    assert status == 200, status
    reader.append_to_stream(name("x"), current_version=StreamState.ANY, events=[ev()])
    reader.close()


def test_e2_consumer_groups_need_ops_to_manage_and_read_to_connect():
    s = name("work")
    admin.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[ev()])
    admin.set_stream_metadata(s, metadata={"$acl": {"$r": ["$admins"]}})
    admin.create_subscription_to_stream(group_name="g", stream_name=s)
    reader = connect(user=READER, password="pw")
    raises(AccessDeniedError, reader.create_subscription_to_stream, group_name="g2", stream_name=s)
    raises(AccessDeniedError, reader.delete_subscription, group_name="g", stream_name=s)

    def connect_to_group():
        sub = reader.read_subscription_to_stream(group_name="g", stream_name=s)
        next(iter(sub))

    raises(AccessDeniedError, connect_to_group)
    reader.close()


def test_f_settings_open_all_to_a_group():
    admin.append_to_stream("$settings", current_version=StreamState.ANY, events=[NewEvent(
        type="$settings",
        data=json.dumps({"$systemStreamAcl": {"$r": ["$admins", "readers"]}}).encode(),
    )])
    reader = connect(user=READER, password="pw")
    assert len(list(reader.read_all(limit=5))) > 0
    reader.close()


run("secure", dict(globals()), admin)
