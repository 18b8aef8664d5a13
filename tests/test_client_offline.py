"""token-derive and token-inspect: offline commands, run as the real `devpi` command.

Tokens are minted locally with a test key; the offline commands never need
the key (they don't verify signatures), but the tests use it to prove that a
derived token still carries a valid signature chain.
"""
from __future__ import annotations

import json
import os
import pty
import stat
import time

import pypitoken
import pytest

from devpi_process import DevpiClient
from devpi_process import assert_one_line_error
from devpi_process import bin_path
from devpi_process import free_port
from devpi_tokens.restrictions import Allowed
from devpi_tokens.restrictions import ClientNetworks
from devpi_tokens.restrictions import Indexes
from devpi_tokens.restrictions import ProjectIDs
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.restrictions import UserName
from devpi_tokens.restrictions import V1Expires
from devpi_tokens.restrictions import V1Projects
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.restrictions import format_time
from devpi_tokens.tokens import Token

KEY = b"test-key-for-offline-client-tests-0123456789"
DAY = 86400


def mint(*restrictions, user="alice", token_id="abc123def0") -> str:
    return Token.mint(user, token_id, KEY, restrictions).dump()


def window(days=30, start_offset=-10) -> ValidityWindow:
    now = int(time.time())
    return ValidityWindow(not_after=now + days * DAY, not_before=now + start_offset)


@pytest.fixture
def client(tmp_path):
    return DevpiClient(tmp_path / "client")


@pytest.fixture
def token_file(tmp_path):
    def write(raw: str, name: str = "token.txt") -> str:
        path = tmp_path / name
        path.write_text(raw)
        return str(path)
    return write


def inspect_json(client, raw: str) -> dict:
    proc = client.run("token-inspect", "-f", "-", "--json", input=raw)
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------
# token input

def test_inspect_reads_file_and_strips_whitespace(client, token_file):
    raw = mint(window())
    proc = client.run("token-inspect", "-f", token_file("\n  " + raw + "  \n\n"))
    assert "alice" in proc.stdout and "abc123def0" in proc.stdout


def test_inspect_reads_stdin(client):
    raw = mint(window())
    proc = client.run("token-inspect", "-f", "-", input=raw + "\r\n")
    assert "user:         alice" in proc.stdout


def test_inspect_reads_token_option(client):
    proc = client.run("token-inspect", "--token", mint(window()))
    assert "token id:     abc123def0" in proc.stdout


def test_token_help_warns_about_shell_history(client):
    proc = client.run("token-inspect", "--help")
    assert "shell history" in " ".join(proc.stdout.split())


def test_prompt_without_echo(tmp_path):
    """Without -f/--token the token is read at a prompt that doesn't echo it."""
    raw = mint(window())
    args = [bin_path("devpi"), "token-inspect", "--clientdir", str(tmp_path / "c")]
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, as getpass wants
        try:
            os.execv(args[0], args)
        finally:
            os._exit(127)
    output = b""
    try:
        output = _read_until(fd, b"token: ")
        os.write(fd, raw.encode() + b"\n")
        output = _read_until(fd, b"restrictions:", output)
        output += _drain(fd)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    text = output.decode(errors="replace")
    assert "user:         alice" in text
    assert raw not in text  # not echoed


def _read_until(fd, marker, output=b"", timeout=20):
    deadline = time.monotonic() + timeout
    while marker not in output:
        assert time.monotonic() < deadline, output
        output += os.read(fd, 4096)
    return output


def _drain(fd):
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the child has exited
            return data
        if not chunk:
            return data
        data += chunk


def test_file_and_token_are_exclusive(client, token_file):
    proc = client.fails("token-inspect", "-f", token_file("x"), "--token", "y")
    assert "not allowed with" in proc.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("", "no token given"),
    ("   \n", "no token given"),
    ("not-a-token", "token"),
    ("devpi-AAAA", "token could not be decoded"),
])
def test_inspect_bad_input(client, token_file, content, message):
    proc = client.fails("token-inspect", "-f", token_file(content))
    assert_one_line_error(proc, "error:", message)


def test_inspect_missing_file(client, tmp_path):
    proc = client.fails("token-inspect", "-f", str(tmp_path / "nope"))
    assert_one_line_error(proc, "cannot read token file", "No such file")


def test_prompt_without_terminal_is_an_error(client):
    # stdin is /dev/null and there is no controlling terminal in this session
    proc = client.run("token-inspect", check=False, input="")
    assert_one_line_error(proc, "no token given")


# --------------------------------------------------------------------------
# token-inspect

def test_inspect_words(client):
    raw = mint(window(days=3, start_offset=-DAY), ProjectNames(("foo",)),
               Indexes(("alice/dev",)), Allowed(("upload",)), UserName("alice"))
    out = client.run("token-inspect", "--token", raw).stdout
    assert "state:        valid, expires in 2 days" in out or "expires in 3 days" in out
    for words in ("only projects: foo", "only indexes: alice/dev",
                  "only permissions: upload", "only user: alice", "valid until"):
        assert words in out


def test_inspect_json(client):
    w = window(days=3)
    raw = mint(w, ProjectNames(("foo", "Bar")))
    data = inspect_json(client, raw)
    assert data["user"] == "alice"
    assert data["id"] == "abc123def0"
    assert data["state"] == "valid"
    assert data["expires"] == w.not_after
    assert data["not_before"] == w.not_before
    assert [r["caveat"] for r in data["restrictions"]] == [
        f"[0,{w.not_after},{w.not_before}]", '[1,["foo","Bar"]]']
    assert data["restrictions"][1]["description"] == "only projects: foo, Bar"


def test_inspect_expired_two_hours_ago(client):
    now = int(time.time())
    raw = mint(ValidityWindow(not_after=now - 2 * 3600 - 30, not_before=now - DAY))
    out = client.run("token-inspect", "--token", raw).stdout
    assert "state:        expired 2 hours ago" in out
    assert inspect_json(client, raw)["state"] == "expired"


def test_inspect_not_yet_valid(client):
    now = int(time.time())
    raw = mint(ValidityWindow(not_after=now + 10 * DAY, not_before=now + 3 * 3600 + 60))
    out = client.run("token-inspect", "--token", raw).stdout
    assert "state:        not yet valid, starts in 3 hours" in out
    assert inspect_json(client, raw)["state"] == "not yet valid"


def test_inspect_never_expires_and_no_restrictions(client):
    out = client.run("token-inspect", "--token", mint()).stdout
    assert "valid, never expires" in out
    assert "restrictions: none" in out


def test_inspect_project_ids_unusable(client):
    data = inspect_json(client, mint(window(), ProjectIDs(("abc",))))
    assert data["state"] == "unusable"


def test_inspect_legacy_bare_v1_token(client):
    """1.x-derived tokens have no devpi- prefix and key=value caveats."""
    raw = mint(V1Expires(not_after=None), V1Projects(("foo",))).removeprefix("devpi-")
    data = inspect_json(client, raw)
    assert data["state"] == "valid"
    assert [r["caveat"] for r in data["restrictions"]] == ["expires=never", "projects=foo"]


# --------------------------------------------------------------------------
# token-derive

def derive(client, raw, *args):
    proc = client.run("token-derive", "--token", raw, *args)
    derived = proc.stdout.strip()
    assert len(proc.stdout.splitlines()) == 1  # stdout is only the token
    return derived, proc


def test_derive_writes_pypi_and_devpi_formats(client):
    raw = mint(window(days=30))
    before = int(time.time())
    derived, proc = derive(client, raw, "-e", "2h", "-p", "a,B_c", "-p", "d",
                           "-i", "alice/dev", "-a", "upload,pkg_read", "-a", "upload")
    after = int(time.time())
    token = Token.load(derived)
    assert token.verify_signature(KEY)  # still signed by the original chain
    assert (token.user, token.token_id) == ("alice", "abc123def0")
    added = [r.dump() for r in token.restrictions[1:]]
    start = Token.load(raw).not_before
    assert added[1:] == ['[1,["a","B_c","d"]]', '["devpi:indexes",["alice/dev"]]',
                         '["devpi:allowed",["upload","pkg_read"]]']
    assert any(added[0] == f"[0,{t},{start}]"
               for t in range(before + 7200, after + 7201))
    assert "derived from token abc123def0 of user alice" in proc.stderr
    assert derived not in proc.stderr


@pytest.mark.parametrize(("text", "seconds"), [
    ("90d", 90 * DAY),
    ("1 week", 7 * DAY),
    ("2h30m", 2 * 3600 + 30 * 60),
    ("1 year", 365 * DAY),
    ("30 min", 30 * 60),
])
def test_derive_durations(client, text, seconds):
    raw = mint(window(days=400))
    before = int(time.time())
    derived, _ = derive(client, raw, "-e", text)
    after = int(time.time())
    assert before + seconds <= Token.load(derived).expires <= after + seconds


def test_derive_epoch_and_not_before(client):
    raw = mint(window(days=30))
    now = int(time.time())
    derived, _ = derive(client, raw, "-e", str(now + 5 * DAY), "--not-before", "1d")
    token = Token.load(derived)
    assert token.expires == now + 5 * DAY
    assert now + DAY <= token.not_before <= int(time.time()) + DAY
    assert inspect_json(client, derived)["state"] == "not yet valid"


def test_derive_from_token_without_window_gets_current_start(client):
    raw = mint()  # never expires
    before = int(time.time())
    derived, _ = derive(client, raw, "-e", "1d")
    token = Token.load(derived)
    # starts a little before now so servers with a slower clock accept it
    assert before - 120 <= token.not_before <= before
    assert token.verify_signature(KEY)


def test_derived_token_loads_with_pypitoken(client):
    raw = mint(window(days=30))
    derived, _ = derive(client, raw, "-e", "1d", "-p", "foo")
    token = pypitoken.Token.load(derived)
    kinds = [type(r) for r in token.restrictions]
    assert kinds == [pypitoken.DateRestriction] * 2 + [pypitoken.ProjectNamesRestriction]
    now = int(time.time())
    token.check(key=KEY, project_name="foo", now=now)  # raises when not valid
    with pytest.raises(pypitoken.ValidationError):
        token.check(key=KEY, project_name="bar", now=now)
    with pytest.raises(pypitoken.ValidationError):
        token.check(key=KEY, project_name="foo", now=now + 2 * DAY)


def test_token_with_user_caveat_loads_with_pypitoken(client):
    """pypitoken loads it; its [3, ...] parser accepts only PyPI's UUID user ids."""
    raw = mint(window(days=30), UserName("alice"))
    derived, _ = derive(client, raw, "-p", "foo")
    token = pypitoken.Token.load(derived)
    assert token.prefix == "devpi"
    uuid_user = "0c3bd0a6-3c8b-4b4b-9e0f-3c6f0b2f4a11"
    derived, _ = derive(client, mint(window(), UserName(uuid_user), user=uuid_user), "-p", "foo")
    kinds = [type(r) for r in pypitoken.Token.load(derived).restrictions]
    assert pypitoken.UserIDRestriction in kinds


def test_derive_legacy_v1_token_gets_prefix(client):
    raw = mint(V1Expires(not_after=None)).removeprefix("devpi-")
    derived, _ = derive(client, raw, "-e", "1d")
    assert derived.startswith("devpi-")
    assert Token.load(derived).verify_signature(KEY)


def test_derive_narrower_lists_are_fine(client):
    raw = mint(window(), ProjectNames(("Foo.Bar", "baz")), Indexes(("alice/dev", "alice/prod")),
               Allowed(("upload", "pkg_read")))
    derived, _ = derive(client, raw, "-p", "foo-bar", "-i", "alice/dev", "-a", "pkg_read")
    assert Token.load(derived).restrictions[-3:] == (
        ProjectNames(("foo-bar",)), Indexes(("alice/dev",)), Allowed(("pkg_read",)))


@pytest.mark.parametrize(("restrictions", "args", "message"), [
    ((), (), "nothing to restrict"),
    ((window(days=30),), ("-e", "never"), "cannot outlive"),
    ((window(days=30),), ("-e", "1 fortnight"), "cannot understand"),
    ((window(days=30),), ("-e", "90"), "is in the past (did you mean '90d'?)"),
    ((window(days=30, start_offset=3600),), ("--not-before", "10 min"),
     "cannot widen the token: it is not valid before"),
    ((window(days=30),), ("--not-before", "40d"), "would never be valid"),
    ((), ("--not-before", "1h"), "never expires: give -e together with --not-before"),
    ((ProjectNames(("foo",)),), ("-p", "foo,bar"),
     "it is limited to projects foo, so bar cannot be added"),
    ((Indexes(("alice/dev",)),), ("-i", "alice/prod"), "limited to indexes alice/dev"),
    ((Allowed(("pkg_read",)),), ("-a", "upload"), "limited to permissions pkg_read"),
    ((), ("-a", "uplaod"), "unknown permission uplaod"),
    ((), ("-a", "user_modify"), "unknown permission user_modify"),
    ((), ("-i", "dev"), "index 'dev' is not of the form 'user/index'"),
    ((), ("-p", "a,,b"), "empty name"),
    ((), ("-p", "foo bar"), "'foo bar' is not a valid project name"),
    ((), ("-p", "foo-\u212a"), "is not a valid project name"),
    # a later -e would only be a note, but the derivation fails: one line
    ((ValidityWindow(not_after=60, not_before=60),), ("-e", "1h"), "would never be valid"),
    ((window(days=1), ProjectNames(("foo",))), ("-e", "2d", "-p", "bar"),
     "limited to projects foo"),
])
def test_derive_errors(client, restrictions, args, message):
    proc = client.fails("token-derive", "--token", mint(*restrictions), *args)
    assert_one_line_error(proc, "error:", message)
    assert proc.stdout == ""


def test_derive_later_expiry_keeps_parents_and_says_so(client):
    """A day asked of a token with 23 h 59 min left: not an error, nothing widened."""
    now = int(time.time())
    parent_end = now + DAY - 60
    raw = mint(ValidityWindow(not_after=parent_end, not_before=now - 10))
    derived, proc = derive(client, raw, "-e", "1 day", "-p", "foo")
    assert "that earlier expiry still applies" in proc.stderr
    assert format_time(parent_end) in proc.stderr
    token = Token.load(derived)
    assert token.expires == parent_end
    # every window the derived token carries ends no later than the parent's
    ends = [r.not_after for r in token.restrictions if isinstance(r, ValidityWindow)]
    assert max(ends) == parent_end
    inspected = json.loads(client.run("token-inspect", "--token", derived, "--json").stdout)
    assert inspected["expires"] == parent_end
    words = client.run("token-inspect", "--token", derived).stdout
    assert "expires in 23 hours" in words


def test_derive_needs_no_server(client, tmp_path):
    """A configured but unreachable server is never contacted."""
    port = free_port()  # nothing listens there
    (client.clientdir / "current.json").write_text(json.dumps(
        {"login": f"http://127.0.0.1:{port}/+login", "username": "alice"}))
    derived, _ = derive(client, mint(window()), "-e", "1h")
    assert Token.load(derived).expires is not None
    client.run("token-inspect", "--token", derived)


# --------------------------------------------------------------------------
# -o FILE

def test_derive_output_file_mode_0600(client, tmp_path):
    out = tmp_path / "derived.token"
    proc = client.run("token-derive", "--token", mint(window()), "-e", "1h", "-o", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    derived = out.read_text()
    assert derived.endswith("\n")
    assert Token.load(derived.strip()).verify_signature(KEY)
    assert derived.strip() not in proc.stdout + proc.stderr
    assert f"token written to {out}" in proc.stdout


def test_output_file_asks_before_overwriting(client, tmp_path):
    out = tmp_path / "derived.token"
    out.write_text("keep me\n")
    proc = client.run("token-derive", "--token", mint(window()), "-e", "1h", "-o", str(out),
                      input="no\n", check=False)
    assert_one_line_error(proc, "not overwriting")
    assert out.read_text() == "keep me\n"
    # no answer at all (stdin closed): also refused
    proc = client.run("token-derive", "--token", mint(window()), "-e", "1h", "-o", str(out),
                      check=False)
    assert_one_line_error(proc, "not overwriting")
    proc = client.run("token-derive", "--token", mint(window()), "-e", "1h", "-o", str(out),
                      input="yes\n")
    assert Token.load(out.read_text().strip())


def test_output_file_overwrite_with_y_resets_mode(client, tmp_path):
    out = tmp_path / "derived.token"
    out.write_text("old\n")
    out.chmod(0o644)
    client.run("token-derive", "-y", "--token", mint(window()), "-e", "1h", "-o", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert Token.load(out.read_text().strip())


def test_output_file_does_not_follow_symlink(client, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    link = tmp_path / "link.token"
    link.symlink_to(target)
    proc = client.run("token-derive", "--token", mint(window()), "-e", "1h", "-o", str(link),
                      check=False)
    assert_one_line_error(proc, "not overwriting")
    assert target.read_text() == "untouched\n"


def test_output_file_unwritable_dir(client, tmp_path):
    proc = client.fails("token-derive", "--token", mint(window()), "-e", "1h",
                        "-o", str(tmp_path / "no" / "such" / "dir" / "t"))
    assert_one_line_error(proc, "cannot write")


def test_inspect_escapes_control_characters_from_the_token(client):
    """A token someone handed you cannot drive your terminal or forge lines."""
    user = "root\x1b]0;pwned\x07\x1b[2K\rok"
    raw = mint(ProjectNames(("x\x1b[31mRED\x1b[0m\nforged line", "ok\u202e")), user=user)
    proc = client.run("token-inspect", "--token", raw)
    out = proc.stdout + proc.stderr
    for control in ("\x1b", "\r", "\x07", "\u202e"):
        assert control not in out
    assert not any(line.startswith("forged line") for line in out.splitlines())
    assert "\\x1b]0;pwned" in out  # shown, escaped
    data = json.loads(client.run("token-inspect", "--token", raw, "--json").stdout)
    assert data["user"] == user  # JSON keeps the plain data


# --------------------------------------------------------------------------
# client networks (--ip)

def test_derive_ip_adds_client_networks(client):
    raw = mint(window())
    derived, proc = derive(client, raw, "--ip", "192.0.2.0/24,2001:db8::1", "--ip", "10.0.0.1")
    token = Token.load(derived)
    assert token.verify_signature(KEY)
    assert token.restrictions[-1] == ClientNetworks(("192.0.2.0/24", "2001:db8::1", "10.0.0.1"))
    assert "only from: 192.0.2.0/24, 2001:db8::1, 10.0.0.1" in proc.stderr


def test_derive_ip_narrower_is_fine(client):
    raw = mint(window(), ClientNetworks(("192.0.2.0/24", "2001:db8::/32")))
    derived, _ = derive(client, raw, "--ip", "192.0.2.128/25,192.0.2.5,2001:db8::1")
    assert Token.load(derived).restrictions[-1] == ClientNetworks(
        ("192.0.2.128/25", "192.0.2.5", "2001:db8::1"))


@pytest.mark.parametrize(("restrictions", "args", "message"), [
    ((ClientNetworks(("192.0.2.0/24",)),), ("--ip", "192.0.2.0/23"),
     "cannot widen the token: it is limited to client networks 192.0.2.0/24, "
     "so 192.0.2.0/23 cannot be added"),
    ((ClientNetworks(("192.0.2.0/24",)),), ("--ip", "192.0.2.1,10.0.0.1"),
     "so 10.0.0.1 cannot be added"),
    ((ClientNetworks(("192.0.2.0/24",)), ClientNetworks(("192.0.2.0/25",))),
     ("--ip", "192.0.2.200"), "limited to client networks 192.0.2.0/25"),
    ((ClientNetworks(("0.0.0.0/0",)),), ("--ip", "2001:db8::1"), "so 2001:db8::1 cannot"),
    ((), ("--ip", "192.0.2.7/24"), "has host bits set"),
    ((), ("--ip", "garbage"), "'garbage' is not an IP address or network"),
    ((), ("--ip", "192.0.2.1,,10.0.0.1"), "empty name"),
])
def test_derive_ip_errors(client, restrictions, args, message):
    proc = client.fails("token-derive", "--token", mint(*restrictions), *args)
    assert_one_line_error(proc, "error:", message)
    assert proc.stdout == ""


def test_inspect_describes_client_networks(client):
    raw = mint(window(), ClientNetworks(("192.0.2.0/24", "2001:db8::1")))
    proc = client.run("token-inspect", "--token", raw)
    assert "  - only from: 192.0.2.0/24, 2001:db8::1" in proc.stdout
    data = inspect_json(client, raw)
    assert data["restrictions"][-1] == {
        "caveat": '["devpi:ips",["192.0.2.0/24","2001:db8::1"]]',
        "description": "only from: 192.0.2.0/24, 2001:db8::1"}


def test_derive_help_mentions_ip(client):
    proc = client.run("token-derive", "--help")
    assert "--ip ADDR_OR_CIDR" in proc.stdout
