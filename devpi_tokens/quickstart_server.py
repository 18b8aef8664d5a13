"""The quick start: a local devpi-server with the plugin, and a guided demo.

Run through ``python3 quickstart.py server|demo`` (which sets up ``.venv``)::

    python -m devpi_tokens.quickstart_server server [--port 3141]
    python -m devpi_tokens.quickstart_server demo [--port 3141]

``server`` keeps everything in ``./devpi-tokens-demo/``: the server directory
(devpi's own sqlite storage, created by ``devpi-init`` on first run and reused
after), a secret file (so tokens survive restarts) and the generated root
password.  It binds 127.0.0.1 only and runs in the foreground until Ctrl-C.

``demo`` drives the real ``devpi`` and ``pip`` commands against that server
(starting one in the background if none is running), printing each command.
It uses a throwaway devpi client directory, so your own devpi login and
current index are left alone, and it never prints a token.
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DEFAULT_PORT = 3141
HOST = "127.0.0.1"
DEMO_USER = "alice"
DEMO_INDEX = "demo"
DEMO_PROJECT = "tokendemo-hello"

BINDIR = Path(sys.executable).parent


class QuickstartError(Exception):
    """Something a person can fix; printed as one line, exit status 1."""


# --------------------------------------------------------------------------
# small helpers

def tool(name: str) -> str:
    """The console script ``name`` installed next to this python (the .venv)."""
    candidate = BINDIR / name
    return str(candidate) if candidate.exists() else name


def shown(path: Path | str) -> str:
    """A path as short as possible for printing (relative to the cwd if inside it)."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (a secret, a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def api_answers(url: str, timeout: float = 2) -> bool:
    """True when a devpi-server answers ``GET url/+api``."""
    req = urllib.request.Request(url + "/+api", headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
            answer: bool = json.loads(resp.read()).get("type") == "apiconfig"
            return answer
    except (urllib.error.URLError, OSError, ValueError):
        return False


def plugin_active(url: str) -> bool:
    """True when the server at ``url`` lists the ``devpi-tokens`` feature in /+api."""
    req = urllib.request.Request(url + "/+api", headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (loopback)
            features = json.loads(resp.read()).get("result", {}).get("features", [])
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return False
    return "devpi-tokens" in features


def port_in_use(port: int) -> bool:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as devpi-server binds: a port left in TIME_WAIT by a stopped server is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------
# the demo directory: serverdir, secret, root password

@dataclass
class DemoDir:
    """``./devpi-tokens-demo``: everything the quick-start server keeps."""

    root: Path

    @property
    def serverdir(self) -> Path:
        return self.root / "server"

    @property
    def secretfile(self) -> Path:
        return self.root / "secret"

    @property
    def root_password_file(self) -> Path:
        return self.root / "root-password"

    @property
    def state_file(self) -> Path:
        """Written while a quick-start server runs: its pid and URL."""
        return self.root / "server.json"

    def user_password_file(self, user: str) -> Path:
        return self.root / f"{user}-password"

    def prepare(self) -> list[str]:
        """Create what is missing; return one line per thing created."""
        created = []
        if not self.root.exists():
            # devpi-server refuses a secret file in a group/world-writable folder
            self.root.mkdir(mode=0o700, parents=True)
        if not self.secretfile.exists():
            # same recipe as devpi-gen-secret: 32 random bytes, base64
            write_private(self.secretfile, base64.b64encode(secrets.token_bytes(32)).decode())
            created.append(f"secret file {shown(self.secretfile)} (mode 0600)")
        if not (self.serverdir / ".serverversion").exists():
            password = secrets.token_urlsafe(12)
            self.init_server(password)
            write_private(self.root_password_file, password + "\n")
            created.append(f"server directory {shown(self.serverdir)} (devpi-init)")
        return created

    def init_server(self, root_password: str) -> None:
        args = [tool("devpi-init"), "--serverdir", str(self.serverdir),
                f"--root-passwd={root_password}"]  # one word: it may start with "-"
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise QuickstartError(
                f"devpi-init failed:\n{proc.stdout}{proc.stderr}".rstrip())

    def root_password(self) -> str | None:
        try:
            return self.root_password_file.read_text().strip()
        except FileNotFoundError:
            return None

    def running_server(self) -> str | None:
        """URL of a quick-start server that is still running, if any."""
        try:
            state = json.loads(self.state_file.read_text())
            os.kill(int(state["pid"]), 0)
        except (FileNotFoundError, ValueError, KeyError, TypeError, ProcessLookupError,
                PermissionError):
            return None
        url = str(state.get("url", ""))
        return url if url and api_answers(url) else None


def server_command(demo: DemoDir, port: int, extra: Sequence[str] = ()) -> list[str]:
    return [tool("devpi-server"), "--serverdir", str(demo.serverdir),
            "--secretfile", str(demo.secretfile), "--host", HOST, "--port", str(port),
            *extra]


def wait_until_up(proc: subprocess.Popen[bytes], url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not api_answers(url, timeout=1):
        if proc.poll() is not None:
            raise QuickstartError(f"devpi-server exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise QuickstartError(f"devpi-server did not answer at {url} within {timeout:.0f}s")
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop ``proc`` by its PID: SIGINT (devpi-server's clean shutdown), then
    SIGTERM (where SIGINT is ignored, as in a shell's background job), then
    SIGKILL if it still lingers."""
    for sig, wait in ((signal.SIGINT, 5), (signal.SIGTERM, timeout), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------
# server

def next_steps(url: str, demo: DemoDir, with_plugin: bool = True) -> str:
    devpi = shown(tool("devpi"))
    token_url = f"http://:$(cat ci.token)@{url.split('://', 1)[1]}/{DEMO_USER}/dev/+simple/"
    password = demo.root_password()
    if password is None:
        root = ("root user:    set up outside the quick start "
                f"({shown(demo.root_password_file)} is missing)")
    else:
        root = (f"root user:    root, password {password}  "
                f"(kept in {shown(demo.root_password_file)})")
    return f"""
==============================================================================
 devpi-server {"with" if with_plugin else "WITHOUT"} devpi-tokens is running at {url}
   data:         {shown(demo.serverdir)}  (kept between runs)
   secret file:  {shown(demo.secretfile)}  (so tokens stay valid after a restart)
   {root}
   listening on {HOST} only; stop it with Ctrl-C

 Next, in another terminal:
   python3 quickstart.py demo        # the whole token flow, in under a minute

 or try it by hand with the devpi client in {shown(BINDIR)}:
   {devpi} use {url}
   {devpi} user -c {DEMO_USER} password=choose-one
   {devpi} login {DEMO_USER} --password choose-one
   {devpi} index -c dev bases=
   {devpi} token-create -e 30d -d "my laptop" -o {DEMO_USER}.token
   {devpi} token-derive -f {DEMO_USER}.token -p myproject -e 1h -o ci.token
   {devpi} token-inspect -f ci.token
   {devpi} token-login -f ci.token
   {devpi} upload --index {DEMO_USER}/dev    # in your project: narrowed to 60 s per upload
   pip install --index-url "{token_url}" myproject
==============================================================================
""".rstrip("\n")


def run_server(demo: DemoDir, port: int, extra: Sequence[str]) -> int:
    url = f"http://{HOST}:{port}"
    if api_answers(url):
        raise QuickstartError(
            f"a devpi-server already answers at {url}; stop it or pick another --port")
    if port_in_use(port):
        raise QuickstartError(f"port {port} on {HOST} is taken; pick another with --port")
    for line in demo.prepare():
        print(f"[quickstart] created {line}", flush=True)
    print(f"[quickstart] $ {shlex.join(server_command(demo, port, extra))}", flush=True)
    # its own session: a terminal's Ctrl-C reaches only us, and we stop it by
    # PID with one signal (a second one during devpi-server's shutdown would
    # cut short its last writes)
    proc = subprocess.Popen(
        server_command(demo, port, extra), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    pump = threading.Thread(target=pass_output, args=(proc,), daemon=True)
    pump.start()
    # Ctrl-C, SIGTERM and `kill -INT` reach only us.  Either way we stop it by
    # PID and wait, so its storage is closed cleanly.  SIGINT gets a handler of its own too: a
    # process started in the background inherits it ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        wait_until_up(proc, url)
        write_private(demo.state_file, json.dumps({"pid": proc.pid, "url": url}))
        with_plugin = plugin_active(url)
        if not with_plugin:
            print("[quickstart] WARNING: the devpi-tokens plugin is not active in this "
                  "devpi-server (is devpi-tokens installed in the same environment?)",
                  flush=True)
        print(next_steps(url, demo, with_plugin), flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        print("\n[quickstart] stopping devpi-server ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the wait
        stop_process(proc)
        pump.join(5)
        demo.state_file.unlink(missing_ok=True)
        print(f"[quickstart] devpi-server (pid {proc.pid}) stopped", flush=True)


#: devpi-server 6.x prints the repr of a context manager when SIGINT stops
#: it; a stray line with nothing for the reader
_SHUTDOWN_NOISE = re.compile(rb"<contextlib\._GeneratorContextManager object at 0x[0-9a-f]+>\r?\n")


def pass_output(proc: subprocess.Popen[bytes]) -> None:
    """Copy devpi-server's output to ours, line by line, minus its shutdown noise."""
    assert proc.stdout is not None
    out = sys.stdout.buffer
    for line in proc.stdout:
        if not _SHUTDOWN_NOISE.fullmatch(line):
            out.write(line)
            out.flush()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------
# a tiny wheel, written directly: no build backend, no network

def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def write_wheel(dest: Path, name: str, version: str, summary: str = "devpi-tokens demo") -> Path:
    """Write ``name``-``version`` as a pure-python wheel into ``dest``; return its path.

    The module (``name`` with ``_``) has ``hello()`` returning a greeting.
    """
    dist = name.replace("-", "_").lower()
    module = dist
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": (
            f'"""{summary}."""\n\n__version__ = "{version}"\n\n\n'
            f'def hello() -> str:\n    return "hello from {name} {version}"\n'),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            f"Summary: {summary}\n"),
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: devpi-tokens-quickstart\n"
            "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, text in files.items():
        data = text.encode()
        writer.writerow([path, _record_hash(data), len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    files[f"{info}/RECORD"] = record.getvalue()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


# --------------------------------------------------------------------------
# demo

class Step:
    """Numbered steps that print the command they run."""

    def __init__(self, env: dict[str, str], cwd: Path,
                 secrets_to_hide: dict[str, str] | None = None) -> None:
        self.env = env
        self.cwd = cwd
        self.number = 0
        self.hide = secrets_to_hide if secrets_to_hide is not None else {}

    def title(self, text: str) -> None:
        self.number += 1
        print(f"\n[{self.number}] {text}", flush=True)

    def masked(self, text: str) -> str:
        for secret, placeholder in self.hide.items():
            text = text.replace(secret, placeholder)
        return text

    def run(self, args: Sequence[str], *, expect_ok: bool = True, shown_as: str | None = None,
            max_lines: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``args``, print ``$ command`` and its indented output.

        Console scripts show by their bare name (``devpi``): the quick start
        puts its ``.venv/bin`` first on PATH, so that is what a person types.
        """
        display = shown_as or shlex.join([Path(args[0]).name, *args[1:]])
        print(f"    $ {self.masked(display)}", flush=True)
        proc = subprocess.run(list(args), env=self.env, cwd=self.cwd, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        lines = self.masked((proc.stdout + proc.stderr).rstrip()).splitlines()
        if max_lines is not None and len(lines) > max_lines:
            lines = [*lines[:max_lines], "..."]
        for line in lines:
            print(f"      {line}", flush=True)
        if expect_ok and proc.returncode != 0:
            raise QuickstartError(f"step {self.number} failed (exit {proc.returncode})")
        if not expect_ok and proc.returncode == 0:
            raise QuickstartError(f"step {self.number} should have been refused but succeeded")
        return proc


def exists(url: str, path: str) -> bool:
    """True when ``url/path`` (a user or USER/INDEX) exists on the server."""
    req = urllib.request.Request(f"{url}/{path}", headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310 (loopback)
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def demo_password(demo: DemoDir, url: str) -> tuple[str, bool]:
    """The demo user's password, and whether the user must be created."""
    path = demo.user_password_file(DEMO_USER)
    if exists(url, DEMO_USER):
        if not path.exists():
            raise QuickstartError(
                f"user {DEMO_USER!r} exists on {url} but was not made by the demo "
                f"({shown(path)} is missing); use a fresh server directory")
        return path.read_text().strip(), False
    password = secrets.token_urlsafe(12)
    write_private(path, password + "\n")
    return password, True


class BackgroundServer:
    """A quick-start server the demo starts itself and stops by PID at the end."""

    def __init__(self, demo: DemoDir, port: int) -> None:
        self.demo = demo
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = demo.root / "demo-server.log"

    def __enter__(self) -> str:
        for line in self.demo.prepare():
            print(f"[quickstart] created {line}", flush=True)
        url = f"http://{HOST}:{self.port}"
        print(f"[quickstart] no server running; starting one in the background "
              f"(log: {shown(self.log)})", flush=True)
        print(f"    $ {shlex.join(server_command(self.demo, self.port))} &", flush=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                server_command(self.demo, self.port), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        wait_until_up(self.proc, url)
        return url

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            print(f"\n[quickstart] stopped the background devpi-server (pid {self.proc.pid})",
                  flush=True)


def run_demo(demo: DemoDir, port: int | None) -> int:
    started = time.monotonic()
    url = demo.running_server() if port is None else None
    if url is None:
        url = f"http://{HOST}:{port or DEFAULT_PORT}"
    if api_answers(url):
        print(f"[quickstart] using the devpi-server at {url}", flush=True)
        _demo_steps(demo, url)
    else:
        free = port or DEFAULT_PORT
        if port_in_use(free):
            raise QuickstartError(f"port {free} on {HOST} is taken by something that is "
                                  "not devpi-server; pick another with --port")
        with BackgroundServer(demo, free) as url:
            _demo_steps(demo, url)
    print(f"\n[quickstart] demo finished in {time.monotonic() - started:.1f}s", flush=True)
    return 0


def _demo_env(clientdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # a throwaway devpi client state; keep the user's own login and index untouched
    env["DEVPI_CLIENTDIR"] = str(clientdir)
    for name in ("DEVPI_INDEX", "DEVPI_USER", "VIRTUAL_ENV"):
        env.pop(name, None)
    # the user's pip configuration (another index-url, say) must not interfere
    for name in [name for name in env if name.startswith("PIP_")]:
        del env[name]
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _demo_steps(demo: DemoDir, url: str) -> None:
    if not plugin_active(url):
        raise QuickstartError(
            f"the devpi-server at {url} does not have the devpi-tokens plugin; "
            "start it with: python3 quickstart.py server")
    with tempfile.TemporaryDirectory(prefix="devpi-tokens-demo-") as tmp:
        work = Path(tmp)
        (work / "client").mkdir()
        _demo_flow(demo, url, work)


def _demo_flow(demo: DemoDir, url: str, work: Path) -> None:
    devpi = tool("devpi")
    index = f"{DEMO_USER}/{DEMO_INDEX}"
    password, create = demo_password(demo, url)
    hide = {password: "$PASSWORD"}
    step = Step(_demo_env(work / "client"), work, hide)
    print(f"[quickstart] working in {work}, with a throwaway devpi client directory\n"
          f"[quickstart] devpi, pip: the ones in {shown(BINDIR)}; "
          f"{DEMO_USER}'s password is in {shown(demo.user_password_file(DEMO_USER))} "
          "(shown as $PASSWORD);\n[quickstart] tokens live in 0600 files and are never printed",
          flush=True)

    step.title("point the devpi client at the server")
    step.run([devpi, "use", url], max_lines=2)
    if create:
        step.title(f"create user {DEMO_USER} (a token belongs to a user)")
        step.run([devpi, "user", "-c", DEMO_USER, f"password={password}"])
    step.title(f"log in as {DEMO_USER} with the password (needed to mint tokens)")
    step.run([devpi, "login", DEMO_USER, "--password", password])
    step.title(f"create a fresh index {index} with no PyPI base (works offline)")
    if exists(url, index):
        step.run([devpi, "index", "-y", "--delete", index])
    step.run([devpi, "index", "-c", index, "bases=", "volatile=True"])

    step.title("mint a token on the server, valid for one day, saved to a 0600 file")
    step.run([devpi, "token-create", "-e", "1d", "-d", "quickstart demo", "-o", "alice.token"])
    step.run([devpi, "token-list"])

    step.title(f"derive a narrower token offline: only project {DEMO_PROJECT}, one hour")
    step.run([devpi, "token-derive", "-f", "alice.token", "-p", DEMO_PROJECT, "-e", "1h",
              "-o", "ci.token"])
    step.run([devpi, "token-inspect", "-f", "ci.token"])

    step.title("log out, then log in with the narrow token instead of a password")
    step.run([devpi, "logout"])
    step.run([devpi, "token-login", "-f", "ci.token"])

    step.title(f"build a tiny package ({DEMO_PROJECT} 1.0) and upload it with the token")
    wheel = write_wheel(work / "dist", DEMO_PROJECT, "1.0")
    print(f"      (wrote {wheel.relative_to(work)} directly: no build backend or network needed)",
          flush=True)
    step.run([devpi, "upload", "--index", index, str(wheel.relative_to(work))])

    step.title("the narrow token cannot upload any other project")
    other = write_wheel(work / "other", "tokendemo-other", "1.0")
    step.run([devpi, "upload", "--index", index, str(other.relative_to(work))],
             expect_ok=False)

    step.title("install the package with pip through the token in the index URL")
    token = (work / "ci.token").read_text().strip()
    step.hide[token] = "$(cat ci.token)"
    simple = f"http://:{token}@{url.split('://', 1)[1]}/{index}/+simple/"
    step.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--target", "site",
              "--index-url", simple, DEMO_PROJECT],
             shown_as=f'pip install --target site --index-url "{simple}" {DEMO_PROJECT}')
    _run_hello(step, work)

    step.title("revoke: delete the parent token; the derived one dies with it")
    step.run([devpi, "logout"])
    step.run([devpi, "login", DEMO_USER, "--password", password])
    token_id = _token_id_of(work / "alice.token")
    step.run([devpi, "token-delete", token_id])
    step.run([devpi, "token-login", "-f", "ci.token"], expect_ok=False)


def _run_hello(step: Step, work: Path) -> None:
    env = dict(step.env, PYTHONPATH=str(work / "site"))
    code = "import tokendemo_hello; print(tokendemo_hello.hello())"
    print(f'    $ PYTHONPATH=site python -c "{code}"', flush=True)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=work,
                          capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).rstrip().splitlines():
        print(f"      {line}", flush=True)
    if proc.returncode != 0:
        raise QuickstartError(f"step {step.number} failed (exit {proc.returncode})")


def _token_id_of(path: Path) -> str:
    from .tokens import Token
    return Token.load(path.read_text().strip()).token_id


# --------------------------------------------------------------------------

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 quickstart.py",
        description="Run a local devpi-server with devpi-tokens, or a guided demo against it.")
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="run devpi-server with the plugin in the foreground")
    server.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port on {HOST} (default {DEFAULT_PORT})")
    server.add_argument("--offline", action="store_true",
                        help="pass --offline-mode to devpi-server (no PyPI access)")
    demo = sub.add_parser("demo", help="the whole token flow against the quick-start server")
    demo.add_argument("--port", type=int, default=None,
                      help=f"port of the server (default: the running quick-start server, "
                           f"else {DEFAULT_PORT})")
    for p in (server, demo):
        p.add_argument("--dir", type=Path, default=Path("devpi-tokens-demo"),
                       help="where the server data, secret and passwords live "
                            "(default ./devpi-tokens-demo)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    demo = DemoDir(args.dir.resolve())
    try:
        if args.command == "server":
            return run_server(demo, args.port, ["--offline-mode"] if args.offline else [])
        return run_demo(demo, args.port)
    except QuickstartError as exc:
        print(f"[quickstart] error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\n[quickstart] interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
