"""``--tokens-max-lifetime`` on a real devpi-server process."""
from __future__ import annotations

import subprocess

import pytest

from devpi_process import DevpiClient
from devpi_process import bin_path
from devpi_process import free_port
from devpi_process import init_server
from devpi_process import start_server
from devpi_process import write_secret


pytestmark = pytest.mark.e2e


def test_token_beyond_the_limit_is_refused_naming_it(tmp_path):
    server = start_server(tmp_path / "server", extra_args=["--tokens-max-lifetime", "1d"])
    try:
        client = DevpiClient(tmp_path / "client")
        client.run("use", server.url)
        client.run("login", "root", "--password", "")
        proc = client.fails("token-create", "-e", "2d", merge_output=True)
        assert "403" in proc.stdout, proc.stdout
        assert "tokens may live at most 1d on this server (--tokens-max-lifetime)" in proc.stdout
        assert "Traceback" not in proc.stdout
        # within the limit it works
        assert client.run("token-create", "-e", "12h").stdout.strip()
    finally:
        server.stop()


def test_bad_value_stops_the_server(tmp_path):
    serverdir = tmp_path / "server"
    init_server(serverdir)
    secretfile = write_secret(tmp_path / "secret")
    proc = subprocess.run(
        [bin_path("devpi-server"), "--serverdir", str(serverdir), "--secretfile",
         str(secretfile), "--host", "127.0.0.1", "--port", str(free_port()),
         "--offline-mode", "--tokens-max-lifetime", "banana"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, timeout=180)
    assert proc.returncode != 0, proc.stdout
    assert "--tokens-max-lifetime 'banana' is not a valid duration" in proc.stdout
