"""Reading through an allowed index's bases, and keeping that from widening.

An index-restricted token reads (``pkg_read``) the indexes its allowed
indexes inherit from, because their simple pages link to the bases' ``+f/``
files.  A token that may also create or change those indexes could make
one inherit from any index its user can read, and then read it through the
allowed one.  So :class:`BasesGuard` looks at what devpi-server wrote for an
index change made with such a token, inside the same keyfs transaction: if
an allowed index now inherits from an index the token could not read
before, the transaction is doomed, so nothing is stored, and the answer is
a 403.  So bases are followed only where the user (with the password) or
the token's own listed indexes put them.  Even an index anyone may read
today is refused as a new base: it could be made private later, and the
token would keep reading it.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any

from .restrictions import Restriction
from .restrictions import allowed_index_sets


if TYPE_CHECKING:
    from pyramid.request import Request

#: Methods that can create or change an index (PUT creates, PATCH changes).
INDEX_CHANGING_METHODS = frozenset({"PUT", "PATCH"})


def _stage(xom: Any, index: str) -> Any:
    user, _, name = index.partition("/")
    if not user or not name:
        return None
    return xom.model.getstage(user, name)


def resolution_order(xom: Any, index: str) -> frozenset[str]:
    """Names of the indexes devpi reads ``index`` through, itself excluded."""
    stage = _stage(xom, index)
    if stage is None:
        return frozenset()
    return frozenset(base.name for base in stage.sro()) - {index}


def _readable(xom: Any, indexes: Iterable[str]) -> frozenset[str]:
    result = set(indexes)
    for index in list(result):
        result |= resolution_order(xom, index)
    return frozenset(result)


class BasesGuard:
    """What an index-restricted token could read before an index change."""

    def __init__(self, xom: Any, index_sets: list[tuple[str, ...]]) -> None:
        self.xom = xom
        self.index_sets = index_sets
        self.before = [_readable(xom, indexes) for indexes in index_sets]

    @classmethod
    def start(cls, request: Request, restrictions: Iterable[Restriction]) -> BasesGuard | None:
        """A guard for this request, or None when it cannot widen anything."""
        if request.method not in INDEX_CHANGING_METHODS:
            return None
        index_sets = allowed_index_sets(restrictions)
        if not index_sets:
            return None
        return cls(request.registry["xom"], index_sets)

    def widening(self) -> str | None:
        """The reason to refuse what was just written, or None if it is fine."""
        for indexes, before in zip(self.index_sets, self.before, strict=True):
            gained = sorted(_readable(self.xom, indexes) - before)
            if gained:
                return (
                    f"token restricted to indexes {', '.join(indexes)} cannot make them "
                    f"inherit from {', '.join(gained)}: the token may not read "
                    f"{'it' if len(gained) == 1 else 'them'}; change bases with the "
                    "password, or list those indexes in the token")
        return None
