"""The one error type of trusted publishing: a refusal code and a reason.

``code`` is one of the codes the mint endpoint answers with (PyPI's codes,
which uv and pypa/gh-action-pypi-publish show); ``description`` is written
for a person and never contains a token.
"""
from __future__ import annotations

from typing import Final

#: The codes a refusal may carry.
CODES: Final = frozenset({
    "invalid-payload",
    "not-enabled",
    "invalid-token",
    "invalid-publisher",
    "invalid-reuse-token",
})


class OIDCError(Exception):
    """A refused token exchange: ``code`` (see :data:`CODES`) and ``description``."""

    def __init__(self, code: str, description: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown OIDC error code {code!r}")
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
