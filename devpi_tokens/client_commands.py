"""devpi-client subcommands (entry point devpi_client): the token commands.

``token-create``, ``token-list`` and ``token-delete`` talk to the server's
``+token-create`` and ``+tokens`` endpoints; ``token-derive`` and
``token-inspect`` work offline on the token string alone; ``token-login``
checks a token with the server and stores it as devpi-client's login, so
``devpi upload`` sends it (narrowed per upload by devpi-client itself when
pypitoken can read the token); ``token-login --trusted-publishing`` first
exchanges a CI job's identity for a token (client_trusted).  The
trusted-publisher commands are defined here and run in client_publishers
(which imports this module, so this one names it only as a string).

Every failure ends with one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import re
import functools
import json
import sys
import time
from typing import Any
from typing import Callable
from typing import Iterable
from typing import Literal
from typing import overload

from pluggy import HookimplMarker

from . import client_trusted
from .client_io import ClientError
from .display import printable
from .client_io import read_token
from .client_io import split_list
from .client_io import write_private_file
from .durations import parse_when
from .restrictions import KNOWN_PERMISSIONS
from .restrictions import USER_PERMISSIONS
from .restrictions import Allowed
from .restrictions import ClientNetworks
from .restrictions import Indexes
from .restrictions import LegacyProjectNames
from .restrictions import MalformedCaveat
from .restrictions import ProjectIDs
from .restrictions import ProjectNames
from .restrictions import Restriction
from .restrictions import TokenError
from .restrictions import V1Allowed
from .restrictions import V1Indexes
from .restrictions import V1Projects
from .restrictions import ValidityWindow
from .restrictions import describe_relative
from .restrictions import expiry_of
from .restrictions import format_time
from .restrictions import ip_network
from .restrictions import network_within
from .restrictions import normalize_project
from .restrictions import not_before_of
from .restrictions import parse_caveat
from .restrictions import validated
from .tokens import Token

hookimpl = HookimplMarker("devpiclient")

MODULE = "devpi_tokens.client_commands"

#: permissions a token can be limited to (user_* are never granted to tokens)
TOKEN_PERMISSIONS = tuple(sorted(KNOWN_PERMISSIONS - USER_PERMISSIONS))

#: what a token id looks like (the part after the last "-" of the identifier)
TOKEN_ID = re.compile(r"[A-Za-z0-9_]{1,64}")

#: A derived token without a start time of its own starts this long before
#: "now", so a server whose clock is a little behind still accepts it.
CLOCK_SKEW = 60


# --------------------------------------------------------------------------
# argparse definitions (the docstring's first sentence is the command's help)

TOKEN_INPUT_HELP = (
    "Without -f or --token the token is asked for at a prompt without echo.")


def _add_token_input(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-f", "--file", dest="token_file", metavar="FILE",
        help="read the token from FILE ('-' for stdin)")
    group.add_argument(
        "--token", dest="token", metavar="TOKEN",
        help="the token itself; careful: it ends up in your shell history "
             "and is visible to other users in the process list")


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", metavar="FILE",
        help="write the token to FILE, created readable only by you (mode 0600); "
             "asks before overwriting (-y: overwrite without asking). "
             "Default: print it on stdout")


WHEN_HELP = ("an epoch timestamp, a date (2026-12-31), or a duration from now "
             "such as 90d, '1 week', 2h30m, '1 year' (365 days)")


def _add_restrictions(parser: argparse.ArgumentParser, create: bool) -> None:
    never = ", or 'never'" if create else "; at most the token's own expiry"
    default = " Default: 365 days." if create else ""
    parser.add_argument(
        "-e", "--expires", metavar="EXPIRES",
        help=f"when the token stops working: {WHEN_HELP}{never}.{default}")
    parser.add_argument(
        "--not-before", metavar="WHEN", dest="not_before",
        help=f"when the token starts working: {WHEN_HELP}")
    parser.add_argument(
        "-a", "--allowed", metavar="PERMS", action="append",
        help="only these permissions (comma separated, may repeat), "
             "e.g. pkg_read,upload. Known: " + ", ".join(TOKEN_PERMISSIONS))
    parser.add_argument(
        "-i", "--indexes", metavar="INDEXES", action="append",
        help="only these indexes, as USER/INDEX (comma separated, may repeat)")
    parser.add_argument(
        "-p", "--projects", metavar="PROJECTS", action="append",
        help="only these projects (comma separated, may repeat)")
    parser.add_argument(
        "--ip", metavar="ADDR_OR_CIDR", dest="ips", action="append",
        help="only from these client addresses or networks, e.g. 192.0.2.0/24 or "
             "2001:db8::1 (comma separated, may repeat); the address is the one "
             "devpi-server sees")


def _add_user(parser: argparse.ArgumentParser, what: str = "tokens") -> None:
    parser.add_argument(
        "-u", "--user", metavar="USER",
        help=f"whose {what} (default: the logged in user; other users need "
             "root or --restrict-modify rights)")


def token_create_arguments(parser: argparse.ArgumentParser) -> None:
    """Create a new API token on the server (you must be logged in with a password).

    The token is printed on stdout (or written to -o FILE); keep it secret.
    It can do what its user can, narrowed by the given restrictions, but
    never manage users or tokens.
    """
    _add_user(parser)
    _add_restrictions(parser, create=True)
    parser.add_argument(
        "-d", "--description", metavar="DESCRIPTION",
        help="a note shown by token-list, e.g. where the token is used")
    _add_output(parser)


def token_derive_arguments(parser: argparse.ArgumentParser) -> None:
    """Make a narrower token from a token, offline (no server contact).

    The new token has every restriction of the old one plus the given ones;
    it can never do more. Revoking the original revokes it too.
    """
    _add_token_input(parser)
    _add_restrictions(parser, create=False)
    _add_output(parser)
    parser.epilog = TOKEN_INPUT_HELP


def token_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """Show a token's user, id, restrictions and whether it is valid now, offline.

    Only the server can tell whether the token was revoked or its signature
    is genuine.
    """
    _add_token_input(parser)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.epilog = TOKEN_INPUT_HELP


def token_list_arguments(parser: argparse.ArgumentParser) -> None:
    """List a user's tokens: id, description, created, expiry and restrictions."""
    _add_user(parser)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def token_delete_arguments(parser: argparse.ArgumentParser) -> None:
    """Delete (revoke) a token and every token derived from it."""
    _add_user(parser)
    parser.add_argument("token_id", metavar="TOKEN_ID", help="the token id, see token-list")


def token_login_arguments(parser: argparse.ArgumentParser) -> None:
    """Log in with a token instead of a password.

    The token is checked with the server first and then stored like a
    'devpi login', so later commands such as 'devpi upload' use it.
    Use 'devpi logoff' to forget it.  In a CI job, --trusted-publishing
    gets a short-lived token for the job's identity instead (see
    'devpi publisher-add').
    """
    _add_token_input(parser)
    parser.add_argument(
        "--trusted-publishing", action="store_true", dest="trusted_publishing",
        help="in a CI job (GitHub Actions, GitLab CI, Buildkite, CircleCI, Google "
             "Cloud): exchange the job's OIDC identity token for a 15-minute token of "
             "the user who registered the job as a trusted publisher, and log in with "
             "it. A private CA: the server's goes in REQUESTS_CA_BUNDLE (devpi uses "
             "requests), the CI platform's in SSL_CERT_FILE (the 'id' package uses "
             "urllib3)")
    parser.epilog = TOKEN_INPUT_HELP + " Not with --trusted-publishing."


# publisher-add, publisher-list and publisher-delete run in client_publishers
PUBLISHERS = "devpi_tokens.client_publishers"


def publisher_add_arguments(parser: argparse.ArgumentParser) -> None:
    """Trust a CI workflow to upload to some of your indexes (trusted publishing).

    A job of that workflow runs 'devpi token-login --trusted-publishing'
    (or 'uv publish --trusted-publishing always', or
    pypa/gh-action-pypi-publish) and gets a 15-minute token limited to the
    given indexes (and projects), allowed to read and upload only: no
    secret is stored in CI.  Needs your password login, like token-create.
    """
    _add_user(parser, "publishers")
    parser.add_argument(
        "--github", metavar="OWNER/REPO",
        help="a GitHub repository, e.g. octo-org/sampleproject")
    parser.add_argument(
        "--gitlab", metavar="GROUP/PROJECT",
        help="a GitLab project path, e.g. group/subgroup/project")
    parser.add_argument(
        "--workflow", metavar="FILE",
        help="GitHub: the workflow's file name in .github/workflows, e.g. release.yml; "
             "GitLab: the CI configuration file's path, e.g. .gitlab-ci.yml")
    parser.add_argument(
        "--environment", metavar="ENV",
        help="only jobs running in this deployment environment (recommended)")
    parser.add_argument(
        "-i", "--indexes", metavar="INDEXES", action="append",
        help="the indexes it may upload to (required): your own, as USER/INDEX or "
             "INDEX (comma separated, may repeat)")
    parser.add_argument(
        "-p", "--projects", metavar="PROJECTS", action="append",
        help="only these projects (comma separated, may repeat); default: any")
    parser.add_argument(
        "-d", "--description", metavar="TEXT",
        help="a note shown by publisher-list")
    parser.add_argument(
        "--issuer", metavar="URL",
        help="GitLab only: the GitLab instance's URL (default: https://gitlab.com)")


def publisher_list_arguments(parser: argparse.ArgumentParser) -> None:
    """List a user's trusted publishers: id, CI identity, indexes and projects."""
    _add_user(parser, "publishers")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def publisher_delete_arguments(parser: argparse.ArgumentParser) -> None:
    """Delete a trusted publisher; its CI jobs can get no more tokens."""
    _add_user(parser, "publishers")
    parser.add_argument(
        "publisher_id", metavar="ID", help="the publisher id, see publisher-list")


def token_purge_arguments(parser: argparse.ArgumentParser) -> None:
    """Delete every expired token of a user on the server (token-list marks them).

    Tokens that never expire, or have not expired yet, stay.
    """
    _add_user(parser)


@hookimpl
def devpiclient_subcommands() -> list[
        tuple[Callable[[argparse.ArgumentParser], None], str, str]]:
    return [
        (token_create_arguments, "token-create", f"{MODULE}:token_create"),
        (token_derive_arguments, "token-derive", f"{MODULE}:token_derive"),
        (token_inspect_arguments, "token-inspect", f"{MODULE}:token_inspect"),
        (token_list_arguments, "token-list", f"{MODULE}:token_list"),
        (token_delete_arguments, "token-delete", f"{MODULE}:token_delete"),
        (token_login_arguments, "token-login", f"{MODULE}:token_login"),
        (token_purge_arguments, "token-purge", f"{MODULE}:token_purge"),
        (publisher_add_arguments, "publisher-add", f"{PUBLISHERS}:publisher_add"),
        (publisher_list_arguments, "publisher-list", f"{PUBLISHERS}:publisher_list"),
        (publisher_delete_arguments, "publisher-delete", f"{PUBLISHERS}:publisher_delete"),
    ]


# --------------------------------------------------------------------------
# error handling and output

def _stderr_line(text: str) -> None:
    sys.stderr.write(printable(text) + "\n")
    sys.stderr.flush()


def _stdout_lines(lines: Iterable[str]) -> None:
    """Human output: one line each, nothing a token or server chose can escape it."""
    sys.stdout.write("".join(printable(line) + "\n" for line in lines))


def _one_line(parts: Iterable[object]) -> str:
    return " ".join(" ".join(str(p) for p in parts).split())


def _route_errors_to_stderr(hub: Any) -> None:
    """Make the hub's fatal/error/warn messages single lines on stderr.

    devpi-client writes everything to stdout; these commands print tokens
    and JSON there, so problems must not end up mixed into it.
    """
    def fatal(*msg: object) -> None:
        _stderr_line("error: " + _one_line(msg))
        raise SystemExit(1)

    def error(*msg: object) -> None:
        if not hub.quiet:
            _stderr_line(_one_line(msg))

    def warn(*msg: object) -> None:
        if not hub.quiet:
            _stderr_line("warning: " + _one_line(msg))

    hub.fatal = fatal
    hub.error = error
    hub.warn = hub.warning = warn


def _command(
        func: Callable[[Any, argparse.Namespace], None],
) -> Callable[[Any, argparse.Namespace], None]:
    """Wrap a handler: every TokenError becomes one line on stderr, exit 1."""
    @functools.wraps(func)
    def handler(hub: Any, args: argparse.Namespace) -> None:
        _route_errors_to_stderr(hub)
        try:
            func(hub, args)
        except TokenError as exc:
            hub.fatal(str(exc))
        except KeyboardInterrupt:
            hub.fatal("interrupted")
    return handler


def _keep_stdout_for_data(hub: Any) -> None:
    """Send devpi-client's own status lines (e.g. "*redirected") to stderr.

    Used when stdout carries a token or JSON that a script will read.
    """
    def info(*msg: object) -> None:
        if not hub.quiet:
            _stderr_line(" ".join(str(m) for m in msg))

    hub.info = info


def _emit_token(hub: Any, args: argparse.Namespace, token: str, summary: list[str]) -> None:
    if args.output:
        path = write_private_file(args.output, token, hub.ask_confirm)
        for line in summary:
            hub.info(printable(line))
        hub.info(f"token written to {path} (mode 0600)")
        return
    for line in summary:
        _stderr_line(line)
    sys.stdout.write(token + "\n")
    sys.stdout.flush()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# describing tokens (inspect and list share this)

def token_state(restrictions: Iterable[Restriction], now: int,
                expires: int | None = None) -> tuple[str, str]:
    """The token's state now as (keyword, words).

    keyword is one of ``valid``, ``not yet valid``, ``expired``, ``unusable``.
    ``expires`` (from the server's list) is used when no restriction says more.
    """
    restrictions = tuple(restrictions)
    start = not_before_of(restrictions)
    end = expiry_of(restrictions)
    if expires is not None and (end is None or expires < end):
        end = expires
    if end is not None and now >= end:
        return "expired", f"expired {describe_relative(end, now)} ({format_time(end)})"
    if start is not None and now < start:
        return "not yet valid", (
            f"not yet valid, starts {describe_relative(start, now)} ({format_time(start)})")
    if any(isinstance(r, ProjectIDs) for r in restrictions):
        return "unusable", "never valid on devpi (restricted to PyPI project ids)"
    if end is None:
        return "valid", "valid, never expires"
    return "valid", f"valid, expires {describe_relative(end, now)} ({format_time(end)})"


def _restriction_json(restriction: Restriction, now: int) -> dict[str, str]:
    return {"caveat": restriction.dump(), "description": restriction.describe(now)}


def inspect_data(token: Token, now: int) -> dict[str, Any]:
    """What token-inspect --json prints."""
    state, text = token_state(token.restrictions, now)
    return {
        "user": token.user,
        "id": token.token_id,
        "state": state,
        "state_description": text,
        "expires": token.expires,
        "not_before": token.not_before,
        "restrictions": [_restriction_json(r, now) for r in token.restrictions],
    }


def _caveat_from_server(value: Any) -> Restriction | None:
    """Parse one restriction of a token-list answer (a caveat string, or its JSON)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    try:
        return parse_caveat(text)
    except MalformedCaveat:
        return None


def list_entry(token_id: str, info: dict[str, Any], now: int) -> dict[str, Any]:
    """One token of token-list --json, built from the server's record."""
    # servers since 2.0 list the caveats as minted under "caveats" (their
    # "restrictions" is a 1.x-style summary); older ones under "restrictions"
    raw = info.get("caveats", info.get("restrictions")) or []
    parsed = [(value, _caveat_from_server(value)) for value in raw]
    restrictions = [r for _, r in parsed if r is not None]
    expires = info.get("expires")
    expires = expires if isinstance(expires, int) else None
    state, text = token_state(restrictions, now, expires)
    entry = {
        "id": token_id,
        "description": info.get("description") or "",
        "created": info.get("created"),
        "expires": expires,
        "state": state,
        "state_description": text,
        "restrictions": [
            _restriction_json(r, now) if r is not None
            else {"caveat": v if isinstance(v, str) else json.dumps(v),
                  "description": "unreadable restriction (the token is invalid)"}
            for v, r in parsed],
    }
    if "last_used" in info:
        # servers since 2.0 say when each token was last used (null: never)
        entry.update(_last_use(info))
    if info.get("format") == "1.x":
        # minted by devpi-tokens 1.x (the server says so); still valid
        entry["format"] = "1.x"
    return entry


def _last_use(info: dict[str, Any]) -> dict[str, Any]:
    at = info.get("last_used")
    if not isinstance(at, int) or isinstance(at, bool):
        return {"last_used": None, "last_used_from": None, "last_used_for": None}
    client, purpose = info.get("last_used_from"), info.get("last_used_for")
    return {
        "last_used": at,
        "last_used_from": client if isinstance(client, str) else None,
        "last_used_for": purpose if isinstance(purpose, str) else None,
    }


def describe_last_use(entry: dict[str, Any], now: int) -> str:
    """``2026-12-02 03:40 UTC (2 minutes ago) from 192.0.2.7: upload foo to alice/dev``."""
    at = entry["last_used"]
    if at is None:
        return "never"
    text = f"{format_time(at)} ({describe_relative(at, now)})"
    if entry["last_used_from"]:
        text += f" from {entry['last_used_from']}"
    if entry["last_used_for"]:
        text += f": {entry['last_used_for']}"
    return text


# --------------------------------------------------------------------------
# server access

def _require_server(hub: Any) -> None:
    if not hub.current.root_url:
        raise ClientError("not connected to a server, see 'devpi use'")


def _user_url(hub: Any, user: str | None, what: str) -> tuple[str, Any]:
    _require_server(hub)
    if user is None:
        user = hub.current.get_auth_user()
        if not user:
            raise ClientError(
                f"you need to be logged in to {what} (use 'devpi login USER')")
    try:
        return user, hub.current.get_user_url(user)
    except ValueError as exc:
        raise ClientError(str(exc)) from None


def _refusal(reply: Any) -> str:
    """``403 Forbidden: <the server's reason>``, without saying the reason twice."""
    message = reply.json_get("message")
    if not message or message == reply.reason:
        return f"{reply.status_code} {reply.reason}"
    return f"{reply.status_code} {reply.reason}: {message}"


def _request(hub: Any, method: str, url: Any, body: dict[str, Any] | None, expect: str,
             what: str) -> Any:
    """Send a JSON request; a refusal becomes a ClientError with the server's reason."""
    reply = hub.http_api(method, url, body, quiet=True, fatal=False)
    if reply.status_code in (200, 201):
        if expect and reply.type != expect:
            raise ClientError(
                f"{what}: the server's answer is not a {expect!r} "
                f"(is devpi-tokens installed on the server?)")
        return reply
    reason = _refusal(reply)
    message = reply.json_get("message") or ""
    if reply.status_code in (404, 405) and (
            not message or "resource could not be found" in message):
        # pyramid's answer for an unknown route: the endpoint itself is missing
        reason += " (is devpi-tokens installed on the server?)"
    raise ClientError(f"{what}: server refused: {reason}")


# --------------------------------------------------------------------------
# time options

@overload
def _parse_time(option: str, text: str, now: int, allow_never: Literal[False]) -> int: ...
@overload
def _parse_time(option: str, text: str, now: int, allow_never: bool) -> int | None: ...
def _parse_time(option: str, text: str, now: int, allow_never: bool) -> int | None:
    try:
        when = parse_when(text, now, allow_never=allow_never)
    except TokenError as exc:
        raise ClientError(f"{option} {text!r}: {exc}") from None
    return when


@overload
def _parse_expires(text: str, now: int, allow_never: Literal[False]) -> int: ...
@overload
def _parse_expires(text: str, now: int, allow_never: bool) -> int | None: ...
def _parse_expires(text: str, now: int, allow_never: bool) -> int | None:
    when = _parse_time("-e", text, now, allow_never)
    if when is not None and when <= now:
        hint = f" (did you mean '{text}d'?)" if text.strip().isdigit() else ""
        raise ClientError(
            f"-e {text!r}: {format_time(when)} is in the past{hint}")
    return when


# --------------------------------------------------------------------------
# token-create

@_command
def token_create(hub: Any, args: argparse.Namespace) -> None:
    now = int(time.time())
    body: dict[str, Any] = {}
    if args.expires is not None:
        expires = _parse_expires(args.expires, now, allow_never=True)
        body["expires"] = "never" if expires is None else expires
    if args.not_before is not None:
        body["not_before"] = _parse_time("--not-before", args.not_before, now, False)
    for key in ("allowed", "indexes", "projects", "ips"):
        values = split_list(getattr(args, key))
        if values is not None:
            body[key] = values
    if args.description is not None:
        body["description"] = args.description
    if not args.output:
        _keep_stdout_for_data(hub)
    user, url = _user_url(hub, args.user, "create a token")
    reply = _request(hub, "post", url.addpath("+token-create"), body,
                     "token-info", "token-create")
    result = reply.result or {}
    token = result.get("token")
    if not isinstance(token, str) or not token:
        raise ClientError("token-create: the server's answer has no token")
    warning = result.get("warning") or reply.json_get("warning")
    if warning:
        _stderr_line(f"warning: {warning}")
    summary = [f"created token {result.get('id', '?')} for user {user}"]
    summary += _describe_lines(token, now)
    _emit_token(hub, args, token, summary)


def _describe_lines(raw: str, now: int) -> list[str]:
    try:
        token = Token.load(raw)
    except TokenError:
        return []
    return ["  " + r.describe(now) for r in token.restrictions]


# --------------------------------------------------------------------------
# token-derive

def _subset_check(kind: str, wanted: list[str], existing: list[tuple[str, ...]],
                  key: Callable[[str], str] = str) -> None:
    for allowed in existing:
        keys = {key(name) for name in allowed}
        outside = [name for name in wanted if key(name) not in keys]
        if outside:
            raise ClientError(
                f"cannot widen the token: it is limited to {kind} {', '.join(allowed)}, "
                f"so {', '.join(outside)} cannot be added")


def _checked(restriction: Restriction) -> Restriction:
    """Held to the shared rules (round trip, project names), so only valid caveats go out."""
    try:
        return validated(restriction)
    except MalformedCaveat as exc:
        raise ClientError(str(exc)) from None


def _derive_window(
    token: Token, args: argparse.Namespace, now: int,
) -> tuple[list[Restriction], str | None]:
    """The validity window token-derive adds, and a note to print if all goes well."""
    if args.expires is None and args.not_before is None:
        return [], None
    current_end, current_start = token.expires, token.not_before
    end = current_end
    note = None
    if args.expires is not None:
        if args.expires.strip().lower() == "never":
            raise ClientError(
                "-e never: a derived token cannot outlive the token it comes from")
        end = _parse_expires(args.expires, now, allow_never=False)
        if current_end is not None and end > current_end:
            # Not an error: every caveat is checked, so a later expiry
            # cannot widen the token; the parent's end simply stays in force.
            # (Said once every check passed: a refusal is one line.)
            note = (
                f"note: the token already expires at {format_time(current_end)} "
                f"({describe_relative(current_end, now)}), before -e {args.expires!r}; "
                "that earlier expiry still applies")
            end = current_end
    start = current_start if current_start is not None else now - CLOCK_SKEW
    if args.not_before is not None:
        start = _parse_time("--not-before", args.not_before, now, False)
        if current_start is not None and start < current_start:
            raise ClientError(
                f"cannot widen the token: it is not valid before {format_time(current_start)}, "
                f"--not-before {args.not_before!r} would be earlier")
    if end is None:
        raise ClientError("the token never expires: give -e together with --not-before")
    if start >= end:
        raise ClientError(
            f"the token would never be valid: it would start at {format_time(start)} "
            f"but expire at {format_time(end)}")
    return [ValidityWindow(not_after=end, not_before=start)], note


def derive_restrictions(token: Token, args: argparse.Namespace, now: int) -> list[Restriction]:
    """The restrictions token-derive adds; raises ClientError for anything that widens."""
    added, note = _derive_window(token, args, now)
    existing = token.restrictions
    projects = split_list(args.projects)
    if projects is not None:
        # an invalid name is the first thing to say, whatever the token allows
        restriction = _checked(ProjectNames(tuple(projects)))
        _subset_check("projects", projects, [
            r.names for r in existing
            if isinstance(r, (ProjectNames, LegacyProjectNames, V1Projects))],
            key=normalize_project)
        added.append(restriction)
    indexes = split_list(args.indexes)
    if indexes is not None:
        _subset_check("indexes", indexes, [
            r.indexes for r in existing if isinstance(r, (Indexes, V1Indexes))])
        added.append(_checked(Indexes(tuple(indexes))))
    allowed = split_list(args.allowed)
    if allowed is not None:
        unknown = [p for p in allowed if p not in TOKEN_PERMISSIONS]
        if unknown:
            raise ClientError(
                f"unknown permission {', '.join(unknown)}; tokens can be limited to: "
                + ", ".join(TOKEN_PERMISSIONS))
        _subset_check("permissions", allowed, [
            r.permissions for r in existing if isinstance(r, (Allowed, V1Allowed))])
        added.append(_checked(Allowed(tuple(allowed))))
    ips = split_list(args.ips)
    if ips is not None:
        added.append(_derive_networks(ips, existing))
    if note is not None:
        _stderr_line(note)
    return added


def _derive_networks(ips: list[str], existing: Iterable[Restriction]) -> Restriction:
    """A client networks caveat inside every one the token has already."""
    restriction = _checked(ClientNetworks(tuple(ips)))
    wanted = [(text, ip_network(text)) for text in ips]
    for current in existing:
        if not isinstance(current, ClientNetworks):
            continue
        networks = current.parsed()
        outside = [text for text, net in wanted if not network_within(net, networks)]
        if outside:
            raise ClientError(
                f"cannot widen the token: it is limited to client networks "
                f"{', '.join(current.networks)}, so {', '.join(outside)} cannot be added")
    return restriction


@_command
def token_derive(hub: Any, args: argparse.Namespace) -> None:
    if all(getattr(args, key) is None
           for key in ("expires", "not_before", "allowed", "indexes", "projects", "ips")):
        raise ClientError(
            "nothing to restrict: give at least one of -e, --not-before, -a, -i, -p, --ip")
    token = Token.load(read_token(args.token_file, args.token))
    now = int(time.time())
    added = derive_restrictions(token, args, now)
    derived = token.derive(*added)
    state, text = token_state(derived.restrictions, now)
    summary = [f"derived from token {token.token_id} of user {token.user}, adding:"]
    summary += ["  " + r.describe(now) for r in added]
    if state != "valid":
        summary.append(f"warning: the derived token is {text}")
    _emit_token(hub, args, derived.dump(), summary)


# --------------------------------------------------------------------------
# token-inspect

@_command
def token_inspect(hub: Any, args: argparse.Namespace) -> None:
    token = Token.load(read_token(args.token_file, args.token))
    now = int(time.time())
    data = inspect_data(token, now)
    if args.json:
        _print_json(data)
        return
    lines = [
        f"user:         {token.user}",
        f"token id:     {token.token_id}",
        f"state:        {data['state_description']}",
    ]
    if token.restrictions:
        lines.append("restrictions:")
        lines += [f"  - {r['description']}" for r in data["restrictions"]]
    else:
        lines.append("restrictions: none")
    _stdout_lines(lines)


# --------------------------------------------------------------------------
# token-list

@_command
def token_list(hub: Any, args: argparse.Namespace) -> None:
    if args.json:
        _keep_stdout_for_data(hub)
    user, url = _user_url(hub, args.user, "list tokens")
    reply = _request(hub, "get", url.addpath("+tokens"), None, "tokens-info", "token-list")
    tokens = (reply.result or {}).get("tokens")
    if not isinstance(tokens, dict):
        raise ClientError("token-list: the server's answer has no token list")
    now = int(time.time())
    entries = [list_entry(tid, info if isinstance(info, dict) else {}, now)
               for tid, info in tokens.items()]
    # oldest first; the server lists in creation order, which breaks ties
    # within one second (a stable sort keeps it)
    entries.sort(key=lambda e: e["created"] if isinstance(e["created"], int) else 0)
    if args.json:
        _print_json({"user": user, "tokens": entries})
        return
    if not entries:
        hub.info(f"no tokens for user {user}")
        return
    for entry in entries:
        _print_entry(entry, now)


def _print_entry(entry: dict[str, Any], now: int) -> None:
    title = entry["id"]
    if entry["description"]:
        title += f"  {entry['description']}"
    created = entry["created"]
    lines = [title]
    if isinstance(created, int):
        lines.append(f"    created  {format_time(created)} ({describe_relative(created, now)})")
    lines.append(f"    state    {entry['state_description']}")
    if "last_used" in entry:
        lines.append(f"    used     {describe_last_use(entry, now)}")
    if entry.get("format") == "1.x":
        lines.append("    format   older devpi-tokens 1.x token")
    lines += [f"    - {r['description']}" for r in entry["restrictions"]]
    _stdout_lines(lines)


# --------------------------------------------------------------------------
# token-delete

@_command
def token_delete(hub: Any, args: argparse.Namespace) -> None:
    token_id = args.token_id.strip()
    if not TOKEN_ID.fullmatch(token_id):
        raise ClientError(
            f"{token_id[:20]!r} is not a token id (see 'devpi token-list')")
    user, url = _user_url(hub, args.user, "delete a token")
    reply = _request(hub, "delete", url.addpath("+tokens").addpath(token_id), None,
                     "", "token-delete")
    message = reply.json_get("message")
    hub.info(message or f"token {token_id} of user {user} deleted")


# --------------------------------------------------------------------------
# token-login

@_command
def token_login(hub: Any, args: argparse.Namespace) -> None:
    if args.trusted_publishing and (args.token_file is not None or args.token is not None):
        raise ClientError(
            "--trusted-publishing gets the token from the server in exchange for "
            "the CI job's identity: give no -f or --token with it")
    _require_server(hub)
    if args.trusted_publishing:
        login_with_token(hub, client_trusted.exchange(hub), "trusted publishing token")
        return
    login_with_token(hub, read_token(args.token_file, args.token))


def login_with_token(hub: Any, raw: str, kind: str = "token") -> None:
    """Check ``raw`` locally and with the server, then store it as the login."""
    token = Token.load(raw)
    now = int(time.time())
    state, text = token_state(token.restrictions, now)
    if state != "valid":
        raise ClientError(f"{kind} {token.token_id} of user {token.user} is {text}")
    _verify_with_server(hub, token)
    hub.current.set_auth(token.user, raw)
    message = f"logged in {token.user!r} with {kind} {token.token_id}"
    if hub.current.index:
        message += f" at {_index_name(hub)!r}"
    hub.info(f"{message}, {text}")
    if hub.current.index:
        # like 'devpi login': warns if the token cannot read the current index
        hub.validate_index_access()


def _index_name(hub: Any) -> str:
    """The current index as USER/INDEX (devpi keeps the full URL)."""
    root: str = hub.current.root_url.url
    index: str = hub.current.index_url.url
    if index.startswith(root):
        return index[len(root):].strip("/")
    return index


def _verify_with_server(hub: Any, token: Token) -> None:
    """Ask the server who it thinks we are with this token; refuse on any doubt."""
    url = hub.current.root_url.addpath("+api")
    reply = hub.http_api("get", url, None, quiet=True, fatal=False,
                         auth=(token.user, token.raw))
    if reply.status_code != 200:
        raise ClientError(f"the server refused the token: {_refusal(reply)}")
    status = (reply.result or {}).get("authstatus") or []
    if len(status) < 2 or status[0] != "ok" or status[1] != token.user:
        raise ClientError(
            "the server did not accept the token (is devpi-tokens installed on the "
            f"server, and is the token from this server?); auth status: {status[:1]}")


# --------------------------------------------------------------------------
# token-purge

@_command
def token_purge(hub: Any, args: argparse.Namespace) -> None:
    user, url = _user_url(hub, args.user, "purge expired tokens")
    reply = _request(hub, "post", url.addpath("+tokens-purge"), {},
                     "tokens-purged", "token-purge")
    removed = (reply.result or {}).get("removed")
    if not isinstance(removed, list):
        raise ClientError("token-purge: the server's answer has no list of removed tokens")
    if not removed:
        hub.info(f"no expired tokens for user {user}")
        return
    plural = "" if len(removed) == 1 else "s"
    hub.info(f"removed {len(removed)} expired token{plural} of user {user}: "
             + ", ".join(str(token_id) for token_id in removed))
