"""The devpi-tokens 1.1.0 client plugin (as published) against this server.

People upgrade the server first and keep their devpi-tokens 1.x clients for a
while.  These tests install ``devpi-tokens[client]==1.1.0`` with devpi-client
into a venv of their own (built once per test session under pytest's tmp, never
into the venv running the tests), start a real devpi-server with this
plugin, and drive that venv's ``devpi`` as a user would.

What works with 1.1.0: token-create (with -e as a duration, -i, -p, -a),
token-list, token-delete, token-login, devpi upload after token-login, and
token-derive (1.x ``name=value`` caveats, no ``devpi-`` prefix; this server
enforces them).  What does not, for reasons on the client's side:
``token-inspect`` cannot read PyPI-format caveats (documented by a test
below); ``-e <epoch seconds>`` fails inside 1.1.0 itself (UnboundLocalError,
whatever the server); without the ``[client]`` extra (``delta``) every
token-create fails locally, as 1.1.0 parses its default ``-e "1 year"``.

Set ``DEVPI_TOKENS_V1_VENV`` to an existing venv with devpi-tokens 1.1.0 and
devpi-client installed to skip the build.  Without a reachable package index
the tests skip, saying so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pymacaroons
import pytest

from devpi_process import DevpiClient
from devpi_process import make_wheel
from devpi_process import start_server
from devpi_tokens.tokens import Token

pytestmark = pytest.mark.e2e

USER = "alice"
PASSWORD = "alice-password-v1-compat"
DAY = 86400
V1_REQUIREMENTS = ("devpi-tokens[client]==1.1.0", "devpi-client>=7,<8")
NO_PYPITOKEN = "Possibly detected a Devpi token as password"


# --------------------------------------------------------------------------
# the 1.1.0 client venv

def _venv_has_v1(venv: Path) -> bool:
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    proc = subprocess.run(
        # -I: not the checkout's devpi_tokens.egg-info in the current directory
        [str(python), "-I", "-c", "import importlib.metadata as m, devpi, delta; "
                            "print(m.version('devpi-tokens'))"],
        capture_output=True, text=True, timeout=60)
    return proc.returncode == 0 and proc.stdout.strip() == "1.1.0"


@pytest.fixture(scope="session")
def v1_devpi(tmp_path_factory) -> Path:
    """Path of the ``devpi`` script of a venv with devpi-tokens 1.1.0's client."""
    given = os.environ.get("DEVPI_TOKENS_V1_VENV")
    if given:
        venv = Path(given)
        if not _venv_has_v1(venv):
            pytest.fail(f"DEVPI_TOKENS_V1_VENV={given} has no devpi-tokens 1.1.0 client")
        return venv / "bin" / "devpi"
    venv = tmp_path_factory.mktemp("v1client") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                   capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_NO_INPUT"] = "1"
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "--timeout", "20", "--retries", "1",
         *V1_REQUIREMENTS],
        capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines()
                  if line.strip() and not line.startswith("WARNING")]
        pytest.skip("cannot install devpi-tokens 1.1.0 (package index unreachable?): "
                    + (errors[-1] if errors else f"pip exited {proc.returncode}"))
    assert _venv_has_v1(venv), "pip installed something else than devpi-tokens 1.1.0"
    return venv / "bin" / "devpi"


class V1Client(DevpiClient):
    """DevpiClient running the 1.1.0 venv's ``devpi`` instead of ours."""

    def __init__(self, exe: Path, clientdir: Path, url: str) -> None:
        super().__init__(clientdir, url)
        self.exe = str(exe)
        self.env.pop("PYTHONPATH", None)

    def run(self, *args: str, input: str | None = None, check: bool = True,
            cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [self.exe, *map(str, args), "--clientdir", str(self.clientdir)]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, env=self.env, cwd=cwd,
            timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL,
            start_new_session=True)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"1.1.0 devpi {cmd[1:]} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                f"stderr:\n{proc.stderr}")
        return proc


# --------------------------------------------------------------------------
# server and users

@pytest.fixture(scope="module")
def server(v1_devpi, tmp_path_factory):
    # v1_devpi first: no server is started when the client cannot be installed
    base = tmp_path_factory.mktemp("v1-compat")
    proc = start_server(base / "server", timeout=180)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(server, v1_devpi, tmp_path_factory) -> V1Client:
    """The 1.1.0 client logged in as alice with her password; alice/dev, alice/other."""
    client = V1Client(v1_devpi, tmp_path_factory.mktemp("v1-admin"), server.url)
    client.run("use", server.url)
    client.run("user", "-c", USER, f"password={PASSWORD}")
    client.run("login", USER, "--password", PASSWORD)
    for index in ("dev", "other"):
        client.run("index", "-c", f"{USER}/{index}", "bases=")
    return client


@pytest.fixture
def token_client(server, v1_devpi, tmp_path):
    """Factory: a fresh 1.1.0 client on alice/dev after ``token-login -f FILE``."""
    count = 0

    def make(token: str) -> V1Client:
        nonlocal count
        count += 1
        client = V1Client(v1_devpi, tmp_path / f"token-client-{count}", server.url)
        client.run("use", f"{server.url}/{USER}/dev")
        path = tmp_path / f"login-{count}.token"
        path.write_text(token)
        proc = client.run("token-login", "-f", str(path))
        assert proc.stdout.strip().splitlines()[-1] == (
            f"logged in '{USER}' at '{server.url}/{USER}/dev'")
        return client

    return make


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def create(admin: V1Client, tmp_path: Path, *args: str) -> str:
    """1.1.0 ``token-create ARGS -o FILE``; the token from the file."""
    path = tmp_path / f"token-{uuid.uuid4().hex[:8]}"
    admin.run("token-create", *args, "-o", str(path))
    return path.read_text()


def derive(admin: V1Client, tmp_path: Path, parent: str, *args: str) -> str:
    src = tmp_path / f"parent-{uuid.uuid4().hex[:8]}"
    src.write_text(parent)
    out = tmp_path / f"derived-{uuid.uuid4().hex[:8]}"
    admin.run("token-derive", "-f", str(src), *args, "-o", str(out))
    return out.read_text()


def listed(admin: V1Client, token_id: str) -> list[str]:
    """The restriction lines 1.1.0's ``token-list`` prints under ``token_id``."""
    lines = admin.run("token-list").stdout.splitlines()
    assert lines[0] == f"Tokens for '{USER}':"
    start = lines.index(f"    {token_id}")
    assert lines[start + 1] == "        restrictions:"
    block = []
    for line in lines[start + 2:]:
        if not line.startswith(" " * 12):
            break
        block.append(line.strip())
    return block


def new_project() -> str:
    return f"v1c-{uuid.uuid4().hex[:8]}"


def wheel(tmp_path: Path, name: str, version: str = "1.0") -> Path:
    return make_wheel(tmp_path / "dist" / name, name, version)


def project_files(server, name: str, index: str = "dev") -> list[str]:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"{server.url}/{USER}/{index}/{name}",
                                 headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
            result = json.loads(resp.read())["result"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    return sorted(link["href"].rsplit("/", 1)[1] for verdata in result.values()
                  for link in verdata.get("+links", []) if link["rel"] == "releasefile")


# --------------------------------------------------------------------------
# token-create, token-list

def test_token_create_with_every_option_and_token_list(admin, tmp_path):
    before = int(time.time())
    token = create(admin, tmp_path, "-e", "1d", "-i", "alice/dev", "-p", "foo,Bar",
                   "-a", "upload", "-a", "pkg_read")
    after = int(time.time()) + 1
    assert token.startswith("devpi-")
    token_id = Token.load(token).token_id

    lines = listed(admin, token_id)
    expires = int(lines[0].removeprefix("expires="))
    not_before = int(lines[1].removeprefix("not_before="))
    assert before + DAY <= expires <= after + DAY
    assert before <= not_before <= after
    # 1.1.0 sorts what it sends; the listing keeps that order
    assert lines == [f"expires={expires}", f"not_before={not_before}", "projects=Bar,foo",
                     "indexes=alice/dev", "allowed=pkg_read,upload"]


def test_token_create_default_is_one_year(admin, tmp_path):
    # 1.1.0 always sends an expiry: its default -e "1 year" is 365 days (delta)
    token = create(admin, tmp_path)
    expires, not_before = listed(admin, Token.load(token).token_id)
    lifetime = int(expires.removeprefix("expires=")) - int(not_before.removeprefix("not_before="))
    assert 365 * DAY - 5 <= lifetime <= 365 * DAY + 5


def test_server_refusals_reach_the_1x_client(admin):
    proc = admin.fails("token-create", "-e", "never")
    assert "403 Forbidden: only root and --restrict-modify users may create tokens" in output(proc)
    proc = admin.fails("token-create", "-e", "367d")
    assert "403 Forbidden" in output(proc) and "366 days" in output(proc)
    proc = admin.fails("token-create", "-e", "1d", "-a", "user_modify", "-y")
    assert ("400 Bad Request: 'user_modify' cannot be given to a token: "
            "tokens never carry user permissions") in output(proc)
    proc = admin.fails("token-create", "-e=-1d")
    assert "400 Bad Request: 'expires'" in output(proc) and "is in the past" in output(proc)


# --------------------------------------------------------------------------
# token-login, devpi upload

def test_token_login_and_upload(server, admin, token_client, tmp_path):
    project = new_project()
    token = create(admin, tmp_path, "-e", "1d", "-i", "alice/dev", "-p", project,
                   "-a", "upload,pkg_read")
    client = token_client(token)
    proc = client.run("upload", str(wheel(tmp_path, project)))
    # no pypitoken in the 1.1.0 venv: devpi-client sends the token unchanged
    assert NO_PYPITOKEN in output(proc)
    assert f"file_upload of {project.replace('-', '_')}-1.0-py3-none-any.whl" in output(proc)
    assert project_files(server, project) == [f"{project.replace('-', '_')}-1.0-py3-none-any.whl"]

    other = new_project()
    proc = client.fails("upload", str(wheel(tmp_path, other)))
    assert "403 FAIL" in output(proc)
    assert f"token not valid for project '{other}'" in output(proc)
    assert project_files(server, other) == []


def test_token_logged_in_1x_client_cannot_manage_tokens(admin, token_client, tmp_path):
    client = token_client(create(admin, tmp_path, "-e", "1d"))
    proc = client.fails("token-list")
    assert ("403 Forbidden: a token cannot be used to list tokens; "
            "log in with the password instead") in output(proc)
    proc = client.fails("token-create", "-e", "1d")
    assert "a token cannot be used to create tokens" in output(proc)


# --------------------------------------------------------------------------
# token-derive (offline, 1.x caveats), token-delete

def test_token_derive_adds_1x_caveats_the_server_enforces(
        server, admin, token_client, tmp_path):
    project = new_project()
    parent = create(admin, tmp_path, "-e", "1d", "-i", "alice/dev")
    derived = derive(admin, tmp_path, parent, "-p", project, "-e", "1h")
    # 1.1.0 writes the macaroon without the devpi- prefix, adding name=value caveats
    assert not derived.startswith("devpi-")
    macaroon = pymacaroons.Macaroon.deserialize(derived)
    caveats = [c.to_dict()["cid"] for c in macaroon.caveats]
    assert caveats[:-2] == [c.to_dict()["cid"] for c in
                            pymacaroons.Macaroon.deserialize(parent[6:]).caveats]
    assert caveats[-2].startswith("expires=")
    assert caveats[-1] == f"projects={project}"

    client = token_client(derived)
    client.run("upload", str(wheel(tmp_path, project)))
    assert project_files(server, project)
    other = new_project()
    proc = client.fails("upload", str(wheel(tmp_path, other)))
    assert f"token not valid for project '{other}'" in output(proc)


def test_token_delete_revokes_the_token_and_its_derivations(admin, token_client, tmp_path):
    project = new_project()
    parent = create(admin, tmp_path, "-e", "1d")
    token_id = Token.load(parent).token_id
    client = token_client(derive(admin, tmp_path, parent, "-p", project))
    assert listed(admin, token_id)

    proc = admin.run("token-delete", token_id)
    assert proc.stdout.strip() == f"token {token_id} of user {USER} deleted"
    assert f"    {token_id}" not in admin.run("token-list").stdout
    proc = client.fails("upload", str(wheel(tmp_path, project)))
    assert f"token {token_id} of user '{USER}' was deleted or never existed" in output(proc)

    proc = admin.fails("token-delete", token_id)
    assert f"404 Not Found: user '{USER}' has no token '{token_id}'" in output(proc)


# --------------------------------------------------------------------------
# token-inspect: what 1.1.0 cannot read

def test_token_inspect_of_our_tokens_fails_in_1x(admin, tmp_path):
    """1.1.0's token-inspect splits every caveat at ``=``.

    This server writes PyPI's JSON caveats (``[0,exp,nbf]`` first, on every
    token), so 1.1.0 fails with a traceback on any token minted here, and on
    derivations of them.  Offline: nothing the server can change without
    giving up PyPI's format.  Our own client inspects both.
    """
    token = create(admin, tmp_path, "-e", "1d", "-p", "foo")
    path = tmp_path / "inspect.token"
    path.write_text(token)
    proc = admin.fails("token-inspect", "-f", str(path))
    assert "ValueError: not enough values to unpack (expected 2, got 1)" in proc.stderr

    # the 1.1.0 derivation of it: our client reads both kinds of caveats
    derived = derive(admin, tmp_path, token, "-p", "foo")
    path.write_text(derived)
    ours = DevpiClient(tmp_path / "our-client")
    out = ours.run("token-inspect", "-f", str(path)).stdout
    assert f"token id:     {Token.load(token).token_id}" in out
    assert out.count("only projects: foo") == 2
