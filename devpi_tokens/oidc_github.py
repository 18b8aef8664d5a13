"""GitHub Actions as a trusted publisher: the publisher value and its claim rules.

A publisher names a repository (``owner/repo``), a workflow file in its
``.github/workflows/`` and optionally a deployment environment.  A GitHub
Actions ID token matches it when:

- ``repository`` is the publisher's repository (case-insensitive, as GitHub
  treats names) and ``repository_owner`` its owner part;
- ``job_workflow_ref`` is ``<repository>/.github/workflows/<workflow>@<ref>``
  (repository case-insensitive, workflow file exactly, any ref);
- ``environment`` equals the publisher's (case-insensitive, as GitHub
  treats environment names) when the publisher names one;
- ``event_name`` is not ``pull_request_target`` (such runs execute with the
  base repository's identity on behalf of code from a fork);
- ``repository_owner_id`` is the one pinned at the first successful exchange
  (a deleted account whose name was taken again has another id).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
import re

PROVIDER = "github"

#: The issuer of GitHub Actions ID tokens.
ISSUER = "https://token.actions.githubusercontent.com"

#: Fields of a publisher body (besides the common ones) for this provider.
BODY_KEYS = frozenset({"repository", "workflow", "environment"})

# GitHub's rules: owner (user or organization) 1-39 letters, digits and
# inner hyphens; repository names letters, digits, '.', '_', '-'.
_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")
_WORKFLOW = re.compile(r"[^/@\x00-\x1f\x7f]{1,250}\.ya?ml")
_ENVIRONMENT = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string")
    return value


def optional_environment(data: Mapping[str, Any]) -> str | None:
    """The body's ``environment`` (None when absent, null or empty)."""
    value = data.get("environment")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _ENVIRONMENT.fullmatch(value):
        raise ValueError(
            "'environment' must be a string of at most 255 printable characters")
    return value


def claim(claims: Mapping[str, Any], name: str) -> str | None:
    """A string claim, or None when it is missing or not a string."""
    value = claims.get(name)
    return value if isinstance(value, str) else None


def printable(text: str, limit: int = 200) -> str:
    """``text`` without control characters, cut at ``limit`` (for descriptions)."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


@dataclass(frozen=True)
class GitHubPublisher:
    """A GitHub repository's workflow (and environment) trusted to publish."""

    repository: str
    workflow: str
    environment: str | None = None

    provider = PROVIDER
    issuer = ISSUER

    @classmethod
    def from_body(cls, data: Mapping[str, Any]) -> GitHubPublisher:
        """The publisher a request body describes; ValueError with the reason."""
        repository = _text(data, "repository")
        owner, sep, name = repository.partition("/")
        if (
            not sep or not _OWNER.fullmatch(owner) or not _REPO.fullmatch(name)
            or name in (".", "..")
        ):
            raise ValueError(
                f"'repository' must be a GitHub repository of the form 'owner/repo', "
                f"not {repository!r}")
        workflow = _text(data, "workflow")
        if not _WORKFLOW.fullmatch(workflow):
            raise ValueError(
                "'workflow' must be the file name of a workflow in .github/workflows/ "
                f"(like 'release.yml': no '/', ending in .yml or .yaml), not {workflow!r}")
        return cls(repository, workflow, optional_environment(data))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> GitHubPublisher:
        """The publisher of a stored record (written by :meth:`fields`)."""
        environment = record.get("environment")
        return cls(
            str(record["repository"]), str(record["workflow"]),
            environment if isinstance(environment, str) else None)

    def fields(self) -> dict[str, Any]:
        """What is stored and listed of this publisher."""
        return {
            "provider": self.provider,
            "issuer": self.issuer,
            "repository": self.repository,
            "workflow": self.workflow,
            "environment": self.environment,
        }

    def identity(self) -> tuple[str, ...]:
        """What may be registered only once on a server."""
        return (
            self.provider, self.issuer, self.repository.lower(), self.workflow,
            (self.environment or "").lower())

    @property
    def owner(self) -> str:
        return self.repository.partition("/")[0]

    def summary(self) -> str:
        """The publisher in words: ``github owner/repo, workflow release.yml``."""
        text = f"github repository {self.repository}, workflow {self.workflow}"
        if self.environment:
            text += f", environment {self.environment}"
        return text

    # -- claims ------------------------------------------------------------

    def same_source(self, claims: Mapping[str, Any]) -> bool:
        """True when the token comes from this publisher's repository at all."""
        repository = claim(claims, "repository")
        return repository is not None and repository.lower() == self.repository.lower()

    def check(self, claims: Mapping[str, Any]) -> str | None:
        """None when the claims match this publisher; else which claim did not."""
        repository = claim(claims, "repository")
        if repository is None or repository.lower() != self.repository.lower():
            return (
                f"the token's repository {repository!r} is not the publisher's "
                f"{self.repository!r}")
        owner = claim(claims, "repository_owner")
        if owner is None or owner.lower() != self.owner.lower():
            return (
                f"the token's repository_owner {owner!r} is not the publisher's "
                f"{self.owner!r}")
        ref = claim(claims, "job_workflow_ref")
        if ref is None or self.workflow_ref(ref) is None:
            return (
                f"the token's job_workflow_ref {ref!r} is not the publisher's workflow "
                f"{self.repository}/.github/workflows/{self.workflow}@<ref>")
        if self.environment is not None:
            environment = claim(claims, "environment")
            if environment is None or environment.lower() != self.environment.lower():
                return (
                    f"the token's environment {environment!r} is not the publisher's "
                    f"{self.environment!r}")
        event = claim(claims, "event_name")
        if event == "pull_request_target":
            return (
                "the token comes from a pull_request_target run, which trusted "
                "publishing refuses (it runs on behalf of code from forks)")
        return None

    def workflow_ref(self, job_workflow_ref: str) -> str | None:
        """The ref of a ``job_workflow_ref`` naming this publisher's workflow, else None."""
        head = job_workflow_ref[: len(self.repository)]
        rest = job_workflow_ref[len(self.repository):]
        prefix = f"/.github/workflows/{self.workflow}@"
        if head.lower() != self.repository.lower() or not rest.startswith(prefix):
            return None
        ref = rest[len(prefix):]
        return ref or None

    def owner_id(self, claims: Mapping[str, Any]) -> str | None:
        """The ``repository_owner_id`` to pin (GitHub gives it as a string)."""
        value = claims.get("repository_owner_id")
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) and value else None

    def owner_problem(self, claims: Mapping[str, Any], pinned: str | None) -> str | None:
        """Why the token's owner id refuses it (pinned at the first exchange), or None."""
        current = self.owner_id(claims)
        if current is None:
            return "the token has no repository_owner_id claim"
        if pinned is not None and current != pinned:
            return (
                f"the token's repository_owner_id {current} is not {pinned}, the id of "
                f"{self.owner!r} when this publisher was first used: the account was "
                "deleted and its name taken again? Delete the publisher and register it "
                "anew if this is intended")
        return None


def describe_source(claims: Mapping[str, Any]) -> str:
    """Where a minted token came from, for its description."""
    repository = claim(claims, "repository") or "?"
    workflow_ref = claim(claims, "job_workflow_ref") or ""
    workflow_path = workflow_ref.partition("@")[0]
    workflow = workflow_path.rpartition("/")[2] or "?"
    ref = claim(claims, "ref") or workflow_ref.partition("@")[2] or "?"
    sha = claim(claims, "sha") or "?"
    text = f"trusted publishing: github {repository} ({workflow}) ref {ref} sha {sha}"
    environment = claim(claims, "environment")
    if environment:
        text += f" environment {environment}"
    return printable(text, 1000)
