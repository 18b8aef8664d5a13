"""publisher-add, publisher-list, publisher-delete and token-login --trusted-publishing.

The first part needs no server: argument checks (each problem one line on
stderr, before any server contact) and the CI-identity step of the exchange.
The second part runs the real `devpi` command against a real devpi-server
that trusts a local OIDC issuer (tests/oidc_issuer.py) through a JWKS file,
with a fake GitHub Actions ID-token endpoint on loopback.
"""
from __future__ import annotations

import argparse
import json

import pytest

from devpi_process import DevpiClient
from devpi_process import assert_one_line_error
from devpi_tokens import client_publishers
from devpi_tokens import client_trusted
from devpi_tokens.client_io import ClientError


@pytest.fixture
def client(tmp_path):
    return DevpiClient(tmp_path / "client")


# --------------------------------------------------------------------------
# argument checks, run as the real command (not connected to any server)

GITHUB = ["--github", "octo-org/sample", "--workflow", "release.yml", "-i", "dev"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--workflow", "release.yml", "-i", "dev"], "--github OWNER/REPO or --gitlab"),
    (["--github", "a/b", "--gitlab", "g/p", "--workflow", "x.yml", "-i", "dev"], "not both"),
    (["--github", "octo-org", "--workflow", "x.yml", "-i", "dev"], "OWNER/REPO"),
    (["--github", "a/b/c", "--workflow", "x.yml", "-i", "dev"], "OWNER/REPO"),
    (["--github", "https://github.com/a/b", "--workflow", "x.yml", "-i", "dev"], "not a URL"),
    (["--github", "a_b/c", "--workflow", "x.yml", "-i", "dev"], "not a GitHub user"),
    (["--github", "a/b c", "--workflow", "x.yml", "-i", "dev"], "not a GitHub repository"),
    (["--github", "a/..", "--workflow", "x.yml", "-i", "dev"], "not a GitHub repository"),
    (["--github", "a/b", "-i", "dev"], "--workflow FILE is required"),
    (["--github", "a/b", "--workflow", ".github/workflows/release.yml", "-i", "dev"],
     "e.g. 'release.yml'"),
    (["--github", "a/b", "--workflow", "release", "-i", "dev"], ".yml or .yaml"),
    (["--github", "a/b", "--workflow", "release.yml@main", "-i", "dev"], "no '@'"),
    (["--github", "a/b", "--workflow", "x.yml"], "-i INDEXES is required"),
    (["--github", "a/b", "--workflow", "x.yml", "-i", "a/b/c"], "INDEX or USER/INDEX"),
    (["--github", "a/b", "--workflow", "x.yml", "-i", "dev,,prod"], "empty name"),
    (["--github", "a/b", "--workflow", "x.yml", "-i", "dev", "-p", "not ok"],
     "not a valid project name"),
    (["--github", "a/b", "--workflow", "x.yml", "-i", "dev", "--environment", " "],
     "--environment: empty value"),
    (["--github", "a/b", "--workflow", "x.yml", "-i", "dev", "--environment", "a\x1bb"],
     "control characters"),
    (["--github", "a/b", "--workflow", "x.yml", "-i", "dev", "--issuer", "https://x.org"],
     "--issuer is for GitLab only"),
    (["--gitlab", "proj", "--workflow", ".gitlab-ci.yml", "-i", "dev"], "GROUP/PROJECT"),
    (["--gitlab", "https://gitlab.com/g/p", "--workflow", ".gitlab-ci.yml", "-i", "dev"],
     "not a URL"),
    (["--gitlab", "g/-p", "--workflow", ".gitlab-ci.yml", "-i", "dev"], "not a GitLab path"),
    (["--gitlab", "g/p", "-i", "dev"], "e.g. --workflow .gitlab-ci.yml"),
    (["--gitlab", "g/p", "--workflow", "/.gitlab-ci.yml", "-i", "dev"], "within the project"),
    (["--gitlab", "g/p", "--workflow", "ci/../x.yml", "-i", "dev"], "within the project"),
    (["--gitlab", "g/p", "--workflow", "ci/release.txt", "-i", "dev"], ".yml or .yaml"),
    (["--gitlab", "g/p", "--workflow", ".gitlab-ci.yml", "-i", "dev", "--issuer",
      "http://gitlab.example.com"], "https URL"),
    (["--gitlab", "g/p", "--workflow", ".gitlab-ci.yml", "-i", "dev", "--issuer",
      "https://gitlab.example.com?x=1"], "https URL"),
    (["--gitlab", "g/p", "--workflow", ".gitlab-ci.yml", "-i", "dev", "--issuer",
      "https://host:99999"], "not a URL"),
    # all checked, then: no server
    (GITHUB, "not connected to a server"),
])
def test_publisher_add_argument_errors(client, args, fragment):
    proc = client.fails("publisher-add", *args)
    assert_one_line_error(proc, fragment)
    assert proc.stdout == ""


@pytest.mark.parametrize(("args", "fragment"), [
    (["publisher-list"], "not connected to a server"),
    (["publisher-list", "--json"], "not connected to a server"),
    (["publisher-delete", "abc"], "not connected to a server"),
    (["publisher-delete", "no such id!"], "is not a publisher id"),
    (["token-login", "--trusted-publishing", "--token", "x"], "give no -f or --token"),
    (["token-login", "--trusted-publishing", "-f", "-"], "give no -f or --token"),
    (["token-login", "--trusted-publishing"], "not connected to a server"),
])
def test_other_commands_offline(client, args, fragment):
    assert_one_line_error(client.fails(*args), fragment)


def test_help_texts(client):
    text = " ".join(client.run("token-login", "--help").stdout.split())
    assert "--trusted-publishing" in text
    assert "REQUESTS_CA_BUNDLE" in text and "SSL_CERT_FILE" in text
    text = " ".join(client.run("publisher-add", "--help").stdout.split())
    for option in ("--github OWNER/REPO", "--gitlab GROUP/PROJECT", "--workflow FILE",
                   "--environment ENV", "--issuer URL", "whose publishers"):
        assert option in text
    assert "--json" in client.run("publisher-list", "--help").stdout
    assert "ID" in client.run("publisher-delete", "--help").stdout


# --------------------------------------------------------------------------
# the body sent to the server (in-process)

def namespace(**kw):
    values = dict(github=None, gitlab=None, workflow=None, environment=None, indexes=None,
                  projects=None, description=None, issuer=None, user=None)
    values.update(kw)
    return argparse.Namespace(**values)


def test_github_body():
    body = client_publishers.publisher_body(namespace(
        github="Octo-Org/sample.py.git", workflow="release.yml", environment=" pypi ",
        indexes=["dev,alice/prod", "dev"], projects=["sample", "other"], description="d"))
    assert body == {
        "provider": "github", "repository": "Octo-Org/sample.py", "workflow": "release.yml",
        "environment": "pypi", "indexes": ["dev", "alice/prod"],
        "projects": ["sample", "other"], "description": "d"}
    assert client_publishers.own_indexes(body["indexes"], "alice") == ["alice/dev", "alice/prod"]


def test_gitlab_body():
    body = client_publishers.publisher_body(namespace(
        gitlab="group/sub/project", workflow="ci/release.yaml", indexes=["dev"],
        issuer="https://gitlab.example.com/"))
    assert body == {
        "provider": "gitlab", "project_path": "group/sub/project",
        "ci_config_path": "ci/release.yaml", "issuer": "https://gitlab.example.com",
        "indexes": ["dev"]}
    body = client_publishers.publisher_body(namespace(
        gitlab="g/p", workflow=".gitlab-ci.yml", indexes=["dev"]))
    assert "issuer" not in body and "projects" not in body and "environment" not in body


def test_indexes_of_another_user_are_refused():
    with pytest.raises(ClientError, match="alice's own indexes"):
        client_publishers.own_indexes(["dev", "bob/dev"], "alice")


def test_loopback_http_issuer_is_accepted_for_tests():
    assert client_publishers.issuer_url("http://127.0.0.1:8443") == "http://127.0.0.1:8443"


def test_describe_publishers():
    record = {"provider": "gitlab", "project_path": "g/p", "ci_config_path": ".gitlab-ci.yml",
              "environment": None, "issuer": "https://gitlab.example.com",
              "indexes": ["alice/dev"], "projects": None, "created": 1_700_000_000}
    lines = client_publishers.detail_lines(record, 1_700_000_060)
    assert lines[0] == ("    trusts   gitlab g/p, CI file .gitlab-ci.yml, any environment, "
                        "at https://gitlab.example.com")
    assert lines[1] == "    indexes  alice/dev"
    assert lines[2] == "    projects any"
    assert "1 minute ago" in lines[3]
    entries = client_publishers.list_entries({"b": {"created": 2}, "a": {"created": 1}})
    assert [e["id"] for e in entries] == ["a", "b"]
    assert entries[0]["description"] == ""


# --------------------------------------------------------------------------
# the CI identity step (in-process; the `id` package reads the environment)

CI_VARIABLES = ("GITHUB_ACTIONS", "ACTIONS_ID_TOKEN_REQUEST_URL",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "GITLAB_CI", "BUILDKITE", "CIRCLECI",
                "GOOGLE_SERVICE_ACCOUNT_NAME")


@pytest.fixture
def no_ci(monkeypatch):
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # the Google detector reads the machine's DMI product name
    monkeypatch.setattr("id._internal.oidc.ambient._GCP_PRODUCT_NAME_FILE", "/nonexistent")
    return monkeypatch


def test_no_ci_environment(no_ci):
    with pytest.raises(ClientError) as info:
        client_trusted.identity_token("devpi-abc-1")
    message = str(info.value)
    assert "no CI identity token found" in message
    assert "id-token: write" in message
    assert "DEVPI_ABC_1_ID_TOKEN" in message and "aud: devpi-abc-1" in message


def test_github_without_permission(no_ci):
    no_ci.setenv("GITHUB_ACTIONS", "true")
    with pytest.raises(ClientError, match="ACTIONS_ID_TOKEN_REQUEST_TOKEN environment variable"):
        client_trusted.identity_token("devpi-abc")


def test_gitlab_without_id_token(no_ci):
    no_ci.setenv("GITLAB_CI", "true")
    with pytest.raises(ClientError, match="DEVPI_ABC_ID_TOKEN not found"):
        client_trusted.identity_token("devpi-abc")


def test_gitlab_id_token_with_wrong_audience(no_ci):
    no_ci.setenv("GITLAB_CI", "true")
    no_ci.setenv("DEVPI_ABC_ID_TOKEN", f"e30.{base64url({'aud': 'other'})}.sig")
    with pytest.raises(ClientError, match="audience claim mismatch"):
        client_trusted.identity_token("devpi-abc")


def test_github_endpoint_unreachable(no_ci):
    from devpi_process import free_port
    no_ci.setenv("GITHUB_ACTIONS", "true")
    no_ci.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token")
    no_ci.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"http://127.0.0.1:{free_port()}/token?x=1")
    with pytest.raises(ClientError, match="cannot get the CI job's identity token") as info:
        client_trusted.identity_token("devpi-abc")
    # id says "timed out" for any failure; the real reason is added
    assert "Connection refused" in str(info.value)
    assert "SSL_CERT_FILE" not in str(info.value)


@pytest.fixture
def https_github(tmp_path):
    """A GitHub ID-token endpoint over https with a test CA's certificate."""
    import http.server
    import threading
    from oidc_issuer import TestCA

    ca = TestCA(tmp_path / "ca")
    jwt = "e30." + base64url({"aud": "devpi-abc"}) + ".sig"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = json.dumps({"value": jwt}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ca.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/token?x=1", ca.ca_file, jwt
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def base64url(data: dict) -> str:
    import base64
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_github_endpoint_over_https_trusts_ssl_cert_file(no_ci, https_github):
    url, ca_file, jwt = https_github
    no_ci.setenv("GITHUB_ACTIONS", "true")
    no_ci.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token")
    no_ci.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", url)
    no_ci.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(ClientError) as info:
        client_trusted.identity_token("devpi-abc")
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert "a private CA for the CI platform goes in SSL_CERT_FILE" in str(info.value)
    # REQUESTS_CA_BUNDLE is requests' (devpi-client's), not id's
    no_ci.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    with pytest.raises(ClientError, match="CERTIFICATE_VERIFY_FAILED"):
        client_trusted.identity_token("devpi-abc")
    no_ci.setenv("SSL_CERT_FILE", str(ca_file))
    assert client_trusted.identity_token("devpi-abc") == jwt


def test_gitlab_variable_name_as_id_reads_it():
    assert client_trusted.gitlab_variable("devpi-0a1b") == "DEVPI_0A1B_ID_TOKEN"
    assert client_trusted.gitlab_variable("9x.y") == "_X_Y_ID_TOKEN"


def test_refusal_reasons():
    body = {"message": "Token request failed", "errors": [
        {"code": "invalid-publisher", "description": "no publisher for\nrepository a/b"},
        {"code": "invalid-token"}, "junk"]}
    assert client_trusted._refusal_reasons(body) == (
        "invalid-publisher: no publisher for repository a/b; invalid-token")
    assert client_trusted._refusal_reasons({"message": "nope"}) == "nope"
    assert client_trusted._refusal_reasons({}) == "no reason given"


# --------------------------------------------------------------------------
# end to end: the real `devpi` against a real devpi-server with the plugin

PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}


@pytest.fixture(scope="module")
def issuer():
    from oidc_issuer import LocalIssuer
    # only its keys are used (a JWKS file): its https server is not started
    issuer = LocalIssuer()
    yield issuer
    issuer.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, issuer):
    from devpi_process import start_server
    from oidc_issuer import GITHUB_ISSUER
    base = tmp_path_factory.mktemp("publishers-e2e")
    jwks = issuer.write_jwks(base / "github-jwks.json")
    server = start_server(base / "server", extra_args=[
        "--oidc-issuer", f"{GITHUB_ISSUER}={jwks}", "--oidc-issuer", "https://gitlab.com"])
    try:
        admin = DevpiClient(base / "admin")
        admin.run("use", server.url)
        admin.run("login", "root", "--password", "")
        for user, password in PASSWORDS.items():
            admin.run("user", "-c", user, f"password={password}")
            setup = DevpiClient(base / f"{user}-setup")
            setup.run("use", server.url)
            setup.run("login", user, "--password", password)
            setup.run("index", "-c", "dev")
        yield server
    finally:
        server.stop()


def logged_in(server, directory, user: str | None, index: str | None = None) -> DevpiClient:
    client = DevpiClient(directory)
    client.run("use", f"{server.url}/{index}" if index else server.url)
    if user is not None:
        client.run("login", user, "--password", PASSWORDS.get(user, ""))
    return client


@pytest.fixture(scope="module")
def alice(server, tmp_path_factory):
    return logged_in(server, tmp_path_factory.mktemp("alice"), "alice", "alice/dev")


@pytest.fixture(scope="module")
def bob(server, tmp_path_factory):
    return logged_in(server, tmp_path_factory.mktemp("bob"), "bob")


@pytest.fixture(scope="module")
def root(server, tmp_path_factory):
    return logged_in(server, tmp_path_factory.mktemp("root"), "root")


def listing(client, *args) -> dict:
    proc = client.run("publisher-list", "--json", *args)
    assert proc.stderr == ""
    return json.loads(proc.stdout)


def by_id(data: dict) -> dict:
    return {entry["id"]: entry for entry in data["publishers"]}


@pytest.mark.e2e
def test_add_list_delete(alice, root):
    proc = alice.run(
        "publisher-add", "--github", "Octo-Org/sample", "--workflow", "release.yml",
        "--environment", "pypi", "-i", "dev", "-p", "sample,sample-extra",
        "-d", "release job")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("added trusted publisher ") and lines[0].endswith(" for user alice")
    github_id = lines[0].split()[3]
    assert lines[1] == ("    trusts   github Octo-Org/sample, workflow release.yml, "
                        "environment pypi")
    assert lines[2] == "    indexes  alice/dev"
    assert lines[3] == "    projects sample, sample-extra"
    proc = alice.run("publisher-add", "--gitlab", "group/sub/proj",
                     "--workflow", "ci/publish.yml", "-i", "alice/dev")
    gitlab_id = proc.stdout.split()[3]

    data = listing(alice)
    assert data["user"] == "alice"
    assert [e["id"] for e in data["publishers"]] == [github_id, gitlab_id]  # oldest first
    github, gitlab = by_id(data)[github_id], by_id(data)[gitlab_id]
    assert github["provider"] == "github" and github["repository"] == "Octo-Org/sample"
    assert github["workflow"] == "release.yml" and github["environment"] == "pypi"
    assert github["indexes"] == ["alice/dev"]
    assert github["projects"] == ["sample", "sample-extra"]
    assert github["description"] == "release job"
    assert isinstance(github["created"], int)
    assert gitlab["provider"] == "gitlab" and gitlab["project_path"] == "group/sub/proj"
    assert gitlab["ci_config_path"] == "ci/publish.yml"
    assert gitlab["issuer"] == "https://gitlab.com" and gitlab["environment"] is None
    assert gitlab["description"] == "" and not gitlab["projects"]
    # root lists and deletes other users' publishers
    assert listing(root, "-u", "alice") == data

    text = alice.run("publisher-list").stdout
    assert f"{github_id}  release job\n    trusts   github Octo-Org/sample" in text
    assert (f"{gitlab_id}\n    trusts   gitlab group/sub/proj, CI file ci/publish.yml, "
            "any environment\n    indexes  alice/dev\n    projects any\n") in text

    proc = alice.run("publisher-delete", github_id)
    assert f"trusted publisher {github_id} of user alice deleted" in proc.stdout
    root.run("publisher-delete", "-u", "alice", gitlab_id)
    assert listing(alice) == {"user": "alice", "publishers": []}
    assert "no trusted publishers for user alice" in alice.run("publisher-list").stdout


@pytest.mark.e2e
def test_duplicate_is_one_line(alice, bob, root):
    args = ["publisher-add", "--github", "octo/dup", "--workflow", "release.yml"]
    first = alice.run(*args, "-i", "dev").stdout.split()[3]
    try:
        # GitHub names are case-insensitive: the same identity
        line = assert_one_line_error(
            alice.fails("publisher-add", "--github", "OCTO/Dup", "--workflow", "release.yml",
                        "-i", "dev"), "publisher-add", "409", "already registered")
        assert "alice" not in line
        line = assert_one_line_error(bob.fails(*args, "-i", "dev"), "409")
        assert "alice" not in line  # the holder is named to root only
        line = assert_one_line_error(root.fails(*args, "-u", "bob", "-i", "dev"), "409")
        assert f"by user 'alice' (publisher {first})" in line
        # another environment is another identity
        alice.run(*args, "--environment", "pypi", "-i", "dev")
    finally:
        for entry in listing(alice)["publishers"]:
            alice.run("publisher-delete", entry["id"])


@pytest.mark.e2e
@pytest.mark.parametrize(("who", "args", "fragments"), [
    ("alice", ["-i", "nosuch"], ["400", "nosuch"]),
    ("alice", ["-i", "alice/dev", "-u", "bob"], ["-i 'alice/dev'", "bob's own indexes"]),
    ("alice", ["-i", "dev", "-u", "bob"], ["403", "may not add"]),
    ("bob", ["-i", "alice/dev"], ["bob's own indexes"]),
    ("nobody", ["-i", "dev"], ["you need to be logged in"]),
])
def test_add_refused(server, alice, bob, tmp_path, who, args, fragments):
    client = {"alice": alice, "bob": bob}.get(who) or logged_in(server, tmp_path / "c", None)
    proc = client.fails("publisher-add", "--github", "octo/refused", "--workflow", "r.yml",
                        *args)
    assert_one_line_error(proc, *fragments)


@pytest.mark.e2e
def test_gitlab_issuer_not_trusted(alice):
    proc = alice.fails("publisher-add", "--gitlab", "g/p", "--workflow", ".gitlab-ci.yml",
                       "-i", "dev", "--issuer", "https://gitlab.example.com")
    assert_one_line_error(proc, "400", "https://gitlab.example.com is not trusted")


@pytest.mark.e2e
def test_manage_with_a_token_is_refused(server, alice, tmp_path):
    token_file = tmp_path / "t"
    alice.run("token-create", "-e", "1h", "-o", str(token_file))
    client = logged_in(server, tmp_path / "c", None)
    client.run("token-login", "-f", str(token_file))
    for args in (["publisher-list"], ["publisher-delete", "abc"],
                 ["publisher-add", "--github", "a/b", "--workflow", "r.yml", "-i", "dev"]):
        assert_one_line_error(client.fails(*args), "403", "log in with the password")


@pytest.mark.e2e
def test_delete_unknown(alice):
    assert_one_line_error(alice.fails("publisher-delete", "nosuchid"),
                          "publisher-delete", "404", "no trusted publisher 'nosuchid'")


# --------------------------------------------------------------------------
# token-login --trusted-publishing, then devpi upload

@pytest.fixture
def fake_github(issuer):
    """GitHub Actions' ID-token endpoint; ``claims`` (a dict) overrides claims."""
    from oidc_issuer import github_claims
    from tls_front import FakeGitHubOIDC

    overrides: dict = {}

    def mint(audience: str) -> str:
        claims = github_claims(audience=audience, **{"repository": "octo/ci", **overrides})
        return issuer.mint(claims)

    with FakeGitHubOIDC(mint) as fake:
        fake.claims = overrides
        yield fake


@pytest.fixture
def ci_publisher(alice):
    proc = alice.run("publisher-add", "--github", "octo/ci", "--workflow", "release.yml",
                     "-i", "dev", "-p", "ci-pkg")
    publisher_id = proc.stdout.split()[3]
    yield publisher_id
    alice.run("publisher-delete", publisher_id)


def ci_client(server, directory, env) -> DevpiClient:
    client = DevpiClient(directory, env=env)
    client.run("use", f"{server.url}/alice/dev")
    return client


@pytest.mark.e2e
def test_trusted_publishing_login_and_upload(server, alice, ci_publisher, fake_github,
                                             tmp_path):
    from devpi_process import make_wheel
    ci = ci_client(server, tmp_path / "ci", fake_github.env())
    proc = ci.run("token-login", "--trusted-publishing")
    assert proc.stderr == ""
    assert "logged in 'alice' with trusted publishing token " in proc.stdout
    assert "at 'alice/dev', valid, expires in 15 minutes" in proc.stdout
    audience = json.loads(ci.run("getjson", "/_/oidc/audience").stdout)["audience"]
    assert fake_github.audiences == [audience]
    assert "(logged in as alice)" in ci.run("use").stdout

    wheel = make_wheel(tmp_path / "dist", "ci-pkg", "1.0")
    proc = ci.run("upload", str(wheel))
    assert "file_upload of ci_pkg-1.0-py3-none-any.whl" in proc.stdout + proc.stderr
    assert "ci_pkg-1.0-py3-none-any.whl" in alice.run("getjson", "/alice/dev/ci-pkg").stdout
    # the minted token is alice's, limited to the publisher's project
    tokens = json.loads(alice.run("token-list", "--json").stdout)["tokens"]
    minted = [t for t in tokens if t["description"].startswith("trusted publishing: github")]
    assert len(minted) == 1 and "octo/ci (release.yml)" in minted[0]["description"]
    other = make_wheel(tmp_path / "dist", "other-pkg", "1.0")
    proc = ci.fails("upload", str(other))
    assert "other-pkg" in proc.stdout + proc.stderr
    assert "403" in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_trusted_publishing_refusals(server, ci_publisher, fake_github, tmp_path):
    ci = ci_client(server, tmp_path / "ci", fake_github.env())
    fake_github.claims["repository"] = "octo/other"
    assert_one_line_error(ci.fails("token-login", "--trusted-publishing"),
                          "the server refused the identity token: invalid-publisher",
                          "octo/other")
    fake_github.claims.update(repository="octo/ci", jti="always-the-same")
    ci.run("token-login", "--trusted-publishing")
    assert_one_line_error(ci.fails("token-login", "--trusted-publishing"),
                          "invalid-reuse-token")
    # id itself checks the audience before anything is sent to the server
    fake_github.claims.update(jti=None, aud="devpi-another-server")
    assert_one_line_error(ci.fails("token-login", "--trusted-publishing"),
                          "cannot get the CI job's identity token", "audience")
    env = {**fake_github.env(), "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"}
    ci = ci_client(server, tmp_path / "ci2", env)
    assert_one_line_error(ci.fails("token-login", "--trusted-publishing"),
                          "cannot get the CI job's identity token", "401")


@pytest.mark.e2e
def test_trusted_publishing_outside_ci(server, tmp_path):
    ci = ci_client(server, tmp_path / "ci", {})
    for name in CI_VARIABLES:
        ci.env.pop(name, None)
    assert_one_line_error(ci.fails("token-login", "--trusted-publishing"),
                          "no CI identity token found", "_ID_TOKEN")
    assert "(logged in" not in ci.run("use").stdout


@pytest.mark.e2e
def test_trusted_publishing_disabled(tmp_path):
    from devpi_process import start_server
    server = start_server(tmp_path / "server", extra_args=["--no-trusted-publishing"])
    try:
        ci = logged_in(server, tmp_path / "ci", None)
        assert_one_line_error(ci.fails("token-login", "--trusted-publishing"),
                              "trusted publishing is disabled on this server", "403")
        root = logged_in(server, tmp_path / "root", "root")
        assert_one_line_error(root.fails("publisher-list"), "publisher-list", "403",
                              "disabled")
    finally:
        server.stop()
