"""Trusted publishers and replay state, in devpi-server's storage (keyfs).

Publishers live in their user's record (``<user>/.config``), next to the
tokens, so they replicate, export and go away with the user.  The field
``devpi_publishers`` maps a publisher id to its record::

    {"provider": "github", "issuer": ..., "repository": ..., "workflow": ...,
     "environment": ..., "indexes": [...], "projects": [...] | null,
     "description": ..., "created": <epoch>, "owner_id": <pinned id> | null}

An identity (provider, issuer, repository or project path, workflow or CI
file, environment) is registered once per server: :meth:`PublisherStore.add`
scans every user inside its write transaction.

Each exchanged JWT's ``jti`` is kept (hashed with its issuer) in a keyfs key
of our own until the JWT has expired, so a JWT is exchanged once, across
restarts too; replicas relay the mint (a POST) to their primary, which
decides.

Tokens minted for a publisher are ordinary devpi-tokens tokens of its user
whose record carries ``trusted_publisher`` (:data:`.server_store.TRUSTED_FIELD`).
"""
from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import Union
from typing import cast
import hashlib
import time

from . import oidc_github
from . import oidc_gitlab
from .oidc_github import GitHubPublisher
from .oidc_errors import OIDCError
from .oidc_gitlab import GitLabPublisher
from .restrictions import Allowed
from .restrictions import Indexes
from .restrictions import ProjectNames
from .restrictions import Restriction
from .restrictions import ValidityWindow
from .restrictions import validated
from .server_store import TRUSTED_FIELD
from .server_log import log
from .server_store import is_trusted_publishing
from .tokens import new_token_id


if TYPE_CHECKING:
    from devpi_server.keyfs import KeyFS
    from devpi_server.keyfs_types import PTypedKey
    from devpi_server.keyfs_types import TypedKey
    from devpi_server.main import XOM

    from .server_store import TokenStore
    from .tokens import Token


Publisher = Union[GitHubPublisher, GitLabPublisher]

#: Field of the user record holding the user's publishers.
PUBLISHERS_FIELD = "devpi_publishers"

#: keyfs key of the exchanged JWTs: {sha256(issuer, jti): exp}.
JTI_KEY = "DEVPI_TOKENS_OIDC_JTI"
JTI_PATH = "+devpi-tokens/oidc-jti"
#: Kept this long after a JWT's ``exp`` (more than the verification leeway).
JTI_GRACE = 300

#: Lifetime of a minted token, in seconds.
MINTED_LIFETIME = 15 * 60
#: What a minted token may do.
MINTED_PERMISSIONS = ("pkg_read", "upload")
#: Most tokens one publisher may have in use at once (each lives 15 minutes;
#: uv burns its own after the upload).  Every mint rewrites its user's
#: record, which keyfs keeps in its history, so a workflow asking again and
#: again must not make that record grow without end.
MAX_LIVE_MINTED = 50

#: How often expired minted tokens are purged in the background, in seconds.
PURGE_INTERVAL = 300

#: Most publishers one user may register.
MAX_PUBLISHERS = 100

PROVIDERS: dict[str, type[GitHubPublisher] | type[GitLabPublisher]] = {
    oidc_github.PROVIDER: GitHubPublisher,
    oidc_gitlab.PROVIDER: GitLabPublisher,
}

#: Body fields of every provider; each provider adds its own (BODY_KEYS).
COMMON_KEYS = frozenset({"provider", "indexes", "projects", "description"})
BODY_KEYS = {
    oidc_github.PROVIDER: COMMON_KEYS | oidc_github.BODY_KEYS,
    oidc_gitlab.PROVIDER: COMMON_KEYS | oidc_gitlab.BODY_KEYS,
}


class PublisherConflict(Exception):
    """The identity is registered already, by ``holder`` (publisher ``publisher_id``)."""

    def __init__(self, holder: str, publisher_id: str) -> None:
        super().__init__(f"already registered by {holder}")
        self.holder = holder
        self.publisher_id = publisher_id


def publisher_from_body(data: Mapping[str, Any]) -> Publisher:
    """The publisher a request body describes; ValueError with the reason."""
    provider = data.get("provider")
    cls = PROVIDERS.get(provider) if isinstance(provider, str) else None
    if cls is None:
        raise ValueError(
            f"'provider' must be one of {', '.join(map(repr, sorted(PROVIDERS)))}")
    unknown = sorted(set(data) - BODY_KEYS[cls.provider])
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(map(repr, unknown))} for provider "
            f"{cls.provider!r}; known fields: {', '.join(sorted(BODY_KEYS[cls.provider]))}")
    return cls.from_body(data)


def publisher_from_record(record: Mapping[str, Any]) -> Publisher | None:
    """The publisher of a stored record, or None if it is not one we can read."""
    provider = record.get("provider")
    cls = PROVIDERS.get(provider) if isinstance(provider, str) else None
    if cls is None:
        return None
    try:
        return cls.from_record(record)
    except (KeyError, TypeError, ValueError):
        return None


def describe_source(claims: Mapping[str, Any], publisher: Publisher) -> str:
    """The description of a token minted for ``publisher`` from ``claims``."""
    if isinstance(publisher, GitHubPublisher):
        return oidc_github.describe_source(claims)
    return oidc_gitlab.describe_source(claims)


def _plain(value: Any) -> Any:
    """A stored value (keyfs' read-only views included) as plain lists and dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        return [_plain(v) for v in value]
    return value


def public_info(publisher_id: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """What a listing shows of a publisher record."""
    info = _plain(record)
    return {"id": publisher_id, **info}


@dataclass(frozen=True)
class Match:
    """The publisher a JWT matched: its user, id, value and stored record."""

    user: str
    publisher_id: str
    publisher: Publisher
    record: Mapping[str, Any]

    @property
    def pinned_owner_id(self) -> str | None:
        value = self.record.get("owner_id")
        return value if isinstance(value, str) else None


def register_keys(keyfs: KeyFS) -> None:
    """Register our keyfs key (once per keyfs)."""
    if keyfs.get_key(JTI_KEY) is None:
        keyfs.add_key(JTI_KEY, JTI_PATH, dict)


def jti_digest(issuer: str, jti: str) -> str:
    return hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()


class PublisherStore:
    """Reads and writes publishers and used JTIs of one devpi-server (one XOM).

    Reading needs a keyfs transaction; writing a write transaction.
    """

    def __init__(self, xom: XOM) -> None:
        self.xom = xom

    # -- keyfs ---------------------------------------------------------------

    def _user_key(self, username: str) -> TypedKey[dict[str, Any]]:
        return cast("PTypedKey[dict[str, Any]]", self.xom.keyfs.USER)(user=username)

    def _jti_key(self) -> TypedKey[dict[str, Any]]:
        key = self.xom.keyfs.get_key(JTI_KEY)
        if key is None:
            raise RuntimeError("devpi-tokens: the OIDC replay key is not registered")
        return cast("TypedKey[dict[str, Any]]", key)

    def _usernames(self) -> list[str]:
        key = cast("TypedKey[set[str]]", self.xom.keyfs.USERLIST)
        return sorted(str(name) for name in key.get())

    def _publishers(self, username: str) -> Mapping[str, Any]:
        value = self._user_key(username).get()
        table = value.get(PUBLISHERS_FIELD) if value else None
        return table if isinstance(table, Mapping) else {}

    def _all(self) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
        for username in self._usernames():
            for publisher_id, record in self._publishers(username).items():
                if isinstance(record, Mapping):
                    yield username, str(publisher_id), record

    # -- users and indexes ---------------------------------------------------

    def index_problem(self, username: str, index: str) -> str | None:
        """Why ``index`` cannot be a target of ``username``'s publisher, or None."""
        owner, sep, name = index.partition("/")
        if not sep or not owner or not name or "/" in name:
            return f"{index!r} is not an index name of the form 'user/index'"
        if owner != username:
            return f"index {index!r} is not an index of user '{username}'"
        indexes = self._user_key(username).get().get("indexes") or {}
        ixconfig = indexes.get(name) if isinstance(indexes, Mapping) else None
        if not isinstance(ixconfig, Mapping):
            return f"user '{username}' has no index {index!r}"
        if ixconfig.get("type") == "mirror":
            return f"index {index!r} is a mirror; nothing can be uploaded to it"
        return None

    # -- publishers ----------------------------------------------------------

    def list(self, username: str) -> dict[str, dict[str, Any]]:
        """Public information of every publisher of a user, oldest first."""
        return {
            str(publisher_id): public_info(str(publisher_id), record)
            for publisher_id, record in self._publishers(username).items()
            if isinstance(record, Mapping)}

    def holder_of(
        self, publisher: Publisher, username: str | None = None,
    ) -> tuple[str, str] | None:
        """``(user, publisher id)`` of a registration ``publisher`` conflicts with.

        The same identity, by anyone; and, for a registration by
        ``username``, the same workflow under another environment (or none)
        by another user.  An environment-pinned publisher wins over an
        unpinned one, so without that rule one user could register a pinned
        copy of another user's workflow and receive that user's CI runs.
        """
        identity = publisher.identity()
        for holder, publisher_id, record in self._all():
            other = publisher_from_record(record)
            if other is None:
                continue
            theirs = other.identity()
            if theirs == identity:
                return holder, publisher_id
            # the environment is the identity's last part
            if username is not None and holder != username and theirs[:-1] == identity[:-1]:
                return holder, publisher_id
        return None

    def add(
        self, username: str, publisher: Publisher, *, indexes: Sequence[str],
        projects: Sequence[str] | None, description: str, created: int,
    ) -> tuple[str, dict[str, Any]]:
        """Register a publisher; its id and public information.

        Raises :class:`PublisherConflict` when any user holds the identity,
        ValueError when the user has too many.  Needs a write transaction.
        """
        holder = self.holder_of(publisher, username)
        if holder is not None:
            raise PublisherConflict(*holder)
        record: dict[str, Any] = {
            **publisher.fields(),
            "indexes": list(indexes),
            "projects": list(projects) if projects else None,
            "description": description,
            "created": created,
            "owner_id": None,
        }
        with self._user_key(username).update() as userconfig:
            table = _plain(userconfig.get(PUBLISHERS_FIELD) or {})
            if len(table) >= MAX_PUBLISHERS:
                raise ValueError(
                    f"user '{username}' has {len(table)} publishers already, the most "
                    "one user may register")
            publisher_id = new_token_id()
            while publisher_id in table:
                publisher_id = new_token_id()
            table[publisher_id] = record
            userconfig[PUBLISHERS_FIELD] = table
        return publisher_id, public_info(publisher_id, record)

    def delete(self, username: str, publisher_id: str) -> bool:
        """Remove a publisher; False if there was none.  Needs a write transaction."""
        if publisher_id not in self._publishers(username):
            return False
        with self._user_key(username).update() as userconfig:
            table = _plain(userconfig.get(PUBLISHERS_FIELD) or {})
            table.pop(publisher_id, None)
            if table:
                userconfig[PUBLISHERS_FIELD] = table
            else:
                userconfig.pop(PUBLISHERS_FIELD, None)
        return True

    def pin_owner(self, username: str, publisher_id: str, owner_id: str) -> None:
        """Remember the owner id of a publisher's first exchange.  Write transaction."""
        with self._user_key(username).update() as userconfig:
            table = _plain(userconfig.get(PUBLISHERS_FIELD) or {})
            record = table.get(publisher_id)
            if isinstance(record, dict) and record.get("owner_id") is None:
                record["owner_id"] = owner_id
                userconfig[PUBLISHERS_FIELD] = table

    def find(self, claims: Mapping[str, Any], issuer: str) -> Match | str:
        """The publisher the claims match, or why none does.

        A publisher pinned to an environment wins over one that is not;
        among equals the oldest registration.
        """
        matches: list[tuple[bool, int, str, Match]] = []
        near: list[str] = []
        for username, publisher_id, record in self._all():
            publisher = publisher_from_record(record)
            if publisher is None or publisher.issuer.rstrip("/") != issuer.rstrip("/"):
                continue
            reason = publisher.check(claims)
            if reason is None:
                created = record.get("created")
                matches.append((
                    publisher.environment is None,
                    created if isinstance(created, int) else 0,
                    publisher_id,
                    Match(username, publisher_id, publisher, record)))
            elif publisher.same_source(claims):
                near.append(f"{reason} ({publisher.summary()})")
        if matches:
            return min(matches, key=lambda m: m[:3])[3]
        if near:
            return "no trusted publisher matches the token: " + "; ".join(sorted(near)[:3])
        return f"no trusted publisher is registered for {_source_of(claims, issuer)}"

    # -- replay --------------------------------------------------------------

    def use_jti(self, issuer: str, jti: str, exp: int, now: int) -> bool:
        """Record a JWT as exchanged; False if it was before.  Write transaction.

        Entries whose JWT expired (plus :data:`JTI_GRACE`) are dropped.
        """
        digest = jti_digest(issuer, jti)
        key = self._jti_key()
        seen = key.get()
        if digest in seen:
            return False
        with key.update() as table:
            for old in [d for d, e in table.items() if not isinstance(e, int) or e < now]:
                del table[old]
            table[digest] = max(exp, now) + JTI_GRACE
        return True

    # -- minting -------------------------------------------------------------

    def mint(
        self, tokens: TokenStore, match: Match, claims: Mapping[str, Any], now: int,
    ) -> tuple[Token, int]:
        """A new token for the matched publisher's user, and its expiry.

        Expired tokens minted by trusted publishing for that user go first.
        Needs a write transaction.
        """
        tokens.purge_expired(match.user, now, only=is_trusted_publishing)
        live = tokens.count_records(
            match.user, lambda r: r.get(TRUSTED_FIELD) == match.publisher_id)
        if live >= MAX_LIVE_MINTED:
            raise OIDCError(
                "invalid-publisher",
                f"trusted publisher {match.publisher_id} has {live} tokens in use, the "
                f"most it may have; they expire within {MINTED_LIFETIME // 60} minutes "
                "(burn-token revokes one at once)")
        # the admin's --tokens-max-lifetime binds minted tokens too
        limit = tokens.max_lifetime
        lifetime = MINTED_LIFETIME if limit is None else min(MINTED_LIFETIME, limit.seconds)
        expires = now + lifetime
        record = match.record
        restrictions: list[Restriction] = [
            ValidityWindow(not_after=expires, not_before=now)]
        projects = _plain(record.get("projects"))
        if projects:
            restrictions.append(ProjectNames(tuple(str(p) for p in projects)))
        restrictions.append(Indexes(tuple(str(i) for i in _plain(record.get("indexes")) or ())))
        restrictions.append(Allowed(MINTED_PERMISSIONS))
        token = tokens.create(
            match.user, tuple(validated(r) for r in restrictions),
            created=now, expires=expires,
            description=describe_source(claims, match.publisher),
            extra={TRUSTED_FIELD: match.publisher_id})
        return token, expires


class MintedTokenPurger:
    """Removes expired tokens minted by trusted publishing, every few minutes.

    Runs in a thread of devpi-server's pool on the primary (replicas get the
    removals through replication).  Users are scanned in a read transaction;
    a write transaction is opened only when something expired.
    """

    if TYPE_CHECKING:
        thread: Any  # set by devpi-server's thread pool

    def __init__(self, xom: XOM, tokens: TokenStore, interval: float = PURGE_INTERVAL) -> None:
        self.xom = xom
        self.tokens = tokens
        self.interval = interval

    def thread_run(self) -> None:
        while True:
            self.thread.sleep(self.interval)  # raises at shutdown
            try:
                self.purge(int(time.time()))
            except Exception as exc:  # noqa: BLE001 - never end the server
                log().error(
                    "devpi-tokens: purging expired trusted-publishing tokens failed "
                    "with %s", type(exc).__name__)

    def purge(self, now: int) -> dict[str, list[str]]:
        """Remove every expired minted token; the removed ids per user."""
        keyfs = self.xom.keyfs
        with keyfs.read_transaction():
            users = cast("TypedKey[set[str]]", keyfs.USERLIST).get()
            due = sorted(
                str(user) for user in users
                if any(
                    info.get("trusted_publisher") is not None
                    and info.get("expires") is not None and now >= info["expires"]
                    for info in self.tokens.list_tokens(str(user)).values()))
        if not due:
            return {}
        removed: dict[str, list[str]] = {}
        with keyfs.write_transaction():
            for user in due:
                if self.tokens.user_exists(user):
                    ids = self.tokens.purge_expired(user, now, only=is_trusted_publishing)
                    if ids:
                        removed[user] = ids
        for user, ids in removed.items():
            log().info(
                "devpi-tokens: purged %s expired trusted-publishing token(s) of user %s",
                len(ids), user)
        return removed


def _source_of(claims: Mapping[str, Any], issuer: str) -> str:
    """The token's source in words (for a refusal)."""
    repository = oidc_github.claim(claims, "repository")
    if repository is not None:
        workflow_ref = oidc_github.claim(claims, "job_workflow_ref") or ""
        workflow = workflow_ref.partition("@")[0].rpartition("/")[2]
        return oidc_github.printable(
            f"repository {repository!r}, workflow {workflow!r} (issuer {issuer})")
    project_path = oidc_github.claim(claims, "project_path")
    if project_path is not None:
        return oidc_github.printable(f"project {project_path!r} (issuer {issuer})")
    return oidc_github.printable(f"this token (issuer {issuer})")
