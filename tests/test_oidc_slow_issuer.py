"""An issuer that does not answer holds up nothing but its own exchanges.

Verifying a JWT may fetch the issuer's keys over the network.  That happens
before devpi-server opens its write transaction, so an exchange waiting for
a silent issuer (down, firewalled, or an attacker's unsigned token naming
it) never holds devpi's write lock: other writes go on meanwhile, and the
exchange ends with a 422 and the reason.  A real devpi-server process and a
loopback "issuer" that accepts connections and never answers.
"""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from devpi_process import start_server

pytestmark = pytest.mark.e2e

PASSWORD = "alice-slow-issuer"


class SilentIssuer:
    """Accepts TCP connections on 127.0.0.1 and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def call(url: str, method: str, body: object = None, auth: tuple[str, str] | None = None,
         timeout: float = 60) -> tuple[int, dict]:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(
            ":".join(auth).encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def unsigned_jwt(issuer: str, audience: str) -> str:
    """A token that only names the issuer: enough to make a server fetch its keys."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + 300, "jti": "x"}
    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.AAAA"


def test_a_silent_issuer_does_not_hold_the_write_lock(tmp_path):
    issuer = SilentIssuer()
    server = start_server(tmp_path / "server", offline=False,
                          extra_args=["--oidc-issuer", issuer.url])
    try:
        assert call(server.url + "/alice", "PUT",
                    {"password": PASSWORD, "email": "a@example.com"})[0] == 201
        _, answer = call(server.url + "/_/oidc/audience", "GET")
        token = unsigned_jwt(issuer.url, answer["audience"])
        minted: list[tuple[int, dict, float]] = []

        def mint() -> None:
            status, body = call(server.url + "/_/oidc/mint-token", "POST", {"token": token})
            minted.append((status, body, time.monotonic()))

        exchanges = [threading.Thread(target=mint) for _ in range(3)]
        for thread in exchanges:
            thread.start()
        for _ in range(100):  # until the server is waiting for the issuer
            if issuer.accepted:
                break
            time.sleep(0.1)
        assert issuer.accepted, "the server never asked the issuer"
        # writes go on while the exchanges wait for the issuer
        status, _ = call(server.url + "/alice/dev", "PUT", {"type": "stage"},
                         auth=("alice", PASSWORD))
        written = time.monotonic()
        assert status == 200
        for thread in exchanges:
            thread.join(90)
        assert len(minted) == 3
        assert all(written < at for _, _, at in minted)
        for status, body, _ in minted:
            assert status == 422, body
            (error,) = body["errors"]
            assert error["code"] == "invalid-token"
            assert f"could not fetch the signing keys of {issuer.url}" in error["description"]
        # and what the write did is there
        assert call(server.url + "/alice/dev", "GET")[0] == 200
        assert "Traceback" not in server.log()
    finally:
        server.stop()
        issuer.close()
