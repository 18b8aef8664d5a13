"""Upgrade from devpi-tokens 1.x: tokens and records it left keep working.

The server state here is exactly what the published devpi-tokens 1.1.0 wrote
(tests/data/v1/v1_fixture.json, generated with that package; see the README
next to it): the same secret file, alice's whole user record as it sat in
the sqlite store, and tokens minted and derived by the 1.x commands.  The
devpi-server under test runs this project's plugin on that state, which is
what an admin gets after ``pip install -U devpi-tokens`` and a restart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
import copy
import json
import threading
import time

import pypitoken
import pytest
from devpi_server.readonly import get_mutable_deepcopy
from conftest import JSON
from conftest import TokenServer
from conftest import basic
from conftest import bearer

from devpi_tokens import legacy_v1
from devpi_tokens import server_hooks
from devpi_tokens.client_commands import _print_entry
from devpi_tokens.client_commands import inspect_data
from devpi_tokens.client_commands import list_entry
from devpi_tokens.restrictions import V1Allowed
from devpi_tokens.restrictions import V1Expires
from devpi_tokens.restrictions import V1Indexes
from devpi_tokens.restrictions import V1NotBefore
from devpi_tokens.restrictions import V1Projects
from devpi_tokens.restrictions import parse_caveat
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.server_store import V1_FIELD
from devpi_tokens.server_store import TokenStore
from devpi_tokens.server_store import is_expired
from devpi_tokens.tokens import Token


pytestmark = [pytest.mark.notransaction]

DATA = Path(__file__).parent / "data" / "v1"
FIXTURE = json.loads((DATA / "v1_fixture.json").read_text())
V1 = FIXTURE["servers"]["test_argon2"]  # the server devpi-server's test argon2 values
V1_DEFAULT = FIXTURE["servers"]["default_argon2"]  # production argon2 values
TOKENS: dict[str, str] = V1["tokens"]
RECORDS: dict[str, Any] = V1["user_record_sqlite"]["value"]["tokens"]
ALICE_PASSWORD = "alice-fixture-pw"  # set by generate_v1_fixture.py

#: Tokens that 1.x itself refused; they must stay refused.
INVALID = {"derived_expired", "short_lived", "not_before_future", "to_delete"}
#: Tokens carrying a project restriction (1.x let them change indexes).
PROJECT_RESTRICTED = {"projects", "restricted", "plain_derived", "derived_twice", "derived_allowed"}


def token_id(name: str, server: dict = V1) -> str:
    return Token.load(server["tokens"][name]).token_id


# ---------------------------------------------------------------------------
# the upgraded server

def write_secret(tmp_path: Path, secret: str) -> str:
    """The secret file as devpi-gen-secret leaves it (mode 0600, private dir)."""
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    secretfile = secret_dir / "secret"
    secretfile.write_text(secret)
    secretfile.chmod(0o600)
    return str(secretfile)


def make_v1_server(
    makexom, maketestapp, tmp_path: Path, server: dict = V1, *, projects: bool = True,
) -> TokenServer:
    """devpi-server with this plugin, on the state devpi-tokens 1.x left."""
    secretfile = write_secret(tmp_path, server["secret"])
    xom = makexom(["--secretfile", secretfile], plugins=[server_hooks])
    srv = TokenServer(maketestapp(xom))
    # alice exactly as the 1.x server stored her: password hash, indexes,
    # and the "tokens" table with 1.x's own records
    with xom.keyfs.write_transaction():
        userlist = xom.keyfs.USERLIST.get_mutable()
        userlist.add("alice")
        xom.keyfs.USERLIST.set(userlist)
        xom.keyfs.USER(user="alice").set(copy.deepcopy(server["user_record_sqlite"]["value"]))
    if not projects:
        return srv
    # the projects the 1.x fixture run registered (project data lives
    # outside the user record); done with a 1.x token, which also saves a
    # password hash check per test
    auth = basic("alice", server["tokens"]["plain"])
    for index, project in (("alice/dev", "pkg-a"), ("alice/prod", "pkg-b")):
        r = srv.register(index, project, "1.0", auth)
        assert r.status_code == 200, r.text
    return srv


@pytest.fixture
def v1srv(makexom, maketestapp, tmp_path) -> TokenServer:
    srv = make_v1_server(makexom, maketestapp, tmp_path)
    yield srv
    srv.xom.keyfs.release_all_wait_tx()


def api_status(srv: TokenServer, headers: dict[str, str]):
    return srv.app.get("/+api", headers={**headers, **JSON}, expect_errors=True)


def assert_logged_in(srv: TokenServer, headers: dict[str, str]) -> None:
    r = api_status(srv, headers)
    assert r.status_code == 200, r.text
    assert r.json["result"]["authstatus"][:2] == ["ok", "alice"]


# ---------------------------------------------------------------------------
# the fixture itself

def test_fixture_comes_from_devpi_tokens_1x():
    assert FIXTURE["versions"]["devpi-tokens"] == "1.1.0"
    for server in (V1, V1_DEFAULT):
        # export and the raw store agree, and 1.x's listing hid only "key"
        stored = server["user_record_sqlite"]["value"]["tokens"]
        assert server["user_record_export"]["tokens"] == stored
        listed = server["token_list_answer"]["result"]["tokens"]
        assert listed == {i: {"restrictions": r["restrictions"]} for i, r in stored.items()}
        for record in stored.values():
            assert set(record) == {"key", "restrictions"}
            assert legacy_v1.is_v1_record(record)
            assert len(legacy_v1.v1_salt(record)) == 32


def test_every_stored_1x_caveat_parses_with_the_shared_module():
    kinds = set()
    for record in RECORDS.values():
        for caveat in record["restrictions"]:
            restriction = parse_caveat(caveat)
            assert restriction.dump() == caveat
            kinds.add(type(restriction))
    assert kinds == {V1Expires, V1NotBefore, V1Projects, V1Indexes, V1Allowed}


def test_1x_derived_tokens_carry_no_prefix_and_load():
    for name in ("plain_derived", "derived_twice", "derived_allowed", "derived_expired"):
        raw = TOKENS[name]
        assert not raw.startswith("devpi-")
        token = Token.load(raw)
        assert token.user == "alice"
    assert TOKENS["plain"].startswith("devpi-")


# ---------------------------------------------------------------------------
# authentication with old tokens

@pytest.mark.parametrize("make_headers", [
    lambda t: basic("alice", t),
    lambda t: basic("", t),
    lambda t: basic(t, ""),
    lambda t: basic("__token__", t),  # 1.x refused this; PyPI's convention now works
    bearer,
])
def test_old_token_authenticates(v1srv, make_headers):
    assert_logged_in(v1srv, make_headers(TOKENS["plain"]))


def test_password_from_1x_record_still_logs_in(v1srv):
    assert_logged_in(v1srv, basic("alice", ALICE_PASSWORD))


def test_old_token_uploads(v1srv):
    r = v1srv.upload("alice/dev", "pkg-a", "2.0", basic("__token__", TOKENS["plain"]))
    assert r.status_code == 200, r.text


def test_old_derived_token_without_prefix(v1srv):
    headers = basic("alice", TOKENS["plain_derived"])  # indexes=alice/dev, projects=pkg-a
    assert_logged_in(v1srv, headers)
    assert v1srv.register("alice/dev", "pkg-a", "2.0", headers).status_code == 200
    r = v1srv.register("alice/dev", "pkg-b", "2.0", headers)
    assert r.status_code == 403
    assert "project 'pkg-b'" in r.text
    r = v1srv.register("alice/prod", "pkg-a", "2.0", headers)
    assert r.status_code == 403
    assert "index 'alice/prod'" in r.text


def test_1x_client_can_still_derive_from_a_new_token(v1srv):
    # an old client's token-derive appends key=value caveats and prints the
    # macaroon without the devpi- prefix (facts from 1.1.0, see the README)
    new = Token.load(v1srv.create_token("alice", ALICE_PASSWORD))
    macaroon = new.macaroon.copy()
    macaroon.add_first_party_caveat("indexes=alice/dev")
    macaroon.add_first_party_caveat("projects=pkg-a")
    derived = macaroon.serialize()
    assert not derived.startswith("devpi-")
    assert v1srv.upload("alice/dev", "pkg-a", "6.0", basic("alice", derived)).status_code == 200
    r = v1srv.upload("alice/dev", "pkg-b", "6.0", basic("alice", derived))
    assert r.status_code == 403


def pypitoken_narrowed(raw: str, project: str, now: int, lifetime: int = 60) -> str:
    """What devpi-client's upload narrowing appends, done with pypitoken."""
    token = pypitoken.Token.load(raw)
    token.restrict(project_names=[project], not_before=now - 1, not_after=now + lifetime)
    return token.dump()


def test_pypitoken_narrowed_old_token(v1srv):
    now = int(time.time())
    narrowed = pypitoken_narrowed(TOKENS["plain"], "pkg-a", now)
    assert narrowed.startswith("devpi-")
    headers = basic("__token__", narrowed)
    assert v1srv.upload("alice/dev", "pkg-a", "3.0", headers).status_code == 200
    r = v1srv.upload("alice/dev", "pkg-b", "3.0", headers)
    assert r.status_code == 403
    assert "project 'pkg-b'" in r.text
    # the window pypitoken added is enforced too
    expired = pypitoken_narrowed(TOKENS["plain"], "pkg-a", now - 3600)
    r = v1srv.upload("alice/dev", "pkg-a", "3.1", basic("__token__", expired))
    assert r.status_code == 401
    assert "expired" in r.text


def test_pypitoken_narrowed_old_restricted_token_keeps_1x_restrictions(v1srv):
    # restricted: allowed=pkg_read,upload, indexes=alice/dev, projects=Pkg_C,pkg-a
    narrowed = pypitoken_narrowed(TOKENS["restricted"], "pkg-a", int(time.time()))
    assert v1srv.upload("alice/dev", "pkg-a", "4.0", bearer(narrowed)).status_code == 200
    r = v1srv.upload("alice/prod", "pkg-a", "4.0", bearer(narrowed))
    assert r.status_code == 403
    assert "index 'alice/prod'" in r.text


def test_devpi_upload_sends_old_token_unchanged(v1srv, tmp_path):
    # devpi-client narrows devpi- tokens with pypitoken before an upload, but
    # pypitoken cannot read 1.x's key=value caveats: it warns and sends the
    # token as it is.  That token must keep working.
    from devpi.main import initmain
    hub, _ = initmain(["devpi", "--clientdir", str(tmp_path / "client"), "getjson", "/"])
    sent = hub.derive_token(TOKENS["plain"], "pkg-a")
    assert sent == TOKENS["plain"]
    assert v1srv.upload("alice/dev", "pkg-a", "3.5", basic("alice", sent)).status_code == 200


# ---------------------------------------------------------------------------
# every restriction kind, against what the real 1.x server answered

def requests_like_generator(srv: TokenServer, raw: str, serial: int) -> dict[str, int]:
    """The requests generate_v1_fixture.py made against the 1.x server."""
    auth = basic("alice", raw)
    out = {}
    r = api_status(srv, auth)
    ok = r.status_code == 200 and r.json["result"]["authstatus"][0] == "ok"
    out["GET /+api"] = 200 if ok else r.status_code
    for path in ("/alice/dev/pkg-a/", "/alice/prod/pkg-b/", "/alice/dev/+simple/pkg-a/"):
        out["GET " + path] = srv.app.get(
            path, headers={**auth, **JSON}, expect_errors=True).status_code
    for index, name in (("dev", "pkg-a"), ("dev", "pkg-b"), ("prod", "pkg-a")):
        r = srv.register(f"alice/{index}", name, f"1.0.post{serial}", auth)
        out[f"register {name} in alice/{index}"] = r.status_code
    for index in ("dev", "prod"):
        r = srv.app.patch_json(
            f"/alice/{index}", ["description=x"], headers=auth, expect_errors=True)
        out[f"PATCH /alice/{index}"] = r.status_code
    return out


def verdict(status: int) -> str:
    return "refused" if status in (401, 403) else "ok"


def expected_now(name: str, request: str, v1_status: int) -> str:
    """1.x's verdict, with the two deliberate changes of this release."""
    if name in INVALID:
        # 1.x still served public pages to an invalid token; now a request
        # with an invalid token is refused whatever it asks for
        return "refused"
    if name in PROJECT_RESTRICTED and request.startswith("PATCH"):
        # 1.x let a project-restricted token change an index (the request
        # names no project); now only reading passes without a project
        return "refused"
    return verdict(v1_status)


@pytest.mark.parametrize("name", sorted(V1["v1_server_verdicts"]))
def test_restrictions_enforced_like_1x(v1srv, name):
    v1_seen = V1["v1_server_verdicts"][name]
    serial = sorted(TOKENS).index(name)
    now_seen = requests_like_generator(v1srv, TOKENS[name], serial)
    assert set(now_seen) == set(v1_seen)
    mismatches = {
        request: (v1_seen[request], status)
        for request, status in now_seen.items()
        if verdict(status) != expected_now(name, request, _status(v1_seen[request]))}
    assert not mismatches, mismatches


def _status(value: Any) -> int:
    return value[0] if isinstance(value, list) else value


@pytest.mark.parametrize(("name", "reason"), [
    ("derived_expired", "token expired at"),
    ("short_lived", "token expired at"),
    ("not_before_future", "token not valid before 2096-10-02 07:06 UTC"),
    ("to_delete", "was deleted or never existed"),
])
def test_invalid_old_tokens_say_why(v1srv, name, reason):
    r = api_status(v1srv, basic("alice", TOKENS[name]))
    assert r.status_code == 401
    assert reason in r.json["message"]


def test_old_allowed_restriction(v1srv):
    headers = basic("alice", TOKENS["allowed"])  # allowed=pkg_read
    assert v1srv.simple("alice/dev", "pkg-a", headers).status_code == 200
    r = v1srv.upload("alice/dev", "pkg-a", "5.0", headers)
    assert r.status_code == 403
    assert "does not allow 'upload'" in r.text


def test_old_indexes_restriction(v1srv):
    headers = basic("alice", TOKENS["indexes"])  # indexes=alice/dev
    assert v1srv.upload("alice/dev", "pkg-b", "5.0", headers).status_code == 200
    r = v1srv.upload("alice/prod", "pkg-b", "5.0", headers)
    assert r.status_code == 403
    assert "index 'alice/prod'" in r.text


def test_old_projects_restriction_normalizes_names(v1srv):
    # restricted holds projects=Pkg_C,pkg-a: pkg.c is the same project as Pkg_C
    headers = basic("alice", TOKENS["restricted"])
    assert v1srv.upload("alice/dev", "pkg.c", "1.0", headers).status_code == 200
    r = v1srv.upload("alice/dev", "pkg-b", "1.0", headers)
    assert r.status_code == 403


def test_old_not_before_restriction_met(v1srv):
    assert_logged_in(v1srv, basic("alice", TOKENS["not_before_past"]))


def test_old_token_never_changes_the_user(v1srv):
    r = v1srv.app.patch_json(
        "/alice", {"password": "new"}, headers=basic("alice", TOKENS["plain"]),
        expect_errors=True)
    assert r.status_code == 403
    r = v1srv.app.post_json(
        "/alice/+token-create", {}, headers=basic("alice", TOKENS["plain"]),
        expect_errors=True)
    assert r.status_code == 403


def test_altered_old_token_is_refused(v1srv):
    # a 1.x token with its expires=never caveat replaced keeps no valid signature
    token = Token.load(TOKENS["restricted"])
    forged = Token.mint("alice", token.token_id, b"\0" * 16, token.restrictions[1:])
    r = api_status(v1srv, basic("alice", forged.dump()))
    assert r.status_code == 401
    assert "invalid signature" in r.json["message"]


# ---------------------------------------------------------------------------
# listing and deleting

def test_token_list_shows_old_tokens_marked(v1srv):
    new = v1srv.create_token("alice", ALICE_PASSWORD, projects=["pkg-a"])
    listed = v1srv.list_tokens("alice", ALICE_PASSWORD)
    assert set(RECORDS) < set(listed)
    assert Token.load(new).token_id in listed
    text = json.dumps(listed)
    for record in RECORDS.values():
        assert record["key"] not in text
    for tid, record in RECORDS.items():
        assert listed[tid]["caveats"] == record["restrictions"]
        # the summary: 1.x's own form, without "never" (clients read ints)
        summary = [c for c in record["restrictions"] if c != "expires=never"]
        assert sorted(listed[tid]["restrictions"]) == sorted(summary)
        assert listed[tid]["format"] == legacy_v1.V1_FORMAT
    assert "format" not in listed[Token.load(new).token_id]
    assert listed[token_id("plain")]["expires"] is None
    expires = parse_caveat(RECORDS[token_id("restricted")]["restrictions"][1])
    assert listed[token_id("restricted")]["expires"] == expires.not_after


def test_token_list_client_words_for_old_tokens(v1srv):
    listed = v1srv.list_tokens("alice", ALICE_PASSWORD)
    now = int(time.time())
    entry = list_entry(token_id("restricted"), listed[token_id("restricted")], now)
    words = [r["description"] for r in entry["restrictions"]]
    assert "only projects: Pkg_C, pkg-a" in words
    assert "only indexes: alice/dev" in words
    assert "only permissions: pkg_read, upload" in words
    assert entry["state"] == "valid"
    assert entry["format"] == legacy_v1.V1_FORMAT
    entry = list_entry(token_id("short_lived"), listed[token_id("short_lived")], now)
    assert entry["state"] == "expired"


def test_token_list_text_marks_old_format(v1srv, capsys):
    listed = v1srv.list_tokens("alice", ALICE_PASSWORD)
    now = int(time.time())
    _print_entry(list_entry(token_id("projects"), listed[token_id("projects")], now), now)
    new = v1srv.create_token("alice", ALICE_PASSWORD)
    new_id = Token.load(new).token_id
    _print_entry(list_entry(new_id, v1srv.list_tokens("alice", ALICE_PASSWORD)[new_id], now), now)
    old_text, new_text = capsys.readouterr().out.split(new_id)
    assert "older devpi-tokens 1.x token" in old_text
    assert "only projects: pkg-a" in old_text
    assert "1.x" not in new_text


def test_token_inspect_reads_old_tokens():
    now = int(time.time())
    data = inspect_data(Token.load(TOKENS["derived_twice"]), now)
    assert (data["user"], data["id"]) == ("alice", token_id("plain"))
    assert [r["description"] for r in data["restrictions"]] == [
        "never expires", "only indexes: alice/dev",
        "only projects: pkg-a", "only projects: pkg-b"]
    assert inspect_data(Token.load(TOKENS["derived_expired"]), now)["state"] == "expired"


def test_token_delete_removes_old_token_and_its_derivations(v1srv):
    tid = token_id("plain")
    r = v1srv.app.delete(
        f"/alice/+tokens/{tid}", headers=basic("alice", ALICE_PASSWORD), expect_errors=True)
    assert r.status_code == 200, r.text
    assert tid not in v1srv.list_tokens("alice", ALICE_PASSWORD)
    for name in ("plain", "plain_derived", "derived_twice"):
        r = api_status(v1srv, basic("alice", TOKENS[name]))
        assert r.status_code == 401
        assert "was deleted or never existed" in r.json["message"]
    # the other old tokens are untouched
    assert_logged_in(v1srv, basic("alice", TOKENS["projects"]))


def stored_v1_records(srv: TokenServer) -> Any:
    """1.x's field of alice's record, as it sits in keyfs."""
    with srv.xom.keyfs.read_transaction():
        return get_mutable_deepcopy(srv.xom.keyfs.USER(user="alice").get()[V1_FIELD])


def test_new_tokens_leave_old_records_where_1x_put_them(v1srv):
    # a downgrade to 1.x must still find its own records, as 1.x wrote them
    new = v1srv.create_token("alice", ALICE_PASSWORD)
    other = v1srv.create_token("alice", ALICE_PASSWORD)
    v1srv.app.delete(
        f"/alice/+tokens/{Token.load(other).token_id}", headers=basic("alice", ALICE_PASSWORD))
    assert stored_v1_records(v1srv) == RECORDS
    assert set(v1srv.list_tokens("alice", ALICE_PASSWORD)) == {*RECORDS, Token.load(new).token_id}
    # deleting an old token drops its record and nothing else
    tid = token_id("projects")
    v1srv.app.delete(f"/alice/+tokens/{tid}", headers=basic("alice", ALICE_PASSWORD))
    assert stored_v1_records(v1srv) == {k: v for k, v in RECORDS.items() if k != tid}
    assert_logged_in(v1srv, basic("alice", new))


def test_purge_removes_expired_old_and_new_tokens(v1srv):
    now = int(time.time())
    old_expired = sorted(tid for tid, record in RECORDS.items() if is_expired(record, now))
    assert old_expired == [token_id("short_lived")]
    window = ValidityWindow(not_after=now - 60, not_before=now - 3600)
    with v1srv.xom.keyfs.write_transaction():
        new_expired = v1srv.store.create(
            "alice", (window,), created=now - 3600, expires=now - 60).token_id
    kept = v1srv.create_token("alice", ALICE_PASSWORD)
    r = v1srv.app.post(
        "/alice/+tokens-purge", headers={**basic("alice", ALICE_PASSWORD), **JSON})
    assert r.status_code == 200, r.text
    assert r.json["result"]["removed"] == sorted([*old_expired, new_expired])
    assert stored_v1_records(v1srv) == {
        k: v for k, v in RECORDS.items() if k not in old_expired}
    assert set(v1srv.list_tokens("alice", ALICE_PASSWORD)) == (
        set(RECORDS) - set(old_expired)) | {Token.load(kept).token_id}
    assert_logged_in(v1srv, basic("alice", TOKENS["projects"]))
    assert_logged_in(v1srv, basic("alice", kept))


# ---------------------------------------------------------------------------
# keys: argon2 only for 1.x records, cached, bounded

def test_old_key_is_derived_once_then_cached(v1srv):
    legacy_v1.key_cache.clear()
    before = legacy_v1.key_cache.derivations
    for _ in range(3):
        assert_logged_in(v1srv, basic("alice", TOKENS["plain"]))
    assert_logged_in(v1srv, basic("alice", TOKENS["plain_derived"]))  # same record
    assert legacy_v1.key_cache.derivations == before + 1


def test_new_tokens_never_touch_argon2(v1srv):
    token = v1srv.create_token("alice", ALICE_PASSWORD)
    before = legacy_v1.key_cache.derivations
    assert_logged_in(v1srv, basic("alice", token))
    assert legacy_v1.key_cache.derivations == before


def test_cache_is_bounded():
    cache = legacy_v1.KeyCache(size=2)
    salts = [bytes([i]) * 16 for i in range(3)]
    keys = [cache.get(b"base-key", salt) for salt in salts]
    assert len(cache) == 2
    assert cache.derivations == 3
    assert cache.get(b"base-key", salts[2]) == keys[2]  # still cached
    assert cache.derivations == 3
    assert cache.get(b"base-key", salts[0]) == keys[0]  # evicted: derived again
    assert cache.derivations == 4
    # the same salt under another server's base key is another key
    assert cache.get(b"other-base-key", salts[0]) != keys[0]


def test_cache_derives_once_under_concurrent_requests():
    cache = legacy_v1.KeyCache()
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get(b"base", b"s" * 32)))
        for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert cache.derivations == 1


@pytest.mark.parametrize("record", [
    {"key": "not base64!", "restrictions": []},
    {"key": "c2hvcnQ", "restrictions": []},  # 5 bytes: too short for a salt
    {"key": 12345, "restrictions": []},
    {"restrictions": ["expires=never"]},
    {"kdf": "something-else", "key": RECORDS[token_id("plain")]["key"]},
])
def test_unusable_records_give_no_key(v1srv, record):
    store = TokenStore(v1srv.xom)
    assert legacy_v1.legacy_key(store, "alice", "x", record) is None


def test_broken_old_record_refuses_its_token(v1srv):
    tid = token_id("plain")
    with v1srv.xom.keyfs.write_transaction():
        with v1srv.xom.keyfs.USER(user="alice").update() as config:
            config["tokens"][tid]["key"] = "!!"
    r = api_status(v1srv, basic("alice", TOKENS["plain"]))
    assert r.status_code == 401
    assert "invalid signature" in r.json["message"]


def test_old_tokens_need_the_old_secret(makexom, maketestapp, tmp_path):
    other = dict(V1, secret="Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5")
    srv = make_v1_server(makexom, maketestapp, tmp_path, other, projects=False)
    try:
        r = api_status(srv, basic("alice", TOKENS["plain"]))
        assert r.status_code == 401
        assert "server secret changed" in r.json["message"]
    finally:
        srv.xom.keyfs.release_all_wait_tx()


class TestDefaultArgon2:
    """The production chain: devpi-server's default argon2 options.

    Only the base key is derived here (one ~4 s argon2 run at default
    cost); creating the web app would add devpi's own auth secret, a second
    such run, and the HTTP path is already covered above.
    """

    @pytest.fixture
    def lower_argon2_parameters(self):
        # replaces devpi-server's autouse fixture that lowers argon2 for speed
        return None

    def test_old_tokens_from_a_default_server(self, makexom, tmp_path):
        xom = makexom(
            ["--secretfile", write_secret(tmp_path, V1_DEFAULT["secret"])],
            plugins=[server_hooks])
        try:
            assert xom.config.args.argon2_memory_cost == 524288  # the default
            with xom.keyfs.write_transaction():
                xom.keyfs.USER(user="alice").set(
                    copy.deepcopy(V1_DEFAULT["user_record_sqlite"]["value"]))
            store = TokenStore(xom)
            with xom.keyfs.read_transaction():
                for name in ("plain", "plain_derived"):
                    token = Token.load(V1_DEFAULT["tokens"][name])
                    record = store.get_record("alice", token.token_id)
                    key = store.key_for("alice", token.token_id, record)
                    assert token.verify_signature(key)
                    assert not token.verify_signature(bytes(16))
        finally:
            xom.keyfs.release_all_wait_tx()
