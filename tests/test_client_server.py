"""token-create, token-list, token-delete and token-login against a real devpi-server.

One devpi-server process (with the plugin, fresh serverdir, secret file,
--offline-mode) serves the whole module; every test runs the real `devpi`
command with its own client directory.
"""
from __future__ import annotations

import json
import stat
import time

import pytest

from devpi_process import DevpiClient
from devpi_process import assert_one_line_error
from devpi_process import make_wheel
from devpi_process import start_server
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.tokens import Token

pytestmark = pytest.mark.e2e

DAY = 86400
PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("client-e2e")
    server = start_server(base / "server")
    try:
        admin = DevpiClient(base / "admin")
        admin.run("use", server.url)
        admin.run("login", "root", "--password", "")
        for user, password in PASSWORDS.items():
            admin.run("user", "-c", user, f"password={password}")
        alice = DevpiClient(base / "alice-setup")
        alice.run("use", server.url)
        alice.run("login", "alice", "--password", PASSWORDS["alice"])
        alice.run("index", "-c", "dev")
        yield server
    finally:
        server.stop()
        assert not server.alive()


def new_client(server, tmp_path, name: str, user: str | None = None,
               index: str | None = None) -> DevpiClient:
    client = DevpiClient(tmp_path / name)
    client.run("use", f"{server.url}/{index}" if index else server.url)
    if user == "root":
        client.run("login", "root", "--password", "")
    elif user is not None:
        client.run("login", user, "--password", PASSWORDS[user])
    return client


# logged-in clients shared by the module; tests never change their login
@pytest.fixture(scope="module")
def alice(server, tmp_path_factory):
    return new_client(server, tmp_path_factory.mktemp("alice"), "alice", "alice", "alice/dev")


@pytest.fixture(scope="module")
def root(server, tmp_path_factory):
    return new_client(server, tmp_path_factory.mktemp("root"), "root", "root")


def create(client, *args) -> tuple[str, object]:
    proc = client.run("token-create", *args)
    assert len(proc.stdout.splitlines()) == 1, proc.stdout  # stdout: the token alone
    return proc.stdout.strip(), proc


def stored_auth(client) -> str:
    """The client's stored logins (auth.json), empty if none was ever stored."""
    path = client.clientdir / "auth.json"
    return path.read_text() if path.exists() else ""


def list_json(client, *args) -> dict:
    return json.loads(client.run("token-list", "--json", *args).stdout)


# --------------------------------------------------------------------------
# token-create

def test_create_default_expiry(alice):
    before = int(time.time())
    raw, proc = create(alice)
    after = int(time.time())
    token = Token.load(raw)
    assert token.user == "alice"
    assert before + 365 * DAY <= token.expires <= after + 365 * DAY
    assert f"created token {token.token_id} for user alice" in proc.stderr
    assert raw not in proc.stderr


@pytest.mark.parametrize(("text", "seconds"), [("90d", 90 * DAY), ("2h30m", 9000),
                                               ("1 year", 365 * DAY)])
def test_create_durations(alice, text, seconds):
    before = int(time.time())
    raw, _ = create(alice, "-e", text)
    assert before + seconds <= Token.load(raw).expires <= int(time.time()) + seconds


def test_create_with_restrictions(alice):
    now = int(time.time())
    raw, proc = create(alice, "-e", "30d", "--not-before", str(now - 60), "-p", "foo,bar",
                       "-p", "baz", "-i", "alice/dev", "-a", "upload,pkg_read",
                       "-d", "CI for foo")
    token = Token.load(raw)
    dumped = [r.dump() for r in token.restrictions]
    assert '[1,["foo","bar","baz"]]' in dumped
    assert '["devpi:indexes",["alice/dev"]]' in dumped
    assert '["devpi:allowed",["upload","pkg_read"]]' in dumped
    assert token.not_before == now - 60
    assert "only projects: foo, bar, baz" in proc.stderr


def test_create_output_file(alice, tmp_path):
    out = tmp_path / "ci.token"
    proc = alice.run("token-create", "-p", "foo", "-o", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    raw = out.read_text().strip()
    assert Token.load(raw).user == "alice"
    assert raw not in proc.stdout + proc.stderr
    # existing file: asks, "no" keeps it
    proc = alice.run("token-create", "-o", str(out), input="no\n", check=False)
    assert_one_line_error(proc, "not overwriting")
    assert out.read_text().strip() == raw


def test_create_never_needs_root(alice, root):
    proc = alice.fails("token-create", "-e", "never")
    assert_one_line_error(proc, "server refused", "40")
    raw, _ = create(root, "-e", "never")
    assert Token.load(raw).expires is None
    assert "never expires" in root.run("token-inspect", "--token", raw).stdout


@pytest.mark.parametrize(("args", "fragments"), [
    (("-a", "uplaod"), ("server refused: 400", "uplaod")),
    (("-e", "500d"), ("server refused: 40",)),
    (("-e", "yesterday"), ("-e 'yesterday'", "cannot understand")),
    (("-e", str(int(time.time()) - 10)), ("is in the past",)),
    (("-i", "dev"), ("server refused: 400",)),
    (("-p", ",,"), ("empty name",)),
])
def test_create_errors(alice, args, fragments):
    assert_one_line_error(alice.fails("token-create", *args), "error:", *fragments)


def test_create_for_other_user_refused(alice):
    proc = alice.fails("token-create", "-u", "bob")
    assert_one_line_error(proc, "server refused: 403")


def test_root_creates_for_other_user(root):
    raw, proc = create(root, "-u", "bob", "-p", "foo")
    assert Token.load(raw).user == "bob"
    assert "for user bob" in proc.stderr


def test_create_needs_login(server, tmp_path):
    client = new_client(server, tmp_path, "anon")
    assert_one_line_error(client.fails("token-create"), "you need to be logged in")


def test_commands_need_server(tmp_path):
    client = DevpiClient(tmp_path / "nowhere")
    for args in (("token-create",), ("token-list",), ("token-delete", "abc"),
                 ("token-login", "--token", "devpi-x")):
        assert_one_line_error(client.fails(*args), "not connected to a server")


# --------------------------------------------------------------------------
# token-list

def test_list(alice):
    before = int(time.time())
    raw, _ = create(alice, "-p", "foo", "-e", "10d", "-d", "listed token")
    token = Token.load(raw)
    data = list_json(alice)
    assert data["user"] == "alice"
    entry = {e["id"]: e for e in data["tokens"]}[token.token_id]
    assert entry["description"] == "listed token"
    assert before - 1 <= entry["created"] <= int(time.time()) + 1
    assert entry["expires"] == token.expires
    assert entry["state"] == "valid"
    assert "only projects: foo" in [r["description"] for r in entry["restrictions"]]
    assert raw not in json.dumps(data)
    out = alice.run("token-list").stdout
    assert f"{token.token_id}  listed token" in out
    assert "valid, expires in 9 days" in out or "valid, expires in 10 days" in out
    assert "only projects: foo" in out


def test_list_other_user(root, alice):
    raw, _ = create(root, "-u", "bob", "-d", "for bob")
    ids = [e["id"] for e in list_json(root, "-u", "bob")["tokens"]]
    assert Token.load(raw).token_id in ids
    assert_one_line_error(alice.fails("token-list", "-u", "bob"), "server refused: 403")


def test_list_empty(server, tmp_path, root):
    root.run("user", "-c", "carol", "password=carol-password")
    client = DevpiClient(tmp_path / "carol")
    client.run("use", server.url)
    client.run("login", "carol", "--password", "carol-password")
    assert "no tokens for user carol" in client.run("token-list").stdout
    assert list_json(client) == {"user": "carol", "tokens": []}


# --------------------------------------------------------------------------
# token-delete

def test_delete_revokes_token_and_derived(alice, server, tmp_path):
    raw, _ = create(alice, "-d", "to delete")
    token = Token.load(raw)
    derived = alice.run("token-derive", "--token", raw, "-p", "foo").stdout.strip()
    proc = alice.run("token-delete", token.token_id)
    assert token.token_id in proc.stdout
    assert token.token_id not in [e["id"] for e in list_json(alice)["tokens"]]
    for gone in (raw, derived):
        client = new_client(server, tmp_path, f"user-of-{len(gone)}", index="alice/dev")
        proc = client.fails("token-login", "--token", gone)
        line = assert_one_line_error(proc, "the server refused the token: 401")
        assert line.count("deleted") == 1  # the server's reason, once
        assert gone not in stored_auth(client)
    proc = alice.fails("token-delete", token.token_id)
    assert_one_line_error(proc, "server refused: 404")


def test_delete_bad_id(alice):
    assert_one_line_error(alice.fails("token-delete", "not-an-id"), "is not a token id")


def test_delete_other_user_refused(alice, root):
    raw, _ = create(root, "-u", "bob")
    proc = alice.fails("token-delete", "-u", "bob", Token.load(raw).token_id)
    assert_one_line_error(proc, "server refused: 403")
    root.run("token-delete", "-u", "bob", Token.load(raw).token_id)


# --------------------------------------------------------------------------
# token-login and upload

def test_login_then_upload(alice, server, tmp_path):
    token_file = tmp_path / "upload.token"
    alice.run("token-create", "-p", "tokpkg", "-e", "1h", "-o", str(token_file))
    ci = new_client(server, tmp_path, "ci", index="alice/dev")
    proc = ci.run("token-login", "-f", str(token_file))
    token = Token.load(token_file.read_text().strip())
    assert f"logged in 'alice' with token {token.token_id} at 'alice/dev'" in proc.stdout
    assert "valid, expires in" in proc.stdout
    assert "(logged in as alice)" in ci.run("use").stdout
    wheel = make_wheel(tmp_path / "dist", "tokpkg", "1.0")
    proc = ci.run("upload", str(wheel))
    output = proc.stdout + proc.stderr
    # devpi-client narrowed the token itself with pypitoken for this upload
    assert "Used 'pypitoken' to create a unique Devpi token" in output, output
    assert "file_upload of tokpkg-1.0-py3-none-any.whl" in output
    listing = ci.run("getjson", "/alice/dev/tokpkg").stdout
    assert "tokpkg-1.0-py3-none-any.whl" in listing
    # the token is limited to tokpkg: another project is refused with the reason
    other = make_wheel(tmp_path / "dist", "otherpkg", "1.0")
    proc = ci.fails("upload", str(other))
    assert "otherpkg" in proc.stdout + proc.stderr


def test_login_cannot_manage_tokens(alice, server, tmp_path):
    raw, _ = create(alice)
    client = new_client(server, tmp_path, "tok", index="alice/dev")
    client.run("token-login", "--token", raw)
    assert_one_line_error(client.fails("token-create"), "server refused: 403")
    assert_one_line_error(client.fails("token-list"), "server refused: 403")


def test_login_forged_token_stores_nothing(server, tmp_path):
    now = int(time.time())
    forged = Token.mint("alice", "0123456789", b"not the server's key",
                        (ValidityWindow(now + DAY, now - 60), ProjectNames(("foo",)))).dump()
    client = new_client(server, tmp_path, "forger", index="alice/dev")
    before = (client.clientdir / "current.json").read_text()
    proc = client.fails("token-login", "--token", forged)
    assert_one_line_error(proc, "the server refused the token: 40")
    assert forged not in stored_auth(client)
    assert (client.clientdir / "current.json").read_text() == before


def test_login_expired_token_checked_before_server(server, tmp_path):
    now = int(time.time())
    expired = Token.mint("alice", "0123456789", b"k", (ValidityWindow(now - 7200, now - DAY),))
    client = new_client(server, tmp_path, "late", index="alice/dev")
    proc = client.fails("token-login", "--token", expired.dump())
    assert_one_line_error(proc, "is expired 2 hours ago")


def test_login_keeps_previous_login_on_refusal(alice):
    """A refused token-login leaves the password login in place."""
    proc = alice.fails("token-login", "--token", "devpi-garbage")
    assert_one_line_error(proc, "error:")
    assert "alice" in list_json(alice)["user"]  # still logged in with the password


def test_login_token_from_stdin(alice, server, tmp_path):
    raw, _ = create(alice, "-i", "alice/dev", "-a", "pkg_read")
    client = new_client(server, tmp_path, "stdin", index="alice/dev")
    proc = client.run("token-login", "-f", "-", input=f"\n{raw}\n")
    assert "logged in 'alice'" in proc.stdout
    assert raw in stored_auth(client)
    client.run("logoff")
    assert raw not in stored_auth(client)


# --------------------------------------------------------------------------
# a server started without a secret file warns through the client

def test_create_warns_about_random_secret(tmp_path):
    server = start_server(tmp_path / "nosecret", secretfile=False)
    try:
        root = new_client(server, tmp_path, "root-nosecret", "root")
        raw, proc = create(root)
        assert "warning:" in proc.stderr
        assert "secretfile" in proc.stderr.replace("-", "").lower()
        assert Token.load(raw).user == "root"
    finally:
        server.stop()
