"""Last used, end to end: real devpi-server processes stopped, killed, restarted.

What the in-process tests (``test_server_usage.py``) cannot show, because
they never run devpi-server's main thread, its thread pool shutdown or a
second process:

- SIGTERM and SIGINT (Ctrl-C) are clean stops that write the uses still in
  memory (with ``--tokens-usage-interval 3600`` nothing else would have);
- after ``kill -9`` the uses written at the last interval are there, a use
  made after it is lost ("at most the last interval");
- hundreds of busy tokens cost at most one serial per interval, not one per
  request, and every use is stored;
- a replica reports its uses to its primary, keeps them while the primary
  is down and delivers them once it is back; they replicate back;
- the real ``devpi token-list`` prints the ``used`` line;
- a replica stopped while its primary is down saves its unsent uses to a
  file and delivers them after its next start;
- an upload relayed by a replica is the primary's use to record;
- SIGTERM while devpi-server starts ends it by SIGTERM, without a traceback;
- redirects and refusals (3xx, 404, 403, 401) are not uses.

Every server binds 127.0.0.1 on a free port, is stopped by its PID, and is
restarted on the same serverdir and secret file.  What devpi stored is read
back through ``GET /alice/+tokens`` (after a restart: from keyfs only) and
counted with the ``X-Devpi-Serial`` header of ``GET /+api``.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
import base64
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from devpi_process import DevpiClient
from devpi_process import upload_form
from devpi_process import bin_path
from devpi_process import free_port
from devpi_process import init_server
from devpi_process import ServerProcess
from devpi_process import start_server
from devpi_process import write_secret
from hostile_http import Devpi
from hostile_http import bearer
from hostile_http import call
from hostile_http import create_user
from hostile_http import leaked_tokens
from devpi_tokens.tokens import Token


pytestmark = pytest.mark.e2e

# the derived keys (devpi's and ours) come from the secret with argon2: the
# same options on every start, and low values keep the starts short
ARGON2 = ("--argon2-memory-cost", "8", "--argon2-parallelism", "1", "--argon2-time-cost", "1")
PASSWORD = "alice-pw"
#: an interval no test waits for: only a stop writes
LONG = 3600
#: seconds to wait for a write, a report or replication
BOUND = 30
CLIENT = "127.0.0.1"
READ = "read alice/dev"


# ---------------------------------------------------------------------------
# helpers

def start(serverdir: Path, interval: int, *extra: str, **kw: Any) -> ServerProcess:
    """devpi-server recording token uses every ``interval`` seconds."""
    return start_server(
        serverdir, extra_args=[*extra, "--tokens-usage-interval", str(interval), *ARGON2], **kw)


def setup_alice(server: ServerProcess) -> Devpi:
    """User alice with her volatile index alice/dev; alice logged in."""
    create_user(server.url, "alice", PASSWORD)
    alice = Devpi(server.url, "alice", PASSWORD)
    answer = call(f"{server.url}/alice/dev", "PUT", {"type": "stage", "volatile": True},
                  alice.auth)
    assert answer.status == 200, answer
    return alice


def create_token(alice: Devpi, description: str) -> tuple[str, str]:
    """A new token of alice: (id, token)."""
    answer = alice.create_token(description=description)
    assert answer.status == 201, answer
    return answer.result["id"], answer.result["token"]


def serial_of(url: str) -> int:
    with urllib.request.urlopen(url + "/+api", timeout=30) as response:  # noqa: S310
        return int(response.headers["X-Devpi-Serial"])


def basic_token(token: str) -> dict[str, str]:
    """The token as a password, the way pip and twine send it."""
    raw = f"__token__:{token}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


def read_index(url: str, headers: dict[str, str]) -> int:
    """A token use that makes no serial of its own: alice/dev's simple page."""
    return call(f"{url}/alice/dev/+simple/", headers=headers, timeout=60).status


def other_loopback() -> str:
    """A client address that is not the servers' own: 127.0.0.2 where it works (Linux)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.2", 0))
    except OSError:
        return CLIENT
    return "127.0.0.2"


def read_index_from(source: str, url: str, headers: dict[str, str]) -> int:
    """:func:`read_index` from the client address ``source``."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=60, source_address=(source, 0))
    try:
        conn.request("GET", "/alice/dev/+simple/", headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def upload(url: str, token: str, name: str, version: str = "1.0") -> int:
    """A minimal ``file_upload`` form post to alice/dev (what twine sends)."""
    body, content_type = upload_form(name, version)
    request = urllib.request.Request(
        f"{url}/alice/dev/", data=body, method="POST", headers={
            **bearer(token), "Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return response.status


def last_use(alice: Devpi, token_id: str) -> tuple[Any, Any, Any]:
    """(last_used, last_used_from, last_used_for) of one token, as listed."""
    info = alice.list_tokens()[token_id]
    return info["last_used"], info["last_used_from"], info["last_used_for"]


def wait_until(check: Callable[[], bool], what: str, timeout: float = BOUND,
               servers: tuple[ServerProcess, ...] = ()) -> float:
    """Poll ``check`` until it holds; the seconds it took."""
    begin = time.monotonic()
    while not check():
        for server in servers:
            assert server.alive(), f"server died:\n{server.log()[-3000:]}"
        if time.monotonic() - begin > timeout:
            logs = "\n".join(server.log()[-2000:] for server in servers)
            raise AssertionError(f"not within {timeout}s: {what}\n{logs}")
        time.sleep(0.1)
    return time.monotonic() - begin


def wait_for_quiet_serial(url: str, quiet: float, timeout: float = BOUND) -> int:
    """The serial once it has not moved for ``quiet`` seconds."""
    begin = time.monotonic()
    serial, since = serial_of(url), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() - begin < timeout, "the serial never stopped moving"
        time.sleep(0.2)
        now = serial_of(url)
        if now != serial:
            serial, since = now, time.monotonic()
    return serial


def kill_9(server: ServerProcess) -> None:
    os.kill(server.pid, signal.SIGKILL)
    assert server.popen.wait(30) == -signal.SIGKILL


def check_log(server: ServerProcess) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    assert not leaked_tokens(log)


#: the start of a log line of devpi-server (a traceback's lines have none)
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def plugin_tracebacks(log: str) -> list[str]:
    """The tracebacks in a server log that pass through devpi_tokens.

    For a replica whose primary is stopped on purpose: devpi's replication
    thread may log one for a changelog stream cut off mid-answer.
    """
    blocks: list[list[str]] = []
    inside = False
    for line in log.splitlines():
        if line.startswith("Traceback"):
            blocks.append([])
            inside = True
        elif LOG_LINE.match(line):
            inside = False
        if inside:
            blocks[-1].append(line)
    return ["\n".join(block) for block in blocks if any("devpi_tokens" in x for x in block)]


# ---------------------------------------------------------------------------
# clean stops write what is in memory

@pytest.mark.parametrize(("signum", "auth"), [
    pytest.param(signal.SIGTERM, bearer, id="SIGTERM-bearer"),
    pytest.param(signal.SIGINT, basic_token, id="SIGINT-basic-__token__"),
])
def test_clean_stop_writes_pending_uses(tmp_path, signum, auth):
    serverdir = tmp_path / "server"
    server = start(serverdir, LONG)
    try:
        alice = setup_alice(server)
        used_id, used = create_token(alice, "used")
        unused_id, _ = create_token(alice, "unused")
        before = serial_of(server.url)
        began = int(time.time())
        assert read_index(server.url, auth(used)) == 200
        ended = int(time.time())
        # listed at once (from memory) ...
        assert last_use(alice, used_id)[1:] == (CLIENT, READ)
        # ... but not written: the use made no serial (the counterfactual: a
        # kill now would lose it, see test_kill_9_loses_at_most_the_last_interval)
        time.sleep(1)
        assert serial_of(server.url) == before
        os.kill(server.pid, signum)
        returncode = server.popen.wait(30)
    finally:
        server.stop()
    if signum == signal.SIGTERM:
        # a clean stop first (the log line below), then the end SIGTERM
        # always meant: the exit status systemd and supervisors expect
        assert returncode == -signal.SIGTERM, returncode
    else:
        # devpi-server's own Ctrl-C stop (in devpi-server 6.20 it exits 1
        # after printing its main's return value)
        assert returncode in (0, 1), returncode
    check_log(server)
    assert "recorded the last 1 token use(s) at shutdown" in server.log()

    server = start(serverdir, LONG)
    try:
        alice = Devpi(server.url, "alice", PASSWORD)
        at, client, purpose = last_use(alice, used_id)
        assert began <= at <= ended
        assert (client, purpose) == (CLIENT, READ)
        assert last_use(alice, unused_id) == (None, None, None)
        # the stop wrote it: one serial, and nothing pending after the restart
        assert serial_of(server.url) == before + 1
    finally:
        server.stop()
    check_log(server)


# ---------------------------------------------------------------------------
# a crash loses at most the last interval

def test_kill_9_loses_at_most_the_last_interval(tmp_path):
    serverdir = tmp_path / "server"
    # 1. every second: the use is written, then the server is killed
    server = start(serverdir, 1)
    try:
        alice = setup_alice(server)
        written_id, written = create_token(alice, "written")
        lost_id, lost = create_token(alice, "lost")
        before = serial_of(server.url)
        began = int(time.time())
        assert read_index(server.url, bearer(written)) == 200
        wait_until(lambda: serial_of(server.url) > before, "the interval's write",
                   servers=(server,))
        # one write for the use, and no more (nothing else changed)
        assert wait_for_quiet_serial(server.url, quiet=3) == before + 1
    finally:
        kill_9(server)

    # 2. after the crash the written use is there; now a use within a long
    # interval, listed from memory, then the server is killed again
    server = start(serverdir, LONG)
    try:
        alice = Devpi(server.url, "alice", PASSWORD)
        at, client, purpose = last_use(alice, written_id)
        assert at >= began
        assert (client, purpose) == (CLIENT, READ)
        assert last_use(alice, lost_id) == (None, None, None)
        assert read_index(server.url, bearer(lost)) == 200
        assert last_use(alice, lost_id)[1:] == (CLIENT, READ)
        assert serial_of(server.url) == before + 1
    finally:
        kill_9(server)

    # 3. that use was only in memory: lost, and the written one is unchanged
    server = start(serverdir, LONG)
    try:
        alice = Devpi(server.url, "alice", PASSWORD)
        assert last_use(alice, lost_id) == (None, None, None)
        assert last_use(alice, written_id) == (at, CLIENT, READ)
    finally:
        server.stop()
    check_log(server)


# ---------------------------------------------------------------------------
# many busy tokens, few writes

BUSY_TOKENS = 600
BUSY_THREADS = 4
BUSY_INTERVAL = 2
#: seconds each thread rests between requests: the busy period spans several
#: intervals (about 5 s here), so a writer faster than the interval would show
BUSY_PAUSE = 0.03


def test_many_busy_tokens_cost_one_write_per_interval(tmp_path):
    serverdir = tmp_path / "server"
    server = start(serverdir, BUSY_INTERVAL)
    try:
        alice = setup_alice(server)
        with ThreadPoolExecutor(BUSY_THREADS) as pool:
            created = list(pool.map(
                lambda i: create_token(alice, f"busy-{i}"), range(BUSY_TOKENS)))
        tokens = dict(created)
        assert len(tokens) == BUSY_TOKENS
        # token creations are writes too: let the last of them settle
        before = wait_for_quiet_serial(server.url, quiet=BUSY_INTERVAL + 1)

        def use(token: str) -> int:
            status = read_index(server.url, bearer(token))
            time.sleep(BUSY_PAUSE)
            return status

        began = time.monotonic()
        with ThreadPoolExecutor(BUSY_THREADS) as pool:
            statuses = list(pool.map(use, tokens.values()))
        during = serial_of(server.url) - before
        duration = time.monotonic() - began
        assert statuses == [200] * BUSY_TOKENS
        assert duration < 120, "the busy period took too long to mean anything"
        # at most one write per interval (plus one cut by the window's ends),
        # never one per request
        most = math.ceil(duration / BUSY_INTERVAL) + 1
        assert during <= most, (during, duration)
        # what is still pending goes with the next write, and then nothing
        writes = wait_for_quiet_serial(server.url, quiet=2 * BUSY_INTERVAL + 1) - before
        assert 1 <= writes <= most + 1, (writes, duration)
        assert writes * 10 < BUSY_TOKENS
        print(f"\n{BUSY_TOKENS} tokens used in {duration:.1f}s: {writes} usage write(s)")
    finally:
        kill_9(server)

    # written, not just remembered: after a crash every use is listed
    server = start(serverdir, LONG)
    try:
        alice = Devpi(server.url, "alice", PASSWORD)
        listing = alice.list_tokens()
        assert set(listing) == set(tokens)
        unused = [tid for tid, info in listing.items() if info["last_used"] is None]
        assert not unused, f"{len(unused)} of {BUSY_TOKENS} uses were not stored"
        assert {(info["last_used_from"], info["last_used_for"])
                for info in listing.values()} == {(CLIENT, READ)}
    finally:
        server.stop()
    check_log(server)


# ---------------------------------------------------------------------------
# replicas report their uses to the primary

INTERVAL = 1


def start_cluster(base: Path) -> tuple[ServerProcess, ServerProcess, Devpi]:
    """A primary (alice, alice/dev) and a replica sharing a secret, both every second."""
    secret = write_secret(base / "shared.secret")
    primary = start(base / "primary", INTERVAL, "--role", "primary", secretfile=secret)
    try:
        alice = setup_alice(primary)
        # a replica replicates over HTTP: no --offline-mode
        replica = start(
            base / "replica", INTERVAL, "--primary-url", primary.url, secretfile=secret,
            offline=False, init_args=["--role", "replica", "--primary-url", primary.url])
    except BaseException:
        primary.stop()
        raise
    return primary, replica, alice


def caught_up(primary: ServerProcess, replica: ServerProcess) -> Callable[[], bool]:
    return lambda: serial_of(replica.url) >= serial_of(primary.url)


def is_used(alice: Devpi, token_id: str) -> Callable[[], bool]:
    return lambda: last_use(alice, token_id)[0] is not None


def restart_primary(primary: ServerProcess) -> ServerProcess:
    # same port: the replica knows its primary by URL
    return start(primary.serverdir, INTERVAL, "--role", "primary",
                 port=primary.port, secretfile=primary.secretfile)


def test_replica_reports_uses_to_its_primary(tmp_path):
    primary, replica, alice = start_cluster(tmp_path)
    try:
        first_id, first = create_token(alice, "first")
        second_id, second = create_token(alice, "second")
        wait_until(caught_up(primary, replica), "initial replication", servers=(replica,))
        on_replica = Devpi(replica.url, "alice", PASSWORD)
        # the replica talks to the primary from 127.0.0.1: a use listed from
        # another address can only be the replica's account of it
        client = other_loopback()

        began = int(time.time())
        assert read_index_from(client, replica.url, bearer(first)) == 200
        # the request never reached the primary: only the replica's report can tell it
        took = wait_until(is_used(alice, first_id), "the use reported to the primary",
                          servers=(primary, replica))
        assert "GET /alice/dev/+simple/" not in primary.log()
        at, seen_from, purpose = last_use(alice, first_id)
        assert at >= began
        # the client address and the phrase as the replica saw them
        assert (seen_from, purpose) == (client, READ)
        # written by the primary, replicated back to the replica's keyfs
        wait_until(lambda: caught_up(primary, replica)()
                   and last_use(on_replica, first_id) == (at, client, READ),
                   "the use listed on the replica", servers=(primary, replica))
        assert last_use(alice, second_id) == (None, None, None)
        print(f"\nreplica use listed on the primary after {took:.1f}s")

        # the primary is down: the replica serves, keeps the use, retries
        primary.stop()
        assert read_index_from(client, replica.url, bearer(second)) == 200
        kept_at, seen_from, purpose = last_use(on_replica, second_id)
        assert (seen_from, purpose) == (client, READ)
        time.sleep(3 * INTERVAL)  # several failed reports
        assert last_use(on_replica, second_id) == (kept_at, client, READ)
        assert replica.alive()

        primary = restart_primary(primary)
        alice = Devpi(primary.url, "alice", PASSWORD)
        wait_until(is_used(alice, second_id), "the kept use delivered after the restart",
                   servers=(primary, replica))
        assert last_use(alice, second_id) == (kept_at, client, READ)
        assert last_use(alice, first_id) == (at, client, READ)
    finally:
        replica.stop()
        primary.stop()
    # SIGTERM stopped the replica cleanly too, then ended it as SIGTERM does
    assert replica.popen.returncode == -signal.SIGTERM, replica.popen.returncode
    assert not plugin_tracebacks(replica.log())


def test_primary_takes_a_replica_report_once(tmp_path):
    primary, replica, alice = start_cluster(tmp_path)
    try:
        token_id, token = create_token(alice, "once")
        wait_until(caught_up(primary, replica), "initial replication", servers=(replica,))
        assert read_index(replica.url, bearer(token)) == 200
        wait_until(is_used(alice, token_id), "the use reported to the primary",
                   servers=(primary, replica))
        wait_until(caught_up(primary, replica), "the write replicated", servers=(replica,))
        # taken: the replica has nothing more to send
        mark = len(primary.log())
        time.sleep(3 * INTERVAL + 1)
        assert "POST /_/tokens/usage" not in primary.log()[mark:]
    finally:
        replica.stop()
        primary.stop()
    assert "Traceback" not in primary.log()
    assert "recording token usage failed" not in replica.log()


# ---------------------------------------------------------------------------
# the devpi client

def used_line(output: str, token_id: str) -> str:
    """The ``used`` line of one token in ``devpi token-list``'s output."""
    lines = output.splitlines()
    (title,) = [i for i, line in enumerate(lines) if line.startswith(token_id)]
    for line in lines[title + 1:]:
        if not line.startswith("    "):
            break
        if line.startswith("    used "):
            return line
    raise AssertionError(f"no used line for {token_id}:\n{output}")


def test_devpi_token_list_shows_the_last_use(tmp_path):
    server = start(tmp_path / "server", LONG)
    try:
        setup_alice(server)
        client = DevpiClient(tmp_path / "client")
        client.run("use", server.url + "/alice/dev")
        client.run("login", "alice", "--password", PASSWORD)
        token = client.run("token-create", "-d", "ci").stdout.strip()
        token_id = Token.load(token).token_id
        other = client.run("token-create", "-d", "idle").stdout.strip()
        other_id = Token.load(other).token_id

        output = client.run("token-list").stdout
        assert used_line(output, token_id) == "    used     never"
        assert upload(server.url, token, "pkg") == 200

        output = client.run("token-list").stdout
        line = used_line(output, token_id)
        assert line.startswith("    used     ")
        assert line.endswith(f" from {CLIENT}: upload pkg to alice/dev"), line
        assert used_line(output, other_id) == "    used     never"
    finally:
        server.stop()
    check_log(server)


# ---------------------------------------------------------------------------
# a replica's uses survive a clean stop while its primary is down

def start_replica(base: Path, primary: ServerProcess, interval: int) -> ServerProcess:
    """(Re)start the replica of :func:`start_cluster` on its serverdir and secret."""
    return start(
        base / "replica", interval, "--primary-url", primary.url,
        secretfile=base / "shared.secret", offline=False,
        init_args=["--role", "replica", "--primary-url", primary.url])


#: what ``ServerProcess.stop`` waits before it kills
STOP_TIMEOUT = 15


def test_replica_saves_unsent_uses_at_a_clean_stop(tmp_path):
    secret = write_secret(tmp_path / "shared.secret")
    primary = start(tmp_path / "primary", INTERVAL, "--role", "primary", secretfile=secret)
    replica = None
    try:
        alice = setup_alice(primary)
        # only a stop sends the replica's uses: nothing is sent before the primary goes
        replica = start_replica(tmp_path, primary, LONG)
        token_id, token = create_token(alice, "kept")
        wait_until(caught_up(primary, replica), "the token replicated", servers=(replica,))
        on_replica = Devpi(replica.url, "alice", PASSWORD)
        client = other_loopback()

        primary.stop()
        began = int(time.time())
        assert read_index_from(client, replica.url, bearer(token)) == 200
        ended = int(time.time())
        at, seen_from, purpose = last_use(on_replica, token_id)
        assert began <= at <= ended
        assert (seen_from, purpose) == (client, READ)

        # a clean stop: the report fails (no primary), the use goes to a file
        stopped = time.monotonic()
        os.kill(replica.pid, signal.SIGTERM)
        returncode = replica.popen.wait(STOP_TIMEOUT)
        took = time.monotonic() - stopped
        assert returncode == -signal.SIGTERM, returncode
        saved = replica.serverdir / f".devpi-tokens-unwritten-uses.{replica.pid}.json"
        assert saved.exists(), replica.log()[-3000:]
        assert saved.stat().st_mode & 0o777 == 0o600, oct(saved.stat().st_mode)
        text = saved.read_text()
        assert token not in text
        assert token[-24:] not in text
        assert json.loads(text) == [["alice", token_id, at, client, READ]]
        assert not list(replica.serverdir.glob(".devpi-tokens-unwritten-uses*.tmp"))
        assert "1 token use(s) could not be recorded at shutdown" in replica.log()
        assert not plugin_tracebacks(replica.log())
        print(f"\nreplica stopped in {took:.1f}s with its primary down")

        # the primary never saw the use ...
        primary = restart_primary(primary)
        alice = Devpi(primary.url, "alice", PASSWORD)
        assert last_use(alice, token_id) == (None, None, None)
        # ... until the replica, started again, takes up the file and sends it
        replica = start_replica(tmp_path, primary, INTERVAL)
        wait_until(lambda: not saved.exists(), "the saved uses taken up",
                   servers=(primary, replica))
        took = wait_until(is_used(alice, token_id), "the saved use delivered",
                          servers=(primary, replica))
        assert last_use(alice, token_id) == (at, client, READ)
        on_replica = Devpi(replica.url, "alice", PASSWORD)
        wait_until(lambda: last_use(on_replica, token_id) == (at, client, READ),
                   "the use replicated back", servers=(primary, replica))
        print(f"saved use listed on the primary {took:.1f}s after the replica's restart")
        # taken once: not saved again by the restarted replica
        assert not saved.exists()
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()
    assert replica.popen.returncode == -signal.SIGTERM, replica.popen.returncode
    assert not saved.exists()
    assert not plugin_tracebacks(replica.log())
    check_log(primary)


# ---------------------------------------------------------------------------
# a write the replica relays is the primary's to record

def upload_status(url: str, token: str, name: str) -> int:
    """:func:`upload`, with an HTTP error as its status."""
    try:
        return upload(url, token, name)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def upload_from(source: str, url: str, token: str, name: str) -> int:
    """:func:`upload`'s form post, from the client address ``source``."""
    body, content_type = upload_form(name)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", "/alice/dev/", body=body, headers={
            **bearer(token), "Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_a_relayed_upload_is_recorded_by_the_primary(tmp_path):
    primary, replica, alice = start_cluster(tmp_path)
    try:
        token_id, token = create_token(alice, "relay")
        wait_until(caught_up(primary, replica), "initial replication", servers=(replica,))
        on_replica = Devpi(replica.url, "alice", PASSWORD)
        # the replica's account would name this client; the primary's names
        # the replica (127.0.0.1), the client it saw (README: "usually the
        # replica's")
        client = other_loopback()
        mark = len(primary.log())
        began = int(time.time())
        assert upload_from(client, replica.url, token, "relayed") == 200
        ended = int(time.time())
        expected_for = "upload relayed to alice/dev"
        # the primary answered the relayed request: it read the body
        assert "POST /alice/dev/" in primary.log()[mark:]
        wait_until(is_used(alice, token_id), "the relayed upload listed on the primary",
                   servers=(primary, replica))
        at, seen_from, purpose = last_use(alice, token_id)
        assert began <= at <= ended
        assert (seen_from, purpose) == (CLIENT, expected_for), (seen_from, purpose)
        # the replica recorded nothing of its own ("post to alice/dev"): it
        # reports nothing, and nothing replaces the primary's account
        time.sleep(3 * INTERVAL + 1)
        assert "POST /_/tokens/usage" not in primary.log()[mark:]
        assert last_use(alice, token_id) == (at, CLIENT, expected_for)
        wait_until(lambda: caught_up(primary, replica)()
                   and last_use(on_replica, token_id) == (at, CLIENT, expected_for),
                   "the replica's listing agrees", servers=(primary, replica))
    finally:
        replica.stop()
        primary.stop()
    assert replica.popen.returncode == -signal.SIGTERM, replica.popen.returncode
    assert "relaying: POST" in replica.log()
    assert not plugin_tracebacks(replica.log())
    check_log(primary)


# ---------------------------------------------------------------------------
# SIGTERM while devpi-server starts

#: (id, log line to wait for or None, seconds after it, devpi's own argon2 options)
#: With devpi's default argon2 options each key derivation (devpi's own, then
#: devpi-tokens' warm-up) takes seconds: a window no delay can miss.  "running
#: with role" is the first line of create_app, which runs after
#: devpiserver_cmdline_run installed the plugin's SIGTERM handler.
STARTING = [
    pytest.param(None, 0.2, False, id="importing"),
    pytest.param("running with role", 0.0, False, id="devpi-key-derivation"),
    pytest.param("Using secret file", 1.0, False, id="devpi-key-derivation-later"),
    pytest.param("Found plugin devpi-tokens", 0.3, False, id="devpi-tokens-warm-up"),
    # low argon2 options: the window between the handler and the thread pool
    # is tens of milliseconds; these may land in it or after it (a clean
    # stop), either must end by SIGTERM without a traceback
    pytest.param("running with role", 0.0, True, id="fast-start-0ms"),
    pytest.param("running with role", 0.02, True, id="fast-start-20ms"),
    pytest.param("running with role", 0.06, True, id="fast-start-60ms"),
]


@pytest.mark.parametrize(("line", "delay", "fast"), STARTING)
def test_sigterm_while_starting_ends_the_process_as_before(tmp_path, line, delay, fast):
    serverdir = tmp_path / "server"
    init_server(serverdir)
    secret = write_secret(tmp_path / "server.secret")
    port = free_port()
    args = [bin_path("devpi-server"), "--serverdir", str(serverdir),
            "--host", "127.0.0.1", "--port", str(port), "--secretfile", str(secret),
            "--offline-mode", "--tokens-usage-interval", "60", *(ARGON2 if fast else ())]
    logfile = tmp_path / "server.log"
    with open(logfile, "wb") as out:
        popen = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        begin = time.monotonic()
        if line is not None:
            while line not in logfile.read_text(errors="replace"):
                assert popen.poll() is None, logfile.read_text(errors="replace")
                assert time.monotonic() - begin < 180, f"no {line!r} line"
                time.sleep(0.005)
        time.sleep(delay)
        at_kill = logfile.read_text(errors="replace")
        os.kill(popen.pid, signal.SIGTERM)
        sent = time.monotonic()
        # the plugin's handler runs when the main thread next runs Python
        # code: after an argon2 derivation in progress (seconds with devpi's
        # defaults on a loaded machine)
        returncode = popen.wait(180)
        took = time.monotonic() - sent
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(30)
    log = logfile.read_text(errors="replace")
    last = at_kill.strip().splitlines()[-1:] or ["(nothing logged yet)"]
    print(f"\nSIGTERM after {sent - begin:.2f}s, at {last[0][:100]!r}: ended after "
          f"{took:.2f}s, serving: {'Serving on' in log}")
    assert returncode == -signal.SIGTERM, (returncode, log[-3000:])
    assert "Traceback" not in log, log[-4000:]
    if not fast:
        # the window was hit: it never served, and no clean stop ran
        assert "Serving on" not in log, log[-3000:]
        assert "at shutdown" not in log


# ---------------------------------------------------------------------------
# only answered successes are uses

def test_redirects_and_refusals_are_not_uses(tmp_path):
    serverdir = tmp_path / "server"
    server = start(serverdir, LONG)
    try:
        alice = setup_alice(server)
        tokens = {}
        for name, body in [
            ("redirect", {}), ("missing", {}), ("forbidden", {"projects": ["pkg"]}),
            ("expired", {"expires": int(time.time()) + 2}), ("control", {}),
        ]:
            answer = alice.create_token(description=name, **body)
            assert answer.status == 201, answer
            tokens[name] = (answer.result["id"], answer.result["token"])
        expires = int(time.time()) + 2

        # devpi redirects a project name to its normalized form (not followed here)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            conn.request("GET", "/alice/dev/+simple/Foo_Bar/",
                         headers=bearer(tokens["redirect"][1]))
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        assert 300 <= response.status < 400, response.status
        assert response.getheader("Location", "").endswith("/alice/dev/+simple/foo-bar/")
        # devpi: no such project
        answer = call(f"{server.url}/alice/dev/+simple/nosuchproject/",
                      headers=bearer(tokens["missing"][1]))
        assert answer.status == 404, answer
        # the token's restriction: 403
        assert upload_status(server.url, tokens["forbidden"][1], "other") == 403
        # a token past its expiry: 401
        while time.time() < expires + 1:
            time.sleep(0.2)
        assert read_index(server.url, bearer(tokens["expired"][1])) == 401
        # the counterfactual: a success is a use
        began = int(time.time())
        assert read_index(server.url, bearer(tokens["control"][1])) == 200
        ended = int(time.time())

        def listed() -> dict[str, tuple[Any, Any, Any]]:
            return {name: last_use(alice, token_id) for name, (token_id, _) in tokens.items()}

        # from memory ...
        now = listed()
        at = now["control"][0]
        assert began <= at <= ended
        assert now == {
            "redirect": (None, None, None), "missing": (None, None, None),
            "forbidden": (None, None, None), "expired": (None, None, None),
            "control": (at, CLIENT, READ)}
        os.kill(server.pid, signal.SIGTERM)
        assert server.popen.wait(STOP_TIMEOUT) == -signal.SIGTERM
    finally:
        server.stop()
    check_log(server)
    # one use pending at the stop: the refusals and the redirect never were
    assert "recorded the last 1 token use(s) at shutdown" in server.log()

    # ... and from storage
    server = start(serverdir, LONG)
    try:
        alice = Devpi(server.url, "alice", PASSWORD)
        assert listed() == {
            "redirect": (None, None, None), "missing": (None, None, None),
            "forbidden": (None, None, None), "expired": (None, None, None),
            "control": (at, CLIENT, READ)}
    finally:
        server.stop()
    check_log(server)


# ---------------------------------------------------------------------------
# a second signal while stopping does not cut the last write short

@pytest.mark.parametrize("delay", [0.02, 0.2])
def test_sigterm_after_ctrl_c_lets_the_last_write_finish(tmp_path, delay):
    serverdir = tmp_path / "server"
    server = start(serverdir, LONG)
    try:
        alice = setup_alice(server)
        used_id, used = create_token(alice, "used")
        assert read_index(server.url, bearer(used)) == 200
        os.kill(server.pid, signal.SIGINT)
        time.sleep(delay)
        if server.popen.poll() is None:
            # what a supervisor (or quickstart's stop) sends next
            os.kill(server.pid, signal.SIGTERM)
        returncode = server.popen.wait(30)
    finally:
        server.stop()
    assert returncode in (0, 1, -signal.SIGTERM), returncode
    check_log(server)
    server = start(serverdir, LONG)
    try:
        alice = Devpi(server.url, "alice", PASSWORD)
        assert last_use(alice, used_id)[1:] == (CLIENT, READ)
    finally:
        server.stop()
