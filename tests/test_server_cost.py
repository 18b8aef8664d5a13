"""What tokens cost a request, however many a user has.

Verification reads one token record and copies nothing.  The user's token
table is one string in the user record, so devpi-server's deep copy of that
record (on every request that opens one of the user's indexes, anonymous
ones included) does not grow with the number of tokens.  Readers parse the
string once per change and share the parsed, read-only table.
"""
from __future__ import annotations

from collections.abc import Mapping
import json
import logging
import time

import pytest
from conftest import JSON
from conftest import basic
from conftest import bearer

from devpi_tokens import server_enforce
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.server_store import KDF_V2
from devpi_tokens.server_store import TABLE_FIELD
from devpi_tokens.server_store import V1_FIELD
from devpi_tokens.server_store import TableCache
from devpi_tokens.server_store import TokenStore
from devpi_tokens.server_store import dump_table
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

MANY = 3000


def filler(count: int, now: int) -> list[dict]:
    """Records of tokens nobody holds (their salt is not even random)."""
    return [
        {"kdf": KDF_V2, "salt": "A" * 43, "created": now, "expires": None,
         "description": "filler", "restrictions": ['[1,["pkg"]]']}
        for _ in range(count)]


def add_filler(xom, store: TokenStore, user: str, count: int) -> None:
    with xom.keyfs.write_transaction():
        store.add_records(user, filler(count, int(time.time())))


def raw_user_value(xom, user: str) -> Mapping:
    with xom.keyfs.read_transaction():
        return xom.keyfs.USER(user=user).get()


@pytest.fixture
def crowded(xom):
    """alice with one real token among MANY stored ones; returns (store, token)."""
    store = TokenStore(xom)
    with xom.keyfs.write_transaction():
        xom.model.create_user("alice", password="pw")
        token = store.create(
            "alice", (ProjectNames(("pkg",)),), created=int(time.time()), expires=None)
    add_filler(xom, store, "alice", MANY)
    return store, token


# ---------------------------------------------------------------------------
# verification

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
    store, token = crowded
    with store.xom.keyfs.read_transaction():
        assert len(store.list_tokens("alice")) == MANY + 1
    touched = []
    original = TokenStore.key_for

    def spy(self, username, token_id, record):
        touched.append(token_id)
        return original(self, username, token_id, record)

    monkeypatch.setattr(TokenStore, "key_for", spy)
    with store.xom.keyfs.read_transaction():
        server_enforce._authenticate(store, "alice", token.dump(), int(time.time()))
    assert touched == [token.token_id]


# ---------------------------------------------------------------------------
# the layout: one string per user

def test_token_table_is_one_compact_string(alice):
    ids = [Token.load(alice.create_token("alice", description=d)).token_id
           for d in ("first", "second", "été")]
    value = raw_user_value(alice.xom, "alice")
    text = value[TABLE_FIELD]
    assert isinstance(text, str)
    assert V1_FIELD not in value  # 1.x's field is left to 1.x's records
    table = json.loads(text)
    assert list(table) == ids  # oldest first
    assert list(table[ids[0]]) == [
        "kdf", "salt", "created", "expires", "description", "restrictions"]
    assert table[ids[2]]["description"] == "été"
    # compact, ASCII, and written back byte for byte: a rewrite changes
    # nothing but what changed
    assert dump_table(table) == text
    assert text.isascii()
    assert ", " not in text and '": ' not in text


def test_last_delete_removes_the_field(alice):
    token_id = Token.load(alice.create_token("alice")).token_id
    alice.app.delete(f"/alice/+tokens/{token_id}", headers=basic("alice", "pw"))
    assert TABLE_FIELD not in raw_user_value(alice.xom, "alice")


def _nodes(value) -> int:
    """How many objects a deep copy of ``value`` walks."""
    if isinstance(value, Mapping):
        return 1 + sum(_nodes(k) + _nodes(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return 1 + sum(_nodes(x) for x in value)
    return 1


def copied_by_index_page(alice, monkeypatch) -> list[tuple[int, object]]:
    """What devpi-server deep-copies for an anonymous request of alice's index page.

    For each copy: how many objects it walked, and the token table in it (if
    any), both taken at once (User.get() drops hidden fields from its copy).
    """
    from devpi_server import model

    copies = []
    original = model.get_mutable_deepcopy

    def recording(value):
        result = original(value)
        table = result.get(TABLE_FIELD) if isinstance(result, dict) else None
        copies.append((_nodes(result), table))
        return result

    monkeypatch.setattr(model, "get_mutable_deepcopy", recording)
    r = alice.app.get("/alice/dev/+simple/")
    assert r.status_code == 200
    monkeypatch.setattr(model, "get_mutable_deepcopy", original)
    return copies


def test_index_page_copy_does_not_grow_with_tokens(alice, monkeypatch):
    alice.create_token("alice")
    few = copied_by_index_page(alice, monkeypatch)
    add_filler(alice.xom, alice.store, "alice", 500)
    many = copied_by_index_page(alice, monkeypatch)
    # devpi-server copies alice's record for the page (User.get() in
    # getstage); with the table as one string the copy walks exactly as
    # many objects at 501 tokens as at 1, and shares the string
    tables = [table for _, table in many if table is not None]
    assert tables, "devpi-server no longer copies the user record: revisit this test"
    assert sum(n for n, _ in many) == sum(n for n, _ in few)
    text = raw_user_value(alice.xom, "alice")[TABLE_FIELD]
    assert len(text) > 500 * 100
    for table in tables:
        assert table is text


# ---------------------------------------------------------------------------
# the parse cache

def test_table_is_parsed_once_per_change(alice):
    store = alice.store
    first = alice.create_token("alice", projects=["pkg"])
    parses = store.tables.parses
    for version in ("1.0", "1.1", "1.2"):  # three requests, three read transactions
        r = alice.upload("alice/dev", "pkg", version, bearer(first))
        assert r.status_code == 200, r.text
    assert store.tables.parses == parses + 1
    # a write changes the text: the next reader parses again and sees the change
    second = alice.create_token("alice", projects=["pkg"])
    assert alice.upload("alice/dev", "pkg", "2.0", bearer(second)).status_code == 200
    assert alice.upload("alice/dev", "pkg", "2.1", bearer(first)).status_code == 200
    assert store.tables.parses == parses + 2
    alice.app.delete(
        f"/alice/+tokens/{Token.load(first).token_id}", headers=basic("alice", "pw"))
    assert alice.upload("alice/dev", "pkg", "2.2", bearer(first)).status_code == 401
    assert alice.upload("alice/dev", "pkg", "2.3", bearer(second)).status_code == 200


def test_cache_reuses_a_table_for_equal_text():
    cache = TableCache()
    text = '{"abc":{"kdf":"hmac-sha256","restrictions":["x"]}}'
    table = cache.get("alice", text)
    equal = "".join(reversed(text[::-1]))  # same characters, another object
    assert equal == text and equal is not text
    assert cache.get("alice", equal) is table
    assert cache.get("alice", text) is table
    assert cache.parses == 1
    assert cache.get("alice", text.replace("x", "y")) is not table
    assert cache.parses == 2


def test_cache_is_bounded():
    cache = TableCache(size=2)
    for user in ("a", "b", "c"):
        cache.get(user, "{}")
    assert len(cache) == 2
    assert cache.parses == 3
    cache.get("c", "{}")
    assert cache.parses == 3  # still cached
    cache.get("a", "{}")
    assert cache.parses == 4  # evicted: parsed again


def test_parsed_tables_are_read_only(alice):
    token_id = Token.load(alice.create_token("alice", projects=["pkg"])).token_id
    store = alice.store
    with alice.xom.keyfs.read_transaction():
        record = store.get_record("alice", token_id)
        with pytest.raises(TypeError):
            record["salt"] = "A" * 43
        with pytest.raises(AttributeError):
            record["restrictions"].append('[1,["other"]]')
        table = store.tables.get("alice", alice.xom.keyfs.USER(user="alice").get()[TABLE_FIELD])
        with pytest.raises(TypeError):
            table["forged"] = {}
        with pytest.raises(TypeError):
            table[token_id]["expires"] = None
        for _, listed in table.items():
            with pytest.raises(TypeError):
                listed["kdf"] = "other"
    # nothing above changed what the next reader gets
    assert alice.stored_record("alice", token_id) == dict(record)
    assert alice.list_tokens("alice")[token_id]["caveats"] == list(record["restrictions"])


def test_users_tables_do_not_mix(alice):
    alice.create_user("bob")
    alice_id = Token.load(alice.create_token("alice")).token_id
    bob_token = alice.create_token("bob")
    bob_id = Token.load(bob_token).token_id
    for _ in range(2):  # cold and cached
        assert list(alice.list_tokens("alice")) == [alice_id]
        assert list(alice.list_tokens("bob")) == [bob_id]
        assert alice.stored_record("bob", alice_id) is None
        assert alice.stored_record("alice", bob_id) is None
    # bob's token names alice as its user: alice's table has no such id
    forged = Token.mint("alice", bob_id, b"k" * 32).dump()
    r = alice.app.get("/+api", headers={**bearer(forged), **JSON}, expect_errors=True)
    assert r.status_code == 401
    assert "deleted or never existed" in r.json["message"]
    r = alice.app.get("/+api", headers={**bearer(bob_token), **JSON})
    assert r.json["result"]["authstatus"][:2] == ["ok", "bob"]


# ---------------------------------------------------------------------------
# damaged tables: refused, never a 500

def _set_table(xom, user: str, text: str) -> None:
    with xom.keyfs.write_transaction():
        with xom.keyfs.USER(user=user).update() as userconfig:
            userconfig[TABLE_FIELD] = text


def test_unreadable_record_is_no_token(alice):
    token = alice.create_token("alice")
    token_id = Token.load(token).token_id
    _set_table(alice.xom, "alice", json.dumps({token_id: "not a record"}))
    assert alice.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 401
    assert alice.list_tokens("alice") == {}


def test_unreadable_table_is_no_token_and_is_replaced(alice, caplog):
    token = alice.create_token("alice")
    _set_table(alice.xom, "alice", "{not json")
    assert alice.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 401
    assert alice.list_tokens("alice") == {}
    with caplog.at_level(logging.WARNING):
        new = alice.create_token("alice")
    assert "token table of user alice is unreadable" in caplog.text
    assert list(alice.list_tokens("alice")) == [Token.load(new).token_id]
    assert alice.upload("alice/dev", "pkg", "1.0", bearer(new)).status_code == 200
