"""Tokens minted by devpi-tokens 1.x: recognise their records, derive their keys.

devpi-tokens 1.x kept each token in the user's record under ``"tokens"``,
as a dict per token; this release leaves those records there (its own go
into one JSON string, see :mod:`devpi_tokens.server_store`)::

    "tokens": {"<8 character id>": {"key": "<url-safe base64 of 32 random bytes>",
                                     "restrictions": ["expires=never", ...]}}

Despite its name, ``"key"`` is not the macaroon key but a per-token salt.
1.x derived the macaroon key with argon2id, from devpi-server's derived key
for the label ``devpi-tokens`` (the same base key the store computes for new
tokens) and that salt, with fixed parameters of 100 MiB and 2 passes.

Such a derivation costs about 0.1 s and 100 MiB, so this module keeps
derived keys in a small bounded cache and runs at most one derivation at a
time; tokens minted by this release never come here (they use the fast KDF
in :mod:`devpi_tokens.server_store`).  The caveats of 1.x tokens
(``expires=...`` and friends) are parsed and checked by
:mod:`devpi_tokens.restrictions` like every other caveat.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
import base64
import binascii
import hashlib
import re
import threading

import argon2



if TYPE_CHECKING:
    from .server_store import TokenStore


#: Field of a 1.x record that holds the per-token argon2 salt.
V1_SALT_FIELD = "key"

#: Marker for listings: the record was written by devpi-tokens 1.x.
V1_FORMAT = "1.x"

#: argon2id parameters 1.x used per token.  They are fixed in 1.x (not taken
#: from devpi-server's --argon2-* options), so they are constants here too.
V1_ARGON2_TIME_COST = 2
V1_ARGON2_MEMORY_COST = 102400  # KiB, i.e. 100 MiB
V1_ARGON2_PARALLELISM = 8
V1_ARGON2_HASH_LEN = 16

#: How many derived keys to keep.  An entry is a few dozen bytes; the bound
#: only stops an endless stream of distinct records from growing memory.
CACHE_SIZE = 1024

# 1.x wrote ``secrets.token_urlsafe(32)``: 43 url-safe base64 characters.
_SALT_TEXT = re.compile(r"[A-Za-z0-9_-]{11,128}")
_MIN_SALT_BYTES = 8  # argon2's lower bound for a salt


def is_v1_record(record: Mapping[str, Any]) -> bool:
    """True for a token record written by devpi-tokens 1.x.

    1.x records have its ``"key"`` field and none of the fields this
    release writes (its records are marked with ``"kdf"``).
    """
    return "kdf" not in record and V1_SALT_FIELD in record


def v1_salt(record: Mapping[str, Any]) -> bytes | None:
    """The argon2 salt of a 1.x record, or None if the field is unusable."""
    text = record.get(V1_SALT_FIELD)
    if not isinstance(text, str) or not _SALT_TEXT.fullmatch(text):
        return None
    try:
        salt = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return salt if len(salt) >= _MIN_SALT_BYTES else None


def derive_v1_key(base_key: bytes, salt: bytes) -> bytes:
    """1.x's macaroon key: argon2id over the base key, with the record's salt.

    ``base_key`` is devpi-server's ``config.get_derived_key(b"devpi-tokens")``
    (which depends on the server's secret and its --argon2-* options).
    """
    return argon2.low_level.hash_secret_raw(
        base_key, salt,
        time_cost=V1_ARGON2_TIME_COST,
        memory_cost=V1_ARGON2_MEMORY_COST,
        parallelism=V1_ARGON2_PARALLELISM,
        hash_len=V1_ARGON2_HASH_LEN,
        type=argon2.low_level.Type.ID,
        version=argon2.low_level.ARGON2_VERSION)


class KeyCache:
    """Bounded LRU of derived 1.x keys, safe to share between threads.

    Entries are looked up by a SHA-256 over base key and salt, so the cache
    holds neither in the clear and two servers in one process (tests) never
    see each other's keys.  Derivations run one at a time: each needs
    100 MiB, and a burst of cold requests must not multiply that.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._derive_lock = threading.Lock()
        self.derivations = 0  # how many argon2 runs; for tests and benchmarks

    @staticmethod
    def _slot(base_key: bytes, salt: bytes) -> bytes:
        return hashlib.sha256(
            len(base_key).to_bytes(4, "big") + base_key + salt).digest()

    def _lookup(self, slot: bytes) -> bytes | None:
        with self._lock:
            key = self._entries.get(slot)
            if key is not None:
                self._entries.move_to_end(slot)
            return key

    def get(self, base_key: bytes, salt: bytes) -> bytes:
        """The key for (base key, salt), derived on the first call only."""
        slot = self._slot(base_key, salt)
        key = self._lookup(slot)
        if key is not None:
            return key
        with self._derive_lock:
            # another thread may have derived it while we waited
            key = self._lookup(slot)
            if key is not None:
                return key
            key = derive_v1_key(base_key, salt)
            self.derivations += 1
            # stored before the derive lock is released: a thread waiting
            # for it must find the key, not derive it again
            with self._lock:
                self._entries[slot] = key
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return key

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: The process-wide cache used by :func:`legacy_key`.
key_cache = KeyCache()


def legacy_key(
    store: TokenStore, username: str, token_id: str, record: Mapping[str, Any],
) -> bytes | None:
    """The seam :class:`~devpi_tokens.server_store.TokenStore` calls.

    Returns the macaroon key of a 1.x record, or None when the record is not
    one 1.x could have written (then the token is refused).  ``username`` and
    ``token_id`` are not part of 1.x's derivation; the record found under
    them is.
    """
    if not is_v1_record(record):
        return None
    salt = v1_salt(record)
    if salt is None:
        return None
    return key_cache.get(store.base_key, salt)


__all__ = [
    "V1_SALT_FIELD", "V1_FORMAT", "CACHE_SIZE", "KeyCache", "key_cache",
    "is_v1_record", "v1_salt", "derive_v1_key", "legacy_key",
]
