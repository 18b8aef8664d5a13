"""Token records in devpi-server's own storage (keyfs), and their keys.

Every token of a user lives in that user's record (``<user>/.config``), next
to the password hash, so it replicates, exports and is deleted together with
the user.  Tokens minted by this release are kept in one field whose value is
ONE compact JSON string, the user's token table::

    "devpi_tokens": '{"<token id>":{"kdf":"hmac-sha256","salt":"<url-safe base64,
                     32 random bytes>","created":<epoch>,"expires":<epoch>|null,
                     "description":"<text>","restrictions":["<caveat>",...]},...}'

Why a string: devpi-server 6 deep-copies the whole user record
(``User.get()`` in ``getstage``) on every request that opens one of the
user's indexes, anonymous ones included.  Copying a string costs one
reference however long it is; a table of dicts would be walked record by
record (at 10,000 tokens an index page took 100 times longer).

Readers parse the string once and keep the parsed, read-only table per user
(:class:`TableCache`) for as long as keyfs hands back the same text; writers
(create, delete, purge) parse it afresh inside their write transaction and
store a new string.  Read transactions at the same keyfs serial share the
tables found there without asking keyfs again (:class:`SnapshotCache`), and
token strings whose signature checked out against a record are remembered
with that record object (:class:`VerifiedTokens`).

Records written by devpi-tokens 1.x stay where 1.x put them, as dicts under
``"tokens"`` (``{"<id>": {"key": ..., "restrictions": [...]}}``).  They are
found, listed, deleted and purged like ours but never rewritten, so a
downgrade to 1.x still finds its own tokens.  Their ids (8 characters) and
ours (10 hex digits) never collide.

A token's key is HMAC-SHA256 over the token's user, id and salt, keyed with a
base key that devpi-server derives once from its secret (argon2, with our own
label).  The salt is random, so a slow hash per token would buy nothing.
1.x records have no ``"kdf"`` field and need a slow argon2 derivation;
:meth:`TokenStore.key_for` hands them to ``devpi_tokens.legacy_v1.legacy_key``
when that module exists.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple
from typing import cast
import base64
import binascii
import hashlib
import hmac
import importlib
import importlib.util
import json
import secrets
import threading

from .restrictions import Effective
from .restrictions import MalformedCaveat
from .restrictions import Restriction
from .restrictions import expiry_of
from .restrictions import parse_caveat
from .server_log import log
from .tokens import Token
from .tokens import new_token_id


if TYPE_CHECKING:
    from devpi_server.keyfs_types import PTypedKey
    from devpi_server.keyfs_types import TypedKey
    from devpi_server.main import XOM

    from .server_limits import MaxLifetime


#: Field of the user record holding the token table of this release: one
#: compact JSON string (see the module docstring).
TABLE_FIELD = "devpi_tokens"

#: Field of a token record minted by trusted publishing: the publisher's id.
TRUSTED_FIELD = "trusted_publisher"

#: Field where devpi-tokens 1.x kept its records, as dicts (read, not written).
V1_FIELD = "tokens"

#: Parsed token tables kept in memory, one per user (least recently used go).
TABLE_CACHE_SIZE = 1024

#: Verified token strings kept (:class:`VerifiedTokens`): at most this many,
VERIFIED_CACHE_SIZE = 4096
#: of at most this many characters in all,
VERIFIED_CACHE_CHARS = 2 * 1024 * 1024
#: and none longer than this (about 80 caveats; a new token has ~120 characters).
VERIFIED_TOKEN_MAX_CHARS = 4096

#: Marker of a record whose key is HMAC-SHA256(base key, user, id, salt).
KDF_V2 = "hmac-sha256"

#: Label for devpi-server's derived-key facility; the result is our base key.
BASE_KEY_LABEL = b"devpi-tokens"

#: Domain separation for the per-token HMAC.
_KEY_CONTEXT = b"devpi-tokens v2 token key\x00"

SALT_BYTES = 32

SECRET_WARNING = (
    "devpi-server runs without a persistent secret (no --secretfile), so every "
    "token stops working when the server restarts. Create a secret with "
    "'devpi-gen-secret --secretfile PATH' and start devpi-server with "
    "'--secretfile PATH'.")

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
        self.tables = TableCache()
        self.snapshots = SnapshotCache()
        self.verified = VerifiedTokens()
        self.legacy_key = legacy_key if legacy_key is not None else _load_legacy_key_func()
        #: ``--tokens-max-lifetime``, read once at startup (None: no limit)
        self.max_lifetime: MaxLifetime | None = None

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
        """Derive the base key (argon2) at startup, not on the first token request."""
        self.base_key  # noqa: B018 - computing the property is the point

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

    def user_key(self, username: str) -> TypedKey[dict[str, Any]]:
        """The keyfs key of the user's record (``<user>/.config``)."""
        # keyfs types its keys only as "PTypedKey | TypedKey"; USER is the
        # pattern key "{user}/.config" (devpi-server casts it the same way)
        return cast("PTypedKey[dict[str, Any]]", self.xom.keyfs.USER)(user=username)

    def user_record(self, username: str) -> Mapping[str, Any]:
        """The user's whole record, read-only (empty if there is no such user)."""
        # keyfs hands out a read-only view of its cached value: no copy.
        # (User.get() would deep-copy the whole record.)
        return self.user_key(username).get()

    def _tables(self, username: str) -> Tables:
        """The user's token table (parsed, cached) and 1.x's table, both read-only."""
        serial = self._read_serial()
        if serial is not None:
            tables = self.snapshots.get(username, serial)
            if tables is not None:
                return tables
        value = self.user_record(username)
        text = value.get(TABLE_FIELD)
        table = self.tables.get(username, text) if text is not None else EMPTY
        v1_table = value.get(V1_FIELD)
        tables = (table, v1_table if isinstance(v1_table, Mapping) else EMPTY)
        if serial is not None:
            self.snapshots.put(username, serial, tables)
        return tables

    def _read_serial(self) -> int | None:
        """The serial a read transaction sees; None in a write transaction.

        keyfs never changes what a serial holds: every commit makes a new
        serial.  So the user's value read at a serial can be reused by any
        later read transaction at that same serial.  A write transaction
        may hold uncommitted changes of its own: no reuse there.
        """
        tx = getattr(self.xom.keyfs, "tx", None)
        if tx is None or getattr(tx, "write", True):
            return None
        serial = getattr(tx, "at_serial", None)
        return serial if type(serial) is int else None

    def get_record(self, username: str, token_id: str) -> Mapping[str, Any] | None:
        """The read-only record of one token, or None.

        Cost: O(1) in the number of tokens once the user's table is parsed
        (after each change of it); nothing is copied.
        """
        return self.find_record(username, token_id)[0]

    def find_record(
        self, username: str, token_id: str,
    ) -> tuple[Mapping[str, Any] | None, object | None]:
        """The read-only record of one token (or None), and its handle.

        The handle is the object that holds the record inside the user's
        parsed table: the same object for as long as the record stays
        unchanged, a different one after any write of the user's table
        (see :class:`VerifiedTokens`).  1.x records have no handle (None).
        """
        table, v1_table = self._tables(username)
        record = table.get(token_id)
        handle = None
        if record is None:
            record = v1_table.get(token_id)
        elif isinstance(table, Table):
            handle = table.stored(token_id)
        if not isinstance(record, Mapping):
            return None, None
        return record, handle

    def user_exists(self, username: str) -> bool:
        exists: bool = self.user_key(username).exists()
        return exists

    def list_tokens(self, username: str) -> dict[str, dict[str, Any]]:
        """Public information of every token of a user, oldest first; never a key or salt."""
        return {
            str(token_id): public_info(record, self.max_lifetime)
            for token_id, record in self._records(username)}

    def token_ids(self, username: str) -> set[str]:
        """The ids of every token of a user (1.x's included)."""
        table, v1_table = self._tables(username)
        return {str(token_id) for source in (v1_table, table) for token_id in source}

    def count_records(self, username: str, which: Callable[[Mapping[str, Any]], bool]) -> int:
        """How many of a user's token records ``which`` selects."""
        return sum(1 for _, record in self._records(username) if which(record))

    def _records(self, username: str) -> list[tuple[str, Mapping[str, Any]]]:
        # 1.x's records first: they are older than any of ours
        table, v1_table = self._tables(username)
        return [
            (token_id, record)
            for source in (v1_table, table)
            for token_id, record in source.items()
            if isinstance(record, Mapping)]

    # -- writing -------------------------------------------------------------

    def new_record(
        self, restrictions: Sequence[Restriction], *,
        created: int, expires: int | None, description: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bytes]:
        """A record for a new token, and its salt (to derive the key from).

        ``extra`` adds fields of its own (e.g. :data:`TRUSTED_FIELD`); it
        cannot replace the fields above.
        """
        salt = secrets.token_bytes(SALT_BYTES)
        record: dict[str, Any] = dict(extra or {})
        record.update({
            "kdf": KDF_V2,
            "salt": _b64(salt),
            "created": created,
            "expires": expires,
            "description": description,
            "restrictions": [r.dump() for r in restrictions],
        })
        return record, salt

    def add_records(self, username: str, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Store records under new ids, with one rewrite of the table; the ids.

        :meth:`create` stores one; tests and benchmarks store thousands at a
        time with it.  Needs a write transaction.
        """
        ids = []
        with self.user_key(username).update() as userconfig:
            table = writable_table(userconfig, username)
            v1_table = userconfig.get(V1_FIELD)
            taken = v1_table if isinstance(v1_table, Mapping) else {}
            for record in records:
                token_id = new_token_id()
                while token_id in table or token_id in taken:
                    token_id = new_token_id()
                table[token_id] = dict(record)
                ids.append(token_id)
            store_table(userconfig, table)
        return ids

    def create(
        self, username: str, restrictions: tuple[Restriction, ...], *,
        created: int, expires: int | None, description: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> Token:
        """Store a new token record and mint its token.  Needs a write transaction."""
        record, salt = self.new_record(
            restrictions, created=created, expires=expires, description=description,
            extra=extra)
        (token_id,) = self.add_records(username, [record])
        return Token.mint(
            username, token_id, self.derive_key(username, token_id, salt), restrictions)

    def delete(self, username: str, token_id: str) -> bool:
        """Remove a token record; False if there was none.  Needs a write transaction."""
        if self.get_record(username, token_id) is None:
            return False
        self._remove(username, [token_id])
        return True

    def purge_expired(
        self, username: str, now: int,
        only: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> list[str]:
        """Remove every token of a user that expired at or before ``now``.

        Returns the removed ids, sorted.  Tokens that never expire stay;
        with ``only``, so do tokens whose record it does not accept.
        Needs a write transaction; the user record is only rewritten when
        something expired.
        """
        expired = sorted(
            str(token_id) for token_id, record in self._records(username)
            if is_expired(record, now) and (only is None or only(record)))
        if expired:
            self._remove(username, expired)
        return expired

    def _remove(self, username: str, token_ids: Sequence[str]) -> None:
        # from whichever table holds them; 1.x's records are dropped in place
        with self.user_key(username).update() as userconfig:
            table = writable_table(userconfig, username)
            v1_table = userconfig.get(V1_FIELD)
            for token_id in token_ids:
                table.pop(token_id, None)
                if isinstance(v1_table, dict):
                    v1_table.pop(token_id, None)
            store_table(userconfig, table)


class Table(Mapping[str, Any]):
    """A parsed token table, read-only: records come out as mapping proxies.

    Inside, records stay plain dicts holding only strings, numbers and
    tuples.  CPython's garbage collector stops tracking such objects after
    its first pass over them, so a cached table of 10,000 tokens adds next
    to nothing to later collection pauses (a proxy per record would).
    """

    __slots__ = ("_records",)

    def __init__(self, records: dict[str, Any]) -> None:
        self._records = records

    def __getitem__(self, token_id: str) -> Any:
        record = self._records[token_id]
        return MappingProxyType(record) if type(record) is dict else record

    def stored(self, token_id: str) -> object | None:
        """The object that holds a record in this table (not a copy, not a view).

        Only for identity checks (``is``); nobody may change it.
        """
        return self._records.get(token_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)


#: The table of a user without tokens.
EMPTY = Table({})


class TableCache:
    """Parsed token tables of recently seen users: a bounded LRU, thread-safe.

    keyfs hands every reader the user's table as the same string object
    until the record changes, so an entry is reused when the text is the
    one it was parsed from (identical, or else equal).  Parsed tables are
    read-only (:class:`Table`), so no caller can change what other requests
    see.  One cache per server: two servers in one process (tests) never
    share tables.
    """

    def __init__(self, size: int = TABLE_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[str, Table]] = OrderedDict()
        self._lock = threading.Lock()
        self.parses = 0  # how many texts were parsed; for tests and benchmarks

    def get(self, username: str, text: Any) -> Table:
        """The parsed, read-only table of ``text``, the value of the user's field."""
        with self._lock:
            entry = self._entries.get(username)
        # compare outside the lock: equality of a long text takes a moment
        if entry is not None and (entry[0] is text or entry[0] == text):
            table = entry[1]
        else:
            table = parse_table(text)
            with self._lock:
                self.parses += 1
        with self._lock:
            if isinstance(text, str):
                # keep the newest text object: the next reader gets it, and `is` holds
                self._entries[username] = (text, table)
                self._entries.move_to_end(username)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return table

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class VerifiedToken(NamedTuple):
    """What a successful signature check established about one token string."""

    user: str
    token_id: str
    restrictions: tuple[Restriction, ...]
    #: handle of the record the signature was checked against
    #: (:meth:`TokenStore.find_record`)
    record: object


class VerifiedTokens:
    """Token strings whose signature was verified: a bounded LRU, thread-safe.

    Loading a token and checking its signature is most of what a warm
    request with a token costs.  An entry lets a later request with the
    *same* token string skip both, under these rules (enforced by
    ``server_enforce``):

    - only a token whose signature checked out is stored, never a failure;
    - the entry names the record handle the key was derived from; a later
      request looks the record up again and uses the entry only if the
      handle is the very same object.  A deleted token has no record any
      more; any write of the user's token table makes new handles.  So a
      revocation (or a changed record) takes effect at once;
    - restrictions are still checked on every request (time, user, and
      what the request does): the entry holds them, not their outcome.

    The key is the full token string, so a hit is exactly the string that
    was verified.  Entries hold no key or salt.  Long tokens are not kept,
    and the total length of the kept strings is bounded too.
    """

    def __init__(
        self, size: int = VERIFIED_CACHE_SIZE, max_chars: int = VERIFIED_CACHE_CHARS,
    ) -> None:
        self.size = size
        self.max_chars = max_chars
        self._entries: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, raw: str) -> VerifiedToken | None:
        with self._lock:
            entry = self._entries.get(raw)
            if entry is not None:
                self._entries.move_to_end(raw)
            return entry

    def put(self, raw: str, entry: VerifiedToken) -> None:
        if len(raw) > VERIFIED_TOKEN_MAX_CHARS or self.size <= 0:
            return
        with self._lock:
            if raw in self._entries:
                self._entries.move_to_end(raw)
                self._entries[raw] = entry
                return
            self._entries[raw] = entry
            self._chars += len(raw)
            while len(self._entries) > self.size or self._chars > self.max_chars:
                old, _ = self._entries.popitem(last=False)
                self._chars -= len(old)

    def discard(self, raw: str) -> None:
        with self._lock:
            if self._entries.pop(raw, None) is not None:
                self._chars -= len(raw)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0


#: A user's token tables: ours (parsed) and 1.x's, both read-only.
Tables = tuple[Mapping[str, Any], Mapping[str, Any]]


class SnapshotCache:
    """Token tables of recently seen users as of a keyfs serial: a bounded LRU.

    Reading the user record through keyfs costs more than everything else
    a warm verification does (devpi-server measures the size of the value
    on every read, even from its own cache).  What a serial holds never
    changes, so the tables found at serial S serve every read transaction
    at S; any commit (a token created or deleted, or anything else) makes
    a new serial, and the next reader reads keyfs again.  Revocation
    therefore takes effect for every transaction that starts after it,
    exactly as without this cache.
    """

    def __init__(self, size: int = TABLE_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[int, Tables]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, username: str, serial: int) -> Tables | None:
        with self._lock:
            entry = self._entries.get(username)
            if entry is None or entry[0] != serial:
                return None
            self._entries.move_to_end(username)
            return entry[1]

    def put(self, username: str, serial: int, tables: Tables) -> None:
        with self._lock:
            entry = self._entries.get(username)
            if entry is not None and entry[0] > serial:
                return  # an older transaction: keep the newer snapshot
            self._entries[username] = (serial, tables)
            self._entries.move_to_end(username)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _frozen(value: Any) -> Any:
    """``value`` read-only: lists become tuples, dicts mapping proxies.

    Dicts are changed in place: they come fresh from ``json.loads`` and
    nobody else holds them.
    """
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, dict):
        _freeze_values(value)
        return MappingProxyType(value)
    return value


def _freeze_values(record: dict[str, Any]) -> None:
    for key, value in record.items():
        if isinstance(value, (list, dict)):
            record[key] = _frozen(value)  # same keys: iterating stays valid


def parse_table(text: Any) -> Table:
    """A stored table text as a read-only :class:`Table`; empty if unreadable."""
    if not isinstance(text, str):
        return EMPTY
    try:
        records = json.loads(text)
    except (ValueError, RecursionError):
        return EMPTY
    if not isinstance(records, dict):
        return EMPTY
    for record in records.values():
        if type(record) is dict:
            _freeze_values(record)
    return Table(records)


def dump_table(table: Mapping[str, Any]) -> str:
    """A table as compact JSON; ids and fields keep their order (oldest first).

    ASCII only, so whatever a description holds stores safely.
    """
    return json.dumps(table, separators=(",", ":"))


def writable_table(userconfig: Mapping[str, Any], username: str) -> dict[str, Any]:
    """The table in a user record being updated, parsed afresh and mutable."""
    text = userconfig.get(TABLE_FIELD)
    if text is None:
        return {}
    try:
        table = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        table = None
    if not isinstance(table, dict):
        # its tokens were refused already (readers find nothing in it);
        # say so, as the rewrite drops it
        log().warning(
            "devpi-tokens: the token table of user %s is unreadable; it is replaced",
            username)
        return {}
    return table


def store_table(userconfig: dict[str, Any], table: Mapping[str, Any]) -> None:
    """Put a table back into a user record being updated (no field when empty)."""
    if table:
        userconfig[TABLE_FIELD] = dump_table(table)
    else:
        userconfig.pop(TABLE_FIELD, None)



def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def public_info(
    record: Mapping[str, Any], max_lifetime: MaxLifetime | None = None,
) -> dict[str, Any]:
    """What a listing shows of a record: restrictions, description, times.

    Built field by field from known keys, so secrets (our salt, 1.x's key)
    can never slip through.  ``restrictions`` is the effective summary in
    devpi-tokens 1.x ``name=value`` form (what devpi-admin and
    devpi-api-client parse); ``caveats`` are the strings as minted; the
    summary's values are also fields of their own.
    """
    caveats = _caveats(record)
    effective = Effective.of(_parsed(caveats))
    # our records carry the expiry as created ("never" has none, even when
    # a start time needed a far-future window end); 1.x ones only caveats
    expires = _int_or_none(record.get("expires")) if "expires" in record else effective.expires
    effective = replace(effective, expires=expires)
    description = record.get("description")
    info: dict[str, Any] = {
        "restrictions": effective.v1_strings(),
        "caveats": caveats,
        "description": description if isinstance(description, str) else "",
        "created": _int_or_none(record.get("created")),
        "expires": expires,
        "not_before": effective.not_before,
        "projects": _list_or_none(effective.projects),
        "indexes": _list_or_none(effective.indexes),
        "allowed": _list_or_none(effective.allowed),
        "ips": _list_or_none(effective.ips),
        # beyond --tokens-max-lifetime: refused at use
        "exceeds_max_lifetime": (
            max_lifetime is not None and max_lifetime.exceeded_by_record(record)),
    }
    trusted = record.get(TRUSTED_FIELD)
    if isinstance(trusted, str):
        # minted by trusted publishing: the publisher's id
        info["trusted_publisher"] = trusted
    if record.get("kdf") != KDF_V2:
        # written by devpi-tokens 1.x: listings mark it as the older format
        info["format"] = "1.x"
    return info


def _caveats(record: Mapping[str, Any]) -> list[str]:
    raw = record.get("restrictions")
    # keyfs views and parsed tables hold read-only sequences, not lists
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
        return [x for x in raw if isinstance(x, str)]
    return []


def _parsed(caveats: list[str]) -> list[Restriction]:
    # a caveat that does not parse makes its token invalid at every use;
    # the listing summarizes the rest (the caveat itself is still listed)
    parsed = []
    for caveat in caveats:
        try:
            parsed.append(parse_caveat(caveat))
        except MalformedCaveat:
            continue
    return parsed


def _list_or_none(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


def is_trusted_publishing(record: Mapping[str, Any] | None) -> bool:
    """True for the record of a token minted by trusted publishing."""
    return record is not None and isinstance(record.get(TRUSTED_FIELD), str)


def is_expired(record: Mapping[str, Any], now: int) -> bool:
    """True when the record's token can no longer be used because of time.

    A token is valid while ``now < expires``; records without an expiry
    (``"never"``) never expire.  1.x records are judged by their caveats.
    """
    expires = record_expires(record)
    return expires is not None and now >= expires


def record_expires(record: Mapping[str, Any]) -> int | None:
    """The expiry of a record's token (None: never).

    Our records carry it; 1.x records only in their caveats.
    """
    if "expires" in record:
        return _int_or_none(record.get("expires"))
    return expiry_of(_parsed(_caveats(record)))


def secret_warning(xom: XOM) -> str | None:
    """The warning to give when tokens won't survive a restart, else None."""
    if xom.config.secret_path is None:
        return SECRET_WARNING
    return None
