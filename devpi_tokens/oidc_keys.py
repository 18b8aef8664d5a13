"""The signing keys of the trusted OIDC issuers.

A :class:`KeyRing` finds the key that signed a JWT: for an issuer given as
``URL`` it reads the discovery document (``<URL>/.well-known/openid-configuration``)
and the JWKS it names, over https (the default SSL context, so
``SSL_CERT_FILE`` is honoured); for ``URL=PATH`` it uses that JWKS file,
read once when the ring is made, and never fetches.

Fetched keys are cached per issuer.  A ``kid`` the cache does not know leads
to a refetch, at most one such refetch a minute per issuer (so tokens with made-up kids
cannot make us hammer an issuer); cached keys older than an hour are
refetched on their next use.  A failed fetch is never cached: the next
exchange tries again.  With ``--offline-mode`` nothing is fetched and an
exchange that needs fetched keys is refused with that reason.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Final
from urllib.error import HTTPError
from urllib.error import URLError
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.request

import jwt

from .oidc_config import ALGORITHMS
from .oidc_config import JWKS_MAX_BYTES
from .oidc_config import ConfigError
from .oidc_config import OIDCSettings
from .oidc_config import parse_jwks
from .oidc_config import read_jwks_file
from .oidc_config import url_problem
from .oidc_config import usable_keys
from .oidc_errors import OIDCError

#: Seconds between two refetches for an unknown kid (per issuer).
REFETCH_INTERVAL: Final = 60.0
#: Seconds fetched keys are used before they are fetched again.
KEYS_MAX_AGE: Final = 3600.0
#: Timeout of one HTTP request, seconds.
FETCH_TIMEOUT: Final = 10.0
#: Longest a request waits for an issuer's keys, discovery and JWKS together.
FETCH_DEADLINE: Final = 15.0

DISCOVERY_PATH: Final = "/.well-known/openid-configuration"


class FetchError(Exception):
    """A fetch failed; the message is the reason (no secrets in it)."""


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str,
        headers: Any, newurl: str,
    ) -> urllib.request.Request | None:
        problem = url_problem(newurl, "redirect to")
        if problem is not None:
            raise FetchError(problem)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def https_get(url: str) -> bytes:
    """GET ``url``: status 200 only, at most 1 MiB, 10 s timeout, else :class:`FetchError`.

    https with the default SSL context (which honours ``SSL_CERT_FILE``);
    http only on loopback (tests).
    """
    problem = url_problem(url, "URL")
    if problem is not None:
        raise FetchError(problem)
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
        _HttpsOnlyRedirects())
    request = urllib.request.Request(url, headers={
        "Accept": "application/json", "User-Agent": "devpi-tokens"})
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT) as response:
            if response.status != 200:
                raise FetchError(f"{url} answered HTTP {response.status}")
            data: bytes = response.read(JWKS_MAX_BYTES + 1)
    except FetchError:
        raise
    except HTTPError as exc:
        raise FetchError(f"{url} answered HTTP {exc.code}") from None
    except URLError as exc:
        raise FetchError(f"{url}: {exc.reason}") from None
    except (socket.timeout, TimeoutError):
        raise FetchError(f"{url}: timed out") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
    if len(data) > JWKS_MAX_BYTES:
        raise FetchError(f"{url}: the answer is larger than {JWKS_MAX_BYTES} bytes")
    return data


class _Fetch:
    """One key fetch in a daemon thread (a trickling issuer never blocks shutdown)."""

    def __init__(self, fetch: Callable[[], tuple[jwt.PyJWK, ...]]) -> None:
        self.keys: tuple[jwt.PyJWK, ...] | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self._fetch = fetch
        threading.Thread(target=self._run, name="devpi-tokens-jwks", daemon=True).start()

    def _run(self) -> None:
        try:
            self.keys = self._fetch()
        except FetchError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported as a failed fetch
            self.error = type(exc).__name__
        finally:
            self.done.set()


@dataclass(frozen=True)
class _Keys:
    """The keys of one issuer as fetched (or read) at ``fetched_at``."""

    keys: tuple[jwt.PyJWK, ...]
    fetched_at: float

    def find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # a JWT without kid: fine when the issuer has a single key
            return self.keys[0] if len(self.keys) == 1 else None
        # a kid names a public key; it is no secret (plain == is fine)
        by_kid = {jwk.key_id: jwk for jwk in reversed(self.keys)}  # first one wins
        return by_kid.get(kid)


class KeyRing:
    """The signing keys of the issuers in ``settings``; thread-safe."""

    def __init__(
        self,
        settings: OIDCSettings,
        fetch: Callable[[str], bytes] = https_get,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._issuer_locks: dict[str, threading.Lock] = {}
        self._cache: dict[str, _Keys] = {}
        self._last_refetch: dict[str, float] = {}
        self._files: dict[str, _Keys] = {}
        # per issuer: the fetch thread, and when (monotonic) and why the last fetch failed
        self._running: dict[str, _Fetch] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        for source in settings.issuers:
            self._issuer_locks[source.url] = threading.Lock()
            if source.jwks_file is not None:
                document = read_jwks_file(source.jwks_file, source.url)
                try:
                    keys = usable_keys(document)
                except ValueError as exc:  # checked already; the file changed since
                    raise ConfigError(f"--oidc-issuer {source.url}: {exc}") from None
                self._files[source.url] = _Keys(keys, 0.0)

    def key_for(self, issuer: str, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key of ``issuer`` with id ``kid`` for ``alg``, else OIDCError("invalid-token")."""
        source = self.settings.issuer(issuer)
        if source is None:
            raise OIDCError("invalid-token", f"issuer {issuer} is not trusted by this server")
        if alg not in ALGORITHMS:
            raise OIDCError(
                "invalid-token", f"algorithm {alg} is not accepted (only RS256, ES256)")
        if source.jwks_file is not None:
            key = self._files[issuer].find(kid)
        else:
            key = self._fetched_key(issuer, kid)
        if key is None:
            raise OIDCError(
                "invalid-token", f"the signing key {kid!r} is not among the keys of {issuer}")
        if key.algorithm_name != alg:
            raise OIDCError(
                "invalid-token",
                f"the signing key {kid!r} of {issuer} is for {key.algorithm_name}, "
                f"not {alg}")
        return key

    def _fetched_key(self, issuer: str, kid: str | None) -> jwt.PyJWK | None:
        waited_since = time.monotonic()
        with self._issuer_locks[issuer]:
            now = self._clock()
            cached = self._cache.get(issuer)
            if cached is not None and now - cached.fetched_at < KEYS_MAX_AGE:
                key = cached.find(kid)
                if key is not None:
                    return key
                # an unknown kid: refetch, at most once a minute
                last = self._last_refetch.get(issuer)
                if last is not None and now - last < REFETCH_INTERVAL:
                    return None
                self._last_refetch[issuer] = now
            # nothing cached (or a failed fetch), keys too old, or an unknown kid: fetch
            if self.settings.offline:
                raise OIDCError(
                    "invalid-token",
                    f"the server runs with --offline-mode and cannot fetch the signing "
                    f"keys of {issuer}; configure it with --oidc-issuer URL=PATH")
            keys = self._fetch_within_deadline(issuer, waited_since)
            fetched = _Keys(keys, now)
            self._cache[issuer] = fetched
            return fetched.find(kid)

    def _fetch_within_deadline(self, issuer: str, waited_since: float) -> tuple[jwt.PyJWK, ...]:
        """Fetch the keys in a thread of their own, waiting at most FETCH_DEADLINE.

        Called with the issuer's lock held.  A fetch that failed while this
        request waited for the lock is its answer too: requests that queue
        up behind a failing issuer do not fetch one after another.  A fetch
        still running past the deadline (an issuer that trickles its answer)
        is not started again until it ends: one thread per issuer at most.
        """
        failed = self._failures.get(issuer)
        if failed is not None and failed[0] >= waited_since:
            raise OIDCError("invalid-token", failed[1])
        running = self._running.get(issuer)
        if running is None or running.done.is_set():
            running = _Fetch(lambda: self._fetch_keys(issuer))
            self._running[issuer] = running
        if not running.done.wait(FETCH_DEADLINE):
            message = (f"could not fetch the signing keys of {issuer}: no complete answer "
                       f"within {FETCH_DEADLINE:.0f} s")
            self._failures[issuer] = (time.monotonic(), message)
            raise OIDCError("invalid-token", message)
        if running.error is not None:
            message = f"could not fetch the signing keys of {issuer}: {running.error}"
            self._failures[issuer] = (time.monotonic(), message)
            raise OIDCError("invalid-token", message)
        assert running.keys is not None
        return running.keys

    def _fetch_keys(self, issuer: str) -> tuple[jwt.PyJWK, ...]:
        discovery_url = issuer.rstrip("/") + DISCOVERY_PATH
        data = self._fetch(discovery_url)
        try:
            discovery = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise FetchError(f"{discovery_url}: the answer is not JSON") from None
        if not isinstance(discovery, dict):
            raise FetchError(f"{discovery_url}: the answer is not a JSON object")
        named = discovery.get("issuer")
        if not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/"):
            raise FetchError(f"{discovery_url}: names another issuer ({str(named)[:100]!r})")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchError(f"{discovery_url}: no jwks_uri")
        problem = url_problem(jwks_uri, "jwks_uri")
        if problem is not None:
            raise FetchError(f"{discovery_url}: {problem[:300]}")
        try:
            return usable_keys(parse_jwks(self._fetch(jwks_uri)))
        except ValueError as exc:
            raise FetchError(f"{jwks_uri}: {exc}") from None
