"""Trusted publishing, part one: options, issuer keys and JWT verification.

Real HTTPS: the issuer is :class:`oidc_issuer.LocalIssuer` on loopback with a
test CA trusted through ``SSL_CERT_FILE``; PyJWT verifies for real.  Only the
clock of the key ring is fake (for the once-a-minute refetch rule).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any
import json
import threading
import time

import pytest

from devpi_tokens.oidc_config import AUDIENCE_RE
from devpi_tokens.oidc_config import DEFAULT_ISSUERS
from devpi_tokens.oidc_config import ConfigError
from devpi_tokens.oidc_config import IssuerSource
from devpi_tokens.oidc_config import OIDCSettings
from devpi_tokens.oidc_config import add_parser_options
from devpi_tokens.oidc_config import derive_audience
from devpi_tokens.oidc_config import gitlab_variable_name
from devpi_tokens.oidc_config import parse_issuer
from devpi_tokens.oidc_config import parse_issuers
from devpi_tokens.oidc_config import validate_audience
from devpi_tokens.oidc_errors import OIDCError
from devpi_tokens.oidc_keys import FetchError
from devpi_tokens.oidc_keys import KeyRing
from devpi_tokens.oidc_keys import https_get
from devpi_tokens.oidc_verify import verify_jwt
from oidc_issuer import GITHUB_ISSUER
from oidc_issuer import GITLAB_ISSUER
from oidc_issuer import LocalIssuer
from oidc_issuer import github_claims
from oidc_issuer import gitlab_claims

AUD = "devpi-test-server"
DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/.well-known/jwks"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer(tmp_path, monkeypatch):
    with LocalIssuer(tmp_path / "issuer") as issuer:
        monkeypatch.setenv("SSL_CERT_FILE", str(issuer.ca_file))
        yield issuer


@pytest.fixture
def clock() -> Clock:
    return Clock()


def settings_for(*sources: IssuerSource, offline: bool = False) -> OIDCSettings:
    return OIDCSettings(enabled=True, audience=AUD, issuers=sources, offline=offline)


@pytest.fixture
def settings(issuer) -> OIDCSettings:
    return settings_for(IssuerSource(issuer.url))


@pytest.fixture
def ring(settings, clock) -> KeyRing:
    return KeyRing(settings, clock=clock)


def claims(issuer: LocalIssuer, **extra: Any) -> dict[str, Any]:
    return github_claims(issuer=issuer.url, audience=AUD, **extra)


def refused(raw: str, settings: OIDCSettings, ring: KeyRing, **kw: Any) -> str:
    with pytest.raises(OIDCError) as info:
        verify_jwt(raw, settings, ring, **kw)
    assert info.value.code == "invalid-token"
    assert not raw or raw not in info.value.description
    return info.value.description


# -- good tokens -------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_good_token(issuer, settings, ring, alg):
    sent = claims(issuer, environment="pypi")
    verified = verify_jwt(issuer.mint(sent, alg=alg), settings, ring)
    assert verified == sent
    assert verified["job_workflow_ref"] == "alice/proj/.github/workflows/release.yml@refs/tags/v1.0"
    assert issuer.requests == {DISCOVERY: 1, JWKS: 1}
    # cached: a second token needs no fetch
    verify_jwt(issuer.mint(claims(issuer), alg=alg), settings, ring)
    assert issuer.requests == {DISCOVERY: 1, JWKS: 1}


def test_gitlab_token_from_a_jwks_file(issuer, tmp_path):
    source = IssuerSource(GITLAB_ISSUER, issuer.write_jwks(tmp_path / "gitlab.json"))
    settings = settings_for(source)
    sent = gitlab_claims(project_path="group/sub/proj", audience=AUD)
    verified = verify_jwt(issuer.mint(sent), settings, KeyRing(settings))
    assert verified["ci_config_ref_uri"] == (
        "gitlab.com/group/sub/proj//.gitlab-ci.yml@refs/tags/v1.0")
    assert verified["namespace_path"] == "group/sub"


def test_token_without_kid_and_a_single_key(issuer, tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"keys": [issuer.keys["RS256"].jwk]}))
    settings = settings_for(IssuerSource(GITHUB_ISSUER, path))
    raw = issuer.mint(github_claims(audience=AUD), headers={"kid": None})
    assert "kid" not in __import__("jwt").get_unverified_header(raw)
    assert verify_jwt(raw, settings, KeyRing(settings))["repository"] == "alice/proj"


# -- refused tokens ----------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_alg_refused(issuer, settings, ring, alg):
    why = refused(issuer.mint(claims(issuer), alg=alg), settings, ring)
    assert f"algorithm '{alg}' is not accepted" in why
    assert sum(issuer.requests.values()) == 0


def test_alg_confusion_refused(issuer, settings, ring):
    # an ES256 token naming the RSA key
    why = refused(issuer.mint(claims(issuer), alg="ES256", kid=issuer.kid), settings, ring)
    assert "is for RS256, not ES256" in why


def test_unknown_issuer(issuer, settings, ring):
    raw = issuer.mint(github_claims(issuer="https://evil.example", audience=AUD))
    assert refused(raw, settings, ring) == (
        "issuer 'https://evil.example' is not trusted by this server")
    assert sum(issuer.requests.values()) == 0


def test_wrong_audience(issuer, settings, ring):
    why = refused(issuer.mint(claims(issuer, aud="devpi-other")), settings, ring)
    assert why == f"the token is for audience 'devpi-other', not this server's '{AUD}'"


def test_audience_list_refused(issuer, settings, ring):
    why = refused(issuer.mint(claims(issuer, aud=[AUD, "other"])), settings, ring)
    assert "is for audience" in why


def test_expired(issuer, settings, ring):
    now = int(time.time())
    why = refused(issuer.mint(claims(issuer, now=now - 1000)), settings, ring)
    assert why.startswith("the token expired at ")
    # within the 60 s leeway: accepted
    verify_jwt(issuer.mint(claims(issuer, now=now - 300 - 30)), settings, ring)


def test_issued_in_the_future(issuer, settings, ring):
    now = int(time.time())
    why = refused(issuer.mint(claims(issuer, now=now + 120)), settings, ring)
    assert why.startswith("the token was issued in the future")
    verify_jwt(issuer.mint(claims(issuer, now=now + 30)), settings, ring)


def test_not_before_in_the_future(issuer, settings, ring):
    now = int(time.time())
    why = refused(issuer.mint(claims(issuer, nbf=now + 120)), settings, ring)
    assert why.startswith("the token is not valid before ")
    verify_jwt(issuer.mint(claims(issuer, nbf=now + 30)), settings, ring)


def test_times_against_a_given_now(issuer, settings, ring):
    raw = issuer.mint(claims(issuer))
    now = time.time()
    verify_jwt(raw, settings, ring, now=now)
    assert refused(raw, settings, ring, now=now + 400).startswith("the token expired")
    assert refused(raw, settings, ring, now=now - 100).startswith("the token was issued")


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "aud"])
def test_missing_claim(issuer, settings, ring, claim):
    why = refused(issuer.mint(claims(issuer, **{claim: None})), settings, ring)
    assert why == f"the token has no {claim} claim"


def test_missing_iss(issuer, settings, ring):
    assert refused(issuer.mint(claims(issuer, iss=None)), settings, ring) == (
        "the token has no iss claim")


@pytest.mark.parametrize("jti", ["", 42, "x" * 257])
def test_bad_jti(issuer, settings, ring, jti):
    why = refused(issuer.mint(claims(issuer, jti=jti)), settings, ring)
    assert "jti" in why


def test_bad_signature(issuer, settings, ring, tmp_path):
    with LocalIssuer(tmp_path / "other", ca=issuer.ca) as other:
        # signed by another key, naming our issuer's kid
        raw = other.mint(claims(issuer), kid=issuer.kid)
    assert refused(raw, settings, ring).startswith("bad signature")
    # a changed payload
    good = issuer.mint(claims(issuer))
    head, payload, signature = good.split(".")
    forged = issuer.mint(claims(issuer, repository="mallory/proj")).split(".")[1]
    assert refused(".".join((head, forged, signature)), settings, ring).startswith(
        "bad signature")


@pytest.mark.parametrize("raw", ["", "abc", "a.b.c", "x" * 20000])
def test_not_a_jwt(settings, ring, raw):
    why = refused(raw, settings, ring)
    assert why.startswith("the token is")


# -- keys: caching, refetch, failures ---------------------------------------

def test_unknown_kid_refetches_once_a_minute(issuer, settings, ring, clock):
    verify_jwt(issuer.mint(claims(issuer)), settings, ring)
    assert issuer.requests[JWKS] == 1
    issuer.rotate()
    clock.now += 1
    # a new kid: one refetch finds it
    verify_jwt(issuer.mint(claims(issuer)), settings, ring)
    assert issuer.requests == {DISCOVERY: 2, JWKS: 2}
    # another unknown kid within the minute: no fetch
    clock.now += 30
    why = refused(issuer.mint(claims(issuer), kid="made-up"), settings, ring)
    assert why == f"the signing key 'made-up' is not among the keys of {issuer.url}"
    issuer.rotate()
    refused(issuer.mint(claims(issuer)), settings, ring)
    assert issuer.requests == {DISCOVERY: 2, JWKS: 2}
    # a minute after the last refetch: fetched again, and found
    clock.now += 31
    verify_jwt(issuer.mint(claims(issuer)), settings, ring)
    assert issuer.requests == {DISCOVERY: 3, JWKS: 3}


def test_known_keys_refetched_after_an_hour(issuer, settings, ring, clock):
    verify_jwt(issuer.mint(claims(issuer)), settings, ring)
    clock.now += 3601
    verify_jwt(issuer.mint(claims(issuer)), settings, ring)
    assert issuer.requests[JWKS] == 2


def test_fetch_failure_is_not_cached(issuer, settings, ring):
    issuer.status = 500
    why = refused(issuer.mint(claims(issuer)), settings, ring)
    assert why == (f"could not fetch the signing keys of {issuer.url}: "
                   f"{issuer.url}{DISCOVERY} answered HTTP 500")
    refused(issuer.mint(claims(issuer)), settings, ring)
    assert issuer.requests[DISCOVERY] == 2  # no clock change: fetched again
    issuer.status = 200
    verify_jwt(issuer.mint(claims(issuer)), settings, ring)
    assert issuer.requests == {DISCOVERY: 3, JWKS: 1}


def test_bad_jwks_is_not_cached(issuer, settings, ring):
    issuer.jwks_override = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}
    why = refused(issuer.mint(claims(issuer)), settings, ring)
    assert why.endswith("no RS256 or ES256 signature key in it")
    issuer.jwks_override = None
    verify_jwt(issuer.mint(claims(issuer)), settings, ring)
    assert issuer.requests[JWKS] == 2


def test_unreachable_issuer(tmp_path, clock):
    with LocalIssuer(tmp_path / "gone") as issuer:
        url = issuer.url
        raw = issuer.mint(github_claims(issuer=url, audience=AUD))
    settings = settings_for(IssuerSource(url))
    why = refused(raw, settings, KeyRing(settings, clock=clock))
    assert why.startswith(f"could not fetch the signing keys of {url}: ")


def test_untrusted_certificate(issuer, settings, ring, monkeypatch, tmp_path):
    other_ca = LocalIssuer(tmp_path / "other").ca_file
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))
    why = refused(issuer.mint(claims(issuer)), settings, ring)
    assert "certificate verify failed" in why


def test_discovery_must_name_the_issuer_and_an_https_jwks(issuer, settings, ring):
    issuer.discovery_overrides = {"issuer": "https://elsewhere.example"}
    assert "names another issuer" in refused(issuer.mint(claims(issuer)), settings, ring)
    issuer.discovery_overrides = {"jwks_uri": "http://keys.example/jwks"}
    assert "must be an https:// URL" in refused(issuer.mint(claims(issuer)), settings, ring)
    issuer.discovery_overrides = {}
    verify_jwt(issuer.mint(claims(issuer)), settings, ring)


def test_concurrent_first_use_fetches_once(issuer, settings, ring):
    tokens = [issuer.mint(claims(issuer)) for _ in range(8)]
    results: list[Any] = []
    threads = [threading.Thread(target=lambda t=t: results.append(
        verify_jwt(t, settings, ring)["jti"])) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert issuer.requests == {DISCOVERY: 1, JWKS: 1}


def no_fetch(url: str) -> bytes:
    raise AssertionError(f"fetched {url}")


def test_file_issuer_never_fetches(issuer, tmp_path, clock):
    path = issuer.write_jwks(tmp_path / "github.json")
    settings = settings_for(IssuerSource(GITHUB_ISSUER, path))
    ring = KeyRing(settings, fetch=no_fetch, clock=clock)
    for alg in ("RS256", "ES256"):
        verify_jwt(issuer.mint(github_claims(audience=AUD), alg=alg), settings, ring)
    # the file is read once: a rotated key is unknown, and still nothing is fetched
    issuer.rotate()
    issuer.write_jwks(path)
    clock.now += 3600 * 24
    why = refused(issuer.mint(github_claims(audience=AUD)), settings, ring)
    assert why == f"the signing key {issuer.kid!r} is not among the keys of {GITHUB_ISSUER}"
    assert sum(issuer.requests.values()) == 0


def test_offline_refuses_with_the_reason(issuer, tmp_path):
    path = issuer.write_jwks(tmp_path / "gitlab.json")
    settings = settings_for(
        IssuerSource(issuer.url), IssuerSource(GITLAB_ISSUER, path), offline=True)
    ring = KeyRing(settings, fetch=no_fetch)
    why = refused(issuer.mint(claims(issuer)), settings, ring)
    assert why == (
        f"the server runs with --offline-mode and cannot fetch the signing keys of "
        f"{issuer.url}; configure it with --oidc-issuer URL=PATH")
    # file issuers work offline
    verify_jwt(issuer.mint(gitlab_claims(audience=AUD)), settings, ring)


def test_https_get_limits(issuer):
    assert json.loads(https_get(issuer.url + DISCOVERY))["issuer"] == issuer.url
    issuer.jwks_override = {"keys": ["x" * (1024 * 1024)]}
    with pytest.raises(Exception, match="larger than"):
        https_get(issuer.url + JWKS)
    with pytest.raises(Exception, match="HTTP 404"):
        https_get(issuer.url + "/nothing")
    with pytest.raises(Exception, match="must be an https:// URL"):
        https_get("http://example.org/")


# -- configuration -----------------------------------------------------------

@pytest.mark.parametrize("value", [
    "", "Devpi", "1devpi", "-devpi", "devpi_x", "devpi x", "devpi.x", "dévpi", "a" * 129,
    "devpi\n"])
def test_invalid_audience(value):
    with pytest.raises(ConfigError, match="--oidc-audience .* is not valid"):
        validate_audience(value)
    with pytest.raises(ConfigError):
        OIDCSettings.from_xom(fake_xom(oidc_audience=value))


@pytest.mark.parametrize("value", ["a", "devpi", "devpi-prod-1", "x0-", "a" * 128])
def test_valid_audience(value):
    assert validate_audience(value) == value
    assert OIDCSettings.from_xom(fake_xom(oidc_audience=value)).audience == value


def test_gitlab_variable_name():
    assert gitlab_variable_name("devpi-prod-1") == "DEVPI_PROD_1_ID_TOKEN"


def fake_xom(secret: bytes = b"s" * 32, **args: Any) -> Any:
    import hashlib

    def get_derived_key(label: bytes) -> bytes:
        return hashlib.sha256(secret + b"|" + label).digest()

    return SimpleNamespace(config=SimpleNamespace(
        args=SimpleNamespace(**args), get_derived_key=get_derived_key))


def test_defaults():
    settings = OIDCSettings.from_xom(fake_xom())
    assert settings.enabled and not settings.offline
    assert settings.issuers == tuple(IssuerSource(url) for url in DEFAULT_ISSUERS)
    assert AUDIENCE_RE.fullmatch(settings.audience)
    assert len(settings.audience) == len("devpi-") + 20
    # the same secret, the same audience (replicas, restarts); another, another
    assert OIDCSettings.from_xom(fake_xom()).audience == settings.audience
    assert OIDCSettings.from_xom(fake_xom(b"t" * 32)).audience != settings.audience
    off = OIDCSettings.from_xom(fake_xom(no_trusted_publishing=True, offline_mode=True))
    assert not off.enabled and off.offline


def test_default_audience_from_the_plugins_base_key(xom):
    from devpi_tokens.server_store import BASE_KEY_LABEL
    from devpi_tokens.server_store import TokenStore

    audience = OIDCSettings.from_xom(xom).audience
    assert audience == derive_audience(TokenStore(xom).base_key)
    assert audience == derive_audience(bytes(xom.config.get_derived_key(BASE_KEY_LABEL)))
    assert audience != derive_audience(bytes(xom.config.get_derived_key(b"devpi-tokens-other")))


def test_parser_options():
    from devpi_server.config import MyArgumentParser

    parser = MyArgumentParser()
    add_parser_options(parser)
    args = parser.parse_args([
        "--no-trusted-publishing", "--oidc-audience", "devpi-x",
        "--oidc-issuer", "https://a.example", "--oidc-issuer", "https://b.example=/p=q"])
    assert args.no_trusted_publishing is True
    assert args.oidc_audience == "devpi-x"
    assert args.oidc_issuer == ["https://a.example", "https://b.example=/p=q"]
    args = parser.parse_args([])
    assert (args.no_trusted_publishing, args.oidc_audience, args.oidc_issuer) == (
        False, None, None)


def test_issuer_url_and_path_split_at_the_first_equals(issuer, tmp_path):
    directory = tmp_path / "a=b"
    directory.mkdir()
    path = issuer.write_jwks(directory / "k=v.json")
    source = parse_issuer(f"https://issuer.example={path}")
    assert source == IssuerSource("https://issuer.example", path)
    settings = OIDCSettings.from_xom(fake_xom(oidc_issuer=[
        f"{GITHUB_ISSUER}={path}", "https://gitlab.example.org"]))
    assert settings.issuers == (
        IssuerSource(GITHUB_ISSUER, path), IssuerSource("https://gitlab.example.org"))


def test_issuer_without_path():
    assert parse_issuer("https://gitlab.example.org/") == IssuerSource(
        "https://gitlab.example.org/")
    assert parse_issuer("http://127.0.0.1:8080").url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("value, message", [
    ("http://gitlab.example.org", "must be an https:// URL"),
    ("gitlab.example.org", "must be an https:// URL"),
    ("https://", "must be an https:// URL"),
    ("https://gitlab.example.org/?x#y", "no query or fragment"),
    ("https://gitlab.example.org=", "path after '=' is empty"),
    ("https://gitlab.example.org=/does/not/exist.json", "cannot read the JWKS file"),
])
def test_bad_issuer(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_issuer(value)


@pytest.mark.parametrize("content, message", [
    ("not json", "not JSON"),
    ("[]", "not a JSON object"),
    ('{"keys": []}', "no 'keys' list"),
    ('{"keys": [1]}', "is not a JSON object"),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no RS256 or ES256 signature key"),
])
def test_bad_jwks_file(tmp_path, content, message):
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        parse_issuer(f"https://issuer.example={path}")


def test_issuer_given_twice():
    with pytest.raises(ConfigError, match="more than once"):
        parse_issuers(["https://a.example", "https://a.example"])


def test_error_codes():
    assert OIDCError("invalid-publisher", "x").code == "invalid-publisher"
    with pytest.raises(ValueError):
        OIDCError("nope", "x")


def test_local_issuer_files(issuer, tmp_path):
    # what the e2e tests use: one CA for the issuer and a TLS front
    cert, key = issuer.ca.issue(("127.0.0.1", "localhost"), name="front")
    assert cert.read_text().count("BEGIN CERTIFICATE") == 2
    assert "PRIVATE KEY" in key.read_text()
    assert Path(issuer.ca_file).exists()


def test_requests_queued_behind_a_failing_fetch_share_its_failure(issuer, settings):
    """Many requests while an issuer fails: one fetch, not one after another."""
    calls: list[str] = []
    release = threading.Event()

    def failing(url: str) -> bytes:
        calls.append(url)
        release.wait(5)
        raise FetchError("connection refused")

    ring = KeyRing(settings, fetch=failing)
    reasons: list[str] = []
    threads = [threading.Thread(target=lambda: reasons.append(
        refused(issuer.mint(claims(issuer)), settings, ring))) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # let them all queue up behind the first fetch
    release.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert reasons == [
        f"could not fetch the signing keys of {issuer.url}: connection refused"] * 6
    # a later request tries again: a failure is never kept for the future
    release.set()
    refused(issuer.mint(claims(issuer)), settings, ring)
    assert len(calls) == 2


def test_a_trickling_issuer_is_given_up_on_after_the_deadline(issuer, settings, monkeypatch):
    from devpi_tokens import oidc_keys
    monkeypatch.setattr(oidc_keys, "FETCH_DEADLINE", 0.5)
    stop = threading.Event()
    calls: list[str] = []

    def trickling(url: str) -> bytes:
        calls.append(url)
        stop.wait(30)  # an answer that never completes
        raise FetchError("closed")

    ring = KeyRing(settings, fetch=trickling)
    started = time.monotonic()
    why = refused(issuer.mint(claims(issuer)), settings, ring)
    assert time.monotonic() - started < 5
    assert "no complete answer within" in why
    # the stuck fetch is not started a second time while it still runs
    refused(issuer.mint(claims(issuer)), settings, ring)
    assert len(calls) == 1
    stop.set()
