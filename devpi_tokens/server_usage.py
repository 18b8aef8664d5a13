"""When, from where and for what each token was last used ("last used").

Recording costs no keyfs write per request.  The token tween calls
:meth:`UsageRecorder.record` for every token request devpi-server answered
with a status below 400 (a refused or failed request is not a use); that
keeps the newest use of each token in memory.  A derived token carries the
id of the token it was derived from, so its uses count for that token.

Writing: :class:`UsageRecorder` runs in a thread of devpi-server's pool and,
every ``--tokens-usage-interval`` seconds (default 60), writes what changed
since the last write in ONE keyfs write transaction: each user with new uses
gets their usage field rewritten, nobody else, and when nothing changed no
transaction is opened (keyfs makes no serial for it either).  However many
tokens are busy, that is at most one new serial per interval for replicas to
pull.

Shutdown: devpi-server's thread pool calls :meth:`UsageRecorder.thread_shutdown`
on a clean stop (Ctrl-C), which writes what is pending.  devpi-server installs
no SIGTERM handler, so SIGTERM would end the process on the spot; the plugin
installs one (:func:`install_sigterm_handler`) that takes the Ctrl-C path
and, once devpi-server has stopped, ends the process by SIGTERM as before
(the exit status systemd and supervisors expect).
After a crash (SIGKILL, power loss), at most the last interval is lost.

Replicas cannot write to keyfs: a replica sends its uses to its primary
(``POST /_/tokens/usage``, authenticated as devpi's own replication is, with
a key derived from the shared secret) every interval and at shutdown; the
primary merges them into its own pending uses, writes them with its next
write, and they come back to every replica through replication.  While the
primary cannot be reached the replica keeps them (one entry per token, the
newest use) and tries again each interval.

Storage: one field of the user record (next to the token table, so it is
replicated, exported and deleted with the user), one compact JSON string::

    "devpi_tokens_used": '{"<token id>":[<epoch>,"<client address>"|null,"<for>"],...}'

Uses of tokens that no longer exist are dropped when the user's field is
next written.
"""
from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple
import atexit
import json
import os
import signal
import threading
import time

from .server_log import log

if TYPE_CHECKING:
    from devpi_server.main import XOM
    from pyramid.request import Request

    from .server_store import TokenStore
    from .server_target import Target


#: Field of the user record holding the usage of the user's tokens.
USAGE_FIELD = "devpi_tokens_used"

OPTION = "--tokens-usage-interval"
DEFAULT_INTERVAL = 60

#: Where a replica sends its uses (on the primary).
REPORT_PATH = "/_/tokens/usage"
#: Uses per report a replica sends (a report body stays far below MAX_REPORT_BYTES).
REPORT_CHUNK = 2000
MAX_REPORT_BYTES = 1024 * 1024
#: Seconds a replica waits for its primary to take a report.
REPORT_TIMEOUT = 20.0

#: How many intervals a replica lists a use it sent (the primary writes it
#: with its next write, then replication brings it back).
REPORTED_KEPT_INTERVALS = 5

#: Longest ``last_used_for`` / ``last_used_from`` kept (client text is in them).
MAX_TEXT = 200


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
        if not isinstance(value, list) or len(value) != 3:
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


_VERBS = {
    "GET": "read", "HEAD": "read", "DELETE": "delete",
    "PUT": "create or change", "PATCH": "change", "POST": "post to",
}


# ---------------------------------------------------------------------------
# stored usage

def parse_usage(text: Any) -> dict[str, Use]:
    """The stored usage field as uses per token id; empty if unreadable."""
    if not isinstance(text, str):
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    uses = {}
    for token_id, value in data.items():
        use = Use.load(value)
        if use is not None:
            uses[token_id] = use
    return uses


def dump_usage(uses: Mapping[str, Use]) -> str:
    return json.dumps(
        {token_id: use.dump() for token_id, use in uses.items()}, separators=(",", ":"))


def newest(a: Use | None, b: Use) -> Use:
    return b if a is None or b.at >= a.at else a


def merged(stored: Mapping[str, Use], new: Mapping[str, Use], ids: Iterable[str]) -> dict[str, Use]:
    """Stored and new uses of the tokens ``ids``, the newest use of each."""
    result = {}
    for token_id in ids:
        old, use = stored.get(token_id), new.get(token_id)
        if use is not None:
            result[token_id] = newest(old, use)
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
    stored = parse_usage(store.user_record(user).get(USAGE_FIELD))
    if recorder is None:
        return stored
    unwritten = recorder.unwritten(user)
    return merged(stored, unwritten, {*stored, *unwritten})


def listing_fields(use: Use | None) -> dict[str, Any]:
    """The listing's fields for one token (all null when never used)."""
    if use is None:
        return {"last_used": None, "last_used_from": None, "last_used_for": None}
    return {"last_used": use.at, "last_used_from": use.client, "last_used_for": use.purpose}


# ---------------------------------------------------------------------------
# the recorder

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
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: Uses = {}
        # taken for a write that has not finished yet (listings still see them)
        self._in_flight: Uses = {}
        # a replica's uses sent to the primary, until they are back through
        # replication (listings still see them); with the time they were sent
        self._reported: dict[tuple[str, str], tuple[Use, float]] = {}
        self._sender: Any = None
        #: keyfs write transactions made, and uses written or sent (for tests and logs)
        self.writes = 0

    # -- recording (request path) -------------------------------------------

    def record(self, user: str, token_id: str, use: Use) -> None:
        with self._lock:
            per_user = self._pending.get(user)
            if per_user is None:
                per_user = self._pending[user] = {}
            per_user[token_id] = newest(per_user.get(token_id), use)

    def add(self, uses: Uses) -> None:
        """Merge uses from elsewhere (a replica's report, a failed write)."""
        with self._lock:
            for user, per_token in uses.items():
                per_user = self._pending.setdefault(user, {})
                for token_id, use in per_token.items():
                    per_user[token_id] = newest(per_user.get(token_id), use)

    def unwritten(self, user: str) -> dict[str, Use]:
        """Uses of the user's tokens that are not stored yet."""
        with self._lock:
            result = dict(self._in_flight.get(user, {}))
            for token_id, use in self._pending.get(user, {}).items():
                result[token_id] = newest(result.get(token_id), use)
            for (owner, token_id), (use, _) in self._reported.items():
                if owner == user:
                    result[token_id] = newest(result.get(token_id), use)
        return result

    # -- writing ---------------------------------------------------------------

    def thread_run(self) -> None:
        while True:
            self.thread.sleep(self.interval)  # raises at shutdown
            self.flush()

    def thread_shutdown(self) -> None:
        # devpi-server's pool calls this on a clean stop (and on SIGTERM,
        # see install_sigterm_handler): nothing recorded is lost
        count = self.flush()
        if count:
            log().info("devpi-tokens: wrote the last %s token use(s) at shutdown", count)

    def flush(self) -> int:
        """Write (primary) or send (replica) what is pending; how many uses went."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
                self._in_flight = batch
            if not batch:
                return 0
            try:
                if self.xom.is_replica():
                    return self._send(batch)
                return self._write(batch)
            except Exception as exc:  # noqa: BLE001 - never end the server
                log().warning(
                    "devpi-tokens: recording token usage failed (%s); kept for "
                    "the next try", _why(exc))
                self.add(batch)
                return 0
            finally:
                with self._lock:
                    self._in_flight = {}

    def _write(self, batch: Uses) -> int:
        """One write transaction for every user whose usage changed."""
        count = 0
        keyfs = self.xom.keyfs
        with keyfs.write_transaction():
            for user, uses in batch.items():
                if not self.store.user_exists(user):
                    continue
                stored = parse_usage(self.store.user_record(user).get(USAGE_FIELD))
                new = merged(stored, uses, self.store.token_ids(user))
                if new == stored:
                    continue
                with self.store.user_key(user).update() as userconfig:
                    if new:
                        userconfig[USAGE_FIELD] = dump_usage(new)
                    else:
                        userconfig.pop(USAGE_FIELD, None)
                count += sum(1 for token_id in uses if token_id in new)
        if count:
            self.writes += 1
        return count

    def _send(self, batch: Uses) -> int:
        """Report a replica's uses to its primary, in chunks."""
        self._forget_old_reports()
        rows = [
            [user, token_id, *use.dump()]
            for user, uses in batch.items() for token_id, use in uses.items()]
        sent: Uses = {}
        try:
            for start in range(0, len(rows), REPORT_CHUNK):
                chunk = rows[start:start + REPORT_CHUNK]
                self._post(chunk)
                for user, token_id, *_ in chunk:
                    sent.setdefault(user, {})[token_id] = batch[user][token_id]
                    self._remember_reported(user, token_id, batch[user][token_id])
        except Exception:
            # what did not go out is tried again
            self.add({
                user: {t: u for t, u in uses.items() if t not in sent.get(user, {})}
                for user, uses in batch.items()})
            raise
        return len(rows)

    def _remember_reported(self, user: str, token_id: str, use: Use) -> None:
        with self._lock:
            self._reported[user, token_id] = (use, time.monotonic())

    def _forget_old_reports(self) -> None:
        # by then the primary wrote them and replication brought them back
        horizon = time.monotonic() - REPORTED_KEPT_INTERVALS * max(self.interval, 60)
        with self._lock:
            self._reported = {
                key: value for key, value in self._reported.items() if value[1] >= horizon}

    def _post(self, rows: list[list[Any]]) -> None:
        if self._sender is None:
            from devpi_server.replica import ReplicaHTTPClient
            self._sender = ReplicaHTTPClient(self.xom)
        sender = self._sender
        url = self.xom.config.primary_url.joinpath(REPORT_PATH.lstrip("/"))
        response = sender.http.post(
            url, data={"uses": json.dumps(rows, separators=(",", ":"))},
            timeout=REPORT_TIMEOUT, extra_headers=sender.get_extra_headers(None))
        if response.status_code != 200:
            raise ReportRefused(response.status_code)


class ReportRefused(Exception):
    """The primary did not take a replica's usage report (``status``)."""

    def __init__(self, status: int) -> None:
        # devpi's HTTP client answers a connection failure with a negative status
        reason = f"the primary answered {status}" if status > 0 else "the primary is unreachable"
        super().__init__(reason)
        self.status = status


def _why(exc: Exception) -> str:
    # our own reasons are safe to log; of anything else only the type
    return str(exc) if isinstance(exc, ReportRefused) else type(exc).__name__


# ---------------------------------------------------------------------------
# a replica's report, on the primary

class BadReport(Exception):
    """A usage report that is not one; the message says why."""


def parse_report(rows: Any, now: int) -> Uses:
    """A replica's rows ``[user, token id, at, from, for]`` as uses.

    Times in the future are taken as now (a replica's clock may run ahead).
    """
    if not isinstance(rows, list):
        raise BadReport("'uses' must be a list")
    uses: Uses = {}
    for row in rows:
        if not isinstance(row, list) or len(row) != 5:
            raise BadReport("each use must be [user, token id, time, client, for]")
        user, token_id = row[0], row[1]
        use = Use.load(row[2:])
        if not isinstance(user, str) or not isinstance(token_id, str) or use is None:
            raise BadReport("each use must be [user, token id, time, client, for]")
        uses.setdefault(user, {})[token_id] = newest(
            uses.get(user, {}).get(token_id), use._replace(at=min(use.at, now)))
    return uses


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
             f"turns recording off. Default: {DEFAULT_INTERVAL}")


def interval_from_xom(xom: Any) -> int:
    """The option's value; a negative one stops the server with the reason."""
    value = getattr(xom.config.args, "tokens_usage_interval", DEFAULT_INTERVAL)
    if type(value) is not int or value < 0:
        raise ValueError(f"{OPTION} must be a number of seconds, 0 or more (got {value!r})")
    return value


def record_request(
    recorder: UsageRecorder | None, request: Request, user: str, token_id: str,
    client: str | None, target: Target, status: int,
) -> None:
    """Record a token request as a use when devpi answered it below 400."""
    if recorder is None or status >= 400:
        return
    recorder.record(user, token_id, Use(
        int(time.time()), client,
        describe(request.method, request.path_info, target)))


_STOPPING = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _STOPPING  # noqa: PLW0603 - one process, one signal handler
    if _STOPPING:
        # already stopping: let the shutdown (our last write) finish
        return
    _STOPPING = True
    # after the clean stop, end the way SIGTERM always ended devpi-server,
    # so systemd and supervisors see the same exit status as before
    atexit.register(_end_by_sigterm)
    # devpi-server's main thread ends its pool on KeyboardInterrupt: the
    # same clean stop as Ctrl-C, so every thread_shutdown runs
    raise KeyboardInterrupt


def _end_by_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def install_sigterm_handler() -> bool:
    """Make SIGTERM a clean stop, unless someone else handles SIGTERM already.

    Called from ``devpiserver_cmdline_run``, in the main thread of a real
    devpi-server process (never in tests that build a server in-process).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True
