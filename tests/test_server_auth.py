"""Every way of presenting a token, and what happens with other credentials."""
from __future__ import annotations

import pytest
from conftest import JSON
from conftest import basic
from conftest import bearer
from conftest import devpi_auth

from devpi_tokens import server_store


pytestmark = [pytest.mark.notransaction]


@pytest.mark.parametrize("username", ["alice", "", "__token__"])
def test_basic_auth_password_is_token(alice, username):
    token = alice.create_token("alice")
    r = alice.upload("alice/dev", "pkg", "1.0", basic(username, token))
    assert r.status_code == 200, r.text


def test_basic_auth_token_as_username_with_empty_password(alice):
    token = alice.create_token("alice")
    r = alice.upload("alice/dev", "pkg", "1.0", basic(token, ""))
    assert r.status_code == 200, r.text


def test_bearer(alice):
    token = alice.create_token("alice")
    r = alice.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert r.status_code == 200, r.text


def test_x_devpi_auth_as_sent_after_token_login(alice):
    token = alice.create_token("alice")
    r = alice.upload("alice/dev", "pkg", "1.0", devpi_auth("alice", token))
    assert r.status_code == 200, r.text


def test_upload_is_logged_as_the_token_user(alice):
    token = alice.create_token("alice")
    alice.upload("alice/dev", "pkg", "1.0", bearer(token))
    r = alice.app.get("/alice/dev/pkg/1.0", headers=JSON)
    (link,) = r.json["result"]["+links"]
    assert link["log"][0]["who"] == "alice"


@pytest.mark.parametrize("make_headers", [basic, devpi_auth])
def test_other_username_with_valid_token_is_refused(alice, make_headers):
    alice.create_user("bob", index=None)
    token = alice.create_token("alice")
    r = alice.app.get("/alice/dev/+simple/", headers={**make_headers("bob", token), **JSON})
    assert r.status_code == 403
    assert r.json["message"] == "token belongs to user 'alice', not 'bob'"
    assert "token belongs to user 'alice'" in r.status
    r = alice.upload("alice/dev", "pkg", "1.0", make_headers("bob", token))
    assert r.status == "403 token belongs to user 'alice', not 'bob'"


def test_password_still_works(alice):
    r = alice.upload("alice/dev", "pkg", "1.0", basic("alice", "pw"))
    assert r.status_code == 200, r.text


def test_wrong_password_falls_through_untouched(alice):
    # devpi's own answer for bad credentials: anonymous, so an upload asks
    # for authentication; nothing of ours is involved
    r = alice.upload("alice/dev", "pkg", "1.0", basic("alice", "wrong"))
    assert r.status_code == 401
    assert "token" not in r.text.lower()
    assert "token" not in r.status.lower()


def test_password_that_is_not_a_token_is_not_parsed(alice, monkeypatch):
    calls = []
    monkeypatch.setattr(
        server_store.TokenStore, "get_record",
        lambda *args: calls.append(args) or None)
    r = alice.upload("alice/dev", "pkg", "1.0", basic("alice", "pw"))
    assert r.status_code == 200
    r = alice.upload("alice/dev", "pkg", "1.1", basic("alice", "AgEsomething-not-a-token"))
    assert r.status_code == 401
    assert calls == []


def test_bearer_with_something_else_is_ignored(alice):
    r = alice.app.get("/alice/dev/+simple/", headers=bearer("not-a-token"))
    assert r.status_code == 200
    r = alice.upload("alice/dev", "pkg", "1.0", bearer("not-a-token"))
    assert r.status_code == 401
    assert "token" not in r.status.lower()


def test_token_is_verified_once_per_request(alice, monkeypatch):
    token = alice.create_token("alice", projects=["pkg"])
    calls = []
    original = server_store.TokenStore.key_for

    def counting_key_for(self, *args):
        calls.append(args[:2])
        return original(self, *args)

    monkeypatch.setattr(server_store.TokenStore, "key_for", counting_key_for)
    r = alice.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert r.status_code == 200, r.text
    assert len(calls) == 1


def test_token_cannot_be_exchanged_for_a_login(alice):
    # +login would hand out a 10 hour login with all of alice's rights
    token = alice.create_token("alice", projects=["pkg"])
    r = alice.app.post_json(
        "/+login", {"user": "alice", "password": token}, headers=JSON, expect_errors=True)
    assert r.status_code == 401



def test_password_login_while_logged_in_with_a_token(alice):
    """devpi-client sends its current (token) login along with `devpi login`."""
    token = alice.create_token("alice")
    headers = {**devpi_auth("alice", token), "Accept": "application/json"}
    r = alice.app.post_json(
        "/+login", {"user": "alice", "password": "pw"}, headers=headers, expect_errors=True)
    assert r.status_code == 200, r.text
    assert r.json["type"] == "proxyauth"
    # the session it gives is a password login: it may manage tokens
    session = devpi_auth("alice", r.json["result"]["password"])
    assert alice.app.get("/alice/+tokens", headers=session).status_code == 200
    r = alice.app.post_json(
        "/+login", {"user": "alice", "password": "wrong"}, headers=headers, expect_errors=True)
    assert r.status_code == 401
