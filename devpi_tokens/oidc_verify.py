"""Verify a CI identity token (a JWT) from a trusted issuer, with PyJWT.

:func:`verify_jwt` answers the verified claims or raises
``OIDCError("invalid-token", <reason for a person>)``.  Accepted: RS256 and
ES256 signatures by a key of a trusted issuer, ``aud`` exactly this server's
audience, ``exp``, ``iat``, ``iss``, ``aud`` and ``jti`` present, ``exp``,
``iat`` and ``nbf`` within :data:`LEEWAY` seconds of the server's clock.
"""
from __future__ import annotations

from datetime import datetime
from datetime import timezone
from typing import Any
from typing import Final

import jwt

from .oidc_config import ALGORITHMS
from .oidc_config import OIDCSettings
from .oidc_errors import OIDCError
from .oidc_keys import KeyRing

#: Seconds of clock difference tolerated for exp, iat and nbf.
LEEWAY: Final = 60
#: Longest JWT accepted, characters.
MAX_JWT_CHARS: Final = 16 * 1024
#: Longest jti accepted (GitHub's and GitLab's are UUIDs).
MAX_JTI_CHARS: Final = 256
_BAD_JTI: Final = f"the token's jti claim is not a string of 1 to {MAX_JTI_CHARS} characters"
#: Claims a token must have.
REQUIRED_CLAIMS: Final = ("exp", "iat", "iss", "aud", "jti")


class _NeverRaised(Exception):
    pass


#: PyJWT >= 2.10 checks that jti is a string itself.
_INVALID_JTI: type[Exception] = getattr(jwt.exceptions, "InvalidJTIError", _NeverRaised)


def _show(value: Any, limit: int = 100) -> str:
    """``value`` for a description: repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _when(value: Any) -> str:
    """A NumericDate as an ISO time (UTC), or the value itself if it is none."""
    try:
        return datetime.fromtimestamp(float(value), tz=timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return _show(value)


def _refuse(description: str) -> OIDCError:
    return OIDCError("invalid-token", description)


def verify_jwt(
    raw: str, settings: OIDCSettings, keys: KeyRing, now: float | None = None,
) -> dict[str, Any]:
    """The verified claims of ``raw``, or ``OIDCError("invalid-token", reason)``.

    ``now`` (seconds since the epoch) replaces the clock for exp/iat/nbf;
    None (the server) lets PyJWT use the current time.
    """
    if not isinstance(raw, str) or not raw:
        raise _refuse("the token is not a JWT (an empty or non-string value)")
    if len(raw) > MAX_JWT_CHARS:
        raise _refuse(f"the token is longer than {MAX_JWT_CHARS} characters")
    try:
        header = jwt.get_unverified_header(raw)
        unverified = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _refuse(f"the token is not a JWT ({exc})") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise _refuse(
            f"the token's algorithm {_show(alg)} is not accepted (only RS256, ES256)")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _refuse("the token's kid is not a string")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str):
        raise _refuse("the token has no iss claim" if issuer is None
                      else "the token's iss claim is not a string")
    if settings.issuer(issuer) is None:
        raise _refuse(f"issuer {_show(issuer)} is not trusted by this server")
    key = keys.key_for(issuer, kid, alg)
    check_times = now is None
    try:
        claims: dict[str, Any] = jwt.decode(
            raw, key.key, algorithms=[alg], audience=settings.audience, issuer=issuer,
            leeway=LEEWAY,
            options={
                "require": list(REQUIRED_CLAIMS),
                "strict_aud": True,
                "verify_exp": check_times,
                "verify_iat": check_times,
                "verify_nbf": check_times,
            })
    except jwt.ExpiredSignatureError:
        raise _refuse(f"the token expired at {_when(unverified.get('exp'))}") from None
    except jwt.ImmatureSignatureError as exc:
        raise _refuse(_immature(unverified, "nbf" if "(nbf)" in str(exc) else "iat")) from None
    except jwt.InvalidAudienceError:
        raise _refuse(
            f"the token is for audience {_show(unverified.get('aud'))}, not this "
            f"server's {settings.audience!r}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise _refuse(f"the token has no {exc.claim} claim") from None
    except jwt.InvalidSignatureError:
        raise _refuse(
            f"bad signature: the token is not signed by the key {_show(kid)} of "
            f"{issuer}") from None
    except jwt.InvalidIssuedAtError:
        raise _refuse("the token's iat claim is not a number") from None
    except _INVALID_JTI:
        raise _refuse(_BAD_JTI) from None
    except jwt.PyJWTError as exc:
        raise _refuse(f"the token is not valid ({_show(str(exc), 200)})") from None
    if now is not None:
        _check_times(claims, now)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise _refuse(_BAD_JTI)
    return claims


def _immature(claims: dict[str, Any], claim: str) -> str:
    if claim == "nbf":
        return f"the token is not valid before {_when(claims.get('nbf'))} (nbf)"
    return (f"the token was issued in the future ({_when(claims.get('iat'))}, iat); "
            "check the clocks")


def _number(claims: dict[str, Any], claim: str) -> float | None:
    value = claims.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(f"the token's {claim} claim is not a number")
    return float(value)


def _check_times(claims: dict[str, Any], now: float) -> None:
    """PyJWT's exp/iat/nbf rules against ``now`` instead of the clock."""
    iat = _number(claims, "iat")
    if iat is not None and iat > now + LEEWAY:
        raise _refuse(_immature(claims, "iat"))
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf > now + LEEWAY:
        raise _refuse(_immature(claims, "nbf"))
    exp = _number(claims, "exp")
    if exp is not None and exp <= now - LEEWAY:
        raise _refuse(f"the token expired at {_when(claims.get('exp'))}")
