"""Trusted publishing, in process: publishers, the exchange, burn, replay.

devpi-server's own test app (real keyfs and views) with the plugin; JWTs
come from :class:`oidc_issuer.LocalIssuer`, whose keys the server reads
from a JWKS file (``--oidc-issuer URL=PATH``), so GitHub's and GitLab's
issuer URLs are used as they are and nothing goes over the network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
import json
import logging
import time

import pytest
from conftest import JSON
from conftest import TokenServer
from conftest import basic
from conftest import bearer
from oidc_issuer import GITHUB_ISSUER
from oidc_issuer import GITLAB_ISSUER
from oidc_issuer import LocalIssuer
from oidc_issuer import github_claims
from oidc_issuer import gitlab_claims

from devpi_tokens import server_hooks
from devpi_tokens.oidc_config import derive_audience
from devpi_tokens.publishers import MINTED_LIFETIME
from devpi_tokens.publishers import MintedTokenPurger
from devpi_tokens.publishers import PublisherStore
from devpi_tokens.server_store import TRUSTED_FIELD
from devpi_tokens.restrictions import Indexes
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

AUD = "devpi-test"
PW = basic("alice", "pw")
BOB = basic("bob", "pw")
ROOT = basic("root", "")
GITHUB_BODY = {
    "provider": "github", "repository": "alice/proj", "workflow": "release.yml",
    "indexes": ["alice/dev"]}
GITLAB_BODY = {
    "provider": "gitlab", "project_path": "alice/proj", "ci_config_path": ".gitlab-ci.yml",
    "indexes": ["alice/dev"]}


class TPServer(TokenServer):
    """A devpi-server with trusted publishing and a local issuer's keys."""

    def __init__(self, testapp: Any, issuer: LocalIssuer) -> None:
        super().__init__(testapp)
        self.issuer = issuer

    def add_publisher(self, headers: dict[str, str] = PW, user: str = "alice", **body: Any):
        return self.app.post_json(
            f"/{user}/+publishers", body, headers={**headers, **JSON}, expect_errors=True)

    def publisher_id(self, **body: Any) -> str:
        r = self.add_publisher(**{**GITHUB_BODY, **body})
        assert r.status_code == 201, r.text
        return r.json["result"]["id"]

    def publishers(self, user: str = "alice", headers: dict[str, str] = PW) -> dict[str, Any]:
        r = self.app.get(f"/{user}/+publishers", headers={**headers, **JSON})
        assert r.status_code == 200, r.text
        return r.json["result"]["publishers"]

    def post_raw(self, path: str, body: bytes, content_type: str | None = "application/json"):
        headers = {"Content-Type": content_type} if content_type else {}
        return self.app.request(
            path, method="POST", body=body, headers=headers, expect_errors=True)

    def mint(self, jwt: str, path: str = "/_/oidc/mint-token", **kw: Any):
        return self.post_raw(path, json.dumps({"token": jwt}).encode(), **kw)

    def mint_claims(self, claims: dict[str, Any], **kw: Any):
        return self.mint(self.issuer.mint(claims), **kw)

    def minted(self, claims: dict[str, Any]) -> str:
        r = self.mint_claims(claims)
        assert r.status_code == 200, r.text
        assert r.json["success"] is True
        return r.json["token"]

    def burn(self, token: str):
        return self.post_raw("/_/oidc/burn-token", json.dumps({"token": token}).encode())

    def versions(self, index: str, project: str) -> list[str]:
        r = self.app.get(f"/{index}/{project}", headers=JSON, expect_errors=True)
        return sorted(r.json["result"]) if r.status_code == 200 else []


def refused(r, code: str) -> str:
    """The description of a 422 refusal with ``code``."""
    assert r.status_code == 422, r.text
    assert r.json["message"] == "Token request failed"
    (error,) = r.json["errors"]
    assert error["code"] == code, error
    return error["description"]


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer()


@pytest.fixture
def jwks(issuer, tmp_path) -> Path:
    return issuer.write_jwks(tmp_path / "jwks.json")


@pytest.fixture
def start(makexom, maketestapp, tmp_path, cheap_password_hashing, issuer, jwks, secretfile):
    """Start a devpi-server (in process) on one serverdir; options replace the defaults."""
    serverdir = tmp_path / "server"
    started = []

    def start(*options: str, audience: str | None = AUD, issuers: bool = True) -> TPServer:
        args = ["--serverdir", str(serverdir), "--secretfile", secretfile]
        if audience is not None:
            args += ["--oidc-audience", audience]
        if issuers:
            args += [
                "--oidc-issuer", f"{GITHUB_ISSUER}={jwks}",
                "--oidc-issuer", f"{GITLAB_ISSUER}={jwks}"]
        xom = makexom([*args, *options], plugins=[server_hooks])
        started.append(xom)
        return TPServer(maketestapp(xom), issuer)

    yield start
    for xom in started:
        xom.keyfs.release_all_wait_tx()


@pytest.fixture
def tp(start) -> TPServer:
    """A server with alice (alice/dev, alice/other) and bob (bob/dev)."""
    srv = start()
    srv.create_user("alice")
    srv.create_index("alice/other", PW)
    srv.create_user("bob")
    return srv


# ------------------------------------------------------------------ audience

def test_audience_is_the_configured_one(tp):
    r = tp.app.get("/_/oidc/audience")
    assert r.status_code == 200
    assert r.json == {"audience": AUD}


def test_default_audience_is_stable_and_of_the_documented_form(start):
    first = start(audience=None).app.get("/_/oidc/audience").json["audience"]
    second = start(audience=None).app.get("/_/oidc/audience").json["audience"]
    assert first == second
    assert first.startswith("devpi-") and len(first) == 26
    assert first == first.lower() and first[0].isalpha()


def test_default_audience_differs_between_servers():
    assert derive_audience(b"a" * 32) != derive_audience(b"b" * 32)


@pytest.mark.parametrize("audience", ["Devpi", "1abc", "a_b", "a" * 129, ""])
def test_bad_audience_stops_the_server(makexom, maketestapp, audience):
    with pytest.raises(SystemExit, match="oidc-audience"):
        maketestapp(makexom(["--oidc-audience", audience], plugins=[server_hooks]))


def test_missing_jwks_file_stops_the_server(makexom, maketestapp, tmp_path):
    with pytest.raises(SystemExit, match="JWKS file"):
        maketestapp(makexom(
            ["--oidc-issuer", f"{GITHUB_ISSUER}={tmp_path / 'nope.json'}"],
            plugins=[server_hooks]))


# ------------------------------------------------------------------ disabled

def test_disabled(start):
    srv = start("--no-trusted-publishing")
    srv.create_user("alice")
    r = srv.app.get("/_/oidc/audience", expect_errors=True)
    assert r.status_code == 403
    assert r.json == {"message": "trusted publishing is disabled on this server"}
    description = refused(srv.mint_claims(github_claims(audience=AUD)), "not-enabled")
    assert "disabled" in description
    assert srv.add_publisher(**GITHUB_BODY).status_code == 403
    r = srv.app.get("/alice/+publishers", headers={**PW, **JSON}, expect_errors=True)
    assert r.status_code == 403
    assert "disabled" in r.json["message"]
    r = srv.app.delete("/alice/+publishers/abc", headers={**PW, **JSON}, expect_errors=True)
    assert r.status_code == 403
    # burn still answers as always
    assert srv.burn("devpi-whatever").status_code == 202


# ---------------------------------------------------------------- publishers

def test_publisher_crud(tp):
    r = tp.add_publisher(
        **GITHUB_BODY, environment="release", projects=["proj"], description="CI")
    assert r.status_code == 201, r.text
    assert r.json["type"] == "publisher-info"
    info = r.json["result"]
    publisher_id = info["id"]
    assert info["provider"] == "github"
    assert info["issuer"] == GITHUB_ISSUER
    assert info["repository"] == "alice/proj"
    assert info["workflow"] == "release.yml"
    assert info["environment"] == "release"
    assert info["indexes"] == ["alice/dev"]
    assert info["projects"] == ["proj"]
    assert info["description"] == "CI"
    assert info["owner_id"] is None
    r = tp.app.get("/alice/+publishers", headers={**PW, **JSON})
    assert r.json["type"] == "publishers-info"
    assert r.json["result"]["publishers"] == {publisher_id: info}
    gitlab = tp.add_publisher(**GITLAB_BODY)
    assert gitlab.status_code == 201, gitlab.text
    assert gitlab.json["result"]["issuer"] == GITLAB_ISSUER
    assert set(tp.publishers()) == {publisher_id, gitlab.json["result"]["id"]}
    assert tp.publishers("bob", BOB) == {}

    r = tp.app.delete(f"/alice/+publishers/{publisher_id}", headers={**PW, **JSON})
    assert r.status_code == 200
    assert "deleted" in r.json["message"]
    assert r.json["type"] == "publishers-info"
    assert list(r.json["result"]["publishers"]) == [gitlab.json["result"]["id"]]
    assert publisher_id not in tp.publishers()
    r = tp.app.delete(
        f"/alice/+publishers/{publisher_id}", headers={**PW, **JSON}, expect_errors=True)
    assert r.status_code == 404


def test_publishers_need_the_password_of_the_user_or_root(tp):
    token = tp.create_token("alice")
    r = tp.add_publisher(basic("alice", token), **GITHUB_BODY)
    assert r.status_code == 403
    assert "a token cannot be used" in r.json["message"]
    r = tp.app.get("/alice/+publishers", headers={**basic("alice", token), **JSON},
                   expect_errors=True)
    assert r.status_code == 403
    r = tp.add_publisher({}, **GITHUB_BODY)
    assert r.status_code == 401
    r = tp.add_publisher(BOB, **GITHUB_BODY)
    assert r.status_code == 403
    r = tp.app.get("/alice/+publishers", headers={**BOB, **JSON}, expect_errors=True)
    assert r.status_code == 403
    r = tp.add_publisher(ROOT, user="nobody", **GITHUB_BODY)
    assert r.status_code == 404
    # root manages anyone's publishers
    r = tp.add_publisher(ROOT, **GITHUB_BODY)
    assert r.status_code == 201, r.text
    publisher_id = r.json["result"]["id"]
    assert publisher_id in tp.publishers("alice", ROOT)
    r = tp.app.delete(f"/alice/+publishers/{publisher_id}", headers={**BOB, **JSON},
                      expect_errors=True)
    assert r.status_code == 403
    r = tp.app.delete(f"/alice/+publishers/{publisher_id}", headers={**ROOT, **JSON})
    assert r.status_code == 200


def test_restrict_modify_user_manages_publishers(start):
    srv = start("--restrict-modify", "root,admin")
    for user in ("alice", "admin"):
        r = srv.app.put_json(f"/{user}", {"password": "pw"}, headers=ROOT)
        assert r.status_code == 201, r.text
    srv.create_index("alice/dev", ROOT)
    r = srv.add_publisher(basic("admin", "pw"), **GITHUB_BODY)
    assert r.status_code == 201, r.text
    r = srv.add_publisher(PW, **{**GITHUB_BODY, "workflow": "other.yml"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(("change", "reason"), [
    ({"provider": "bitbucket"}, "'provider' must be one of"),
    ({"provider": None}, "'provider' must be one of"),
    ({"repository": "alice"}, "'owner/repo'"),
    ({"repository": "alice/proj/x"}, "'owner/repo'"),
    ({"repository": "-alice/proj"}, "'owner/repo'"),
    ({"repository": None}, "'repository' must be a non-empty string"),
    ({"workflow": "dir/release.yml"}, "'workflow' must be the file name"),
    ({"workflow": "release.txt"}, "'workflow' must be the file name"),
    ({"workflow": ""}, "'workflow' must be a non-empty string"),
    ({"environment": 3}, "'environment' must be a string"),
    ({"environment": "a\nb"}, "'environment' must be a string"),
    ({"indexes": None}, "'indexes' is required"),
    ({"indexes": []}, "'indexes' must name at least one"),
    ({"indexes": "alice/dev"}, "'indexes' must be a list of strings"),
    ({"indexes": ["bob/dev"]}, "is not an index of user 'alice'"),
    ({"indexes": ["alice/nope"]}, "user 'alice' has no index 'alice/nope'"),
    ({"indexes": ["dev"]}, "not an index name of the form 'user/index'"),
    ({"projects": ["not a name"]}, "is not a valid project name"),
    ({"description": 5}, "'description' must be a string"),
    ({"description": "x" * 1001}, "'description' is longer than"),
    ({"extra": 1}, "unknown field(s) 'extra'"),
    ({"project_path": "alice/proj"}, "unknown field(s) 'project_path'"),
])
def test_bad_publisher_bodies(tp, change, reason):
    body = {k: v for k, v in {**GITHUB_BODY, **change}.items() if v is not None}
    r = tp.add_publisher(**body)
    assert r.status_code == 400, r.text
    assert reason in r.json["message"]
    assert tp.publishers() == {}


@pytest.mark.parametrize(("change", "reason"), [
    ({"project_path": "proj"}, "'project_path' must be a GitLab project path"),
    ({"ci_config_path": "../x.yml"}, "'ci_config_path' must be the path"),
    ({"ci_config_path": "ci@x.yml"}, "'ci_config_path' must be the path"),
    ({"issuer": "http://gitlab.example.com"}, "'issuer' must be an https URL"),
    ({"issuer": "https://gitlab.example.com"}, "is not trusted by this server"),
    ({"workflow": "x.yml"}, "unknown field(s) 'workflow'"),
])
def test_bad_gitlab_publisher_bodies(tp, change, reason):
    r = tp.add_publisher(**{**GITLAB_BODY, **change})
    assert r.status_code == 400, r.text
    assert reason in r.json["message"]


@pytest.mark.parametrize("body", [b"[1]", b"not json", b"\xff", b'{"a": NaN}'])
def test_unreadable_publisher_bodies_are_400(tp, body):
    r = tp.app.request(
        "/alice/+publishers", method="POST", body=body,
        headers={**PW, **JSON, "Content-Type": "application/json"}, expect_errors=True)
    assert r.status_code == 400, r.text


def test_an_identity_is_registered_once_per_server(tp):
    tp.publisher_id()
    # the same identity: repository names are case-insensitive
    for headers, user in ((PW, "alice"), (BOB, "bob")):
        body = {**GITHUB_BODY, "repository": "Alice/Proj", "indexes": [f"{user}/dev"]}
        r = tp.add_publisher(headers, user=user, **body)
        assert r.status_code == 409, r.text
        assert "already registered" in r.json["message"]
        assert "alice" not in r.json["message"].replace("Alice/Proj", "")
    # root learns who holds it
    r = tp.add_publisher(ROOT, user="bob", **{**GITHUB_BODY, "indexes": ["bob/dev"]})
    assert r.status_code == 409
    assert "by user 'alice'" in r.json["message"]
    # another user may not pin alice's workflow to an environment: the
    # pinned publisher would win, and alice's runs there would mint bob's tokens
    r = tp.add_publisher(BOB, user="bob", **{
        **GITHUB_BODY, "environment": "release", "indexes": ["bob/dev"]})
    assert r.status_code == 409, r.text
    # alice may; and another workflow is another identity
    r = tp.add_publisher(PW, **{**GITHUB_BODY, "environment": "release"})
    assert r.status_code == 201, r.text
    r = tp.add_publisher(BOB, user="bob", **{
        **GITHUB_BODY, "workflow": "other.yml", "indexes": ["bob/dev"]})
    assert r.status_code == 201, r.text
    # ... which then is bob's alone, whatever the environment
    r = tp.add_publisher(PW, **{**GITHUB_BODY, "workflow": "other.yml", "environment": "x"})
    assert r.status_code == 409, r.text


# ------------------------------------------------------------------ the exchange

def test_minted_token_uploads_to_the_publishers_index_only(tp):
    publisher_id = tp.publisher_id()
    claims = github_claims(audience=AUD)
    before = int(time.time())
    r = tp.mint_claims(claims)
    assert r.status_code == 200, r.text
    token = r.json["token"]
    assert token.startswith("devpi-")
    expires = r.json["expires"]
    assert before + MINTED_LIFETIME <= expires <= int(time.time()) + MINTED_LIFETIME

    auth = basic("__token__", token)
    assert tp.upload("alice/dev", "proj", "1.0", auth).status_code == 200
    assert tp.versions("alice/dev", "proj") == ["1.0"]
    r = tp.upload("alice/other", "proj", "1.0", auth)
    assert r.status_code == 403
    assert tp.versions("alice/other", "proj") == []
    r = tp.upload("bob/dev", "proj", "1.0", auth)
    assert r.status_code == 403
    assert tp.versions("bob/dev", "proj") == []
    # it reads, but may not delete or change the index
    assert tp.simple("alice/dev", "proj", auth).status_code == 200
    r = tp.app.delete("/alice/dev/proj/1.0", headers=auth, expect_errors=True)
    assert r.status_code == 403
    assert tp.versions("alice/dev", "proj") == ["1.0"]

    # a normal token of alice, listed with where it came from
    (token_id, info), = tp.list_tokens("alice").items()
    assert Token.load(token).token_id == token_id
    assert info["trusted_publisher"] == publisher_id
    assert info["indexes"] == ["alice/dev"]
    assert info["projects"] is None
    assert sorted(info["allowed"]) == ["pkg_read", "upload"]
    assert info["expires"] == expires
    assert "github alice/proj (release.yml)" in info["description"]
    assert claims["ref"] in info["description"]
    assert claims["sha"] in info["description"]
    # the owner id is pinned now
    assert tp.publishers()[publisher_id]["owner_id"] == claims["repository_owner_id"]


def test_minted_token_keeps_to_the_publishers_projects(tp):
    tp.publisher_id(projects=["proj"])
    auth = basic("__token__", tp.minted(github_claims(audience=AUD)))
    assert tp.upload("alice/dev", "proj", "1.0", auth).status_code == 200
    r = tp.upload("alice/dev", "other", "1.0", auth)
    assert r.status_code == 403
    assert tp.versions("alice/dev", "other") == []
    assert tp.versions("alice/dev", "proj") == ["1.0"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_mint_body_is_json_whatever_the_content_type(tp, content_type):
    tp.publisher_id()
    r = tp.mint_claims(github_claims(audience=AUD), content_type=content_type)
    assert r.status_code == 200, r.text


def test_github_action_path(tp):
    tp.publisher_id()
    r = tp.mint(tp.issuer.mint(github_claims(audience=AUD)), path="/_/oidc/github/mint-token")
    assert r.status_code == 200, r.text


def test_es256_tokens_are_accepted(tp):
    tp.publisher_id()
    r = tp.mint(tp.issuer.mint(github_claims(audience=AUD), alg="ES256"))
    assert r.status_code == 200, r.text


def test_gitlab_exchange(tp):
    r = tp.add_publisher(**GITLAB_BODY, environment="production")
    assert r.status_code == 201, r.text
    publisher_id = r.json["result"]["id"]
    claims = gitlab_claims(audience=AUD, environment="production")
    token = tp.minted(claims)
    assert tp.upload("alice/dev", "proj", "1.0", basic("__token__", token)).status_code == 200
    (info,) = tp.list_tokens("alice").values()
    assert info["trusted_publisher"] == publisher_id
    assert "gitlab alice/proj (.gitlab-ci.yml)" in info["description"]
    assert claims["sha"] in info["description"]
    assert "refs/tags/v1.0" in info["description"]
    # project paths are case-insensitive
    tp.minted(gitlab_claims("Alice/Proj", audience=AUD, environment="production"))
    for claims, reason in [
        (gitlab_claims(audience=AUD, environment="staging"), "environment 'staging'"),
        (gitlab_claims(audience=AUD), "environment None"),
        (gitlab_claims(audience=AUD, ci_config_path="other.yml", environment="production"),
         "ci_config_ref_uri"),
        (gitlab_claims("alice/other", audience=AUD, environment="production"),
         "no trusted publisher is registered for project 'alice/other'"),
    ]:
        assert reason in refused(tp.mint_claims(claims), "invalid-publisher")


def test_gitlab_self_hosted_issuer(start, issuer, jwks):
    url = "https://gitlab.example.com:8443"
    srv = start("--oidc-issuer", f"{url}={jwks}")
    srv.create_user("alice")
    r = srv.add_publisher(**GITLAB_BODY, issuer=url + "/")
    assert r.status_code == 201, r.text
    assert r.json["result"]["issuer"] == url
    srv.minted(gitlab_claims(audience=AUD, issuer=url))
    # the same project on gitlab.com is another publisher
    description = refused(srv.mint_claims(gitlab_claims(audience=AUD)), "invalid-publisher")
    assert "no trusted publisher is registered" in description


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "not valid JSON"),
    (b"token=abc", "not valid JSON"),
    (b"[]", "'token'"),
    (b'{"jwt": "x"}', "'token'"),
    (b'{"token": 5}', "'token'"),
    (b'{"token": ""}', "'token'"),
    (b"\xff\xfe", "not UTF-8"),
    (b'{"token": "' + b"a" * 70000 + b'"}', "larger than"),
    (b"[" * 100 + b"]" * 100, "nests deeper"),
])
def test_invalid_payload(tp, body, reason):
    description = refused(tp.post_raw("/_/oidc/mint-token", body), "invalid-payload")
    assert reason in description


def test_invalid_tokens(tp, tmp_path):
    tp.publisher_id()
    other = LocalIssuer()
    now = int(time.time())
    cases = [
        (tp.issuer.mint(github_claims(audience="devpi-other")),
         "for audience 'devpi-other', not this server's 'devpi-test'"),
        (tp.issuer.mint(github_claims(audience=AUD, now=now - 3600)), "expired"),
        (tp.issuer.mint(github_claims(audience=AUD, issuer="https://evil.example")),
         "is not trusted by this server"),
        (other.mint(github_claims(audience=AUD), kid=tp.issuer.kid), "bad signature"),
        (other.mint(github_claims(audience=AUD)), "is not among the keys"),
        (tp.issuer.mint(github_claims(audience=AUD), alg="HS256"), "not accepted"),
        (tp.issuer.mint(github_claims(audience=AUD), alg="none"), "not accepted"),
        (tp.issuer.mint(github_claims(audience=AUD, jti=None)), "jti"),
        (tp.issuer.mint(github_claims(audience=AUD, exp=None)), "exp"),
        ("not.a.jwt", "not a JWT"),
        ("x" * 20000, "longer than"),
    ]
    for jwt, reason in cases:
        assert reason in refused(tp.mint(jwt), "invalid-token")
    future = tp.issuer.mint(github_claims(audience=AUD, now=now + 3600))
    description = refused(tp.mint(future), "invalid-token")
    assert "not valid before" in description or "issued in the future" in description
    # nothing was minted, nothing pinned
    assert tp.list_tokens("alice") == {}
    assert all(p["owner_id"] is None for p in tp.publishers().values())


# claims are made when the test runs: made at collection, they could expire
# before a long run reaches them
@pytest.mark.parametrize(("overrides", "reason"), [
    (dict(repository="alice/other", audience=AUD),
     "no trusted publisher is registered for repository 'alice/other', "
     "workflow 'release.yml'"),
    (dict(audience=AUD, workflow="test.yml"),
     "job_workflow_ref 'alice/proj/.github/workflows/test.yml@refs/tags/v1.0'"),
    (dict(audience=AUD, repository_owner="mallory"),
     "repository_owner 'mallory' is not the publisher's 'alice'"),
    (dict(audience=AUD, job_workflow_ref=None), "job_workflow_ref None"),
    (dict(
        audience=AUD,
        job_workflow_ref="mallory/proj/.github/workflows/release.yml@refs/heads/main"),
     "job_workflow_ref 'mallory/proj"),
    (dict(audience=AUD, event_name="pull_request_target"), "pull_request_target"),
    (dict(audience=AUD, repository_owner_id=None), "no repository_owner_id"),
])
def test_invalid_publisher(tp, overrides, reason):
    tp.publisher_id()
    description = refused(tp.mint_claims(github_claims(**overrides)), "invalid-publisher")
    assert reason in description
    assert tp.list_tokens("alice") == {}


def test_environment_must_match_when_the_publisher_names_one(tp):
    tp.publisher_id(environment="release")
    for claims, reason in [
        (github_claims(audience=AUD), "environment None"),
        (github_claims(audience=AUD, environment="staging"), "environment 'staging'"),
    ]:
        assert reason in refused(tp.mint_claims(claims), "invalid-publisher")
    # GitHub environment names are case-insensitive
    tp.minted(github_claims(audience=AUD, environment="Release"))


def test_repository_names_are_case_insensitive(tp):
    tp.publisher_id()
    claims = github_claims("Alice/PROJ", audience=AUD)
    tp.minted(claims)


def test_jti_is_exchanged_once(tp):
    tp.publisher_id()
    jwt = tp.issuer.mint(github_claims(audience=AUD))
    assert tp.mint(jwt).status_code == 200
    description = refused(tp.mint(jwt), "invalid-reuse-token")
    assert "exchanged before" in description
    refused(tp.mint(jwt, path="/_/oidc/github/mint-token"), "invalid-reuse-token")
    assert len(tp.list_tokens("alice")) == 1


def test_refused_exchanges_do_not_use_up_the_jti(tp):
    jwt = tp.issuer.mint(github_claims(audience=AUD))
    refused(tp.mint(jwt), "invalid-publisher")
    tp.publisher_id()
    assert tp.mint(jwt).status_code == 200


def test_jti_is_exchanged_once_across_restarts(start, issuer):
    first = start()
    first.create_user("alice")
    first.publisher_id()
    jwt = issuer.mint(github_claims(audience=AUD))
    assert first.mint(jwt).status_code == 200
    second = start()
    refused(second.mint(jwt), "invalid-reuse-token")
    assert second.mint_claims(github_claims(audience=AUD)).status_code == 200


def test_expired_jtis_are_dropped(tp):
    tp.publisher_id()
    store: PublisherStore = tp.app.app.app.registry["devpi_tokens.oidc"].publishers
    with tp.xom.keyfs.write_transaction():
        assert store.use_jti("iss", "old", exp=100, now=100)
    with tp.xom.keyfs.write_transaction():
        assert not store.use_jti("iss", "old", exp=100, now=101)
        assert store.use_jti("iss", "new", exp=int(time.time()), now=int(time.time()))
    with tp.xom.keyfs.read_transaction():
        table = store._jti_key().get()
        assert len(table) == 1


def test_owner_id_is_pinned_at_the_first_exchange(tp):
    publisher_id = tp.publisher_id()
    tp.minted(github_claims(audience=AUD, repository_owner_id="1111"))
    assert tp.publishers()[publisher_id]["owner_id"] == "1111"
    tp.minted(github_claims(audience=AUD, repository_owner_id="1111"))
    description = refused(
        tp.mint_claims(github_claims(audience=AUD, repository_owner_id="2222")),
        "invalid-publisher")
    assert "repository_owner_id 2222 is not 1111" in description
    assert len(tp.list_tokens("alice")) == 2
    # registering it anew starts over
    tp.app.delete(f"/alice/+publishers/{publisher_id}", headers={**PW, **JSON})
    publisher_id = tp.publisher_id()
    tp.minted(github_claims(audience=AUD, repository_owner_id="2222"))
    assert tp.publishers()[publisher_id]["owner_id"] == "2222"


def indexes_of(token: str) -> list[tuple[str, ...]]:
    return [r.indexes for r in Token.load(token).restrictions if isinstance(r, Indexes)]


def test_environment_pinned_publisher_wins(tp):
    tp.publisher_id()
    r = tp.add_publisher(PW, **{
        **GITHUB_BODY, "environment": "release", "indexes": ["alice/other"]})
    assert r.status_code == 201, r.text
    token = tp.minted(github_claims(audience=AUD, environment="release"))
    assert indexes_of(token) == [("alice/other",)]
    token = tp.minted(github_claims(audience=AUD, environment="staging"))
    assert indexes_of(token) == [("alice/dev",)]
    token = tp.minted(github_claims(audience=AUD))
    assert indexes_of(token) == [("alice/dev",)]


def test_deleted_publisher_mints_nothing(tp):
    publisher_id = tp.publisher_id()
    tp.app.delete(f"/alice/+publishers/{publisher_id}", headers={**PW, **JSON})
    refused(tp.mint_claims(github_claims(audience=AUD)), "invalid-publisher")


# ------------------------------------------------------------------ burn

def test_burn_revokes_a_minted_token(tp):
    tp.publisher_id()
    token = tp.minted(github_claims(audience=AUD))
    auth = basic("__token__", token)
    assert tp.upload("alice/dev", "proj", "1.0", auth).status_code == 200
    r = tp.burn(token)
    assert r.status_code == 202
    assert "message" in r.json
    assert tp.list_tokens("alice") == {}
    assert tp.upload("alice/dev", "proj", "1.1", auth).status_code == 401
    assert tp.versions("alice/dev", "proj") == ["1.0"]
    assert tp.burn(token).status_code == 202


def test_burn_leaves_other_tokens_alone(tp):
    token = tp.create_token("alice")
    assert tp.burn(token).status_code == 202
    assert len(tp.list_tokens("alice")) == 1
    assert tp.upload("alice/dev", "proj", "1.0", basic("__token__", token)).status_code == 200


def test_burn_needs_the_real_token(tp):
    tp.publisher_id()
    token = tp.minted(github_claims(audience=AUD))
    # a token with the same user and id but another signature
    loaded = Token.load(token)
    forged = Token.mint(loaded.user, loaded.token_id, b"k" * 32, loaded.restrictions).dump()
    assert tp.burn(forged).status_code == 202
    assert len(tp.list_tokens("alice")) == 1


@pytest.mark.parametrize("body", [
    b"", b"junk", b"[]", b'{"token": 3}', b'{"token": "devpi-xyz"}', b"\xff",
    b'{"token": "' + b"devpi-" + b"A" * 70000 + b'"}'])
def test_burn_answers_202_whatever_it_gets(tp, body):
    r = tp.post_raw("/_/oidc/burn-token", body)
    assert r.status_code == 202
    assert "message" in r.json


def test_expired_minted_tokens_are_purged_at_the_next_exchange(tp):
    publisher_id = tp.publisher_id()
    now = int(time.time())
    with tp.xom.keyfs.write_transaction():
        tp.store.create(
            "alice", (), created=now - 2000, expires=now - 1000,
            description="old minted", extra={TRUSTED_FIELD: publisher_id})
        tp.store.create(
            "alice", (), created=now - 2000, expires=now - 1000, description="old own")
    assert len(tp.list_tokens("alice")) == 2
    tp.minted(github_claims(audience=AUD))
    descriptions = sorted(i["description"] for i in tp.list_tokens("alice").values())
    assert descriptions[0] == "old own"
    assert descriptions[1].startswith("trusted publishing: github alice/proj")
    assert len(descriptions) == 2


def test_expired_minted_tokens_are_purged_in_the_background(tp):
    publisher_id = tp.publisher_id()
    tp.minted(github_claims(audience=AUD))
    now = int(time.time())
    with tp.xom.keyfs.write_transaction():
        tp.store.create(
            "bob", (), created=now - 2000, expires=now - 1000,
            description="old minted", extra={TRUSTED_FIELD: publisher_id})
        tp.store.create(
            "bob", (), created=now - 2000, expires=now - 1000, description="old own")
    purger = MintedTokenPurger(tp.xom, tp.store)
    removed = purger.purge(now)
    assert list(removed) == ["bob"]
    assert [i["description"] for i in tp.list_tokens("bob", "pw").values()] == ["old own"]
    assert len(tp.list_tokens("alice")) == 1
    assert purger.purge(now) == {}
    # once the minted token expired, it goes too
    minted = list(tp.list_tokens("alice"))
    assert purger.purge(now + MINTED_LIFETIME + 1) == {"alice": minted}
    assert tp.list_tokens("alice") == {}


def test_the_purger_runs_in_devpis_thread_pool(tp):
    assert any(isinstance(obj, MintedTokenPurger) for obj in tp.xom.thread_pool._objects)


# ------------------------------------------------------------------ replicas

def test_replica_replicates_publishers_jtis_and_minted_tokens(start, makexom, maketestapp,
                                                               secretfile, jwks):
    primary = start(audience=None)
    primary.create_user("alice")
    publisher_id = primary.publisher_id()
    token = primary.minted(github_claims(audience=primary.app.get(
        "/_/oidc/audience").json["audience"]))
    xom = makexom([
        "--primary-url", "http://127.0.0.1:3999", "--secretfile", secretfile,
        "--oidc-issuer", f"{GITHUB_ISSUER}={jwks}"], plugins=[server_hooks])
    replica = TPServer(maketestapp(xom), primary.issuer)
    # as devpi's replica thread imports them (our own keyfs key included)
    source, target = primary.xom.keyfs, replica.xom.keyfs
    for serial in range(target.get_next_serial(), source.get_next_serial()):
        with source._storage.get_connection() as conn:
            changes = conn.get_changes(serial)
        target.import_changes(serial, changes)
    # the same audience (derived from the shared secret), publishers and token
    assert replica.app.get("/_/oidc/audience").json == primary.app.get("/_/oidc/audience").json
    assert list(replica.publishers()) == [publisher_id]
    r = replica.app.get(
        "/alice/dev/+api", headers={**basic("__token__", token), **JSON})
    assert r.json["result"]["authstatus"][:2] == ["ok", "alice"]


# ------------------------------------------------------------------ robustness

def test_other_methods_are_405(tp):
    r = tp.app.get("/_/oidc/mint-token", expect_errors=True)
    assert r.status_code == 405
    r = tp.app.put("/_/oidc/audience", expect_errors=True)
    assert r.status_code == 405
    r = tp.app.put("/alice/+publishers", headers=PW, expect_errors=True)
    assert r.status_code == 405


def test_mint_never_answers_500(tp, monkeypatch):
    tp.publisher_id()
    store = tp.app.app.app.registry["devpi_tokens.oidc"].publishers

    def broken(*args, **kw):
        raise RuntimeError("secret jwt in here")

    monkeypatch.setattr(store, "find", broken)
    description = refused(tp.mint_claims(github_claims(audience=AUD)), "invalid-token")
    assert "could not process" in description


def test_logs_never_hold_a_jwt_or_a_token(tp, caplog):
    caplog.set_level(logging.DEBUG)
    tp.publisher_id()
    jwt = tp.issuer.mint(github_claims(audience=AUD))
    token = tp.mint(jwt).json["token"]
    tp.mint(jwt)  # a replay: refused, logged
    tp.mint(tp.issuer.mint(github_claims(audience="devpi-else")))
    tp.burn(token)
    text = caplog.text
    assert "minted token" in text and "burned token" in text
    for secret in (jwt, token, jwt.split(".")[2], token[6:40]):
        assert secret not in text


def test_a_publisher_has_a_bounded_number_of_tokens_in_use(tp, monkeypatch):
    from devpi_tokens import publishers
    monkeypatch.setattr(publishers, "MAX_LIVE_MINTED", 3)
    tp.publisher_id()
    for _ in range(3):
        tp.minted(github_claims(audience=AUD))
    description = refused(tp.mint_claims(github_claims(audience=AUD)), "invalid-publisher")
    assert "has 3 tokens in use" in description
    assert len(tp.list_tokens("alice")) == 3


def test_minted_tokens_keep_within_the_servers_max_lifetime(start):
    """--tokens-max-lifetime shorter than 15 minutes: minted tokens live that long."""
    srv = start("--tokens-max-lifetime", "10m")
    srv.create_user("alice")
    srv.create_index("alice/other", PW)
    srv.publisher_id()
    r = srv.mint_claims(github_claims(audience=AUD))
    assert r.status_code == 200, r.text
    (info,) = srv.list_tokens("alice").values()
    assert info["expires"] - info["created"] == 600
    assert info["exceeds_max_lifetime"] is False
    # and it works: the limit does not refuse it
    status = srv.upload("alice/dev", "proj", "1.0", bearer(r.json["token"])).status_code
    assert status == 200
