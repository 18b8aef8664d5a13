"""Tokens on devpi-server replicas (``devpi-server --primary-url URL``).

Nothing here is needed for tokens to work on a healthy replica: token
records (salts included) live in the user records, which devpi's own
replication stream copies to every replica, and a token's key is derived
from the server secret.  So a replica that shares the primary's secret file
accepts a token as soon as it has the serial that created it, and refuses it
as soon as it has the serial that deleted it.  Creating and deleting tokens
on a replica are POST/DELETE requests, which devpi-server itself relays to
the primary and answers once the replica has the new serial.

What this module adds are refusals a person can act on when a replica
cannot do its part:

- a replica without ``--secretfile`` makes a random secret at start: it can
  verify no token, and devpi cannot replicate either (the replication
  protocol is authenticated with a key derived from the same secret);
- a replica that never received data from its primary knows no token;
- a replica whose secret differs from the primary's (for instance restarted
  with another secret file) still has the records, but no signature matches;
- a token the replica does not know may just not have arrived yet: the
  refusal says at which serial the replica and its primary are.

The checks run only when a token has already failed, so a healthy server
pays nothing for them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any
import re

from .server_log import log


if TYPE_CHECKING:
    from devpi_server.main import XOM
    from pyramid.registry import Registry
    from pyramid.request import Request
    from pyramid.response import Response


#: The question for the admin, in the replica's log, when a signature fails.
SECRET_HINT = "does this server share the primary's --secretfile?"

NO_SECRET_REASON = (
    "this replica runs without --secretfile, so it cannot verify tokens (nor "
    "replicate from its primary): restart it with --secretfile pointing to a "
    "copy of the primary's secret file")

NO_DATA_REASON = (
    "this replica has no data from its primary yet, so it cannot verify tokens; "
    "its log says why (a 403 from the primary means this replica does not share "
    "the primary's --secretfile)")

NOT_CONNECTED_REASON = (
    "this replica has not received anything from its primary since it started, "
    "so it cannot pass on token changes; send them to the primary, and see this "
    "replica's log for why (a 403 from the primary means this replica does not "
    "share the primary's --secretfile)")

#: Token management paths: /<user>/+token-create, /<user>/+tokens[/<id>], ...
_TOKEN_PATH = re.compile(r"/[^+/]+/\+token[^/]*(/[^/]*)?/?")
_MUTATING = frozenset({"PUT", "POST", "PATCH", "DELETE", "PUSH"})

TWEEN = "devpi_tokens.server_replica.replica_tween_factory"



def is_replica(xom: XOM) -> bool:
    return xom is not None and bool(xom.is_replica())


def _replica_thread(xom: XOM) -> Any:
    # absent with --requests-only: another process replicates
    return getattr(xom, "replica_thread", None)


def _thread_attr(thread: Any, *names: str) -> Any:
    # devpi-server 6.x renamed master -> primary; read the plain attribute
    # (the old names are deprecated properties in newer releases)
    attrs = vars(thread) if thread is not None else {}
    for name in names:
        if name in attrs:
            return attrs[name]
    return Ellipsis


def local_serial(xom: XOM) -> int:
    serial: int = xom.keyfs.get_current_serial()
    return serial


def primary_serial(xom: XOM) -> int | None:
    """The primary's serial as last reported to this replica, if known."""
    value = _thread_attr(_replica_thread(xom), "_primary_serial", "_master_serial")
    return value if isinstance(value, int) else None


def serial_note(xom: XOM) -> str:
    """Where replication stands, e.g. 'this replica is at serial 7, its primary at 9'."""
    primary = primary_serial(xom)
    return (
        f"this replica is at serial {local_serial(xom)}, its primary at serial "
        f"{'unknown' if primary is None else primary}")


def _no_secret(xom: XOM) -> bool:
    # secret_path is also set for a legacy <serverdir>/.secret
    return xom.config.secret_path is None


def refuse_unknown(xom: XOM, user: str, token_id: str) -> tuple[int, str] | None:
    """Refusal for a token whose record this replica lacks; None if not a replica."""
    if not is_replica(xom):
        return None
    if _no_secret(xom):
        return 403, NO_SECRET_REASON
    if local_serial(xom) < 0:
        return 403, NO_DATA_REASON
    return 401, (
        f"token {token_id} of user '{user}' was deleted or never existed, or this "
        f"replica has not caught up with its primary yet ({serial_note(xom)})")


def refuse_bad_signature(xom: XOM, user: str, token_id: str) -> tuple[int, str] | None:
    """Refusal for a signature that does not match here; None if not a replica.

    The record came from the primary, so either the token was altered or
    this replica's secret is not the primary's; only the admin can tell,
    hence the question in the log.
    """
    if not is_replica(xom):
        return None
    if _no_secret(xom):
        return 403, NO_SECRET_REASON
    log().warning(
        "token signature does not match: %s (token %s of user %s)",
        SECRET_HINT, token_id, user)
    return 403, (
        f"token {token_id} of user '{user}' does not match this replica's secret: "
        "the token was altered, or this replica does not share its primary's "
        "--secretfile")


def forwarding_problem(xom: XOM) -> str | None:
    """Why a token change sent to this replica must not go to the primary.

    devpi-server relays the change and then waits, without a time limit,
    until this replica has the primary's new serial.  A replica that cannot
    replicate never gets it: the client would hang while the primary has
    made the change (a token nobody ever sees).
    """
    if _no_secret(xom):
        return NO_SECRET_REASON
    thread = _replica_thread(xom)
    if thread is None:
        return None
    # set at every answer of the primary; None: no answer since start
    if _thread_attr(thread, "update_from_primary_at", "update_from_master_at") is None:
        return NOT_CONNECTED_REASON
    return None


def replica_tween_factory(handler: Any, registry: Registry) -> Any:
    """Tween (replicas only): refuse token changes this replica can't pass on."""
    from .server_enforce import refusal_response

    xom = registry["xom"]

    def replica_tween(request: Request) -> Response:
        if request.method in _MUTATING and _TOKEN_PATH.fullmatch(request.path_info):
            problem = forwarding_problem(xom)
            if problem is not None:
                log().warning("devpi-tokens: refused %s %s: %s",
                               request.method, request.path_info, problem)
                return refusal_response(request, 403, problem)
        return handler(request)

    return replica_tween


def configure(pyramid_config: Any, xom: XOM) -> None:
    """On a replica: say at startup what can't work, and add the tween."""
    if not is_replica(xom):
        return
    if _no_secret(xom):
        log(xom.log).error("devpi-tokens: %s", NO_SECRET_REASON)
    pyramid_config.add_tween(
        TWEEN, under="devpi_server.views.tween_keyfs_transaction",
        over="devpi_tokens.server_enforce.token_tween_factory")
