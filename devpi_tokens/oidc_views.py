"""HTTP endpoints of trusted publishing.

At the server root, as uv and pypa/gh-action-pypi-publish call them:
``GET /_/oidc/audience``, ``POST /_/oidc/mint-token`` (also
``/_/oidc/github/mint-token``) and ``POST /_/oidc/burn-token``.  Per user,
like the token endpoints: ``POST``/``GET /<user>/+publishers`` and
``DELETE /<user>/+publishers/<id>``.

Mint refusals are 422 ``{"message": "Token request failed", "errors":
[{"code": ..., "description": ...}]}``; nothing the client sends makes a 500.
No JWT and no token ever goes into a log line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
import json
import time

from pyramid.response import Response

from .oidc_config import OIDCSettings
from .oidc_errors import OIDCError
from .oidc_keys import KeyRing
from .oidc_verify import verify_jwt
from .publishers import Match
from .publishers import PublisherConflict
from .publishers import PublisherStore
from .publishers import publisher_from_body
from .restrictions import TokenError
from .restrictions import project_name_problem
from .server_json import MAX_BODY
from .server_json import BadBody
from .server_json import load_json_body
from .server_log import log
from .server_store import is_trusted_publishing
from .server_views import apiresult
from .server_views import authorize_owner
from .server_views import get_store
from .server_views import method_not_allowed
from .tokens import Token
from .tokens import looks_like_token


if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request



#: Registry key of this server's :class:`OIDCState`.
OIDC_KEY = "devpi_tokens.oidc"

DISABLED = "trusted publishing is disabled on this server"
MAX_DESCRIPTION = 1000
MAX_LIST_ITEMS = 100


@dataclass(frozen=True)
class OIDCState:
    """What the endpoints need, built once at startup (see server_hooks)."""

    settings: OIDCSettings
    keys: KeyRing
    publishers: PublisherStore


def get_state(request: Request) -> OIDCState:
    state: OIDCState = request.registry[OIDC_KEY]
    return state


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(
        body=(json.dumps(body, indent=2) + "\n").encode("utf-8"), status=status,
        content_type="application/json", charset="utf-8")


# ---------------------------------------------------------------------------
# the exchange

def audience(request: Request) -> Response:
    settings = get_state(request).settings
    if not settings.enabled:
        return _json(403, {"message": DISABLED})
    return _json(200, {"audience": settings.audience})


def _refusal(error: OIDCError) -> Response:
    return _json(422, {
        "message": "Token request failed",
        "errors": [{"code": error.code, "description": error.description}]})


def _read_json(request: Request) -> Any:
    """The body as JSON whatever the Content-Type says; BadBody if it is none."""
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise BadBody(f"the request body is larger than {MAX_BODY} bytes")
    return load_json_body(request.body)


def _body_token(request: Request, what: str) -> str:
    try:
        data = _read_json(request)
    except BadBody as exc:
        raise OIDCError("invalid-payload", str(exc)) from None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise OIDCError(
            "invalid-payload",
            f"the request body must be a JSON object with the {what} as 'token'")
    return token


def mint_token(request: Request) -> Response:
    """Exchange a CI platform's OIDC token for a short-lived devpi token."""
    try:
        return _mint(request)
    except OIDCError as error:
        log(request.log).info("trusted publishing: refused (%s): %s", error.code,
                              error.description)
        # a refusal stores nothing (no jti used up, no owner id pinned)
        _doom(request)
        return _refusal(error)
    except Exception as exc:  # noqa: BLE001 - whatever comes in, never a 500
        # only the type: the text might quote the JWT
        log(request.log).error("trusted publishing: mint failed with %s", type(exc).__name__)
        _doom(request)
        return _refusal(OIDCError(
            "invalid-token", "the server could not process the token (its log says more)"))


def _doom(request: Request) -> None:
    tx = getattr(request.registry["xom"].keyfs, "tx", None)
    if tx is not None and getattr(tx, "write", False):
        tx.doom()


def _verified_claims(request: Request) -> dict[str, Any]:
    """The claims of the request's JWT, verified; OIDCError if it is refused."""
    state = get_state(request)
    if not state.settings.enabled:
        raise OIDCError("not-enabled", DISABLED)
    raw = _body_token(request, "OIDC token (JWT)")
    return verify_jwt(raw, state.settings, state.keys)


#: Where :func:`verify_before_transaction_tween_factory` leaves its result.
VERIFIED_KEY = "devpi_tokens.oidc.verified"
MINT_PATHS = frozenset({"/_/oidc/mint-token", "/_/oidc/github/mint-token"})


def verify_before_transaction_tween_factory(handler: Any, registry: Any) -> Any:
    """Verify a mint request's JWT before devpi opens its write transaction.

    Verifying may fetch an issuer's keys over the network.  Inside the
    transaction that would hold devpi-server's write lock for as long as
    the issuer takes to answer, and every other write (uploads, index
    changes) would wait or fail.  So the JWT is checked here, above the
    transaction tween, and the view only looks the publisher up and mints.
    A replica relays the request to its primary, which verifies it.
    """
    is_replica = registry["xom"].is_replica()

    def verify_tween(request: Request) -> Response:
        if request.method == "POST" and request.path_info in MINT_PATHS and not is_replica:
            try:
                request.environ[VERIFIED_KEY] = _verified_claims(request)
            except OIDCError as error:
                request.environ[VERIFIED_KEY] = error
            except Exception as exc:  # noqa: BLE001 - never a 500; only the type is logged
                log().error(
                    "trusted publishing: verification failed with %s", type(exc).__name__)
                request.environ[VERIFIED_KEY] = OIDCError(
                    "invalid-token", "the server could not process the token (its log says more)")
        response: Response = handler(request)
        return response

    return verify_tween


def _mint(request: Request) -> Response:
    state = get_state(request)
    verified = request.environ.get(VERIFIED_KEY)
    if isinstance(verified, OIDCError):
        raise verified
    claims = verified if isinstance(verified, dict) else _verified_claims(request)
    issuer = str(claims["iss"])
    found = state.publishers.find(claims, issuer)
    if isinstance(found, str):
        raise OIDCError("invalid-publisher", found)
    match: Match = found
    owner_problem = match.publisher.owner_problem(claims, match.pinned_owner_id)
    if owner_problem is not None:
        raise OIDCError("invalid-publisher", owner_problem)
    now = int(time.time())
    exp = claims.get("exp")
    exp = int(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else now
    if not state.publishers.use_jti(issuer, str(claims["jti"]), exp, now):
        raise OIDCError(
            "invalid-reuse-token",
            "this OIDC token was exchanged before (each one is accepted once); "
            "ask the CI platform for a new one")
    owner_id = match.publisher.owner_id(claims)
    if match.pinned_owner_id is None and owner_id is not None:
        state.publishers.pin_owner(match.user, match.publisher_id, owner_id)
    token, expires = state.publishers.mint(get_store(request), match, claims, now)
    log(request.log).info(
        "trusted publishing: minted token %s of user %s for publisher %s (%s)",
        token.token_id, match.user, match.publisher_id, match.publisher.summary())
    return _json(200, {"success": True, "token": token.dump(), "expires": expires})


BURN_MESSAGE = "a valid token minted by trusted publishing is revoked now"


def burn_token(request: Request) -> Response:
    """Revoke a token minted by trusted publishing; 202 whatever it is given."""
    try:
        _burn(request)
    except Exception as exc:  # noqa: BLE001 - 202 whatever it is given, never a 500
        log(request.log).error("trusted publishing: burn failed with %s", type(exc).__name__)
        _doom(request)
    return _json(202, {"message": BURN_MESSAGE})


def _burn(request: Request) -> None:
    try:
        raw = _body_token(request, "token to revoke")
    except OIDCError:
        return
    if not looks_like_token(raw):
        return
    try:
        token = Token.load(raw)
    except TokenError:
        return
    user, token_id = token.user, token.token_id
    if "/" in user:
        return
    tokens = get_store(request)
    record = tokens.get_record(user, token_id)
    if record is None or not is_trusted_publishing(record):
        return
    key = tokens.key_for(user, token_id, record)
    if key is None or not token.verify_signature(key):
        return
    if tokens.delete(user, token_id):
        tokens.verified.discard(raw)
        log(request.log).info(
            "trusted publishing: burned token %s of user %s", token_id, user)
    # the user's other expired minted tokens go too
    tokens.purge_expired(user, int(time.time()), only=is_trusted_publishing)


# ---------------------------------------------------------------------------
# publishers

class BadRequest(Exception):
    """A publisher body that cannot be used; the message says why."""


def _authorize(request: Request, action: str) -> tuple[str, bool] | Response:
    """``(target user, caller is privileged)`` or the refusal to return."""
    if not get_state(request).settings.enabled:
        return apiresult(403, DISABLED)
    return authorize_owner(request, action, "trusted publishers")


def _string_list(data: dict[str, Any], key: str, *, required: bool) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        if required:
            raise BadRequest(f"'{key}' is required: a list of strings")
        return ()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise BadRequest(f"'{key}' must be a list of strings")
    if not value:
        if required:
            raise BadRequest(f"'{key}' must name at least one entry")
        return ()
    if len(value) > MAX_LIST_ITEMS:
        raise BadRequest(f"'{key}' has more than {MAX_LIST_ITEMS} entries")
    return tuple(dict.fromkeys(value))


def _read_publisher_body(request: Request) -> dict[str, Any]:
    try:
        data = _read_json(request)
    except BadBody as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def publisher_add(request: Request) -> Response:
    authorized = _authorize(request, "add")
    if not isinstance(authorized, tuple):
        return authorized
    username, _ = authorized
    # who holds a conflicting registration is said to root only
    is_root = request.identity.username == "root"
    state = get_state(request)
    try:
        data = _read_publisher_body(request)
        try:
            publisher = publisher_from_body(data)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if state.settings.issuer(publisher.issuer) is None:
            raise BadRequest(
                f"issuer {publisher.issuer} is not trusted by this server (the admin "
                "trusts issuers with --oidc-issuer)")
        indexes = _string_list(data, "indexes", required=True)
        for index in indexes:
            problem = state.publishers.index_problem(username, index)
            if problem is not None:
                raise BadRequest(problem)
        projects = _string_list(data, "projects", required=False)
        for project in projects:
            problem = project_name_problem(project)
            if problem is not None:
                raise BadRequest(problem)
        description = data.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise BadRequest("'description' must be a string")
        if len(description) > MAX_DESCRIPTION:
            raise BadRequest(f"'description' is longer than {MAX_DESCRIPTION} characters")
        publisher_id, info = state.publishers.add(
            username, publisher, indexes=indexes, projects=projects or None,
            description=description, created=int(time.time()))
    except BadRequest as exc:
        return apiresult(400, str(exc))
    except PublisherConflict as conflict:
        message = f"this publisher ({publisher.summary()}) is already registered on this server"
        if is_root:
            message += f", by user '{conflict.holder}' (publisher {conflict.publisher_id})"
        return apiresult(409, message)
    except ValueError as exc:  # too many publishers
        return apiresult(400, str(exc))
    log(request.log).info(
        "added trusted publisher %s of user %s: %s (by %s)",
        publisher_id, username, publisher.summary(), request.authenticated_userid)
    return apiresult(201, result=info, type="publisher-info")


def publisher_list(request: Request) -> Response:
    authorized = _authorize(request, "list")
    if not isinstance(authorized, tuple):
        return authorized
    username, _ = authorized
    publishers = get_state(request).publishers.list(username)
    return apiresult(200, result={"publishers": publishers}, type="publishers-info")


def publisher_delete(request: Request) -> Response:
    authorized = _authorize(request, "delete")
    if not isinstance(authorized, tuple):
        return authorized
    username, _ = authorized
    publisher_id = request.matchdict["publisher_id"]
    publishers = get_state(request).publishers
    if not publishers.delete(username, publisher_id):
        return apiresult(404, f"user '{username}' has no trusted publisher '{publisher_id}'")
    log(request.log).info(
        "deleted trusted publisher %s of user %s (by %s)",
        publisher_id, username, request.authenticated_userid)
    # the publishers left, as the listing shows them
    return apiresult(
        200, f"trusted publisher {publisher_id} of user {username} deleted",
        result={"publishers": publishers.list(username)}, type="publishers-info")


ROUTES = (
    ("/_/oidc/audience", "/_/oidc/audience", ("GET",), audience),
    ("/_/oidc/mint-token", "/_/oidc/mint-token", ("POST",), mint_token),
    ("/_/oidc/github/mint-token", "/_/oidc/github/mint-token", ("POST",), mint_token),
    ("/_/oidc/burn-token", "/_/oidc/burn-token", ("POST",), burn_token),
    ("/{user}/+publishers", "/{user:[^+/]+}/+publishers", ("GET",), publisher_list),
    ("/{user}/+publishers POST", "/{user:[^+/]+}/+publishers", ("POST",), publisher_add),
    ("/{user}/+publishers/{publisher_id}",
     "/{user:[^+/]+}/+publishers/{publisher_id:[^/]+}", ("DELETE",), publisher_delete),
)


def includeme(config: Configurator) -> None:
    routes: dict[str, str] = {}
    for name, pattern, methods, view in ROUTES:
        route = routes.setdefault(pattern, name)
        if route == name:
            config.add_route(name, pattern)
            # any other method: a clear 405 instead of a 404
            config.add_view(method_not_allowed, route_name=name, is_mutating=False)
        for method in methods:
            config.add_view(view, route_name=route, request_method=method)
