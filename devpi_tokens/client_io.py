"""Reading tokens in and writing tokens out for the client commands.

Kept apart from the argparse handlers so the rules for secrets live in one
place: a token is read from a file, stdin, ``--token`` or a prompt without
echo, and written to stdout or to a file only its owner can read.
"""
from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Callable
from typing import TextIO

from .restrictions import TokenError


class ClientError(TokenError):
    """A problem with what the user asked for; the message is shown as is."""


def read_token(token_file: str | None, token: str | None,
               stdin: TextIO | None = None, prompt: str = "token: ") -> str:
    """The token text from ``-f FILE`` (``-`` = stdin), ``--token`` or a prompt.

    Surrounding whitespace (a trailing newline from ``echo`` or an editor)
    is removed; an empty result is an error.
    """
    if token_file is not None:
        text, source = _read_token_file(token_file, stdin or sys.stdin)
    elif token is not None:
        text, source = token, "--token"
    else:
        text, source = _prompt_token(prompt), "the prompt"
    text = text.strip()
    if not text:
        raise ClientError(f"no token given on {source}")
    return text


def _read_token_file(token_file: str, stdin: TextIO) -> tuple[str, str]:
    if token_file == "-":
        return stdin.read(), "stdin"
    path = Path(token_file).expanduser()
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise ClientError(f"cannot read token file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ClientError(f"cannot read token file {path}: {exc.strerror or exc}") from None


NO_TOKEN = "no token given: use -f FILE, -f - (stdin) or --token"


def _prompt_token(prompt: str) -> str:
    # getpass silently falls back to reading stdin with echo when there is no
    # terminal; a token must come from -f - in that case, so refuse instead.
    if not _have_terminal():
        raise ClientError(NO_TOKEN)
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise ClientError(NO_TOKEN) from None


def _have_terminal() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin.isatty()
    os.close(fd)
    return True


def write_private_file(path: str | os.PathLike[str], text: str,
                       confirm_overwrite: Callable[[str], bool]) -> Path:
    """Write ``text`` to a new file with mode 0600.

    An existing file is only replaced after ``confirm_overwrite(question)``
    says yes; the replacement is a fresh 0600 file moved into place, so the
    token never sits in a file with the old file's (possibly wider) mode.
    """
    target = Path(path).expanduser()
    data = text if text.endswith("\n") else text + "\n"
    try:
        _write_new(target, data)
        return target
    except FileExistsError:
        pass
    except OSError as exc:
        raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None
    if target.is_dir():
        raise ClientError(f"cannot write {target}: it is a directory")
    try:
        agreed = confirm_overwrite(f"{target} exists, overwrite it")
    except EOFError:
        agreed = False
    if not agreed:
        raise ClientError(f"not overwriting {target} (use -y to overwrite)")
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        _write_new(temp, data)
        os.replace(temp, target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def _write_new(path: Path, data: str) -> None:
    # O_EXCL: never follow a symlink or reuse a file someone else prepared.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask did, the owner must read it
        os.write(fd, data.encode("utf-8"))
    finally:
        os.close(fd)


def split_list(values: list[str] | None) -> list[str] | None:
    """Join repeated, comma-separated options into one list without duplicates.

    ``-p a,b -p c`` gives ``["a", "b", "c"]``; ``None`` when the option was
    not given.  Empty items are errors (``-p a,,b`` is a typo, not a wish).
    """
    if values is None:
        return None
    result: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                raise ClientError(f"empty name in {value!r}")
            if item not in result:
                result.append(item)
    return result
