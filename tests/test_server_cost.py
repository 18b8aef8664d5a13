"""Verification reads one token record and copies nothing, however many tokens exist."""
from __future__ import annotations

import time

import pytest

from devpi_tokens import server_enforce
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.server_store import KDF_V2
from devpi_tokens.server_store import TokenStore
from devpi_tokens.tokens import Token


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


@pytest.fixture
def compact(monkeypatch):
    from devpi_tokens import server_store
    monkeypatch.setattr(server_store, "COMPACT_RECORDS", True)


def test_compact_records_work_end_to_end(compact, alice):
    from conftest import basic
    from conftest import bearer
    from devpi_tokens.server_store import encode_record

    token = alice.create_token("alice", projects=["pkg"], description="compact")
    token_id = Token.load(token).token_id
    with alice.xom.keyfs.read_transaction():
        stored = alice.xom.keyfs.USER(user="alice").get()["tokens"][token_id]
    assert isinstance(stored, str)
    assert alice.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    assert alice.upload("alice/dev", "other", "1.0", bearer(token)).status_code == 403
    assert alice.list_tokens("alice")[token_id]["description"] == "compact"
    # an expired compact record is purged like a dict one
    with alice.xom.keyfs.write_transaction():
        with alice.xom.keyfs.USER(user="alice").update() as userconfig:
            userconfig["tokens"]["0000000000"] = encode_record({
                "kdf": KDF_V2, "salt": "A" * 43, "created": 1, "expires": 2,
                "description": "", "restrictions": []})
    r = alice.app.post("/alice/+tokens-purge", headers=basic("alice", "pw"))
    assert r.json["result"]["removed"] == ["0000000000"]
    alice.app.delete(f"/alice/+tokens/{token_id}", headers=basic("alice", "pw"))
    assert alice.upload("alice/dev", "pkg", "1.1", bearer(token)).status_code == 401


def test_unreadable_record_text_is_no_token(alice):
    from conftest import bearer

    token = alice.create_token("alice")
    token_id = Token.load(token).token_id
    with alice.xom.keyfs.write_transaction():
        with alice.xom.keyfs.USER(user="alice").update() as userconfig:
            userconfig["tokens"][token_id] = "{not json"
    r = alice.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert r.status_code == 401
    assert alice.list_tokens("alice") == {}
