"""Text from tokens and servers, made safe to show on a terminal.

A token anyone handed you, or a server's answer, may carry control
characters (terminal escapes, carriage returns, line or paragraph
separators, bidirectional overrides) in its user name, its restrictions or a
description.  Shown as they are, they could rewrite what the terminal
displays or forge lines of output.  :func:`printable` keeps every printable
character (non-ASCII letters included) and writes the rest as Python
escapes.
"""
from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with every non-printable character as an escape (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text)
