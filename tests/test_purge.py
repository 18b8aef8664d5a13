"""Expired tokens: listings mark them, ``POST /<user>/+tokens-purge`` removes them.

In process (devpi-server's test app, real keyfs) for the endpoint and who
may use it; one real devpi-server process for ``devpi token-purge`` and the
words ``token-list`` prints.
"""
from __future__ import annotations

import base64
import json
import re
import time
import urllib.request

import pytest
from conftest import JSON
from conftest import TokenServer
from conftest import basic
from conftest import bearer

from devpi_process import DevpiClient
from devpi_process import start_server
from devpi_tokens import server_hooks
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.server_store import TokenStore
from devpi_tokens.server_store import is_expired
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

DAY = 86400
HOUR = 3600


def store_expired_token(srv: TokenServer, user: str, ago: int = 2 * HOUR) -> str:
    """A real token (record in keyfs, real key) whose expiry is ``ago`` seconds past.

    The create endpoint refuses an expiry in the past, so the record is
    written through the store, as the endpoint would have done earlier.
    """
    now = int(time.time())
    window = ValidityWindow(not_after=now - ago, not_before=now - ago - DAY)
    with srv.xom.keyfs.write_transaction():
        token = TokenStore(srv.xom).create(
            user, (window,), created=now - ago - DAY, expires=now - ago,
            description="old")
    return token.dump()


def purge(srv: TokenServer, owner: str, headers: dict[str, str]):
    return srv.app.post(
        f"/{owner}/+tokens-purge", headers={**headers, **JSON}, expect_errors=True)


def api_status(srv: TokenServer, token: str):
    return srv.app.get("/+api", headers={**bearer(token), **JSON}, expect_errors=True)


# ---------------------------------------------------------------------------
# the record rule

@pytest.mark.parametrize(("record", "expired"), [
    ({"expires": 1000}, True),        # expiry at exactly "now": no longer valid
    ({"expires": 1001}, False),
    ({"expires": 999}, True),
    ({"expires": None}, False),       # "never"
    ({"restrictions": ["expires=999"]}, True),      # 1.x record: expiry in a caveat
    ({"restrictions": ["expires=never"]}, False),
    ({"restrictions": ["[0,1001,1]"]}, False),
    ({"restrictions": ["not json"]}, False),        # unreadable: not judged by time
])
def test_is_expired(record, expired):
    assert is_expired(record, 1000) is expired


# ---------------------------------------------------------------------------
# listing and purging in process

@pytest.fixture
def four_tokens(alice):
    """alice with two expired tokens, one valid for a day, one that never expires."""
    expired = [store_expired_token(alice, "alice"), store_expired_token(alice, "alice", 5)]
    valid = alice.create_token("alice", expires=int(time.time()) + DAY)
    never = alice.create_token("root", "", owner="alice", expires="never")
    ids = {name: Token.load(t).token_id for name, t in [
        ("old", expired[0]), ("recent", expired[1]), ("valid", valid), ("never", never)]}
    return alice, ids, expired


def test_listing_marks_expired(four_tokens):
    srv, ids, _ = four_tokens
    listed = srv.list_tokens("alice")
    assert {tid: info["expired"] for tid, info in listed.items()} == {
        ids["old"]: True, ids["recent"]: True, ids["valid"]: False, ids["never"]: False}
    assert listed[ids["never"]]["expires"] is None


def test_purge_removes_only_expired(four_tokens):
    srv, ids, expired = four_tokens
    # before: refused because expired
    r = api_status(srv, expired[0])
    assert r.status_code == 401 and "expired" in r.json["message"]

    r = purge(srv, "alice", basic("alice", "pw"))
    assert r.status_code == 200, r.text
    assert r.json["type"] == "tokens-purged"
    assert r.json["result"] == {
        "removed": sorted([ids["old"], ids["recent"]]), "count": 2}
    assert r.json["message"] == "removed 2 expired tokens of user alice"
    assert set(srv.list_tokens("alice")) == {ids["valid"], ids["never"]}
    # after: the record is gone
    r = api_status(srv, expired[0])
    assert r.status_code == 401 and "deleted or never existed" in r.json["message"]

    # nothing left to do: still a 200, with a count of 0
    r = purge(srv, "alice", basic("alice", "pw"))
    assert r.status_code == 200
    assert r.json["result"] == {"removed": [], "count": 0}
    assert r.json["message"] == "removed 0 expired tokens of user alice"


def test_purge_of_user_without_tokens(alice):
    r = purge(alice, "alice", basic("alice", "pw"))
    assert r.status_code == 200
    assert r.json["result"]["count"] == 0


def test_root_purges_for_others(four_tokens):
    srv, ids, _ = four_tokens
    r = purge(srv, "alice", basic("root", ""))
    assert r.status_code == 200
    assert r.json["result"]["count"] == 2
    assert r.json["message"] == "removed 2 expired tokens of user alice"


def test_who_may_not_purge(four_tokens):
    srv, ids, _ = four_tokens
    srv.create_user("bob", index=None)
    token = srv.create_token("alice")

    r = purge(srv, "alice", basic("bob", "pw"))
    assert r.status_code == 403
    assert r.json["message"] == "user 'bob' may not purge tokens of user 'alice'"
    r = purge(srv, "alice", {})
    assert r.status_code == 401
    assert r.json["message"] == "you need to be logged in to purge tokens"
    r = purge(srv, "alice", bearer(token))
    assert r.status_code == 403
    assert "a token cannot be used to purge tokens" in r.json["message"]
    r = purge(srv, "nobody", basic("root", ""))
    assert r.status_code == 404
    # nothing was removed by any of those
    assert len(srv.list_tokens("alice")) == 5
    # only POST
    r = srv.app.get("/alice/+tokens-purge", headers={**basic("alice", "pw"), **JSON},
                    expect_errors=True)
    assert r.status_code == 405


def test_restrict_modify_user_purges_for_others(makexom, maketestapp, cheap_password_hashing):
    srv = TokenServer(maketestapp(makexom(
        ["--restrict-modify", "root,admin"], plugins=[server_hooks])))
    for name in ("admin", "alice"):
        r = srv.app.put_json(f"/{name}", {"password": "pw"}, headers=basic("root", ""))
        assert r.status_code == 201
    store_expired_token(srv, "alice")
    r = purge(srv, "alice", basic("admin", "pw"))
    assert r.status_code == 200, r.text
    assert r.json["result"]["count"] == 1


# ---------------------------------------------------------------------------
# the client against a real server

def http(server, method: str, path: str, body: dict | None = None,
         auth: tuple[str, str] | None = None) -> dict:
    """A JSON request to the real server (setup steps, no client start-up cost)."""
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if auth is not None:
        headers["X-Devpi-Auth"] = base64.b64encode(":".join(auth).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        server.url + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (127.0.0.1)
        return json.loads(response.read())


@pytest.mark.e2e
def test_client_lists_and_purges_expired(tmp_path):
    server = start_server(tmp_path / "server")
    try:
        http(server, "PUT", "/alice", {"password": "pw"})
        client = DevpiClient(tmp_path / "client")
        client.run("use", server.url)
        client.run("login", "alice", "--password", "pw")
        # devpi's login pass for the setup requests (the password costs argon2 each time)
        auth = ("alice", http(server, "POST", "/+login", {"user": "alice", "password": "pw"})
                ["result"]["password"])
        http(server, "POST", "/alice/+token-create", {"description": "keep"}, auth)
        # the shortest lifetime the server takes is "expires after now": wait it out
        end = int(time.time()) + 2
        for description in ("short-1", "short-2"):
            http(server, "POST", "/alice/+token-create",
                 {"description": description, "expires": end}, auth)
        while time.time() < end + 1:
            time.sleep(0.1)

        listed = json.loads(client.run("token-list", "--json").stdout)["tokens"]
        states = {e["description"]: e["state"] for e in listed}
        assert states == {"keep": "valid", "short-1": "expired", "short-2": "expired"}
        text = client.run("token-list").stdout
        assert len(re.findall(r"state    expired \d+ seconds? ago", text)) == 2, text

        proc = client.run("token-purge")
        assert "removed 2 expired tokens of user alice" in proc.stdout
        listed = http(server, "GET", "/alice/+tokens", auth=auth)["result"]["tokens"]
        assert [info["description"] for info in listed.values()] == ["keep"]
        proc = client.run("token-purge", "-u", "alice")
        assert "no expired tokens for user alice" in proc.stdout
        proc = client.fails("token-purge", "-u", "nobody")
        assert proc.stderr.strip() == (
            "error: token-purge: server refused: 403 Forbidden: "
            "user 'alice' may not purge tokens of user 'nobody'")
    finally:
        server.stop()
