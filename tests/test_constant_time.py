"""Secrets are compared in constant time: pymacaroons' hmac.compare_digest, never ``==``.

Two guards: an AST scan of the package for ``==``/``!=`` on anything named
like a signature, key, salt, secret or digest; and a spy on pymacaroons'
comparison proving that verifying a token (offline and on the server) goes
through ``hmac.compare_digest``.
"""
from __future__ import annotations

import ast
import hmac
import re
from pathlib import Path

import pymacaroons.verifier
import pytest
from conftest import JSON
from conftest import bearer

import devpi_tokens
from devpi_tokens.tokens import Token


PACKAGE = Path(devpi_tokens.__file__).parent

#: Words that make a value a secret, or derived from one, when they appear
#: as a whole word (split at "_" and camelCase) in a name.
SECRET_WORDS = frozenset({
    "signature", "sig", "key", "salt", "secret", "digest", "hmac", "mac",
    "password", "passwd"})


def _words(name: str) -> set[str]:
    parts = re.split(r"_+|(?<=[a-z0-9])(?=[A-Z])", name)
    return {part.lower() for part in parts if part}


def _names(node: ast.AST) -> list[str]:
    """The names an operand is known by: variable, attribute, subscript key, call."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Subscript):
        key = node.slice
        names = _names(node.value)
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.append(key.value)
        return names
    if isinstance(node, ast.Call):
        names = _names(node.func)
        # record.get("salt") names the salt
        names += [a.value for a in node.args[:1]
                  if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        return names
    return []


def secret_comparisons(source: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every ``==``/``!=`` with an operand named like a secret."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if any(_words(name) & SECRET_WORDS for o in operands for name in _names(o)):
            found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize(("code", "flagged"), [
    ("ok = token.signature == expected", True),
    ("ok = macaroon.signature_bytes != other", True),
    ("ok = hmac.new(k, m, sha256).digest() == mac", True),
    ("ok = record['salt'] == salt", True),
    ("ok = record.get('salt') == given", True),
    ("ok = derive_key(user, tid, s) == presented", True),
    ("ok = baseKey == other", True),
    ("ok = server_secret != old", True),
    # not secrets: JSON keys, record formats, permission names
    ("ok = keys == {'nbf', 'exp'}", False),
    ("ok = key in result", False),
    ("ok = record.get('kdf') == KDF_V2", False),
    ("ok = key is None", False),
    ("ok = len(signature) > 0", False),
    ("ok = monkey == donkey", False),
])
def test_scanner_finds_what_it_should(code, flagged):
    assert bool(secret_comparisons(code)) is flagged


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_secret_compared_with_equals(path):
    found = secret_comparisons(path.read_text())
    assert not found, (
        f"{path.name}: compare secrets with hmac.compare_digest, not ==/!=: {found}")


def test_pymacaroons_compares_with_compare_digest():
    assert pymacaroons.verifier.constant_time_compare is hmac.compare_digest


@pytest.fixture
def compare_calls(monkeypatch):
    """Count calls of pymacaroons' signature comparison (still the real one)."""
    calls = []

    def spy(a, b):
        calls.append((len(a), len(b)))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(pymacaroons.verifier, "constant_time_compare", spy)
    return calls


def test_verify_signature_goes_through_compare_digest(compare_calls):
    key = b"k" * 32
    token = Token.mint("alice", "abc123", key)
    assert token.verify_signature(key)
    assert not token.verify_signature(b"x" * 32)
    assert len(compare_calls) == 2


@pytest.mark.notransaction
def test_server_verifies_through_compare_digest(alice, compare_calls):
    token = alice.create_token("alice")
    r = alice.app.get("/+api", headers={**bearer(token), **JSON})
    assert r.json["result"]["authstatus"][:2] == ["ok", "alice"]
    assert len(compare_calls) == 1
    forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    r = alice.app.get("/+api", headers={**bearer(forged), **JSON}, expect_errors=True)
    assert r.status_code == 401
    assert len(compare_calls) == 2
