"""``--tokens-max-lifetime DURATION``: a limit on every token's lifetime, root's too."""
from __future__ import annotations

import time

import pytest
from conftest import TokenServer
from conftest import bearer

from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.server_limits import LimitError
from devpi_tokens.server_limits import MaxLifetime
from devpi_tokens.server_limits import parse_max_lifetime
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

DAY = 86400
LIMIT_30D = "tokens may live at most 30d on this server (--tokens-max-lifetime)"



@pytest.fixture
def limited(start) -> TokenServer:
    srv = start("--tokens-max-lifetime", "30d")
    srv.create_user("alice")
    return srv


# -- the option ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * DAY), ("1 week", 7 * DAY), ("12h", 12 * 3600), (" 2h30m ", 9000)])
def test_option_values(text, seconds):
    limit = parse_max_lifetime(text)
    assert limit == MaxLifetime(seconds, text.strip())


@pytest.mark.parametrize("text", ["banana", "", "30", "0d", "never", "200y", "-1d"])
def test_bad_option_values(text):
    with pytest.raises(LimitError, match="--tokens-max-lifetime"):
        parse_max_lifetime(text)


def test_bad_option_value_stops_the_server(start):
    with pytest.raises(SystemExit, match="--tokens-max-lifetime 'banana' is not a valid"):
        start("--tokens-max-lifetime", "banana")


@pytest.mark.parametrize(("record", "exceeds"), [
    ({"created": 0, "expires": 30 * DAY}, False),
    ({"created": 0, "expires": 30 * DAY + 1}, True),
    ({"created": 0, "expires": None}, True),
    # 1.x records have no creation time: only "never" exceeds the limit
    ({"restrictions": ["expires=never"]}, True),
    ({"restrictions": []}, True),
    ({"restrictions": [f"expires={400 * DAY}"]}, False),
])
def test_records_judged(record, exceeds):
    assert MaxLifetime(30 * DAY, "30d").exceeded_by_record(record) is exceeds


# -- creating --------------------------------------------------------------------

def test_create_beyond_the_limit_is_refused_naming_it(limited):
    r = limited.create("alice", expires=int(time.time()) + 31 * DAY)
    assert r.status_code == 403
    assert r.json["message"] == LIMIT_30D


@pytest.mark.parametrize("expires", ["never", 31 * DAY, 400 * DAY])
def test_the_limit_binds_root_too(limited, expires):
    if expires != "never":
        expires += int(time.time())
    r = limited.create("root", "", owner="alice", expires=expires)
    assert r.status_code == 403
    assert r.json["message"] == LIMIT_30D
    r = limited.create("root", "", expires=expires)
    assert r.status_code == 403


def test_never_is_refused(limited):
    r = limited.create("alice", expires="never")
    assert r.status_code == 403
    assert LIMIT_30D in r.json["message"]


def test_within_the_limit_is_created(limited):
    r = limited.create("alice", expires=int(time.time()) + 29 * DAY)
    assert r.status_code == 201, r.text
    token = r.json["result"]["token"]
    assert limited.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    (info,) = limited.list_tokens("alice").values()
    assert info["exceeds_max_lifetime"] is False


def test_default_expiry_is_the_limit(limited):
    before = int(time.time())
    r = limited.create("alice")
    assert r.status_code == 201, r.text
    (info,) = limited.list_tokens("alice").values()
    assert info["expires"] == info["created"] + 30 * DAY
    assert before <= info["created"] <= int(time.time())


def test_default_expiry_stays_a_year_under_a_longer_limit(start):
    srv = start("--tokens-max-lifetime", "2y")
    srv.create_user("alice")
    assert srv.create("alice").status_code == 201
    (info,) = srv.list_tokens("alice").values()
    assert info["expires"] == info["created"] + 365 * DAY
    # the limit replaces the 366-day rule for everyone
    r = srv.create("alice", expires=int(time.time()) + 500 * DAY)
    assert r.status_code == 201, r.text


def test_without_the_option_listings_say_false(start):
    srv = start()
    srv.create_user("alice")
    srv.create_token("root", "", owner="alice", expires="never")
    (info,) = srv.list_tokens("alice").values()
    assert info["exceeds_max_lifetime"] is False


# -- lowering the limit ------------------------------------------------------------

def test_lowered_limit_refuses_existing_tokens(start):
    first = start("--tokens-max-lifetime", "30d")
    first.create_user("alice")
    old = first.create_token("alice", expires=int(time.time()) + 20 * DAY)
    short = first.create_token("alice", expires=int(time.time()) + DAY // 2)
    derived = Token.load(old).derive(ProjectNames(("pkg",))).dump()
    assert first.upload("alice/dev", "pkg", "1.0", bearer(derived)).status_code == 200

    second = start("--tokens-max-lifetime", "1d")
    listing = second.list_tokens("alice")
    assert listing[Token.load(old).token_id]["exceeds_max_lifetime"] is True
    assert listing[Token.load(short).token_id]["exceeds_max_lifetime"] is False
    reason = "tokens may live at most 1d on this server (--tokens-max-lifetime)"
    for token in (old, derived):
        r = second.upload("alice/dev", "pkg", "1.1", bearer(token))
        assert r.status_code == 401
        assert reason in r.status
        r = second.app.get("/+api", headers=bearer(token), expect_errors=True)
        assert r.status_code == 401
        assert reason in r.text
    assert second.upload("alice/dev", "pkg", "1.2", bearer(short)).status_code == 200

    # without the option again, the old token works again
    third = start()
    assert third.list_tokens("alice")[Token.load(old).token_id]["exceeds_max_lifetime"] is False
    assert third.upload("alice/dev", "pkg", "1.3", bearer(old)).status_code == 200


def test_never_tokens_made_before_a_limit_are_refused(start):
    first = start()
    first.create_user("alice")
    token = first.create_token("root", "", owner="alice", expires="never")

    second = start("--tokens-max-lifetime", "1y")
    (info,) = second.list_tokens("alice").values()
    assert info["exceeds_max_lifetime"] is True
    r = second.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert r.status_code == 401
    assert "at most 1y" in r.status
