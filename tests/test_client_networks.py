"""Client networks (``devpi:ips``) on the in-process server: create, list, enforce.

The client address is devpi-server's ``REMOTE_ADDR``; webtest sets it per
request with ``extra_environ``.
"""
from __future__ import annotations

import pytest
from webtest.forms import Upload
from conftest import JSON
from conftest import basic
from conftest import bearer

from devpi_tokens.restrictions import ClientNetworks
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

INSIDE = {"REMOTE_ADDR": "192.0.2.5"}
OUTSIDE = {"REMOTE_ADDR": "203.0.113.9"}
REFUSAL = "token not valid from 203.0.113.9 (allowed: 192.0.2.0/24, 2001:db8::1)"


def get(srv, path: str, headers: dict[str, str], environ: dict[str, str]):
    return srv.app.get(path, headers=headers, extra_environ=environ, expect_errors=True)


def assert_refused(r, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    assert reason in r.status
    assert reason in r.text


@pytest.fixture
def token(alice) -> str:
    return alice.create_token("alice", ips=["192.0.2.0/24", "2001:db8::1"])


@pytest.mark.parametrize("address", ["192.0.2.5", "192.0.2.255", "2001:db8::1", "::ffff:192.0.2.5"])
def test_token_works_from_inside(alice, token, address):
    r = get(alice, "/alice/dev/+simple/", bearer(token), {"REMOTE_ADDR": address})
    assert r.status_code == 200, r.text
    r = get(alice, "/+api", {**bearer(token), **JSON}, {"REMOTE_ADDR": address})
    assert r.json["result"]["authstatus"][:2] == ["ok", "alice"]


@pytest.mark.parametrize("path", ["/alice/dev/+simple/", "/+api", "/alice/dev"])
def test_token_refused_from_outside_naming_address_and_networks(alice, token, path):
    r = get(alice, path, bearer(token), OUTSIDE)
    assert_refused(r, 403, REFUSAL)


@pytest.mark.parametrize("address", ["2001:db8::2", "::ffff:203.0.113.9", "192.0.3.1"])
def test_token_refused_from_other_addresses(alice, token, address):
    r = get(alice, "/alice/dev/+simple/", bearer(token), {"REMOTE_ADDR": address})
    assert_refused(r, 403, f"token not valid from {address} (allowed:")


def test_upload_inside_and_outside(alice, token):
    form = {
        ":action": "file_upload", "name": "pkg", "version": "1.0",
        "content": Upload("pkg-1.0.tar.gz", b"not really an sdist")}
    r = alice.app.post("/alice/dev/", form, headers=bearer(token),
                       extra_environ=OUTSIDE, expect_errors=True)
    assert_refused(r, 403, REFUSAL)
    r = alice.app.post("/alice/dev/", form, headers=bearer(token),
                       extra_environ=INSIDE, expect_errors=True)
    assert r.status_code == 200, r.text


def test_token_without_ips_works_from_anywhere(alice):
    plain = alice.create_token("alice")
    assert get(alice, "/alice/dev/+simple/", bearer(plain), OUTSIDE).status_code == 200


def test_derived_network_caveat_enforced(alice):
    plain = alice.create_token("alice")
    derived = Token.load(plain).derive(ClientNetworks(("192.0.2.0/25",))).dump()
    assert get(alice, "/alice/dev/+simple/", bearer(derived), INSIDE).status_code == 200
    r = get(alice, "/alice/dev/+simple/", bearer(derived), {"REMOTE_ADDR": "192.0.2.200"})
    assert_refused(r, 403, "token not valid from 192.0.2.200 (allowed: 192.0.2.0/25)")


def test_basic_auth_token_refused_from_outside(alice, token):
    r = get(alice, "/alice/dev/+simple/", basic("alice", token), OUTSIDE)
    assert_refused(r, 403, REFUSAL)


def test_listing_fields(alice, token):
    (info,) = alice.list_tokens("alice").values()
    assert info["ips"] == ["192.0.2.0/24", "2001:db8::1"]
    assert "ips=192.0.2.0/24,2001:db8::1" in info["restrictions"]
    assert '["devpi:ips",["192.0.2.0/24","2001:db8::1"]]' in info["caveats"]


def test_listing_without_ips_is_null(alice):
    alice.create_token("alice")
    (info,) = alice.list_tokens("alice").values()
    assert info["ips"] is None
    assert not any(text.startswith("ips=") for text in info["restrictions"])


@pytest.mark.parametrize(("ips", "reason"), [
    (["192.0.2.7/24"], "has host bits set"),
    (["garbage"], "'garbage' is not an IP address or network"),
    (["192.0.2.0/33"], "is not an IP address or network"),
    (["fe80::1%eth0"], "zone id"),
    ([], "must not be an empty list"),
    ("192.0.2.0/24", "must be a list of strings"),
    ([1], "must be a list of strings"),
    ([f"10.0.{i}.0/24" for i in range(101)], "more than 100 entries"),
])
def test_create_refuses_bad_ips(alice, ips, reason):
    r = alice.create("alice", ips=ips)
    assert r.status_code == 400, r.text
    assert reason in r.json["message"]


def test_create_accepts_100_networks(alice):
    alice.create_token("alice", ips=[f"10.0.{i}.0/24" for i in range(100)])
