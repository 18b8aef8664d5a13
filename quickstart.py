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
    """Run ``args`` and wait for it, also through Ctrl-C.

    Ctrl-C reaches the child too (same process group); it shuts down by itself
    (devpi-server closes its storage), so we keep waiting instead of killing it.
    """
    proc = subprocess.Popen(args, cwd=HERE, env=env)
    # `kill PID` of this script must not orphan the server: pass it on
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
