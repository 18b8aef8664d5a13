#!/usr/bin/env python3
"""One entry point for newcomers and CI; needs only Python 3 and pip.

    python3 quickstart.py server    # set up .venv, run devpi-server + plugin
    python3 quickstart.py demo      # the whole token flow against that server
    python3 quickstart.py test      # set up .venv, run the test suite

Everything is installed into ``.venv`` beside this file on first use.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DEVPI_TOKENS_VENV", HERE / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
EXTRAS = {"server": "server,client", "demo": "server,client", "test": "test"}


def say(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def ensure_venv(extras: str) -> None:
    """Create .venv and install this project with ``extras`` (once per extras set)."""
    python = BIN / "python"
    if not python.exists():
        say(f"creating virtual environment {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".devpi-tokens-installed-{extras.replace(',', '-')}"
    pyproject = HERE / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    say(f"installing devpi-tokens[{extras}] and its dependencies (first run only)")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-e", f"{HERE}[{extras}]"], check=True)
    stamp.touch()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__.strip())
        return 2
    command, rest = argv[0], argv[1:]
    ensure_venv(EXTRAS[command])
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if command == "test":
        args = [str(BIN / "python"), "-m", "pytest", *rest]
    else:
        args = [str(BIN / "python"), "-m", "devpi_tokens.quickstart_server", command, *rest]
    return run_child(args, env)


def run_child(args: list[str], env: dict[str, str]) -> int:
    """Run ``args`` and wait for it; Ctrl-C, ``kill -INT`` and ``kill`` stop it.

    The child runs in a process group of its own, so a terminal's Ctrl-C
    reaches only this script, which passes SIGINT and SIGTERM on to the child
    exactly once each time: the same stop whether it came from a terminal or
    from ``kill -INT PID`` of this script.  The child stops what it started
    by PID (the quick-start server stops devpi-server cleanly).
    """
    new_group = {"preexec_fn": os.setpgrp} if os.name == "posix" else {}
    proc = subprocess.Popen(args, cwd=HERE, env=env, **new_group)

    def forward(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
