"""Each restriction met and not met, on what the request really does."""
from __future__ import annotations

import time

import pypitoken
import pytest
from conftest import JSON
from conftest import basic
from conftest import bearer

from devpi_tokens.restrictions import Allowed
from devpi_tokens.restrictions import Indexes
from devpi_tokens.restrictions import ProjectIDs
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.restrictions import UserName
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.restrictions import format_time
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

PW = basic("alice", "pw")


@pytest.fixture
def ix(alice):
    """alice with the indexes alice/dev and alice/other."""
    alice.create_index("alice/other", PW)
    return alice


def derive(token: str, *restrictions) -> str:
    return Token.load(token).derive(*restrictions).dump()


def file_path(srv, index: str, project: str, version: str = "1.0") -> str:
    """The path of the one release file of a project version."""
    r = srv.app.get(f"/{index}/{project}/{version}", headers=JSON)
    (link,) = r.json["result"]["+links"]
    return "/" + link["href"].split("/", 3)[3]


def assert_refused(r, status: int, reason: str) -> None:
    """Refused with ``reason`` in the status line (devpi upload, twine, pip show it)."""
    assert r.status_code == status, r.text
    assert reason in r.status
    assert reason in r.text


# ---------------------------------------------------------------- projects

def test_project_restriction_upload(ix):
    token = ix.create_token("alice", projects=["pkg"])
    assert ix.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    r = ix.upload("alice/dev", "other", "1.0", bearer(token))
    assert_refused(r, 403, "token not valid for project 'other'")


def test_project_names_compare_normalized(ix):
    token = ix.create_token("alice", projects=["Foo.Bar"])
    r = ix.upload("alice/dev", "foo_bar", "1.0", bearer(token), filename="foo_bar-1.0.tar.gz")
    assert r.status_code == 200, r.text


def test_project_restriction_register(ix):
    token = ix.create_token("alice", projects=["pkg"])
    assert ix.register("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    r = ix.register("alice/dev", "other", "1.0", bearer(token))
    assert_refused(r, 403, "token not valid for project 'other'")


def test_project_restriction_reading_without_project(ix):
    token = ix.create_token("alice", projects=["pkg"])
    # no project named: reading is fine
    assert ix.app.get("/alice/dev/+simple/", headers=bearer(token)).status_code == 200
    assert ix.app.get("/alice/dev", headers={**bearer(token), **JSON}).status_code == 200


def test_project_restriction_push(ix):
    ix.upload("alice/dev", "pkg", "1.0", PW)
    ix.upload("alice/dev", "other", "1.0", PW)
    token = ix.create_token("alice", projects=["pkg"])
    r = ix.push("alice/dev", "other", "1.0", "alice/other", bearer(token))
    assert_refused(r, 403, "token not valid for project 'other'")
    assert r.json["message"] == "token not valid for project 'other'"
    r = ix.push("alice/dev", "pkg", "1.0", "alice/other", bearer(token))
    assert r.status_code == 200, r.text


def test_project_restriction_deleting_a_file(ix):
    ix.upload("alice/dev", "pkg", "1.0", PW)
    ix.upload("alice/dev", "other", "1.0", PW)
    token = ix.create_token("alice", projects=["pkg"])
    path = file_path(ix, "alice/dev", "other")
    r = ix.app.delete(path, headers=bearer(token), expect_errors=True)
    assert_refused(r, 403, "token not valid for project 'other'")
    path = file_path(ix, "alice/dev", "pkg")
    r = ix.app.delete(path, headers=bearer(token), expect_errors=True)
    assert r.status_code == 200, r.text


def test_project_restriction_deleting_a_version(ix):
    ix.upload("alice/dev", "other", "1.0", PW)
    token = ix.create_token("alice", projects=["pkg"])
    r = ix.app.delete("/alice/dev/other/1.0", headers=bearer(token), expect_errors=True)
    assert_refused(r, 403, "token not valid for project 'other'")


@pytest.mark.parametrize("change", ["modify", "delete", "create"])
def test_project_token_cannot_change_indexes(ix, change):
    token = ix.create_token("alice", projects=["pkg"])
    headers = {**bearer(token), **JSON}
    if change == "modify":
        r = ix.app.patch_json("/alice/dev", ["title=x"], headers=headers, expect_errors=True)
    elif change == "delete":
        r = ix.app.delete("/alice/dev", headers=headers, expect_errors=True)
    else:
        r = ix.app.put_json("/alice/new", {}, headers=headers, expect_errors=True)
    assert_refused(r, 403, "token is restricted to projects pkg and cannot be used for 'index_")
    assert ix.app.get("/alice/dev", headers=JSON).json["result"].get("title") is None


def test_pypitoken_upload_derivation_works(ix):
    # what devpi upload does with a token password: a 60 s single-project token
    token = ix.create_token("alice")
    narrowed = pypitoken.Token.load(token)
    now = int(time.time())
    narrowed.restrict(project_names=["pkg"], not_before=now - 1, not_after=now + 60)
    derived = narrowed.dump()
    assert ix.upload("alice/dev", "pkg", "1.0", basic("alice", derived)).status_code == 200
    r = ix.upload("alice/dev", "other", "1.0", basic("alice", derived))
    assert_refused(r, 403, "token not valid for project 'other'")


# ---------------------------------------------------------------- indexes

def test_index_restriction_upload_and_read(ix):
    token = ix.create_token("alice", indexes=["alice/dev"])
    assert ix.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    r = ix.upload("alice/other", "pkg", "1.0", bearer(token))
    assert_refused(r, 403, "token not valid for index 'alice/other'")
    # downloading a file asks for pkg_read
    ix.upload("alice/other", "pkg", "1.0", PW)
    r = ix.app.get(file_path(ix, "alice/other", "pkg"), headers=bearer(token))
    assert_refused(r, 403, "token not valid for index 'alice/other'")
    r = ix.app.get(file_path(ix, "alice/dev", "pkg"), headers=bearer(token))
    assert r.status_code == 200


def test_index_restriction_pages_without_index_are_readable(ix):
    token = ix.create_token("alice", indexes=["alice/dev"])
    for path in ("/", "/alice"):
        r = ix.app.get(path, headers={**bearer(token), **JSON})
        assert r.status_code == 200, path


def test_index_restriction_create_index(ix):
    token = ix.create_token("alice", indexes=["alice/dev"])
    r = ix.app.put_json("/alice/new", {}, headers={**bearer(token), **JSON}, expect_errors=True)
    assert_refused(r, 403, "token not valid for index 'alice/new'")


def test_index_restriction_push_checks_both_indexes(ix):
    ix.create_index("alice/third", PW)
    ix.upload("alice/dev", "pkg", "1.0", PW)
    token = ix.create_token("alice", indexes=["alice/dev", "alice/other"])
    r = ix.push("alice/dev", "pkg", "1.0", "alice/third", bearer(token))
    assert_refused(r, 403, "token not valid for index 'alice/third'")
    r = ix.push("alice/dev", "pkg", "1.0", "alice/other", bearer(token))
    assert r.status_code == 200, r.text
    only_source = ix.create_token("alice", indexes=["alice/dev"])
    r = ix.push("alice/dev", "pkg", "1.0", "alice/other", bearer(only_source))
    assert_refused(r, 403, "token not valid for index 'alice/other'")


# ---------------------------------------------------------------- permissions

def test_allowed_permissions(ix):
    token = ix.create_token("alice", allowed=["pkg_read"])
    assert ix.app.get("/alice/dev/+simple/", headers=bearer(token)).status_code == 200
    r = ix.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert_refused(r, 403, "token does not allow 'upload'")


def test_allowed_removes_reading_too(ix):
    token = ix.create_token("alice", allowed=["upload"])
    assert ix.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    r = ix.app.get(file_path(ix, "alice/dev", "pkg"), headers=bearer(token))
    assert_refused(r, 403, "token does not allow 'pkg_read'")


def test_unknown_permission_in_derived_token_grants_nothing(ix):
    token = derive(ix.create_token("alice"), Allowed(("fly",)))
    r = ix.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert_refused(r, 403, "token does not allow 'upload'")


def test_derived_token_narrows(ix):
    token = ix.create_token("alice", projects=["pkg", "other"])
    narrow = derive(token, ProjectNames(("pkg",)))
    assert ix.upload("alice/dev", "other", "1.0", bearer(token)).status_code == 200
    assert ix.upload("alice/dev", "pkg", "1.0", bearer(narrow)).status_code == 200
    r = ix.upload("alice/dev", "other", "1.1", bearer(narrow))
    assert_refused(r, 403, "token not valid for project 'other'")
    read_only = derive(token, Indexes(("alice/dev",)), Allowed(("pkg_read",)))
    r = ix.upload("alice/dev", "pkg", "1.1", bearer(read_only))
    assert_refused(r, 403, "token does not allow 'upload'")


def test_permissions_the_user_lacks_stay_denied(ix):
    # a token never gives more than its user has
    ix.create_user("bob")
    token = ix.create_token("bob", allowed=["upload"])
    r = ix.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert r.status_code == 403


# ---------------------------------------------------------------- user

def test_user_caveat(ix):
    token = ix.create_token("alice")
    ok = derive(token, UserName("alice"))
    assert ix.upload("alice/dev", "pkg", "1.0", bearer(ok)).status_code == 200
    wrong = derive(token, UserName("bob"))
    r = ix.upload("alice/dev", "pkg", "1.1", bearer(wrong))
    assert_refused(r, 401, "token is restricted to user 'bob'")


def test_project_id_caveat_is_never_met(ix):
    token = derive(ix.create_token("alice"), ProjectIDs(("1234",)))
    r = ix.app.get("/alice/dev/+simple/", headers=bearer(token))
    assert_refused(r, 401, "PyPI project ids")


# ---------------------------------------------------------------- time

def test_expired_token(ix):
    now = int(time.time())
    window = ValidityWindow(not_after=now - 60, not_before=now - 600)
    token = derive(ix.create_token("alice"), window)
    r = ix.app.get("/alice/dev/+simple/", headers={**bearer(token), **JSON})
    assert_refused(r, 401, f"token expired at {format_time(now - 60)}")
    assert r.json["message"] == f"token expired at {format_time(now - 60)}"
    assert r.headers["WWW-Authenticate"] == 'Basic realm="pypi"'


def test_not_yet_valid_token(ix):
    now = int(time.time())
    token = ix.create_token("alice", not_before=now + 3600)
    r = ix.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert_refused(r, 401, f"token not valid before {format_time(now + 3600)}")


def test_token_valid_within_its_window(ix):
    now = int(time.time())
    token = ix.create_token("alice", not_before=now - 10, expires=now + 600)
    assert ix.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200


# ---------------------------------------------------------------- user_* actions

def test_token_cannot_change_password(ix):
    token = ix.create_token("alice")
    r = ix.app.patch_json(
        "/alice", {"password": "new"}, headers={**bearer(token), **JSON}, expect_errors=True)
    assert_refused(r, 403, "a token cannot be used for 'user_modify_password'")
    # the old password still works
    assert ix.upload("alice/dev", "pkg", "1.0", PW).status_code == 200


def test_token_cannot_modify_user(ix):
    token = ix.create_token("alice")
    r = ix.app.patch_json(
        "/alice", {"email": "evil@example.com"}, headers={**bearer(token), **JSON},
        expect_errors=True)
    assert_refused(r, 403, "a token cannot be used for 'user_modify'")
    assert ix.app.get("/alice", headers=JSON).json["result"]["email"] == "alice@example.com"


def test_token_cannot_delete_user(ix):
    token = ix.create_token("alice")
    r = ix.app.delete("/alice", headers={**bearer(token), **JSON}, expect_errors=True)
    assert_refused(r, 403, "a token cannot be used for 'user_delete'")
    assert ix.app.get("/alice", headers=JSON).status_code == 200


def test_token_cannot_create_user(ix):
    # anonymous users may register on this server; a token still may not
    token = ix.create_token("alice")
    r = ix.app.put_json(
        "/carol", {"password": "x"}, headers={**bearer(token), **JSON}, expect_errors=True)
    assert_refused(r, 403, "a token cannot be used for 'user_create'")


def test_root_token_cannot_do_user_actions_even_if_allowed_says_so(srv):
    srv.create_user("alice", index=None)
    token = srv.create_token("root", "", allowed=["pkg_read", "upload"])
    token = derive(token, Allowed(("user_modify", "user_delete")))
    r = srv.app.delete("/alice", headers={**bearer(token), **JSON}, expect_errors=True)
    assert r.status_code == 403
    r = srv.app.patch_json(
        "/alice", {"password": "x"}, headers={**bearer(token), **JSON}, expect_errors=True)
    assert r.status_code == 403
    # alice still exists, with her password unchanged
    r = srv.app.get("/alice/+tokens", headers=basic("alice", "pw"))
    assert r.status_code == 200


def test_refusal_without_json_is_plain_text(ix):
    token = ix.create_token("alice", projects=["pkg"])
    r = ix.upload("alice/dev", "other", "1.0", bearer(token))
    assert r.status_code == 403
    assert r.content_type == "text/plain"
    assert r.text == "token not valid for project 'other'\n"


def test_push_body_that_is_not_json_is_refused_before_devpi_reads_it(ix):
    token = ix.create_token("alice", projects=["pkg"])
    r = ix.app.post(
        "/alice/dev", "not json", headers={**bearer(token), "Content-Type": "application/json"},
        expect_errors=True)
    assert_refused(r, 400, "the body is not JSON devpi can read")
