"""GitLab CI/CD as a trusted publisher: the publisher value and its claim rules.

A publisher names a project (``group/sub/project``), the CI configuration
file of the pipeline (``.gitlab-ci.yml`` or another path in the project),
optionally an environment, and the GitLab instance (its issuer, default
``https://gitlab.com``).  A GitLab ID token matches it when:

- ``project_path`` is the publisher's (case-insensitive, as GitLab treats paths);
- ``ci_config_ref_uri`` is ``<host>/<project_path>//<ci_config_path>@<ref>``
  (host and project path case-insensitive, the file exactly, any ref);
- ``environment`` equals the publisher's (exactly) when the publisher names one.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
import re

from .oidc_github import claim
from .oidc_github import optional_environment
from .oidc_github import printable

PROVIDER = "gitlab"

#: The issuer of gitlab.com's ID tokens.
DEFAULT_ISSUER = "https://gitlab.com"

#: Fields of a publisher body (besides the common ones) for this provider.
BODY_KEYS = frozenset({"project_path", "ci_config_path", "environment", "issuer"})

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_CONFIG_SEGMENT = re.compile(r"[^/@\x00-\x1f\x7f]{1,255}")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string")
    return value


def check_issuer_url(url: str) -> str:
    """``url`` as an issuer (no trailing ``/``); ValueError when it cannot be one.

    https only (http for loopback hosts, which only tests use).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError(f"'issuer' {url!r} is not a URL") from None
    if parts.scheme not in ("https", "http") or not host or parts.query or parts.fragment:
        raise ValueError(f"'issuer' must be an https URL, not {url!r}")
    if parts.scheme == "http" and host not in _LOOPBACK:
        raise ValueError(f"'issuer' must be an https URL, not {url!r}")
    if parts.username or parts.password:
        raise ValueError("'issuer' must not contain credentials")
    return url.rstrip("/")


def issuer_host(issuer: str) -> str:
    """The host (and port, and path) of an issuer, as ``ci_config_ref_uri`` starts."""
    parts = urlsplit(issuer)
    return (parts.netloc + parts.path).rstrip("/")


@dataclass(frozen=True)
class GitLabPublisher:
    """A GitLab project's CI configuration (and environment) trusted to publish."""

    project_path: str
    ci_config_path: str
    environment: str | None = None
    issuer: str = DEFAULT_ISSUER

    provider = PROVIDER

    @classmethod
    def from_body(cls, data: Mapping[str, Any]) -> GitLabPublisher:
        """The publisher a request body describes; ValueError with the reason."""
        project_path = _text(data, "project_path")
        segments = project_path.split("/")
        if len(segments) < 2 or not all(_SEGMENT.fullmatch(s) for s in segments):
            raise ValueError(
                "'project_path' must be a GitLab project path of the form "
                f"'group/project' (subgroups allowed), not {project_path!r}")
        ci_config_path = _text(data, "ci_config_path")
        config_segments = ci_config_path.split("/")
        if (
            not all(_CONFIG_SEGMENT.fullmatch(s) for s in config_segments)
            or any(s in (".", "..") for s in config_segments)
            or not ci_config_path.endswith((".yml", ".yaml"))
        ):
            raise ValueError(
                "'ci_config_path' must be the path of the CI configuration file in the "
                "project (like '.gitlab-ci.yml'; relative, no '@', ending in .yml or "
                f".yaml), not {ci_config_path!r}")
        issuer = data.get("issuer")
        if issuer is None:
            issuer = DEFAULT_ISSUER
        elif not isinstance(issuer, str) or not issuer:
            raise ValueError("'issuer' must be a non-empty string (a GitLab instance's URL)")
        return cls(project_path, ci_config_path, optional_environment(data),
                   check_issuer_url(issuer))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> GitLabPublisher:
        """The publisher of a stored record (written by :meth:`fields`)."""
        environment = record.get("environment")
        return cls(
            str(record["project_path"]), str(record["ci_config_path"]),
            environment if isinstance(environment, str) else None,
            str(record.get("issuer") or DEFAULT_ISSUER))

    def fields(self) -> dict[str, Any]:
        """What is stored and listed of this publisher."""
        return {
            "provider": self.provider,
            "issuer": self.issuer,
            "project_path": self.project_path,
            "ci_config_path": self.ci_config_path,
            "environment": self.environment,
        }

    def identity(self) -> tuple[str, ...]:
        """What may be registered only once on a server."""
        return (
            self.provider, self.issuer.lower(), self.project_path.lower(),
            self.ci_config_path, self.environment or "")

    def summary(self) -> str:
        """The publisher in words."""
        text = f"gitlab project {self.project_path}, CI file {self.ci_config_path}"
        if self.environment:
            text += f", environment {self.environment}"
        if self.issuer != DEFAULT_ISSUER:
            text += f" on {self.issuer}"
        return text

    # -- claims ------------------------------------------------------------

    def same_source(self, claims: Mapping[str, Any]) -> bool:
        """True when the token comes from this publisher's project at all."""
        project_path = claim(claims, "project_path")
        return project_path is not None and project_path.lower() == self.project_path.lower()

    def check(self, claims: Mapping[str, Any]) -> str | None:
        """None when the claims match this publisher; else which claim did not."""
        project_path = claim(claims, "project_path")
        if project_path is None or project_path.lower() != self.project_path.lower():
            return (
                f"the token's project_path {project_path!r} is not the publisher's "
                f"{self.project_path!r}")
        uri = claim(claims, "ci_config_ref_uri")
        if uri is None or self.config_ref(uri) is None:
            expected = f"{issuer_host(self.issuer)}/{self.project_path}//{self.ci_config_path}"
            return (
                f"the token's ci_config_ref_uri {uri!r} is not the publisher's CI file "
                f"{expected}@<ref>")
        if self.environment is not None:
            environment = claim(claims, "environment")
            if environment != self.environment:
                return (
                    f"the token's environment {environment!r} is not the publisher's "
                    f"{self.environment!r}")
        return None

    def config_ref(self, uri: str) -> str | None:
        """The ref of a ``ci_config_ref_uri`` naming this publisher's CI file, else None."""
        base = f"{issuer_host(self.issuer)}/{self.project_path}"
        head, rest = uri[: len(base)], uri[len(base):]
        prefix = f"//{self.ci_config_path}@"
        if head.lower() != base.lower() or not rest.startswith(prefix):
            return None
        ref = rest[len(prefix):]
        return ref or None

    def owner_id(self, claims: Mapping[str, Any]) -> str | None:
        """Nothing is pinned for GitLab publishers."""
        return None

    def owner_problem(self, claims: Mapping[str, Any], pinned: str | None) -> str | None:
        return None


def describe_source(claims: Mapping[str, Any]) -> str:
    """Where a minted token came from, for its description."""
    project_path = claim(claims, "project_path") or "?"
    uri = claim(claims, "ci_config_ref_uri") or ""
    config = uri.partition("//")[2].partition("@")[0] or "?"
    ref = claim(claims, "ref_path") or claim(claims, "ref") or uri.partition("@")[2] or "?"
    sha = claim(claims, "sha") or "?"
    text = f"trusted publishing: gitlab {project_path} ({config}) ref {ref} sha {sha}"
    environment = claim(claims, "environment")
    if environment:
        text += f" environment {environment}"
    return printable(text, 1000)
