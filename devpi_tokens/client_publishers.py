"""``devpi publisher-add``, ``publisher-list`` and ``publisher-delete``.

A trusted publisher is a CI identity (a GitHub repository and workflow file,
or a GitLab project and CI configuration file, optionally pinned to a
deployment environment) that a user trusts to upload to some of their own
indexes.  These commands manage them through the server's
``/<user>/+publishers`` endpoints, as token-create, token-list and
token-delete manage tokens (password login only; root or a
``--restrict-modify`` user may name another user with ``-u``).  The CI side
is ``devpi token-login --trusted-publishing`` (client_trusted).

Arguments are checked before any server contact, each problem a one-line
error; the server checks again (and alone knows whether an index exists or
the identity is registered already: 409).
"""
from __future__ import annotations

import argparse
import re
import time
from typing import Any
from urllib.parse import urlsplit

from .client_commands import TOKEN_ID
from .client_commands import _command
from .client_commands import _keep_stdout_for_data
from .client_commands import _print_json
from .client_commands import _request
from .client_commands import _stdout_lines
from .client_commands import _user_url
from .client_io import ClientError
from .client_io import split_list
from .display import printable
from .restrictions import describe_relative
from .restrictions import format_time
from .restrictions import project_name_problem

#: GitHub's rules (as the server checks them): owner (user or organisation)
#: 1-39 letters, digits and hyphens; repository 1-100 letters, digits, ".",
#: "_", "-"
GITHUB_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
GITHUB_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")
#: one segment of a GitLab group/subgroup/project path
GITLAB_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
#: an index name (devpi's own rule is looser; this is what the server accepts)
INDEX_PART = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}")
MAX_TEXT = 255
DEFAULT_GITLAB = "https://gitlab.com"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# --------------------------------------------------------------------------
# checking the arguments (no server contact)

def _text(option: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise ClientError(f"{option}: empty value")
    if not value.isprintable():
        raise ClientError(f"{option} {value!r}: control characters are not allowed")
    if len(value) > MAX_TEXT:
        raise ClientError(f"{option}: at most {MAX_TEXT} characters")
    return value


def _looks_like_url(value: str) -> bool:
    return "://" in value or value.lower().startswith(("github.com/", "gitlab.com/", "www."))


def github_repository(value: str) -> str:
    """``OWNER/REPO`` as GitHub allows it."""
    value = _text("--github", value)
    if _looks_like_url(value):
        raise ClientError(
            f"--github {value!r}: give the repository as OWNER/REPO, not a URL")
    owner, sep, repo = value.partition("/")
    if repo.endswith(".git"):
        repo = repo[:-4]
    if not sep or "/" in repo:
        raise ClientError(f"--github {value!r}: give the repository as OWNER/REPO")
    if not GITHUB_OWNER.fullmatch(owner):
        raise ClientError(
            f"--github {value!r}: {owner!r} is not a GitHub user or organisation name")
    if not GITHUB_REPO.fullmatch(repo) or repo in (".", ".."):
        raise ClientError(f"--github {value!r}: {repo!r} is not a GitHub repository name")
    return f"{owner}/{repo}"


def gitlab_project(value: str) -> str:
    """``GROUP[/SUBGROUP...]/PROJECT`` as GitLab allows it."""
    value = _text("--gitlab", value)
    if _looks_like_url(value):
        raise ClientError(
            f"--gitlab {value!r}: give the project path as GROUP/PROJECT, not a URL "
            "(a self-managed GitLab goes in --issuer)")
    parts = value.split("/")
    if len(parts) < 2:
        raise ClientError(
            f"--gitlab {value!r}: give the project path as GROUP/PROJECT "
            "(or GROUP/SUBGROUP/PROJECT)")
    for part in parts:
        if not GITLAB_SEGMENT.fullmatch(part) or part in (".", ".."):
            raise ClientError(f"--gitlab {value!r}: {part!r} is not a GitLab path part")
    return value


def _yaml_file(value: str, example: str) -> None:
    if "@" in value:
        raise ClientError(f"--workflow {value!r}: no '@' (give the file without a ref)")
    if not value.endswith((".yml", ".yaml")):
        raise ClientError(f"--workflow {value!r}: must be a .yml or .yaml file, e.g. {example}")


def github_workflow(value: str) -> str:
    value = _text("--workflow", value)
    if "/" in value:
        name = value.rsplit("/", 1)[1]
        raise ClientError(
            f"--workflow {value!r}: give the file name in .github/workflows only, "
            f"e.g. {name!r}")
    _yaml_file(value, "release.yml")
    return value


def gitlab_ci_file(value: str) -> str:
    value = _text("--workflow", value)
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise ClientError(
            f"--workflow {value!r}: give the CI configuration file's path within the "
            "project, e.g. .gitlab-ci.yml or ci/release.yml")
    _yaml_file(value, ".gitlab-ci.yml")
    return value


def issuer_url(value: str) -> str:
    value = _text("--issuer", value).rstrip("/")
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ClientError(f"--issuer {value!r}: not a URL") from None
    secure = parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK)
    if not secure or not host or parts.query or parts.fragment or parts.username:
        raise ClientError(
            f"--issuer {value!r}: give the GitLab instance's https URL, "
            "e.g. https://gitlab.example.com")
    return value


def index_names(values: list[str] | None) -> list[str]:
    """The -i values, checked: ``INDEX`` or ``USER/INDEX`` (users filled in later)."""
    names = split_list(values)
    if not names:
        raise ClientError(
            "-i INDEXES is required: the indexes the CI job may upload to, e.g. -i dev")
    for name in names:
        parts = name.split("/")
        if len(parts) > 2 or not all(INDEX_PART.fullmatch(p) for p in parts):
            raise ClientError(f"-i {name!r}: give an index as INDEX or USER/INDEX")
    return names


def own_indexes(names: list[str], user: str) -> list[str]:
    """``INDEX`` as ``USER/INDEX``; another user's index is refused."""
    result: list[str] = []
    for name in names:
        full = name if "/" in name else f"{user}/{name}"
        if full.split("/")[0] != user:
            raise ClientError(
                f"-i {name!r}: a publisher of user {user} may only upload to "
                f"{user}'s own indexes")
        if full not in result:
            result.append(full)
    return result


def project_names(values: list[str] | None) -> list[str] | None:
    names = split_list(values)
    for name in names or ():
        problem = project_name_problem(name)
        if problem:
            raise ClientError(f"-p: {problem}")
    return names


def publisher_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST body from the arguments, checked; indexes still as given."""
    if args.github is not None and args.gitlab is not None:
        raise ClientError("give either --github OWNER/REPO or --gitlab GROUP/PROJECT, not both")
    if args.github is None and args.gitlab is None:
        raise ClientError(
            "give the CI identity to trust: --github OWNER/REPO or --gitlab GROUP/PROJECT")
    if args.workflow is None:
        example = "release.yml" if args.github is not None else ".gitlab-ci.yml"
        raise ClientError(
            f"--workflow FILE is required (GitHub: the workflow file name, e.g. release.yml; "
            f"GitLab: the CI configuration file, e.g. .gitlab-ci.yml), e.g. --workflow {example}")
    body: dict[str, Any]
    if args.github is not None:
        if args.issuer is not None:
            raise ClientError(
                "--issuer is for GitLab only (GitHub Actions' issuer is always "
                "https://token.actions.githubusercontent.com)")
        body = {"provider": "github", "repository": github_repository(args.github),
                "workflow": github_workflow(args.workflow)}
    else:
        body = {"provider": "gitlab", "project_path": gitlab_project(args.gitlab),
                "ci_config_path": gitlab_ci_file(args.workflow)}
        if args.issuer is not None:
            body["issuer"] = issuer_url(args.issuer)
    if args.environment is not None:
        body["environment"] = _text("--environment", args.environment)
    body["indexes"] = index_names(args.indexes)
    projects = project_names(args.projects)
    if projects is not None:
        body["projects"] = projects
    if args.description is not None:
        body["description"] = args.description
    return body


# --------------------------------------------------------------------------
# describing publishers (add and list share this)

def _field(record: dict[str, Any], name: str) -> Any:
    """A publisher field, whether the server lists it flat or under "fields"."""
    if name in record:
        return record[name]
    fields = record.get("fields")
    return fields.get(name) if isinstance(fields, dict) else None


def _names(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def identity_words(record: dict[str, Any]) -> str:
    """``github owner/repo, workflow release.yml, environment pypi``."""
    provider = _field(record, "provider")
    environment = _field(record, "environment")
    if provider == "github":
        words = (f"github {_field(record, 'repository')}, "
                 f"workflow {_field(record, 'workflow')}")
    elif provider == "gitlab":
        words = (f"gitlab {_field(record, 'project_path')}, "
                 f"CI file {_field(record, 'ci_config_path')}")
    else:
        words = f"{provider} (unknown to this client)"
    words += f", environment {environment}" if environment else ", any environment"
    issuer = _field(record, "issuer")
    if provider == "gitlab" and issuer and issuer != DEFAULT_GITLAB:
        words += f", at {issuer}"
    return words


def detail_lines(record: dict[str, Any], now: int) -> list[str]:
    """The indented lines of one publisher's block."""
    lines = [f"    trusts   {identity_words(record)}"]
    indexes = _field(record, "indexes")
    lines.append(f"    indexes  {_names(indexes) if indexes else '(none)'}")
    projects = _field(record, "projects")
    lines.append(f"    projects {_names(projects) if projects else 'any'}")
    created = _field(record, "created")
    if isinstance(created, int):
        lines.append(f"    created  {format_time(created)} ({describe_relative(created, now)})")
    owner_id = _field(record, "owner_id")
    if owner_id:
        lines.append(f"    owner id {owner_id} (pinned at the first exchange)")
    return lines


def list_entries(publishers: dict[str, Any]) -> list[dict[str, Any]]:
    """publisher-list --json's list: each record with its id, oldest first."""
    entries = []
    for pid, record in publishers.items():
        entry = dict(record) if isinstance(record, dict) else {}
        entry["id"] = pid
        entry.setdefault("description", "")
        entries.append(entry)
    entries.sort(key=lambda e: e["created"] if isinstance(e.get("created"), int) else 0)
    return entries


# --------------------------------------------------------------------------
# the commands

@_command
def publisher_add(hub: Any, args: argparse.Namespace) -> None:
    body = publisher_body(args)
    user, url = _user_url(hub, args.user, "add a publisher")
    body["indexes"] = own_indexes(body["indexes"], user)
    reply = _request(hub, "post", url.addpath("+publishers"), body,
                     "publisher-info", "publisher-add")
    result = reply.result
    if not isinstance(result, dict) or not result.get("id"):
        raise ClientError("publisher-add: the server's answer has no publisher id")
    record = {**body, **result}
    _stdout_lines([f"added trusted publisher {result['id']} for user {user}",
                   *detail_lines(record, int(time.time()))])


@_command
def publisher_list(hub: Any, args: argparse.Namespace) -> None:
    if args.json:
        _keep_stdout_for_data(hub)
    user, url = _user_url(hub, args.user, "list publishers")
    reply = _request(hub, "get", url.addpath("+publishers"), None,
                     "publishers-info", "publisher-list")
    publishers = (reply.result or {}).get("publishers")
    if not isinstance(publishers, dict):
        raise ClientError("publisher-list: the server's answer has no publisher list")
    entries = list_entries(publishers)
    if args.json:
        _print_json({"user": user, "publishers": entries})
        return
    if not entries:
        hub.info(f"no trusted publishers for user {user}")
        return
    now = int(time.time())
    for entry in entries:
        title = str(entry["id"])
        if entry["description"]:
            title += f"  {entry['description']}"
        _stdout_lines([title, *detail_lines(entry, now)])


@_command
def publisher_delete(hub: Any, args: argparse.Namespace) -> None:
    publisher_id = args.publisher_id.strip()
    if not TOKEN_ID.fullmatch(publisher_id):
        raise ClientError(
            f"{publisher_id[:20]!r} is not a publisher id (see 'devpi publisher-list')")
    user, url = _user_url(hub, args.user, "delete a publisher")
    reply = _request(hub, "delete", url.addpath("+publishers").addpath(publisher_id), None,
                     "", "publisher-delete")
    message = reply.json_get("message")
    hub.info(printable(message or f"publisher {publisher_id} of user {user} deleted"))
