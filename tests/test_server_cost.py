"""Verification reads one token record and copies nothing, however many tokens exist."""
from __future__ import annotations

import time

import pytest

from devpi_tokens import server_enforce
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.server_store import KDF_V2
from devpi_tokens.server_store import TokenStore


pytestmark = [pytest.mark.notransaction]

MANY = 3000


@pytest.fixture
def crowded(xom):
    """alice with one real token among MANY stored ones; returns (store, token)."""
    store = TokenStore(xom)
    with xom.keyfs.write_transaction():
        xom.model.create_user("alice", password="pw")
        now = int(time.time())
        token = store.create(
            "alice", (ProjectNames(("pkg",)),), created=now, expires=None)
        with xom.keyfs.USER(user="alice").update() as userconfig:
            for number in range(MANY):
                userconfig["tokens"][f"{number:010x}"] = {
                    "kdf": KDF_V2, "salt": "A" * 43, "created": now, "expires": None,
                    "description": "filler", "restrictions": ['[1,["pkg"]]']}
    return store, token


def test_verification_copies_no_user_record(crowded, monkeypatch):
    store, token = crowded
    from devpi_server import keyfs
    from devpi_server import model

    def no_copy(value):
        raise AssertionError("the user record was deep-copied")

    monkeypatch.setattr(keyfs, "get_mutable_deepcopy", no_copy)
    monkeypatch.setattr(model, "get_mutable_deepcopy", no_copy)
    with store.xom.keyfs.read_transaction():
        identity = server_enforce._authenticate(store, "", token.dump(), int(time.time()))
    assert identity.username == "alice"
    assert identity.token_id == token.token_id


def test_verification_touches_only_its_record(crowded, monkeypatch):
    # every record but the token's own is poisoned: reading any would fail
    store, token = crowded
    with store.xom.keyfs.read_transaction():
        records = store.xom.keyfs.USER(user="alice").get()["tokens"]
        assert len(records) == MANY + 1
    touched = []
    original = TokenStore.key_for

    def spy(self, username, token_id, record):
        touched.append(token_id)
        return original(self, username, token_id, record)

    monkeypatch.setattr(TokenStore, "key_for", spy)
    with store.xom.keyfs.read_transaction():
        server_enforce._authenticate(store, "alice", token.dump(), int(time.time()))
    assert touched == [token.token_id]
