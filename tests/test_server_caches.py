"""What a request with a token reuses from earlier requests, and when not.

Three things are done once instead of again and again:

- the credentials of a token request are extracted once per request
  (devpi's identity lookup reuses what the token tween found);
- a user's token tables are read from keyfs once per keyfs serial
  (:class:`~devpi_tokens.server_store.SnapshotCache`);
- a token string whose signature checked out is not loaded and verified
  again while its record stays the very same object
  (:class:`~devpi_tokens.server_store.VerifiedTokens`).

The tests here pin the safety rules: revocation takes effect on the next
request, failures are never remembered, restrictions are checked on every
request, and the caches are bounded.
"""
from __future__ import annotations

import threading
import time

import pytest
from conftest import JSON
from conftest import basic
from conftest import bearer

from devpi_tokens import server_enforce
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.server_enforce import TokenRefused
from devpi_tokens.server_store import VERIFIED_TOKEN_MAX_CHARS
from devpi_tokens.server_store import TokenStore
from devpi_tokens.server_store import VerifiedToken
from devpi_tokens.server_store import VerifiedTokens
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]


def api(srv, headers):
    return srv.app.get("/+api", headers={**headers, **JSON}, expect_errors=True)


def assert_ok(srv, headers, user: str = "alice") -> None:
    r = api(srv, headers)
    assert r.status_code == 200, r.text
    assert r.json["result"]["authstatus"][:2] == ["ok", user]


def delete_token(srv, token: str, user: str = "alice") -> None:
    token_id = Token.load(token).token_id
    r = srv.app.delete(f"/{user}/+tokens/{token_id}", headers=basic(user, "pw"))
    assert r.status_code == 200, r.text


@pytest.fixture
def counts(monkeypatch):
    """How often tokens are loaded, signatures checked, user records read."""
    seen = {"load": 0, "verify": 0, "read": 0}
    load, verify = Token.load.__func__, Token.verify_signature
    user_value = TokenStore.user_record

    def counting_load(cls, raw):
        seen["load"] += 1
        return load(cls, raw)

    def counting_verify(self, key):
        seen["verify"] += 1
        return verify(self, key)

    def counting_user_value(self, username):
        seen["read"] += 1
        return user_value(self, username)

    monkeypatch.setattr(Token, "load", classmethod(counting_load))
    monkeypatch.setattr(Token, "verify_signature", counting_verify)
    monkeypatch.setattr(TokenStore, "user_record", counting_user_value)
    return seen


# ---------------------------------------------------------------------------
# credentials: extracted once per token request

@pytest.fixture
def basic_auth_calls(xom, monkeypatch):
    """Calls of devpi-server's own basic-auth credential hook."""
    calls = []
    (impl,) = [
        impl for impl in xom.config.hook.devpiserver_get_credentials.get_hookimpls()
        if impl.plugin_name.endswith("auth_basic")]
    original = impl.function

    def counting(request):
        calls.append(request)
        return original(request)

    monkeypatch.setattr(impl, "function", counting)
    return calls


def test_token_credentials_are_extracted_once(alice, basic_auth_calls):
    token = alice.create_token("alice")
    del basic_auth_calls[:]
    assert_ok(alice, basic("__token__", token))
    assert len(basic_auth_calls) == 1


def test_password_credentials_go_through_devpi_as_before(alice, basic_auth_calls):
    del basic_auth_calls[:]
    assert_ok(alice, basic("alice", "pw"))
    # the tween looks, then devpi's identity lookup extracts them itself:
    # nothing of a password request is kept by the plugin
    assert len(basic_auth_calls) == 2
    request = basic_auth_calls[-1]
    assert server_enforce.extracted_credentials(request) is None


# ---------------------------------------------------------------------------
# the user's tables: read once per keyfs serial

def test_user_record_is_read_once_per_serial(alice, counts):
    token = alice.create_token("alice")
    counts["read"] = 0
    for _ in range(3):
        assert_ok(alice, bearer(token))
    assert counts["read"] == 1
    # any commit makes a new serial: the next request reads keyfs again
    alice.create_user("bob", index=None)
    assert_ok(alice, bearer(token))
    assert counts["read"] == 2


def test_write_transaction_sees_its_own_changes(alice, counts):
    token = Token.load(alice.create_token("alice"))
    store, keyfs = alice.store, alice.xom.keyfs
    with keyfs.read_transaction():
        assert store.get_record("alice", token.token_id) is not None
    reads = counts["read"]
    with keyfs.write_transaction():
        # the serial a write transaction starts at is the one just cached,
        # but it reads keyfs: it may hold uncommitted changes
        assert store.get_record("alice", token.token_id) is not None
        assert counts["read"] == reads + 1
        assert store.delete("alice", token.token_id)
        assert store.get_record("alice", token.token_id) is None
    with keyfs.read_transaction():
        assert store.get_record("alice", token.token_id) is None


def test_older_serial_does_not_replace_newer_snapshot(alice):
    store = alice.store
    cache = store.snapshots
    cache.clear()
    cache.put("alice", 5, ("new", "v1"))
    cache.put("alice", 4, ("old", "v1"))
    assert cache.get("alice", 5) == ("new", "v1")
    assert cache.get("alice", 4) is None
    assert cache.get("alice", 6) is None


# ---------------------------------------------------------------------------
# verified tokens: reused while the record is the same object

def test_repeated_token_is_loaded_and_verified_once(alice, counts):
    token = alice.create_token("alice")
    for _ in range(3):
        assert_ok(alice, bearer(token))
    assert (counts["load"], counts["verify"]) == (1, 1)
    assert len(alice.store.verified) == 1


@pytest.mark.parametrize("derived", [False, True])
def test_revocation_takes_effect_on_the_next_request(alice, derived):
    token = alice.create_token("alice")
    used = Token.load(token).derive(ProjectNames(("pkg",))).dump() if derived else token
    assert_ok(alice, bearer(used))
    assert_ok(alice, bearer(used))  # now from the cache
    delete_token(alice, token)
    r = api(alice, bearer(used))
    assert r.status_code == 401
    assert "was deleted or never existed" in r.json["message"]


def test_revocation_in_one_read_transaction_after_another(alice):
    # without HTTP: the next read transaction after the deleting commit
    store, keyfs = alice.store, alice.xom.keyfs
    token = alice.create_token("alice")
    now = int(time.time())
    for _ in range(2):
        with keyfs.read_transaction():
            server_enforce._authenticate(store, "", token, now)
    with keyfs.write_transaction():
        assert store.delete("alice", Token.load(token).token_id)
    with keyfs.read_transaction(), pytest.raises(TokenRefused) as refused:
        server_enforce._authenticate(store, "", token, now)
    assert refused.value.status == 401
    assert token not in store.verified._entries


def test_any_write_of_the_table_means_a_full_check(alice, counts):
    token = alice.create_token("alice")
    assert_ok(alice, bearer(token))
    alice.create_token("alice")  # rewrites alice's table: new record objects
    assert_ok(alice, bearer(token))
    assert (counts["load"], counts["verify"]) == (2, 2)
    assert_ok(alice, bearer(token))
    assert (counts["load"], counts["verify"]) == (2, 2)


def test_wrong_key_is_refused_and_never_remembered(alice, counts):
    good = Token.load(alice.create_token("alice"))
    assert_ok(alice, bearer(good.dump()))
    # same user and id, signed with some other key
    forged = Token.mint("alice", good.token_id, b"k" * 32, good.restrictions).dump()
    assert forged != good.dump()
    for _ in range(3):
        r = api(alice, bearer(forged))
        assert r.status_code == 401
        assert "invalid signature" in r.json["message"]
    assert forged not in alice.store.verified._entries
    assert counts["verify"] == 1 + 3  # checked every time
    assert_ok(alice, bearer(good.dump()))


def test_malformed_and_unknown_tokens_are_never_remembered(alice):
    good = Token.load(alice.create_token("alice"))
    unknown = Token.mint("alice", "0123456789", b"k" * 32).dump()
    broken = good.dump()[:-4] + ("AAAA" if not good.dump().endswith("AAAA") else "BBBB")
    for raw in (unknown, broken, "devpi-AgEAAAAA"):
        for _ in range(2):
            assert api(alice, bearer(raw)).status_code == 401
    assert len(alice.store.verified) == 0


def test_restrictions_are_checked_on_every_use(alice):
    store, keyfs = alice.store, alice.xom.keyfs
    now = int(time.time())
    with keyfs.write_transaction():
        token = store.create(
            "alice", (ValidityWindow(not_after=now + 60, not_before=now),),
            created=now, expires=now + 60).dump()
    with keyfs.read_transaction():
        assert server_enforce._authenticate(store, "", token, now).username == "alice"
    assert token in store.verified._entries
    # the same cached token, later: expired, whatever the cache holds
    with keyfs.read_transaction(), pytest.raises(TokenRefused) as refused:
        server_enforce._authenticate(store, "", token, now + 60)
    assert "token expired at" in refused.value.reason
    with keyfs.read_transaction(), pytest.raises(TokenRefused) as refused:
        server_enforce._authenticate(store, "", token, now - 1)
    assert "not valid before" in refused.value.reason
    # and the claimed user
    with keyfs.read_transaction(), pytest.raises(TokenRefused) as refused:
        server_enforce._authenticate(store, "bob", token, now)
    assert refused.value.status == 403


def test_cached_token_still_meets_request_restrictions(alice):
    token = alice.create_token("alice", projects=["pkg"])
    assert alice.upload("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    assert token in alice.store.verified._entries
    r = alice.upload("alice/dev", "other", "1.0", bearer(token))
    assert r.status_code == 403
    assert "not valid for project 'other'" in r.status


def test_record_handle_is_stable_until_a_write(alice):
    store, keyfs = alice.store, alice.xom.keyfs
    token_id = Token.load(alice.create_token("alice")).token_id
    with keyfs.read_transaction():
        record, handle = store.find_record("alice", token_id)
        assert record is not None and handle is not None
        assert store.find_record("alice", token_id)[1] is handle
    store.snapshots.clear()  # a fresh read of keyfs: the same parsed table
    with keyfs.read_transaction():
        assert store.find_record("alice", token_id)[1] is handle
    alice.create_token("alice")
    with keyfs.read_transaction():
        record, new_handle = store.find_record("alice", token_id)
    assert new_handle is not handle
    assert new_handle == handle  # same content, new object


def test_servers_do_not_share_verified_tokens(alice, makexom, maketestapp):
    # another server in the same process (another secret) refuses the token
    token = alice.create_token("alice")
    assert_ok(alice, bearer(token))
    from conftest import TokenServer

    from devpi_tokens import server_hooks
    other = TokenServer(maketestapp(makexom([], plugins=[server_hooks])))
    other.create_user("alice")
    r = api(other, bearer(token))
    assert r.status_code == 401


# ---------------------------------------------------------------------------
# the cache itself

def _entry(n: int) -> VerifiedToken:
    return VerifiedToken("alice", f"id{n}", (), object())


def test_verified_tokens_evict_least_recently_used():
    cache = VerifiedTokens(size=2)
    cache.put("devpi-a", _entry(1))
    cache.put("devpi-b", _entry(2))
    assert cache.get("devpi-a") is not None  # a is now the most recent
    cache.put("devpi-c", _entry(3))
    assert cache.get("devpi-b") is None
    assert cache.get("devpi-a") is not None
    assert cache.get("devpi-c") is not None
    assert len(cache) == 2


def test_verified_tokens_bound_their_characters():
    cache = VerifiedTokens(size=100, max_chars=250)
    for n in range(5):
        cache.put(f"devpi-{n}" + "x" * 94, _entry(n))  # 101 characters each
    assert len(cache) == 2
    assert cache._chars == 202
    cache.put("devpi-" + "y" * VERIFIED_TOKEN_MAX_CHARS, _entry(9))
    assert len(cache) == 2  # too long to keep at all
    cache.discard("devpi-4" + "x" * 94)
    assert (len(cache), cache._chars) == (1, 101)
    cache.clear()
    assert (len(cache), cache._chars) == (0, 0)


def test_verified_tokens_are_thread_safe():
    cache = VerifiedTokens(size=50, max_chars=10**6)
    errors = []

    def work(offset: int) -> None:
        try:
            for n in range(2000):
                raw = f"devpi-{(n * 7 + offset) % 120}"
                cache.put(raw, _entry(n))
                cache.get(raw)
                if n % 5 == 0:
                    cache.discard(raw)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(cache) <= 50
    assert cache._chars == sum(len(raw) for raw in cache._entries)


def test_cache_keeps_no_key_or_salt(alice):
    token = alice.create_token("alice")
    assert_ok(alice, bearer(token))
    (entry,) = alice.store.verified._entries.values()
    record = alice.stored_record("alice", Token.load(token).token_id)
    assert set(VerifiedToken._fields) == {"user", "token_id", "restrictions", "record"}
    # the handle is the store's own record object, not a copy
    assert dict(entry.record) == record
    assert not any(isinstance(x, bytes) for x in entry[:3])


def test_tokens_of_1x_records_are_not_remembered(makexom, maketestapp, tmp_path):
    # 1.x records come from keyfs as fresh views: no stable handle
    from test_legacy_v1 import V1
    from test_legacy_v1 import make_v1_server

    srv = make_v1_server(makexom, maketestapp, tmp_path, projects=False)
    try:
        raw = V1["tokens"]["plain"]
        with srv.xom.keyfs.read_transaction():
            record, handle = srv.store.find_record("alice", Token.load(raw).token_id)
        assert record is not None and handle is None
        assert_ok(srv, basic("alice", raw))
        assert len(srv.store.verified) == 0
    finally:
        srv.xom.keyfs.release_all_wait_tx()
