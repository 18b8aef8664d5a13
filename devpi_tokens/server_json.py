"""Reading the JSON bodies of the plugin's own endpoints, bounded.

Every body the plugin parses itself goes through :func:`load_json_body`:
at most :data:`MAX_BODY` bytes, UTF-8, no NaN/Infinity, and nesting no
deeper than :data:`MAX_DEPTH`, checked before the parser runs, so a hostile
body costs a linear scan and answers 400 with a reason (never a
``RecursionError`` and a 500).
"""
from __future__ import annotations

from typing import Any
import json

#: Longest body the plugin's endpoints read; real ones are a few hundred bytes.
MAX_BODY = 64 * 1024
#: Deepest nesting of arrays and objects accepted (real bodies need 2).
MAX_DEPTH = 16


class BadBody(ValueError):
    """A body that cannot be used; the message says why, fit for the client."""


def _no_constant(name: str) -> Any:
    raise BadBody(f"{name} is not allowed in the request body")


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_json_body(raw: bytes, max_bytes: int = MAX_BODY, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw``, or :class:`BadBody` with the reason."""
    if len(raw) > max_bytes:
        raise BadBody(f"the request body is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody("the request body is not UTF-8") from None
    if nesting_depth(text) > max_depth:
        raise BadBody(f"the request body nests deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except BadBody:
        raise
    except (ValueError, RecursionError) as exc:
        reason = exc.args[0] if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise BadBody(f"the request body is not valid JSON ({reason})") from None
