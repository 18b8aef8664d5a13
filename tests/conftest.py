"""Shared fixtures: devpi-server's own test fixtures, with devpi-tokens loaded.

``xom`` (and with it ``testapp``/``mapp``) is devpi-server's fixture with the
devpi-tokens server plugin registered; ``srv`` adds small helpers for token
tests against that in-process app (real keyfs, real views).
"""
from __future__ import annotations

from base64 import b64encode
from typing import Any
import json
import os

import pytest
from hypothesis import settings
from webtest.forms import Upload

from devpi_tokens import server_hooks
from devpi_tokens.server_enforce import STORE_KEY
from devpi_tokens.server_store import TokenStore


pytest_plugins = ["test_devpi_server.plugin"]

# CI must pass or fail for the code, not for the examples drawn that day:
# there, property tests use fixed seeds.  Elsewhere they explore.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def basic(user: str, password: str) -> dict[str, str]:
    """An ``Authorization: Basic`` header."""
    raw = f"{user}:{password}".encode()
    return {"Authorization": "Basic " + b64encode(raw).decode("ascii")}


def devpi_auth(user: str, password: str) -> dict[str, str]:
    """devpi-client's ``X-Devpi-Auth`` header (what ``token-login`` sends)."""
    raw = f"{user}:{password}".encode()
    return {"X-Devpi-Auth": b64encode(raw).decode("ascii")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


JSON = {"Accept": "application/json"}


@pytest.fixture
def cheap_password_hashing(monkeypatch):
    """devpi hashes passwords with argon2 at 64 MiB; tests need no such cost."""
    from devpi_server import auth
    from passlib.context import CryptContext

    monkeypatch.setattr(auth, "pwd_context", CryptContext(
        schemes=["argon2"], argon2__memory_cost=8, argon2__time_cost=1,
        argon2__parallelism=1))


@pytest.fixture
def xom(makexom, cheap_password_hashing):
    """devpi-server's ``xom`` fixture with the devpi-tokens plugin registered."""
    xom = makexom([], plugins=[server_hooks])
    yield xom
    xom.keyfs.release_all_wait_tx()


class TokenServer:
    """Small helpers around devpi-server's in-process test app."""

    def __init__(self, testapp: Any) -> None:
        self.app = testapp
        self.xom = testapp.xom

    # users and tokens (authenticated with the password)

    def create_user(self, name: str, password: str = "pw", index: str | None = "dev") -> None:
        r = self.app.put_json(f"/{name}", {"password": password, "email": f"{name}@example.com"})
        assert r.status_code == 201, r.text
        if index:
            self.create_index(f"{name}/{index}", basic(name, password))

    def create_index(self, name: str, headers: dict[str, str], code: int = 200, **config: Any):
        config.setdefault("type", "stage")
        config.setdefault("volatile", True)
        r = self.app.put_json(f"/{name}", config, headers=headers, expect_errors=True)
        assert r.status_code == code, r.text
        return r

    def create(self, user: str, password: str = "pw", *, owner: str | None = None, **body: Any):
        """POST +token-create as ``user``; returns the response."""
        return self.app.post_json(
            f"/{owner or user}/+token-create", body, headers=basic(user, password),
            expect_errors=True)

    def create_token(
        self, user: str, password: str = "pw", *, owner: str | None = None, **body: Any,
    ) -> str:
        r = self.create(user, password, owner=owner, **body)
        assert r.status_code == 201, r.text
        return r.json["result"]["token"]

    def list_tokens(self, user: str, password: str = "pw") -> dict[str, Any]:
        r = self.app.get(f"/{user}/+tokens", headers=basic(user, password))
        assert r.status_code == 200, r.text
        return r.json["result"]["tokens"]

    @property
    def store(self) -> TokenStore:
        """The token store this server's plugin uses."""
        return self.app.app.app.registry[STORE_KEY]

    def stored_record(self, user: str, token_id: str) -> dict[str, Any] | None:
        """What the server keeps of a token (salt included), read through the store.

        Tests use this instead of knowing where and how records are laid out.
        """
        with self.xom.keyfs.read_transaction():
            record = self.store.get_record(user, token_id)
            return None if record is None else dict(record)

    # package actions (with whatever headers the test gives)

    def upload(
        self, index: str, name: str, version: str, headers: dict[str, str],
        *, filename: str | None = None,
    ):
        filename = filename or f"{name}-{version}.tar.gz"
        form = {
            ":action": "file_upload", "name": name, "version": version,
            "content": Upload(filename, b"not really an sdist")}
        return self.app.post(f"/{index}/", form, headers=headers, expect_errors=True)

    def register(self, index: str, name: str, version: str, headers: dict[str, str]):
        form = {":action": "submit", "name": name, "version": version}
        return self.app.post(f"/{index}/", form, headers=headers, expect_errors=True)

    def push(self, index: str, name: str, version: str, target: str, headers: dict[str, str]):
        body = json.dumps({"name": name, "version": version, "targetindex": target})
        return self.app.post(
            f"/{index}", body, headers={**headers, "Content-Type": "application/json", **JSON},
            expect_errors=True)

    def simple(self, index: str, project: str, headers: dict[str, str]):
        return self.app.get(f"/{index}/+simple/{project}/", headers=headers, expect_errors=True)


@pytest.fixture
def start(makexom, maketestapp, tmp_path, cheap_password_hashing, secretfile):
    """Start a devpi-server (in process) on one serverdir, with the options given.

    Each call starts it afresh on the same serverdir and secret: a restart.
    """
    serverdir = tmp_path / "server"

    def start(*options: str) -> TokenServer:
        xom = makexom(
            ["--serverdir", serverdir, "--secretfile", secretfile, *options],
            plugins=[server_hooks])
        return TokenServer(maketestapp(xom))

    return start


@pytest.fixture
def srv(testapp) -> TokenServer:
    return TokenServer(testapp)


@pytest.fixture
def alice(srv) -> TokenServer:
    """``srv`` with user alice (password "pw") and her volatile index alice/dev."""
    srv.create_user("alice")
    return srv
