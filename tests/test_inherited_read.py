"""End to end: an index-restricted token reads the indexes its index inherits from.

devpi's simple page for ``alice/kid`` (bases ``alice/base``, whose bases are
``alice/grand``) links a project that lives on a base into that base's own
``+f/`` path, e.g. ``/alice/base/+f/…/basepkg-1.0-py3-none-any.whl``.  So a
token restricted to ``indexes=["alice/kid"]`` must be able to *read*
(``pkg_read``) on ``alice/base`` and ``alice/grand`` (the resolution order,
recursively), or pip/uv cannot install through it.  Nothing else widens:
reading an index outside the resolution order, and every other permission
(upload, deleting a file / version / project, modifying or deleting an index)
on a base stays refused.

One real devpi-server process (``--offline-mode``, loopback, free port) serves
the module and is stopped by PID.  Its indexes are private: a test-only plugin
(written next to the serverdir, loaded through its entry point from the
server's PYTHONPATH) limits ``pkg_read`` to alice, so anonymous downloads are
refused and a download that works is one the token granted.  That matters for
uv: it sends the index URL's credentials only below the index URL and fetches
``/alice/base/+f/...`` anonymously first, retrying with them on a 401/403.
pip and uv use only this server (``--index-url``/``--default-index``,
``--no-deps``, no cache).

devpi-server's simple pages need no permission (anyone may list them), so the
refusals asserted here are on the ``+f`` files and on the write permissions.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from devpi_process import DevpiClient
from devpi_process import bin_path
from devpi_process import start_server
from devpi_tokens.quickstart_server import write_wheel

pytestmark = pytest.mark.e2e

USER = "alice"
PASSWORD = "alice-password-inherited"
AUTH = (USER, PASSWORD)

# index -> its bases (alice/base gets alice/grand after creation, as asked)
INDEXES = {
    "base": [],
    "grand": [],
    "kid": [f"{USER}/base"],
    "unrelated": [],
}
# project -> the index it is published on
PACKAGES = {
    "basepkg": "base",
    "grandpkg": "grand",
    "kidpkg": "kid",
    "otherpkg": "unrelated",
    # only the (refused) delete attempts aim at these, so a wrongly allowed
    # delete cannot take the packages of the read tests with it
    "victimpkg": "base",
    "grandvictim": "grand",
}
VERSION = "1.0"


# --------------------------------------------------------------------------
# helpers

def http(server, method: str, path: str, *, token: str | None = None,
         basic: tuple[str, str] | None = None, data: bytes | None = None,
         headers: dict | None = None, accept: str = "application/json") -> tuple[int, bytes]:
    """A raw request (what curl would send); returns (status, body) even for errors."""
    hdrs = {"Accept": accept, **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if basic is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    url = path if path.startswith("http") else server.url + path
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback server)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def send_json(server, method: str, path: str, payload, **kw) -> tuple[int, bytes]:
    return http(server, method, path, data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"}, **kw)


def text(body: bytes) -> str:
    return body.decode(errors="replace")


def run(args: list[str], *, env: dict | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


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
        "UV_PYTHON_DOWNLOADS": "never",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
    })
    return env


def index_url(server, token: str, index: str = "kid", user: str = "") -> str:
    host = server.url.split("://", 1)[1]
    return f"http://{user}:{token}@{host}/{USER}/{index}/+simple/"


def wheel_name(name: str, version: str = VERSION) -> str:
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def projects_of(server, index: str) -> list[str]:
    """``result.projects`` of GET /alice/INDEX (read with the password)."""
    status, body = http(server, "GET", f"/{USER}/{index}", basic=AUTH)
    assert status == 200, body
    return sorted(json.loads(body)["result"]["projects"])


def simple_links(server, index: str, name: str, **auth) -> list[str]:
    """Absolute file URLs (no fragment) on /alice/INDEX/+simple/NAME/."""
    page = f"{server.url}/{USER}/{index}/+simple/{name}/"
    status, body = http(server, "GET", page, accept="text/html", **auth)
    assert status == 200, (status, body)
    hrefs = re.findall(r'href="([^"]+)"', text(body))
    return [urllib.parse.urljoin(page, href).split("#", 1)[0] for href in hrefs]


def file_url(server, index: str, name: str) -> str:
    """The one file link of NAME as alice/INDEX's simple page shows it (password read)."""
    links = simple_links(server, index, name, basic=AUTH)
    assert len(links) == 1, links
    return links[0]


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


def raw_upload(server, index: str, wheel: Path, name: str, version: str,
               **auth) -> tuple[int, bytes]:
    body, ctype = multipart({":action": "file_upload", "name": name, "version": version,
                             "filetype": "bdist_wheel", "pyversion": "py3",
                             "protocol_version": "1", "metadata_version": "2.1"},
                            "content", wheel)
    return http(server, "POST", f"/{USER}/{index}/", data=body,
                headers={"Content-Type": ctype}, **auth)


def twine_upload(server, tmp_path: Path, index: str, wheel: Path, user: str,
                 password: str) -> subprocess.CompletedProcess:
    return run([bin_path("twine"), "upload", "--non-interactive", "--disable-progress-bar",
                "--repository-url", f"{server.url}/{USER}/{index}/",
                "-u", user, "-p", password, str(wheel)], env=tool_env(tmp_path))


def refused_for(body: bytes, index: str) -> None:
    """A 403 body that names the index it was refused for."""
    assert f"token not valid for index '{USER}/{index}'" in text(body), text(body)


# --------------------------------------------------------------------------
# fixtures

PRIVATE_READ_PLUGIN = f"""\
from pluggy import HookimplMarker

hookimpl = HookimplMarker("devpiserver")


# tryfirst: the hook is firstresult, and devpi-admin (installed with the
# tests) answers it too, with its own default of anonymous reading
@hookimpl(tryfirst=True)
def devpiserver_stage_get_principals_for_pkg_read(ixconfig):
    return [{USER!r}]
"""


def private_read_plugin(directory: Path) -> Path:
    """A devpi-server plugin (module + dist-info with its entry point) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "devpi_tokens_test_private_read.py").write_text(PRIVATE_READ_PLUGIN)
    info = directory / "devpi_tokens_test_private_read-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: devpi-tokens-test-private-read\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[devpi_server]\nprivate_read = devpi_tokens_test_private_read\n")
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("inherited-read")
    plugin = private_read_plugin(base / "plugin")
    pythonpath = os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")]))
    proc = start_server(base / "server", env={"PYTHONPATH": pythonpath})
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inherited-work")


@pytest.fixture(scope="module")
def wheels(work) -> dict[str, Path]:
    return {name: write_wheel(work / "dist" / name, name, VERSION) for name in PACKAGES}


@pytest.fixture(scope="module")
def admin(server, tmp_path_factory) -> DevpiClient:
    """alice with her indexes; devpi logged in as alice with the password."""
    client = DevpiClient(tmp_path_factory.mktemp("admin-client"), server.url)
    client.run("use", server.url)
    client.run("user", "-c", USER, f"password={PASSWORD}")
    client.run("login", USER, "--password", PASSWORD)
    for index, bases in INDEXES.items():
        status, body = send_json(server, "PUT", f"/{USER}/{index}",
                                 {"type": "stage", "bases": bases, "volatile": True},
                                 basic=AUTH)
        assert status in (200, 201), body
    # alice/base inherits from alice/grand: kid -> base -> grand
    status, body = send_json(server, "PATCH", f"/{USER}/base", [f"bases={USER}/grand"],
                             basic=AUTH)
    assert status == 200, body
    status, body = http(server, "GET", f"/{USER}/base", basic=AUTH)
    assert json.loads(body)["result"]["bases"] == [f"{USER}/grand"], body
    return client


@pytest.fixture(scope="module")
def published(server, admin, wheels, tmp_path_factory) -> dict[str, Path]:
    """Every package uploaded with alice's password (twine for one, raw POST for the rest)."""
    tmp = tmp_path_factory.mktemp("publish")
    for name, index in PACKAGES.items():
        if name == "basepkg":
            proc = twine_upload(server, tmp, index, wheels[name], USER, PASSWORD)
            assert proc.returncode == 0, output(proc)
        else:
            status, body = raw_upload(server, index, wheels[name], name, VERSION, basic=AUTH)
            assert status == 200, body
    for name, index in PACKAGES.items():
        assert name in projects_of(server, index)
    # the premise of the bug: kid's page links into the bases' own +f paths
    assert file_url(server, "kid", "basepkg").startswith(f"{server.url}/{USER}/base/+f/")
    assert file_url(server, "kid", "grandpkg").startswith(f"{server.url}/{USER}/grand/+f/")
    # private: without credentials no file is served, so only a token can grant a read
    status, body = http(server, "GET", file_url(server, "kid", "basepkg"), accept="*/*")
    assert status == 403 and b"package read forbidden" in body, (status, body)
    return wheels


def mint(server, **restrictions) -> str:
    """POST /alice/+token-create with the password; return result.token."""
    status, body = send_json(server, "POST", f"/{USER}/+token-create",
                             restrictions,
                             basic=AUTH)
    assert status in (200, 201), body
    return json.loads(body)["result"]["token"]


@pytest.fixture(scope="module")
def kid_token(admin, work) -> str:
    """indexes=alice/kid, minted with ``devpi token-create -i alice/kid -o FILE``."""
    path = work / "kid.token"
    admin.run("token-create", "-e", "1h", "-i", f"{USER}/kid", "-d", "inherited read",
              "-o", str(path))
    return path.read_text().strip()


@pytest.fixture(scope="module")
def kid_read_token(server, admin) -> str:
    """indexes=alice/kid and allowed=pkg_read, minted over HTTP."""
    return mint(server, indexes=[f"{USER}/kid"], allowed=["pkg_read"],
                description="inherited read, pkg_read only")


@pytest.fixture(params=["indexes", "indexes+pkg_read"])
def token(request) -> str:
    """Each kid token in turn."""
    name = "kid_token" if request.param == "indexes" else "kid_read_token"
    return request.getfixturevalue(name)


@pytest.fixture(scope="module")
def unrelated_token(server, admin) -> str:
    return mint(server, indexes=[f"{USER}/unrelated"])


@pytest.fixture(scope="module")
def base_token(server, admin) -> str:
    return mint(server, indexes=[f"{USER}/base"])


def pip(*args: str, env: dict) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pip", *args, "--no-cache-dir", "--no-deps"], env=env)


# --------------------------------------------------------------------------
# positives: reading through the kid token reaches the bases' files

def test_pip_download_base_and_grand_through_kid_url(server, published, token, tmp_path):
    dest = tmp_path / "dl"
    proc = pip("download", "-d", str(dest), "--index-url", index_url(server, token),
               "basepkg", "grandpkg", "kidpkg", env=tool_env(tmp_path))
    assert proc.returncode == 0, output(proc)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        wheel_name(n) for n in ("basepkg", "grandpkg", "kidpkg"))
    for name in ("basepkg", "grandpkg"):
        assert (dest / wheel_name(name)).read_bytes() == published[name].read_bytes()
    assert token not in output(proc)


def test_pip_install_base_and_grand_through_kid_url(server, published, token, tmp_path):
    site = tmp_path / "site"
    proc = pip("install", "--target", str(site),
               "--index-url", index_url(server, token, user="__token__"),
               "basepkg", "grandpkg", env=tool_env(tmp_path))
    assert proc.returncode == 0, output(proc)
    for name in ("basepkg", "grandpkg"):
        assert (site / name / "__init__.py").is_file()
        assert (site / f"{name}-{VERSION}.dist-info" / "METADATA").is_file()
    env = dict(os.environ, PYTHONPATH=str(site))
    check = run([sys.executable, "-c", "import basepkg, grandpkg; "
                 "print(basepkg.hello()); print(grandpkg.hello())"], env=env)
    assert check.stdout.split("\n")[:2] == [f"hello from basepkg {VERSION}",
                                            f"hello from grandpkg {VERSION}"], output(check)


@pytest.mark.parametrize("how", ["url", "netrc"])
def test_uv_pip_install_base_and_grand_through_kid_url(server, published, token, tmp_path,
                                                       how):
    """uv has no ``pip download``: install into --target.

    ``url``: the token in the index URL (uv reuses it for the host's other paths
    after the anonymous 403); ``netrc``: plain index URL, the token in a netrc file.
    """
    site = tmp_path / "site"
    env = tool_env(tmp_path)
    if how == "url":
        url = index_url(server, token)
    else:
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1\nlogin __token__\npassword {token}\n")
        netrc.chmod(0o600)
        env["NETRC"] = str(netrc)
        url = f"{server.url}/{USER}/kid/+simple/"
    proc = run([bin_path("uv"), "pip", "install", "--no-config", "--no-deps",
                "--python", sys.executable, "--target", str(site),
                "--default-index", url, "basepkg", "grandpkg"], env=env)
    assert proc.returncode == 0, output(proc)
    for name in ("basepkg", "grandpkg"):
        assert (site / name / "__init__.py").is_file()
        assert f"hello from {name} {VERSION}" in (site / name / "__init__.py").read_text()


@pytest.mark.parametrize("name, index", [("basepkg", "base"), ("grandpkg", "grand")])
@pytest.mark.parametrize("how", ["bearer", "basic"])
def test_direct_get_of_linked_base_file(server, published, token, name, index, how):
    auth = {"token": token} if how == "bearer" else {"basic": ("__token__", token)}
    links = simple_links(server, "kid", name, **auth)
    assert len(links) == 1, links
    assert links[0].startswith(f"{server.url}/{USER}/{index}/+f/"), links
    assert links[0].endswith("/" + wheel_name(name))
    status, body = http(server, "GET", links[0], accept="*/*", **auth)
    assert status == 200, (status, text(body)[:300])
    assert body == published[name].read_bytes()


def test_token_reads_base_pages(server, published, token):
    """The bases' own simple pages work with the token too (they need no permission)."""
    for index, name in (("base", "basepkg"), ("grand", "grandpkg")):
        links = simple_links(server, index, name, token=token)
        assert [link.rsplit("/", 1)[1] for link in links] == [wheel_name(name)]


def test_base_token_reads_grand_but_not_kid(server, published, base_token):
    """Recursion goes down the resolution order (base -> grand), never up (-> kid)."""
    status, body = http(server, "GET", file_url(server, "base", "grandpkg"), accept="*/*",
                        token=base_token)
    assert status == 200, (status, text(body)[:300])
    assert body == published["grandpkg"].read_bytes()
    status, body = http(server, "GET", file_url(server, "kid", "kidpkg"), accept="*/*",
                        token=base_token)
    assert status == 403, body
    refused_for(body, "kid")


# --------------------------------------------------------------------------
# negatives: nothing outside the resolution order, nothing but reading

def test_unrelated_index_files_not_readable(server, published, token, tmp_path):
    url = file_url(server, "unrelated", "otherpkg")
    assert url.startswith(f"{server.url}/{USER}/unrelated/+f/"), url
    for auth in ({"token": token}, {"basic": ("__token__", token)}):
        status, body = http(server, "GET", url, accept="*/*", **auth)
        assert status == 403, body
        refused_for(body, "unrelated")
    # and pip cannot get it through either URL
    env = tool_env(tmp_path)
    for index in ("unrelated", "kid"):
        dest = tmp_path / f"dl-{index}"
        proc = pip("download", "-d", str(dest), "--index-url", index_url(server, token, index),
                   "otherpkg", env=env)
        assert proc.returncode != 0, output(proc)
        assert not dest.exists() or not any(dest.iterdir())


def test_unrelated_token_cannot_read_base_files(server, published, unrelated_token, tmp_path):
    for index, name in (("base", "basepkg"), ("grand", "grandpkg")):
        status, body = http(server, "GET", file_url(server, index, name), accept="*/*",
                            token=unrelated_token)
        assert status == 403, body
        refused_for(body, index)
    # the link as kid's page shows it is no different
    status, body = http(server, "GET", file_url(server, "kid", "basepkg"), accept="*/*",
                        token=unrelated_token)
    assert status == 403, body
    refused_for(body, "base")
    dest = tmp_path / "dl"
    proc = pip("download", "-d", str(dest), "--index-url",
               index_url(server, unrelated_token, "base"), "basepkg", env=tool_env(tmp_path))
    assert proc.returncode != 0, output(proc)
    assert "403" in output(proc), output(proc)
    assert not dest.exists() or not any(dest.iterdir())


def test_kid_token_still_uploads_to_kid(server, published, kid_token, work):
    """Control for the refusals below: the same kind of upload is fine on kid itself."""
    name = f"kidnew-{uuid.uuid4().hex[:6]}"
    wheel = write_wheel(work / "dist" / name, name, VERSION)
    status, body = raw_upload(server, "kid", wheel, name, VERSION, token=kid_token)
    assert status == 200, body
    assert name in projects_of(server, "kid")


@pytest.mark.parametrize("index", ["base", "grand"])
def test_raw_upload_to_a_base_refused(server, published, token, work, index):
    before = projects_of(server, index)
    name = f"sneak-{uuid.uuid4().hex[:6]}"
    wheel = write_wheel(work / "dist" / name, name, VERSION)
    status, body = raw_upload(server, index, wheel, name, VERSION, token=token)
    assert status == 403, body
    # a new version of a project that is there already: refused just the same
    existing = "basepkg" if index == "base" else "grandpkg"
    wheel = write_wheel(work / "dist" / f"{existing}-2", existing, "2.0")
    status, body = raw_upload(server, index, wheel, existing, "2.0", token=token)
    assert status == 403, body
    assert projects_of(server, index) == before
    assert [link.rsplit("/", 1)[1] for link in simple_links(server, index, existing,
                                                             basic=AUTH)] == [
        wheel_name(existing)]


def test_twine_upload_to_base_refused(server, published, kid_token, work, tmp_path):
    before = projects_of(server, "base")
    name = f"twinesneak-{uuid.uuid4().hex[:6]}"
    wheel = write_wheel(work / "dist" / name, name, VERSION)
    proc = twine_upload(server, tmp_path, "base", wheel, "__token__", kid_token)
    assert proc.returncode != 0, output(proc)
    assert "403" in output(proc), output(proc)
    assert projects_of(server, "base") == before


@pytest.mark.parametrize("index, name", [("base", "victimpkg"), ("grand", "grandvictim")])
def test_deletes_on_a_base_refused(server, published, token, index, name):
    url = file_url(server, index, name)
    wheel = published[name].read_bytes()
    # del_entry: the file, by the URL kid's page would give and by the base's own
    for target in {url, file_url(server, "kid", name)}:
        status, body = http(server, "DELETE", target, token=token)
        assert status == 403, body
    # del_verdata, del_project
    for path in (f"/{USER}/{index}/{name}/{VERSION}", f"/{USER}/{index}/{name}"):
        status, body = http(server, "DELETE", path, token=token)
        assert status == 403, (path, body)
    # all still there, readable with the password
    status, body = http(server, "GET", url, accept="*/*", basic=AUTH)
    assert status == 200, body
    assert body == wheel
    assert name in projects_of(server, index)


def test_modifying_a_base_refused(server, published, token):
    # index_modify: e.g. making alice/unrelated a base would widen the token's reach
    before = http(server, "GET", f"/{USER}/base", basic=AUTH)[1]
    status, body = send_json(server, "PATCH", f"/{USER}/base",
                             [f"bases+={USER}/unrelated"], token=token)
    assert status == 403, body
    status, body = send_json(server, "PATCH", f"/{USER}/grand", ["volatile=False"],
                             token=token)
    assert status == 403, body
    status, after = http(server, "GET", f"/{USER}/base", basic=AUTH)
    assert json.loads(after)["result"] == json.loads(before)["result"]
    status, body = http(server, "GET", file_url(server, "unrelated", "otherpkg"),
                        accept="*/*", token=token)
    assert status == 403, body


def test_deleting_a_base_index_refused(server, published, token):
    # index_delete (last: a wrong answer here would take the base away)
    for index in ("grand", "base"):
        status, body = http(server, "DELETE", f"/{USER}/{index}", token=token)
        assert status == 403, body
        assert "basepkg" in projects_of(server, "base")
        assert "grandpkg" in projects_of(server, "grand")
