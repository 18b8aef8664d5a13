"""Server options and settings of trusted publishing.

:func:`add_parser_options` adds the options; :meth:`OIDCSettings.from_xom`
reads them once at startup and checks them (a bad value raises
:class:`ConfigError`, which stops the server with its message).

The default audience is derived from the server secret: the plugin's base key
(devpi-server's derived key for the label ``devpi-tokens``, the one
:class:`devpi_tokens.server_store.TokenStore` uses) through HMAC-SHA256 with a
label of its own.  Primary and replicas share ``--secretfile``, so they answer
the same audience, and it stays the same across restarts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Final
from urllib.parse import urlsplit
import hashlib
import hmac
import json
import re

import jwt

DEFAULT_ISSUERS: Final = (
    "https://token.actions.githubusercontent.com",
    "https://gitlab.com",
)

#: The form of an audience (GitLab names a CI variable after it).
AUDIENCE_RE: Final = re.compile(r"[a-z][a-z0-9-]*")
AUDIENCE_MAX_CHARS: Final = 128

#: HMAC message for the default audience (domain separation).
AUDIENCE_LABEL: Final = b"devpi-tokens oidc audience"

#: Label of devpi-server's derived key that is the plugin's base key
#: (equal to devpi_tokens.server_store.BASE_KEY_LABEL).
BASE_KEY_LABEL: Final = b"devpi-tokens"

#: Largest JWKS file or document we read.
JWKS_MAX_BYTES: Final = 1024 * 1024

#: The only signature algorithms accepted.
ALGORITHMS: Final = ("RS256", "ES256")

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


class ConfigError(Exception):
    """A trusted-publishing option with a bad value; the message says which and why."""


@dataclass(frozen=True)
class IssuerSource:
    """A trusted issuer: its ``iss`` URL and, for ``URL=PATH``, its JWKS file."""

    url: str
    jwks_file: Path | None = None


@dataclass(frozen=True)
class OIDCSettings:
    """Trusted publishing as configured: read once at startup."""

    enabled: bool
    audience: str
    issuers: tuple[IssuerSource, ...]
    offline: bool

    def issuer(self, url: str) -> IssuerSource | None:
        """The trusted issuer whose URL is exactly ``url``, or None."""
        for source in self.issuers:
            if source.url == url:
                return source
        return None

    @classmethod
    def from_xom(cls, xom: Any) -> OIDCSettings:
        """The settings of this server, from ``xom.config`` (raises :class:`ConfigError`)."""
        args = xom.config.args
        enabled = not getattr(args, "no_trusted_publishing", False)
        audience = getattr(args, "oidc_audience", None)
        if audience is None:
            secret = bytes(xom.config.get_derived_key(BASE_KEY_LABEL))
            audience = derive_audience(secret)
        else:
            audience = validate_audience(audience)
        given = getattr(args, "oidc_issuer", None) or list(DEFAULT_ISSUERS)
        issuers = parse_issuers(given)
        return cls(
            enabled=enabled,
            audience=audience,
            issuers=issuers,
            offline=bool(getattr(args, "offline_mode", False)))


def add_parser_options(parser: Any) -> None:
    """Add the options to devpi-server's parser (from ``devpiserver_add_parser_options``)."""
    addgroup = getattr(parser, "addgroup", None) or parser.add_argument_group
    group = addgroup("devpi-tokens trusted publishing")
    group.add_argument(
        "--no-trusted-publishing", action="store_true", dest="no_trusted_publishing",
        default=False,
        help="turn trusted publishing (CI uploads with their OIDC identity) off")
    group.add_argument(
        "--oidc-audience", metavar="TEXT", dest="oidc_audience", default=None,
        help="the audience CI identity tokens must be issued for: a lower-case letter, "
             "then lower-case letters, digits and '-'. Default: derived from the server "
             "secret (the same on replicas and across restarts with --secretfile)")
    group.add_argument(
        "--oidc-issuer", metavar="URL[=PATH]", dest="oidc_issuer", action="append",
        default=None,
        help="trust the OIDC issuer URL (repeatable). With =PATH its signing keys are "
             "read from that JWKS file instead of being fetched. Default: "
             + " and ".join(DEFAULT_ISSUERS))


def derive_audience(secret: bytes) -> str:
    """The default audience for a server secret: ``devpi-`` and 20 hex digits."""
    digest = hmac.new(secret, AUDIENCE_LABEL, hashlib.sha256).hexdigest()
    return "devpi-" + digest[:20]


def validate_audience(value: str) -> str:
    """``value`` if it is a valid audience, else :class:`ConfigError`."""
    if (not isinstance(value, str) or len(value) > AUDIENCE_MAX_CHARS
            or AUDIENCE_RE.fullmatch(value) is None):
        raise ConfigError(
            f"--oidc-audience {value!r} is not valid: it must be a lower-case letter, "
            f"then lower-case letters, digits and '-' (at most {AUDIENCE_MAX_CHARS} "
            "characters)")
    return value


def gitlab_variable_name(audience: str) -> str:
    """The GitLab CI variable of an ID token for ``audience``: ``<AUDIENCE>_ID_TOKEN``."""
    return re.sub(r"[^A-Z0-9]", "_", audience.upper()) + "_ID_TOKEN"


def url_problem(url: str, what: str) -> str | None:
    """Why ``url`` is no acceptable issuer or JWKS URL, or None.

    https with a host; http only on loopback (tests); no query or fragment.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return f"{what} {url!r} is not a URL ({exc})"
    if parts.scheme == "https" and host:
        pass
    elif parts.scheme == "http" and host in LOOPBACK_HOSTS:
        pass
    else:
        return f"{what} {url!r} must be an https:// URL (http:// only on 127.0.0.1/localhost)"
    if parts.query or parts.fragment or "#" in url:
        return f"{what} {url!r} must have no query or fragment"
    return None


def parse_issuer(text: str) -> IssuerSource:
    """One ``--oidc-issuer`` value, ``URL`` or ``URL=PATH`` (split at the first '=')."""
    url, sep, path = text.partition("=")
    problem = url_problem(url, "--oidc-issuer")
    if problem is not None:
        raise ConfigError(problem)
    if not sep:
        return IssuerSource(url, None)
    if not path:
        raise ConfigError(f"--oidc-issuer {text!r}: the JWKS file path after '=' is empty")
    jwks_file = Path(path).expanduser().absolute()
    read_jwks_file(jwks_file, url)
    return IssuerSource(url, jwks_file)


def parse_issuers(values: list[str] | tuple[str, ...]) -> tuple[IssuerSource, ...]:
    """All ``--oidc-issuer`` values; an issuer URL given twice is an error."""
    issuers = tuple(parse_issuer(value) for value in values)
    seen: set[str] = set()
    for source in issuers:
        if source.url in seen:
            raise ConfigError(f"--oidc-issuer {source.url!r} is given more than once")
        seen.add(source.url)
    return issuers


def read_jwks_file(path: Path, issuer: str) -> dict[str, Any]:
    """The JWKS document in ``path`` (``{"keys": [...]}``), else :class:`ConfigError`."""
    try:
        with path.open("rb") as f:
            data = f.read(JWKS_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"--oidc-issuer {issuer}: cannot read the JWKS file {str(path)!r}: "
            f"{exc.strerror or exc}") from None
    if len(data) > JWKS_MAX_BYTES:
        raise ConfigError(
            f"--oidc-issuer {issuer}: the JWKS file {str(path)!r} is larger than "
            f"{JWKS_MAX_BYTES} bytes")
    try:
        document = parse_jwks(data)
        usable_keys(document)
    except ValueError as exc:
        raise ConfigError(
            f"--oidc-issuer {issuer}: the JWKS file {str(path)!r} is no usable JWKS: "
            f"{exc}") from None
    return document


def parse_jwks(data: bytes) -> dict[str, Any]:
    """A JWKS document from bytes: a JSON object with a non-empty ``keys`` list.

    Raises ValueError with the reason.  Whether the keys are usable is for
    :mod:`devpi_tokens.oidc_keys` to say.
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError("no 'keys' list (or an empty one)")
    if not all(isinstance(key, dict) for key in keys):
        raise ValueError("an entry of 'keys' is not a JSON object")
    return document


def usable_keys(document: dict[str, Any]) -> tuple[jwt.PyJWK, ...]:
    """The signature keys of a JWKS document usable with RS256 or ES256.

    Other keys (encryption keys, other algorithms or key types) are left
    out; none left raises ValueError.
    """
    found = []
    for entry in document.get("keys", ()):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if key.algorithm_name in ALGORITHMS:
            found.append(key)
    if not found:
        raise ValueError("no RS256 or ES256 signature key in it")
    return tuple(found)
