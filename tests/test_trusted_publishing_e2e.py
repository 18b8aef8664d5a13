"""Trusted publishing end to end, the way CI jobs do it, over https.

One real devpi-server (plugin through its entry point) behind a TLS front on
loopback: Debian's nginx as deployments run it (tests/tls_front.py; a small
Python TLS proxy where nginx is not installed).  The server trusts:

- ``https://token.actions.githubusercontent.com`` with the keys of a local
  OIDC issuer read from a JWKS file (``--oidc-issuer URL=PATH``): the tests
  mint GitHub Actions ID tokens with that issuer's key;
- the local issuer itself at its https URL (``--oidc-issuer URL``): its keys
  are fetched over https (discovery + JWKS) with its test CA in the server's
  ``SSL_CERT_FILE``.

A fake ``ACTIONS_ID_TOKEN_REQUEST_URL`` endpoint plays GitHub Actions for the
clients.  Then:

1. ``uv publish --trusted-publishing always`` uploads through the front and
   burns the token afterwards;
2. ``devpi token-login --trusted-publishing`` + ``devpi upload``;
3. raw HTTPS exchanges refused with 422 and a reason: wrong repository,
   workflow, environment, owner id change, audience of another server,
   expired, replayed jti, unknown issuer, bad signature,
   ``pull_request_target``; a minted token outside its project or index is
   refused uploading (403) and nothing is stored.

Everything binds 127.0.0.1 and is stopped by PID / by its own shutdown.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devpi_process import DevpiClient
from devpi_process import bin_path
from devpi_process import make_wheel
from devpi_process import start_server
from devpi_tokens.tokens import Token
from oidc_issuer import GITHUB_ISSUER
from oidc_issuer import LocalIssuer
from oidc_issuer import TestCA
from oidc_issuer import github_claims as issuer_github_claims
from tls_front import FakeGitHubOIDC
from tls_front import get_json
from tls_front import https_request
from tls_front import nginx_available
from tls_front import front_kind
from tls_front import start_tls_front

pytestmark = pytest.mark.e2e

GITHUB = GITHUB_ISSUER
USER = "alice"
PASSWORD = "alice-password-tp-e2e"
OWNER = "octo-org"
OWNER_ID = "1001"


# --------------------------------------------------------------------------
# fixtures: CA, issuer, server, TLS front, alice with alice/dev and alice/other


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trusted-publishing-e2e")


@pytest.fixture(scope="module")
def ca(base) -> TestCA:
    return TestCA(base / "ca")


@pytest.fixture(scope="module")
def issuer(base, ca):
    """The local OIDC issuer; its https server and the TLS front share one CA."""
    local = LocalIssuer(base / "issuer", ca=ca).start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def server(base, issuer, ca):
    jwks_file = issuer.write_jwks(base / "github-jwks.json")
    proc = start_server(
        base / "server",
        extra_args=["--oidc-issuer", f"{GITHUB}={jwks_file}", "--oidc-issuer", issuer.url],
        # the local issuer's keys are fetched over https: no --offline-mode,
        # and its CA is what the server's urllib trusts
        offline=False,
        env={"SSL_CERT_FILE": str(ca.ca_file)})
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def front(base, server, ca):
    proxy = start_tls_front(base / "front", server.port, ca)
    try:
        # where Debian's nginx is installed (.ci/run installs it), it is the front
        assert proxy.kind == front_kind()
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.parametrize("kind", ["nginx", "python"])
def test_tls_front_serves_devpi_at_its_https_url_and_stops(base, server, ca, kind):
    """The front itself: devpi answers through it with https URLs (X-outside-url),
    only with the test CA trusted; stopped, no process of it is left."""
    if kind == "nginx" and not nginx_available():
        pytest.skip("Debian's nginx is not installed (.ci/run installs it)")
    proxy = start_tls_front(base / f"front-check-{kind}", server.port, ca,
                            use_nginx=kind == "nginx")
    try:
        assert proxy.kind == kind
        api = get_json(proxy.url + "/+api", ca.ca_file)
        assert api["result"]["login"] == f"{proxy.url}/+login", api
        with pytest.raises(urllib.error.URLError) as failed:
            urllib.request.urlopen(  # noqa: S310 (loopback)
                proxy.url + "/+api", timeout=10, context=ssl.create_default_context())
        assert isinstance(failed.value.reason, ssl.SSLCertVerificationError)
    finally:
        proxy.stop()
    assert not proxy.alive()
    if proxy.pid is not None:
        # nginx ran in a process group of its own: master and workers are gone
        with pytest.raises(ProcessLookupError):
            os.killpg(proxy.pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()


def request(front, method: str, path: str, body: Any = None, *,
            auth: tuple[str, str] | None = None, raw: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one HTTPS request through the front."""
    hdrs = {"Accept": "application/json", **(headers or {})}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if auth is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(
            ":".join(auth).encode()).decode()
    status, _, answer = https_request(front.url + path, front.ca_file, method, data, hdrs)
    try:
        return status, json.loads(answer)
    except ValueError:
        return status, answer.decode(errors="replace")


ALICE = (USER, PASSWORD)


@pytest.fixture(scope="module")
def alice(front) -> None:
    status, answer = request(front, "PUT", f"/{USER}",
                             {"password": PASSWORD, "email": "alice@example.com"})
    assert status == 201, answer
    for index in ("dev", "other"):
        status, answer = request(front, "PUT", f"/{USER}/{index}",
                                 {"type": "stage", "bases": [], "volatile": True}, auth=ALICE)
        assert status == 200, answer


@pytest.fixture(scope="module")
def audience(front) -> str:
    status, answer = request(front, "GET", "/_/oidc/audience")
    assert status == 200, answer
    assert answer["audience"].startswith("devpi-"), answer
    return answer["audience"]


def add_publisher(front, repository: str, workflow: str = "release.yml", *,
                  environment: str | None = None, indexes: tuple[str, ...] = ("alice/dev",),
                  projects: tuple[str, ...] = ()) -> str:
    body: dict[str, Any] = {"provider": "github", "repository": repository,
                            "workflow": workflow, "indexes": list(indexes),
                            "description": f"e2e {repository}"}
    if environment is not None:
        body["environment"] = environment
    if projects:
        body["projects"] = list(projects)
    status, answer = request(front, "POST", f"/{USER}/+publishers", body, auth=ALICE)
    assert status == 201, answer
    assert answer["type"] == "publisher-info", answer
    return answer["result"]["id"]


def new_repository(prefix: str) -> str:
    return f"{OWNER}/{prefix}-{uuid.uuid4().hex[:8]}"


def github_claims(audience: str, repository: str, workflow: str = "release.yml", *,
                  owner_id: str = OWNER_ID, event_name: str = "push",
                  **kw: Any) -> dict[str, Any]:
    """A GitHub Actions ID token's claims (oidc_issuer's) for this server's audience."""
    return issuer_github_claims(repository, workflow, audience=audience,
                                repository_owner_id=owner_id, event_name=event_name, **kw)


#: every JWT and minted token of this module: none may show in a log
SECRETS: list[str] = []


def mint_exchange(front, jwt_text: str, path: str = "/_/oidc/mint-token",
                  content_type: str | None = "application/json") -> tuple[int, Any]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    SECRETS.append(jwt_text)
    status, answer = request(front, "POST", path,
                             raw=json.dumps({"token": jwt_text}).encode(), headers=headers)
    if isinstance(answer, dict) and isinstance(answer.get("token"), str):
        SECRETS.append(answer["token"])
    return status, answer


def assert_refused(answer: tuple[int, Any], code: str, *fragments: str) -> str:
    status, body = answer
    assert status == 422, body
    assert body["message"] == "Token request failed", body
    assert body["errors"] and body["errors"][0]["code"] == code, body
    description = body["errors"][0]["description"]
    assert isinstance(description, str) and description, body
    for fragment in fragments:
        assert fragment.lower() in description.lower(), body
    return description


def tokens_of_alice(front) -> dict[str, dict[str, Any]]:
    status, answer = request(front, "GET", f"/{USER}/+tokens", auth=ALICE)
    assert status == 200, answer
    return answer["result"]["tokens"]


def project_files(front, index: str, name: str) -> list[str]:
    status, answer = request(front, "GET", f"/{USER}/{index}/{name}")
    if status == 404:
        return []
    assert status == 200, answer
    files = []
    for verdata in answer["result"].values():
        files += [link["href"].rsplit("/", 1)[1].split("#")[0]
                  for link in verdata.get("+links", []) if link.get("rel") == "releasefile"]
    return files


def multipart(fields: dict[str, str], path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
             f"{value}\r\n".encode() for key, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
                 f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def token_upload(front, token: str, wheel: Path, name: str, version: str = "1.0",
                 index: str = "dev") -> tuple[int, Any]:
    """What twine / uv send: multipart upload as ``__token__``."""
    body, ctype = multipart({":action": "file_upload", "name": name, "version": version,
                             "filetype": "bdist_wheel", "pyversion": "py3",
                             "protocol_version": "1", "metadata_version": "2.1"}, wheel)
    return request(front, "POST", f"/{USER}/{index}/", raw=body,
                   auth=("__token__", token), headers={"Content-Type": ctype})


def tool_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "TWINE_", "ACTIONS_", "GITHUB_", "GITLAB",
                                "CI_", "DEVPI_", "REQUESTS_CA", "SSL_CERT"))}
    env.update({"UV_CACHE_DIR": str(tmp_path / "uv-cache"), "UV_NO_CONFIG": "1",
                "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"})
    env.update(extra)
    return env


def project_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------
# 1. uv publish --trusted-publishing always


def test_uv_publish_trusted_publishing_through_tls_front(
        front, alice, audience, issuer, ca, tmp_path):
    repository = new_repository("uvproject")
    add_publisher(front, repository)
    name = project_name("uv-tp")
    wheel = make_wheel(tmp_path / "dist", name)
    fake = FakeGitHubOIDC(lambda aud: issuer.mint(github_claims(aud, repository)))
    try:
        env = tool_env(tmp_path, **fake.env(), SSL_CERT_FILE=str(ca.ca_file))
        proc = subprocess.run(
            [bin_path("uv"), "publish", "--trusted-publishing", "always",
             "--publish-url", f"{front.url}/{USER}/dev/", str(wheel)],
            env=env, capture_output=True, text=True, timeout=180,
            stdin=subprocess.DEVNULL)
    finally:
        fake.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr + front.log()[-3000:]
    # the file is there
    assert project_files(front, "dev", name) == [wheel.name]
    # uv asked GitHub for this server's audience, once
    assert fake.audiences == [audience]
    assert [r["authorization"].split()[0].lower() for r in fake.requests] == ["bearer"]
    # uv masks the minted token for the GitHub log: that is the token it got
    masked = [line.split("::add-mask::", 1)[1].strip()
              for line in proc.stdout.splitlines() if "::add-mask::" in line]
    assert len(masked) == 1, proc.stdout
    SECRETS.append(masked[0])
    minted = Token.load(masked[0])
    assert minted.user == USER
    # the exchange and the burn went through the front as uv sent them
    access = front.access_log()
    for line in ("GET /_/oidc/audience ", "POST /_/oidc/mint-token ",
                 f"POST /{USER}/dev/ ", "POST /_/oidc/burn-token "):
        assert line in access, access
    # burned: gone from the listing, and refused for another upload
    assert minted.token_id not in tokens_of_alice(front)
    again = make_wheel(tmp_path / "again", name, "2.0")
    status, answer = token_upload(front, masked[0], again, name, "2.0")
    assert status in (401, 403), answer
    assert project_files(front, "dev", name) == [wheel.name]


@pytest.mark.parametrize("mode", ["automatic", None])
def test_uv_publish_automatic_in_github_actions(
        front, alice, audience, issuer, ca, tmp_path, mode):
    """What most workflows run: ``uv publish`` with no credentials in a GitHub job."""
    repository = new_repository("uvauto")
    add_publisher(front, repository)
    name = project_name("uv-auto")
    wheel = make_wheel(tmp_path / "dist", name)
    fake = FakeGitHubOIDC(lambda aud: issuer.mint(github_claims(aud, repository)))
    flag = [] if mode is None else ["--trusted-publishing", mode]
    try:
        proc = subprocess.run(
            [bin_path("uv"), "publish", *flag, "--publish-url", f"{front.url}/{USER}/dev/",
             str(wheel)],
            env=tool_env(tmp_path, **fake.env(), SSL_CERT_FILE=str(ca.ca_file)),
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    finally:
        fake.stop()
    SECRETS.extend(line.split("::add-mask::", 1)[1].strip()
                   for line in proc.stdout.splitlines() if "::add-mask::" in line)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fake.audiences == [audience]
    assert project_files(front, "dev", name) == [wheel.name]


# --------------------------------------------------------------------------
# 2. devpi token-login --trusted-publishing + devpi upload


def test_devpi_token_login_trusted_publishing_and_upload(
        front, alice, audience, issuer, ca, tmp_path):
    repository = new_repository("devpiproject")
    add_publisher(front, repository, "publish.yaml", environment="pypi")
    ref = "refs/tags/v2.0"
    issued: list[dict[str, Any]] = []

    def mint(aud: str) -> str:
        issued.append(github_claims(aud, repository, "publish.yaml", ref=ref,
                                    environment="pypi"))
        return issuer.mint(issued[-1])

    fake = FakeGitHubOIDC(mint)
    try:
        client = DevpiClient(tmp_path / "client", env=tool_env(
            tmp_path, **fake.env(), REQUESTS_CA_BUNDLE=str(ca.ca_file),
            SSL_CERT_FILE=str(ca.ca_file)))
        client.run("use", f"{front.url}/{USER}/dev")
        login = client.run("token-login", "--trusted-publishing")
        name = project_name("devpi-tp")
        wheel = make_wheel(tmp_path / "dist", name)
        upload = client.run("upload", str(wheel))
    finally:
        fake.stop()
    assert fake.audiences == [audience]
    text = login.stdout + login.stderr + upload.stdout + upload.stderr
    assert project_files(front, "dev", name) == [wheel.name], upload.stdout + upload.stderr
    # the minted token is listed, narrow and short-lived, naming where it came from
    minted = [info for info in tokens_of_alice(front).values()
              if repository in (info.get("description") or "")]
    assert len(minted) == 1, tokens_of_alice(front)
    info = minted[0]
    assert len(issued) == 1
    assert ref in info["description"] and issued[0]["sha"] in info["description"], info
    assert info["expires"] - info["created"] == 900, info
    assert info["restrictions"] == [
        f"expires={info['expires']}", f"not_before={info['created']}", "indexes=alice/dev",
        "allowed=pkg_read,upload"], info
    listed = json.dumps(info)
    assert "alice/dev" in listed and "upload" in listed and "pkg_read" in listed, info
    # devpi-client logged in with that token: its id is shown, the token never
    (token_id,) = [tid for tid, i in tokens_of_alice(front).items() if i == info]
    assert f"token {token_id}" in login.stdout, login.stdout
    (token,) = stored_tokens(tmp_path / "client")
    assert Token.load(token).token_id == token_id
    SECRETS.append(token)
    assert token not in text


def stored_tokens(clientdir: Path) -> list[str]:
    """The devpi-... strings devpi-client keeps as its logins (auth.json)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.startswith("devpi-"):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(json.loads((clientdir / "auth.json").read_text()))
    return found


# --------------------------------------------------------------------------
# 3. refusals through the TLS front, with a reason


@pytest.fixture(scope="module")
def refusal_publisher(front, alice) -> str:
    """A publisher pinned to an environment: refusals are measured against it."""
    repository = new_repository("guarded")
    add_publisher(front, repository, "release.yml", environment="release")
    return repository


def good_claims(audience: str, repository: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("environment", "release")
    return github_claims(audience, repository, "release.yml", **kw)


def test_a_good_token_is_exchanged_on_both_paths_whatever_the_content_type(
        front, audience, issuer, refusal_publisher):
    for path, ctype in (("/_/oidc/mint-token", "application/json"),
                        ("/_/oidc/github/mint-token", None),
                        ("/_/oidc/mint-token", "text/plain")):
        status, answer = mint_exchange(
            front, issuer.mint(good_claims(audience, refusal_publisher)), path, ctype)
        assert status == 200, answer
        assert answer["success"] is True, answer
        assert Token.load(answer["token"]).user == USER
        assert abs(answer["expires"] - (time.time() + 900)) < 120, answer
        # burn answers 202 and revokes it
        status, burned = request(front, "POST", "/_/oidc/burn-token",
                                 {"token": answer["token"]})
        assert status == 202, burned
        assert Token.load(answer["token"]).token_id not in tokens_of_alice(front)


def test_burn_token_answers_202_and_revokes_only_minted_tokens(front, alice):
    status, created = request(front, "POST", f"/{USER}/+token-create",
                              {"description": "a token of alice's own"}, auth=ALICE)
    assert status == 201, created
    own = created["result"]["token"]
    SECRETS.append(own)
    for body in ({"token": own}, {"token": "devpi-garbage"}, {"token": 42}, {}):
        status, answer = request(front, "POST", "/_/oidc/burn-token", body)
        assert status == 202, (body, answer)
    status, answer = request(front, "POST", "/_/oidc/burn-token", raw=b"not json")
    assert status == 202, answer
    assert Token.load(own).token_id in tokens_of_alice(front)


@pytest.mark.parametrize("raw", [b"", b"not json", b'{"token": 1}', b'{"token": "abc"}',
                                 b'{"token": "a.b.c"}', b"[]"])
def test_malformed_exchanges_are_refused_never_a_500(front, raw):
    status, answer = request(front, "POST", "/_/oidc/mint-token", raw=raw,
                             headers={"Content-Type": "application/json"})
    assert status == 422, answer
    assert answer["message"] == "Token request failed", answer
    assert answer["errors"][0]["code"] in ("invalid-payload", "invalid-token"), answer


def test_wrong_repository_refused(front, audience, issuer, refusal_publisher):
    other = refusal_publisher + "-fork"
    assert_refused(mint_exchange(front, issuer.mint(good_claims(audience, other))),
                   "invalid-publisher", other)


def test_wrong_workflow_refused(front, audience, issuer, refusal_publisher):
    claims = github_claims(audience, refusal_publisher, "deploy.yml", environment="release")
    assert_refused(mint_exchange(front, issuer.mint(claims)), "invalid-publisher", "workflow")


def test_wrong_environment_refused(front, audience, issuer, refusal_publisher):
    claims = good_claims(audience, refusal_publisher, environment="staging")
    assert_refused(mint_exchange(front, issuer.mint(claims)), "invalid-publisher",
                   "environment")
    claims = good_claims(audience, refusal_publisher)
    del claims["environment"]
    assert_refused(mint_exchange(front, issuer.mint(claims)), "invalid-publisher",
                   "environment")


def test_pull_request_target_refused(front, audience, issuer, refusal_publisher):
    claims = good_claims(audience, refusal_publisher, event_name="pull_request_target")
    assert_refused(mint_exchange(front, issuer.mint(claims)), "invalid-publisher",
                   "pull_request_target")


def test_owner_id_change_after_first_success_refused(front, alice, audience, issuer):
    repository = new_repository("renamed")
    add_publisher(front, repository)
    status, answer = mint_exchange(
        front, issuer.mint(github_claims(audience, repository, owner_id="5550001")))
    assert status == 200, answer
    assert_refused(
        mint_exchange(front, issuer.mint(github_claims(audience, repository,
                                                       owner_id="5550002"))),
        "invalid-publisher", "repository_owner_id")
    # the pinned one still works
    status, answer = mint_exchange(
        front, issuer.mint(github_claims(audience, repository, owner_id="5550001")))
    assert status == 200, answer


def test_audience_of_another_server_refused(front, audience, issuer, refusal_publisher):
    claims = good_claims("devpi-00000000000000000000", refusal_publisher)
    assert_refused(mint_exchange(front, issuer.mint(claims)), "invalid-token", "audience")


def test_expired_token_refused(front, audience, issuer, refusal_publisher):
    claims = good_claims(audience, refusal_publisher, now=int(time.time()) - 3600)
    assert_refused(mint_exchange(front, issuer.mint(claims)), "invalid-token", "expired")


def test_replayed_jti_refused(front, audience, issuer, refusal_publisher):
    first = issuer.mint(good_claims(audience, refusal_publisher))
    status, answer = mint_exchange(front, first)
    assert status == 200, answer
    assert_refused(mint_exchange(front, first), "invalid-reuse-token")
    # a new JWT carrying the same jti is the same replay
    jti = jwt.decode(first, options={"verify_signature": False})["jti"]
    again = issuer.mint(good_claims(audience, refusal_publisher, jti=jti))
    assert_refused(mint_exchange(front, again), "invalid-reuse-token")


def test_unknown_issuer_refused(front, audience, issuer, refusal_publisher):
    untrusted = "https://token.actions.example.invalid"
    claims = good_claims(audience, refusal_publisher, issuer=untrusted)
    assert_refused(mint_exchange(front, issuer.mint(claims)), "invalid-token", untrusted)


def test_bad_signature_refused(front, audience, issuer, refusal_publisher):
    """Signed by another key under the name (kid) of the issuer's key."""
    kid = issuer.jwks()["keys"][0]["kid"]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(good_claims(audience, refusal_publisher), stranger,
                        algorithm="RS256", headers={"kid": kid})
    assert_refused(mint_exchange(front, forged), "invalid-token", "signature")


def test_keys_fetched_over_https_from_a_trusted_issuer(front, audience, issuer,
                                                      refusal_publisher):
    """The issuer trusted by URL: keys fetched over https, but no publisher for it."""
    claims = good_claims(audience, refusal_publisher, issuer=issuer.url)
    description = assert_refused(mint_exchange(front, issuer.mint(claims)),
                                 "invalid-publisher")
    assert "fetch" not in description, description
    # the keys did come over https from the issuer (discovery, then JWKS)
    assert issuer.requests["/.well-known/openid-configuration"] >= 1
    assert issuer.requests["/.well-known/jwks"] >= 1


def test_minted_token_stays_inside_its_project_and_index(
        front, alice, audience, issuer, tmp_path):
    repository = new_repository("narrow")
    allowed = project_name("narrow-allowed")
    add_publisher(front, repository, projects=(allowed,))
    status, answer = mint_exchange(front, issuer.mint(github_claims(audience, repository)))
    assert status == 200, answer
    token = answer["token"]
    # another project on its index
    outside = project_name("narrow-outside")
    status, body = token_upload(front, token, make_wheel(tmp_path / "o", outside), outside)
    assert status == 403, body
    assert project_files(front, "dev", outside) == []
    # its project on another index of the same user
    wheel = make_wheel(tmp_path / "a", allowed)
    status, body = token_upload(front, token, wheel, allowed, index="other")
    assert status == 403, body
    assert project_files(front, "other", allowed) == []
    # and inside, it works
    status, body = token_upload(front, token, wheel, allowed)
    assert status == 200, body
    assert project_files(front, "dev", allowed) == [wheel.name]


def test_publisher_endpoints_refuse_a_minted_token(front, alice, audience, issuer):
    repository = new_repository("selfish")
    add_publisher(front, repository)
    status, answer = mint_exchange(front, issuer.mint(github_claims(audience, repository)))
    assert status == 200, answer
    status, body = request(
        front, "POST", f"/{USER}/+publishers",
        {"provider": "github", "repository": new_repository("more"), "workflow": "x.yml",
         "indexes": ["alice/dev"]}, auth=("__token__", answer["token"]))
    assert status == 403, body


def test_logs_show_no_jwt_or_token(server, front, audience, issuer, refusal_publisher):
    """Last in the module: every JWT and token it used, looked for in every log."""
    # one exchange and one refusal of its own, when run alone
    good = issuer.mint(good_claims(audience, refusal_publisher))
    assert mint_exchange(front, good)[0] == 200
    assert mint_exchange(front, good)[0] == 422
    logs = server.log() + front.log()
    for secret in SECRETS:
        # the signature part alone is enough to count as a leak
        assert secret.rsplit(".", 1)[-1][-20:] not in logs
