"""Whatever a token holds: a 401/403 with a reason, never a 500, never in a log."""
from __future__ import annotations

import base64
import logging
import secrets

import pytest
from conftest import JSON
from conftest import basic
from conftest import bearer
from conftest import devpi_auth
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from pymacaroons import MACAROON_V2
from pymacaroons import Macaroon

from devpi_tokens.tokens import PREFIX
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]


def refused(srv, token: str, headers=bearer) -> tuple[int, str]:
    r = srv.app.get("/alice/dev/+simple/", headers={**headers(token), **JSON})
    assert r.status_code != 500, r.text
    return r.status_code, r.text


def as_login(token: str) -> dict[str, str]:
    return devpi_auth("alice", token)


def with_caveats(token: str, *caveats: str) -> str:
    """Append raw caveats (bypassing our parser) to a valid token."""
    macaroon = Token.load(token).macaroon.copy()
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat)
    return PREFIX + macaroon.serialize()


def test_random_strings(alice):
    for _ in range(20):
        junk = PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(60)).decode().rstrip("=")
        status, text = refused(alice, junk)
        assert status == 401
        assert "malformed token" in text


def test_truncated(alice):
    token = alice.create_token("alice", projects=["pkg"])
    for end in range(len(PREFIX), len(token) - 1, 7):
        status, _ = refused(alice, token[:end])
        assert status == 401, end


def test_flipped_bytes(alice):
    token = alice.create_token("alice", projects=["pkg"])
    body = base64.urlsafe_b64decode(token[len(PREFIX):] + "==")
    for position in range(len(body)):
        flipped = bytearray(body)
        flipped[position] ^= 0x01
        raw = PREFIX + base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("=")
        status, _ = refused(alice, raw)
        assert status in (401, 403), position


def test_wrong_key(alice):
    token = Token.load(alice.create_token("alice"))
    forged = Token.mint("alice", token.token_id, secrets.token_bytes(32))
    status, text = refused(alice, forged.dump())
    assert status == 401
    assert "invalid signature" in text


def test_unknown_user_and_id(alice):
    for user in ("nobody", "a/b", "root", "al\u00efce"):
        forged = Token.mint(user, "0123456789", secrets.token_bytes(32))
        status, text = refused(alice, forged.dump())
        assert status == 401, user
        assert "deleted or never existed" in text


@pytest.mark.parametrize("caveat", [
    "junk",
    "[]",
    "[9, 1]",
    '[0, 1.5, 1]',
    '[0, NaN, 1]',
    '[0, 99999999999999999999, 1]',
    '[0, 1]',
    '[1, []]',
    '[1, [1]]',
    '["devpi:allowed"]',
    '{"nbf": 1, "exp": 2, "x": 3}',
    '{"version": 2, "permissions": "user"}',
    "expires=soon",
    "allowed=",
    "\udcff",
    "[" * 5000,
])
def test_junk_caveats(alice, caveat):
    token = alice.create_token("alice")
    try:
        raw = with_caveats(token, caveat)
    except UnicodeEncodeError:
        raw = with_caveats(token, "\ufffd")
    status, text = refused(alice, raw)
    assert status == 401
    assert "malformed token" in text


def test_third_party_caveat(alice):
    token = Token.load(alice.create_token("alice"))
    macaroon = token.macaroon.copy()
    macaroon.add_third_party_caveat("https://example.com", b"k" * 32, "id")
    status, text = refused(alice, PREFIX + macaroon.serialize())
    assert status == 401
    assert "third-party" in text


def test_megabyte_token(alice):
    huge = PREFIX + "A" * 1024 * 1024
    for headers in (bearer, lambda t: basic("alice", t), lambda t: basic(t, ""), as_login):
        status, text = refused(alice, huge, headers)
        assert status == 401
        assert "longer than" in text


def test_non_utf8_basic_auth(alice):
    raw = base64.b64encode(b"alice:devpi-\xff\xfe\x00").decode()
    r = alice.app.get("/alice/dev/+simple/", headers={"Authorization": f"Basic {raw}"})
    assert r.status_code == 401


def test_bare_macaroon_with_bad_identifier_falls_through(alice):
    # not "devpi-" and not a "<user>-<id>" macaroon: just a wrong password
    bare = Macaroon(location="", identifier="nodash", key="k", version=MACAROON_V2).serialize()
    r = alice.upload("alice/dev", "pkg", "1.0", basic("alice", bare))
    assert r.status_code == 401
    assert "token" not in r.text.lower()


@settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutations_never_crash(alice, data):
    if not hasattr(alice, "good_token"):
        alice.good_token = alice.create_token("alice", projects=["pkg"], indexes=["alice/dev"])
    token = alice.good_token
    body = bytearray(base64.urlsafe_b64decode(token[len(PREFIX):] + "=="))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        position = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if action == "set" and body:
            body[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            body[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif body:
            del body[position]
    raw = PREFIX + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    headers = data.draw(st.sampled_from([bearer, as_login, lambda t: basic(t, "")]))
    status, _ = refused(alice, raw, headers)
    assert status in (200, 401, 403)


def test_nothing_secret_in_logs(alice, caplog):
    with caplog.at_level(logging.DEBUG):
        token = alice.create_token("alice", projects=["pkg"])
        alice.upload("alice/dev", "pkg", "1.0", bearer(token))
        alice.upload("alice/dev", "other", "1.0", bearer(token))
        alice.upload("alice/dev", "pkg", "1.1", bearer(token[:-5]))
        forged = Token.mint("alice", Token.load(token).token_id, b"k" * 32).dump()
        alice.upload("alice/dev", "pkg", "1.2", bearer(forged))
    salt = alice.stored_record("alice", Token.load(token).token_id)["salt"]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "token refused" in text
    body = token[len(PREFIX):]
    for secret in (body, body[:40], body[-40:], forged[len(PREFIX):][-40:], salt):
        assert secret not in text
