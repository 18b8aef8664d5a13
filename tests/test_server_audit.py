"""The audit log: one line per token request; changes and refusals at info."""
from __future__ import annotations

import logging

import pytest
from conftest import JSON
from conftest import basic
from conftest import bearer

from devpi_tokens.tokens import Token

pytestmark = [pytest.mark.notransaction]


def audit_lines(caplog, level: int | None = None) -> list[str]:
    """The audit lines (without devpi's request tag in front)."""
    messages = [(r.getMessage(), r.levelno) for r in caplog.records]
    return [
        message[message.index("token audit:"):] for message, levelno in messages
        if "token audit:" in message and (level is None or levelno == level)]


def test_changes_and_refusals_are_logged_at_info(alice, caplog):
    caplog.set_level(logging.DEBUG)
    token = alice.create_token("alice", projects=["pkg"])
    token_id = Token.load(token).token_id
    extra = {"REMOTE_ADDR": "192.0.2.7"}
    r = alice.app.post(
        "/alice/dev/", {":action": "submit", "name": "pkg", "version": "1.0"},
        headers=bearer(token), extra_environ=extra, expect_errors=True)
    assert r.status_code == 200, r.text
    r = alice.app.post(
        "/alice/dev/", {":action": "submit", "name": "other\nX", "version": "1.0"},
        headers=bearer(token), extra_environ=extra, expect_errors=True)
    assert r.status_code == 403
    r = alice.app.get("/alice/dev/+simple/", headers=bearer(token), extra_environ=extra)
    assert r.status_code == 200
    info = audit_lines(caplog, logging.INFO)
    assert info == [
        f"token audit: user alice token {token_id} action POST /alice/dev/ project pkg "
        "index alice/dev client 192.0.2.7 result 200",
        f"token audit: user alice token {token_id} action POST /alice/dev/ project other\\nX "
        "index alice/dev client 192.0.2.7 result 403",
    ]
    debug = audit_lines(caplog, logging.DEBUG)
    assert len(debug) == 1 and "action GET /alice/dev/+simple/" in debug[0]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in logged
    assert token.removeprefix("devpi-")[-20:] not in logged


def test_password_requests_are_not_in_the_audit_log(alice, caplog):
    caplog.set_level(logging.DEBUG)
    r = alice.app.get("/alice/dev", headers={**basic("alice", "pw"), **JSON})
    assert r.status_code == 200
    assert audit_lines(caplog) == []
