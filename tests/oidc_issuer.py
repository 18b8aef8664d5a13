"""A local OIDC issuer for the tests: keys, JWTs, and discovery + JWKS over https.

    with LocalIssuer() as issuer:              # https://127.0.0.1:<port>
        monkeypatch.setenv("SSL_CERT_FILE", str(issuer.ca_file))
        jwt = issuer.mint(github_claims(issuer=issuer.url, audience="devpi-x"))
        issuer.requests["/.well-known/jwks"]   # how often the JWKS was fetched

The issuer has an RSA key (RS256) and an EC P-256 key (ES256), each with its
own kid; :meth:`LocalIssuer.rotate` replaces them (new kids).  The ``iss`` of a
minted token is whatever the claims say: tokens of the real issuers
(``https://token.actions.githubusercontent.com``) are verified with
``--oidc-issuer URL=PATH`` and :meth:`LocalIssuer.write_jwks`.

:class:`TestCA` is the CA of the https server; ``issue()`` makes more server
certificates from it (a TLS front for devpi-server, say), so one
``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE`` (``ca.ca_file``) trusts them all.
"""
from __future__ import annotations

from collections import Counter
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
import datetime
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
import time
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID
import jwt
from jwt.algorithms import ECAlgorithm
from jwt.algorithms import RSAAlgorithm

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
GITLAB_ISSUER = "https://gitlab.com"
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks"


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


class TestCA:
    """A throw-away certificate authority (EC P-256) writing PEM files into ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devpi-tokens test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256()))
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._count = 0

    def issue(
        self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), name: str = "server",
    ) -> tuple[Path, Path]:
        """A server certificate for ``hosts`` (IPs and DNS names): (cert file, key file).

        The cert file holds the certificate then the CA (a full chain for nginx).
        """
        self._count += 1
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))
        stem = f"{name}-{self._count}"
        cert_file = self.directory / f"{stem}.pem"
        key_file = self.directory / f"{stem}.key"
        cert_file.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + self.cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        key_file.chmod(0o600)
        return cert_file, key_file

    def server_context(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
                       ) -> ssl.SSLContext:
        """An SSL server context with a fresh certificate for ``hosts``."""
        cert_file, key_file = self.issue(hosts)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


class _SigningKey:
    def __init__(self, alg: str) -> None:
        self.alg = alg
        self.kid = f"{alg.lower()}-{secrets.token_hex(6)}"
        if alg == "RS256":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk: dict[str, Any] = {**jwk, "kid": self.kid, "alg": alg, "use": "sig"}


class LocalIssuer:
    """An OIDC issuer on https://127.0.0.1:<port> (discovery + JWKS); a context manager.

    Attributes tests may change while it runs:
    ``status`` (answer this HTTP status instead of 200 on every path),
    ``discovery_overrides`` (merged into the discovery document),
    ``jwks_override`` (served instead of :meth:`jwks`).
    """

    def __init__(self, directory: Path | None = None, ca: TestCA | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="oidc-issuer-")
            directory = Path(self._tmp.name)
        self.directory = Path(directory)
        self.ca = ca if ca is not None else TestCA(self.directory / "ca")
        self.ca_file: Path = self.ca.ca_file
        self.keys: dict[str, _SigningKey] = {}
        self.retired: list[_SigningKey] = []
        self.rotate(keep_old=False)
        self.hmac_secret = secrets.token_bytes(32)
        self.requests: Counter[str] = Counter()
        self.status = 200
        self.discovery_overrides: dict[str, Any] = {}
        self.jwks_override: Any = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- keys and tokens -------------------------------------------------------

    @property
    def kid(self) -> str:
        """The kid of the current RS256 key."""
        return self.keys["RS256"].kid

    @property
    def ec_kid(self) -> str:
        """The kid of the current ES256 key."""
        return self.keys["ES256"].kid

    def rotate(self, keep_old: bool = False) -> None:
        """New RS256 and ES256 keys with new kids; ``keep_old`` keeps the old ones in the JWKS."""
        if keep_old:
            self.retired.extend(self.keys.values())
        else:
            self.retired = []
        self.keys = {alg: _SigningKey(alg) for alg in ("RS256", "ES256")}

    def jwks(self) -> dict[str, Any]:
        """The public keys, as the JWKS document serves them."""
        return {"keys": [key.jwk for key in (*self.keys.values(), *self.retired)]}

    def write_jwks(self, path: Path | str) -> Path:
        """Write :meth:`jwks` to ``path`` (for ``--oidc-issuer URL=PATH``); answer the path."""
        path = Path(path)
        path.write_text(json.dumps(self.jwks()))
        return path

    def mint(
        self, claims: dict[str, Any], *, kid: str | None = None, alg: str = "RS256",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A JWT of ``claims`` signed with the current key for ``alg``.

        ``kid`` sets the header's kid (default: the key's own; another value
        makes a token with an unknown kid).  ``alg`` "none" makes an unsigned
        token, "HS256" one signed with :attr:`hmac_secret`.  ``headers`` are
        added to the JWT header (a value None removes that field: kid keeps the
        signature valid; alg/typ do not).
        """
        extra = dict(headers or {})
        if alg == "none":
            key: Any = None
        elif alg.startswith("HS"):
            key = self.hmac_secret
        else:
            signing = self.keys[alg]
            key = signing.private
            extra.setdefault("kid", kid if kid is not None else signing.kid)
        if kid is not None:
            extra["kid"] = kid
        # PyJWT itself writes alg and typ: removing them breaks the signature
        drop = [name for name, value in extra.items() if value is None and name in ("alg", "typ")]
        header = {name: value for name, value in extra.items() if value is not None}
        token = jwt.encode(claims, key, algorithm=alg, headers=header)
        if drop:
            token = _without_header_fields(token, drop)
        return token

    # -- the server ----------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the issuer is not started")
        return f"https://127.0.0.1:{self.port}"

    def discovery(self) -> dict[str, Any]:
        document = {
            "issuer": self.url,
            "jwks_uri": self.url + JWKS_PATH,
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref",
                                 "repository", "repository_owner", "job_workflow_ref"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid"],
        }
        document.update(self.discovery_overrides)
        return document

    def start(self) -> LocalIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                with issuer._lock:
                    issuer.requests[path] += 1
                if issuer.status != 200:
                    self._answer(issuer.status, {"message": "broken on purpose"})
                elif path == DISCOVERY_PATH:
                    self._answer(200, issuer.discovery())
                elif path == JWKS_PATH:
                    jwks = issuer.jwks_override
                    self._answer(200, issuer.jwks() if jwks is None else jwks)
                else:
                    self._answer(404, {"message": "not found"})

            def _answer(self, status: int, document: Any) -> None:
                body = (document if isinstance(document, bytes)
                        else json.dumps(document).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = self.ca.server_context()
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="oidc-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _without_header_fields(token: str, names: list[str]) -> str:
    """``token`` with header fields removed; the signature no longer matches (tests only)."""
    import base64
    head, payload, signature = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    for name in names:
        header.pop(name, None)
    new_head = base64.urlsafe_b64encode(
        json.dumps(header, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return ".".join((new_head, payload, signature))


def _apply(claims: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for name, value in extra.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def github_claims(
    repository: str = "alice/proj",
    workflow: str = "release.yml",
    ref: str = "refs/tags/v1.0",
    environment: str | None = None,
    audience: str = "devpi-test",
    issuer: str = GITHUB_ISSUER,
    *,
    now: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The claims of a GitHub Actions ID token (names and shapes as GitHub sends them).

    ``extra`` adds or replaces claims; a value None removes that claim
    (``jti=None``: a token without jti).  ``now`` sets iat (default: the clock).
    """
    owner = repository.split("/", 1)[0]
    iat = int(time.time()) if now is None else now
    sha = secrets.token_hex(20)
    ref_type = "tag" if ref.startswith("refs/tags/") else "branch"
    workflow_ref = f"{repository}/.github/workflows/{workflow}@{ref}"
    if environment is not None:
        sub = f"repo:{repository}:environment:{environment}"
    else:
        sub = f"repo:{repository}:ref:{ref}"
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": sub,
        "aud": audience,
        "ref": ref,
        "sha": sha,
        "repository": repository,
        "repository_owner": owner,
        "repository_owner_id": "1234567",
        "repository_id": "76543210",
        "repository_visibility": "public",
        "run_id": "5123456789",
        "run_number": "7",
        "run_attempt": "1",
        "actor": owner,
        "actor_id": "1234567",
        "workflow": "Release",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": ref_type,
        "ref_protected": "false",
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "runner_environment": "github-hosted",
        "iss": issuer,
        "nbf": iat,
        "exp": iat + 300,
        "iat": iat,
    }
    if environment is not None:
        claims["environment"] = environment
    return _apply(claims, extra)


def gitlab_claims(
    project_path: str = "alice/proj",
    ci_config_path: str = ".gitlab-ci.yml",
    ref: str = "v1.0",
    ref_type: str = "tag",
    environment: str | None = None,
    audience: str = "devpi-test",
    issuer: str = GITLAB_ISSUER,
    *,
    now: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The claims of a GitLab CI ID token (``id_tokens:``), as GitLab sends them.

    ``ref`` is the short name (``v1.0``, ``main``) as in GitLab's ``ref``
    claim; ``ci_config_ref_uri`` uses the full ``refs/tags/...`` or
    ``refs/heads/...`` form.  ``extra``: as for :func:`github_claims`.
    """
    from urllib.parse import urlsplit
    host = urlsplit(issuer).netloc
    namespace = project_path.rsplit("/", 1)[0]
    iat = int(time.time()) if now is None else now
    sha = secrets.token_hex(20)
    ref_path = f"refs/tags/{ref}" if ref_type == "tag" else f"refs/heads/{ref}"
    claims: dict[str, Any] = {
        "namespace_id": "72",
        "namespace_path": namespace,
        "project_id": "20",
        "project_path": project_path,
        "user_id": "1",
        "user_login": "alice",
        "user_email": "alice@example.org",
        "user_access_level": "maintainer",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": ref,
        "ref_type": ref_type,
        "ref_path": ref_path,
        "ref_protected": "true",
        "runner_id": 1,
        "runner_environment": "gitlab-hosted",
        "sha": sha,
        "project_visibility": "public",
        "ci_config_ref_uri": f"{host}/{project_path}//{ci_config_path}@{ref_path}",
        "ci_config_sha": sha,
        "jti": str(uuid.uuid4()),
        "iss": issuer,
        "iat": iat,
        "nbf": iat - 5,
        "exp": iat + 300,
        "sub": f"project_path:{project_path}:ref_type:{ref_type}:ref:{ref}",
        "aud": audience,
    }
    if environment is not None:
        claims.update({
            "environment": environment,
            "environment_protected": "false",
            "deployment_tier": "production",
            "environment_action": "start",
        })
    return _apply(claims, extra)
