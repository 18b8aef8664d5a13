"""POST /<user>/+token-create, GET /<user>/+tokens, DELETE /<user>/+tokens/<id>."""
from __future__ import annotations

import json
import logging
import time

import pytest
from conftest import JSON
from conftest import TokenServer
from conftest import basic
from conftest import bearer

from devpi_tokens import server_hooks
from devpi_tokens.restrictions import Allowed
from devpi_tokens.restrictions import Indexes
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

YEAR = 365 * 86400
DAY = 86400


def test_create_default_token(alice):
    before = int(time.time())
    r = alice.create("alice")
    after = int(time.time())
    assert r.status_code == 201
    assert r.json["type"] == "token-info"
    result = r.json["result"]
    token = Token.load(result["token"])
    assert result["token"].startswith("devpi-")
    assert token.user == "alice"
    assert token.token_id == result["id"]
    assert "-" not in result["id"]
    (window,) = token.restrictions
    assert isinstance(window, ValidityWindow)
    assert before <= window.not_before <= after
    assert before + YEAR <= window.not_after <= after + YEAR


def test_create_with_every_field(alice):
    now = int(time.time())
    r = alice.create(
        "alice", expires=now + 7 * DAY, not_before=now + 60, projects=["Foo.Bar", "baz"],
        indexes=["alice/dev"], allowed=["upload", "pkg_read"], description="CI for foo")
    assert r.status_code == 201, r.text
    token = Token.load(r.json["result"]["token"])
    assert token.restrictions == (
        ValidityWindow(not_after=now + 7 * DAY, not_before=now + 60),
        ProjectNames(("Foo.Bar", "baz")),
        Indexes(("alice/dev",)),
        Allowed(("upload", "pkg_read")),
    )


def test_token_ids_are_unique(alice):
    ids = {Token.load(alice.create_token("alice")).token_id for _ in range(5)}
    assert len(ids) == 5


def test_list_shows_public_fields_and_nothing_secret(alice):
    now = int(time.time())
    token = alice.create_token(
        "alice", expires=now + DAY, projects=["foo"], description="deploy")
    token_id = Token.load(token).token_id
    r = alice.app.get("/alice/+tokens", headers=basic("alice", "pw"))
    assert r.status_code == 200
    assert r.json["type"] == "tokens-info"
    tokens = r.json["result"]["tokens"]
    assert list(tokens) == [token_id]
    info = tokens[token_id]
    assert set(info) == {
        "restrictions", "caveats", "description", "created", "expires", "not_before",
        "projects", "indexes", "allowed", "ips", "expired", "exceeds_max_lifetime",
        "last_used", "last_used_from", "last_used_for"}
    assert info["expired"] is False
    assert (info["last_used"], info["last_used_from"], info["last_used_for"]) == (
        None, None, None)
    assert info["description"] == "deploy"
    assert info["expires"] == now + DAY
    assert now - 5 <= info["created"] <= now + 5
    assert info["not_before"] == info["created"]
    assert info["caveats"] == [f"[0,{now + DAY},{info['created']}]", '[1,["foo"]]']
    # the 1.x name=value summary devpi-admin and devpi-api-client parse
    assert info["restrictions"] == [
        f"expires={now + DAY}", f"not_before={info['created']}", "projects=foo"]
    assert (info["projects"], info["indexes"], info["allowed"], info["ips"]) == (
        ["foo"], None, None, None)
    # the salt is in keyfs, never in an answer
    salt = alice.stored_record("alice", token_id)["salt"]
    assert salt not in r.text
    assert "salt" not in r.text
    assert token not in r.text


def test_list_summarizes_every_kind(alice):
    alice.create_index("alice/other", basic("alice", "pw"))
    token = alice.create_token(
        "alice", expires=int(time.time()) + 2 * DAY, not_before=int(time.time()) + DAY,
        projects=["Foo.Bar", "baz"], indexes=["alice/dev", "alice/other"],
        allowed=["upload", "pkg_read"])
    info = alice.list_tokens("alice")[Token.load(token).token_id]
    assert info["restrictions"] == [
        f"expires={info['expires']}", f"not_before={info['not_before']}", "projects=Foo.Bar,baz",
        "indexes=alice/dev,alice/other", "allowed=upload,pkg_read"]
    assert info["indexes"] == ["alice/dev", "alice/other"]
    assert info["allowed"] == ["upload", "pkg_read"]


def test_user_record_as_devpi_shows_it_has_no_tokens(alice):
    # devpi's own user view lists only public keys of the record
    alice.create_token("alice")
    r = alice.app.get("/alice", headers=JSON)
    assert r.status_code == 200
    assert "tokens" not in r.json["result"]


def test_list_of_user_without_tokens(alice):
    assert alice.list_tokens("alice") == {}


def test_delete(alice):
    token = alice.create_token("alice")
    other = alice.create_token("alice")
    token_id = Token.load(token).token_id
    r = alice.app.delete(
        f"/alice/+tokens/{token_id}", headers={**basic("alice", "pw"), **JSON})
    assert r.status_code == 200
    assert token_id in r.json["message"]
    assert list(alice.list_tokens("alice")) == [Token.load(other).token_id]
    r = alice.app.get("/alice/dev/+simple/", headers={**bearer(token), **JSON})
    assert r.status_code == 401
    assert r.json["message"] == f"token {token_id} of user 'alice' was deleted or never existed"
    r = alice.app.get("/alice/dev/+simple/", headers=bearer(other))
    assert r.status_code == 200


def test_delete_unknown_id(alice):
    r = alice.app.delete(
        "/alice/+tokens/abc123", headers={**basic("alice", "pw"), **JSON},
        expect_errors=True)
    assert r.status_code == 404
    assert r.json["message"] == "user 'alice' has no token 'abc123'"


def test_delete_revokes_derived_tokens(alice):
    token = alice.create_token("alice")
    derived = Token.load(token).derive(ProjectNames(("pkg",))).dump()
    assert alice.upload("alice/dev", "pkg", "1.0", bearer(derived)).status_code == 200
    token_id = Token.load(token).token_id
    alice.app.delete(f"/alice/+tokens/{token_id}", headers=basic("alice", "pw"))
    r = alice.upload("alice/dev", "pkg", "1.1", bearer(derived))
    assert r.status_code == 401
    assert "was deleted or never existed" in r.status


@pytest.mark.parametrize("method, path", [
    ("post", "/alice/+token-create"),
    ("get", "/alice/+tokens"),
    ("delete", "/alice/+tokens/abc"),
])
def test_endpoints_need_a_login(alice, method, path):
    r = alice.app._gen_request(method.upper(), path, headers=JSON, expect_errors=True)
    assert r.status_code == 401
    assert "logged in" in r.json["message"]


@pytest.mark.parametrize("method, path", [
    ("POST", "/alice/+token-create"),
    ("GET", "/alice/+tokens"),
    ("DELETE", "/alice/+tokens/abc"),
])
def test_token_cannot_manage_tokens(alice, method, path):
    token = alice.create_token("alice")
    r = alice.app._gen_request(
        method, path, headers={**bearer(token), **JSON}, expect_errors=True)
    assert r.status_code == 403
    assert r.json["message"].startswith("a token cannot be used to")


@pytest.mark.parametrize("method, path", [
    ("POST", "/alice/+token-create"),
    ("GET", "/alice/+tokens"),
    ("DELETE", "/alice/+tokens/abc"),
])
def test_other_user_cannot_manage_tokens(alice, method, path):
    alice.create_user("bob", index=None)
    r = alice.app._gen_request(
        method, path, headers={**basic("bob", "pw"), **JSON}, expect_errors=True)
    assert r.status_code == 403
    assert r.json["message"].startswith("user 'bob' may not")


def test_root_manages_tokens_of_others(alice):
    r = alice.create("root", "", owner="alice", expires="never", description="by root")
    assert r.status_code == 201, r.text
    token = Token.load(r.json["result"]["token"])
    assert token.user == "alice"
    assert token.restrictions == ()
    info = alice.list_tokens("root", "")
    assert info == {}
    r = alice.app.get("/alice/+tokens", headers=basic("root", ""))
    assert r.json["result"]["tokens"][token.token_id]["expires"] is None
    r = alice.app.delete(f"/alice/+tokens/{token.token_id}", headers=basic("root", ""))
    assert r.status_code == 200


def test_unknown_user(srv):
    r = srv.create("root", "", owner="nobody")
    assert r.status_code == 404
    assert r.json["message"] == "no user 'nobody'"


@pytest.mark.parametrize("expires", ["never", 400 * DAY])
def test_long_lived_tokens_only_for_admins(alice, expires):
    if expires != "never":
        expires += int(time.time())
    r = alice.create("alice", expires=expires)
    assert r.status_code == 403
    assert "--restrict-modify" in r.json["message"]
    r = alice.create("root", "", owner="alice", expires=expires)
    assert r.status_code == 201


def test_366_days_is_fine_for_everyone(alice):
    r = alice.create("alice", expires=int(time.time()) + 366 * DAY - 5)
    assert r.status_code == 201


def test_never_with_not_before(alice):
    now = int(time.time())
    r = alice.create("root", "", owner="alice", expires="never", not_before=now + 10)
    assert r.status_code == 201
    (window,) = Token.load(r.json["result"]["token"]).restrictions
    assert window == ValidityWindow(not_after=253402300799, not_before=now + 10)
    r = alice.app.get("/alice/+tokens", headers=basic("alice", "pw"))
    (info,) = r.json["result"]["tokens"].values()
    assert info["expires"] is None


@pytest.fixture
def restricted_srv(makexom, maketestapp, cheap_password_hashing):
    xom = makexom(["--restrict-modify", "root,admin"], plugins=[server_hooks])
    srv = TokenServer(maketestapp(xom))
    for name in ("admin", "alice", "bob"):
        r = srv.app.put_json(f"/{name}", {"password": "pw"}, headers=basic("root", ""))
        assert r.status_code == 201
    return srv


def test_restrict_modify_user_manages_tokens_of_others(restricted_srv):
    srv = restricted_srv
    r = srv.create("admin", owner="alice", expires="never")
    assert r.status_code == 201, r.text
    assert Token.load(r.json["result"]["token"]).user == "alice"
    assert len(srv.list_tokens("alice")) == 1
    # an ordinary user still manages only their own, for a year at most
    assert srv.create("bob", owner="alice").status_code == 403
    assert srv.create("bob").status_code == 201
    assert srv.create("bob", expires="never").status_code == 403


def test_create_answer_warns_without_secret_file(alice):
    r = alice.create("alice")
    warning = r.json["result"]["warning"]
    assert "devpi-gen-secret" in warning
    assert "--secretfile" in warning


def test_startup_warns_without_secret_file(makexom, maketestapp, caplog):
    with caplog.at_level(logging.WARNING):
        maketestapp(makexom([], plugins=[server_hooks]))
    messages = [r.getMessage() for r in caplog.records if "devpi-tokens" in r.getMessage()]
    assert len(messages) == 1
    assert "devpi-gen-secret" in messages[0]
    assert "--secretfile" in messages[0]


def test_no_warning_with_secret_file(
    makexom, maketestapp, secretfile, caplog, cheap_password_hashing,
):
    with caplog.at_level(logging.WARNING):
        xom = makexom(["--secretfile", secretfile], plugins=[server_hooks])
        srv = TokenServer(maketestapp(xom))
    assert not [r for r in caplog.records if "devpi-tokens" in r.getMessage()]
    srv.create_user("alice")
    r = srv.create("alice")
    assert r.status_code == 201
    assert "warning" not in r.json["result"]


def test_other_methods_get_405(alice):
    r = alice.app.get("/alice/+token-create", headers={**basic("alice", "pw"), **JSON})
    assert r.status_code == 405


# Times far enough from the moment of import that a long test run can't
# make "the future" the past before the test runs.
NOW = int(time.time())
DAY = 86400

MALFORMED_BODIES = [
    ("{not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('"text"', "must be a JSON object"),
    ('{"expires": NaN}', "NaN is not allowed"),
    ('{"expires": Infinity}', "Infinity is not allowed"),
    ({"colour": "blue"}, "unknown field(s) 'colour'"),
    ({"expires": "tomorrow"}, "'expires' must be an epoch timestamp"),
    ({"expires": "1893456000"}, "'expires' must be an epoch timestamp"),
    ({"expires": float(NOW + 10 * DAY)}, "'expires' must be an epoch timestamp"),
    ({"expires": True}, "'expires' must be an epoch timestamp"),
    ({"expires": None}, "'expires' must be an epoch timestamp"),
    ({"expires": 2 ** 64}, "out of range"),
    ({"expires": NOW - 10}, "is in the past"),
    ({"not_before": "now"}, "'not_before' must be an epoch timestamp"),
    ({"not_before": -1}, "out of range"),
    ({"expires": NOW + 10 * DAY, "not_before": NOW + 20 * DAY}, "must be earlier than"),
    ({"projects": []}, "'projects' must not be an empty list"),
    ({"projects": "foo"}, "'projects' must be a list of strings"),
    ({"projects": [1]}, "'projects' must be a list of strings"),
    ({"projects": ["foo bar"]}, "is not a valid project name"),
    ({"projects": [""]}, "is not a valid project name"),
    ({"indexes": ["dev"]}, "is not an index name of the form 'user/index'"),
    ({"indexes": ["a/b/c"]}, "is not an index name of the form 'user/index'"),
    ({"indexes": []}, "'indexes' must not be an empty list"),
    ({"allowed": ["pkg_read", "fly"]}, "unknown permission 'fly'"),
    ({"allowed": ["user_modify"]}, "tokens never carry user permissions"),
    ({"allowed": []}, "'allowed' must not be an empty list"),
    ({"allowed": [None]}, "'allowed' must be a list of strings"),
    ({"description": 5}, "'description' must be a string"),
    ({"description": "x" * 1001}, "longer than 1000 characters"),
]


@pytest.mark.parametrize("body, message", MALFORMED_BODIES)
def test_malformed_create_body(alice, body, message):
    raw = body if isinstance(body, str) else json.dumps(body)
    r = alice.app.post(
        "/alice/+token-create", raw,
        headers={**basic("alice", "pw"), **JSON, "Content-Type": "application/json"},
        expect_errors=True)
    assert r.status_code == 400, r.text
    assert message in r.json["message"]
    assert alice.list_tokens("alice") == {}


def test_empty_body_means_defaults(alice):
    r = alice.app.post(
        "/alice/+token-create", b"", headers={**basic("alice", "pw"), **JSON})
    assert r.status_code == 201


def test_api_advertises_the_plugin_to_devpi_admin(srv):
    """devpi-admin offers its token manager when /+api lists "tokens"."""
    features = srv.app.get("/+api", headers=JSON).json["result"]["features"]
    assert "devpi-tokens" in features
    assert "tokens" in features


def test_create_keeps_each_listed_name_once(alice):
    token = alice.create_token("alice", projects=["foo", "bar", "foo"], allowed=["upload"] * 3)
    assert [r.dump() for r in Token.load(token).restrictions[1:]] == [
        '[1,["foo","bar"]]', '["devpi:allowed",["upload"]]']


def test_tweens_keep_devpi_order(srv):
    """The plugin's tweens sit where they must; devpi's views answer by raising,
    so pyramid's exception view tween must stay inside the keyfs transaction."""
    from pyramid.interfaces import ITweens
    registry = srv.app.app.app.registry
    names = [name for name, _ in registry.queryUtility(ITweens).implicit()]
    order = [
        "devpi_server.views.tween_request_logging",
        "devpi_tokens.oidc_views.verify_before_transaction_tween_factory",
        "devpi_server.views.tween_keyfs_transaction",
        "devpi_tokens.server_enforce.token_tween_factory",
        "pyramid.tweens.excview_tween_factory",
    ]
    assert [name for name in names if name in order] == order
