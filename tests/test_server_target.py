"""Enforcement judges a request by what devpi-server will do with it.

In-process (devpi-server's own test app, real keyfs and views): push and
submit bodies read as devpi reads them, project names compared as devpi
normalizes them, reads through index inheritance, escaped log lines and
bounded bodies.  The same attacks against a real server process are in
test_enforcement_differential.py.
"""
from __future__ import annotations

import json
import logging

import pytest
from conftest import JSON
from conftest import basic
from conftest import bearer
from hypothesis import given
from hypothesis import strategies as st
from pymacaroons import MACAROON_V2
from pymacaroons import Macaroon

from devpi_tokens.restrictions import Indexes
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.restrictions import normalize_project
from devpi_tokens.server_json import nesting_depth
from devpi_tokens.server_log import escape
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

PW = basic("alice", "pw")
KELVIN = "\u212a"


@pytest.fixture
def ix(alice):
    """alice with alice/dev and alice/other, and bar 1.0 uploaded to alice/dev."""
    alice.create_index("alice/other", PW)
    assert alice.upload("alice/dev", "bar", "1.0", PW).status_code == 200
    assert alice.upload("alice/dev", "foo", "1.0", PW).status_code == 200
    return alice


def projects(srv, index: str) -> list[str]:
    return srv.app.get(f"/{index}", headers=JSON).json["result"]["projects"]


def versions(srv, index: str, project: str) -> dict:
    r = srv.app.get(f"/{index}/{project}", headers=JSON, expect_errors=True)
    return r.json.get("result", {}) if r.status_code == 200 else {}


def raw_post(srv, path: str, body: bytes, headers: dict[str, str], method: str = "POST"):
    return srv.app.request(
        path, method=method, body=body, headers=headers, expect_errors=True)


# ------------------------------------------------- push and register bodies

@pytest.mark.parametrize("method", ["POST", "PUSH"])
def test_json_push_sent_as_a_form_is_judged_as_devpi_reads_it(ix, method):
    """The body is JSON to devpi (no :action), whatever the Content-Type says."""
    token = ix.create_token("alice", projects=["foo"])
    body = json.dumps({
        "name": "bar", "version": "1.0", "targetindex": "alice/other",
        "no_docs": "&name=foo&"}).encode()
    r = raw_post(ix, "/alice/dev", body, {
        **bearer(token), "Content-Type": "application/x-www-form-urlencoded"}, method)
    assert r.status_code == 403, r.text
    assert "token not valid for project 'bar'" in r.text
    assert "bar" not in projects(ix, "alice/other")


def test_utf7_push_is_read_with_its_charset(ix):
    token = ix.create_token("alice", projects=["foo"])
    # as UTF-8 this names foo; as UTF-7 (what webob decodes) a second name, bar
    body = b'{"name":"foo","x":"+ACIALAAi-name+ACIAOgAi-bar","version":"1.0",' \
           b'"targetindex":"alice/other"}'
    assert json.loads(body.decode("utf-7"))["name"] == "bar"
    r = raw_post(ix, "/alice/dev", body, {
        **bearer(token), "Content-Type": "application/json; charset=utf-7"})
    assert r.status_code == 403, r.text
    assert "bar" not in projects(ix, "alice/other")


def test_register_without_content_type_is_a_form(ix):
    """No Content-Type: webob parses a form, so devpi sees a submit of bar."""
    token = ix.create_token("alice", projects=["foo"])
    before = versions(ix, "alice/dev", "bar")
    body = b'{"name":"foo","x":"&:action=submit&name=bar&version=66.6&summary=planted&"}'
    r = raw_post(ix, "/alice/dev/", body, bearer(token))
    assert r.status_code == 403, r.text
    assert "token not valid for project 'bar'" in r.text
    assert versions(ix, "alice/dev", "bar") == before


def test_repeated_form_names_judged_by_the_last_as_devpi_does(ix):
    token = ix.create_token("alice", projects=["foo"])
    r = raw_post(ix, "/alice/dev/", b":action=submit&name=foo&name=bar&version=2.0", {
        **bearer(token), "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403, r.text
    assert "2.0" not in versions(ix, "alice/dev", "bar")
    r = raw_post(ix, "/alice/dev/", b":action=submit&name=bar&name=foo&version=2.0", {
        **bearer(token), "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert "2.0" in versions(ix, "alice/dev", "foo")


@pytest.mark.parametrize(("content_type", "body", "reason"), [
    ("application/json; charset=no-such-codec",
     b'{"name":"foo","version":"1.0","targetindex":"alice/other"}',
     "not JSON devpi can read"),
    ("application/json", b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ("application/json", b'["name", "foo"]', "a push body must be a JSON object"),
    ("application/json", b"[" * 100_000 + b"]" * 100_000, "is limited to"),
    ("application/json", b'{"name":["foo"],"version":"1.0"}', "needs 'name' and 'version'"),
    ("application/json", b'{"name":"foo"}', "needs 'name' and 'version'"),
    ("application/json", b'{"name":"foo","version":"1","targetindex":7}', "'targetindex'"),
    ("application/json", b'{"name":"foo","version":"1.0"}', "a push needs 'targetindex'"),
    ("application/x-www-form-urlencoded; charset=latin-1", b":action=submit&name=foo",
     "the form cannot be read"),
])
def test_bodies_devpi_cannot_read_are_refused_with_a_reason(ix, content_type, body, reason):
    """devpi itself would answer some of these with a 500; a token gets a 400."""
    token = ix.create_token("alice", projects=["foo"])
    r = raw_post(ix, "/alice/dev", body, {**bearer(token), "Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert reason in r.text
    assert "the request body cannot be read the way devpi-server reads it" in r.status


def multipart(*parts: tuple[str, str, str | None]) -> tuple[bytes, str]:
    """A multipart body of (field, value, filename or None) parts, and its type."""
    boundary = "xyzzy"
    chunks = []
    for field, value, filename in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n")
    body = "".join(chunks) + f"--{boundary}--\r\n"
    return body.encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(("parts", "reason"), [
    ([(":action", "submit", None), ("name", "bar", "x")], "'name' field is not text"),
    ([(":action", "file_upload", "a"), ("name", "foo", None)], "':action' field is not text"),
    ([(":action", "file_upload", None), ("name", "foo", None),
      ("content", "x", "foo-1.0.tar.gz")], "needs a 'version' field"),
    ([(":action", "doc_upload", None), ("content", "x", "foo.zip")], "needs a 'name' field"),
    ([(":action", "file_upload", None), ("name", "foo", None), ("version", "1.0", None),
      ("content", "x", None)], "needs its 'content' as a file"),
])
def test_submits_devpi_would_fail_on_are_refused(ix, parts, reason):
    """Each of these is a 500 with a traceback in devpi-server 6.20 without a token."""
    token = ix.create_token("alice", projects=["foo"])
    body, content_type = multipart(*parts)
    r = raw_post(ix, "/alice/dev/", body, {**bearer(token), "Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert reason in r.text


def test_password_requests_are_left_to_devpi(ix):
    """Only token requests are refused early; devpi answers password ones itself."""
    r = raw_post(ix, "/alice/dev", b"not json", {**PW, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert "could not decode json" in r.text


# --------------------------------------------------------- project names

@given(st.text(max_size=40))
def test_names_normalized_exactly_as_devpi_server(name):
    from devpi_server.normalized import normalize_name
    assert normalize_project(name) == normalize_name(name)


def test_kelvin_sign_upload_lands_elsewhere_and_is_refused(ix):
    token = ix.create_token("alice", projects=["foo-k-bar"])
    r = ix.upload("alice/dev", f"foo-{KELVIN}-bar", "1.0", bearer(token),
                  filename="foo_bar-1.0.tar.gz")
    assert r.status_code == 403, r.text
    assert "foo-bar" not in projects(ix, "alice/dev")


def test_kelvin_sign_delete_is_refused(ix):
    assert ix.upload("alice/dev", "foo-bar", "1.0", PW).status_code == 200
    token = ix.create_token("alice", projects=["foo-k-bar"])
    r = ix.app.delete(
        "/alice/dev/foo-%E2%84%AA-bar/1.0", headers={**bearer(token), **JSON},
        expect_errors=True)
    assert r.status_code == 403, r.text
    assert "1.0" in versions(ix, "alice/dev", "foo-bar")


@pytest.mark.parametrize("name", ["foo bar", f"foo{KELVIN}", "-foo", "foo.", "", "f\u00f6o"])
def test_create_refuses_names_that_are_not_pep508(alice, name):
    r = alice.create("alice", projects=[name])
    assert r.status_code == 400
    assert "not a valid project name" in r.json["message"]


# ------------------------------------------------------ read through bases

@pytest.fixture
def family(alice):
    """alice/grand <- alice/base <- alice/kid, and alice/unrelated; one package each."""
    alice.create_index("alice/grand", PW)
    alice.create_index("alice/base", PW, bases=["alice/grand"])
    alice.create_index("alice/kid", PW, bases=["alice/base"])
    alice.create_index("alice/unrelated", PW)
    for index, name in [("alice/grand", "g"), ("alice/base", "b"), ("alice/unrelated", "u")]:
        assert alice.upload(index, name, "1.0", PW).status_code == 200
    return alice


def base_file_path(srv, index: str, project: str) -> str:
    r = srv.app.get(f"/{index}/{project}/1.0", headers={**PW, **JSON})
    (link,) = r.json["result"]["+links"]
    return "/" + link["href"].split("/", 3)[3]


def test_reading_follows_the_allowed_index_bases(family):
    token = family.create_token("alice", indexes=["alice/kid"])
    for project, home in [("b", "alice/base"), ("g", "alice/grand")]:
        r = family.app.get(f"/alice/kid/+simple/{project}/", headers=bearer(token))
        assert r.status_code == 200, r.text
        path = base_file_path(family, home, project)
        assert path.startswith(f"/{home}/+f/")
        r = family.app.get(path, headers=bearer(token))
        assert r.status_code == 200, r.text
        assert r.body == b"not really an sdist"


def test_only_reading_follows_bases(family):
    token = family.create_token("alice", indexes=["alice/kid"])
    r = family.upload("alice/base", "newpkg", "1.0", bearer(token))
    assert r.status_code == 403, r.text
    assert "token not valid for index 'alice/base'" in r.text
    assert "newpkg" not in projects(family, "alice/base")
    path = base_file_path(family, "alice/base", "b")
    r = family.app.delete(path, headers={**bearer(token), **JSON}, expect_errors=True)
    assert r.status_code == 403, r.text
    assert family.app.get(path, headers=PW).status_code == 200


def test_unrelated_index_stays_closed(family):
    token = family.create_token("alice", indexes=["alice/kid"])
    path = base_file_path(family, "alice/unrelated", "u")
    r = family.app.get(path, headers=bearer(token), expect_errors=True)
    assert r.status_code == 403
    assert "token not valid for index 'alice/unrelated'" in r.text
    # the other way round: the base does not read its children
    token = family.create_token("alice", indexes=["alice/base"])
    assert family.upload("alice/kid", "k", "1.0", PW).status_code == 200
    path = base_file_path(family, "alice/kid", "k")
    assert family.app.get(path, headers=bearer(token), expect_errors=True).status_code == 403


# ------------------------------------------------------------ log lines

def forged(identifier: str) -> str:
    macaroon = Macaroon(location="", identifier=identifier, key="x", version=MACAROON_V2)
    return "devpi-" + macaroon.serialize()


def test_client_text_never_starts_a_log_line(alice, caplog):
    caplog.set_level(logging.DEBUG)
    token = alice.create_token("alice", projects=["foo"])
    attempts = [
        bearer(forged("alice\nFORGED LINE one-abc123")),
        basic("x\nFORGED LINE two", token),
    ]
    for headers in attempts:
        r = alice.app.get("/alice/dev/+simple/", headers=headers, expect_errors=True)
        assert r.status_code in (401, 403)
    r = alice.upload("alice/dev", "bar\nFORGED LINE three", "1.0", bearer(token))
    assert r.status_code in (400, 403)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "FORGED" in logged  # the attempts are logged ...
    for line in logged.splitlines():
        assert not line.startswith("FORGED"), line  # ... but only escaped
    assert "\\nFORGED LINE one" in logged


@given(st.text())
def test_escape_gives_one_printable_line(text):
    escaped = escape(text)
    assert escaped.isascii() and escaped.isprintable()
    if len(text) <= 300:
        assert escaped.encode("ascii").decode("unicode_escape") == text


# ------------------------------------------------------------ bounded bodies

@pytest.mark.parametrize(("body", "reason"), [
    (b"[" * 100_000 + b"]" * 100_000, "larger than"),
    (b"[" * 20 + b"]" * 20, "nests deeper than 16 levels"),
    (b'{"description": "' + b"x" * 70_000 + b'"}', "larger than"),
    (b'{"projects": [NaN]}', "NaN is not allowed"),
    (b"\xff", "not UTF-8"),
])
def test_create_body_bounded(alice, body, reason):
    r = alice.app.post(
        "/alice/+token-create", body, headers={**PW, "Content-Type": "application/json"},
        expect_errors=True)
    assert r.status_code == 400, r.text
    assert reason in r.json["message"]


nested = st.recursive(
    st.none() | st.integers() | st.text(alphabet='a"\\[]{}'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(alphabet='k"\\[{', max_size=3), inner, max_size=3),
    max_leaves=20)


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@given(nested)
def test_nesting_depth_matches_the_parsed_value(value):
    assert nesting_depth(json.dumps(value)) == depth_of(value)


# ------------------------------------------------------------ no token in reprs

def test_token_repr_and_str_hide_the_token():
    token = Token.mint("alice", "abc123", b"k" * 32, [ProjectNames(("foo",)),
                                                      Indexes(("alice/dev",))])
    raw = token.dump()
    for text in (repr(token), str(token), f"{token}", repr([token])):
        assert raw not in text
        assert raw.removeprefix("devpi-")[:20] not in text
        assert "abc123" in text and "alice" in text


# ------------------------------------------- changing bases cannot widen reading

class PrivateIndexes:
    """Test plugin: an index described "private" is readable by alice only."""

    from pluggy import HookimplMarker
    hookimpl = HookimplMarker("devpiserver")

    @staticmethod
    @hookimpl(tryfirst=True)
    def devpiserver_stage_get_principals_for_pkg_read(ixconfig):
        return ["alice"] if ixconfig.get("description") == "private" else None


@pytest.fixture
def private(makexom, cheap_password_hashing):
    """alice with alice/dev, alice/secret (private) and alice/public."""
    from webtest import TestApp

    from conftest import TokenServer
    from devpi_tokens import server_hooks

    xom = makexom([], plugins=[server_hooks, PrivateIndexes])
    app = TestApp(xom.create_app())
    app.xom = xom
    srv = TokenServer(app)
    srv.create_user("alice")
    srv.create_index("alice/secret", PW, description="private")
    srv.create_index("alice/public", PW)
    for index, name in [("alice/secret", "s"), ("alice/public", "p")]:
        assert srv.upload(index, name, "1.0", PW).status_code == 200
    yield srv
    xom.keyfs.release_all_wait_tx()


def index_config(srv, index: str) -> dict | None:
    r = srv.app.get(f"/{index}", headers={**PW, **JSON}, expect_errors=True)
    return r.json["result"] if r.status_code == 200 else None


def test_token_cannot_add_a_base_it_may_not_read(private):
    token = private.create_token("alice", indexes=["alice/dev"])
    secret_file = base_file_path(private, "alice/secret", "s")
    assert private.app.get(secret_file, expect_errors=True).status_code in (401, 403)
    r = private.app.patch_json(
        "/alice/dev", ["bases+=alice/secret"], headers={**bearer(token), **JSON},
        expect_errors=True)
    assert r.status_code == 403, r.text
    assert "cannot make them inherit from alice/secret" in r.json["message"]
    assert index_config(private, "alice/dev")["bases"] == []
    r = private.app.get(secret_file, headers=bearer(token), expect_errors=True)
    assert r.status_code == 403


def test_token_cannot_create_its_index_on_a_private_base(private):
    token = private.create_token("alice", indexes=["alice/new"])
    r = private.app.put_json(
        "/alice/new", {"type": "stage", "bases": ["alice/secret"]},
        headers={**bearer(token), **JSON}, expect_errors=True)
    assert r.status_code == 403, r.text
    assert index_config(private, "alice/new") is None


def test_token_cannot_add_even_a_public_base_outside_its_indexes(private):
    """Public today may be private tomorrow: the token would keep reading it."""
    token = private.create_token("alice", indexes=["alice/dev"])
    r = private.app.patch_json(
        "/alice/dev", ["bases+=alice/public"], headers={**bearer(token), **JSON},
        expect_errors=True)
    assert r.status_code == 403, r.text
    assert index_config(private, "alice/dev")["bases"] == []


def test_token_may_set_bases_within_what_it_reads(private):
    # bases among its own listed indexes
    token = private.create_token("alice", indexes=["alice/dev", "alice/public"])
    r = private.app.patch_json(
        "/alice/dev", ["bases+=alice/public"], headers={**bearer(token), **JSON},
        expect_errors=True)
    assert r.status_code == 200, r.text
    assert index_config(private, "alice/dev")["bases"] == ["alice/public"]
    # a new listed index on top of a listed one, and other changes
    token = private.create_token("alice", indexes=["alice/new", "alice/dev"])
    r = private.app.put_json(
        "/alice/new", {"type": "stage", "bases": ["alice/dev"]},
        headers={**bearer(token), **JSON}, expect_errors=True)
    assert r.status_code == 200, r.text
    assert index_config(private, "alice/new")["bases"] == ["alice/dev"]
    token = private.create_token("alice", indexes=["alice/new"])
    r = private.app.patch_json(
        "/alice/new", ["description=renamed"], headers={**bearer(token), **JSON},
        expect_errors=True)
    assert r.status_code == 200, r.text
    assert index_config(private, "alice/new")["description"] == "renamed"
