"""A TLS front for devpi-server in end-to-end tests, and a fake GitHub Actions
OIDC token endpoint.

uv and pypa/gh-action-pypi-publish insist on https for trusted publishing, so
the e2e tests put devpi-server behind a TLS reverse proxy on loopback, as real
deployments do:

    ca = TestCA(tmp_path / "ca")       # tests/oidc_issuer.py's, shared with LocalIssuer
    front = start_tls_front(tmp_path / "front", backend_port=server.port, ca=ca)
    try:
        get_json(front.url + "/+api", cafile=ca.ca_file)   # https://127.0.0.1:<port>
    finally:
        front.stop()

- the certificate comes from ``oidc_issuer.TestCA`` (the local OIDC
  issuer's CA: give both the same one and a single ``ca_file`` is what
  ``SSL_CERT_FILE`` (uv, ``id``, urllib) and ``REQUESTS_CA_BUNDLE``
  (devpi-client) point at);
- ``start_tls_front``: Debian's nginx (``/usr/sbin/nginx``) run as the current
  user with a configuration, prefix, pid file, temp directories and logs of its
  own in a temporary directory (``daemon off``, so the PID we hold is the
  master's), passing everything to ``http://127.0.0.1:<devpi port>`` with
  ``Host``, ``X-Forwarded-Proto: https`` and ``X-outside-url:
  https://127.0.0.1:<port>`` (devpi-server builds its URLs from that header).
  Where nginx is not installed, a small threaded Python TLS proxy doing the
  same is used instead (``front.kind`` says which).  Both are stopped by PID /
  by shutting down their own server, never by name.
- ``FakeGitHubOIDC``: what ``ACTIONS_ID_TOKEN_REQUEST_URL`` points at in a
  GitHub Actions job: ``GET <url>?...&audience=<aud>`` with ``Authorization:
  bearer <request token>`` answers ``{"value": "<jwt>"}``; the JWT comes from a
  callable (the local OIDC issuer minting GitHub claims for that audience).
  It records every audience asked for.
"""
from __future__ import annotations

import http.client
import http.server
import json
import os
import pwd
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Callable

from devpi_process import free_port
from oidc_issuer import TestCA

NGINX = "/usr/sbin/nginx"


def nginx_available() -> bool:
    return os.access(NGINX, os.X_OK)


def front_kind() -> str:
    """"nginx" where it is installed, else "python"; DEVPI_TOKENS_TLS_FRONT=python
    forces the Python proxy (to run the e2e tests through it too)."""
    if os.environ.get("DEVPI_TOKENS_TLS_FRONT") == "python" or not nginx_available():
        return "python"
    return "nginx"


def ssl_context(cafile: Path | str) -> ssl.SSLContext:
    """A client context trusting only ``cafile`` (hostname checks on)."""
    return ssl.create_default_context(cafile=str(cafile))


def https_request(url: str, cafile: Path | str, method: str = "GET",
                  body: bytes | None = None, headers: dict[str, str] | None = None,
                  timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; HTTP errors are answers, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(  # noqa: S310 (loopback test server)
                req, timeout=timeout, context=ssl_context(cafile)) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str, cafile: Path | str, timeout: float = 30,
             headers: dict[str, str] | None = None) -> Any:
    status, _, data = https_request(
        url, cafile, headers={"Accept": "application/json", **(headers or {})},
        timeout=timeout)
    if status != 200:
        raise AssertionError(f"GET {url}: {status} {data[:2000]!r}")
    return json.loads(data)


# --------------------------------------------------------------------------
# the TLS front


@dataclass
class TLSFront:
    """A running TLS reverse proxy; ``stop()`` ends it."""

    url: str  # https://127.0.0.1:<port>
    port: int
    backend_port: int
    kind: str  # "nginx" or "python"
    directory: Path
    ca_file: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _python: "_PythonProxy | None" = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self._python is not None and self._python.thread.is_alive()

    def log(self) -> str:
        """nginx's error and access logs (or the Python proxy's)."""
        parts = []
        for name in ("error.log", "access.log", "stderr.log"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 15) -> None:
        if self._python is not None:
            self._python.stop()
            self._python = None
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        # SIGTERM: nginx's fast shutdown; the master ends its workers
        os.kill(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            # the master started a session of its own: its group holds only
            # the processes of this nginx
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout)

    def __enter__(self) -> "TLSFront":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def nginx_conf(directory: Path, port: int, backend_port: int,
               cert_file: Path, key_file: Path) -> str:
    d = directory
    # as root nginx would switch its workers to "nobody", who cannot read the
    # test's private temp directories: run them as the current user
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n"
    return f"""\
# generated by tests/tls_front.py
{user}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    client_max_body_size 100m;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name 127.0.0.1 localhost;
        ssl_certificate {cert_file};
        ssl_certificate_key {key_file};
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-outside-url https://127.0.0.1:{port};
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
        }}
    }}
}}
"""


def _wait_until_up(front: TLSFront, timeout: float) -> None:
    """Until a TLS handshake on the port works (the backend may still be down)."""
    deadline = time.monotonic() + timeout
    context = ssl_context(front.ca_file)
    while True:
        if not front.alive():
            raise RuntimeError(f"the {front.kind} TLS front exited:\n{front.log()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", front.port), timeout=2) as sock:
                with context.wrap_socket(sock, server_hostname="127.0.0.1"):
                    return
        except (OSError, ssl.SSLError):
            pass
        if time.monotonic() > deadline:
            front.stop()
            raise RuntimeError(
                f"the {front.kind} TLS front did not answer within {timeout}s:\n"
                f"{front.log()[-4000:]}")
        time.sleep(0.05)


def start_tls_front(directory: Path, backend_port: int, ca: TestCA,
                    port: int | None = None, *, use_nginx: bool | None = None,
                    timeout: float = 30) -> TLSFront:
    """https://127.0.0.1:<port> in front of http://127.0.0.1:<backend_port>.

    ``use_nginx``: None = as :func:`front_kind` says (nginx when installed).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if use_nginx is None:
        use_nginx = front_kind() == "nginx"
    cert_file, key_file = ca.issue(("127.0.0.1", "localhost"), name="tls-front")
    last_error: Exception | None = None
    for _attempt in range(3):  # the free port may be taken before nginx binds it
        the_port = port if port is not None else free_port()
        if use_nginx:
            front = _start_nginx(directory, the_port, backend_port, ca, cert_file, key_file)
        else:
            front = _start_python(directory, the_port, backend_port, ca, cert_file, key_file)
        try:
            _wait_until_up(front, timeout)
            return front
        except RuntimeError as e:
            front.stop()
            last_error = e
            if port is not None or "Address already in use" not in str(e):
                raise
    assert last_error is not None
    raise last_error


def _start_nginx(directory: Path, port: int, backend_port: int, ca: TestCA,
                 cert_file: Path, key_file: Path) -> TLSFront:
    for sub in ("tmp", "logs"):
        (directory / sub).mkdir(exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(nginx_conf(directory, port, backend_port, cert_file, key_file))
    stderr_log = directory / "stderr.log"
    with open(stderr_log, "ab") as err:
        popen = subprocess.Popen(
            # -e: errors before the configuration is read go to our log too
            [NGINX, "-c", str(conf), "-p", f"{directory}/",
             "-e", str(directory / "error.log")],
            stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
            start_new_session=True)
    return TLSFront(url=f"https://127.0.0.1:{port}", port=port, backend_port=backend_port,
                    kind="nginx", directory=directory, ca_file=ca.ca_file, popen=popen)


# --------------------------------------------------------------------------
# the fallback: a small threaded Python TLS reverse proxy (HTTP/1.1, one
# request per connection, bodies buffered; enough for devpi, uv and devpi-client)

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
               "transfer-encoding", "upgrade"}
_MAX_BODY = 100 * 1024 * 1024


class _ThreadingTLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, context: ssl.SSLContext,
                 backend_port: int, outside_url: str, log_file: Path) -> None:
        self.context = context
        self.backend_port = backend_port
        self.outside_url = outside_url
        self.log_file = log_file
        self.log_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.settimeout(60)
        # the handshake happens in the handler's thread (do_handshake_on_connect)
        return self.context.wrap_socket(sock, server_side=True), addr


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ThreadingTLSServer

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > _MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(413)
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"}
        headers["X-Forwarded-Proto"] = "https"
        headers["X-outside-url"] = self.server.outside_url
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection("127.0.0.1", self.server.backend_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            self.send_error(502)
            return
        finally:
            conn.close()
        self.log_request(resp.status, len(data))
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _proxy

    def log_message(self, format: str, *args: Any) -> None:
        with self.server.log_lock, open(self.server.log_file, "a") as f:
            f.write("%s - %s\n" % (self.address_string(), format % args))


@dataclass
class _PythonProxy:
    server: _ThreadingTLSServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _start_python(directory: Path, port: int, backend_port: int, ca: TestCA,
                  cert_file: Path, key_file: Path) -> TLSFront:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_file), str(key_file))
    server = _ThreadingTLSServer(
        ("127.0.0.1", port), _ProxyHandler, context, backend_port,
        f"https://127.0.0.1:{port}", directory / "access.log")
    thread = threading.Thread(target=server.serve_forever, name=f"tls-front-{port}",
                              daemon=True)
    thread.start()
    return TLSFront(url=f"https://127.0.0.1:{port}", port=port, backend_port=backend_port,
                    kind="python", directory=directory, ca_file=ca.ca_file,
                    _python=_PythonProxy(server, thread))


# --------------------------------------------------------------------------
# a fake GitHub Actions OIDC token endpoint


class FakeGitHubOIDC:
    """``ACTIONS_ID_TOKEN_REQUEST_URL`` of a fake GitHub Actions job.

    ``mint(audience) -> jwt`` makes the answer.  ``url`` already carries a
    query (``?x=1``) the way GitHub's does, so clients must append
    ``&audience=``.  ``env()`` is what a job step sees.
    """

    def __init__(self, mint: Callable[[str], str]) -> None:
        self.mint = mint
        self.request_token = secrets.token_urlsafe(24)
        self.audiences: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                auth = self.headers.get("Authorization", "")
                with outer.lock:
                    outer.requests.append({"path": self.path, "authorization": auth})
                scheme, _, value = auth.partition(" ")
                if scheme.lower() != "bearer" or value != outer.request_token:
                    self._answer(401, {"message": "bad request token"})
                    return
                audiences = query.get("audience", [])
                if len(audiences) != 1 or query.get("x") != ["1"]:
                    self._answer(400, {"message": f"bad query {parsed.query!r}"})
                    return
                with outer.lock:
                    outer.audiences.append(audiences[0])
                try:
                    value = outer.mint(audiences[0])
                except Exception as e:  # a broken test helper shows as a 500
                    self._answer(500, {"message": repr(e)})
                    return
                self._answer(200, {"count": 1, "value": value})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       name=f"fake-github-oidc-{self.port}", daemon=True)
        self.thread.start()

    def env(self) -> dict[str, str]:
        return {
            "GITHUB_ACTIONS": "true",
            "ACTIONS_ID_TOKEN_REQUEST_URL": self.url,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": self.request_token,
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self) -> "FakeGitHubOIDC":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
