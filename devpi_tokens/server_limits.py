"""Server-wide limits on tokens: ``--tokens-max-lifetime DURATION``.

:func:`add_parser_options` adds the option; :func:`max_lifetime_from_xom`
reads it once at startup (a bad value raises :class:`LimitError`, which
stops the server with its message).  The result, a :class:`MaxLifetime` or
None, is kept on the :class:`~.server_store.TokenStore`, so judging a token
costs a couple of dict lookups per request.

With the option, the limit binds everyone, root included:

- a token's lifetime is its expiry minus its creation; ``never`` exceeds
  every limit;
- creating a token beyond the limit is a 403 naming the limit as configured;
  a create without ``expires`` gets ``created + limit`` when the limit is
  shorter than the default lifetime;
- existing tokens beyond the limit (the limit was lowered) are refused at
  use, derived tokens by the record of the token they were derived from,
  and listings mark them ``exceeds_max_lifetime``.

Records written by devpi-tokens 1.x carry no creation time: they exceed
the limit when they never expire, and are within it otherwise (their
expiry still ends them).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Final

from .durations import DurationError
from .durations import parse_duration
from .server_store import record_expires


OPTION: Final = "--tokens-max-lifetime"


class LimitError(Exception):
    """A limit option with a bad value; the message says which and why."""


@dataclass(frozen=True)
class MaxLifetime:
    """The longest lifetime a token may have, as seconds and as configured."""

    seconds: int
    #: the option's value as the admin wrote it (``30d``), for messages
    text: str

    @property
    def message(self) -> str:
        return f"tokens may live at most {self.text} on this server ({OPTION})"

    def exceeded_by(self, created: int, expires: int | None) -> bool:
        """True when a token created at ``created`` and ending at ``expires`` lives too long."""
        return expires is None or expires - created > self.seconds

    def exceeded_by_record(self, record: Mapping[str, Any]) -> bool:
        """True when the token of ``record`` lives longer than the limit.

        A 1.x record (no ``created``) exceeds it only when it never expires.
        """
        created = record.get("created")
        expires = record_expires(record)
        if type(created) is not int:
            return expires is None
        return self.exceeded_by(created, expires)

    def refusal(self, user: str, token_id: str) -> str:
        """The reason a token beyond the limit is refused."""
        return f"token {token_id} of user '{user}' lives too long: {self.message}"


def add_parser_options(parser: Any) -> None:
    """Add the option to devpi-server's parser (from ``devpiserver_add_parser_options``)."""
    addgroup = getattr(parser, "addgroup", None) or parser.add_argument_group
    group = addgroup("devpi-tokens limits")
    group.add_argument(
        OPTION, metavar="DURATION", dest="tokens_max_lifetime", default=None,
        help="the longest lifetime (expiry minus creation) of any token, root's "
             "included, e.g. 30d, 1 week, 12h. Longer tokens and tokens that never "
             "expire cannot be created, and existing ones are refused. Default: no "
             "limit (only root and --restrict-modify users may create tokens that "
             "never expire or live longer than 366 days)")


def parse_max_lifetime(text: str) -> MaxLifetime:
    """The limit of an option value, or :class:`LimitError`."""
    try:
        seconds = parse_duration(text)
    except DurationError:
        raise LimitError(
            f"{OPTION} {text!r} is not a valid duration: use e.g. 30d, 1 week, 12h "
            "(at most 100 years)") from None
    if seconds <= 0:
        raise LimitError(f"{OPTION} {text!r} must be longer than zero")
    return MaxLifetime(seconds, text.strip())


def max_lifetime_from_xom(xom: Any) -> MaxLifetime | None:
    """This server's limit from ``xom.config`` (None without the option)."""
    text = getattr(xom.config.args, "tokens_max_lifetime", None)
    if text is None:
        return None
    return parse_max_lifetime(str(text))
