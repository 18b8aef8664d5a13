"""Real devpi-server processes and devpi client runs for end-to-end tests.

Reusable by every e2e test module (client, replication, integration):

    from devpi_process import start_server, DevpiClient

    server = start_server(tmp_path / "server")       # devpi-init + devpi-server
    try:
        client = DevpiClient(tmp_path / "client", server.url)
        client.run("use", server.url)
        client.run("login", "root", "--password", "")
    finally:
        server.stop()

Servers bind 127.0.0.1 on a free port, get a fresh secret file (mode 0600)
and --offline-mode unless told otherwise, and are stopped by their PID.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Sequence

# the venv's bin directory, so the right devpi-server / devpi are used even if
# the tests run with a python that isn't on PATH
BINDIR = Path(sys.executable).parent


def bin_path(name: str) -> str:
    """Full path of a console script installed next to the running python."""
    candidate = BINDIR / name
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_secret(path: Path) -> Path:
    """Write a random server secret with mode 0600 (what devpi-server demands)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    os.chmod(path, 0o600)
    return path


def init_server(serverdir: Path, init_args: Sequence[str] = (), root_password: str = "") -> None:
    """Run devpi-init on a fresh server directory."""
    args = [bin_path("devpi-init"), "--serverdir", str(serverdir), "--no-root-pypi",
            "--root-passwd", root_password, *init_args]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"devpi-init failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@dataclass
class ServerProcess:
    """A running devpi-server; ``stop()`` ends it by PID."""

    url: str
    port: int
    serverdir: Path
    secretfile: Path | None
    logfile: Path
    popen: subprocess.Popen = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        """The server's combined stdout/stderr so far."""
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and reap it."""
        if self.popen.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def upload_form(name: str, version: str = "1.0") -> tuple[bytes, str]:
    """A minimal ``file_upload`` form (what ``devpi upload`` and twine send):
    the body and its Content-Type."""
    boundary = uuid.uuid4().hex
    fields = [(":action", "file_upload"), ("name", name), ("version", version)]
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{name}-{version}.tar.gz"\r\nContent-Type: application/octet-stream\r\n\r\n'
        .encode() + b"not really an sdist\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def get_json(url: str, timeout: float = 5, headers: dict | None = None) -> dict:
    """GET url with Accept: application/json and return the parsed answer."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local test server)
        return json.loads(resp.read())


def wait_for_api(server: ServerProcess, timeout: float = 180) -> None:
    """Poll <url>/+api until it answers; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise RuntimeError(
                f"devpi-server exited with {server.popen.returncode}:\n{server.log()[-4000:]}")
        try:
            get_json(server.url + "/+api", timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"devpi-server did not answer within {timeout}s:\n"
                               f"{server.log()[-4000:]}")
        time.sleep(0.1)


def start_server(
    serverdir: Path,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    *,
    init: bool = True,
    init_args: Sequence[str] = (),
    root_password: str = "",
    secretfile: Path | None | bool = True,
    offline: bool = True,
    # devpi-server takes seconds to start, over a minute on a loaded machine
    timeout: float = 180,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start devpi-server on 127.0.0.1 and wait until /+api answers.

    - ``init``: run devpi-init first (skipped if the serverdir already has data,
      so a server can be restarted on the same directory).
    - ``secretfile``: True = write a fresh one next to the serverdir (reused on
      restart), a path = use that file, False/None = start without one (for
      testing the "random secret" warning).
    - ``extra_args`` go to devpi-server (e.g. ``--restrict-modify root``,
      ``--primary-url URL`` for a replica, with ``init_args=["--role", "replica"]``).
      A replica needs ``offline=False``: ``--offline-mode`` also blocks its
      replication requests (devpi answers them with 503 locally).  The primary
      needs ``--role primary`` to serve replication at all.
    """
    serverdir = Path(serverdir)
    if port is None:
        port = free_port()
    if init and not (serverdir / ".serverversion").exists():
        init_server(serverdir, init_args, root_password)
    serverdir.mkdir(parents=True, exist_ok=True)
    if secretfile is True:
        secretfile = serverdir.parent / (serverdir.name + ".secret")
        if not secretfile.exists():
            write_secret(secretfile)
    elif not secretfile:
        secretfile = None
    args = [bin_path("devpi-server"), "--serverdir", str(serverdir),
            "--host", "127.0.0.1", "--port", str(port)]
    if secretfile is not None:
        args += ["--secretfile", str(secretfile)]
    if offline:
        args.append("--offline-mode")
    args += list(extra_args)
    logfile = serverdir.parent / (serverdir.name + f".{port}.log")
    with open(logfile, "ab") as log:
        popen = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})})
    server = ServerProcess(
        url=f"http://127.0.0.1:{port}", port=port, serverdir=serverdir,
        secretfile=secretfile, logfile=logfile, popen=popen)
    wait_for_api(server, timeout)
    return server


class DevpiClient:
    """Runs the real ``devpi`` command with its own --clientdir."""

    def __init__(self, clientdir: Path, url: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.clientdir = Path(clientdir)
        self.clientdir.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.env = {**os.environ, **(env or {})}
        # never pick up the developer's own devpi state or a venv-local devpi.json
        self.env.pop("DEVPI_INDEX", None)
        self.env.pop("VIRTUAL_ENV", None)
        self.env["DEVPI_CLIENTDIR"] = str(self.clientdir)

    def run(self, *args: str, input: str | None = None, check: bool = True,
            cwd: Path | None = None, timeout: float = 120,
            merge_output: bool = False) -> subprocess.CompletedProcess:
        """Run ``devpi ARGS --clientdir DIR``; with check, fail on non-zero exit.

        ``merge_output``: stderr goes into stdout, in the order written (as a
        terminal shows it).
        """
        cmd = [bin_path("devpi"), *map(str, args), "--clientdir", str(self.clientdir)]
        stderr = subprocess.STDOUT if merge_output else subprocess.PIPE
        proc = subprocess.run(
            cmd, input=input, stdout=subprocess.PIPE, stderr=stderr, text=True, env=self.env,
            cwd=cwd, timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL,
            # no controlling terminal: a prompt must never wait for the developer
            start_new_session=True)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{cmd[1:]} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                f"stderr:\n{proc.stderr}")
        return proc

    def fails(self, *args: str, input: str | None = None,
              **kw: object) -> subprocess.CompletedProcess:
        """Run and assert a non-zero exit."""
        proc = self.run(*args, input=input, check=False, **kw)
        assert proc.returncode != 0, (
            f"{args} unexpectedly succeeded\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc


def make_wheel(directory: Path, name: str, version: str = "1.0") -> Path:
    """Write a minimal pure-Python wheel (no build tools, works offline)."""
    import base64
    import hashlib
    import zipfile

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            f"Summary: test package {name}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: devpi-tokens-tests\n"
                         "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def assert_one_line_error(proc, *fragments):
    """Every error: non-zero exit, exactly one line on stderr, no traceback."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
