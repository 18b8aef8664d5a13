"""End to end with the tools people use: devpi, twine, pip, uv and raw HTTP.

One real devpi-server process (plugin installed through its entry point,
``--offline-mode``, fresh serverdir, free loopback port) serves the whole
module and is stopped by PID in the fixture's finalizer.  Everything is driven
as subprocesses, exactly as a CI job would.  Packages are tiny wheels written
directly (no build backend, no network).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from devpi_process import DevpiClient
from devpi_process import bin_path
from devpi_process import start_server
from devpi_tokens.quickstart_server import write_wheel
from devpi_tokens.restrictions import ValidityWindow
from devpi_tokens.tokens import Token

pytestmark = pytest.mark.e2e

USER = "alice"
PASSWORD = "alice-password-e2e"
NARROWING_MESSAGE = "Used 'pypitoken' to create a unique Devpi token valid for 60 seconds"


# --------------------------------------------------------------------------
# fixtures: one server, one user with two indexes, one expiry-only token

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e-tools")
    proc = start_server(base / "server")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(server, tmp_path_factory) -> DevpiClient:
    """devpi logged in as alice with her password (to mint tokens)."""
    client = DevpiClient(tmp_path_factory.mktemp("admin-client"), server.url)
    client.run("use", server.url)
    client.run("user", "-c", USER, f"password={PASSWORD}")
    client.run("login", USER, "--password", PASSWORD)
    for index in ("dev", "other"):
        client.run("index", "-c", f"{USER}/{index}", "bases=")
    return client


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


def create_token(admin: DevpiClient, workdir: Path, *args: str) -> str:
    """``devpi token-create ARGS -o FILE``; return the token read from the file."""
    path = workdir / f"token-{uuid.uuid4().hex[:8]}"
    admin.run("token-create", *args, "-o", str(path))
    return path.read_text().strip()


def derive_token(admin: DevpiClient, workdir: Path, parent: str, *args: str) -> str:
    """``devpi token-derive`` (offline); return the derived token."""
    src = workdir / f"parent-{uuid.uuid4().hex[:8]}"
    src.write_text(parent)
    out = workdir / f"derived-{uuid.uuid4().hex[:8]}"
    admin.run("token-derive", "-f", str(src), *args, "-o", str(out))
    return out.read_text().strip()


@pytest.fixture(scope="module")
def expiry_token(admin, workdir) -> str:
    """Restricted by expiry only: pypitoken can load it, so devpi upload narrows it."""
    return create_token(admin, workdir, "-e", "1d", "-d", "e2e expiry only")


def new_project() -> tuple[str, str]:
    """A project name (and version) no other test uses."""
    return f"e2e-{uuid.uuid4().hex[:8]}", "1.0"


def wheel_for(workdir: Path, name: str, version: str = "1.0") -> Path:
    return write_wheel(workdir / "dist" / name, name, version)


def token_client(server, tmp_path: Path, token: str, index: str = "dev") -> DevpiClient:
    """A fresh devpi client logged in with ``token`` via token-login."""
    client = DevpiClient(tmp_path / "token-client", server.url)
    client.run("use", f"{server.url}/{USER}/{index}")
    token_file = tmp_path / "login.token"
    token_file.write_text(token)
    client.run("token-login", "-f", str(token_file))
    return client


def http(server, method: str, path: str, *, token: str | None = None,
         basic: tuple[str, str] | None = None, data: bytes | None = None,
         headers: dict | None = None) -> tuple[int, bytes]:
    """A raw request (what curl would send); returns (status, body) even for errors."""
    hdrs = {"Accept": "application/json", **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if basic is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback server)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def project_files(server, index: str, name: str) -> list[str]:
    """Basenames of the files of ``name`` on ``index`` (anonymous read)."""
    status, body = http(server, "GET", f"/{USER}/{index}/{name}")
    if status == 404:
        return []
    assert status == 200, body
    files = []
    for verdata in json.loads(body)["result"].values():
        files += [link["href"].rsplit("/", 1)[1].split("#")[0]
                  for link in verdata.get("+links", []) if link.get("rel") == "releasefile"]
    return files


def index_url(server, token: str, index: str = "dev", user: str = "") -> str:
    host = server.url.split("://", 1)[1]
    return f"http://{user}:{token}@{host}/{USER}/{index}/+simple/"


def run(args: list[str], *, env: dict | None = None, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def tool_env(tmp_path: Path) -> dict[str, str]:
    """pip / uv / twine without the developer's config, caches or keyring."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("PIP_", "UV_", "TWINE_")):
            del env[name]
    env.update({
        "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"), "UV_NO_CONFIG": "1",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
    })
    return env


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def upload_via_devpi(client: DevpiClient, wheel: Path, check: bool = True):
    return client.run("upload", str(wheel), check=check)


# --------------------------------------------------------------------------
# devpi token-login + devpi upload

def test_devpi_upload_after_token_login_narrows_to_60_seconds(
        server, admin, workdir, expiry_token, tmp_path):
    name, version = new_project()
    client = token_client(server, tmp_path, expiry_token)
    proc = upload_via_devpi(client, wheel_for(workdir, name, version))
    out = output(proc)
    assert NARROWING_MESSAGE in out
    assert f"for upload to the {name!r} project" in out
    assert project_files(server, "dev", name) == [
        f"{name.replace('-', '_')}-{version}-py3-none-any.whl"]


def test_devpi_upload_with_derived_project_token(server, admin, workdir, expiry_token, tmp_path):
    name, version = new_project()
    narrow = derive_token(admin, workdir, expiry_token, "-p", name, "-e", "1h")
    client = token_client(server, tmp_path, narrow)
    out = output(upload_via_devpi(client, wheel_for(workdir, name, version)))
    assert NARROWING_MESSAGE in out
    assert project_files(server, "dev", name)


def test_devpi_upload_of_another_project_is_refused_with_reason(
        server, admin, workdir, expiry_token, tmp_path):
    allowed, _ = new_project()
    name, version = new_project()
    narrow = derive_token(admin, workdir, expiry_token, "-p", allowed)
    client = token_client(server, tmp_path, narrow)
    proc = upload_via_devpi(client, wheel_for(workdir, name, version), check=False)
    out = output(proc)
    assert proc.returncode != 0, out
    assert "403" in out, out
    # the server's reason, as devpi-client shows it
    assert f"token not valid for project {name!r}" in out, out
    assert "Traceback" not in out
    assert project_files(server, "dev", name) == []


def test_index_restricted_token_cannot_upload_elsewhere(
        server, admin, workdir, tmp_path):
    token = create_token(admin, workdir, "-e", "1h", "-i", f"{USER}/dev")
    name, version = new_project()
    wheel = wheel_for(workdir, name, version)
    # refused on the other index, with a reason naming it ...
    client = token_client(server, tmp_path / "other", token, index="other")
    proc = upload_via_devpi(client, wheel, check=False)
    out = output(proc)
    assert proc.returncode != 0, out
    assert f"token not valid for index '{USER}/other'" in out, out
    assert project_files(server, "other", name) == []
    # ... and twine is refused the same way
    proc = run([bin_path("twine"), "upload", "--non-interactive", "--disable-progress-bar",
                "--repository-url", f"{server.url}/{USER}/other/",
                "-u", "__token__", "-p", token, str(wheel)], env=tool_env(tmp_path))
    assert proc.returncode != 0, output(proc)
    assert "403" in output(proc) and "not valid for index" in output(proc), output(proc)
    assert project_files(server, "other", name) == []
    # the same token does upload to the index it names
    client = token_client(server, tmp_path / "dev", token, index="dev")
    upload_via_devpi(client, wheel)
    assert project_files(server, "dev", name)


# --------------------------------------------------------------------------
# twine

def twine_upload(server, tmp_path: Path, token: str, wheel: Path, index: str = "dev",
                 user: str = "__token__") -> subprocess.CompletedProcess:
    return run([bin_path("twine"), "upload", "--non-interactive", "--disable-progress-bar",
                "--repository-url", f"{server.url}/{USER}/{index}/",
                "-u", user, "-p", token, str(wheel)], env=tool_env(tmp_path))


def test_twine_upload_with_dunder_token(server, admin, workdir, expiry_token, tmp_path):
    name, version = new_project()
    proc = twine_upload(server, tmp_path, expiry_token, wheel_for(workdir, name, version))
    assert proc.returncode == 0, output(proc)
    assert project_files(server, "dev", name)


def test_twine_upload_refused_for_other_project(server, admin, workdir, expiry_token, tmp_path):
    allowed, _ = new_project()
    name, version = new_project()
    narrow = derive_token(admin, workdir, expiry_token, "-p", allowed)
    proc = twine_upload(server, tmp_path, narrow, wheel_for(workdir, name, version))
    assert proc.returncode != 0, output(proc)
    assert "403" in output(proc), output(proc)
    assert f"token not valid for project {name!r}" in output(proc), output(proc)
    assert project_files(server, "dev", name) == []


# --------------------------------------------------------------------------
# pip and uv through a token in the index URL

@pytest.fixture(scope="module")
def published(server, admin, workdir, expiry_token, tmp_path_factory) -> tuple[str, str]:
    """A project on alice/dev, uploaded with twine and the expiry-only token."""
    name, version = new_project()
    tmp = tmp_path_factory.mktemp("publish")
    proc = twine_upload(server, tmp, expiry_token, wheel_for(workdir, name, version))
    assert proc.returncode == 0, output(proc)
    return name, version


def module_of(name: str) -> str:
    return name.replace("-", "_")


def hello(target: Path, name: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = run([sys.executable, "-c", f"import {module_of(name)} as m; print(m.hello())"],
               env=env)
    assert proc.returncode == 0, output(proc)
    return proc.stdout.strip()


def pip(*args: str, env: dict) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pip", *args], env=env)


def test_pip_download_and_install_through_token_url(
        server, admin, workdir, expiry_token, published, tmp_path):
    name, version = published
    narrow = derive_token(admin, workdir, expiry_token, "-p", name, "-e", "1h",
                          "-a", "pkg_read")
    env = tool_env(tmp_path)
    proc = pip("download", "--no-deps", "-d", str(tmp_path / "dl"),
               "--index-url", index_url(server, narrow), name, env=env)
    assert proc.returncode == 0, output(proc)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [
        f"{module_of(name)}-{version}-py3-none-any.whl"]
    assert narrow not in output(proc)  # pip masks the password in what it prints
    proc = pip("install", "--target", str(tmp_path / "site"),
               "--index-url", index_url(server, narrow, user="__token__"), name, env=env)
    assert proc.returncode == 0, output(proc)
    assert hello(tmp_path / "site", name) == f"hello from {name} {version}"


def test_pip_refused_with_token_for_other_index(server, admin, workdir, published, tmp_path):
    """The token in the URL is really checked: one for alice/other cannot read alice/dev."""
    name, _ = published
    token = create_token(admin, workdir, "-e", "1h", "-i", f"{USER}/other")
    proc = pip("download", "--no-deps", "-d", str(tmp_path / "dl"),
               "--index-url", index_url(server, token), name, env=tool_env(tmp_path))
    assert proc.returncode != 0, output(proc)
    assert "403" in output(proc), output(proc)
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())


def test_uv_pip_install_through_token_url(server, admin, workdir, expiry_token, published,
                                          tmp_path):
    name, version = published
    narrow = derive_token(admin, workdir, expiry_token, "-p", name, "-e", "1h")
    proc = run([bin_path("uv"), "pip", "install", "--no-config", "--python", sys.executable,
                "--target", str(tmp_path / "site"), "--default-index",
                index_url(server, narrow), name], env=tool_env(tmp_path))
    assert proc.returncode == 0, output(proc)
    assert hello(tmp_path / "site", name) == f"hello from {name} {version}"


def last_use(admin: DevpiClient, token: str) -> dict:
    """The ``last_used*`` fields ``devpi token-list --json`` shows for ``token``."""
    token_id = Token.load(token).token_id
    listed = json.loads(admin.run("token-list", "--json").stdout)
    (entry,) = [e for e in listed["tokens"] if e["id"] == token_id]
    return {k: v for k, v in entry.items() if k.startswith("last_used")}


def test_uses_by_twine_and_uv_are_listed(server, admin, workdir, tmp_path):
    """Last used, as the tools people run leave it (twine uploads, uv reads)."""
    token = create_token(admin, workdir, "-e", "1h", "-d", "last used by tools")
    assert last_use(admin, token) == {
        "last_used": None, "last_used_from": None, "last_used_for": None}
    name, version = new_project()
    began = int(time.time())
    proc = twine_upload(server, tmp_path, token, wheel_for(workdir, name, version))
    assert proc.returncode == 0, output(proc)
    used = last_use(admin, token)
    assert used["last_used_for"] == f"upload {name} to {USER}/dev"
    assert used["last_used_from"] == "127.0.0.1"
    assert began <= used["last_used"] <= int(time.time())
    # a token derived from it counts for it: uv reads the project with one
    narrow = derive_token(admin, workdir, token, "-p", name, "-a", "pkg_read")
    proc = run([bin_path("uv"), "pip", "install", "--no-config", "--python", sys.executable,
                "--target", str(tmp_path / "site"), "--default-index",
                index_url(server, narrow), name], env=tool_env(tmp_path))
    assert proc.returncode == 0, output(proc)
    assert last_use(admin, token)["last_used_for"].startswith("read ")


def test_uv_refused_with_expired_token(server, admin, workdir, expiry_token, published,
                                       tmp_path):
    name, _ = published
    now = int(time.time())
    expired = Token.load(expiry_token).derive(
        ValidityWindow(not_after=now - 60, not_before=now - 3600)).dump()
    proc = run([bin_path("uv"), "pip", "install", "--no-config", "--python", sys.executable,
                "--target", str(tmp_path / "site"), "--index-url", index_url(server, expired),
                name], env=tool_env(tmp_path))
    assert proc.returncode != 0, output(proc)
    assert "401" in output(proc), output(proc)
    assert not (tmp_path / "site" / module_of(name)).exists()


# --------------------------------------------------------------------------
# raw requests, as curl would send them

def test_bearer_token_authenticates(server, admin, expiry_token):
    status, body = http(server, "GET", "/+api", token=expiry_token)
    assert status == 200, body
    assert json.loads(body)["result"]["authstatus"][:2] == ["ok", USER]


@pytest.mark.parametrize("how", ["token-as-user", "dunder-token", "own-user", "empty-user"])
def test_basic_auth_forms_authenticate(server, admin, expiry_token, how):
    basic = {"token-as-user": (expiry_token, ""), "dunder-token": ("__token__", expiry_token),
             "own-user": (USER, expiry_token), "empty-user": ("", expiry_token)}[how]
    status, body = http(server, "GET", "/+api", basic=basic)
    assert status == 200, body
    assert json.loads(body)["result"]["authstatus"][:2] == ["ok", USER]


def test_basic_auth_with_another_user_name_refused(server, admin, expiry_token):
    status, body = http(server, "GET", "/+api", basic=("bob", expiry_token))
    assert status == 403, body


def test_bearer_reads_simple_page(server, expiry_token, published):
    name, version = published
    status, body = http(server, "GET", f"/{USER}/dev/+simple/{name}/", token=expiry_token,
                        headers={"Accept": "text/html"})
    assert status == 200, body
    assert f"{module_of(name)}-{version}-py3-none-any.whl" in body.decode()


def multipart(fields: dict[str, str], file_field: str, path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                     f"{value}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def bearer_upload(server, token: str, wheel: Path, name: str, version: str,
                  index: str = "dev") -> tuple[int, bytes]:
    body, ctype = multipart({":action": "file_upload", "name": name, "version": version,
                             "filetype": "bdist_wheel", "pyversion": "py3",
                             "protocol_version": "1", "metadata_version": "2.1"},
                            "content", wheel)
    return http(server, "POST", f"/{USER}/{index}/", token=token, data=body,
                headers={"Content-Type": ctype})


def test_bearer_upload_lands_and_other_project_refused(
        server, admin, workdir, expiry_token):
    name, version = new_project()
    other, _ = new_project()
    narrow = derive_token(admin, workdir, expiry_token, "-p", name)
    status, body = bearer_upload(server, narrow, wheel_for(workdir, name, version),
                                 name, version)
    assert status == 200, body
    assert project_files(server, "dev", name)
    status, body = bearer_upload(server, narrow, wheel_for(workdir, other, version),
                                 other, version)
    assert status == 403, body
    assert other in body.decode(errors="replace")
    assert project_files(server, "dev", other) == []


def test_bearer_expired_token_refused_with_time(server, expiry_token):
    now = int(time.time())
    expired = Token.load(expiry_token).derive(
        ValidityWindow(not_after=now - 60, not_before=now - 3600)).dump()
    status, body = http(server, "GET", f"/{USER}/+tokens", token=expired)
    assert status in (401, 403), body
    assert "expired" in body.decode(errors="replace")


def test_token_cannot_mint_tokens(server, expiry_token):
    status, body = http(server, "POST", f"/{USER}/+token-create", token=expiry_token,
                        data=b"{}", headers={"Content-Type": "application/json"})
    assert status in (401, 403), body


def test_server_log_never_shows_a_token(server, expiry_token):
    # runs after the others in this module (pytest keeps file order)
    log = server.log()
    assert expiry_token not in log
    assert expiry_token.split("-", 1)[1][:40] not in log
