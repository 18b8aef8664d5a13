#!/usr/bin/env python
"""How much does a token cost per request?  (issue 6)

Run from the repository root with the project's venv::

    python benchmarks/bench_verify.py            # full run, about 10 minutes on 2 cores
    python benchmarks/bench_verify.py --quick    # smaller samples, about 3 minutes
    tox -e bench                                 # the same as the full run

Options: ``--parts 1,2,3`` picks parts, ``--json PATH`` names the JSON file
(default ``benchmarks/results/bench-<time>.json``; that folder is ignored by
git), ``--clients N`` sets the HTTP client threads of part 3 (default 2).

Three parts, all in one process except the server of part 3:

1. micro: load (parse) + verify one token string of 1, 5 and 20 caveats, in
   process.  *cold* is the first use of a token id: every sample is a token
   never seen before, so it pays the key derivation from the salt and any
   cache miss; *warm* repeats one token.  Times are CPU time of the thread
   (median and p99 in microseconds); memory is the tracemalloc peak of one
   verification.  Baselines measured in the same process: pymacaroons alone
   (deserialize + ``Verifier.verify``) and the bare HMAC-SHA256 chain.
2. scaling: verification through the plugin's server code path against a
   real devpi-server keyfs (``XOM`` built as devpi-server's own test fixtures
   do), with 1, 100, 1,000 and 10,000 tokens stored for the user, and 1, 100
   and 1,000 distinct tokens used round-robin.
3. e2e: requests per second against a real devpi-server process with the
   plugin on 127.0.0.1, on ``GET /+api`` and on an index page, with (a) no
   auth, (b) password basic auth, (c) one token, (d) 1,000 tokens round-robin;
   each scenario as a ratio to (a) of the same round.

Targets (issue 6): cold 5-caveat verification under 200 us CPU; (d)/(a) at
least 0.8; 10,000 stored tokens within 1.5x of 1; no verification allocating
more than 1 MiB.  The table marks each target ok or MISSED.

This is not part of the test suite; no token, key or salt is ever printed.
"""
from __future__ import annotations

import argparse
import binascii
import gc
import hashlib
import hmac
import json
import os
import platform
import secrets
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # devpi_process: real server processes

from pymacaroons import Macaroon  # noqa: E402
from pymacaroons import Verifier  # noqa: E402

from devpi_tokens import restrictions as r  # noqa: E402
from devpi_tokens.tokens import PREFIX  # noqa: E402
from devpi_tokens.tokens import Token  # noqa: E402
from devpi_tokens.tokens import new_token_id  # noqa: E402

USER = "alice"
INDEX = f"{USER}/dev"
PROJECT = "pkg-a"
TARGET_COLD_US = 200.0
TARGET_E2E_RATIO = 0.8
TARGET_SCALING_RATIO = 1.5
TARGET_ALLOC_BYTES = 1024 * 1024


# --------------------------------------------------------------------------
# measuring

@dataclass
class Sizes:
    """How many samples each part takes; --quick shrinks them."""

    cold: int = 2000          # distinct tokens per cold series
    warm: int = 5000          # repetitions per warm series
    mem: int = 200            # tracemalloc samples per series
    scale_samples: int = 2000  # verifications per scaling cell
    e2e_requests: int = 1500  # requests per e2e cell and round (bounded by time too)
    e2e_seconds: float = 12.0
    e2e_rounds: int = 3

    @classmethod
    def quick(cls) -> Sizes:
        return cls(cold=400, warm=1500, mem=50, scale_samples=500,
                   e2e_requests=400, e2e_seconds=5.0, e2e_rounds=2)


def _timer_overhead_ns() -> int:
    """CPU time that reading the clock twice costs; subtracted from samples."""
    samples = []
    clock = time.thread_time_ns
    for _ in range(2000):
        t0 = clock()
        samples.append(clock() - t0)
    return int(statistics.median(samples))


_OVERHEAD_NS = 0


def time_each(op: Callable[[Any], Any], items: list[Any]) -> list[int]:
    """CPU nanoseconds of ``op(item)`` for each item, clock overhead removed."""
    clock = time.thread_time_ns
    out = []
    gc.collect()
    for item in items:
        t0 = clock()
        op(item)
        out.append(max(clock() - t0 - _OVERHEAD_NS, 0))
    return out


def stats_us(samples_ns: list[int]) -> dict[str, float]:
    """Median, p99 and mean in microseconds (p99 by nearest rank)."""
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return {
        "median_us": round(statistics.median(ordered) / 1000, 2),
        "p99_us": round(p99 / 1000, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
        "n": len(ordered),
    }


def peak_alloc(op: Callable[[Any], Any], items: list[Any]) -> dict[str, int]:
    """Peak bytes tracemalloc sees above the baseline during each ``op(item)``."""
    peaks = []
    tracemalloc.start()
    try:
        for item in items:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            op(item)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    return {"peak_max_bytes": max(peaks), "peak_median_bytes": int(statistics.median(peaks))}


# --------------------------------------------------------------------------
# the key derivation the server uses (from salt), or a stand-in until it lands

def server_kdf() -> tuple[Callable[[bytes, bytes], bytes], str]:
    """The server's key derivation ``(secret, salt) -> key`` and its name."""
    try:
        from devpi_tokens import server_store
        derive = server_store.derive_key
    except (ImportError, AttributeError):
        def derive(secret: bytes, salt: bytes) -> bytes:
            return hmac.new(secret, b"devpi-tokens key\x00" + salt, hashlib.sha256).digest()
        return derive, "stand-in HMAC-SHA256 (server_store.derive_key not found)"
    return derive, "devpi_tokens.server_store.derive_key"


# --------------------------------------------------------------------------
# part 1: micro benchmarks

def caveats(count: int, now: int) -> tuple[r.Restriction, ...]:
    """``count`` restrictions a request of PROJECT on INDEX with pkg_read meets.

    The first is the validity window a new token gets; the rest are what
    successive ``token-derive`` calls add: projects, indexes, permissions,
    narrower windows.
    """
    pool = [
        lambda i: r.ProjectNames((PROJECT, f"other-{i}")),
        lambda i: r.Indexes((INDEX, f"{USER}/other{i}")),
        lambda i: r.Allowed(("pkg_read", "upload")),
        lambda i: r.ValidityWindow(now + 86400 * 300 - i, now - 60 - i),
    ]
    result = [r.ValidityWindow(now + 86400 * 365, now - 3600)]
    for i in range(count - 1):
        result.append(pool[i % len(pool)](i))
    return tuple(result)


def request_context(now: int) -> r.Context:
    return r.Context(user=USER, now=now, permission="pkg_read", indexes=(INDEX,),
                     project=PROJECT)


@dataclass
class Minted:
    raw: str
    token_id: str
    salt: bytes


def mint_many(count: int, ncaveats: int, secret: bytes, derive, now: int) -> list[Minted]:
    restrictions = caveats(ncaveats, now)
    out = []
    for _ in range(count):
        token_id, salt = new_token_id(), secrets.token_bytes(16)
        token = Token.mint(USER, token_id, derive(secret, salt), restrictions)
        out.append(Minted(token.dump(), token_id, salt))
    return out


def hmac_chain_ok(key: bytes, identifier: bytes, caveat_ids: list[bytes], sig_hex: bytes) -> bool:
    """The macaroon signature chain, nothing else (the floor)."""
    sig = hmac.new(b"macaroons-key-generator", key, hashlib.sha256).digest()
    sig = hmac.new(sig, identifier, hashlib.sha256).digest()
    for cid in caveat_ids:
        sig = hmac.new(sig, cid, hashlib.sha256).digest()
    return hmac.compare_digest(binascii.hexlify(sig), sig_hex)


def _accept(_caveat: str) -> bool:
    return True


def part_micro(sizes: Sizes) -> dict[str, Any]:
    derive, kdf_name = server_kdf()
    secret = secrets.token_bytes(48)
    now = int(time.time())
    ctx = request_context(now)
    results: dict[str, Any] = {"kdf": kdf_name, "series": {}}

    def verify(minted: Minted) -> None:
        # what the server does per request, minus the store lookup (part 2)
        token = Token.load(minted.raw)
        result = token.check(derive(secret, minted.salt), ctx)
        if not result:
            raise AssertionError(f"benchmark token refused: {result.reason}")

    for n in (1, 5, 20):
        cold_tokens = mint_many(sizes.cold, n, secret, derive, now)
        verify(cold_tokens[0])  # first use in process (imports, caches): not a sample
        cold = time_each(verify, cold_tokens[1:])
        warm_token = cold_tokens[0]
        warm = time_each(verify, [warm_token] * sizes.warm)
        mem = peak_alloc(verify, mint_many(sizes.mem, n, secret, derive, now))

        # baselines on the same token strings and keys
        pm_items = [(m.raw[len(PREFIX):], derive(secret, m.salt)) for m in cold_tokens[1:]]

        def pymacaroons_alone(item: tuple[str, bytes]) -> None:
            macaroon = Macaroon.deserialize(item[0])
            verifier = Verifier()
            verifier.satisfy_general(_accept)
            if not verifier.verify(macaroon, item[1]):
                raise AssertionError("pymacaroons refused the benchmark token")

        pm = time_each(pymacaroons_alone, pm_items)
        chain_items = []
        for body, key in pm_items:
            m = Macaroon.deserialize(body)
            chain_items.append((key, m.identifier_bytes,
                                [c.caveat_id_bytes for c in m.caveats], m.signature_bytes))

        def bare_chain(item: tuple) -> None:
            if not hmac_chain_ok(*item):
                raise AssertionError("HMAC chain refused the benchmark token")

        chain = time_each(bare_chain, chain_items)
        kdf_only = time_each(lambda m: derive(secret, m.salt), cold_tokens[1:])
        series = {
            "token_chars": len(warm_token.raw),
            "cold": stats_us(cold), "warm": stats_us(warm), "memory": mem,
            "pymacaroons": stats_us(pm), "hmac_chain": stats_us(chain),
            "kdf": stats_us(kdf_only),
        }
        series["cold_vs_pymacaroons"] = _ratio(series["cold"], series["pymacaroons"])
        series["cold_vs_hmac_chain"] = _ratio(series["cold"], series["hmac_chain"])
        results["series"][str(n)] = series
    five = results["series"]["5"]
    results["targets"] = {
        "cold_5_caveats_median_us": _target(five["cold"]["median_us"], TARGET_COLD_US, "<"),
        "max_alloc_bytes": _target(
            max(s["memory"]["peak_max_bytes"] for s in results["series"].values()),
            TARGET_ALLOC_BYTES, "<="),
    }
    return results


def _ratio(a: dict[str, float], b: dict[str, float]) -> float:
    return round(a["median_us"] / b["median_us"], 2) if b["median_us"] else float("nan")


def _target(value: float, limit: float, op: str) -> dict[str, Any]:
    met = value < limit if op == "<" else value <= limit if op == "<=" else value >= limit
    return {"value": value, "limit": limit, "op": op, "met": met}


def print_micro(res: dict[str, Any]) -> None:
    print(f"\n== 1. micro: load + verify one token in process (CPU us; KDF: {res['kdf']})")
    head = (f"{'caveats':>7} {'chars':>6} | {'cold med':>8} {'cold p99':>8} | "
            f"{'warm med':>8} {'warm p99':>8} | {'peak KiB':>8} | {'pymac':>6} {'chain':>6} "
            f"{'kdf':>5} | {'cold/pymac':>10} {'cold/chain':>10}")
    print(head)
    print("-" * len(head))
    for n, s in res["series"].items():
        print(f"{n:>7} {s['token_chars']:>6} | {s['cold']['median_us']:>8} "
              f"{s['cold']['p99_us']:>8} | {s['warm']['median_us']:>8} "
              f"{s['warm']['p99_us']:>8} | {s['memory']['peak_max_bytes'] / 1024:>8.1f} | "
              f"{s['pymacaroons']['median_us']:>6} {s['hmac_chain']['median_us']:>6} "
              f"{s['kdf']['median_us']:>5} | {s['cold_vs_pymacaroons']:>10} "
              f"{s['cold_vs_hmac_chain']:>10}")
    _print_targets(res["targets"])


def _print_targets(targets: dict[str, dict[str, Any]]) -> None:
    for name, t in targets.items():
        state = "ok" if t["met"] else "MISSED"
        print(f"   target {name}: {t['value']} {t['op']} {t['limit']}: {state}")


# --------------------------------------------------------------------------
# driver

PARTS = {"1": ("micro", part_micro, print_micro)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples (~3 minutes)")
    parser.add_argument("--parts", default="1,2,3", help="comma-separated parts to run")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--clients", type=int, default=2, help="HTTP client threads (part 3)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    global _OVERHEAD_NS
    _OVERHEAD_NS = _timer_overhead_ns()
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "quick": args.quick, "sizes": sizes.__dict__,
            "clock_overhead_ns": _OVERHEAD_NS, "loadavg_start": _loadavg(),
        },
    }
    for part in args.parts.split(","):
        name, run, show = PARTS[part.strip()]
        kwargs = {"clients": args.clients} if name == "e2e" else {}
        results[name] = run(sizes, **kwargs)
        show(results[name])
    results["meta"]["loadavg_end"] = _loadavg()
    path = args.json or HERE / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON written to {path}")
    return 0


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
