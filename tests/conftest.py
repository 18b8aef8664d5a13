"""Shared fixtures: devpi-server's own test fixtures, with devpi-tokens loaded."""
from __future__ import annotations

from base64 import b64encode
from typing import Any

import pytest

from devpi_tokens import server_hooks


pytest_plugins = ["test_devpi_server.plugin"]


def basic(user: str, password: str) -> dict[str, str]:
    """An ``Authorization: Basic`` header."""
    raw = f"{user}:{password}".encode()
    return {"Authorization": "Basic " + b64encode(raw).decode("ascii")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def xom(makexom):
    """devpi-server's ``xom`` fixture with the devpi-tokens plugin registered."""
    xom = makexom([], plugins=[server_hooks])
    yield xom
    xom.keyfs.release_all_wait_tx()


class TokenServer:
    """Small helpers around devpi-server's in-process test app."""

    def __init__(self, testapp: Any) -> None:
        self.app = testapp
        self.xom = testapp.xom

    def create_user(self, name: str, password: str = "pw", index: str | None = "dev") -> None:
        r = self.app.put_json(f"/{name}", {"password": password, "email": f"{name}@example.com"})
        assert r.status_code == 201, r.text
        if index:
            r = self.app.put_json(
                f"/{name}/{index}", {"type": "stage", "volatile": True},
                headers=basic(name, password))
            assert r.status_code == 200, r.text

    def create_token(
        self, user: str, password: str = "pw", *, owner: str | None = None, **body: Any,
    ) -> str:
        r = self.create(user, password, owner=owner, **body)
        assert r.status_code == 201, r.text
        return r.json["result"]["token"]

    def create(self, user: str, password: str = "pw", *, owner: str | None = None, **body: Any):
        return self.app.post_json(
            f"/{owner or user}/+token-create", body, headers=basic(user, password),
            expect_errors=True)


@pytest.fixture
def srv(testapp) -> TokenServer:
    return TokenServer(testapp)
