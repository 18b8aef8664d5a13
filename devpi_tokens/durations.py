"""Times given on the command line: epoch seconds, durations, dates, ``never``.

``parse_when("90d", now)`` is ``now`` plus 90 days; ``"1 year"`` is 365
days.  The result is an epoch integer, or ``None`` for ``never``.
"""
from __future__ import annotations

from datetime import datetime
from datetime import timezone
import re

from .restrictions import TokenError


class DurationError(TokenError):
    """A time or duration that cannot be understood."""


_UNIT_SECONDS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 7 * 86400, "week": 7 * 86400, "weeks": 7 * 86400,
    "mo": 30 * 86400, "month": 30 * 86400, "months": 30 * 86400,
    "y": 365 * 86400, "yr": 365 * 86400, "year": 365 * 86400, "years": 365 * 86400,
}

_PART = re.compile(r"\s*([0-9]+)\s*([a-z]+)\s*,?")
_MAX_SECONDS = 100 * 365 * 86400

EXAMPLES = "an epoch timestamp, a date (2026-12-31), or a duration like 90d, 1 week, 2h30m"


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``2h30m``, ``1 week`` or ``90d``."""
    position, total, text = 0, 0, text.strip().lower()
    if not text:
        raise DurationError(f"empty duration; use {EXAMPLES}")
    while position < len(text):
        match = _PART.match(text, position)
        if match is None or match.group(2) not in _UNIT_SECONDS:
            raise DurationError(f"cannot understand {text!r}; use {EXAMPLES}")
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if total > _MAX_SECONDS:
        raise DurationError(f"duration {text!r} is longer than 100 years")
    return total


def _parse_date(text: str) -> int | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def parse_when(text: str, now: int, allow_never: bool = False) -> int | None:
    """An absolute epoch time from user input; ``None`` means never.

    Accepts epoch seconds, ISO dates (UTC unless they say otherwise),
    durations counted from ``now``, and ``never`` when ``allow_never``.
    """
    text = text.strip()
    if text.lower() == "never":
        if not allow_never:
            raise DurationError("'never' is not allowed here")
        return None
    if text.isdigit():
        if len(text) > 12:
            raise DurationError(f"timestamp {text[:20]!r} is too large")
        return int(text)
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ].*)?", text):
        when = _parse_date(text)
        if when is None:
            raise DurationError(f"cannot understand the date {text!r}")
        return when
    return now + parse_duration(text)
