"""The plugin's log: devpi-server's request log, with every value escaped.

Refusal reasons and audit lines carry text a client chose: a token's
identifier, a basic-auth user name, an upload's ``name``.  Written as they
are, a newline in any of them would let an unauthenticated client write a
log line of its choosing.  So every argument goes through :func:`escape`
(control characters, non-ASCII and backslashes as Python escapes, long
values cut), and the format strings themselves are always ours.
"""
from __future__ import annotations

from typing import Any

#: Longest value written into a log line; the rest is cut with "...".
MAX_LOGGED_VALUE = 300


def escape(value: Any) -> str:
    """``value`` as one line of printable ASCII (``\\n``, ``\\u212a`` ...)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_LOGGED_VALUE:
        text = text[:MAX_LOGGED_VALUE] + "..."
    return text.encode("unicode_escape").decode("ascii")


class Escaped:
    """A log argument that is escaped when (and only when) a line is written.

    The logger formats its arguments only for a record it emits, so a
    debug line the server does not write (the audit line of every read)
    costs no escaping.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape(self.value)

    __repr__ = __str__


class SafeLog:
    """``debug``/``info``/``warning``/``error`` with every argument escaped."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def _write(self, level: str, message: str, args: tuple[Any, ...]) -> None:
        getattr(self._logger, level)(message, *(Escaped(arg) for arg in args))

    def debug(self, message: str, *args: Any) -> None:
        self._write("debug", message, args)

    def info(self, message: str, *args: Any) -> None:
        self._write("info", message, args)

    def warning(self, message: str, *args: Any) -> None:
        self._write("warning", message, args)

    def error(self, message: str, *args: Any) -> None:
        self._write("error", message, args)


def log(logger: Any = None) -> SafeLog:
    """The escaping log over ``logger`` (default: devpi's per-thread log)."""
    if logger is None:
        from devpi_server.log import threadlog
        logger = threadlog
    return SafeLog(logger)
