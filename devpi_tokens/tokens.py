"""The token layer: a ``devpi-`` prefixed pymacaroons macaroon.

Load a token string into a :class:`Token` value (user, id, restrictions),
derive narrower tokens offline, mint new ones with a key, and verify the
signature chain.  Every loading problem raises :class:`MalformedToken`.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Iterable
import re
import secrets

from pymacaroons import Macaroon
from pymacaroons import MACAROON_V2
from pymacaroons import Verifier
from pymacaroons.serializers import BinarySerializer

from .restrictions import Context
from .restrictions import Failure
from .restrictions import MalformedCaveat
from .restrictions import MalformedToken
from .restrictions import Restriction
from .restrictions import Result
from .restrictions import check_all
from .restrictions import expiry_of
from .restrictions import not_before_of
from .restrictions import parse_caveat


PREFIX = "devpi-"

#: Longest token string we try to load.  A token with dozens of caveats is a
#: few kilobytes; anything larger is refused before decoding.
MAX_TOKEN_LENGTH = 16384

#: Most caveats a token may carry.
MAX_CAVEATS = 64

_BASE64URL = re.compile(r"[A-Za-z0-9_=-]+")
_TOKEN_ID = re.compile(r"[A-Za-z0-9_]{1,64}")
_SERIALIZER = BinarySerializer()


def new_token_id() -> str:
    """A short random token id: 10 hex digits, never a ``-``."""
    return secrets.token_hex(5)


def split_identifier(identifier: str) -> tuple[str, str]:
    """Split ``<user>-<token id>``; the user may contain ``-``, the id not."""
    user, sep, token_id = identifier.rpartition("-")
    if not sep or not user or not _TOKEN_ID.fullmatch(token_id):
        raise MalformedToken("token identifier is not of the form '<user>-<token id>'")
    return user, token_id


def _deserialize(body: str) -> Macaroon:
    if not body or not _BASE64URL.fullmatch(body):
        raise MalformedToken("token is not url-safe base64 text")
    try:
        macaroon = _SERIALIZER.deserialize(body)
        canonical = _SERIALIZER.serialize(macaroon)
    except Exception:  # noqa: BLE001
        # pymacaroons raises many kinds of errors on junk input (struct,
        # index, value, unicode errors); all mean the same to a user.
        raise MalformedToken("token could not be decoded as a macaroon") from None
    # pymacaroons ignores bytes after the signature and spare base64 bits;
    # one token must have exactly one spelling.
    if canonical != body.rstrip("="):
        raise MalformedToken("token has extra or altered data after its signature")
    return macaroon


def _identifier(macaroon: Macaroon) -> str:
    try:
        identifier: str = macaroon.identifier_bytes.decode("utf-8")
        return identifier
    except (UnicodeDecodeError, AttributeError):
        raise MalformedToken("token identifier is not valid UTF-8") from None


def _restrictions(macaroon: Macaroon) -> tuple[Restriction, ...]:
    caveats = macaroon.caveats
    if len(caveats) > MAX_CAVEATS:
        raise MalformedToken(f"token has more than {MAX_CAVEATS} restrictions")
    result = []
    for caveat in caveats:
        if caveat.third_party():
            raise MalformedToken("token has a third-party caveat, which devpi does not support")
        try:
            result.append(parse_caveat(caveat.caveat_id_bytes))
        except MalformedCaveat as exc:
            raise MalformedToken(f"token has an invalid restriction: {exc}") from None
    return tuple(result)


@dataclass(frozen=True, repr=False)
class Token:
    """A loaded token: who it belongs to, its id and its restrictions."""

    user: str
    token_id: str
    restrictions: tuple[Restriction, ...]
    # the token string is a secret: never in a repr, str or log line
    raw: str = field(repr=False)
    macaroon: Macaroon = field(repr=False, compare=False)

    def __repr__(self) -> str:
        caveats = ", ".join(r.dump() for r in self.restrictions)
        return f"<Token {self.user}-{self.token_id} [{caveats}]>"

    @classmethod
    def load(cls, raw: str) -> Token:
        """Load a token string (``devpi-...``, or a bare 1.x-derived macaroon)."""
        if not isinstance(raw, str):
            raise MalformedToken("token must be text")
        if len(raw) > MAX_TOKEN_LENGTH:
            raise MalformedToken(f"token is longer than {MAX_TOKEN_LENGTH} characters")
        body = raw.removeprefix(PREFIX)
        macaroon = _deserialize(body)
        user, token_id = split_identifier(_identifier(macaroon))
        return cls(user, token_id, _restrictions(macaroon), raw, macaroon)

    @classmethod
    def mint(
        cls, user: str, token_id: str, key: bytes,
        restrictions: Iterable[Restriction] = (),
    ) -> Token:
        """Make a new token signed with ``key``."""
        split_identifier(f"{user}-{token_id}")
        macaroon = Macaroon(
            location="", identifier=f"{user}-{token_id}", key=key, version=MACAROON_V2)
        return cls._from_macaroon(macaroon, user, token_id, (), restrictions)

    @classmethod
    def _from_macaroon(
        cls, macaroon: Macaroon, user: str, token_id: str,
        existing: tuple[Restriction, ...], added: Iterable[Restriction],
    ) -> Token:
        added = tuple(added)
        for restriction in added:
            macaroon.add_first_party_caveat(restriction.dump())
        raw = PREFIX + macaroon.serialize()
        return cls(user, token_id, existing + added, raw, macaroon)

    def derive(self, *restrictions: Restriction) -> Token:
        """A new token with ``restrictions`` appended; needs no key."""
        if len(self.restrictions) + len(restrictions) > MAX_CAVEATS:
            raise MalformedToken(f"a token may carry at most {MAX_CAVEATS} restrictions")
        return self._from_macaroon(
            self.macaroon.copy(), self.user, self.token_id, self.restrictions, restrictions)

    def dump(self) -> str:
        """The token string; derived tokens always carry the ``devpi-`` prefix."""
        return self.raw

    @property
    def identifier(self) -> str:
        return f"{self.user}-{self.token_id}"

    @property
    def expires(self) -> int | None:
        return expiry_of(self.restrictions)

    @property
    def not_before(self) -> int | None:
        return not_before_of(self.restrictions)

    def verify_signature(self, key: bytes) -> bool:
        """True when the caveat chain was signed starting from ``key``.

        pymacaroons compares signatures in constant time.  Every caveat was
        already parsed by :meth:`load`; they are checked by :meth:`check`.
        """
        verifier = Verifier()
        verifier.satisfy_general(_accept_parsed_caveat)
        try:
            verified: bool = verifier.verify(self.macaroon, key)
            return verified
        except Exception:  # noqa: BLE001 - pymacaroons signals a bad chain in several ways
            return False

    def check(self, key: bytes, ctx: Context) -> Result:
        """Signature first, then every restriction against ``ctx``."""
        if not self.verify_signature(key):
            return Failure("token signature is invalid (wrong server secret or altered token)")
        return check_all(self.restrictions, ctx)

    def __str__(self) -> str:
        return f"token {self.token_id} of user {self.user}"


def _accept_parsed_caveat(caveat: str) -> bool:
    # Caveats are parsed and checked by our own restriction module; the
    # verifier only has to prove the signature chain.
    return True


def looks_like_token(text: str) -> bool:
    """Cheap test whether a password should be treated as a token.

    ``devpi-`` prefixed strings always are (and fail as tokens if broken);
    bare macaroons from 1.x's ``token-derive`` are when they decode with a
    ``<user>-<id>`` identifier.
    """
    if text.startswith(PREFIX):
        return True
    if len(text) < 40 or len(text) > MAX_TOKEN_LENGTH or not _BASE64URL.fullmatch(text):
        return False
    try:
        macaroon = _SERIALIZER.deserialize(text)
        split_identifier(_identifier(macaroon))
    except Exception:  # noqa: BLE001 - any decoding failure means "not a token"
        return False
    return True


__all__ = [
    "PREFIX", "MAX_TOKEN_LENGTH", "MAX_CAVEATS", "Token",
    "new_token_id", "split_identifier", "looks_like_token",
]
