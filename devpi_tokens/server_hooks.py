"""devpi-server hook implementations (entry point ``devpi_server``).

The wiring only; the logic lives in :mod:`server_store` (records, keys),
:mod:`server_enforce` (authentication, restrictions), :mod:`server_target`
(what a request acts on, read as devpi-server reads it) and
:mod:`server_views` (endpoints).
"""
from __future__ import annotations

from typing import Any

from pluggy import HookimplMarker
from pyramid.events import ContextFound

from . import server_enforce
from . import server_replica
from .server_enforce import STORE_KEY
from .server_log import log
from .server_store import TokenStore
from .server_store import secret_warning


hookimpl = HookimplMarker("devpiserver")

TWEEN = "devpi_tokens.server_enforce.token_tween_factory"


@hookimpl
def devpiserver_pyramid_configure(config: Any, pyramid_config: Any) -> None:
    xom = pyramid_config.registry["xom"]
    store = TokenStore(xom)
    # argon2 runs once here, at startup, not on the first token request
    store.warm_up()
    pyramid_config.registry[STORE_KEY] = store
    warning = secret_warning(xom)
    if warning:
        log(xom.log).warning("devpi-tokens: %s", warning)
    pyramid_config.include("devpi_tokens.server_views")
    pyramid_config.add_tween(
        TWEEN, under="devpi_server.views.tween_keyfs_transaction")
    # after routing, before the view: token writes with unreadable bodies
    pyramid_config.add_subscriber(server_enforce.refuse_unreadable_body, ContextFound)
    # replicas only: refusals for a replica that cannot verify or forward
    server_replica.configure(pyramid_config, xom)


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
