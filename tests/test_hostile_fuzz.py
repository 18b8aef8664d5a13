"""Hostile input on the authentication path, fuzzed with hypothesis.

Whatever a client sends as a password, a ``__token__`` password, a token as
username, ``X-Devpi-Auth`` or ``Authorization: Bearer``, devpi-server with
devpi-tokens (in process: devpi-server's test app on a real keyfs) answers:

- 401/403 with a reason, never 5xx; 200 only for a token that really is
  valid (checked against the real key);
- a ``devpi-`` string always gets a token reason, never devpi's generic
  password answer; anything else is treated as a (wrong) password: 401;
- no log record at ERROR level, no traceback, no token text in any log line.

The client's offline commands (``token-inspect``, ``token-derive``, run in
process through devpi-client's ``main``) print one line on stderr and exit 1
for anything that is not a loadable token.

Example counts are bounded (see ``EXAMPLES``) so the module runs in well
under a minute; counts of inputs tried per kind are printed at the end
(``pytest -s``) and written to $DEVPI_TOKENS_FUZZ_STATS if set.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import os
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
from conftest import JSON
from conftest import TokenServer
from conftest import basic
from conftest import bearer
from conftest import devpi_auth
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from pymacaroons import Caveat
from pymacaroons.utils import sign_first_party_caveat

from devpi_tokens.restrictions import TokenError
from devpi_tokens.server_store import TokenStore
from devpi_tokens.tokens import MAX_TOKEN_LENGTH
from devpi_tokens.tokens import PREFIX
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

#: examples per hypothesis test (kept small: the whole module is one CI step)
EXAMPLES = {
    "arbitrary": 60, "base64": 50, "mutated": 80, "wrong_key": 30,
    "identifier": 30, "caveats": 90, "client": 120,
}

#: inputs tried and answers seen, over the whole module
STATS: Counter = Counter()

GENERIC_401 = "This server could not verify that you are authorized"

# derandomize comes from the profile (tests/conftest.py): fixed seeds in CI,
# fresh examples on developer machines
FUZZ = settings(
    deadline=None, database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
        HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    summary = dict(sorted(STATS.items()))
    print("\nhostile fuzz counts:", json.dumps(summary, indent=1))
    path = os.environ.get("DEVPI_TOKENS_FUZZ_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------------
# the ways a string reaches the server

def _header_safe(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


CHANNELS: dict[str, Callable[[str], dict[str, str]]] = {
    "basic-password": lambda t: basic("alice", t),
    "basic-__token__": lambda t: basic("__token__", t),
    "basic-empty-user": lambda t: basic("", t),
    "basic-username": lambda t: basic(t, ""),
    "x-devpi-auth": lambda t: devpi_auth("alice", t),
    "bearer": bearer,
}


def channel_names(text: str) -> list[str]:
    names = list(CHANNELS)
    if not _header_safe(text) or not text.strip():
        names.remove("bearer")  # not a valid header value at all
    if ":" in text:
        names.remove("basic-username")  # would be split into user and password
    return names


# ---------------------------------------------------------------------------
# what the server must answer

class Oracle:
    """Knows alice's real tokens and keys, to tell a valid token from junk."""

    def __init__(self, srv: TokenServer) -> None:
        self.srv = srv
        self.store = TokenStore(srv.xom)

    def key(self, token: Token) -> bytes | None:
        with self.srv.xom.keyfs.read_transaction():
            record = self.store.get_record(token.user, token.token_id)
            if record is None:
                return None
            return self.store.key_for(token.user, token.token_id, record)

    def may_pass(self, raw: str) -> bool:
        """True when ``raw`` loads and carries a genuine signature of a stored token."""
        for candidate in (raw, raw.strip()):
            try:
                token = Token.load(candidate)
            except TokenError:
                continue
            key = self.key(token)
            if key is not None and token.verify_signature(key):
                return True
        return False


def loads(raw: str) -> bool:
    try:
        Token.load(raw)
    except TokenError:
        return False
    return True


def secret_fragments(raw: str) -> list[str]:
    """Pieces of ``raw`` that must never show up in a log line."""
    if len(raw) < 24:
        return []  # too short to tell apart from ordinary words
    body = raw.removeprefix(PREFIX)
    return [raw, body[:24], body[-24:]]


def check_logs(caplog, raw: str) -> None:
    for record in caplog.records:
        message = record.getMessage()
        # devpi-server itself logs every refused upload/submit at ERROR level
        # ("while handling <url>:\n<reason>"); anything else at ERROR is ours
        # and means an unexpected exception somewhere
        if "] while handling http://localhost/" not in message:
            assert record.levelno < logging.ERROR, message
        assert record.exc_info is None, message
        assert "Traceback" not in message, message
        for fragment in secret_fragments(raw):
            assert fragment not in message, (fragment, message)
    caplog.clear()


def probe(srv: TokenServer, oracle: Oracle, raw: str, channel: str, kind: str, caplog) -> int:
    """Send ``raw`` on ``channel`` with a request that needs the upload permission."""
    headers = CHANNELS[channel](raw)
    r = srv.register("alice/dev", "pkg", "1.0", {**headers, **JSON})
    STATS[f"server:{kind}"] += 1
    STATS[f"status:{r.status_code}"] += 1
    if r.status_code >= 500:
        STATS["5xx"] += 1
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        assert oracle.may_pass(raw), f"junk authenticated on {channel}: {raw[:80]!r}"
    else:
        assert r.status_code in (401, 403), r.text
        message = r.json["message"]
        assert message.strip()
        if raw.startswith(PREFIX):
            # a "devpi-" string is always judged as a token, with a reason,
            # in the body and in the status line (which pip and twine show)
            assert GENERIC_401 not in message, (channel, raw[:80])
            assert r.status.split(" ", 1)[1] not in ("Unauthorized", "Forbidden"), r.status
            if not loads(raw):
                assert message.startswith("malformed token"), message
    check_logs(caplog, raw)
    return r.status_code


@pytest.fixture
def fuzz(alice, caplog):
    """``(send, oracle, good token)``: alice, a real token, log capture."""
    caplog.set_level(logging.DEBUG)
    oracle = Oracle(alice)
    good = alice.create_token("alice", projects=["pkg"])
    caplog.clear()

    def send(raw: str, kind: str, channel: str) -> int:
        return probe(alice, oracle, raw, channel, kind, caplog)

    return send, oracle, good


def with_caveats(token: str, caveats) -> str:
    """``token`` with raw caveats appended, signed like a real derivation.

    pymacaroons refuses to add a caveat that is not UTF-8, so the chain is
    extended by hand (HMAC of the previous signature over the caveat): a
    genuine signature on a caveat our parser must refuse.
    """
    macaroon = Token.load(token).macaroon.copy()
    for caveat in caveats:
        caveat = caveat.encode("utf-8") if isinstance(caveat, str) else caveat
        macaroon.caveats.append(Caveat(caveat_id=caveat, version=macaroon.version))
        macaroon.signature = sign_first_party_caveat(
            binascii.unhexlify(macaroon.signature_bytes), caveat)
    return PREFIX + macaroon.serialize()


# ---------------------------------------------------------------------------
# strategies

text = st.text(st.characters(codec="utf-8"), max_size=300)
junk_bytes = st.binary(max_size=600)

json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.integers(min_value=2 ** 62, max_value=2 ** 80) | st.text(max_size=20))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.sampled_from(["nbf", "exp", "version", "permissions", "projects", "x"]) | text,
        inner, max_size=4),
    max_leaves=25)
TAGS = [0, 1, 2, 3, "devpi:indexes", "devpi:allowed", 4, -1, "devpi:other", True, None, 1.0]
V1_KEYS = ["expires", "not_before", "projects", "indexes", "allowed", "unknown", ""]


def _dumps(value) -> str:
    return json.dumps(value, allow_nan=True)


hostile_caveat = st.one_of(
    json_value.map(_dumps),                                             # anything JSON
    st.tuples(st.sampled_from(TAGS), st.lists(json_value, max_size=3))  # known tags,
    .map(lambda t: _dumps([t[0], *t[1]])),                              # wrong fields
    st.integers(1, 20000).map(lambda n: "[" * n + "]" * n),             # deep nesting
    st.integers(1, 20000).map(lambda n: "{\"a\":" * n + "1" + "}" * n),
    st.integers(0, 4000).map(lambda n: _dumps([1, ["pkg"] * n])),       # huge lists
    st.integers(0, 4000).map(lambda n: "projects=" + ",".join(["p"] * n)),
    junk_bytes,                                                         # not UTF-8
    st.tuples(st.sampled_from(V1_KEYS), text).map(lambda t: f"{t[0]}={t[1]}"),
    text,
    st.builds(lambda a, b: _dumps([0, a, b]),                          # windows,
              st.integers(-2 ** 70, 2 ** 70), st.integers(-2 ** 70, 2 ** 70)),  # any range
    st.sampled_from([
        "[0, NaN, 1]", "[0, Infinity, 1]", "[0, 1e400, 1]", "[0, 1.5, 1]", "[0,1,1]x",
        '{"nbf": 1, "nbf": 2}', '{"version": 1, "permissions": "user"}', "\x00", "",
        '["devpi:allowed", ["upload", "pkg_read"]]', '[1, ["pkg"]]', '[3, "alice"]',
    ]),
)


# ---------------------------------------------------------------------------
# server tests

@settings(FUZZ, max_examples=EXAMPLES["arbitrary"])
@given(data=st.data(), raw=text)
def test_arbitrary_strings(fuzz, data, raw):
    send, _, _ = fuzz
    if raw in ("pw", "root"):
        return  # alice's real password; root's empty one as "root:"
    channel = data.draw(st.sampled_from(channel_names(raw)))
    assert send(raw, "arbitrary", channel) in (401, 403)


@settings(FUZZ, max_examples=EXAMPLES["base64"])
@given(data=st.data(), body=junk_bytes, prefixed=st.booleans())
def test_base64_junk(fuzz, data, body, prefixed):
    send, _, _ = fuzz
    raw = (PREFIX if prefixed else "") + b64(body)
    if not raw:
        return
    channel = data.draw(st.sampled_from(channel_names(raw)))
    assert send(raw, "base64", channel) in (401, 403)


def mutate(token: str, draw) -> str:
    """Truncate, flip a bit, replace a character, insert or delete bytes."""
    action = draw(st.sampled_from(["truncate", "flip", "char", "insert", "delete"]))
    body = token.removeprefix(PREFIX)
    if action == "truncate" or len(body) < 2:
        return token[:draw(st.integers(0, max(len(token) - 1, 0)))]
    if action == "char":
        i = draw(st.integers(0, len(body) - 1))
        c = draw(st.sampled_from("AZaz09-_=+/ .%\x00\u00e9"))
        return PREFIX + body[:i] + c + body[i + 1:]
    try:
        raw = bytearray(unb64(body))
    except ValueError:  # an earlier mutation broke the base64
        return token[:-1]
    if not raw:
        return token[:-1]
    i = draw(st.integers(0, len(raw) - 1))
    if action == "flip":
        raw[i] ^= 1 << draw(st.integers(0, 7))
    elif action == "insert":
        raw[i:i] = draw(st.binary(min_size=1, max_size=16))
    else:
        del raw[i:i + draw(st.integers(1, 16))]
    return PREFIX + b64(bytes(raw))


@settings(FUZZ, max_examples=EXAMPLES["mutated"])
@given(data=st.data())
def test_mutated_real_tokens(fuzz, data):
    send, _, good = fuzz
    raw = good
    for _ in range(data.draw(st.integers(1, 3))):
        raw = mutate(raw, data.draw)
    if raw == good or not raw:
        return
    channel = data.draw(st.sampled_from(channel_names(raw)))
    send(raw, "mutated", channel)


@settings(FUZZ, max_examples=EXAMPLES["wrong_key"])
@given(data=st.data(), key=st.binary(min_size=0, max_size=64),
       caveats=st.lists(st.sampled_from([
           '[1,["pkg"]]', '["devpi:allowed",["upload"]]', '[0,99999999999,0]',
           '["devpi:indexes",["alice/dev"]]', '[3,"alice"]', "expires=never"]), max_size=3))
def test_real_identifier_wrong_key(fuzz, data, key, caveats):
    send, _, good = fuzz
    real = Token.load(good)
    macaroon = Token.mint("alice", real.token_id, key).macaroon
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat)
    raw = PREFIX + macaroon.serialize()
    channel = data.draw(st.sampled_from(channel_names(raw)))
    assert send(raw, "wrong_key", channel) == 401


identifier_user = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60)


@settings(FUZZ, max_examples=EXAMPLES["identifier"])
@given(data=st.data(), user=identifier_user,
       token_id=st.from_regex(r"[A-Za-z0-9_]{1,64}", fullmatch=True))
def test_foreign_identifiers(fuzz, data, user, token_id):
    send, _, _ = fuzz
    raw = Token.mint(user, token_id, secrets.token_bytes(32)).dump()
    channel = data.draw(st.sampled_from(channel_names(raw)))
    assert send(raw, "identifier", channel) == 401


@settings(FUZZ, max_examples=EXAMPLES["caveats"])
@given(data=st.data(), caveats=st.lists(hostile_caveat, min_size=1, max_size=3))
def test_hostile_caveats_with_genuine_signature(fuzz, data, caveats):
    """Caveats appended to a real token: the signature chain stays genuine."""
    send, oracle, good = fuzz
    raw = with_caveats(good, caveats)
    channel = data.draw(st.sampled_from(channel_names(raw)))
    status = send(raw, "caveats", channel)
    if not loads(raw):
        assert status == 401


@pytest.mark.parametrize("channel", list(CHANNELS))
def test_oversize_tokens_get_a_clear_401(alice, fuzz, channel):
    send, _, good = fuzz
    srv = alice
    # at the cap: decoded and refused as junk; one past it and far past it:
    # refused before any parsing, saying why
    at_cap = PREFIX + "A" * (MAX_TOKEN_LENGTH - len(PREFIX))
    assert send(at_cap, "oversize", channel) == 401
    for size in (MAX_TOKEN_LENGTH + 1, 200_000, 4 * 1024 * 1024):
        raw = (good + "A" * size)[:size]
        STATS["oversize:bytes"] += size
        assert send(raw, "oversize", channel) == 401
        r = srv.register("alice/dev", "pkg", "1.0", {**CHANNELS[channel](raw), **JSON})
        assert r.json["message"] == (
            f"malformed token: token is longer than {MAX_TOKEN_LENGTH} characters")
    # a real token with more caveats than a token may carry
    macaroon = Token.load(good).macaroon.copy()
    for _ in range(70):
        macaroon.add_first_party_caveat('[1,["pkg"]]')
    assert send(PREFIX + macaroon.serialize(), "oversize", channel) == 401


@pytest.mark.parametrize("username", ["/", "a/b", "../alice", "alice/dev"])
@pytest.mark.parametrize("make_headers", [basic, devpi_auth])
def test_slash_in_user_name_is_a_401_not_a_500(alice, caplog, username, make_headers):
    # found by test_arbitrary_strings: devpi-server 6.x itself raises
    # ValueError for such a name (keyfs keys can't hold it), i.e. a 500
    caplog.set_level(logging.DEBUG)
    # (public pages never look at the credentials, as with any wrong password)
    r = alice.app.get("/+api", headers={**make_headers(username, "pw"), **JSON},
                      expect_errors=True)
    assert r.status_code == 401, r.text
    assert r.json["message"] == "user names cannot contain '/'"
    r = alice.register("alice/dev", "pkg", "1.0", {**make_headers(username, "pw"), **JSON})
    assert r.status_code == 401
    assert r.json["message"] == "user names cannot contain '/'"
    check_logs(caplog, "")


# ---------------------------------------------------------------------------
# the client's offline commands

def run_client(clientdir, *args: str) -> tuple[int, str, str]:
    from devpi.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["devpi", *args, "--clientdir", str(clientdir)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _client_good_token() -> str:
    from devpi_tokens.restrictions import ProjectNames
    return Token.mint("alice", "abc123def0", b"k" * 32, [ProjectNames(("pkg",))]).dump()


CLIENT_GOOD = _client_good_token()

CLIENT_INPUTS = {
    "arbitrary": text.map(lambda t: t.encode("utf-8")),
    "non-utf8": junk_bytes,
    "base64": junk_bytes.map(lambda b: (PREFIX + b64(b)).encode()),
    "mutated": st.composite(lambda draw: mutate(CLIENT_GOOD, draw).encode("utf-8"))(),
    "caveats": st.lists(hostile_caveat, min_size=1, max_size=2).map(
        lambda c: with_caveats(CLIENT_GOOD, c).encode()),
    "oversize": st.integers(MAX_TOKEN_LENGTH - 10, 4 * MAX_TOKEN_LENGTH).map(
        lambda n: (CLIENT_GOOD + "A" * n)[:n].encode()),
}


COMMANDS = [
    ("token-inspect",), ("token-inspect", "--json"),
    ("token-derive", "-a", "pkg_read"), ("token-derive", "-e", "1h"),
    ("token-derive", "-p", "pkg", "-i", "alice/dev"),
]


@settings(FUZZ, max_examples=EXAMPLES["client"])
@given(data=st.data(), kind=st.sampled_from(sorted(CLIENT_INPUTS)),
       command=st.sampled_from(COMMANDS), via_file=st.booleans())
def test_client_offline_commands(tmp_path, data, kind, command, via_file):
    content = data.draw(CLIENT_INPUTS[kind])
    try:
        text_value = content.decode("utf-8")
    except UnicodeDecodeError:
        text_value = None
        via_file = True  # only a file can hold bytes that are not UTF-8
    if via_file:
        path = tmp_path / "token.txt"
        path.write_bytes(content)
        source = ["-f", str(path)]
    else:
        source = [f"--token={text_value}"]
    code, out, err = run_client(tmp_path / "clientdir", *command, *source)
    STATS[f"client:{kind}"] += 1
    assert "Traceback" not in out + err
    loadable = text_value is not None and loads(text_value.strip())
    if loadable and command[0] == "token-inspect":
        assert code == 0, err
        return
    if code == 0:
        # only a loadable token can be inspected or derived
        assert loadable, (command, content[:80])
        return
    STATS["client:refused"] += 1
    lines = err.splitlines()
    assert code == 1
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert out == ""


# ---------------------------------------------------------------------------
# coverage-guided: atheris on the parser and the loader (optional)

ATHERIS_RUNS = 30_000


def test_atheris_parser_and_loader(tmp_path):
    pytest.importorskip("atheris")
    script = Path(__file__).with_name("fuzz_atheris.py")
    proc = subprocess.run(
        [sys.executable, str(script), f"-runs={ATHERIS_RUNS}", "-max_len=4096",
         "-timeout=10", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "DEVPI_TOKENS_FUZZ_CORPUS": str(tmp_path / "corpus")})
    STATS["atheris:runs"] += ATHERIS_RUNS
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Done {ATHERIS_RUNS} runs" in proc.stderr
