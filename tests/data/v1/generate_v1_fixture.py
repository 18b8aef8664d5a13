"""Generate tests/data/v1/v1_fixture.json with the published devpi-tokens 1.x.

Run this with the Python of a THROWAWAY virtualenv that has the old plugin,
never with the project's own environment:

    python -m venv /tmp/v1env
    /tmp/v1env/bin/pip install "devpi-tokens[client,server]==1.1.0" \
        "devpi-server==6.20.3" "devpi-client==7.3.0"
    /tmp/v1env/bin/python tests/data/v1/generate_v1_fixture.py tests/data/v1/v1_fixture.json

It starts real devpi-server processes (127.0.0.1, free port, fresh serverdir,
a generated secret file), mints tokens with the 1.x client commands, derives
with the 1.x token-derive, asks the 1.x server what it thinks of each token,
then stops the server by PID and reads the stored user record back twice:
through devpi-export and straight from the sqlite changelog.

Two servers are run: one with the argon2 parameters that devpi-server's own
test plugin uses (so in-process tests can rebuild the very same server-level
key cheaply), and one with devpi-server's default argon2 parameters (a real
production setup; one slow test checks the chain against it).
"""
from __future__ import annotations

from pathlib import Path
import base64
import importlib.metadata
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

BIN = Path(sys.executable).parent
ROOT_PASSWORD = "root-fixture-pw"
ALICE_PASSWORD = "alice-fixture-pw"
# devpi-server's test plugin (test_devpi_server/plugin.py) lowers argon2 to these.
LOWER_ARGON2 = {"memory_cost": 8, "parallelism": 1, "time_cost": 1}
FAR_NOT_BEFORE = 4000000000  # 2096-10-02, "not yet valid" for decades
PAST_NOT_BEFORE = 1600000000  # 2020-09-13, already met


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, env=None) -> str:
    res = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"failed: {args[:3]}...\n{res.stdout}\n{res.stderr}")
    return res.stdout


def basic(user: str, password: str) -> str:
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def http(method: str, url: str, auth: str | None = None, body=None) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class Server:
    def __init__(self, base: Path, argon2: dict | None) -> None:
        self.base = base
        self.argon2 = argon2
        self.serverdir = base / "server"
        self.secretfile = base / "secret"
        self.clientdir = base / "client"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def init(self) -> None:
        run(str(BIN / "devpi-gen-secret"), "--secretfile", str(self.secretfile))
        run(str(BIN / "devpi-init"), "--serverdir", str(self.serverdir),
            "--root-passwd", ROOT_PASSWORD, "--no-root-pypi")

    def argon2_args(self) -> list[str]:
        if self.argon2 is None:
            return []
        return [
            "--argon2-memory-cost", str(self.argon2["memory_cost"]),
            "--argon2-parallelism", str(self.argon2["parallelism"]),
            "--argon2-time-cost", str(self.argon2["time_cost"])]

    def start(self) -> None:
        log = open(self.base / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([
            str(BIN / "devpi-server"), "--serverdir", str(self.serverdir),
            "--secretfile", str(self.secretfile), "--host", "127.0.0.1",
            "--port", str(self.port), *self.argon2_args()],
            stdout=log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                if http("GET", self.url + "/+api")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("server did not come up")

    def stop(self) -> None:
        # stop exactly the process we started, by PID
        assert self.proc is not None
        os.kill(self.proc.pid, 15)
        self.proc.wait(timeout=30)

    def devpi(self, *args: str) -> str:
        # -y (assume yes) belongs after the sub-command name
        return run(str(BIN / "devpi"), args[0], "--clientdir", str(self.clientdir), "-y",
                   *args[1:])


def token_of(output: str) -> str:
    return output.strip().splitlines()[-1].strip()


def form_post(url: str, auth: str, fields: dict) -> int:
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def register(url: str, auth: str, name: str, version: str) -> int:
    """The legacy 'submit' action: needs the upload permission, names a project."""
    return form_post(url, auth, {":action": "submit", "name": name, "version": version})


def verdicts(srv: Server, token: str, serial: int) -> dict:
    """What the real 1.x server answers to a few requests made with TOKEN."""
    auth = basic("alice", token)
    out = {}
    status, api = http("GET", srv.url + "/+api", auth)
    out["GET /+api"] = [status, api["result"].get("authstatus") if status == 200 else api]
    for path in ("/alice/dev/pkg-a/", "/alice/prod/pkg-b/", "/alice/dev/+simple/pkg-a/"):
        out["GET " + path] = http("GET", srv.url + path, auth)[0]
    for index, name in (("dev", "pkg-a"), ("dev", "pkg-b"), ("prod", "pkg-a")):
        status = register(f"{srv.url}/alice/{index}/", auth, name, f"1.0.post{serial}")
        out[f"register {name} in alice/{index}"] = status
    for index in ("dev", "prod"):
        status = http("PATCH", f"{srv.url}/alice/{index}", auth, ["description=x"])[0]
        out[f"PATCH /alice/{index}"] = status
    return out


def auth_forms(srv: Server, token: str) -> dict:
    """How the 1.x server takes the same token in different auth forms."""
    forms = {
        "basic alice:TOKEN": basic("alice", token),
        "basic :TOKEN": basic("", token),
        "basic TOKEN:": basic(token, ""),
        "basic __token__:TOKEN": basic("__token__", token),
        "basic bob:TOKEN": basic("bob", token),
        "bearer TOKEN": "Bearer " + token,
    }
    out = {}
    for form, header in forms.items():
        status, api = http("GET", srv.url + "/+api", header)
        out[form] = [status, api["result"].get("authstatus") if status == 200 else api]
    return out


def read_sqlite_user(serverdir: Path, username: str) -> dict:
    """The last stored value of the user's keyfs key, straight from sqlite."""
    from devpi_server.fileutil import loads
    db = sqlite3.connect(serverdir / ".sqlite")
    value = None
    for (data,) in db.execute("SELECT data FROM changelog ORDER BY serial"):
        changes, _rel_renames = loads(data)
        for key, (keyname, _back, val) in changes.items():
            if keyname == "USER" and key == f"{username}/.config":
                value = val
    db.close()
    return {"relpath": f"{username}/.config", "keyname": "USER", "value": value}


def export_user(srv: Server, username: str) -> dict:
    target = srv.base / "export"
    run(str(BIN / "devpi-export"), "--serverdir", str(srv.serverdir), str(target))
    data = json.loads((target / "dataindex.json").read_text())
    return data["users"][username]


def make_tokens(srv: Server, full: bool) -> tuple[dict, list[dict]]:
    srv.devpi("use", srv.url)
    srv.devpi("login", "root", "--password", ROOT_PASSWORD)
    srv.devpi("user", "-c", "alice", f"password={ALICE_PASSWORD}")
    # both indexes are readable by anyone (devpi-server 6 has no read ACL),
    # so the read verdicts show that 1.x does not deny public reads
    srv.devpi("index", "-c", "alice/dev")
    srv.devpi("index", "-c", "alice/prod")
    alice = basic("alice", ALICE_PASSWORD)
    assert register(srv.url + "/alice/dev/", alice, "pkg-a", "1.0") == 200
    assert register(srv.url + "/alice/prod/", alice, "pkg-b", "1.0") == 200
    tokens: dict = {}
    notes: list[dict] = []

    def create(name: str, *args: str, note: str) -> None:
        tokens[name] = token_of(srv.devpi("token-create", "-u", "alice", *args))
        notes.append({"name": name, "how": "devpi token-create -u alice " + " ".join(args),
                      "note": note})

    def derive(name: str, parent: str, *args: str, note: str) -> None:
        tokens[name] = token_of(srv.devpi("token-derive", "--token", tokens[parent], *args))
        notes.append({"name": name, "how": f"devpi token-derive --token <{parent}> "
                      + " ".join(args), "note": note})

    def post(name: str, body: dict, note: str) -> None:
        status, answer = http("POST", srv.url + "/alice/+token-create",
                              basic("root", ROOT_PASSWORD), body)
        assert status == 200, answer
        tokens[name] = answer["result"]["token"]
        notes.append({"name": name, "how": "POST /alice/+token-create " + json.dumps(body),
                      "note": note})

    create("plain", "-e", "never", note="no restriction but expires=never")
    derive("plain_derived", "plain", "-p", "pkg-a", "-i", "alice/dev",
           note="1.x token-derive: no devpi- prefix")
    if not full:
        return tokens, notes
    # 1.1.0's client crashes on a plain epoch for -e (UnboundLocalError), so
    # long lifetimes are given as durations
    create("restricted", "-e", "75 years", "-p", "pkg-a,Pkg_C", "-i", "alice/dev",
           "-a", "pkg_read,upload", note="every list restriction at once")
    create("projects", "-e", "never", "-p", "pkg-a", note="projects only")
    create("indexes", "-e", "never", "-i", "alice/dev", note="indexes only")
    create("allowed", "-e", "never", "-a", "pkg_read", note="allowed only")
    create("allowed_unknown", "-e", "never", "-a", "pkg_read,frobnicate",
           note="allowed with a permission devpi-server does not know")
    post("not_before_future", {"expires": "never", "not_before": FAR_NOT_BEFORE},
         note="not valid before 2096; 1.x client has no --not-before, so via HTTP")
    post("not_before_past", {"expires": "never", "not_before": PAST_NOT_BEFORE},
         note="not_before already met")
    derive("derived_expired", "plain", "--expires=-1d",
           note="1.x token-derive accepts a negative duration: expired a day before minting")
    derive("derived_allowed", "restricted", "-a", "pkg_read",
           note="second allowed= caveat on top of the first")
    derive("derived_twice", "plain_derived", "-p", "pkg-b",
           note="derived from a derived token: projects pkg-a then pkg-b (no overlap)")
    short = int(time.time()) + 3
    post("short_lived", {"expires": short}, note="server-minted, expired 3 s after creation")
    create("to_delete", "-e", "never", note="deleted with 1.x token-delete afterwards")
    return tokens, notes


def one_server(base: Path, argon2: dict | None, full: bool) -> dict:
    srv = Server(base, argon2)
    srv.init()
    srv.start()
    try:
        tokens, notes = make_tokens(srv, full)
        deleted_id = None
        if "to_delete" in tokens:
            import pymacaroons
            raw = tokens["to_delete"].removeprefix("devpi-")
            ident = pymacaroons.Macaroon.deserialize(raw).identifier
            deleted_id = ident.decode().rsplit("-", 1)[1]
            srv.devpi("token-delete", "-u", "alice", deleted_id)
        status, listing = http("GET", srv.url + "/alice/+tokens", basic("root", ROOT_PASSWORD))
        assert status == 200, listing
        # short_lived expires 3 s after it was minted: make sure it has
        time.sleep(4)
        seen = {name: verdicts(srv, tok, n) for n, (name, tok) in enumerate(tokens.items())}
        forms = auth_forms(srv, tokens["plain"])
    finally:
        srv.stop()
    return {
        "argon2_server_parameters": argon2 or "devpi-server defaults",
        "secret": srv.secretfile.read_bytes().decode("ascii"),
        "user_record_export": export_user(srv, "alice"),
        "user_record_sqlite": read_sqlite_user(srv.serverdir, "alice"),
        "token_list_answer": listing,
        "deleted_token_id": deleted_id,
        "tokens": tokens,
        "how": notes,
        "v1_server_verdicts": seen,
        "v1_server_auth_forms": forms,
    }


def main() -> None:
    target = Path(sys.argv[1])
    versions = {name: importlib.metadata.version(name) for name in (
        "devpi-tokens", "devpi-server", "devpi-client", "pymacaroons", "argon2-cffi")}
    assert versions["devpi-tokens"].startswith("1."), versions
    with tempfile.TemporaryDirectory(prefix="v1fix-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "low").mkdir(mode=0o700)
        (tmp_path / "default").mkdir(mode=0o700)
        fixture = {
            "generated": int(time.time()),
            "python": sys.version.split()[0],
            "versions": versions,
            "servers": {
                "test_argon2": one_server(tmp_path / "low", LOWER_ARGON2, full=True),
                "default_argon2": one_server(tmp_path / "default", None, full=False),
            },
        }
    target.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
