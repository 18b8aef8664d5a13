"""Token records in devpi-server's own storage (keyfs), and their keys.

Every token of a user lives in that user's record (``<user>/.config``), under
``"tokens"``, next to the password hash, so it replicates, exports and is
deleted together with the user::

    "tokens": {
        "<token id>": {
            "kdf": "hmac-sha256",       # marks a record written by 2.x
            "salt": "<url-safe base64, 32 random bytes>",
            "created": <epoch int>,
            "expires": <epoch int> | None,
            "description": "<text>",
            "restrictions": ["<caveat>", ...],   # as minted
        },
    }

With :data:`COMPACT_RECORDS` set, each record is stored as the same object
serialized to one compact JSON string (cheaper for devpi-server, which
deep-copies user records); readers accept both layouts.

A token's key is HMAC-SHA256 over the token's user, id and salt, keyed with a
base key that devpi-server derives once from its secret (argon2, with our own
label).  The salt is random, so a slow hash per token would buy nothing.

Records written by devpi-tokens 1.x have no ``"kdf"`` field and need a slow
argon2 derivation; :meth:`TokenStore.key_for` hands them to
``devpi_tokens.legacy_v1.legacy_key`` when that module exists.
"""
from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
import base64
import binascii
import hashlib
import hmac
import importlib
import importlib.util
import json
import secrets
import threading
import time

from .restrictions import Allowed
from .restrictions import Context
from .restrictions import Indexes
from .restrictions import MalformedCaveat
from .restrictions import ProjectNames
from .restrictions import Restriction
from .restrictions import ValidityWindow
from .restrictions import check_all
from .restrictions import expiry_of
from .restrictions import parse_caveat
from .tokens import Token
from .tokens import new_token_id


if TYPE_CHECKING:
    from devpi_server.main import XOM


#: Key of the token table inside a user record (the same key 1.x used).
TOKENS_FIELD = "tokens"

#: Marker of a record whose key is HMAC-SHA256(base key, user, id, salt).
KDF_V2 = "hmac-sha256"

#: Label for devpi-server's derived-key facility; the result is our base key.
BASE_KEY_LABEL = b"devpi-tokens"

#: Domain separation for the per-token HMAC.
_KEY_CONTEXT = b"devpi-tokens v2 token key\x00"

SALT_BYTES = 32

#: Rounds of the startup warm-up (a few milliseconds in all).
WARM_UP_ROUNDS = 20

SECRET_WARNING = (
    "devpi-server runs without a persistent secret (no --secretfile), so every "
    "token stops working when the server restarts. Create a secret with "
    "'devpi-gen-secret --secretfile PATH' and start devpi-server with "
    "'--secretfile PATH'.")

#: Write each record as one compact JSON string instead of a dict.
#: devpi-server deep-copies the whole user record on most requests to the
#: user's indexes (``User.get()`` in ``getstage``): a string costs one
#: reference there, a dict a walk over every field (about 13 times more).
#: Readers accept both layouts, so this can change at any time.
COMPACT_RECORDS = False

#: Longest record text we parse (real records are a few hundred bytes).
MAX_RECORD_TEXT = 65536

#: Signature of the legacy seam: ``legacy_key(store, user, token_id, record)``
#: returns the key of a record this module did not write, or None.
LegacyKeyFunc = Callable[["TokenStore", str, str, Mapping[str, Any]], "bytes | None"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _load_legacy_key_func() -> LegacyKeyFunc | None:
    # legacy_v1 is optional; if it exists, import errors inside it must show.
    if importlib.util.find_spec("devpi_tokens.legacy_v1") is None:
        return None
    module = importlib.import_module("devpi_tokens.legacy_v1")
    return getattr(module, "legacy_key", None)


class TokenStore:
    """Reads and writes token records of one devpi-server (one XOM).

    Reading needs a keyfs transaction (every request has one); writing
    needs a write transaction.
    """

    def __init__(self, xom: XOM, legacy_key: LegacyKeyFunc | None = None) -> None:
        self.xom = xom
        self._base_key: bytes | None = None
        self._lock = threading.Lock()
        self.legacy_key = legacy_key if legacy_key is not None else _load_legacy_key_func()

    # -- keys --------------------------------------------------------------

    @property
    def base_key(self) -> bytes:
        """devpi-server's derived key for our label (argon2 once, then cached).

        The same value devpi-tokens 1.x used as its token secret, so the
        legacy module can build on it.
        """
        key = self._base_key
        if key is None:
            with self._lock:
                if self._base_key is None:
                    self._base_key = bytes(self.xom.config.get_derived_key(BASE_KEY_LABEL))
                key = self._base_key
        return key

    def warm_up(self) -> None:
        """Pay the one-time costs at startup instead of on the first request.

        Derives the base key (argon2), then runs a throwaway token with a
        random key through mint, load, signature check and restriction
        checks: first use of those code paths costs several times a warm
        verification.
        """
        self.base_key  # noqa: B018 - computing the property is the point
        now = int(time.time())
        key = self.derive_key("warm-up", "0", secrets.token_bytes(SALT_BYTES))
        restrictions = (
            ValidityWindow(not_after=now + 60, not_before=now),
            ProjectNames(("warm-up",)), Indexes(("warm-up/index",)), Allowed(("upload",)))
        raw = Token.mint("warm-up", "0", key, restrictions).dump()
        ctx = Context(user="warm-up", now=now, permission="upload")
        # a few rounds: Python specializes code only after several calls
        for _ in range(WARM_UP_ROUNDS):
            token = Token.load(raw)
            token.verify_signature(self.derive_key("warm-up", "0", b"salt"))
            check_all(token.restrictions, ctx)

    def derive_key(self, username: str, token_id: str, salt: bytes) -> bytes:
        """The key of one 2.x token: HMAC-SHA256 over user, id and salt."""
        message = b"".join((
            _KEY_CONTEXT,
            username.encode("utf-8"), b"\x00",
            token_id.encode("utf-8"), b"\x00",
            salt))
        return hmac.new(self.base_key, message, hashlib.sha256).digest()

    def key_for(self, username: str, token_id: str, record: Mapping[str, Any]) -> bytes | None:
        """The key of a stored token record, or None if it has no usable key.

        The single place that knows record layouts: 2.x records carry
        ``"kdf": "hmac-sha256"``; anything else goes to the legacy seam.
        """
        if record.get("kdf") == KDF_V2:
            salt = record.get("salt")
            if not isinstance(salt, str):
                return None
            try:
                return self.derive_key(username, token_id, _unb64(salt))
            except (binascii.Error, ValueError):
                return None
        if self.legacy_key is not None:
            return self.legacy_key(self, username, token_id, record)
        return None

    # -- reading -------------------------------------------------------------

    def _user_value(self, username: str) -> Mapping[str, Any]:
        # keyfs hands out a read-only view of its cached value: no copy.
        # (User.get() would deep-copy the whole record, every token included.)
        return self.xom.keyfs.USER(user=username).get()

    def get_record(self, username: str, token_id: str) -> Mapping[str, Any] | None:
        """The read-only record of one token, or None.  Cost: O(1) in tokens."""
        tokens = self._user_value(username).get(TOKENS_FIELD)
        if not isinstance(tokens, Mapping):
            return None
        return decode_record(tokens.get(token_id))

    def user_exists(self, username: str) -> bool:
        return self.xom.keyfs.USER(user=username).exists()

    def list_tokens(self, username: str) -> dict[str, dict[str, Any]]:
        """Public information of every token of a user; never a key or salt."""
        tokens = self._user_value(username).get(TOKENS_FIELD)
        if not isinstance(tokens, Mapping):
            return {}
        records = ((token_id, decode_record(value)) for token_id, value in tokens.items())
        return {
            str(token_id): public_info(record)
            for token_id, record in records
            if record is not None}

    # -- writing -------------------------------------------------------------

    def create(
        self, username: str, restrictions: tuple[Restriction, ...], *,
        created: int, expires: int | None, description: str = "",
    ) -> Token:
        """Store a new token record and mint its token.  Needs a write transaction."""
        salt = secrets.token_bytes(SALT_BYTES)
        record = {
            "kdf": KDF_V2,
            "salt": _b64(salt),
            "created": created,
            "expires": expires,
            "description": description,
            "restrictions": [r.dump() for r in restrictions],
        }
        with self.xom.keyfs.USER(user=username).update() as userconfig:
            tokens = userconfig.setdefault(TOKENS_FIELD, {})
            token_id = new_token_id()
            while token_id in tokens:
                token_id = new_token_id()
            tokens[token_id] = encode_record(record) if COMPACT_RECORDS else record
        return Token.mint(
            username, token_id, self.derive_key(username, token_id, salt), restrictions)

    def delete(self, username: str, token_id: str) -> bool:
        """Remove a token record; False if there was none.  Needs a write transaction."""
        if self.get_record(username, token_id) is None:
            return False
        with self.xom.keyfs.USER(user=username).update() as userconfig:
            del userconfig[TOKENS_FIELD][token_id]
        return True

    def purge_expired(self, username: str, now: int) -> list[str]:
        """Remove every token of a user that expired at or before ``now``.

        Returns the removed ids, sorted.  Tokens that never expire stay.
        Needs a write transaction; the user record is only rewritten when
        something expired.
        """
        tokens = self._user_value(username).get(TOKENS_FIELD)
        if not isinstance(tokens, Mapping):
            return []
        records = ((token_id, decode_record(value)) for token_id, value in tokens.items())
        expired = sorted(
            str(token_id) for token_id, record in records
            if record is not None and is_expired(record, now))
        if expired:
            with self.xom.keyfs.USER(user=username).update() as userconfig:
                for token_id in expired:
                    del userconfig[TOKENS_FIELD][token_id]
        return expired


def encode_record(record: Mapping[str, Any]) -> str:
    """A record as one compact JSON string (see :data:`COMPACT_RECORDS`)."""
    return json.dumps(dict(record), separators=(",", ":"), sort_keys=True)


def decode_record(value: Any) -> Mapping[str, Any] | None:
    """A stored record as a mapping, whichever layout; None if unusable."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) and value[:1] == "{" and len(value) <= MAX_RECORD_TEXT:
        try:
            data = json.loads(value)
        except ValueError:
            return None
        if isinstance(data, dict):
            return data
    return None


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def public_info(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a listing shows of a record: restrictions, description, times.

    Built field by field from known keys, so secrets (our salt, 1.x's key)
    can never slip through.
    """
    raw = record.get("restrictions")
    # keyfs hands out read-only sequence views, not lists
    is_list = isinstance(raw, Sequence) and not isinstance(raw, (str, bytes))
    restrictions = [x for x in raw if isinstance(x, str)] if is_list else []
    if "expires" in record:
        expires = _int_or_none(record.get("expires"))
    else:
        # 1.x records carry no expiry field; read it from the caveats.
        expires = _expiry_from_caveats(restrictions)
    description = record.get("description")
    info = {
        "restrictions": restrictions,
        "description": description if isinstance(description, str) else "",
        "created": _int_or_none(record.get("created")),
        "expires": expires,
    }
    if record.get("kdf") != KDF_V2:
        # written by devpi-tokens 1.x: listings mark it as the older format
        info["format"] = "1.x"
    return info


def is_expired(record: Mapping[str, Any], now: int) -> bool:
    """True when the record's token can no longer be used because of time.

    A token is valid while ``now < expires``; records without an expiry
    (``"never"``) never expire.  1.x records are judged by their caveats.
    """
    expires = public_info(record)["expires"]
    return expires is not None and now >= expires


def _expiry_from_caveats(caveats: list[str]) -> int | None:
    parsed = []
    for caveat in caveats:
        try:
            parsed.append(parse_caveat(caveat))
        except MalformedCaveat:
            continue
    return expiry_of(parsed)


def secret_warning(xom: XOM) -> str | None:
    """The warning to give when tokens won't survive a restart, else None."""
    if xom.config.secret_path is None:
        return SECRET_WARNING
    return None
