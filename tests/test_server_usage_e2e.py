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
- the real ``devpi token-list`` prints the ``used`` line.

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
import math
import os
import re
import signal
import socket
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from devpi_process import DevpiClient
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
    boundary = uuid.uuid4().hex
    fields = [(":action", "file_upload"), ("name", name), ("version", version)]
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{name}-{version}.tar.gz"\r\nContent-Type: application/octet-stream\r\n\r\n'
        .encode() + b"not really an sdist\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        f"{url}/alice/dev/", data=b"".join(parts), method="POST", headers={
            **bearer(token), "Content-Type": f"multipart/form-data; boundary={boundary}"})
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
