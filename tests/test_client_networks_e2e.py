"""Client networks against real devpi-server processes, directly and behind nginx.

The client address is what devpi-server's request sees (``REMOTE_ADDR``).
Without ``--trusted-proxy`` a forged ``X-Forwarded-For`` is ignored; with
``--trusted-proxy 127.0.0.1 --trusted-proxy-headers x-forwarded-for`` waitress
puts the forwarded client there.  Behind Debian's nginx (started and stopped
here, where installed) the client connects from another loopback address,
127.0.0.5, so the address nginx forwards differs from nginx's own.
"""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from devpi_process import DevpiClient
from devpi_process import free_port
from devpi_process import start_server
from tls_front import NGINX
from tls_front import TLSFront
from tls_front import nginx_available
from tls_front import nginx_conf
from devpi_tokens.tokens import Token

pytestmark = pytest.mark.e2e

CLIENT_IP = "127.0.0.5"


def login_root(base: Path, url: str) -> DevpiClient:
    client = DevpiClient(base)
    client.run("use", url)
    client.run("login", "root", "--password", "")
    return client


def create(client: DevpiClient, *ips: str) -> str:
    args = [arg for ip in ips for arg in ("--ip", ip)]
    proc = client.run("token-create", "-e", "1d", *args)
    return proc.stdout.strip()


def api(port: int, token: str, headers: dict[str, str] | None = None,
        source: str = "127.0.0.1") -> tuple[int, str]:
    """GET /+api with the token, from ``source``: (status, status line + body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", "/+api", headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json",
            **(headers or {})})
        resp = conn.getresponse()
        return resp.status, f"{resp.reason}\n{resp.read().decode()}"
    finally:
        conn.close()


def assert_ok(answer: tuple[int, str]) -> None:
    status, text = answer
    assert status == 200, text
    assert json.loads(text.split("\n", 1)[1])["result"]["authstatus"][:2] == ["ok", "root"]


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    base = tmp_path_factory.mktemp("ips-direct")
    server = start_server(base / "server")
    try:
        yield server, login_root(base / "client", server.url)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    base = tmp_path_factory.mktemp("ips-proxied")
    server = start_server(base / "server", extra_args=[
        "--trusted-proxy", "127.0.0.1", "--trusted-proxy-headers", "x-forwarded-for"])
    try:
        yield server, login_root(base / "client", server.url)
    finally:
        server.stop()


def test_token_works_from_allowed_address(direct):
    server, client = direct
    assert_ok(api(server.port, create(client, "127.0.0.1")))


def test_token_refused_elsewhere_naming_address_and_networks(direct):
    server, client = direct
    status, text = api(server.port, create(client, "192.0.2.0/24"))
    assert status == 403
    assert "token not valid from 127.0.0.1 (allowed: 192.0.2.0/24)" in text


def test_forged_forwarded_for_ignored_without_trusted_proxy(direct):
    server, client = direct
    status, text = api(server.port, create(client, "192.0.2.0/24"),
                       {"X-Forwarded-For": "192.0.2.9"})
    assert status == 403
    assert "token not valid from 127.0.0.1" in text


def test_create_and_list_with_ip(direct):
    _, client = direct
    token = create(client, "192.0.2.0/24,2001:db8::1")
    listing = json.loads(client.run("token-list", "--json").stdout)
    entry = {e["id"]: e for e in listing["tokens"]}[Token.load(token).token_id]
    assert {
        "caveat": '["devpi:ips",["192.0.2.0/24","2001:db8::1"]]',
        "description": "only from: 192.0.2.0/24, 2001:db8::1",
    } in entry["restrictions"]
    assert "only from: 192.0.2.0/24, 2001:db8::1" in client.run("token-list").stdout
    proc = client.fails("token-create", "--ip", "192.0.2.7/24")
    assert "has host bits set" in proc.stderr


def test_forwarded_client_counts_behind_trusted_proxy(proxied):
    server, client = proxied
    token = create(client, "192.0.2.0/24")
    assert_ok(api(server.port, token, {"X-Forwarded-For": "192.0.2.9"}))
    status, text = api(server.port, token, {"X-Forwarded-For": "203.0.113.9"})
    assert status == 403
    assert "token not valid from 203.0.113.9 (allowed: 192.0.2.0/24)" in text


def _plain_nginx_conf(directory: Path, port: int, backend_port: int) -> str:
    """tls_front's configuration, as plain http, forwarding the client address."""
    conf = nginx_conf(directory, port, backend_port, Path("/unused"), Path("/unused"))
    conf = conf.replace(f"listen 127.0.0.1:{port} ssl;", f"listen 127.0.0.1:{port};")
    conf = "\n".join(line for line in conf.splitlines() if "ssl_certificate" not in line)
    return conf.replace(
        "proxy_set_header X-Forwarded-Proto https;",
        "proxy_set_header X-Forwarded-For $remote_addr;")


@pytest.fixture
def nginx_front(proxied, tmp_path):
    if not nginx_available():
        pytest.skip("Debian's nginx is not installed")
    server, _ = proxied
    for sub in ("tmp", "logs"):
        (tmp_path / sub).mkdir()
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(_plain_nginx_conf(tmp_path, port, server.port))
    with open(tmp_path / "stderr.log", "ab") as err:
        popen = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log")],
            stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
            start_new_session=True)
    front = TLSFront(url=f"http://127.0.0.1:{port}", port=port, backend_port=server.port,
                     kind="nginx", directory=tmp_path, ca_file=Path("/unused"), popen=popen)
    try:
        _wait_for_port(front)
        yield front
    finally:
        front.stop()
        assert not front.alive()


def _wait_for_port(front: TLSFront, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert front.alive(), front.log()[-4000:]
        try:
            socket.create_connection(("127.0.0.1", front.port), timeout=2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, front.log()[-4000:]
            time.sleep(0.05)


def test_behind_nginx_the_real_client_counts(proxied, nginx_front):
    _, client = proxied
    here = create(client, CLIENT_IP)
    assert_ok(api(nginx_front.port, here, source=CLIENT_IP))
    # a forged header sent to nginx is replaced by the address nginx saw
    assert_ok(api(nginx_front.port, here, {"X-Forwarded-For": "192.0.2.9"}, source=CLIENT_IP))
    elsewhere = create(client, "192.0.2.0/24")
    status, text = api(nginx_front.port, elsewhere, {"X-Forwarded-For": "192.0.2.9"},
                       source=CLIENT_IP)
    assert status == 403
    assert f"token not valid from {CLIENT_IP} (allowed: 192.0.2.0/24)" in text
    # nginx's own address is not the client's
    status, text = api(nginx_front.port, create(client, "127.0.0.1"), source=CLIENT_IP)
    assert status == 403
    assert f"token not valid from {CLIENT_IP} (allowed: 127.0.0.1)" in text
