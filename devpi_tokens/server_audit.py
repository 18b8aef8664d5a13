"""The audit log: one line per token-authenticated request.

Requests that change something (any mutating method: uploads, pushes,
registers, deletions, index changes, tox results) and every refusal are
logged at info level; reads at debug level.  A line names the user, the
token id, the action, the project and index the request acted on (as
enforcement read them), the client address and the result.  Never the
token: every value goes through :mod:`server_log`, which escapes it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from .server_log import log

if TYPE_CHECKING:
    from pyramid.request import Request

    from .server_target import Target

MUTATING_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE", "PUSH"})

LINE = ("token audit: user %s token %s action %s %s project %s index %s "
        "client %s result %s")


def audit(request: Request, identity: Any, target: Target, status: int) -> None:
    """Log one token-authenticated request (``identity`` a TokenIdentity).

    ``target`` is what the request acted on, as enforcement read it.
    """
    args = (
        identity.username, identity.token_id, request.method, request.path_info,
        target.project or "-", ",".join(target.indexes) or "-",
        identity.client_address or "-", status)
    if request.method in MUTATING_METHODS or status >= 400:
        log().info(LINE, *args)
    else:
        log().debug(LINE, *args)
