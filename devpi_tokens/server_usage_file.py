"""Token uses a clean stop could not record, kept in the server directory.

At shutdown, what the usage recorder could neither write (primary) nor send
(replica) goes to a file of its own, ``.devpi-tokens-unwritten-uses.<pid>.json``
(one per process, so ``--requests-only`` workers sharing a directory do not
overwrite each other), created exclusively, mode 0600, synced.  At the next
start every such file is read and removed.  Reading never follows a symlink,
takes only regular files up to :data:`MAX_FILE_BYTES`, and a file it cannot
use is renamed ``*.bad`` with a warning: nothing in it can stop the server.

The content is the rows of a replica's report, ``[[user, token id, at,
client, for], ...]``, and is read with the same checks.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
import json
import os
import stat
import tempfile

from .server_log import log

PREFIX = ".devpi-tokens-unwritten-uses"
SUFFIX = ".json"
MAX_FILE_BYTES = 64 * 1024 * 1024


def save(serverdir: Path, rows: list[list[Any]]) -> bool:
    """Write ``rows`` to a new file in ``serverdir``; False (logged) if that failed."""
    try:
        fd, temp = tempfile.mkstemp(prefix=PREFIX + ".", suffix=".tmp", dir=serverdir)
        with os.fdopen(fd, "w") as file:
            json.dump(rows, file, separators=(",", ":"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, serverdir / f"{PREFIX}.{os.getpid()}{SUFFIX}")
        _sync_dir(serverdir)
    except OSError as exc:
        log().error(
            "devpi-tokens: %s token use(s) could not be saved at shutdown (%s); "
            "they are lost", len(rows), type(exc).__name__)
        return False
    log().warning(
        "devpi-tokens: %s token use(s) could not be recorded at shutdown; saved "
        "for the next start", len(rows))
    return True


def take(serverdir: Path, parse: Callable[[Any], Any]) -> list[Any]:
    """``parse`` of every saved file's rows; each file is removed (or set aside)."""
    found = []
    for path in sorted(serverdir.glob(f"{PREFIX}.*{SUFFIX}")):
        try:
            found.append(parse(json.loads(_read_regular(path))))
        except Exception as exc:  # noqa: BLE001 - nothing saved may stop the server
            log().warning(
                "devpi-tokens: saved token uses in %s unusable (%s); set aside as *.bad",
                path.name, type(exc).__name__)
            _set_aside(path)
            continue
        path.unlink()
    return found


def _read_regular(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ValueError("too large")
        return file.read(MAX_FILE_BYTES + 1).decode("utf-8")


def _set_aside(path: Path) -> None:
    try:
        path.replace(path.with_name(path.name + ".bad"))
    except OSError:
        pass


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
