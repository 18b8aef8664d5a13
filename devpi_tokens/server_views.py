"""HTTP endpoints: create, list and delete a user's tokens.

``POST /<user>/+token-create``, ``GET /<user>/+tokens``,
``DELETE /<user>/+tokens/<id>`` and ``POST /<user>/+tokens-purge``
(removes the user's expired tokens); answers in devpi's JSON style
(``{"type": ..., "result": ...}``, errors as ``{"message": ...}``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
import re
import time

from .restrictions import KNOWN_PERMISSIONS
from .restrictions import USER_PERMISSIONS
from .restrictions import Allowed
from .restrictions import ClientNetworks
from .restrictions import Indexes
from .restrictions import MalformedCaveat
from .restrictions import ProjectNames
from .restrictions import Restriction
from .restrictions import ValidityWindow
from .restrictions import format_time
from .restrictions import ip_network
from .restrictions import project_name_problem
from .restrictions import validated
from .server_enforce import STORE_KEY
from .server_enforce import RECORDER_KEY
from .server_enforce import TokenIdentity
from .server_json import MAX_BODY
from .server_json import BadBody
from .server_json import load_json_body
from .server_log import log
from .server_store import secret_warning
from .server_usage import MAX_REPORT_BYTES
from .server_usage import REPORT_PATH
from .server_usage import BadReport
from .server_usage import last_uses
from .server_usage import listing_fields
from .server_usage import parse_report


if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request
    from pyramid.response import Response

    from .server_limits import MaxLifetime
    from .server_store import TokenStore


DAY = 86400
DEFAULT_LIFETIME = 365 * DAY
#: Longest lifetime anyone may ask for; more (or "never") is for admins.
MAX_LIFETIME = 366 * DAY
#: Expiry written into the window caveat of a "never" token that has a start
#: time (the window format needs an end): 9999-12-31 23:59:59 UTC.
FAR_FUTURE = 253402300799
MAX_DESCRIPTION = 1000
MAX_LIST_ITEMS = 100
_INT64_MAX = 2 ** 63 - 1

CREATE_KEYS = frozenset({
    "expires", "not_before", "projects", "indexes", "allowed", "ips", "description"})

# devpi's rules for user and index names.
_DEVPI_NAME = re.compile(r"[^\x00-\x20!\"#$%&'()*+,/:;<=>?\[\\\]^`{|}~\x7f]+")


class BadRequest(Exception):
    """A create body that cannot be used; the message says why."""


def apiresult(code: int, message: str | None = None, **kw: Any) -> Response:
    """An answer in devpi's JSON style (``{"type", "result"}``, or ``{"message"}``)."""
    from devpi_server import views
    return views.apiresult(code, message, **kw)


# ---------------------------------------------------------------------------
# who may manage whose tokens

def _privileged(request: Request, username: str, groups: list[str]) -> bool:
    if username == "root":
        return True
    restrict_modify = request.registry["xom"].config.restrict_modify or ()
    if username in restrict_modify:
        return True
    return any(f":{group}" in restrict_modify for group in groups)


def authorize_owner(
    request: Request, action: str, things: str = "tokens",
) -> tuple[str, bool] | Response:
    """``(target user, caller is privileged)`` or the refusal to return.

    Who may manage a user's tokens (and trusted publishers): that user, root
    or a ``--restrict-modify`` user, logged in with a password, never a token.
    """
    identity = request.identity
    if isinstance(identity, TokenIdentity):
        return apiresult(
            403, f"a token cannot be used to {action} {things}; "
            "log in with the password instead")
    if identity is None:
        return apiresult(401, f"you need to be logged in to {action} {things}")
    username = request.matchdict["user"]
    privileged = _privileged(request, identity.username, list(identity.groups or ()))
    if identity.username != username and not privileged:
        return apiresult(
            403, f"user '{identity.username}' may not {action} {things} of user '{username}'")
    if not get_store(request).user_exists(username):
        return apiresult(404, f"no user '{username}'")
    return username, privileged


def get_store(request: Request) -> TokenStore:
    store: TokenStore = request.registry[STORE_KEY]
    return store


# ---------------------------------------------------------------------------
# the create body

def _read_body(request: Request) -> dict[str, Any]:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise BadRequest(f"the request body is larger than {MAX_BODY} bytes")
    raw = request.body
    if not raw.strip():
        return {}
    try:
        data = load_json_body(raw)
    except BadBody as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(data) - CREATE_KEYS)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"known fields: {', '.join(sorted(CREATE_KEYS))}")
    return data


def _epoch(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise BadRequest(f"'{key}' must be an epoch timestamp (integer seconds)")
    if not 0 <= value <= _INT64_MAX:
        raise BadRequest(f"'{key}' is out of range")
    return value


def _string_list(
    data: dict[str, Any], key: str, check: Callable[[str], str | None],
) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise BadRequest(f"'{key}' must be a list of strings")
    if not value:
        raise BadRequest(f"'{key}' must not be an empty list (leave it out instead)")
    if len(value) > MAX_LIST_ITEMS:
        raise BadRequest(f"'{key}' has more than {MAX_LIST_ITEMS} entries")
    for item in value:
        problem = check(item)
        if problem:
            raise BadRequest(problem)
    # a name given twice (`-p foo -p foo`) is one name
    return tuple(dict.fromkeys(value))


def _check_index(name: str) -> str | None:
    user, sep, index = name.partition("/")
    if not sep or not _DEVPI_NAME.fullmatch(user) or not _DEVPI_NAME.fullmatch(index):
        return f"{name!r} is not an index name of the form 'user/index'"
    return None


def _check_permission(name: str) -> str | None:
    if name in USER_PERMISSIONS:
        return f"'{name}' cannot be given to a token: tokens never carry user permissions"
    if name not in KNOWN_PERMISSIONS:
        known = ", ".join(sorted(KNOWN_PERMISSIONS - USER_PERMISSIONS))
        return f"unknown permission {name!r}; known permissions: {known}"
    return None


def _check_network(text: str) -> str | None:
    try:
        ip_network(text)
    except MalformedCaveat as exc:
        return f"'ips': {exc}"
    return None


class CreateRequest:
    """A validated create body: restrictions, expiry and description."""

    def __init__(
        self, data: dict[str, Any], now: int, max_lifetime: MaxLifetime | None = None,
    ) -> None:
        default = DEFAULT_LIFETIME
        if max_lifetime is not None:
            # --tokens-max-lifetime shorter than the default: the limit
            default = min(default, max_lifetime.seconds)
        expires = data.get("expires", now + default)
        if expires == "never":
            self.expires: int | None = None
        else:
            self.expires = _epoch({"expires": expires}, "expires")
            if self.expires is None:
                raise BadRequest("'expires' must be an epoch timestamp or \"never\"")
            if self.expires <= now:
                raise BadRequest(f"'expires' ({format_time(self.expires)}) is in the past")
        self.not_before = _epoch(data, "not_before")
        if self.not_before is not None and self.expires is not None:
            if self.not_before >= self.expires:
                raise BadRequest("'not_before' must be earlier than 'expires'")
        self.projects = _string_list(data, "projects", project_name_problem)
        self.indexes = _string_list(data, "indexes", _check_index)
        self.allowed = _string_list(data, "allowed", _check_permission)
        self.ips = _string_list(data, "ips", _check_network)
        description = data.get("description", "")
        if not isinstance(description, str):
            raise BadRequest("'description' must be a string")
        if len(description) > MAX_DESCRIPTION:
            raise BadRequest(f"'description' is longer than {MAX_DESCRIPTION} characters")
        self.description = description
        self.now = now

    def needs_privilege(self) -> bool:
        return self.expires is None or self.expires > self.now + MAX_LIFETIME

    def restrictions(self) -> tuple[Restriction, ...]:
        result: list[Restriction] = []
        if self.expires is not None:
            not_before = self.not_before if self.not_before is not None else self.now
            result.append(ValidityWindow(not_after=self.expires, not_before=not_before))
        elif self.not_before is not None:
            result.append(ValidityWindow(not_after=FAR_FUTURE, not_before=self.not_before))
        if self.projects:
            result.append(ProjectNames(self.projects))
        if self.indexes:
            result.append(Indexes(self.indexes))
        if self.allowed:
            result.append(Allowed(self.allowed))
        if self.ips:
            result.append(ClientNetworks(self.ips))
        try:
            return tuple(validated(r) for r in result)
        except MalformedCaveat as exc:
            raise BadRequest(str(exc)) from None


# ---------------------------------------------------------------------------
# views

def token_create(request: Request) -> Response:
    authorized = authorize_owner(request, "create")
    if not isinstance(authorized, tuple):
        return authorized
    username, privileged = authorized
    store = get_store(request)
    limit = store.max_lifetime
    try:
        wanted = CreateRequest(_read_body(request), int(time.time()), limit)
        restrictions = wanted.restrictions()
    except BadRequest as exc:
        return apiresult(400, str(exc))
    if limit is not None:
        # the admin's limit replaces the privilege rule and binds everyone
        if limit.exceeded_by(wanted.now, wanted.expires):
            return apiresult(403, limit.message)
    elif wanted.needs_privilege() and not privileged:
        return apiresult(
            403, "only root and --restrict-modify users may create tokens that never "
            "expire or are valid for more than 366 days")
    token = store.create(
        username, restrictions, created=wanted.now, expires=wanted.expires,
        description=wanted.description)
    log(request.log).info(
        "created token %s of user %s (by %s)",
        token.token_id, username, request.authenticated_userid)
    result: dict[str, Any] = {"token": token.dump(), "id": token.token_id}
    warning = secret_warning(request.registry["xom"])
    if warning:
        result["warning"] = warning
    return apiresult(201, result=result, type="token-info")


def token_list(request: Request) -> Response:
    authorized = authorize_owner(request, "list")
    if not isinstance(authorized, tuple):
        return authorized
    username, _ = authorized
    store = get_store(request)
    tokens = store.list_tokens(username)
    uses = last_uses(store, username, request.registry.get(RECORDER_KEY))
    now = int(time.time())
    for token_id, info in tokens.items():
        # the server's clock decides; +tokens-purge removes exactly these
        info["expired"] = info["expires"] is not None and now >= info["expires"]
        info.update(listing_fields(uses.get(token_id)))
    return apiresult(200, result={"tokens": tokens}, type="tokens-info")


def token_delete(request: Request) -> Response:
    authorized = authorize_owner(request, "delete")
    if not isinstance(authorized, tuple):
        return authorized
    username, _ = authorized
    token_id = request.matchdict["token_id"]
    if not get_store(request).delete(username, token_id):
        return apiresult(404, f"user '{username}' has no token '{token_id}'")
    log(request.log).info(
        "deleted token %s of user %s (by %s)",
        token_id, username, request.authenticated_userid)
    return apiresult(200, f"token {token_id} of user {username} deleted")


def token_purge(request: Request) -> Response:
    """Remove every expired token of the user; answers how many went."""
    authorized = authorize_owner(request, "purge")
    if not isinstance(authorized, tuple):
        return authorized
    username, _ = authorized
    removed = get_store(request).purge_expired(username, int(time.time()))
    if removed:
        log(request.log).info(
            "purged %s expired token(s) of user %s (by %s): %s",
            len(removed), username, request.authenticated_userid, ", ".join(removed))
    plural = "" if len(removed) == 1 else "s"
    return apiresult(
        200, f"removed {len(removed)} expired token{plural} of user {username}",
        result={"removed": removed, "count": len(removed)}, type="tokens-purged")


def usage_report(request: Request) -> Response:
    """A replica's token uses (``POST /_/tokens/usage``), for the next usage write.

    Only devpi's own replicas may send them: they authenticate the way
    replication does (a key derived from the shared secret).
    """
    from devpi_server.replica import REPLICA_USER_NAME

    xom = request.registry["xom"]
    if xom.is_replica():
        return apiresult(409, "token usage is reported to the primary, not to a replica")
    if getattr(request.identity, "username", None) != REPLICA_USER_NAME:
        return apiresult(403, "only this server's replicas may report token usage")
    recorder = request.registry.get(RECORDER_KEY)
    if recorder is None:
        # recording is off here: taken and dropped, so replicas do not retry
        return apiresult(200, "token usage recording is off on the primary",
                         result={"accepted": 0}, type="tokens-usage")
    length = request.content_length
    if length is None or length > MAX_REPORT_BYTES:
        return apiresult(413, f"a usage report is limited to {MAX_REPORT_BYTES} bytes")
    try:
        text = request.POST.get("uses")
        if not isinstance(text, str):
            raise BadReport("the form needs a 'uses' field")
        rows = load_json_body(text.encode("utf-8"), MAX_REPORT_BYTES, 4)
        uses, skipped = parse_report(rows, int(time.time()))
    except (BadBody, BadReport, UnicodeError, ValueError) as exc:
        return apiresult(400, f"bad usage report: {exc}")
    recorder.add(uses)
    count = sum(len(per_user) for per_user in uses.values())
    if skipped:
        log(request.log).warning(
            "devpi-tokens: %s row(s) of a replica's usage report were not uses", skipped)
    return apiresult(
        200, f"{count} use(s) taken", result={"accepted": count, "skipped": skipped},
        type="tokens-usage")


def method_not_allowed(request: Request) -> Response:
    return apiresult(405, f"method {request.method} not allowed here")


ROUTES = (
    ("/{user}/+token-create", "/{user:[^+/]+}/+token-create", "POST", token_create),
    ("/{user}/+tokens", "/{user:[^+/]+}/+tokens", "GET", token_list),
    ("/{user}/+tokens/{token_id}", "/{user:[^+/]+}/+tokens/{token_id:[^/]+}", "DELETE",
     token_delete),
    ("/{user}/+tokens-purge", "/{user:[^+/]+}/+tokens-purge", "POST", token_purge),
    (REPORT_PATH, REPORT_PATH, "POST", usage_report),
)


def includeme(config: Configurator) -> None:
    for name, pattern, method, view in ROUTES:
        config.add_route(name, pattern)
        config.add_view(view, route_name=name, request_method=method)
        # any other method: a clear 405 instead of a 404
        config.add_view(method_not_allowed, route_name=name, is_mutating=False)
