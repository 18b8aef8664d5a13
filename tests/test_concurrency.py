"""Many requests at once against one real devpi-server process (50 threads).

- 50 parallel creations for one user all succeed, are all listed, all work;
- parallel creations, deletions (some of the same id twice) and purges
  leave the store exactly as the answers say;
- tokens used while others are created and deleted are valid (200) or
  revoked (401), never an error, and once revoked stay revoked;
- hostile headers that only a real HTTP server sees (huge, odd user names).

Every answer is counted (see ``hostile_http.STATS``); the module fails on
any 5xx and prints the counts at the end.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devpi_process import start_server
from devpi_tokens.tokens import MAX_TOKEN_LENGTH
from devpi_tokens.tokens import Token
from hostile_http import STATS
from hostile_http import Devpi
from hostile_http import bearer
from hostile_http import count
from hostile_http import create_user
from hostile_http import leaked_tokens
from hostile_http import raw_request
from hostile_http import token_auth


pytestmark = pytest.mark.e2e

THREADS = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("concurrency") / "server")
    try:
        yield server
    finally:
        server.stop()
        summary = dict(sorted(STATS.items()))
        print("\nconcurrency counts:", json.dumps(summary, indent=1))
        path = os.environ.get("DEVPI_TOKENS_CONCURRENCY_STATS")
        if path:
            with open(path, "w") as f:
                json.dump(summary, f, indent=1)
        assert STATS["5xx"] == 0, summary
        log = server.log()
        assert "Traceback" not in log
        assert not leaked_tokens(log)


def new_user(server, name: str) -> Devpi:
    create_user(server.url, name, "secret-" + name)
    return Devpi(server.url, name, "secret-" + name)


def parallel(func, items, threads: int = THREADS) -> list:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(func, items))


def test_50_parallel_creations(server):
    alice = new_user(server, "alice")
    answers = parallel(lambda i: alice.create_token(description=f"ci-{i}"), range(THREADS))
    count("concurrent:create", len(answers))
    assert [a.status for a in answers] == [201] * THREADS, [a for a in answers if a.status != 201]
    tokens = {a.result["id"]: a.result["token"] for a in answers}
    assert len(tokens) == THREADS  # distinct ids

    listed = alice.list_tokens()
    assert set(listed) == set(tokens)
    assert sorted(info["description"] for info in listed.values()) == sorted(
        f"ci-{i}" for i in range(THREADS))

    checks = parallel(lambda token: token_auth(server.url, token), list(tokens.values()))
    count("concurrent:auth", len(checks))
    for check in checks:
        assert check.status == 200, check
        assert check.result["authstatus"][:2] == ["ok", "alice"]


def test_parallel_create_delete_purge_stay_consistent(server):
    bob = new_user(server, "bob")
    first = parallel(lambda i: bob.create_token(description=f"old-{i}"), range(30))
    old_ids = [a.result["id"] for a in first]
    doomed = old_ids[:20]
    # 20 deletions, 10 of them sent twice at the same time, 25 creations, 5 purges
    jobs = (
        [("delete", tid) for tid in doomed]
        + [("delete", tid) for tid in doomed[:10]]
        + [("create", i) for i in range(25)]
        + [("purge", None)] * 5)
    random.Random(7).shuffle(jobs)

    def run(job):
        kind, arg = job
        if kind == "delete":
            return job, bob.delete_token(arg)
        if kind == "create":
            return job, bob.create_token(description=f"new-{arg}")
        return job, bob.purge()

    results = parallel(run, jobs)
    count("concurrent:create-delete-purge", len(jobs))
    created = set()
    deleted: dict[str, list[int]] = {}
    for (kind, arg), answer in results:
        assert answer.status < 500, answer
        if kind == "create":
            assert answer.status == 201, answer
            created.add(answer.result["id"])
        elif kind == "delete":
            deleted.setdefault(arg, []).append(answer.status)
        else:
            assert answer.status == 200, answer
            assert answer.result["count"] == 0  # nothing had expired
    # every id deleted exactly once; the second try found nothing
    for tid, statuses in deleted.items():
        assert sorted(statuses) == ([200, 404] if tid in doomed[:10] else [200]), tid
    assert set(bob.list_tokens()) == (set(old_ids) | created) - set(doomed)


def test_tokens_in_use_during_creation_and_deletion(server):
    carol = new_user(server, "carol")
    made = parallel(lambda i: carol.create_token(description=f"t-{i}"), range(30))
    tokens = {a.result["id"]: a.result["token"] for a in made}
    ids = list(tokens)
    doomed, kept = set(ids[:15]), set(ids[15:])
    fresh: dict[str, str] = {}
    lock = threading.Lock()
    done = threading.Event()
    seen: list[tuple[str, int, str]] = []

    def checker(seed: int) -> list[tuple[str, int]]:
        rng = random.Random(seed)
        history = []
        while not done.is_set() or len(history) < 20:
            with lock:
                pool = {**tokens, **fresh}
            token_id = rng.choice(sorted(pool))
            answer = token_auth(server.url, pool[token_id])
            history.append((token_id, answer.status))
            seen.append((token_id, answer.status, answer.message))
        return history

    def changer(job):
        kind, arg = job
        if kind == "delete":
            answer = carol.delete_token(arg)
            assert answer.status == 200, answer
        else:
            answer = carol.create_token(description=f"fresh-{arg}")
            assert answer.status == 201, answer
            with lock:
                fresh[answer.result["id"]] = answer.result["token"]

    jobs = [("delete", tid) for tid in doomed] + [("create", i) for i in range(15)]
    random.Random(3).shuffle(jobs)
    with ThreadPoolExecutor(max_workers=40) as pool:
        checkers = [pool.submit(checker, seed) for seed in range(10)]
        time.sleep(0.05)  # let the checkers start before anything changes
        changers = [pool.submit(changer, job) for job in jobs]
        for future in changers:
            future.result()
        done.set()
        histories = [future.result() for future in checkers]
    count("concurrent:changes", len(jobs))
    count("concurrent:auth-during-changes", len(seen))

    for token_id, status, message in seen:
        assert status in (200, 401), (token_id, status, message)
        if status == 401:
            assert token_id in doomed, (token_id, message)
            assert "was deleted or never existed" in message, message
    # seen by one thread in order: valid, valid, ..., revoked, revoked: never back
    for history in histories:
        revoked = set()
        for token_id, status in history:
            if status == 401:
                revoked.add(token_id)
            else:
                assert token_id not in revoked, token_id
    # and afterwards, from outside
    after = parallel(lambda tid: (tid, token_auth(server.url, {**tokens, **fresh}[tid]).status),
                     sorted({*tokens, *fresh}))
    assert {tid for tid, status in after if status == 401} == doomed
    assert {tid for tid, status in after if status == 200} == kept | set(fresh)


def test_hostile_headers_on_a_real_server(server):
    host, port = "127.0.0.1", server.port
    token = Token.load(new_user(server, "dave").create_token().result["token"]).raw
    # over our cap but well within what the HTTP server takes: our reason
    status, body = raw_request(host, port, "GET", "/+api", {
        **bearer((token + "A" * MAX_TOKEN_LENGTH)[:MAX_TOKEN_LENGTH + 1]),
        "Accept": "application/json"})
    assert status == 401
    assert f"longer than {MAX_TOKEN_LENGTH} characters" in body
    # far over anything sensible: the HTTP server itself refuses, cleanly
    for size in (300_000, 2 * 1024 * 1024):
        try:
            status, _ = raw_request(host, port, "GET", "/+api", bearer("devpi-" + "A" * size))
        except (ConnectionError, OSError):
            status = None  # the server may close the connection instead; both are fine
        count("oversize-headers")
        assert status is None or 400 <= status < 500, status
    # a user name devpi-server 6 would answer with a 500
    status, body = raw_request(host, port, "GET", "/+api", {
        "Authorization": "Basic YS9iOng=", "Accept": "application/json"})  # "a/b:x"
    assert status == 401, body
    # the server still works
    assert token_auth(server.url, token).status == 200
