"""Client plumbing without a server: option sets, token I/O, state words, odd answers."""
from __future__ import annotations

import argparse
import io
import json
import stat

import pytest

from devpi_process import DevpiClient
from devpi_process import free_port
from devpi_tokens import client_commands
from devpi_tokens.client_io import ClientError
from devpi_tokens.client_io import read_token
from devpi_tokens.client_io import split_list
from devpi_tokens.client_io import write_private_file
from devpi_tokens.restrictions import V1NotBefore
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.tokens import Token

GENERIC = {"-h", "--help", "--debug", "-y", "-v", "--verbose", "--clientdir"}
TOKEN_INPUT = {"-f", "--file", "--token"}
RESTRICT = {"-e", "--expires", "--not-before", "-a", "--allowed", "-i", "--indexes",
            "-p", "--projects", "--ip"}

# DESIGN.md's flags; the long forms are devpi-tokens 1.x's spellings
EXPECTED = {
    "token-create": {"-u", "--user", "-d", "--description", "-o", "--output"} | RESTRICT,
    "token-derive": TOKEN_INPUT | RESTRICT | {"-o", "--output"},
    "token-inspect": TOKEN_INPUT | {"--json"},
    "token-list": {"-u", "--user", "--json"},
    "token-delete": {"-u", "--user"},
    "token-login": TOKEN_INPUT | {"--trusted-publishing"},
    "publisher-add": {"-u", "--user", "--github", "--gitlab", "--workflow", "--environment",
                      "-i", "--indexes", "-p", "--projects", "-d", "--description",
                      "--issuer"},
    "publisher-list": {"-u", "--user", "--json"},
    "publisher-delete": {"-u", "--user"},
}
POSITIONALS = {"token-delete": ["token_id"], "publisher-delete": ["publisher_id"]}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    from devpi.main import add_subparsers
    from devpi.main import get_pluginmanager
    from devpi.main import getbaseparser
    parser = getbaseparser("devpi")
    add_subparsers(parser, get_pluginmanager())
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_exactly_the_documented_flags(command):
    parser = subparsers()[command]
    options = {s for a in parser._actions for s in a.option_strings}
    assert options - GENERIC == EXPECTED[command]
    positionals = [a.dest for a in parser._actions if not a.option_strings]
    assert positionals == POSITIONALS.get(command, [])


def test_commands_listed_in_devpi_help(tmp_path):
    out = DevpiClient(tmp_path / "c").run("--help").stdout
    for command in EXPECTED:
        assert command in out


# --------------------------------------------------------------------------
# token input

def test_read_token_sources(tmp_path):
    path = tmp_path / "t"
    path.write_text("\n\t devpi-abc \n")
    assert read_token(str(path), None) == "devpi-abc"
    assert read_token("-", None, stdin=io.StringIO("devpi-x\n")) == "devpi-x"
    assert read_token(None, "  devpi-y ") == "devpi-y"
    with pytest.raises(ClientError, match="no token given on --token"):
        read_token(None, "  ")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ClientError, match="not UTF-8"):
        read_token(str(path), None)
    with pytest.raises(ClientError, match="cannot read token file"):
        read_token(str(tmp_path), None)  # a directory


def test_split_list():
    assert split_list(None) is None
    assert split_list(["a,b", " c ", "a"]) == ["a", "b", "c"]
    with pytest.raises(ClientError, match="empty name"):
        split_list(["a,"])


# --------------------------------------------------------------------------
# token output

def test_write_private_file(tmp_path):
    target = tmp_path / "t"
    questions = []

    def answer(value):
        def confirm(question):
            questions.append(question)
            return value
        return confirm

    write_private_file(target, "one", answer(True))
    assert target.read_text() == "one\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert questions == []
    with pytest.raises(ClientError, match="not overwriting"):
        write_private_file(target, "two", answer(False))
    assert target.read_text() == "one\n"
    target.chmod(0o664)
    write_private_file(target, "three", answer(True))
    assert target.read_text() == "three\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert questions == [f"{target} exists, overwrite it"] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no temp file left


def test_write_private_file_ignores_umask(tmp_path):
    import os
    old = os.umask(0o277)
    try:
        write_private_file(tmp_path / "t", "x", lambda q: True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o600


def test_write_private_file_refuses_directory(tmp_path):
    with pytest.raises(ClientError, match="is a directory"):
        write_private_file(tmp_path, "x", lambda q: True)


# --------------------------------------------------------------------------
# state words and server answers

NOW = 1_800_000_000


@pytest.mark.parametrize(("restrictions", "expires", "state", "words"), [
    ((), None, "valid", "valid, never expires"),
    ((ValidityWindow(NOW + 3 * 86400, NOW - 5),), None, "valid", "valid, expires in 3 days"),
    ((ValidityWindow(NOW - 7200, NOW - 86400),), None, "expired", "expired 2 hours ago"),
    ((V1NotBefore(NOW + 3600),), None, "not yet valid", "not yet valid, starts in 1 hour"),
    ((), NOW - 60, "expired", "expired 1 minute ago"),
    ((ValidityWindow(NOW + 86400, 0),), NOW + 3600, "valid", "valid, expires in 1 hour"),
])
def test_token_state(restrictions, expires, state, words):
    got_state, got_words = client_commands.token_state(restrictions, NOW, expires)
    assert got_state == state
    assert got_words.startswith(words)


def test_list_entry_tolerates_odd_server_data():
    entry = client_commands.list_entry("abc", {
        "restrictions": ['[1,["foo"]]', [0, NOW + 60, NOW - 60], "bogus=1"],
        "created": "yesterday", "expires": None, "description": None}, NOW)
    assert entry["description"] == ""
    assert entry["restrictions"][0]["description"] == "only projects: foo"
    # a caveat the server sent as JSON instead of a string is read the same way
    assert entry["restrictions"][1]["caveat"] == f"[0,{NOW + 60},{NOW - 60}]"
    assert entry["restrictions"][2]["description"].startswith("unreadable restriction")
    assert entry["state"] == "valid"
    assert "expires in 1 minute" in entry["state_description"]


@pytest.mark.parametrize(("info", "line"), [
    ({"last_used": None}, "never"),
    ({"last_used": NOW - 120, "last_used_from": "192.0.2.7",
      "last_used_for": "upload foo to alice/dev"},
     "(2 minutes ago) from 192.0.2.7: upload foo to alice/dev"),
    ({"last_used": NOW - 120, "last_used_from": 7, "last_used_for": ["x"]},
     "(2 minutes ago)"),
    ({"last_used": "recently", "last_used_from": "192.0.2.7"}, "never"),
    ({"last_used": True}, "never"),
])
def test_last_use_line(info, line):
    entry = client_commands.list_entry("abc", {"caveats": [], **info}, NOW)
    assert client_commands.describe_last_use(entry, NOW).endswith(line)


def test_older_servers_say_nothing_about_use():
    entry = client_commands.list_entry("abc", {"caveats": []}, NOW)
    assert "last_used" not in entry


def test_inspect_data_never_contains_the_token():
    token = Token.mint("bob", "0123456789", b"k" * 32, (ValidityWindow(NOW + 60, NOW),))
    data = client_commands.inspect_data(token, NOW)
    assert token.dump() not in json.dumps(data)
    assert data["user"] == "bob"


# --------------------------------------------------------------------------
# unreachable server: still one line

@pytest.mark.parametrize("args", [("token-list",), ("token-create",),
                                  ("token-delete", "abc")])
def test_unreachable_server_is_one_line(tmp_path, args):
    client = DevpiClient(tmp_path / "c")
    port = free_port()
    (client.clientdir / "current.json").write_text(json.dumps(
        {"login": f"http://127.0.0.1:{port}/+login"}))
    (client.clientdir / "auth.json").write_text(json.dumps(
        {"auth": {f"http://127.0.0.1:{port}/": [["alice", "pw"]]}}))
    proc = client.fails(*args)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not connect" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_token_login_unreachable_server_stores_nothing(tmp_path):
    client = DevpiClient(tmp_path / "c")
    port = free_port()
    (client.clientdir / "current.json").write_text(json.dumps(
        {"login": f"http://127.0.0.1:{port}/+login"}))
    token = Token.mint("bob", "0123456789", b"k" * 32, (ValidityWindow(2**40, 0),))
    proc = client.fails("token-login", "--token", token.dump())
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "could not connect" in proc.stderr
    assert not (client.clientdir / "auth.json").exists()
