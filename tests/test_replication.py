"""Tokens across a devpi primary and its replicas.

Two parts:

- in process (fast): a primary and a replica ``xom`` on separate
  serverdirs; the replica gets the primary's changelog entries exactly as
  devpi's replication thread imports them (``keyfs.import_changes``), so
  the tests control when it "catches up";
- end to end (``e2e``): a real primary (``--role primary``) and real
  replica processes (``--primary-url``) on 127.0.0.1, separate serverdirs,
  one shared secret file, replicating over HTTP; the tests wait for the
  replica's ``X-Devpi-Serial`` to reach the primary's.

Every server process is stopped by its PID at the end, whatever happens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import TokenServer
from conftest import basic
from conftest import bearer

from devpi_process import upload_form
from devpi_process import DevpiClient
from devpi_process import ServerProcess
from devpi_process import start_server
from devpi_process import write_secret
from devpi_tokens import server_hooks
from devpi_tokens import server_replica
from devpi_tokens.restrictions import Indexes
from devpi_tokens.restrictions import ProjectNames
from devpi_tokens.tokens import Token


# ---------------------------------------------------------------------------
# in process: primary and replica xom, replication by import_changes

PRIMARY_URL = "http://127.0.0.1:3999"  # never contacted: the tests replay by hand


@pytest.fixture
def secretfile(tmp_path) -> Path:
    return write_secret(tmp_path / "shared.secret")


@pytest.fixture
def primary(makexom, maketestapp, secretfile, cheap_password_hashing) -> TokenServer:
    xom = makexom(["--secretfile", secretfile], plugins=[server_hooks])
    srv = TokenServer(maketestapp(xom))
    srv.create_user("alice")
    return srv


@pytest.fixture
def make_replica(makexom, maketestapp, cheap_password_hashing):
    def make_replica(*options: Any) -> TokenServer:
        xom = makexom(["--primary-url", PRIMARY_URL, *options], plugins=[server_hooks])
        assert xom.is_replica()
        return TokenServer(maketestapp(xom))
    return make_replica


@pytest.fixture
def replica(make_replica, secretfile) -> TokenServer:
    return make_replica("--secretfile", secretfile)


def catch_up(primary: TokenServer, replica: TokenServer) -> int:
    """Import every changelog entry the replica lacks, as devpi's replica thread does."""
    source, target = primary.xom.keyfs, replica.xom.keyfs
    for serial in range(target.get_next_serial(), source.get_next_serial()):
        with source._storage.get_connection() as conn:
            changes = conn.get_changes(serial)
        target.import_changes(serial, changes)
    # what the replica thread records when the primary answers
    thread = replica.xom.replica_thread
    thread._primary_serial = source.get_current_serial()
    thread.update_from_primary_at = time.time()
    return target.get_current_serial()


def api(srv: TokenServer, headers: dict[str, str], path: str = "/alice/dev/+api"):
    return srv.app.get(path, headers={**headers, "Accept": "application/json"},
                       expect_errors=True)


def assert_authenticated(r, user: str = "alice") -> None:
    assert r.status_code == 200, r.status
    assert r.json["result"]["authstatus"][:2] == ["ok", user]


def token_id(token: str) -> str:
    return Token.load(token).token_id


@pytest.mark.notransaction
def without_usage(tokens: dict) -> dict:
    """Listed tokens without the last-used fields (each server lists the uses
    it saw and has not written yet)."""
    return {token_id: {k: v for k, v in info.items() if not k.startswith("last_used")}
            for token_id, info in tokens.items()}


def test_token_from_primary_works_on_replica_once_caught_up(primary, replica):
    catch_up(primary, replica)
    token = primary.create_token("alice", description="ci")
    r = api(replica, bearer(token))
    # not replicated yet: refused, and the reason says where replication stands
    assert r.status_code == 401
    assert "has not caught up with its primary yet" in r.text
    assert "this replica is at serial" in r.text

    serial = catch_up(primary, replica)
    assert serial == primary.xom.keyfs.get_current_serial()
    assert_authenticated(api(replica, bearer(token)))
    # listing on the replica reads the replica's copy: same answer
    assert without_usage(replica.list_tokens("alice")) == without_usage(
        primary.list_tokens("alice"))


@pytest.mark.notransaction
def test_derived_token_on_replica(primary, replica):
    token = primary.create_token("alice")
    catch_up(primary, replica)
    derived = Token.load(token).derive(ProjectNames(("pkg",)), Indexes(("alice/dev",))).dump()
    assert_authenticated(api(replica, bearer(derived)))
    assert replica.app.get("/alice/dev/+simple/", headers=bearer(derived)).status_code == 200
    # a token forged for the same id (wrong key) is refused
    forged = Token.mint("alice", token_id(token), b"guess" * 8)
    r = api(replica, bearer(forged.dump()))
    assert r.status_code == 403
    assert "does not match this replica's secret" in r.text


@pytest.mark.notransaction
def test_deletion_on_primary_revokes_on_replica_once_caught_up(primary, replica):
    token = primary.create_token("alice")
    derived = Token.load(token).derive(ProjectNames(("pkg",))).dump()
    catch_up(primary, replica)
    primary.app.delete(f"/alice/+tokens/{token_id(token)}", headers=basic("alice", "pw"))
    # the revocation window: until the replica has the serial, it still accepts
    assert_authenticated(api(replica, bearer(token)))
    catch_up(primary, replica)
    for raw in (token, derived):
        r = api(replica, bearer(raw))
        assert r.status_code == 401
        assert "deleted or never existed" in r.text
    assert replica.list_tokens("alice") == {}


@pytest.mark.notransaction
def test_replica_with_another_secret_refuses_with_403(primary, make_replica, tmp_path, caplog):
    other = write_secret(tmp_path / "other.secret")
    replica = make_replica("--secretfile", other)
    token = primary.create_token("alice")
    catch_up(primary, replica)
    r = api(replica, bearer(token))
    assert r.status_code == 403
    assert "does not share its primary's --secretfile" in r.text
    assert server_replica.SECRET_HINT in caplog.text
    # never the token or its salt in a log line
    record = primary.stored_record("alice", token_id(token))
    assert token not in caplog.text
    assert record["salt"] not in caplog.text
    # the derived token fails the same way, and password login still works
    derived = Token.load(token).derive(ProjectNames(("pkg",))).dump()
    assert api(replica, bearer(derived)).status_code == 403
    assert without_usage(replica.list_tokens("alice")) == without_usage(
        primary.list_tokens("alice"))


@pytest.mark.notransaction
def test_replica_without_secretfile_refuses_tokens_and_changes(primary, make_replica, caplog):
    replica = make_replica()
    assert server_replica.NO_SECRET_REASON in caplog.text  # said at startup
    token = primary.create_token("alice")
    # whether it has the record or not, it can't verify it
    for _ in range(2):
        r = api(replica, bearer(token))
        assert r.status_code == 403
        assert "runs without --secretfile" in r.text
        catch_up(primary, replica)
    # a change is refused before devpi relays it (it would wait forever)
    r = replica.create("alice")
    assert r.status_code == 403
    assert "runs without --secretfile" in r.text


@pytest.mark.notransaction
def test_replica_without_data_refuses_with_403(primary, replica):
    token = primary.create_token("alice")
    assert replica.xom.keyfs.get_current_serial() == -1
    r = api(replica, bearer(token), "/+api")
    assert r.status_code == 403
    assert "no data from its primary yet" in r.text


@pytest.mark.notransaction
def test_unconnected_replica_refuses_token_changes(primary, replica):
    catch_up(primary, replica)
    # as after a start in which the primary never answered (e.g. it refused
    # this replica's replication requests)
    replica.xom.replica_thread.update_from_primary_at = None
    r = replica.create("alice")
    assert r.status_code == 403
    assert "has not received anything from its primary since it started" in r.text
    r = replica.app.delete("/alice/+tokens/abc", headers=basic("alice", "pw"),
                           expect_errors=True)
    assert r.status_code == 403
    # reading is the replica's own business
    assert replica.list_tokens("alice") == {}


@pytest.mark.notransaction
def test_primary_refusals_unchanged(primary):
    # the replica wording is for replicas only
    token = primary.create_token("alice")
    loaded = Token.load(token)
    forged = Token.mint("alice", loaded.token_id, b"not the key" * 3, loaded.restrictions)
    r = api(primary, bearer(forged.dump()))
    assert r.status_code == 401
    assert "replica" not in r.text
    primary.app.delete(f"/alice/+tokens/{token_id(token)}", headers=basic("alice", "pw"))
    r = api(primary, bearer(token))
    assert r.status_code == 401
    assert "replica" not in r.text


# ---------------------------------------------------------------------------
# end to end: real processes replicating over HTTP

# devpi derives the replication key and ours from the secret with argon2:
# primary and replicas need the same secret AND the same --argon2-* options.
# Low values keep the process starts short.
ARGON2 = ("--argon2-memory-cost", "8", "--argon2-parallelism", "1", "--argon2-time-cost", "1")
PASSWORD = "alice-pw"
CATCH_UP_TIMEOUT = 30

#: catch-up windows measured by the e2e tests, in seconds (printed at the end)
WINDOWS: list[tuple[str, float]] = []


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         content_type: str = "application/json", timeout: float = 30):
    """One request; returns (status, reason, headers, parsed JSON or text)."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Accept": "application/json", "Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - loopback
            status, reason, rheaders, raw = resp.status, resp.reason, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, reason, rheaders, raw = exc.code, exc.reason, exc.headers, exc.read()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, reason, rheaders, payload


def serial_of(url: str) -> int:
    status, _, headers, _ = http("GET", url + "/+api")
    assert status == 200
    return int(headers["X-Devpi-Serial"])


def wait_for_serial(replica: ServerProcess, serial: int, what: str) -> float:
    """Poll the replica until its X-Devpi-Serial reaches ``serial``; the seconds it took."""
    start = time.monotonic()
    while serial_of(replica.url) < serial:
        if not replica.alive():
            raise AssertionError(f"replica died:\n{replica.log()[-3000:]}")
        if time.monotonic() - start > CATCH_UP_TIMEOUT:
            raise AssertionError(
                f"replica stuck below serial {serial}:\n{replica.log()[-3000:]}")
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    WINDOWS.append((what, elapsed))
    return elapsed


def catch_up_with(primary: ServerProcess, replica: ServerProcess, what: str) -> float:
    return wait_for_serial(replica, serial_of(primary.url), what)


def authstatus(server: ServerProcess, token: str) -> tuple[int, Any]:
    status, reason, _, payload = http("GET", server.url + "/alice/dev/+api", headers=bearer(token))
    if status == 200:
        return status, payload["result"]["authstatus"][:2]
    return status, reason


def upload(server: ServerProcess, token: str, name: str, version: str = "1.0"):
    """A minimal ``file_upload`` form post (what ``devpi upload`` and twine send)."""
    body, content_type = upload_form(name, version)
    return http("POST", server.url + "/alice/dev/", body, bearer(token),
                content_type=content_type)


def start_replica(base: Path, name: str, primary: ServerProcess, secretfile: Any,
                  ) -> ServerProcess:
    serverdir = base / name
    # a replica replicates over HTTP: no --offline-mode (it has no mirrors anyway)
    return start_server(
        serverdir, secretfile=secretfile, offline=False,
        init_args=["--role", "replica", "--primary-url", primary.url],
        extra_args=["--primary-url", primary.url, *ARGON2])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A primary and one replica sharing a secret file; user alice, index alice/dev."""
    base = tmp_path_factory.mktemp("replication")
    secret = write_secret(base / "shared.secret")
    servers: list[ServerProcess] = []
    try:
        primary = start_server(base / "primary", secretfile=secret,
                               extra_args=["--role", "primary", *ARGON2])
        servers.append(primary)
        status, reason, _, _ = http(
            "PUT", primary.url + "/alice", {"password": PASSWORD, "email": "alice@example.com"})
        assert status == 201, reason
        status, reason, _, _ = http(
            "PUT", primary.url + "/alice/dev", {"type": "stage", "volatile": True},
            basic("alice", PASSWORD))
        assert status == 200, reason
        replica = start_replica(base, "replica", primary, secret)
        servers.append(replica)
        catch_up_with(primary, replica, "initial sync")
        yield base, secret, primary, replica
    finally:
        for server in servers:
            server.stop()
        assert not any(server.alive() for server in servers)
        if WINDOWS:
            print("\ncatch-up windows (s):", ", ".join(f"{w}: {t:.3f}" for w, t in WINDOWS))


@pytest.mark.e2e
def test_e2e_minted_on_primary_authenticates_then_revoked_on_replica(cluster):
    _, _, primary, replica = cluster
    status, reason, headers, payload = http(
        "POST", primary.url + "/alice/+token-create", {"description": "e2e"},
        basic("alice", PASSWORD))
    assert status == 201, reason
    token = payload["result"]["token"]
    created_at = int(headers["X-Devpi-Serial"])
    wait_for_serial(replica, created_at, "after create on primary")
    assert authstatus(replica, token) == (200, ["ok", "alice"])

    # derived offline: works on the replica, restrictions enforced there
    derived = Token.load(token).derive(ProjectNames(("pkg",)), Indexes(("alice/dev",))).dump()
    assert authstatus(replica, derived) == (200, ["ok", "alice"])
    # a write is relayed to the primary, which enforces the restrictions;
    # its reason comes back through the replica
    status, reason, _, _ = upload(replica, derived, "other")
    assert status == 403
    assert "'other'" in reason
    # an allowed upload is relayed to the primary, with the token, and accepted there
    status, reason, headers, _ = upload(replica, derived, "pkg")
    assert status == 200, reason
    assert headers["X-Devpi-Proxy"] == "replica"

    # listing on the replica: its own copy, the same answer once caught up
    catch_up_with(primary, replica, "after upload via replica")
    listings = [
        http("GET", server.url + "/alice/+tokens", headers=basic("alice", PASSWORD))[3]
        for server in (primary, replica)]
    assert without_usage(listings[0]["result"]["tokens"]) == without_usage(
        listings[1]["result"]["tokens"])
    assert token_id(token) in listings[0]["result"]["tokens"]

    status, reason, headers, _ = http(
        "DELETE", primary.url + f"/alice/+tokens/{token_id(token)}",
        headers=basic("alice", PASSWORD))
    assert status == 200, reason
    wait_for_serial(replica, int(headers["X-Devpi-Serial"]), "after delete on primary")
    for raw in (token, derived):
        status, reason = authstatus(replica, raw)
        assert status == 401
        assert "deleted or never existed" in reason


@pytest.mark.e2e
def test_e2e_token_management_sent_to_replica(cluster):
    base, _, primary, replica = cluster
    client = DevpiClient(base / "client-via-replica")
    client.run("use", replica.url + "/alice/dev")
    client.run("login", "alice", "--password", PASSWORD)

    token = client.run("token-create", "-p", "pkg", "-d", "via replica").stdout.strip()
    # devpi answers a relayed write once the replica has the new serial:
    # no waiting needed, on either server
    assert authstatus(replica, token) == (200, ["ok", "alice"])
    assert authstatus(primary, token) == (200, ["ok", "alice"])
    assert serial_of(replica.url) == serial_of(primary.url)

    # listing on the replica (its own copy) gives the primary's answer
    listings = [
        http("GET", server.url + "/alice/+tokens", headers=basic("alice", PASSWORD))[3]
        for server in (primary, replica)]
    assert without_usage(listings[0]["result"]["tokens"]) == without_usage(
        listings[1]["result"]["tokens"])
    on_primary = listings[0]["result"]["tokens"]
    listed = json.loads(client.run("token-list", "--json").stdout)["tokens"]
    assert {entry["id"] for entry in listed} == set(on_primary)
    (entry,) = [entry for entry in listed if entry["id"] == token_id(token)]
    assert entry["description"] == "via replica"
    assert entry["created"] == on_primary[token_id(token)]["created"]

    # the primary's refusals come back through the replica, reasons intact
    status, reason, headers, payload = http(
        "POST", replica.url + "/alice/+token-create", {}, bearer(token))
    assert status == 403
    assert "a token cannot be used to create tokens" in payload["message"]
    status, _, _, payload = http(
        "POST", replica.url + "/alice/+token-create", {"projects": []},
        basic("alice", PASSWORD))
    assert status == 400
    assert "empty list" in payload["message"]

    client.run("token-delete", token_id(token))
    for server in (replica, primary):
        status, reason = authstatus(server, token)
        assert status == 401
        assert "deleted or never existed" in reason
    proc = client.fails("token-delete", token_id(token))
    assert "has no token" in proc.stderr + proc.stdout


@pytest.mark.e2e
def test_e2e_replica_without_secretfile(cluster):
    base, _, primary, _ = cluster
    token = http("POST", primary.url + "/alice/+token-create", {},
                 basic("alice", PASSWORD))[3]["result"]["token"]
    replica = start_replica(base, "replica-nosecret", primary, secretfile=False)
    try:
        # devpi-server starts with a random secret; the primary refuses to
        # replicate to it, and it can verify no token
        status, reason = authstatus(replica, token)
        assert status == 403
        assert "runs without --secretfile" in reason
        start = time.monotonic()
        status, reason, _, _ = http("POST", replica.url + "/alice/+token-create", {},
                                    basic("alice", PASSWORD), timeout=10)
        assert status == 403  # at once, not relayed (it would hang)
        assert time.monotonic() - start < 5
        log = replica.log()
        assert server_replica.NO_SECRET_REASON in log
        assert token not in log
    finally:
        replica.stop()
    assert not replica.alive()


@pytest.mark.e2e
def test_e2e_replica_restarted_with_another_secret(cluster):
    base, secret, primary, _ = cluster
    token = http("POST", primary.url + "/alice/+token-create", {},
                 basic("alice", PASSWORD))[3]["result"]["token"]
    replica = start_replica(base, "replica-other", primary, secret)
    try:
        catch_up_with(primary, replica, "fresh replica full sync")
        assert authstatus(replica, token) == (200, ["ok", "alice"])
    finally:
        replica.stop()
    other = write_secret(base / "other.secret")
    replica = start_server(replica.serverdir, secretfile=other, offline=False,
                           extra_args=["--primary-url", primary.url, *ARGON2])
    try:
        status, reason = authstatus(replica, token)
        assert status == 403
        assert "does not share its primary's --secretfile" in reason
        status, reason, _, _ = http("POST", replica.url + "/alice/+token-create", {},
                                    basic("alice", PASSWORD), timeout=10)
        assert status == 403
        assert "has not received anything from its primary" in reason
        log = replica.log()
        assert server_replica.SECRET_HINT in log
        assert token not in log
    finally:
        replica.stop()
    assert not replica.alive()

