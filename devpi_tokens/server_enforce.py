"""Authentication with a token, and enforcement of its restrictions.

How a request with a token flows through devpi-server:

1. :func:`find_token` picks the token out of the credentials devpi-server
   extracted (basic auth or ``X-Devpi-Auth``; ``Bearer`` comes from our own
   credentials hook).  Strings that don't look like a token are left alone,
   so devpi's password check sees them untouched.
2. :func:`authenticate` (called from the identity hook, once per request)
   checks the token: record, key, signature, validity window, user and
   the server's ``--tokens-max-lifetime`` (judged by the record).  It
   returns a :class:`TokenIdentity` or raises :class:`TokenRefused` (401/403
   with a reason).  A token string already verified against the very same
   record object skips loading and the signature check (see
   :class:`~.server_store.VerifiedTokens`); the record lookup and every
   restriction check still run on each request.
3. :func:`refuse_unreadable_body` (after routing, before the view) answers
   400 when a token request's body names its project or target index in a
   way we cannot read exactly as devpi-server will (see :mod:`server_target`).
4. :func:`denials` (from ``devpiserver_auth_denials``) runs whenever devpi
   builds an ACL: every permission the token's restrictions refuse for this
   request is denied, and so is every ``user_*`` permission.  Reading is
   allowed on the bases of an allowed index; writing only on the index.
5. :func:`token_tween_factory` verifies the token before any view runs, turns
   a refusal into a response, and replaces devpi's generic 401/403 with the
   token's reason when one of our denials caused it.  The credentials it
   extracts are kept on the request for devpi's identity lookup, so the
   headers are decoded once.
"""
from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
import json
import re
import time

from pyramid.authorization import Everyone
from pyramid.response import Response

from . import server_replica
from .restrictions import KNOWN_PERMISSIONS
from .restrictions import READ_PERMISSIONS
from .restrictions import ClientNetworks
from .restrictions import Context
from .restrictions import Restriction
from .restrictions import TokenError
from .restrictions import check_all
from .server_audit import audit
from .server_inheritance import BasesGuard
from .server_inheritance import resolution_order
from .server_log import log
from .server_store import VerifiedToken
from .server_target import Target
from .server_target import has_body_target
from .server_target import request_target
from .server_target import route_target
from .server_usage import record_request
from .tokens import Token
from .tokens import looks_like_token


if TYPE_CHECKING:
    from pyramid.registry import Registry
    from pyramid.request import Request

    from .server_store import TokenStore


STORE_KEY = "devpi_tokens.store"
#: Registry key of the :class:`~.server_usage.UsageRecorder` (absent: recording off).
RECORDER_KEY = "devpi_tokens.usage"

#: Usernames that mean "the token's own user" in basic auth.
ANY_USER_NAMES = frozenset({"", "__token__"})

USER_PERMISSION_REASON = (
    "a token cannot be used for '{permission}': tokens never change users, "
    "passwords or tokens; log in with the password instead")

#: Reason of every write refused because the body could not be read.
UNREADABLE_REASON = "the request body cannot be read the way devpi-server reads it: {why}"


class TokenRefused(Exception):
    """A request's token is not accepted; ``status`` is 401 or 403."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class TokenIdentity:
    """devpi-server identity of a request authenticated by a token.

    devpi needs ``username`` and ``groups``; the rest is for enforcement.
    The identity lives as long as its request (devpi caches it per request).
    """

    def __init__(
        self, user: str, token_id: str, restrictions: tuple[Restriction, ...], now: int,
        client_address: str | None = None,
    ) -> None:
        self.username = user
        self.groups: list[str] = []
        self.token_id = token_id
        self.restrictions = restrictions
        self.now = now
        #: the client address the restrictions are checked against
        self.client_address = client_address
        #: reason of the last permission check our denials refused
        self.last_denial: str | None = None
        self._target: Target | None = None
        self._bases: dict[str, frozenset[str]] = {}

    def target(self, request: Request) -> Target:
        """What the request acts on, read once per request."""
        if self._target is None:
            self._target = request_target(request)
        return self._target

    def known_target(self, request: Request) -> Target:
        """What the request acts on, without reading its body for it.

        The target as enforcement read it, when it did; otherwise the
        route's project and index only (for logs and usage, after the view).
        """
        if self._target is not None:
            return self._target
        return route_target(request)

    def bases_of(self, request: Request, index: str) -> frozenset[str]:
        """The indexes ``index`` inherits from, recursively (once per request)."""
        if index not in self._bases:
            self._bases[index] = resolution_order(request.registry["xom"], index)
        return self._bases[index]

    def __repr__(self) -> str:
        # never the token itself
        return f"<TokenIdentity {self.username}-{self.token_id}>"


# ---------------------------------------------------------------------------
# finding and authenticating the token

def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def find_token(credentials: Any) -> tuple[str, str] | None:
    """``(claimed username, token)`` if the credentials carry a token.

    Accepted: password = token (any username; checked later), or username =
    token with an empty password.
    """
    if not isinstance(credentials, tuple) or len(credentials) != 2:
        return None
    username, password = credentials
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    if password and looks_like_token(password):
        return username, password
    if not password and username and looks_like_token(username):
        return "", username
    return None


def refuse_impossible_username(credentials: Any) -> None:
    """Refuse password credentials whose user name contains ``/``.

    devpi-server 6.x looks such a name up in keyfs, which raises ValueError
    (a 500 with a traceback in the log).  No user can have such a name, so
    the answer is a plain 401 before devpi tries.
    """
    if not isinstance(credentials, tuple) or len(credentials) != 2:
        return
    username = credentials[0]
    if isinstance(username, str) and "/" in username:
        raise TokenRefused(401, "user names cannot contain '/'")


def get_store(request: Request) -> TokenStore:
    store: TokenStore = request.registry[STORE_KEY]
    return store


def authenticate(request: Request, claimed_user: str, raw: str) -> TokenIdentity:
    """Check a token once per request; raise :class:`TokenRefused` if bad."""
    try:
        return _authenticate(
            get_store(request), claimed_user, raw, int(time.time()), client_address(request))
    except TokenRefused as refused:
        log().info("token refused: %s", refused.reason)
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the token holds, never a 500
        # only the exception's type: its text might quote the token
        log().error("token check failed with %s", type(exc).__name__)
        raise TokenRefused(401, "the token could not be verified") from None


def client_address(request: Request) -> str | None:
    """The client's address as devpi-server sees it (``REMOTE_ADDR``).

    Behind a proxy, devpi-server's ``--trusted-proxy`` options make waitress
    put the forwarded client there (for trusted peers only); no forwarded
    header is read here.
    """
    address = request.remote_addr
    return address if isinstance(address, str) and address else None


def _authenticate(
    store: TokenStore, claimed_user: str, raw: str, now: int,
    client_address: str | None = None,
) -> TokenIdentity:
    user, token_id, restrictions, record = _verified(store, raw)
    if claimed_user not in ANY_USER_NAMES and claimed_user != user:
        raise TokenRefused(403, f"token belongs to user '{user}', not '{claimed_user}'")
    # Restrictions that hold whatever the request does: validity window,
    # user, PyPI project ids (401), client networks (403: the token is
    # good, but not from here).  The rest waits for the permission checks.
    ctx = Context(user=user, now=now, client_address=client_address)
    networks = [r for r in restrictions if isinstance(r, ClientNetworks)]
    result = check_all((r for r in restrictions if r not in networks), ctx)
    if not result:
        raise TokenRefused(401, result.reason)
    # --tokens-max-lifetime: judged by the record, so a derived token
    # lives as long as the token it was derived from
    limit = store.max_lifetime
    if limit is not None and limit.exceeded_by_record(record):
        raise TokenRefused(401, limit.refusal(user, token_id))
    result = check_all(networks, ctx)
    if not result:
        raise TokenRefused(403, result.reason)
    return TokenIdentity(user, token_id, restrictions, now, client_address)


def _verified(
    store: TokenStore, raw: str,
) -> tuple[str, str, tuple[Restriction, ...], Mapping[str, Any]]:
    """User, id, restrictions and record of a token signed with its record's current key.

    A token string verified before against the very same record object
    (see :class:`~.server_store.VerifiedTokens`) skips loading and the
    signature check; anything else is checked in full, and only a
    success is remembered.
    """
    cached = store.verified.get(raw)
    if cached is not None:
        record, handle = store.find_record(cached.user, cached.token_id)
        if record is not None and handle is not None and handle is cached.record:
            return cached.user, cached.token_id, cached.restrictions, record
        # deleted or rewritten since: forget it, and check it all again
        store.verified.discard(raw)
    try:
        token = Token.load(raw)
    except TokenError as exc:
        raise TokenRefused(401, f"malformed token: {exc}") from None
    user, token_id = token.user, token.token_id
    record, handle = None, None
    if "/" not in user:
        record, handle = store.find_record(user, token_id)
    if record is None:
        # on a replica: maybe not replicated yet, or the replica can't work
        refusal = server_replica.refuse_unknown(store.xom, user, token_id)
        if refusal is not None:
            raise TokenRefused(*refusal)
        raise TokenRefused(
            401, f"token {token_id} of user '{user}' was deleted or never existed")
    key = store.key_for(user, token_id, record)
    if key is None or not token.verify_signature(key):
        # on a replica: most likely not the primary's secret
        refusal = server_replica.refuse_bad_signature(store.xom, user, token_id)
        if refusal is not None:
            raise TokenRefused(*refusal)
        raise TokenRefused(
            401, f"token {token_id} of user '{user}' has an invalid signature "
            "(the token was altered, or the server secret changed)")
    if handle is not None:
        store.verified.put(raw, VerifiedToken(user, token_id, token.restrictions, handle))
    return user, token_id, token.restrictions, record


# ---------------------------------------------------------------------------
# denials

class _DeniedPermission(frozenset[str]):
    """The permission part of one Deny ACE that remembers why it denies.

    Pyramid's ACL check asks ``permission in ace_permissions``; when that
    hits, we note the reason on the identity, so the response can say which
    restriction refused the request.
    """

    reason: str
    identity: TokenIdentity

    def __new__(cls, permission: str, reason: str, identity: TokenIdentity) -> _DeniedPermission:
        self = super().__new__(cls, (permission,))
        self.reason = reason
        self.identity = identity
        return self

    def __contains__(self, permission: object) -> bool:
        hit = frozenset.__contains__(self, permission)
        if hit:
            self.identity.last_denial = self.reason
        return hit

    def __reduce__(self) -> tuple[type[frozenset[str]], tuple[tuple[str, ...]]]:
        # plain frozenset when copied or pickled
        return (frozenset, (tuple(self),))


def _acl_permissions(acl: Iterable[Any]) -> set[str]:
    permissions = set(KNOWN_PERMISSIONS)
    for ace in acl:
        try:
            value = ace[2]
        except (TypeError, IndexError, KeyError):
            continue
        if isinstance(value, str):
            permissions.add(value)
        elif isinstance(value, Iterable):
            permissions.update(x for x in value if isinstance(x, str))
    return permissions


def denials(
    request: Request, acl: Iterable[Any], stage: Any,
) -> set[tuple[str, frozenset[str]]] | None:
    """Deny ACEs for every permission the request's token may not use."""
    identity = getattr(request, "identity", None)
    if not isinstance(identity, TokenIdentity):
        return None
    permissions = _acl_permissions(acl)
    try:
        reasons = _reasons(request, identity, permissions, stage)
    except Exception as exc:  # noqa: BLE001 - fail closed, never a 500
        log().error("token restrictions could not be checked: %s", type(exc).__name__)
        reasons = {p: "the token's restrictions could not be checked" for p in permissions}
    return {
        (Everyone, _DeniedPermission(permission, reason, identity))
        for permission, reason in reasons.items()}


def _reasons(
    request: Request, identity: TokenIdentity, permissions: set[str], stage: Any,
) -> dict[str, str]:
    target = identity.target(request)
    indexes = target.indexes
    stage_name = getattr(stage, "name", None)
    if isinstance(stage_name, str) and stage_name not in indexes:
        # permission checked on another index than the URL's (push target)
        indexes = (*indexes, stage_name)
    reasons = {}
    for permission in permissions:
        if permission.startswith("user_"):
            reasons[permission] = USER_PERMISSION_REASON.format(permission=permission)
            continue
        if target.unreadable is not None and permission not in READ_PERMISSIONS:
            reasons[permission] = UNREADABLE_REASON.format(why=target.unreadable)
            continue
        ctx = Context(
            user=identity.username, now=identity.now, permission=permission,
            indexes=indexes, project=target.project,
            client_address=identity.client_address,
            bases_of=lambda index: identity.bases_of(request, index))
        result = check_all(identity.restrictions, ctx)
        if not result:
            reasons[permission] = result.reason
    return reasons


# ---------------------------------------------------------------------------
# responses

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _status_phrase(reason: str) -> str:
    # The reason goes into the HTTP status line, which devpi upload, twine
    # and pip show; it must be one line of printable ASCII.
    phrase = _UNPRINTABLE.sub("?", reason)
    return phrase if len(phrase) <= 300 else phrase[:297] + "..."


def refusal_response(request: Request, status: int, reason: str) -> Response:
    """401/403 carrying ``reason`` in the status line and the body."""
    if "application/json" in request.headers.get("Accept", ""):
        body = json.dumps({"message": reason}, indent=2) + "\n"
        content_type = "application/json"
    else:
        body = reason + "\n"
        content_type = "text/plain"
    response = Response(
        body=body.encode("utf-8"), status=f"{status} {_status_phrase(reason)}",
        content_type=content_type, charset="utf-8")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="pypi"'
    return response


#: Request attribute holding the credentials of a token request, as the
#: tween extracted them (see :func:`_request_has_token`).
CREDENTIALS_ATTR = "_devpi_tokens_credentials"


#: devpi's password login: it authenticates the user and password in its
#: body, whatever login the client sent along (devpi-client sends its
#: current one, a token after ``token-login``).
LOGIN_PATH = "/+login"


def _request_has_token(request: Request) -> bool:
    if request.path_info == LOGIN_PATH:
        return False
    hook = request.registry["xom"].config.hook
    credentials = hook.devpiserver_get_credentials(request=request)
    if find_token(credentials) is None:
        return False
    # devpi's identity lookup asks the credential hooks again; our first
    # hook hands it these, so the headers are decoded once per request.
    # Only token requests: password logins go through devpi untouched.
    setattr(request, CREDENTIALS_ATTR, credentials)
    return True


def extracted_credentials(request: Any) -> tuple[str, str] | None:
    """The credentials :func:`_request_has_token` found on this request, if any."""
    return getattr(request, CREDENTIALS_ATTR, None)


def token_tween_factory(
    handler: Callable[[Request], Response], registry: Registry,
) -> Callable[[Request], Response]:
    """Tween (inside the keyfs transaction): verify early, explain refusals."""

    def token_tween(request: Request) -> Response:
        identity: Any = None  # devpi-server's request.identity
        guard: BasesGuard | None = None
        try:
            if _request_has_token(request):
                # loads (and caches) the identity: the token is checked here,
                # once, before any view runs
                identity = request.identity
                guard = BasesGuard.start(request, identity.restrictions)
            response = handler(request)
        except TokenRefused as refused:
            response = refusal_response(request, refused.status, refused.reason)
        else:
            response = _explained(request, identity, guard, response, registry)
        if isinstance(identity, TokenIdentity):
            _after(request, identity, response, registry)
        return response

    return token_tween


def _after(
    request: Request, identity: TokenIdentity, response: Response, registry: Registry,
) -> None:
    """The audit line, and the use (when devpi answered with success).

    Inside devpi's transaction: whatever goes wrong here must not undo the
    request (an upload already done), so it is logged, by type only.
    """
    try:
        target = identity.known_target(request)
        audit(request, identity, target, response.status_code)
        record_request(
            registry.get(RECORDER_KEY), request, response, identity.username,
            identity.token_id, identity.client_address, target)
    except Exception as exc:  # noqa: BLE001
        log().error("devpi-tokens: audit or usage failed with %s", type(exc).__name__)


def _explained(
    request: Request, identity: Any, guard: BasesGuard | None, response: Response,
    registry: Registry,
) -> Response:
    """The response, or the token's own refusal with its reason."""
    if guard is not None and response.status_code < 400:
        widening = guard.widening()
        if widening is not None:
            # nothing of this request is stored
            registry["xom"].keyfs.tx.doom()
            log().info(
                "token %s-%s refused: %s", identity.username, identity.token_id, widening)
            return refusal_response(request, 403, widening)
    if (
        isinstance(identity, TokenIdentity)
        and identity.last_denial is not None
        and response.status_code in (401, 403)
    ):
        log().info(
            "token %s-%s denied: %s",
            identity.username, identity.token_id, identity.last_denial)
        return refusal_response(request, 403, identity.last_denial)
    return response


def refuse_unreadable_body(event: Any) -> None:
    """``ContextFound`` subscriber: a token write whose body we cannot read is a 400.

    Runs after routing and before the view, so devpi-server never acts on
    (or fails with a 500 over) a body whose project or target index we could
    not read as it will.  Requests without a token are left to devpi.
    """
    request = event.request
    if extracted_credentials(request) is None or not has_body_target(request):
        return
    if request.registry["xom"].is_replica():
        # a replica relays writes as they are; its primary judges them
        return
    identity = request.identity
    if not isinstance(identity, TokenIdentity):
        return
    target = identity.target(request)
    if target.unreadable is not None:
        log().info(
            "token %s-%s refused: %s", identity.username, identity.token_id, target.unreadable)
        raise TokenRefused(400, UNREADABLE_REASON.format(why=target.unreadable))


def credentials_from_bearer(request: Request) -> tuple[str, str] | None:
    """Credentials for devpi from a Bearer header that holds a token."""
    token = bearer_token(request)
    if token is None or not looks_like_token(token):
        return None
    return "", token
