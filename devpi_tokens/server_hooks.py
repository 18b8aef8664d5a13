"""devpi-server hook implementations (entry point ``devpi_server``).

The wiring only; the logic lives in :mod:`server_store` (records, keys),
:mod:`server_enforce` (authentication, restrictions), :mod:`server_target`
(what a request acts on, read as devpi-server reads it) and
:mod:`server_views` (endpoints).
"""
from __future__ import annotations

from typing import Any
from typing import NoReturn

from pluggy import HookimplMarker
from pyramid.events import ContextFound

from . import oidc_config
from . import server_enforce
from . import server_limits
from . import server_replica
from . import server_usage
from .oidc_config import ConfigError
from .oidc_config import OIDCSettings
from .oidc_keys import KeyRing
from .oidc_views import OIDC_KEY
from .oidc_views import OIDCState
from .publishers import MintedTokenPurger
from .publishers import PublisherStore
from .publishers import register_keys
from .server_enforce import STORE_KEY
from .server_enforce import RECORDER_KEY
from .server_limits import LimitError
from .server_limits import MaxLifetime
from .server_log import log
from .server_store import TokenStore
from .server_store import secret_warning
from .server_usage import UsageRecorder


hookimpl = HookimplMarker("devpiserver")

TWEEN = "devpi_tokens.server_enforce.token_tween_factory"


@hookimpl
def devpiserver_add_parser_options(parser: Any) -> None:
    oidc_config.add_parser_options(parser)
    server_limits.add_parser_options(parser)
    server_usage.add_parser_options(parser)


@hookimpl
def devpiserver_pyramid_configure(config: Any, pyramid_config: Any) -> None:
    xom = pyramid_config.registry["xom"]
    store = TokenStore(xom)
    store.max_lifetime = max_lifetime(xom)
    # argon2 runs once here, at startup, not on the first token request
    store.warm_up()
    pyramid_config.registry[STORE_KEY] = store
    warning = secret_warning(xom)
    if warning:
        log(xom.log).warning("devpi-tokens: %s", warning)
    pyramid_config.registry[OIDC_KEY] = oidc_state(xom)
    if not xom.is_replica() and not xom.config.requests_only:
        # expired minted tokens go without anyone asking
        xom.thread_pool.register(MintedTokenPurger(xom, store))
    server_usage.register_usage_key(xom.keyfs)
    recorder = usage_recorder(xom, store)
    if recorder is not None:
        pyramid_config.registry[RECORDER_KEY] = recorder
        # writes (or, on a replica, sends) the recorded uses every interval
        # and at shutdown
        xom.thread_pool.register(recorder)
    pyramid_config.include("devpi_tokens.server_views")
    pyramid_config.include("devpi_tokens.oidc_views")
    # mint requests: the JWT (and any key fetch) is checked before devpi's
    # write transaction, so a slow issuer never holds the write lock
    pyramid_config.add_tween(
        "devpi_tokens.oidc_views.verify_before_transaction_tween_factory",
        # both bounds: with `over` alone pyramid may move its exception view
        # tween above the transaction, and devpi's views answer by raising
        under="devpi_server.views.tween_request_logging",
        over="devpi_server.views.tween_keyfs_transaction")
    pyramid_config.add_tween(
        TWEEN, under="devpi_server.views.tween_keyfs_transaction")
    # after routing, before the view: token writes with unreadable bodies
    pyramid_config.add_subscriber(server_enforce.refuse_unreadable_body, ContextFound)
    # replicas only: refusals for a replica that cannot verify or forward
    server_replica.configure(pyramid_config, xom)
    if recorder is not None:
        # last: SIGTERM becomes a clean stop that writes the recorded uses
        server_usage.install_sigterm_handler(xom)


def stop_server(xom: Any, exc: Exception) -> NoReturn:
    """Stop at startup over a bad option, with the reason in the log and on exit."""
    log(xom.log).error("devpi-tokens: %s", str(exc))
    raise SystemExit(f"devpi-tokens: {exc}") from None


def max_lifetime(xom: Any) -> MaxLifetime | None:
    """``--tokens-max-lifetime``, read once at startup; a bad value stops the server."""
    try:
        return server_limits.max_lifetime_from_xom(xom)
    except LimitError as exc:
        stop_server(xom, exc)


def usage_recorder(xom: Any, store: TokenStore) -> UsageRecorder | None:
    """The recorder of token uses (None: ``--tokens-usage-interval 0``)."""
    try:
        interval = server_usage.interval_from_xom(xom)
    except ValueError as exc:
        stop_server(xom, exc)
    return UsageRecorder(xom, store, interval) if interval else None


@hookimpl
def devpiserver_cmdline_run(xom: Any) -> None:
    # runs in the main thread of a real devpi-server process before it
    # serves (tests that build a server in-process never call it)
    server_usage.want_sigterm_handler(xom)


def oidc_state(xom: Any) -> OIDCState:
    """Trusted publishing's settings, issuer keys and store, built once at startup.

    A bad option stops the server here, with the reason.
    """
    try:
        settings = OIDCSettings.from_xom(xom)
        keys = KeyRing(settings)
    except ConfigError as exc:
        stop_server(xom, exc)
    register_keys(xom.keyfs)
    if settings.enabled and settings.offline and any(
            source.jwks_file is None for source in settings.issuers):
        log(xom.log).warning(
            "devpi-tokens: --offline-mode: trusted publishing cannot fetch the signing "
            "keys of issuers given without a JWKS file (--oidc-issuer URL=PATH)")
    return OIDCState(settings, keys, PublisherStore(xom))


@hookimpl(specname="devpiserver_get_credentials", tryfirst=True)
def reuse_extracted_credentials(request: Any) -> tuple[str, str] | None:
    # the token tween already extracted this request's credentials
    return server_enforce.extracted_credentials(request)


@hookimpl
def devpiserver_get_credentials(request: Any) -> tuple[str, str] | None:
    # Authorization: Bearer <token>; devpi's own hooks only know basic auth
    return server_enforce.credentials_from_bearer(request)


@hookimpl(tryfirst=True)
def devpiserver_get_identity(request: Any, credentials: Any) -> Any:
    found = server_enforce.find_token(credentials)
    if found is None:
        # not a token: devpi's normal password check handles it, unless the
        # user name would make devpi-server fail with a 500
        server_enforce.refuse_impossible_username(credentials)
        return None
    return server_enforce.authenticate(request, *found)


@hookimpl
def devpiserver_auth_denials(request: Any, acl: Any, user: Any, stage: Any) -> Any:
    return server_enforce.denials(request, acl, stage)


@hookimpl
def devpiserver_get_features() -> set[str]:
    # "tokens" is what devpi-admin's web UI looks for in /+api to offer its
    # token manager (before login too)
    return {"devpi-tokens", "tokens"}
