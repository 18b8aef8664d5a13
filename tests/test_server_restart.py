"""Tokens live in keyfs: they survive a restart on the same serverdir and secret."""
from __future__ import annotations

import pytest
from conftest import TokenServer
from conftest import basic
from conftest import bearer

from devpi_tokens import server_hooks
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]


@pytest.fixture
def start(makexom, maketestapp, tmp_path, cheap_password_hashing):
    """Start a devpi-server (in process) on one serverdir, again and again."""
    serverdir = tmp_path / "server"

    def start(*options: str) -> TokenServer:
        xom = makexom(["--serverdir", serverdir, *options], plugins=[server_hooks])
        return TokenServer(maketestapp(xom))

    return start


def test_tokens_survive_restart(start, secretfile):
    first = start("--secretfile", secretfile)
    first.create_user("alice")
    token = first.create_token("alice", projects=["pkg"], description="ci")
    listing = first.list_tokens("alice")

    second = start("--secretfile", secretfile)
    assert second.list_tokens("alice") == listing
    assert second.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    r = second.upload("alice/dev", "other", "1.0", bearer(token))
    assert r.status_code == 403
    # and revocation after the restart works too
    token_id = Token.load(token).token_id
    second.app.delete(f"/alice/+tokens/{token_id}", headers=basic("alice", "pw"))
    assert second.upload("alice/dev", "pkg", "1.1", bearer(token)).status_code == 401


def test_without_secret_file_tokens_die_at_restart(start):
    # the trap the startup warning and the create answer warn about
    first = start()
    first.create_user("alice")
    r = first.create("alice")
    assert "warning" in r.json["result"]
    token = r.json["result"]["token"]
    assert first.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200

    second = start()
    r = second.upload("alice/dev", "pkg", "1.1", bearer(token))
    assert r.status_code == 401
    assert "server secret changed" in r.status
