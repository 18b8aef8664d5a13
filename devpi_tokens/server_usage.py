"""When, from where and for what each token was last used ("last used").

Recording costs no keyfs write per request.  The token tween calls
:func:`record_request` for every token request devpi-server answered with
success (2xx, or 304; a refused, failed or redirected request is not a use);
that keeps the newest use of each token in memory.  A derived token carries
the id of the token it was derived from, so its uses count for that token.

Writing: :class:`UsageRecorder` runs in a thread of devpi-server's pool and,
every ``--tokens-usage-interval`` seconds (default 60), writes what changed
since the last write in ONE keyfs write transaction; when nothing changed no
transaction is opened (keyfs makes no serial for it either).  However many
tokens are busy, that is at most one new serial per interval for replicas to
pull.

Storage: keyfs keys of our own, ``+devpi-tokens/used/<user>/<bucket>``, each
a dict ``{"<token id>": [<epoch>, "<client address>" | null, "<for>"]}``.  A
token's bucket is one of 256, from a hash of its id, so a write rewrites only
the buckets whose tokens were used (about 1/256 of a big user's uses per busy
token), never the user record: keyfs keeps every serial's values, and
replicas copy them.  A listing reads the buckets of the user's tokens.  Uses
of tokens that no longer exist are dropped when their bucket is next written.

Shutdown: devpi-server's thread pool calls :meth:`UsageRecorder.thread_shutdown`
on a clean stop (Ctrl-C), which writes what is pending; what cannot be
written or sent then is saved to a file in the server directory and taken up
at the next start.  devpi-server installs no SIGTERM handler, so SIGTERM
would end the process on the spot; the plugin installs one
(:func:`install_sigterm_handler`) that takes the Ctrl-C path and, once
devpi-server has stopped, ends the process by SIGTERM as before (the exit
status systemd and supervisors expect).  After a crash (SIGKILL, power
loss), at most the last interval is lost.

Replicas cannot write to keyfs: a replica sends its uses to its primary
(``POST /_/tokens/usage``, authenticated as devpi's own replication is, with
a key derived from the shared secret) every interval and at shutdown; the
primary merges them into its own pending uses, writes them with its next
write, and they come back to every replica through replication.  While the
primary cannot be reached the replica keeps them (one entry per token, the
newest use) and tries again each interval.  Writes a replica relays to the
primary are recorded by the primary, which reads their bodies.
"""
from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple
from typing import cast
import atexit
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time

from . import server_usage_file
from .server_log import log

if TYPE_CHECKING:
    from devpi_server.keyfs import KeyFS
    from devpi_server.keyfs_types import PTypedKey
    from devpi_server.keyfs_types import TypedKey
    from devpi_server.main import XOM
    from pyramid.request import Request
    from pyramid.response import Response

    from .server_store import TokenStore
    from .server_target import Target


#: Our keyfs key: the uses of one bucket of one user's tokens.
USAGE_KEY_NAME = "DEVPI_TOKENS_USED"
USAGE_PATH = "+devpi-tokens/used/{user}/{bucket}"

OPTION = "--tokens-usage-interval"
DEFAULT_INTERVAL = 60
MAX_INTERVAL = 86400

#: Where a replica sends its uses (on the primary).
REPORT_PATH = "/_/tokens/usage"
#: Largest report the primary takes, and the size a replica's chunks stay under.
MAX_REPORT_BYTES = 1024 * 1024
REPORT_CHUNK_BYTES = 256 * 1024
#: Seconds a replica waits for its primary to take a report (at shutdown, less:
#: supervisors wait only so long before they kill).
REPORT_TIMEOUT = 20.0
SHUTDOWN_REPORT_TIMEOUT = 5.0

#: Uses that left memory (written, or sent by a replica) stay listed from
#: memory for this many intervals (at least a minute each), until storage
#: (or replication) has them for every reader.
RECENT_KEPT_INTERVALS = 5

#: A stored use further in the future than this is taken as wrong (a clock
#: that jumped): any new use replaces it.
FUTURE_SLACK = 300

#: Longest ``last_used_for`` / ``last_used_from`` kept (client text is in them).
MAX_TEXT = 200
#: Longest token id taken from a report (ours have 10 characters, 1.x's 8).
MAX_TOKEN_ID = 64

#: Response header devpi-server's replica puts on writes it relayed.
RELAYED_HEADER = "X-DEVPI-PROXY"


class Use(NamedTuple):
    """One use of a token: when (epoch seconds), from which client address, for what."""

    at: int
    client: str | None
    purpose: str

    def dump(self) -> list[Any]:
        return [self.at, self.client, self.purpose]

    @classmethod
    def load(cls, value: Any) -> Use | None:
        """A stored or reported use, or None if it is not one."""
        # keyfs hands out read-only sequence views, JSON lists
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            return None
        if len(value) != 3:
            return None
        at, client, purpose = value
        if type(at) is not int or at < 0:
            return None
        if client is not None and not isinstance(client, str):
            return None
        if not isinstance(purpose, str):
            return None
        return cls(at, _bounded(client) if client else None, _bounded(purpose))


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


#: Uses per user, then per token id.
Uses = dict[str, dict[str, Use]]


# ---------------------------------------------------------------------------
# what a request was for

_VERBS = {
    "GET": "read", "HEAD": "read", "DELETE": "delete",
    "PUT": "create or change", "PATCH": "change", "POST": "post to",
}


def describe(method: str, path: str, target: Target) -> str:
    """A short phrase for ``last_used_for``: "upload foo to alice/dev"."""
    project = target.project
    index = target.indexes[0] if target.indexes else None
    action = target.action
    if action == "push":
        where = target.indexes[1] if len(target.indexes) > 1 else "another server"
        return _bounded(f"push {project} from {index} to {where}")
    if action == "file_upload":
        return _bounded(f"upload {project} to {index}")
    if action == "doc_upload":
        return _bounded(f"upload docs of {project} to {index}")
    if action is not None:
        verb = "register" if action == "submit" else action
        return _bounded(f"{verb} {project} on {index}")
    verb = _VERBS.get(method, method)
    if project and index:
        return _bounded(f"{verb} {project} on {index}")
    return _bounded(f"{verb} {index or path}")


# ---------------------------------------------------------------------------
# stored usage

def register_usage_key(keyfs: KeyFS) -> None:
    """Register our keyfs key (once per keyfs; replicas need it to replicate)."""
    if keyfs.get_key(USAGE_KEY_NAME) is None:
        keyfs.add_key(USAGE_KEY_NAME, USAGE_PATH, dict)


def bucket_of(token_id: str) -> str:
    """The bucket ("00" to "ff") a token's uses are stored in."""
    return hashlib.blake2s(token_id.encode("utf-8"), digest_size=1).hexdigest()


def valid_user(user: Any) -> bool:
    # what a keyfs key can hold as a path segment (devpi's own names always can)
    return isinstance(user, str) and user != "" and "/" not in user


def _bucket_key(keyfs: KeyFS, user: str, bucket: str) -> TypedKey[dict[str, Any]]:
    key = cast("PTypedKey[dict[str, Any]]", keyfs.get_key(USAGE_KEY_NAME))
    return key(user=user, bucket=bucket)


def parse_bucket(value: Any) -> dict[str, Use]:
    """A stored bucket as uses per token id; whatever is not a use is left out."""
    if not isinstance(value, Mapping):
        return {}
    uses = {}
    for token_id, stored in value.items():
        use = Use.load(stored)
        if use is not None and isinstance(token_id, str):
            uses[token_id] = use
    return uses


def stored_uses(keyfs: KeyFS, user: str, token_ids: Iterable[str]) -> dict[str, Use]:
    """The stored uses of these tokens of the user (needs a keyfs transaction)."""
    wanted = set(token_ids)
    if not wanted or not valid_user(user):
        return {}
    found: dict[str, Use] = {}
    for bucket in sorted({bucket_of(token_id) for token_id in wanted}):
        for token_id, use in parse_bucket(_bucket_key(keyfs, user, bucket).get()).items():
            if token_id in wanted:
                found[token_id] = use
    return found


def newest(a: Use | None, b: Use, now: int | None = None) -> Use:
    """The newer use; ``a`` from the future (by ``now``) counts as older."""
    if a is None or b.at >= a.at:
        return b
    if now is not None and a.at > now + FUTURE_SLACK:
        return b
    return a


def merged(
    stored: Mapping[str, Use], new: Mapping[str, Use], ids: Iterable[str],
    now: int | None = None,
) -> dict[str, Use]:
    """Stored and new uses of the tokens ``ids``, the newest use of each."""
    result = {}
    for token_id in ids:
        old, use = stored.get(token_id), new.get(token_id)
        if use is not None:
            result[token_id] = newest(old, use, now)
        elif old is not None:
            result[token_id] = old
    return result


def last_uses(
    store: TokenStore, user: str, recorder: UsageRecorder | None = None,
) -> dict[str, Use]:
    """The newest use of each of the user's tokens, stored or not yet written.

    Needs a keyfs transaction.  ``recorder`` None: recording is off, stored
    uses only.
    """
    ids = store.token_ids(user)
    stored = stored_uses(store.xom.keyfs, user, ids)
    if recorder is None:
        return stored
    return merged(stored, recorder.unwritten(user), ids)


def listing_fields(use: Use | None) -> dict[str, Any]:
    """The listing's fields for one token (all null when never used)."""
    if use is None:
        return {"last_used": None, "last_used_from": None, "last_used_for": None}
    return {"last_used": use.at, "last_used_from": use.client, "last_used_for": use.purpose}


# ---------------------------------------------------------------------------
# the recorder

class NotSent(Exception):
    """Part of a replica's report did not reach the primary; ``left`` is kept."""

    def __init__(self, reason: str, left: Uses) -> None:
        super().__init__(reason)
        self.left = left


class UsageRecorder:
    """Keeps the newest use of every token in memory and writes it periodically.

    One per devpi-server (in the pyramid registry).  :meth:`record` is the
    only part on the request path: one dict assignment under a lock.
    """

    if TYPE_CHECKING:
        thread: Any  # set by devpi-server's thread pool

    def __init__(self, xom: XOM, store: TokenStore, interval: float) -> None:
        self.xom = xom
        self.store = store
        self.interval = interval
        #: a replica sends its uses to its primary instead of writing them
        self.on_replica = bool(xom.is_replica())
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: Uses = {}
        # taken for a write that has not finished yet (listings still see them)
        self._in_flight: Uses = {}
        # written or sent not long ago, with the time they left (listings
        # still see them until every reader's storage has them)
        self._recent: dict[str, dict[str, tuple[Use, float]]] = {}
        self._sender: Any = None

    # -- recording (request path) -------------------------------------------

    def record(self, user: str, token_id: str, use: Use) -> None:
        with self._lock:
            self._keep(user, token_id, use)

    def add(self, uses: Uses) -> None:
        """Merge uses from elsewhere (a replica's report, a failed write, a saved file)."""
        with self._lock:
            for user, per_token in uses.items():
                for token_id, use in per_token.items():
                    self._keep(user, token_id, use)

    def _keep(self, user: str, token_id: str, use: Use) -> None:
        # the newest pending use of each token (the caller holds the lock)
        per_user = self._pending.get(user)
        if per_user is None:
            per_user = self._pending[user] = {}
        per_user[token_id] = newest(per_user.get(token_id), use)

    def unwritten(self, user: str) -> dict[str, Use]:
        """Uses of the user's tokens that storage may not have yet."""
        with self._lock:
            result = {token_id: use for token_id, (use, _) in self._recent.get(user, {}).items()}
            for source in (self._in_flight, self._pending):
                for token_id, use in source.get(user, {}).items():
                    result[token_id] = newest(result.get(token_id), use)
        return result

    # -- writing ---------------------------------------------------------------

    def thread_run(self) -> None:
        _serving.set()
        try:
            self.add(self._take_saved())
        except Exception as exc:  # noqa: BLE001 - never end the server
            log().warning(
                "devpi-tokens: saved token uses not taken up (%s)", type(exc).__name__)
        while True:
            self.thread.sleep(self.interval)  # raises at shutdown
            self.flush()

    def thread_shutdown(self) -> None:
        # devpi-server's pool calls this on a clean stop (and on SIGTERM,
        # see install_sigterm_handler): nothing recorded is lost
        count = self.flush(SHUTDOWN_REPORT_TIMEOUT)
        if count:
            log().info("devpi-tokens: recorded the last %s token use(s) at shutdown", count)
        with self._lock:
            left, self._pending = self._pending, {}
        if left:
            self._save(left)

    def flush(self, timeout: float = REPORT_TIMEOUT) -> int:
        """Write (primary) or send (replica) what is pending; how many uses went."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
                self._in_flight = batch
            if not batch:
                return 0
            try:
                if self.on_replica:
                    count = self._send(batch, timeout)
                else:
                    count = self._write(batch)
                self._remember(batch)
                return count
            except NotSent as exc:
                log().warning(
                    "devpi-tokens: sending token usage to the primary failed (%s); "
                    "kept for the next try", str(exc))
                self.add(exc.left)
                return 0
            except Exception as exc:  # noqa: BLE001 - never end the server
                log().warning(
                    "devpi-tokens: writing token usage failed (%s); kept for the next "
                    "try", type(exc).__name__)
                self.add(batch)
                return 0
            finally:
                with self._lock:
                    self._in_flight = {}

    def _remember(self, batch: Uses) -> None:
        now = time.monotonic()
        horizon = now - RECENT_KEPT_INTERVALS * max(self.interval, 60)
        with self._lock:
            for user in list(self._recent):
                kept = {t: v for t, v in self._recent[user].items() if v[1] >= horizon}
                if kept:
                    self._recent[user] = kept
                else:
                    del self._recent[user]
            for user, uses in batch.items():
                recent = self._recent.setdefault(user, {})
                for token_id, use in uses.items():
                    recent[token_id] = (use, now)

    def _write(self, batch: Uses) -> int:
        """One write transaction for every bucket whose uses changed; how many uses."""
        count = 0
        now = int(time.time())
        keyfs = self.xom.keyfs
        with keyfs.write_transaction():
            for user, uses in batch.items():
                if not valid_user(user) or not self.store.user_exists(user):
                    continue
                ids = self.store.token_ids(user)
                for bucket, part in _by_bucket(uses).items():
                    count += self._write_bucket(user, bucket, part, ids, now)
        return count

    def _write_bucket(
        self, user: str, bucket: str, uses: Mapping[str, Use], ids: set[str], now: int,
    ) -> int:
        key = _bucket_key(self.xom.keyfs, user, bucket)
        stored = parse_bucket(key.get())
        # every token of this bucket that still exists; the others go
        in_bucket = {t for t in {*stored, *uses} if t in ids}
        new = merged(stored, uses, in_bucket, now)
        if new != stored:
            if new:
                key.set({token_id: use.dump() for token_id, use in new.items()})
            elif key.exists():
                key.delete()
        return sum(1 for token_id in uses if token_id in new)

    # -- a replica's reports -------------------------------------------------------

    def _send(self, batch: Uses, timeout: float) -> int:
        """Report a replica's uses to its primary, in chunks under the size limit."""
        sent = 0
        chunks = list(_report_chunks(batch))
        for number, (rows, _) in enumerate(chunks):
            try:
                self._post(rows, timeout)
            except ReportRefused as exc:
                if exc.kept:
                    left = _union(u for _, u in chunks[number:])
                    raise NotSent(str(exc), left) from None
                # the primary will never take this chunk: do not resend it forever
                log().warning(
                    "devpi-tokens: the primary refused %s token use(s) (%s); dropped",
                    len(rows), str(exc))
                continue
            sent += len(rows)
        return sent

    def _post(self, rows: list[list[Any]], timeout: float) -> None:
        if self._sender is None:
            from devpi_server.replica import ReplicaHTTPClient
            self._sender = ReplicaHTTPClient(self.xom)
        sender = self._sender
        url = self.xom.config.primary_url.joinpath(REPORT_PATH.lstrip("/"))
        response = sender.http.post(
            url, data={"uses": json.dumps(rows, separators=(",", ":"))},
            timeout=timeout, extra_headers=sender.get_extra_headers(None))
        if response.status_code != 200:
            raise ReportRefused(response.status_code)

    # -- uses a clean stop could not write ---------------------------------------

    def _save(self, uses: Uses) -> None:
        server_usage_file.save(Path(self.xom.config.server_path), _rows(uses))

    def _take_saved(self) -> Uses:
        now = int(time.time())
        saved = server_usage_file.take(
            Path(self.xom.config.server_path), lambda rows: parse_report(rows, now)[0])
        return _union(saved)


class ReportRefused(Exception):
    """The primary did not take a replica's usage report (``status``)."""

    def __init__(self, status: int) -> None:
        # devpi's HTTP client answers a connection failure with a negative status
        reason = f"the primary answered {status}" if status > 0 else "the primary is unreachable"
        super().__init__(reason)
        self.status = status

    @property
    def kept(self) -> bool:
        """Worth sending again later (unreachable, busy, failing), not refused for good."""
        return self.status <= 0 or self.status >= 500 or self.status in (408, 429)


def _by_bucket(uses: Mapping[str, Use]) -> dict[str, dict[str, Use]]:
    buckets: dict[str, dict[str, Use]] = {}
    for token_id, use in uses.items():
        buckets.setdefault(bucket_of(token_id), {})[token_id] = use
    return buckets


def _rows(uses: Uses) -> list[list[Any]]:
    return [
        [user, token_id, *use.dump()]
        for user, per_user in uses.items() for token_id, use in per_user.items()]


def _union(parts: Iterable[Uses]) -> Uses:
    result: Uses = {}
    for part in parts:
        for user, uses in part.items():
            result.setdefault(user, {}).update(uses)
    return result


def _report_chunks(batch: Uses) -> Iterable[tuple[list[list[Any]], Uses]]:
    """Rows of a report, in chunks whose JSON stays under REPORT_CHUNK_BYTES."""
    rows: list[list[Any]] = []
    uses: Uses = {}
    size = 0
    for row in _rows(batch):
        # JSON escapes non-ASCII; this bounds what one row can take
        row_size = len(json.dumps(row)) + 1
        if rows and size + row_size > REPORT_CHUNK_BYTES:
            yield rows, uses
            rows, uses, size = [], {}, 0
        rows.append(row)
        uses.setdefault(row[0], {})[row[1]] = Use(*row[2:])
        size += row_size
    if rows:
        yield rows, uses


# ---------------------------------------------------------------------------
# a replica's report, on the primary

class BadReport(Exception):
    """A usage report that is not one; the message says why."""


def parse_report(rows: Any, now: int) -> tuple[Uses, int]:
    """A replica's rows ``[user, token id, at, from, for]`` as uses, and how
    many rows were not uses (skipped: one odd row must not cost the others).

    Times in the future are taken as now (a replica's clock may run ahead).
    """
    if not isinstance(rows, list):
        raise BadReport("'uses' must be a list")
    uses: Uses = {}
    skipped = 0
    for row in rows:
        parsed = _report_row(row)
        if parsed is None:
            skipped += 1
            continue
        user, token_id, use = parsed
        per_user = uses.setdefault(user, {})
        per_user[token_id] = newest(per_user.get(token_id), use._replace(at=min(use.at, now)))
    return uses, skipped


def _report_row(row: Any) -> tuple[str, str, Use] | None:
    if not isinstance(row, list) or len(row) != 5:
        return None
    user, token_id = row[0], row[1]
    use = Use.load(row[2:])
    if not valid_user(user) or use is None:
        return None
    if not isinstance(token_id, str) or not 0 < len(token_id) <= MAX_TOKEN_ID:
        return None
    return user, token_id, use


# ---------------------------------------------------------------------------
# wiring

def add_parser_options(parser: Any) -> None:
    addgroup = getattr(parser, "addgroup", None) or parser.add_argument_group
    group = addgroup("devpi-tokens usage")
    group.add_argument(
        OPTION, metavar="SECONDS", dest="tokens_usage_interval", type=int,
        default=DEFAULT_INTERVAL,
        help="how often the last use of each token (shown by token-list) is "
             "written, in seconds: all uses since the last write go in one keyfs "
             "transaction; a replica sends its uses to its primary as often. 0 "
             f"turns recording off; at most {MAX_INTERVAL}. Default: {DEFAULT_INTERVAL}")


def interval_from_xom(xom: Any) -> int:
    """The option's value; one out of range stops the server with the reason."""
    value = getattr(xom.config.args, "tokens_usage_interval", DEFAULT_INTERVAL)
    if type(value) is not int or not 0 <= value <= MAX_INTERVAL:
        raise ValueError(
            f"{OPTION} must be a number of seconds from 0 to {MAX_INTERVAL} (got {value!r})")
    return value


def is_use(recorder: UsageRecorder, response: Response) -> bool:
    """Whether a token request's answer makes it a use of the token."""
    status = response.status_code
    if not (200 <= status < 300 or status == 304):
        return False
    # a write a replica relayed: the primary saw it and records it (header
    # lookups are not free: only a replica looks)
    return not (recorder.on_replica and RELAYED_HEADER in response.headers)


def record_request(
    recorder: UsageRecorder | None, request: Request, response: Response,
    user: str, token_id: str, client: str | None, target: Target,
) -> None:
    """Record a token request as a use when devpi answered it with success."""
    if recorder is None or not is_use(recorder, response):
        return
    recorder.record(user, token_id, Use(
        int(time.time()), client,
        describe(request.method, request.path_info, target)))


#: Set once devpi-server's thread pool runs (the recorder's thread started).
_serving = threading.Event()
_stopping = threading.Event()


def _starting_threads(frame: Any) -> bool:
    """Whether the main thread is still starting the pool's threads.

    devpi-server's pool turns KeyboardInterrupt into a clean stop only in its
    wait loop; while it starts its threads it would escape as a traceback.
    """
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("start", "start_one") and code.co_filename.endswith("mythread.py"):
            return True
        frame = frame.f_back
    return False


def _sigterm_handler(pool: Any) -> Callable[[int, Any], None]:
    """The handler, for devpi-server's thread pool ``pool``."""

    def on_sigterm(signum: int, frame: Any) -> None:
        if not _serving.is_set() or _starting_threads(frame):
            # not serving yet: end the way SIGTERM always ended devpi-server
            _end_by_sigterm()
            return
        if _stopping.is_set() or pool._shutdown.is_set():
            # already stopping (our SIGTERM before, or Ctrl-C): let the
            # shutdown, our last write included, finish
            return
        _stopping.set()
        # after the clean stop, end the way SIGTERM always ended devpi-server,
        # so systemd and supervisors see the same exit status as before
        atexit.register(_end_by_sigterm)
        # devpi-server's main thread ends its pool on KeyboardInterrupt: the
        # same clean stop as Ctrl-C, so every thread_shutdown runs
        raise KeyboardInterrupt

    return on_sigterm


def _end_by_sigterm() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


#: Attribute of devpi-server's XOM set when its process serves (see below).
SIGTERM_WANTED = "devpi_tokens_sigterm_wanted"


def want_sigterm_handler(xom: Any) -> None:
    """Note that this XOM runs a real devpi-server process (``devpiserver_cmdline_run``).

    The handler itself is installed at the end of the plugin's configuration
    (:func:`install_sigterm_handler`): until then SIGTERM ends the process at
    once, as always, even during the slow key derivations of startup (a
    Python handler would only run after them).  Tests that build a server
    in-process never run ``devpiserver_cmdline_run``, so never get one.
    """
    setattr(xom, SIGTERM_WANTED, True)


def install_sigterm_handler(xom: Any) -> bool:
    """Make SIGTERM a clean stop, unless someone else handles SIGTERM already."""
    if not getattr(xom, SIGTERM_WANTED, False):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _sigterm_handler(xom.thread_pool))
    return True
