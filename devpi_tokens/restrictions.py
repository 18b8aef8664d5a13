"""Every caveat devpi-tokens understands: parse, write, describe and check.

A caveat is the string inside a macaroon that narrows what the token may do.
This module is the only place that knows caveat formats; the server, the
client and the docs all go through it.

Parsing fails closed: anything that is not exactly one of the known formats
raises :class:`MalformedCaveat`, and a token carrying such a caveat is
invalid.  Checking never raises; it answers :data:`SUCCESS` or a
:class:`Failure` whose reason can be shown to the person using the token.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timezone
from typing import TYPE_CHECKING
from typing import Any
from typing import Callable
from typing import ClassVar
from typing import Iterable
from typing import Literal
import ipaddress
import json
import re

from devpi_common.validation import normalize_name


class TokenError(Exception):
    """Base of every error this package raises; the message is fit for users."""


class MalformedCaveat(TokenError):
    """A caveat that is not exactly one of the known formats."""


class MalformedToken(TokenError):
    """A token string that cannot be loaded."""


#: Permission names devpi-server (6.x) checks.  Names outside this set are
#: accepted inside ``devpi:allowed`` but grant nothing.
KNOWN_PERMISSIONS = frozenset({
    "pkg_read", "upload", "toxresult_upload",
    "index_create", "index_modify", "index_delete",
    "del_entry", "del_project", "del_verdata",
    "user_login", "user_create", "user_delete",
    "user_modify", "user_modify_password",
})

#: Permissions a token may never carry, whatever its caveats say.
USER_PERMISSIONS = frozenset(p for p in KNOWN_PERMISSIONS if p.startswith("user_"))

#: Permissions that only read.  A request that names no project (or no index)
#: meets a project (or index) restriction only when it asks for one of these,
#: or for no permission at all.
READ_PERMISSIONS = frozenset({"pkg_read", "user_login"})

#: Longest caveat we try to parse.  Real caveats are far shorter; the cap keeps
#: hostile tokens from costing memory or deep recursion.
MAX_CAVEAT_LENGTH = 8192

_INT64_MIN = -(2 ** 63)
_INT64_MAX = 2 ** 63 - 1


# --------------------------------------------------------------------------
# time helpers (shared with the client for inspect and list)

def format_time(ts: int) -> str:
    """Format an epoch timestamp as ``2026-11-22 05:15 UTC``."""
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return f"epoch {ts}"


_UNITS = (
    ("year", 365 * 86400),
    ("day", 86400),
    ("hour", 3600),
    ("minute", 60),
    ("second", 1),
)


def _amount(seconds: int) -> str:
    for name, size in _UNITS:
        if seconds >= size:
            count = seconds // size
            return f"{count} {name}{'s' if count != 1 else ''}"
    return "0 seconds"


def describe_relative(ts: int, now: int) -> str:
    """Say how far ``ts`` is from ``now``: ``in 3 days``, ``2 hours ago``."""
    delta = ts - now
    if delta == 0:
        return "now"
    if delta > 0:
        return f"in {_amount(delta)}"
    return f"{_amount(-delta)} ago"


def normalize_project(name: str) -> str:
    """A project name as devpi-server compares it.

    devpi-server stores and looks up projects under
    ``devpi_common.validation.normalize_name`` (every run of characters
    outside ``[A-Za-z0-9]`` becomes ``-``, then lower case), so a restriction
    must compare with exactly that function: any other folding (PEP 503's
    ``[-_.]``, or ``str.lower`` on non-ASCII letters such as the KELVIN SIGN)
    would let a name match here and name another project there.
    """
    normalized: str = normalize_name(name)
    return normalized


#: PEP 508 distribution names (ASCII letters and digits, inner ``._-``).
_PROJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def project_name_problem(name: str) -> str | None:
    """Why ``name`` cannot go into a project restriction, or None if it can."""
    if not _PROJECT_NAME.fullmatch(name):
        return f"{name!r} is not a valid project name (PEP 508: letters, digits, '.', '_', '-')"
    return None


# --------------------------------------------------------------------------
# check results

class Success:
    """A met restriction.  Truthy."""

    def __bool__(self) -> Literal[True]:
        return True

    def __repr__(self) -> str:
        return "SUCCESS"


SUCCESS = Success()


@dataclass(frozen=True)
class Failure:
    """A restriction that is not met, with the reason in words.  Falsy."""

    reason: str

    def __bool__(self) -> Literal[False]:
        return False


Result = Success | Failure


@dataclass(frozen=True)
class Context:
    """What a request does, as far as restrictions care.

    ``permission`` is the devpi permission being asked for (``None`` for a
    page that needs none); ``indexes`` every ``user/index`` the request
    touches (a push names two); ``project`` the project it acts on, if any.
    """

    user: str
    now: int
    permission: str | None = None
    indexes: tuple[str, ...] = ()
    project: str | None = None
    bases_of: Callable[[str], Iterable[str]] | None = field(default=None, compare=False)
    #: the client's IP address as devpi-server's request sees it
    #: (``REMOTE_ADDR``); None when not known
    client_address: str | None = None

    @property
    def is_read(self) -> bool:
        return self.permission is None or self.permission in READ_PERMISSIONS


# --------------------------------------------------------------------------
# the restriction values

class Restriction:
    """Base of all restriction values.  Subclasses are frozen dataclasses."""

    def dump(self) -> str:
        """The caveat string for this restriction."""
        raise NotImplementedError

    def describe(self, now: int | None = None) -> str:
        """This restriction in words for people."""
        raise NotImplementedError

    def check(self, ctx: Context) -> Result:
        """Met (``SUCCESS``) or not met (a ``Failure`` with the reason)."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.describe()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _names(values: Iterable[str]) -> str:
    return ", ".join(values)


class _Window(Restriction):
    """Shared logic of every validity window format."""

    if TYPE_CHECKING:
        # Read-only for the type checker: subclasses (frozen dataclasses)
        # either hold these as fields or fix one to None as a class
        # attribute.  Not real properties: they would shadow the fields.
        @property
        def not_after(self) -> int | None: ...

        @property
        def not_before(self) -> int | None: ...

    def check(self, ctx: Context) -> Result:
        if self.not_before is not None and ctx.now < self.not_before:
            return Failure(f"token not valid before {format_time(self.not_before)}")
        if self.not_after is not None and ctx.now >= self.not_after:
            return Failure(f"token expired at {format_time(self.not_after)}")
        return SUCCESS

    def describe(self, now: int | None = None) -> str:
        parts = []
        # a start that has passed is noise once we know the time
        if self.not_before is not None and (now is None or now < self.not_before):
            text = f"not valid before {format_time(self.not_before)}"
            if now is not None:
                text += f" ({describe_relative(self.not_before, now)})"
            parts.append(text)
        if self.not_after is None:
            parts.append("never expires")
        else:
            verb = "expired at" if now is not None and now >= self.not_after else "valid until"
            text = f"{verb} {format_time(self.not_after)}"
            if now is not None:
                text += f" ({describe_relative(self.not_after, now)})"
            parts.append(text)
        return ", ".join(parts)


class _ProjectSet(Restriction):
    """Shared logic of every project-name format."""

    names: tuple[str, ...]

    def check(self, ctx: Context) -> Result:
        if ctx.project is None:
            if ctx.is_read:
                return SUCCESS
            return Failure(
                f"token is restricted to projects {_names(self.names)} "
                f"and cannot be used for '{ctx.permission}' outside them")
        wanted = normalize_project(ctx.project)
        if any(normalize_project(name) == wanted for name in self.names):
            return SUCCESS
        return Failure(f"token not valid for project '{ctx.project}'")

    def describe(self, now: int | None = None) -> str:
        return f"only projects: {_names(self.names)}"


class _IndexSet(Restriction):
    """Shared logic of every index format."""

    indexes: tuple[str, ...]

    def check(self, ctx: Context) -> Result:
        if not ctx.indexes:
            if ctx.is_read:
                return SUCCESS
            return Failure(
                f"token is restricted to indexes {_names(self.indexes)} "
                f"and cannot be used for '{ctx.permission}' outside them")
        for index in ctx.indexes:
            if index not in self.indexes and not self._inherited(index, ctx):
                return Failure(f"token not valid for index '{index}'")
        return SUCCESS

    def _inherited(self, index: str, ctx: Context) -> bool:
        if ctx.permission != "pkg_read" or ctx.bases_of is None:
            return False
        return any(index in ctx.bases_of(allowed) for allowed in self.indexes)

    def describe(self, now: int | None = None) -> str:
        return f"only indexes: {_names(self.indexes)}"


class _PermissionSet(Restriction):
    """Shared logic of every allowed-permissions format."""

    permissions: tuple[str, ...]

    def check(self, ctx: Context) -> Result:
        if ctx.permission is None or ctx.permission in self.permissions:
            return SUCCESS
        return Failure(f"token does not allow '{ctx.permission}'")

    def describe(self, now: int | None = None) -> str:
        return f"only permissions: {_names(self.permissions)}"


@dataclass(frozen=True)
class ValidityWindow(_Window):
    """``[0, not_after, not_before]`` (PyPI): valid from not_before until not_after."""

    not_after: int
    not_before: int

    def dump(self) -> str:
        return _json([0, self.not_after, self.not_before])


@dataclass(frozen=True)
class ProjectNames(_ProjectSet):
    """``[1, [name, ...]]`` (PyPI): only these projects."""

    names: tuple[str, ...]

    def dump(self) -> str:
        return _json([1, list(self.names)])


@dataclass(frozen=True)
class ProjectIDs(Restriction):
    """``[2, [id, ...]]`` (PyPI): devpi has no project ids, so never met."""

    ids: tuple[str, ...]

    def dump(self) -> str:
        return _json([2, list(self.ids)])

    def describe(self, now: int | None = None) -> str:
        return f"only PyPI project ids: {_names(self.ids)} (never valid on devpi)"

    def check(self, ctx: Context) -> Result:
        return Failure(
            "token is restricted to PyPI project ids, which devpi does not have")


@dataclass(frozen=True)
class UserName(Restriction):
    """``[3, "username"]`` (PyPI user caveat): only for that user."""

    username: str

    def dump(self) -> str:
        return _json([3, self.username])

    def describe(self, now: int | None = None) -> str:
        return f"only user: {self.username}"

    def check(self, ctx: Context) -> Result:
        if ctx.user == self.username:
            return SUCCESS
        return Failure(f"token is restricted to user '{self.username}'")


@dataclass(frozen=True)
class Indexes(_IndexSet):
    """``["devpi:indexes", ["user/index", ...]]``: only these indexes."""

    indexes: tuple[str, ...]

    def dump(self) -> str:
        return _json(["devpi:indexes", list(self.indexes)])


@dataclass(frozen=True)
class Allowed(_PermissionSet):
    """``["devpi:allowed", [permission, ...]]``: every other permission denied."""

    permissions: tuple[str, ...]

    def dump(self) -> str:
        return _json(["devpi:allowed", list(self.permissions)])


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_network(text: str) -> IPNetwork:
    """``text`` as an address or CIDR network; :class:`MalformedCaveat` if it is not one.

    Host bits set (``192.0.2.7/24``) and IPv6 zone ids (``fe80::1%eth0``)
    are malformed: both would leave open what the caveat means.
    """
    if "%" in text:
        raise _fail(f"{text[:60]!r} has a zone id; give the address or network without it")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise _fail(f"{text[:60]!r} is not an IP address or network ({exc})") from None


def _client_forms(text: str | None) -> tuple[IPAddress, ...]:
    """The client address, plus its IPv4 form when it is IPv4-mapped IPv6;
    empty if unreadable.  An IPv4 client matches IPv4 networks only."""
    if text is None:
        return ()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return ()
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return (address,) if mapped is None else (address, mapped)
    return (address,)


def _in_network(address: IPAddress, network: IPNetwork) -> bool:
    # ``in`` compares bare integers across versions: check the version first
    return address.version == network.version and address in network


def network_within(network: IPNetwork, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``network`` lies inside one of ``networks`` (same IP version)."""
    return any(
        network.version == other.version and network.subnet_of(other)  # type: ignore[arg-type]
        for other in networks)


@dataclass(frozen=True)
class ClientNetworks(Restriction):
    """``["devpi:ips", ["192.0.2.0/24", "2001:db8::1"]]``: only from these networks.

    The client address is what devpi-server's request sees (``REMOTE_ADDR``);
    an IPv4-mapped IPv6 address matches IPv4 networks.  No address known:
    not met (fail closed).
    """

    networks: tuple[str, ...]

    def dump(self) -> str:
        return _json(["devpi:ips", list(self.networks)])

    def parsed(self) -> tuple[IPNetwork, ...]:
        return tuple(ip_network(text) for text in self.networks)

    def describe(self, now: int | None = None) -> str:
        return f"only from: {_names(self.networks)}"

    def check(self, ctx: Context) -> Result:
        allowed = f"(allowed: {_names(self.networks)})"
        if ctx.client_address is None:
            return Failure(f"token not valid: the client address is not known {allowed}")
        try:
            networks = self.parsed()
        except MalformedCaveat as exc:
            return Failure(str(exc))
        forms = _client_forms(ctx.client_address)
        if any(_in_network(a, n) for a in forms for n in networks):
            return SUCCESS
        shown = _UNPRINTABLE_ADDRESS.sub("?", ctx.client_address[:60])
        return Failure(f"token not valid from {shown} {allowed}")


_UNPRINTABLE_ADDRESS = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True)
class LegacyNoop(Restriction):
    """``{"version": 1, "permissions": "user"}`` (PyPI legacy): always met."""

    def dump(self) -> str:
        return _json({"version": 1, "permissions": "user"})

    def describe(self, now: int | None = None) -> str:
        return "all projects of the user (legacy PyPI caveat)"

    def check(self, ctx: Context) -> Result:
        return SUCCESS


@dataclass(frozen=True)
class LegacyProjectNames(_ProjectSet):
    """``{"version": 1, "permissions": {"projects": [...]}}`` (PyPI legacy)."""

    names: tuple[str, ...]

    def dump(self) -> str:
        return _json({"version": 1, "permissions": {"projects": list(self.names)}})


@dataclass(frozen=True)
class LegacyDate(_Window):
    """``{"nbf": not_before, "exp": not_after}`` (PyPI legacy window)."""

    not_before: int
    not_after: int

    def dump(self) -> str:
        return _json({"nbf": self.not_before, "exp": self.not_after})


@dataclass(frozen=True)
class V1Expires(_Window):
    """``expires=<int|never>`` (devpi-tokens 1.x); ``None`` means never."""

    not_after: int | None
    not_before: ClassVar[None] = None

    def dump(self) -> str:
        return f"expires={'never' if self.not_after is None else self.not_after}"


@dataclass(frozen=True)
class V1NotBefore(_Window):
    """``not_before=<int>`` (devpi-tokens 1.x)."""

    not_before: int
    not_after: ClassVar[None] = None

    def dump(self) -> str:
        return f"not_before={self.not_before}"

    def describe(self, now: int | None = None) -> str:
        text = f"not valid before {format_time(self.not_before)}"
        if now is not None and now < self.not_before:
            text += f" ({describe_relative(self.not_before, now)})"
        return text


@dataclass(frozen=True)
class V1Projects(_ProjectSet):
    """``projects=a,b`` (devpi-tokens 1.x)."""

    names: tuple[str, ...]

    def dump(self) -> str:
        return "projects=" + ",".join(self.names)


@dataclass(frozen=True)
class V1Indexes(_IndexSet):
    """``indexes=user/a,user/b`` (devpi-tokens 1.x)."""

    indexes: tuple[str, ...]

    def dump(self) -> str:
        return "indexes=" + ",".join(self.indexes)


@dataclass(frozen=True)
class V1Allowed(_PermissionSet):
    """``allowed=upload,pkg_read`` (devpi-tokens 1.x)."""

    permissions: tuple[str, ...]

    def dump(self) -> str:
        return "allowed=" + ",".join(self.permissions)


# --------------------------------------------------------------------------
# parsing

def _fail(message: str) -> MalformedCaveat:
    return MalformedCaveat(message)


def _reject_constant(name: str) -> Any:
    raise _fail(f"caveat contains {name}, which is not allowed")


def _reject_float(text: str) -> Any:
    raise _fail(f"caveat contains the number {text[:20]}, but only integers are allowed")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _fail(f"caveat repeats the key {key!r}")
        result[key] = value
    return result


_DECODER = json.JSONDecoder(
    parse_float=_reject_float,
    parse_constant=_reject_constant,
    object_pairs_hook=_object_without_duplicates,
)


def _load_json(text: str) -> Any:
    try:
        value, end = _DECODER.raw_decode(text)
    except MalformedCaveat:
        raise
    except RecursionError:
        raise _fail("caveat is nested too deeply") from None
    except ValueError as exc:
        raise _fail(f"caveat is not valid JSON ({exc.args[0].split(':')[0]})") from None
    if text[end:].strip():
        raise _fail("caveat has trailing data after its JSON value")
    return value


def _int(value: Any, what: str) -> int:
    # bool is an int subclass in Python; true/false is not a timestamp.
    if type(value) is not int:
        raise _fail(f"{what} must be an integer, not {_type_name(value)}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _fail(f"{what} is outside the 64-bit integer range")
    return value


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean", int: "an integer", str: "a string", list: "a list",
        dict: "an object", type(None): "null",
    }.get(type(value), type(value).__name__)


def _str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise _fail(f"{what} must be a string, not {_type_name(value)}")
    if not value or value != value.strip():
        raise _fail(f"{what} must be a non-empty string without surrounding spaces")
    return value


_ItemCheck = Callable[[str], None] | None


def _str_list(value: Any, what: str, item_check: _ItemCheck = None) -> tuple[str, ...]:
    if type(value) is not list:
        raise _fail(f"{what} must be a list of strings, not {_type_name(value)}")
    if not value:
        raise _fail(f"{what} must not be an empty list")
    items = tuple(_str(item, f"each entry of {what}") for item in value)
    if item_check is not None:
        for item in items:
            item_check(item)
    return items


def _check_index_name(name: str) -> None:
    user, sep, index = name.partition("/")
    if not sep or not user or not index or "/" in index:
        raise _fail(f"index {name!r} is not of the form 'user/index'")


def _fields(value: list[Any], count: int, tag: Any) -> list[Any]:
    if len(value) != count:
        raise _fail(f"caveat with tag {tag!r} must have {count} fields, not {len(value)}")
    return value


def _parse_list(value: list[Any]) -> Restriction:
    if not value:
        raise _fail("caveat is an empty list")
    tag = value[0]
    # type() rather than isinstance: True must not pass for the tag 1.
    parser = _LIST_TAGS.get(tag) if type(tag) in (int, str) else None
    if parser is None:
        raise _fail(f"unknown caveat tag {_short(tag)}")
    return parser(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_window(value: list[Any]) -> Restriction:
    _, not_after, not_before = _fields(value, 3, 0)
    return ValidityWindow(
        not_after=_int(not_after, "the expiry time"),
        not_before=_int(not_before, "the start time"))


def _parse_project_names(value: list[Any]) -> Restriction:
    _, names = _fields(value, 2, 1)
    return ProjectNames(_str_list(names, "the project names"))


def _parse_project_ids(value: list[Any]) -> Restriction:
    _, ids = _fields(value, 2, 2)
    return ProjectIDs(_str_list(ids, "the project ids"))


def _parse_user(value: list[Any]) -> Restriction:
    _, username = _fields(value, 2, 3)
    return UserName(_str(username, "the user name"))


def _parse_indexes(value: list[Any]) -> Restriction:
    _, indexes = _fields(value, 2, "devpi:indexes")
    return Indexes(_str_list(indexes, "the indexes", _check_index_name))


def _parse_allowed(value: list[Any]) -> Restriction:
    _, permissions = _fields(value, 2, "devpi:allowed")
    return Allowed(_str_list(permissions, "the permissions"))


def _check_network(text: str) -> None:
    ip_network(text)


def _parse_ips(value: list[Any]) -> Restriction:
    _, networks = _fields(value, 2, "devpi:ips")
    return ClientNetworks(_str_list(networks, "the client networks", _check_network))


_LIST_TAGS: dict[Any, Callable[[list[Any]], Restriction]] = {
    0: _parse_window,
    1: _parse_project_names,
    2: _parse_project_ids,
    3: _parse_user,
    "devpi:indexes": _parse_indexes,
    "devpi:allowed": _parse_allowed,
    "devpi:ips": _parse_ips,
}


def _parse_dict(value: dict[str, Any]) -> Restriction:
    keys = set(value)
    if keys == {"nbf", "exp"}:
        return LegacyDate(
            not_before=_int(value["nbf"], "the start time"),
            not_after=_int(value["exp"], "the expiry time"))
    if keys == {"version", "permissions"}:
        if _int(value["version"], "the version") != 1:
            raise _fail(f"unknown legacy caveat version {value['version']}")
        permissions = value["permissions"]
        if permissions == "user":
            return LegacyNoop()
        if type(permissions) is dict and set(permissions) == {"projects"}:
            return LegacyProjectNames(_str_list(permissions["projects"], "the project names"))
        raise _fail("legacy caveat has unknown permissions")
    raise _fail(f"unknown caveat with keys {_short(sorted(keys))}")


def _v1_int_or_never(text: str) -> int | None:
    if text == "never":
        return None
    return _v1_int(text)


def _v1_int(text: str) -> int:
    if not re.fullmatch(r"-?[0-9]{1,19}", text):
        raise _fail(f"{text[:40]!r} is not an integer timestamp")
    return _int(int(text), "the timestamp")


def _v1_list(text: str, what: str, item_check: _ItemCheck = None) -> tuple[str, ...]:
    return _str_list(text.split(","), what, item_check)


_V1_KEYS: dict[str, Callable[[str], Restriction]] = {
    "expires": lambda text: V1Expires(not_after=_v1_int_or_never(text)),
    "not_before": lambda text: V1NotBefore(not_before=_v1_int(text)),
    "projects": lambda text: V1Projects(_v1_list(text, "the project names")),
    "indexes": lambda text: V1Indexes(_v1_list(text, "the indexes", _check_index_name)),
    "allowed": lambda text: V1Allowed(_v1_list(text, "the permissions")),
}


def _parse_key_value(text: str) -> Restriction:
    key, sep, value = text.partition("=")
    parser = _V1_KEYS.get(key) if sep else None
    if parser is None:
        raise _fail(f"unknown caveat {_short(text)}")
    return parser(value)


def parse_caveat(caveat: str | bytes) -> Restriction:
    """Parse one caveat string into its restriction value.

    Raises :class:`MalformedCaveat` for anything that is not exactly one of
    the known formats.
    """
    if isinstance(caveat, bytes):
        if len(caveat) > MAX_CAVEAT_LENGTH:
            raise _fail(f"caveat is longer than {MAX_CAVEAT_LENGTH} bytes")
        try:
            caveat = caveat.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail("caveat is not valid UTF-8") from None
    if not isinstance(caveat, str):
        raise _fail(f"caveat must be text, not {_type_name(caveat)}")
    if len(caveat) > MAX_CAVEAT_LENGTH:
        raise _fail(f"caveat is longer than {MAX_CAVEAT_LENGTH} characters")
    if caveat[:1] in ("[", "{"):
        value = _load_json(caveat)
        if type(value) is list:
            return _parse_list(value)
        return _parse_dict(value)
    return _parse_key_value(caveat)


def validated(restriction: Restriction) -> Restriction:
    """Return ``restriction`` if it writes a caveat that parses back to itself
    and, for project restrictions, names only valid (PEP 508) project names.

    Builders (the server's create endpoint, the client's derive) call this
    so a value made from user input is held to exactly the same rules as a
    caveat read from a token.
    """
    if parse_caveat(restriction.dump()) != restriction:
        raise MalformedCaveat(f"restriction {restriction.dump()!r} does not round-trip")
    if isinstance(restriction, _ProjectSet):
        for name in restriction.names:
            problem = project_name_problem(name)
            if problem:
                raise MalformedCaveat(problem)
    return restriction


def check_all(restrictions: Iterable[Restriction], ctx: Context) -> Result:
    """``SUCCESS`` when every restriction is met, else the first failure."""
    for restriction in restrictions:
        result = restriction.check(ctx)
        if not result:
            return result
    return SUCCESS


@dataclass(frozen=True)
class Effective:
    """What a list of restrictions comes to, as one value per kind.

    Every restriction must be met, so the effective window is the earliest
    end and the latest start, and each list is the intersection of every
    list of its kind (``None``: not restricted).  For client networks the
    intersection is taken network by network: a network of any ``devpi:ips``
    caveat is kept when it lies inside some network of every other one
    (CIDR networks either nest or are disjoint, so that is exactly the
    addresses every caveat allows), without the ones inside another kept
    network; networks are compared within one IP version, so an
    IPv4-mapped client let in by an IPv4 and an IPv6 network together is
    not in the summary (the caveats still let it in).  Kinds devpi-tokens 1.x had
    no word for (PyPI project ids, users) are not summarized here; the
    caveats themselves still say them.
    """

    expires: int | None = None
    not_before: int | None = None
    projects: tuple[str, ...] | None = None
    indexes: tuple[str, ...] | None = None
    allowed: tuple[str, ...] | None = None
    ips: tuple[str, ...] | None = None

    @classmethod
    def of(cls, restrictions: Iterable[Restriction]) -> Effective:
        restrictions = tuple(restrictions)
        return cls(
            expires=expiry_of(restrictions),
            not_before=not_before_of(restrictions),
            projects=_intersection(
                [r.names for r in restrictions if isinstance(r, _ProjectSet)],
                normalize_project),
            indexes=_intersection(allowed_index_sets(restrictions)),
            allowed=_intersection(
                [r.permissions for r in restrictions if isinstance(r, _PermissionSet)]),
            ips=network_intersection(
                [r.networks for r in restrictions if isinstance(r, ClientNetworks)]))

    def v1_strings(self) -> list[str]:
        """The devpi-tokens 1.x ``name=value`` form, one entry per kind.

        devpi-admin and devpi-api-client parse listings in this form.
        """
        result = []
        if self.expires is not None:
            result.append(f"expires={self.expires}")
        if self.not_before is not None:
            result.append(f"not_before={self.not_before}")
        for name in ("projects", "indexes", "allowed", "ips"):
            values = getattr(self, name)
            if values is not None:
                result.append(f"{name}={','.join(values)}")
        return result


def _intersection(
    lists: list[tuple[str, ...]], key: Callable[[str], str] = str,
) -> tuple[str, ...] | None:
    """Items of the first list found in every other one (by ``key``), in order."""
    if not lists:
        return None
    others = [{key(item) for item in other} for other in lists[1:]]
    seen: set[str] = set()
    result = []
    for item in lists[0]:
        k = key(item)
        if k not in seen and all(k in other for other in others):
            seen.add(k)
            result.append(item)
    return tuple(result)


def network_intersection(lists: list[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The networks every list allows, as strings from the lists, in order.

    A network is kept when it lies inside some network of every list and
    not inside another kept one.  Unreadable networks are left out (the
    caveat holding them fails anyway).
    """
    if not lists:
        return None
    parsed = [_readable_networks(group) for group in lists]
    inside = [
        (text, net) for group in parsed for text, net in group
        if all(network_within(net, [n for _, n in other]) for other in parsed)]
    result: dict[str, None] = {}
    for text, net in inside:
        if not any(other != net and network_within(net, [other]) for _, other in inside):
            result.setdefault(text)
    return tuple(result)


def _readable_networks(texts: tuple[str, ...]) -> list[tuple[str, IPNetwork]]:
    result = []
    for text in texts:
        try:
            result.append((text, ip_network(text)))
        except MalformedCaveat:
            pass
    return result


def allowed_index_sets(restrictions: Iterable[Restriction]) -> list[tuple[str, ...]]:
    """The index lists of every index restriction (each one must be met)."""
    return [r.indexes for r in restrictions if isinstance(r, _IndexSet)]


def expiry_of(restrictions: Iterable[Restriction]) -> int | None:
    """The earliest end of validity among the restrictions (None: no end)."""
    windows = [r for r in restrictions if isinstance(r, _Window)]
    ends = [w.not_after for w in windows if w.not_after is not None]
    return min(ends) if ends else None


def not_before_of(restrictions: Iterable[Restriction]) -> int | None:
    """The latest start of validity among the restrictions (None: no start)."""
    windows = [r for r in restrictions if isinstance(r, _Window)]
    starts = [w.not_before for w in windows if w.not_before is not None]
    return max(starts) if starts else None


__all__ = [
    "KNOWN_PERMISSIONS", "READ_PERMISSIONS", "USER_PERMISSIONS", "MAX_CAVEAT_LENGTH",
    "TokenError", "MalformedCaveat", "MalformedToken",
    "Context", "Success", "SUCCESS", "Failure", "Result", "Restriction",
    "ValidityWindow", "ProjectNames", "ProjectIDs", "UserName", "Indexes", "Allowed",
    "LegacyNoop", "LegacyProjectNames", "LegacyDate",
    "V1Expires", "V1NotBefore", "V1Projects", "V1Indexes", "V1Allowed", "ClientNetworks",
    "parse_caveat", "validated", "check_all", "expiry_of", "not_before_of",
    "allowed_index_sets", "Effective", "network_intersection", "network_within", "ip_network",
    "format_time", "describe_relative", "normalize_project", "project_name_problem",
]
