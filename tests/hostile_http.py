"""Plain HTTP against a real devpi-server process, safe to use from many threads.

Shared by the concurrency and restart/crash tests.  Every answer is counted
in :data:`STATS` (by status code, and ``5xx`` for server errors), so a test
module can report how many requests it made and assert that none was a 5xx.
"""
from __future__ import annotations

import base64
import http.client
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any


STATS: Counter = Counter()
#: every token string a server handed out, to check logs for leaks
MINTED: set[str] = set()
_LOCK = threading.Lock()


def count(key: str, n: int = 1) -> None:
    with _LOCK:
        STATS[key] += n


@dataclass
class Answer:
    status: int
    reason: str
    data: Any  # parsed JSON, or the text if it is not JSON

    @property
    def message(self) -> str:
        return self.data.get("message", "") if isinstance(self.data, dict) else str(self.data)

    @property
    def result(self) -> Any:
        return self.data.get("result") if isinstance(self.data, dict) else None


def devpi_auth(user: str, password: str) -> dict[str, str]:
    raw = f"{user}:{password}".encode()
    return {"X-Devpi-Auth": base64.b64encode(raw).decode("ascii")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(url: str, method: str = "GET", body: Any = None,
         headers: dict[str, str] | None = None, timeout: float = 120) -> Answer:
    """One request; HTTP errors are answers too.  Connection errors raise."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Accept": "application/json", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, reason, raw = response.status, response.reason, response.read()
    except urllib.error.HTTPError as exc:
        status, reason, raw = exc.code, exc.reason, exc.read()
    count("requests")
    count(f"status:{status}")
    if status >= 500:
        count("5xx")
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return Answer(status, str(reason), parsed)


def raw_request(host: str, port: int, method: str, path: str,
                headers: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """A request with headers urllib would refuse to send (huge, odd)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
    finally:
        conn.close()
    count("requests")
    count(f"status:{response.status}")
    if response.status >= 500:
        count("5xx")
    return response.status, body


class Devpi:
    """A user's view of a real server: login once, then cheap requests.

    devpi-server checks passwords with argon2 (64 MiB, ~0.1 s); the login
    pass from ``/+login`` is checked with an HMAC, so hundreds of parallel
    requests stay cheap.
    """

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        self.user = user
        answer = call(f"{url}/+login", "POST", {"user": user, "password": password})
        assert answer.status == 200, answer
        self.auth = devpi_auth(user, answer.result["password"])

    def create_token(self, owner: str | None = None, **body: Any) -> Answer:
        answer = call(f"{self.url}/{owner or self.user}/+token-create", "POST", body, self.auth)
        if answer.status == 201:
            with _LOCK:
                MINTED.add(answer.result["token"])
        return answer

    def delete_token(self, token_id: str, owner: str | None = None) -> Answer:
        return call(f"{self.url}/{owner or self.user}/+tokens/{token_id}", "DELETE",
                    headers=self.auth)

    def list_tokens(self, owner: str | None = None) -> dict[str, Any]:
        answer = call(f"{self.url}/{owner or self.user}/+tokens", headers=self.auth)
        assert answer.status == 200, answer
        return answer.result["tokens"]

    def purge(self, owner: str | None = None) -> Answer:
        return call(f"{self.url}/{owner or self.user}/+tokens-purge", "POST", {}, self.auth)


def create_user(url: str, user: str, password: str) -> None:
    answer = call(f"{url}/{user}", "PUT", {"password": password})
    assert answer.status == 201, answer


def token_auth(url: str, token: str) -> Answer:
    """Authenticate with a token: 200 with authstatus ok, or the refusal."""
    return call(f"{url}/+api", headers=bearer(token))


def leaked_tokens(log: str) -> list[str]:
    """Tokens handed out whose text (or its signature end) shows up in ``log``."""
    return [token for token in MINTED if token in log or token[-24:] in log]
