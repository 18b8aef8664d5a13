"""Last used (issue 15): uses are recorded in memory and written in one transaction.

In-process, against devpi-server's own test app and keyfs: what counts as a
use, what the listing says, what a write stores (read back from keyfs),
and how many serials a write costs.  Real processes (SIGTERM, replicas)
are in ``test_server_usage_e2e.py``.
"""
from __future__ import annotations

import json
import logging
import os
import time

import pytest
from conftest import basic
from conftest import bearer
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from devpi_tokens import server_usage_file
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.server_enforce import RECORDER_KEY
from devpi_tokens.server_usage import MAX_REPORT_BYTES
from devpi_tokens.server_usage import REPORT_CHUNK_BYTES
from devpi_tokens.server_usage import BadReport
from devpi_tokens.server_usage import ReportRefused
from devpi_tokens.server_usage import Use
from devpi_tokens.server_usage import UsageRecorder
from devpi_tokens.server_usage import _report_chunks
from devpi_tokens.server_usage import merged
from devpi_tokens.server_usage import parse_report
from devpi_tokens.server_usage import bucket_of
from devpi_tokens.server_usage import stored_uses
from devpi_tokens.tokens import Token

pytestmark = [pytest.mark.notransaction]

CLIENT = {"REMOTE_ADDR": "192.0.2.7"}


def recorder(srv) -> UsageRecorder:
    found: UsageRecorder = srv.app.app.app.registry[RECORDER_KEY]
    return found


def stored_usage(srv, user: str) -> dict[str, Use]:
    """What keyfs holds for the user (not what is still in memory)."""
    with srv.xom.keyfs.read_transaction():
        return stored_uses(srv.xom.keyfs, user, srv.store.token_ids(user))


def serial(srv) -> int:
    return srv.xom.keyfs.get_current_serial()


def changed_keys(srv, at: int) -> set[str]:
    """The keys one keyfs serial changed (devpi's own changelog)."""
    with srv.xom.keyfs.read_transaction() as tx:
        return set(tx.conn.get_changes(at))


def used_key(user: str, token: str) -> str:
    """The keyfs key holding a token's uses."""
    return f"+devpi-tokens/used/{user}/{bucket_of(token_id(token))}"


def token_id(token: str) -> str:
    return Token.load(token).token_id


def test_a_new_token_was_never_used(alice):
    token = alice.create_token("alice")
    info = alice.list_tokens("alice")[token_id(token)]
    assert (info["last_used"], info["last_used_from"], info["last_used_for"]) == (
        None, None, None)


def test_uses_are_listed_before_they_are_written(alice):
    token = alice.create_token("alice")
    alice.app.extra_environ = {**alice.app.extra_environ, **CLIENT}
    before = serial(alice)
    r = alice.simple("alice/dev", "pkg", {**bearer(token)})
    assert r.status_code in (200, 404)
    r = alice.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert r.status_code == 200, r.text
    info = alice.list_tokens("alice")[token_id(token)]
    assert info["last_used_for"] == "upload pkg to alice/dev"
    assert info["last_used_from"] == "192.0.2.7"
    assert isinstance(info["last_used"], int)
    # the upload made its serial; recording the use made none, and keyfs
    # holds no usage yet
    assert serial(alice) == before + 1
    assert stored_usage(alice, "alice") == {}


def test_one_write_stores_every_users_uses_in_one_serial(srv):
    for name in ("alice", "bob", "carol"):
        srv.create_user(name)
    tokens = {name: [srv.create_token(name) for _ in range(3)]
              for name in ("alice", "bob", "carol")}
    for name, theirs in tokens.items():
        for token in theirs:
            r = srv.app.get(f"/{name}/dev/+simple/", headers=bearer(token),
                            extra_environ=CLIENT)
            assert r.status_code == 200
    before = serial(srv)
    written = recorder(srv).flush()
    assert written == 9
    assert serial(srv) == before + 1
    for name, theirs in tokens.items():
        stored = stored_usage(srv, name)
        assert set(stored) == {token_id(t) for t in theirs}
        for use in stored.values():
            assert use.client == "192.0.2.7"
            assert use.purpose == f"read {name}/dev"
    # nothing new: no transaction, no serial
    assert recorder(srv).flush() == 0
    assert serial(srv) == before + 1


def test_a_write_changes_only_users_with_new_uses(srv):
    srv.create_user("alice")
    srv.create_user("bob")
    alice_token = srv.create_token("alice")
    bob_token = srv.create_token("bob")
    for user, token in (("alice", alice_token), ("bob", bob_token)):
        srv.app.get(f"/{user}/dev/+simple/", headers=bearer(token))
    recorder(srv).flush()
    assert changed_keys(srv, serial(srv)) == {
        used_key("alice", alice_token), used_key("bob", bob_token)}
    # a use like the stored one (same second, same request) changes nothing
    srv.app.get("/alice/dev/+simple/", headers=bearer(alice_token))
    srv.app.get("/bob/dev/+simple/", headers=bearer(bob_token))
    before = serial(srv)
    recorder(srv).flush()
    assert serial(srv) == before
    srv.app.get("/+api", headers=bearer(alice_token))
    assert recorder(srv).flush() == 1
    assert changed_keys(srv, serial(srv)) == {used_key("alice", alice_token)}


def test_refused_requests_are_not_uses(alice):
    token = alice.create_token("alice", projects=["pkg"])
    r = alice.upload("alice/dev", "other", "1.0", bearer(token))
    assert r.status_code == 403
    r = alice.app.get("/alice/+tokens", headers=bearer(token), expect_errors=True)
    assert r.status_code == 403
    assert token_id(token) not in recorder(alice).unwritten("alice")
    assert alice.list_tokens("alice")[token_id(token)]["last_used"] is None
    r = alice.register("alice/dev", "pkg", "1.0", bearer(token))
    assert r.status_code == 200, r.text
    info = alice.list_tokens("alice")[token_id(token)]
    assert info["last_used_for"] == "register pkg on alice/dev"


def test_a_derived_token_counts_for_its_parent(alice):
    parent = Token.load(alice.create_token("alice"))
    derived = parent.derive(ProjectNames(("pkg",)))
    r = alice.upload("alice/dev", "pkg", "1.0", bearer(derived.dump()))
    assert r.status_code == 200, r.text
    recorder(alice).flush()
    stored = stored_usage(alice, "alice")
    assert set(stored) == {parent.token_id}
    assert stored[parent.token_id].purpose == "upload pkg to alice/dev"


def test_push_and_delete_are_described(alice):
    token = alice.create_token("alice")
    alice.create_index("alice/prod", basic("alice", "pw"))
    assert alice.register("alice/dev", "pkg", "1.0", bearer(token)).status_code == 200
    r = alice.upload("alice/dev", "pkg", "1.0", bearer(token))
    assert r.status_code == 200
    r = alice.push("alice/dev", "pkg", "1.0", "alice/prod", bearer(token))
    assert r.status_code == 200, r.text
    assert alice.list_tokens("alice")[token_id(token)]["last_used_for"] == (
        "push pkg from alice/dev to alice/prod")
    r = alice.app.delete("/alice/prod/pkg/1.0", headers=bearer(token))
    assert r.status_code == 200
    assert alice.list_tokens("alice")[token_id(token)]["last_used_for"] == (
        "delete pkg on alice/prod")


def test_a_deleted_tokens_use_is_dropped_at_the_next_write(alice):
    keep, gone = alice.create_token("alice"), alice.create_token("alice")
    for token in (keep, gone):
        alice.app.get("/alice/dev/+simple/", headers=bearer(token))
    recorder(alice).flush()
    assert set(stored_usage(alice, "alice")) == {token_id(keep), token_id(gone)}
    r = alice.app.delete(f"/alice/+tokens/{token_id(gone)}", headers=basic("alice", "pw"))
    assert r.status_code == 200
    alice.app.get("/alice/dev/+simple/", headers=bearer(keep))
    recorder(alice).flush()
    assert set(stored_usage(alice, "alice")) == {token_id(keep)}


def test_uses_of_a_deleted_user_are_not_written(srv):
    srv.create_user("bob", index=None)
    token = srv.create_token("bob")
    assert srv.app.get("/+api", headers=bearer(token)).status_code == 200
    r = srv.app.delete("/bob", headers=basic("bob", "pw"))
    assert r.status_code == 200, r.text
    before = serial(srv)
    assert recorder(srv).flush() == 0
    assert serial(srv) == before
    with srv.xom.keyfs.read_transaction():
        assert not srv.store.user_exists("bob")


def test_a_failed_write_keeps_the_uses(alice, monkeypatch, caplog):
    token = alice.create_token("alice")
    alice.app.get("/alice/dev/+simple/", headers=bearer(token), extra_environ=CLIENT)
    rec = recorder(alice)

    def broken(batch):
        raise OSError("disk full")

    monkeypatch.setattr(rec, "_write", broken)
    caplog.set_level(logging.WARNING)
    assert rec.flush() == 0
    assert "writing token usage failed (OSError)" in caplog.text
    monkeypatch.undo()
    assert rec.flush() == 1
    assert stored_usage(alice, "alice")[token_id(token)].client == "192.0.2.7"


def test_the_newest_use_wins_across_writes(alice):
    token = alice.create_token("alice")
    tid = token_id(token)
    rec = recorder(alice)
    now = int(time.time())
    rec.record("alice", tid, Use(now - 100, "192.0.2.1", "read alice/dev"))
    rec.flush()
    # an older use reported late (a replica's) does not replace it
    rec.add({"alice": {tid: Use(now - 200, "192.0.2.2", "read alice/dev")}})
    before = serial(alice)
    rec.flush()
    assert serial(alice) == before
    assert stored_usage(alice, "alice")[tid].client == "192.0.2.1"


def test_a_stored_use_from_the_future_does_not_hide_later_ones(alice):
    """A clock that jumped ahead once must not freeze a token's last use."""
    token = alice.create_token("alice")
    tid = token_id(token)
    rec = recorder(alice)
    rec.record("alice", tid, Use(int(time.time()) + 10 * 86400, "192.0.2.1", "read x"))
    rec.flush()
    alice.app.get("/alice/dev/+simple/", headers=bearer(token), extra_environ=CLIENT)
    assert rec.flush() == 1
    use = stored_usage(alice, "alice")[tid]
    assert (use.client, use.purpose) == ("192.0.2.7", "read alice/dev")


def test_client_text_in_a_use_is_bounded(alice):
    token = alice.create_token("alice")
    name = "p" * 500
    r = alice.register("alice/dev", name, "1.0", bearer(token))
    assert r.status_code == 200, r.text
    purpose = alice.list_tokens("alice")[token_id(token)]["last_used_for"]
    assert purpose.startswith("register ppp") and purpose.endswith("...")
    assert len(purpose) == 200


def test_the_listing_never_shows_usage_of_other_users_tokens(srv):
    srv.create_user("alice")
    srv.create_user("bob")
    token = srv.create_token("alice")
    srv.app.get("/alice/dev/+simple/", headers=bearer(token))
    recorder(srv).flush()
    assert all(info["last_used"] is None for info in srv.list_tokens("bob").values())


# ---------------------------------------------------------------------------
# reports from replicas (the replica side runs in the e2e tests)

def test_reports_need_a_replica_identity(alice):
    token = alice.create_token("alice")
    body = {"uses": json.dumps([["alice", token_id(token), 1, None, "x"]])}
    for headers in ({}, basic("alice", "pw"), bearer(token), basic("root", "")):
        r = alice.app.post("/_/tokens/usage", body, headers=headers, expect_errors=True)
        assert r.status_code == 403, (headers, r.text)
        assert "replicas" in r.json["message"]
    assert recorder(alice).unwritten("alice") == {}


@pytest.mark.parametrize("rows", [{}, "x", None, 5])
def test_a_report_that_is_not_a_list_is_refused(rows):
    with pytest.raises(BadReport, match="must be a list"):
        parse_report(rows, 10)


GOOD_ROW = ["alice", "abc", 1, None, "read alice/dev"]


@pytest.mark.parametrize("bad", [
    ["alice"],
    ["alice", "abc", "1", None, "x"],
    ["alice", "abc", -1, None, "x"],
    ["alice", "abc", True, None, "x"],
    ["alice", "abc", 1, 5, "x"],
    [1, "abc", 1, None, "x"],
    ["a/b", "abc", 1, None, "x"],
    ["", "abc", 1, None, "x"],
    ["alice", "", 1, None, "x"],
    ["alice", "a" * 65, 1, None, "x"],
    "row",
])
def test_rows_that_are_not_uses_are_skipped_and_counted(bad):
    """One odd row (a newer replica, a bug) must not cost the other rows."""
    uses, skipped = parse_report([bad, GOOD_ROW], 10)
    assert skipped == 1
    assert uses == {"alice": {"abc": Use(1, None, "read alice/dev")}}


def test_a_reports_future_times_are_taken_as_now():
    uses, _ = parse_report([["alice", "abc", 99, "192.0.2.9", "read alice/dev"]], 50)
    assert uses == {"alice": {"abc": Use(50, "192.0.2.9", "read alice/dev")}}


def test_long_user_names_are_users_too(srv):
    """devpi takes user names of any length; so does usage."""
    name = "x" * 300
    srv.create_user(name, index=None)
    token = srv.create_token(name)
    assert srv.app.get("/+api", headers=bearer(token)).status_code == 200
    assert recorder(srv).flush() == 1
    assert stored_usage(srv, name)[token_id(token)].purpose == "read /+api"


uses_st = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.builds(Use, st.integers(0, 100), st.none() | st.just("192.0.2.1"), st.just("x")))


@settings(max_examples=200, deadline=None)
@given(uses_st, uses_st, st.sets(st.sampled_from(["a", "b", "c", "d"])))
def test_merged_keeps_the_newest_use_of_existing_tokens(stored, new, ids):
    result = merged(stored, new, ids)
    assert set(result) == {t for t in ids if t in stored or t in new}
    for token_id, use in result.items():
        candidates = [u for u in (stored.get(token_id), new.get(token_id)) if u is not None]
        assert use.at == max(u.at for u in candidates)
        assert use in candidates


# ---------------------------------------------------------------------------
# the option


@pytest.mark.parametrize("value", ["-1", "86401", "9999999999"])
def test_an_interval_out_of_range_stops_the_server(start, value):
    with pytest.raises(SystemExit, match="--tokens-usage-interval must be a number of seconds"):
        start(f"--tokens-usage-interval={value}")


def test_interval_zero_records_nothing_but_lists_what_was_stored(start):
    srv = start()
    srv.create_user("alice")
    token = srv.create_token("alice")
    srv.app.get("/alice/dev/+simple/", headers=bearer(token), extra_environ=CLIENT)
    assert recorder(srv).flush() == 1
    srv = start("--tokens-usage-interval", "0")
    assert RECORDER_KEY not in srv.app.app.app.registry
    before = serial(srv)
    r = srv.app.get("/+api", headers=bearer(token))
    assert r.status_code == 200
    assert serial(srv) == before
    info = srv.list_tokens("alice")[token_id(token)]
    assert (info["last_used_from"], info["last_used_for"]) == ("192.0.2.7", "read alice/dev")


def test_uses_survive_a_restart_once_written(start):
    srv = start()
    srv.create_user("alice")
    token = srv.create_token("alice")
    srv.app.get("/alice/dev/+simple/", headers=bearer(token), extra_environ=CLIENT)
    recorder(srv).thread_shutdown()
    srv = start()
    assert srv.list_tokens("alice")[token_id(token)]["last_used_from"] == "192.0.2.7"


# ---------------------------------------------------------------------------
# 10,000 busy tokens: one write

def many_tokens(srv, user: str, count: int) -> list[Token]:
    """``count`` usable tokens of ``user``, stored with one rewrite of the table."""
    store = srv.store
    now = int(time.time())
    made = [store.new_record((), created=now, expires=now + 3600) for _ in range(count)]
    with srv.xom.keyfs.write_transaction():
        ids = store.add_records(user, [record for record, _ in made])
    return [
        Token.mint(user, token_id, store.derive_key(user, token_id, salt), ())
        for token_id, (_, salt) in zip(ids, made, strict=True)]


def test_ten_thousand_busy_tokens_make_one_write(alice):
    tokens = many_tokens(alice, "alice", 10_000)
    before = serial(alice)
    for number, token in enumerate(tokens):
        r = alice.app.get("/+api", headers=bearer(token.dump()),
                          extra_environ={"REMOTE_ADDR": f"10.0.{number // 256}.{number % 256}"})
        assert r.status_code == 200
    assert serial(alice) == before
    assert recorder(alice).flush() == 10_000
    assert serial(alice) == before + 1
    # only usage buckets: never the user record (keyfs keeps every value)
    changed = changed_keys(alice, before + 1)
    assert changed == {f"+devpi-tokens/used/alice/{b:02x}" for b in range(256)}
    stored = stored_usage(alice, "alice")
    assert len(stored) == 10_000
    assert stored[tokens[-1].token_id].client == "10.0.39.15"
    assert {use.purpose for use in stored.values()} == {"read /+api"}


# ---------------------------------------------------------------------------
# found by review: redirects, bad names, chunks, the listing during a write

def test_a_redirect_is_not_a_use(alice):
    token = alice.create_token("alice")
    # devpi redirects a simple page to the normalized project name before it
    # looks for the index: the client's text must not become a "use"
    r = alice.app.get("/alice/nosuch/+simple/Evil%1B%5B2J/", headers=bearer(token),
                      expect_errors=True)
    # devpi's test app follows the redirect, which ends in a 404
    assert r.status_code == 404, r.status_code
    assert recorder(alice).unwritten("alice") == {}
    r = alice.app.get("/alice/dev/+simple/", headers=bearer(token))
    assert r.status_code == 200
    assert set(recorder(alice).unwritten("alice")) == {token_id(token)}


def test_an_impossible_user_name_does_not_block_other_writes(alice):
    token = alice.create_token("alice")
    rec = recorder(alice)
    rec.add({"a/b": {"abc": Use(1, None, "x")}, "": {"abc": Use(1, None, "x")}})
    alice.app.get("/alice/dev/+simple/", headers=bearer(token), extra_environ=CLIENT)
    assert rec.flush() == 1
    assert set(stored_usage(alice, "alice")) == {token_id(token)}
    # nothing is left to retry forever
    assert rec.flush() == 0


def test_the_listing_keeps_showing_a_use_while_storage_catches_up(alice):
    token = alice.create_token("alice")
    rec = recorder(alice)
    alice.app.get("/alice/dev/+simple/", headers=bearer(token), extra_environ=CLIENT)
    rec.flush()
    # a listing whose read transaction began before the write still finds it
    assert rec.unwritten("alice")[token_id(token)].client == "192.0.2.7"


def test_report_chunks_stay_under_the_primarys_limit():
    purpose = "read \u00e9\u00e9" * 25  # non-ASCII: JSON makes each 6 bytes
    uses = {"alice": {f"{n:010x}": Use(1, "2001:db8::1", purpose) for n in range(3000)}}
    chunks = list(_report_chunks(uses))
    assert len(chunks) > 1
    sent = 0
    for rows, part in chunks:
        body = json.dumps(rows, separators=(",", ":"))
        assert len(body.encode()) <= REPORT_CHUNK_BYTES < MAX_REPORT_BYTES
        assert parse_report(json.loads(body), 10)[0] == {
            "alice": {k: v._replace(at=1) for k, v in part["alice"].items()}}
        sent += len(rows)
    assert sent == 3000


@pytest.mark.parametrize(("status", "kept"), [
    (-1, True), (500, True), (503, True), (429, True), (408, True),
    (400, False), (403, False), (413, False)])
def test_what_a_replica_sends_again(status, kept):
    assert ReportRefused(status).kept is kept


# ---------------------------------------------------------------------------
# the file of uses a clean stop could not record

ROWS = [["alice", "abc", 1, "192.0.2.7", "read alice/dev"]]


def parse_rows(rows):
    return parse_report(rows, 10)[0]


def test_saved_uses_are_private_and_taken_once(tmp_path):
    assert server_usage_file.save(tmp_path, ROWS)
    (saved,) = tmp_path.glob(".devpi-tokens-unwritten-uses.*.json")
    assert saved.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.tmp"))
    assert server_usage_file.take(tmp_path, parse_rows) == [
        {"alice": {"abc": Use(1, "192.0.2.7", "read alice/dev")}}]
    assert list(tmp_path.iterdir()) == []
    assert server_usage_file.take(tmp_path, parse_rows) == []


def test_two_saves_are_two_files(tmp_path, monkeypatch):
    """--requests-only workers sharing a directory keep each other's uses."""
    server_usage_file.save(tmp_path, ROWS)
    monkeypatch.setattr(os, "getpid", lambda: 1)
    server_usage_file.save(tmp_path, [["bob", "def", 2, None, "read bob/dev"]])
    taken = server_usage_file.take(tmp_path, parse_rows)
    assert sorted(user for part in taken for user in part) == ["alice", "bob"]


@pytest.mark.parametrize("kind", ["garbage", "not utf-8", "symlink", "fifo", "not rows"])
def test_an_unusable_saved_file_is_set_aside(tmp_path, kind, caplog):
    path = tmp_path / ".devpi-tokens-unwritten-uses.7.json"
    outside = tmp_path / "outside"
    outside.write_text(json.dumps(ROWS))
    if kind == "garbage":
        path.write_text("[[")
    elif kind == "not utf-8":
        path.write_bytes(b"\xff\xfe garbage")
    elif kind == "symlink":
        path.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(path)  # reading it would block the recorder for ever
    else:
        path.write_text('{"a": 1}')
    caplog.set_level(logging.WARNING)
    assert server_usage_file.take(tmp_path, parse_rows) == []
    assert "set aside as *.bad" in caplog.text
    assert not path.exists() and not path.is_symlink()
    assert (tmp_path / (path.name + ".bad")).exists() or (
        tmp_path / (path.name + ".bad")).is_symlink()
    # what a symlink pointed to is neither read nor touched
    assert json.loads(outside.read_text()) == ROWS
