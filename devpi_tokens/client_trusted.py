"""``devpi token-login --trusted-publishing``: a CI job's identity for a devpi token.

The exchange uv and pypa/gh-action-pypi-publish make, done by devpi-client:

1. ``GET <root>/_/oidc/audience`` gives the audience the server expects;
2. the CI platform issues an OIDC identity token (a JWT) for that audience,
   found in the job's environment by the ``id`` package (GitHub Actions,
   GitLab CI, Buildkite, CircleCI, Google Cloud);
3. ``POST <root>/_/oidc/mint-token`` with ``{"token": <jwt>}`` answers with a
   short-lived devpi-tokens token of the publisher's user.

token-login then logs in with that token as with any other.  Neither the
JWT nor the minted token ever appears in a message.

Certificates: devpi-client talks to the server with requests, which trusts
``REQUESTS_CA_BUNDLE``; ``id`` asks the CI platform with urllib3, which
trusts ``SSL_CERT_FILE``.  A private CA must be named in the one that
applies (both, when the CI platform's endpoint uses it too).

This module only needs the hub's HTTP access and imports nothing from the
command modules (client_commands imports it).
"""
from __future__ import annotations

import json
import re
import ssl
from typing import Any

import id as ci_identity
import urllib3

from .client_io import ClientError

#: the server's audience: short and printable (a devpi-tokens server's is
#: ``[a-z][a-z0-9-]*``; other servers' are left to them)
MAX_AUDIENCE = 256

#: ``id`` puts the CI platform's whole answer into some errors; enough to read
MAX_DETAIL = 300

#: the character rule GitLab's ``<AUD>_ID_TOKEN`` variable name follows in ``id``
_NOT_IN_VARIABLE = re.compile(r"[^A-Z0-9_]|^[^A-Z_]")


def oidc_url(hub: Any, name: str) -> Any:
    """``<root>/_/oidc/<name>`` for the server devpi-client is using.

    uv and the GitHub action always call the *host* root
    (``scheme://host[:port]/_/oidc/...``) whatever path the index URL has.
    Here the root is the one devpi-client knows (``hub.current.root_url``,
    where ``devpi use`` found ``+api``): the same as the host root for a
    devpi at ``/``, and the devpi's own root when it is served under a
    sub-path behind a proxy (``https://host/devpi/_/oidc/...``), which reaches
    devpi-server's ``/_/oidc/`` routes even where the proxy does not also
    pass the host's ``/_/oidc/`` to devpi.
    """
    return hub.current.root_url.addpath("_/oidc").addpath(name)


def gitlab_variable(audience: str) -> str:
    """The variable GitLab jobs must name their ``id_tokens:`` entry (as ``id`` reads it)."""
    return _NOT_IN_VARIABLE.sub("_", audience.upper()) + "_ID_TOKEN"


def _json_body(reply: Any) -> dict[str, Any]:
    """The answer as a JSON object, or {} (whatever its Content-Type says)."""
    try:
        data = json.loads(reply.content or b"null")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _short(text: str, limit: int = MAX_DETAIL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _status(reply: Any) -> str:
    message = _json_body(reply).get("message")
    status = f"{reply.status_code} {reply.reason}"
    if isinstance(message, str) and message and message != reply.reason:
        status += f": {_short(message)}"
    return status


def _missing_endpoint(reply: Any) -> bool:
    return bool(reply.status_code in (404, 405))


NOT_SUPPORTED = (
    "is devpi-tokens 2.0 or later installed on the server, and does a proxy in front "
    "of it pass /_/oidc/ on to devpi?")


def get_audience(hub: Any) -> str:
    """The audience the server wants in the identity token."""
    url = oidc_url(hub, "audience")
    # no credentials: the endpoint is public, and the job may have none
    reply = hub.http_api("get", url, None, quiet=True, fatal=False, auth=None)
    if reply.status_code == 403:
        raise ClientError(
            f"trusted publishing is disabled on this server ({_status(reply)})")
    if _missing_endpoint(reply):
        raise ClientError(
            f"the server does not offer trusted publishing ({reply.status_code} "
            f"{reply.reason} for {url.url}): {NOT_SUPPORTED}")
    if reply.status_code != 200:
        raise ClientError(f"cannot get the server's audience: {_status(reply)}")
    audience = _json_body(reply).get("audience")
    if (not isinstance(audience, str) or not audience or len(audience) > MAX_AUDIENCE
            or not audience.isprintable()):
        raise ClientError(
            f"the server's answer at {url.url} has no usable audience: {NOT_SUPPORTED}")
    return audience


def identity_token(audience: str) -> str:
    """The CI platform's OIDC token for ``audience``, from the job's environment."""
    try:
        credential = ci_identity.detect_credential(audience)
    except (ci_identity.IdentityError, urllib3.exceptions.HTTPError, OSError,
            ValueError) as exc:
        raise ClientError(
            f"cannot get the CI job's identity token: {_identity_problem(exc)}") from None
    if not credential:
        raise ClientError(
            "no CI identity token found: trusted publishing works in a CI job of "
            "GitHub Actions (give the job 'permissions: id-token: write'), GitLab CI "
            f"(an 'id_tokens:' entry {gitlab_variable(audience)} with 'aud: {audience}'), "
            "Buildkite, CircleCI or Google Cloud")
    return credential


def _identity_problem(exc: BaseException) -> str:
    """``id``'s message, with the network problem it hides, and a hint for TLS ones.

    ``id`` reports any failed request to the CI platform as "timed out"; the
    urllib3 error it caught says what really happened (refused, TLS, ...).
    """
    text = _short(str(exc)) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, urllib3.exceptions.MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    if cause is not None:
        detail = _short(str(cause), 200) or type(cause).__name__
        if detail not in text:
            text += f" ({detail})"
    if isinstance(cause, (urllib3.exceptions.SSLError, ssl.SSLError)) or (
            "CERTIFICATE_VERIFY_FAILED" in text):
        text += "; a private CA for the CI platform goes in SSL_CERT_FILE"
    return text


def _refusal_reasons(body: dict[str, Any]) -> str:
    """``code: description; ...`` from a 422 answer's ``errors``."""
    errors = body.get("errors")
    parts: list[str] = []
    if isinstance(errors, list):
        for error in errors:
            if not isinstance(error, dict):
                continue
            code, description = error.get("code"), error.get("description")
            text = ": ".join(_short(str(v)) for v in (code, description) if v)
            if text:
                parts.append(text)
    if not parts and isinstance(body.get("message"), str):
        parts.append(_short(body["message"]))
    return "; ".join(parts) or "no reason given"


def mint_token(hub: Any, jwt: str) -> str:
    """Exchange the identity token for a devpi token at the server."""
    url = oidc_url(hub, "mint-token")
    reply = hub.http_api("post", url, {"token": jwt}, quiet=True, fatal=False, auth=None)
    body = _json_body(reply)
    if reply.status_code == 200:
        token = body.get("token")
        if body.get("success") is not True or not isinstance(token, str) or not token:
            raise ClientError(f"the server's answer at {url.url} has no token")
        return token
    if reply.status_code == 422:
        raise ClientError(
            f"the server refused the identity token: {_refusal_reasons(body)}")
    if _missing_endpoint(reply):
        raise ClientError(
            f"the server does not offer trusted publishing ({reply.status_code} "
            f"{reply.reason} for {url.url}): {NOT_SUPPORTED}")
    raise ClientError(f"the token exchange failed: {_status(reply)}")


def exchange(hub: Any) -> str:
    """The whole exchange: audience, identity token, minted devpi token."""
    audience = get_audience(hub)
    return mint_token(hub, identity_token(audience))
