"""A copy of the server directory alone is no key to the tokens.

Token keys come from the server's secret file (kept outside the serverdir,
``--secretfile``) and a random per-token salt in keyfs.  So a leaked backup
or a replica's disk, started with any other secret, accepts none of the
tokens, while the real server, restarted with its own secret, accepts them
all.  Real devpi-server processes; the copy is a plain file copy of the
stopped server's directory.
"""
from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request

import pytest

from devpi_process import start_server
from devpi_process import write_secret

pytestmark = pytest.mark.e2e

PASSWORD = "alice-serverdir-password"


def call(url: str, method: str = "GET", body: dict | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Accept": "application/json", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def whoami(url: str, token: str) -> tuple[int, str | None]:
    status, answer = call(url + "/+api", headers={"Authorization": f"Bearer {token}"})
    return status, answer.get("result", {}).get("authstatus", [None, None])[1]


def test_serverdir_copy_with_another_secret_accepts_no_token(tmp_path):
    serverdir = tmp_path / "server"
    secret = write_secret(tmp_path / "real.secret")
    server = start_server(serverdir, secretfile=secret)
    try:
        assert call(server.url + "/alice", "PUT",
                    {"password": PASSWORD, "email": "a@example.com"})[0] == 201
        tokens = []
        for body in ({}, {"projects": ["pkg"]}, {"allowed": ["pkg_read"]}):
            status, answer = call(server.url + "/alice/+token-create", "POST", body,
                                  basic("alice", PASSWORD))
            assert status == 201
            tokens.append(answer["result"]["token"])
        assert all(whoami(server.url, token) == (200, "alice") for token in tokens)
    finally:
        server.stop()

    stolen = tmp_path / "stolen"
    shutil.copytree(serverdir, stolen)
    other = start_server(stolen, secretfile=write_secret(tmp_path / "other.secret"))
    try:
        for token in tokens:
            status, user = whoami(other.url, token)
            assert (status, user) == (401, None)
        # the data itself came along: alice and her password work there
        status, answer = call(other.url + "/alice", headers=basic("alice", PASSWORD))
        assert status == 200 and answer["result"]["username"] == "alice"
    finally:
        other.stop()

    # the real server, restarted with its own secret, still accepts them all
    again = start_server(serverdir, secretfile=secret)
    try:
        assert all(whoami(again.url, token) == (200, "alice") for token in tokens)
    finally:
        again.stop()
