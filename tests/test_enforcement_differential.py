"""Differential tests: what a token may do is judged on what devpi-server does.

The oracle is devpi-server's own stored state, read back through its JSON
API: a token restricted to project ``foo`` sends hand-made POST/PUSH requests
(every byte and header chosen here) to an index, and afterwards no project
other than ``foo`` may have been created or changed, on any index.  Status
codes only matter for "never a 500".

Part A generates the requests with hypothesis; part B reproduces known ways a
body can be read one way by the plugin and another way by devpi (form vs.
JSON, charset, missing Content-Type, Unicode names), log injection, and
oversized token-create bodies, as plain tests.

One real devpi-server process serves the module (127.0.0.1, stopped by PID).

devpi-server 6.20 itself answers 500 with a traceback, whatever the
credentials, to some index POST/PUSH bodies: JSON that is not an object or
lacks "name"/"version" or has non-string ones, an unknown charset, a form
Content-Type with a charset other than UTF-8, multipart without a boundary,
a push without targetindex or posturl.  With a token such bodies must be
refused before devpi's view runs, so part A also asserts "never a 500".
"""
from __future__ import annotations

import base64
import http.client
import itertools
import json
import re
import urllib.parse
import uuid
from dataclasses import dataclass

import pymacaroons
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from devpi_process import make_wheel
from devpi_process import start_server

pytestmark = pytest.mark.e2e

USER = "alice"
PASSWORD = "alice-password-differential"
JSON_HEADERS = {"Accept": "application/json"}
PLANTED = "@PLANTED@"            # replaced by a fresh version per request
_planted = itertools.count(1)    # so a replayed bypass always changes state


# --------------------------------------------------------------------------
# raw HTTP and devpi's JSON API

def send(server, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None, chunked: bool = False) -> tuple[int, bytes]:
    """One request with exactly these headers and bytes; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None and chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(body), 7):
                piece = body[i:i + 7]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        else:
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    raw = f"{user}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


ALICE = basic(USER, PASSWORD)


def token_auth(kind: str, token: str) -> dict[str, str]:
    """The ways the contract lets a client present a token."""
    if kind == "bearer":
        return {"Authorization": f"Bearer {token}"}
    if kind == "token-as-user":
        return basic(token, "")
    return basic({"__token__": "__token__", "empty": "", "alice": USER}[kind], token)


def read_json(server, path: str) -> tuple[int, dict]:
    status, body = send(server, "GET", path, headers=JSON_HEADERS)
    return status, (json.loads(body) if status == 200 else {})


def message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        return ""


def normalize(name: str) -> str:
    """devpi-server's project name normalization."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).lower()


def projects(server, index: str) -> list[str]:
    status, data = read_json(server, f"/{index}")
    assert status == 200, (index, status)
    return data["result"].get("projects", [])


def versions(server, index: str, project: str) -> dict:
    """Every version of a project with its metadata and +links (with logs)."""
    status, data = read_json(server, f"/{index}/{project}")
    return data.get("result", {}) if status == 200 else {}


def snapshot(server, indexes=("alice/dev", "alice/other")) -> dict:
    """All stored state of every project except foo, on these indexes."""
    return {
        (index, project): versions(server, index, project)
        for index in indexes for project in projects(server, index)
        if normalize(project) != "foo"}


def assert_only_foo_changed(before: dict, after: dict, what: str) -> None:
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    gone = sorted(set(before) - set(after))
    assert not (new or changed or gone), (
        f"a foo-only token changed other projects: new={new} changed={changed} "
        f"deleted={gone}\nrequest: {what}")


def log_lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text)


def tracebacks(log: str) -> str:
    """The exceptions that ended the tracebacks in a log, counted."""
    found = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Warning)\b.{0,150})", log, re.M)
    return "tracebacks in the server log:\n" + "\n".join(
        f"{found.count(e)}x {e}" for e in dict.fromkeys(found))


# --------------------------------------------------------------------------
# bodies

def json_text(pairs, ensure_ascii: bool = True) -> str:
    """A JSON object written pair by pair: duplicated keys stay duplicated."""
    return "{" + ",".join(
        json.dumps(k, ensure_ascii=ensure_ascii) + ":" + json.dumps(v, ensure_ascii=ensure_ascii)
        for k, v in pairs) + "}"


def utf7_hidden(text: str) -> str:
    """``text`` as one UTF-7 base64 run: plain ASCII letters to a UTF-8 reader."""
    return "+" + base64.b64encode(text.encode("utf-16-be")).decode().rstrip("=") + "-"


def urlencoded(pairs) -> bytes:
    return urllib.parse.urlencode(list(pairs)).encode("utf-8")


def multipart(pairs, boundary: str) -> bytes:
    """``pairs`` values are strings, or (filename, bytes) for file parts."""
    out = []
    for name, value in pairs:
        if isinstance(value, tuple):
            filename, content = value
            out.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                .encode() + content + b"\r\n")
        else:
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                       f'\r\n\r\n{value}\r\n'.encode())
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def upload(server, index: str, name: str, version: str, headers: dict,
           filename: str | None = None, content: bytes | None = None,
           summary: str = "") -> tuple[int, bytes]:
    """``:action=file_upload`` as a multipart form (what twine sends)."""
    if content is None:
        wheel = make_wheel(server.serverdir.parent / "wheels" / uuid.uuid4().hex, name, version)
        filename, content = wheel.name, wheel.read_bytes()
    boundary = uuid.uuid4().hex
    body = multipart([(":action", "file_upload"), ("name", name), ("version", version),
                      ("summary", summary), ("content", (filename, content))], boundary)
    return send(server, "POST", f"/{index}/", body, {
        **headers, **JSON_HEADERS, "Content-Type": f"multipart/form-data; boundary={boundary}"})


def create_index(server, index: str) -> None:
    body = json.dumps({"type": "stage", "volatile": True, "bases": []}).encode()
    status, answer = send(server, "PUT", f"/{index}", body, {
        **ALICE, **JSON_HEADERS, "Content-Type": "application/json"})
    assert status == 200, answer


def mint(server, **restrictions) -> tuple[int, bytes]:
    return send(server, "POST", f"/{USER}/+token-create", json.dumps(restrictions).encode(),
                {**ALICE, **JSON_HEADERS, "Content-Type": "application/json"})


def mint_token(server, **restrictions) -> str:
    status, body = mint(server, **restrictions)
    assert status in (200, 201), body
    return json.loads(body)["result"]["token"]


def new_indexes(server) -> tuple[str, str]:
    """A fresh source index holding foo 1.0 and bar 1.0, and an empty target."""
    tag = uuid.uuid4().hex[:8]
    src, dst = f"{USER}/src-{tag}", f"{USER}/dst-{tag}"
    for index in (src, dst):
        create_index(server, index)
    for name in ("foo", "bar"):
        status, body = upload(server, src, name, "1.0", ALICE, summary=f"original {name}")
        assert status == 200, body
    return src, dst


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_server(tmp_path_factory.mktemp("differential") / "server")
    try:
        body = json.dumps({"password": PASSWORD, "email": "alice@example.com"}).encode()
        status, answer = send(proc, "PUT", f"/{USER}", body, {
            **JSON_HEADERS, "Content-Type": "application/json"})
        assert status == 201, answer
        for index in ("dev", "other"):
            create_index(proc, f"{USER}/{index}")
        for name in ("foo", "bar"):
            status, answer = upload(proc, "alice/dev", name, "1.0", ALICE,
                                    summary=f"original {name}")
            assert status == 200, answer
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def foo_token(server) -> str:
    return mint_token(server, projects=["foo"])


# --------------------------------------------------------------------------
# part A: generated requests, judged by devpi's stored state

NAMES = ["bar", "Bar", "BAR", "b-a-r", "b_a_r", "b.a.r", "foo", "FOO", "Foo", "f.o.o",
         "foo-\u212a", "foo\u212a", "foo ", "bar\u212a"]
FOOS = ["foo", "FOO", "Foo"]
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
APPJSON = "application/json"
ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8", "utf-7", "utf-16", "latin-1"]


@dataclass(frozen=True)
class Spec:
    """One request: the body is built from ``pairs`` by ``kind`` and ``encoding``."""

    method: str
    path: str
    auth: str
    kind: str                   # json | form | multipart
    pairs: tuple
    content_type: str | None    # None: no Content-Type header at all
    charset: str | None
    encoding: str = "utf-8"
    ensure_ascii: bool = True
    chunked: bool = False

    def render(self, token: str, n: int) -> tuple[bytes, dict[str, str]]:
        pairs = [(k, v.replace(PLANTED, f"66.{n}") if isinstance(v, str) else v)
                 for k, v in self.pairs]
        boundary = f"b{n}x{uuid.uuid4().hex[:6]}"
        if self.kind == "json":
            text = json_text(pairs, self.ensure_ascii)
            try:
                body = text.encode(self.encoding)
            except UnicodeEncodeError:
                body = json_text(pairs).encode(self.encoding)
        elif self.kind == "form":
            body = urlencoded(pairs)
        else:
            body = multipart(pairs, boundary)
        headers = {**JSON_HEADERS, **token_auth(self.auth, token)}
        if self.content_type is not None:
            ctype = self.content_type
            if ctype == MULTIPART:
                ctype += f"; boundary={boundary}"
            if self.charset:
                ctype += f"; charset={self.charset}"
            headers["Content-Type"] = ctype
        return body, headers


COMMON = {
    "method": st.sampled_from(["POST", "POST", "PUSH"]),
    "path": st.sampled_from(["/alice/dev", "/alice/dev/"]),
    "auth": st.sampled_from(["bearer", "bearer", "__token__", "empty", "alice", "token-as-user"]),
    "chunked": st.sampled_from([False] * 9 + [True]),
}

ANY_NAME = st.sampled_from(FOOS) | st.sampled_from(NAMES)
FORM_SMUGGLE = ANY_NAME.map(lambda n: f"&name={n}&")
SUBMIT_SMUGGLE = ANY_NAME.map(
    lambda n: f"&:action=submit&name={n}&version={PLANTED}&summary=planted&")
UTF7_SMUGGLE = ANY_NAME.map(lambda n: utf7_hidden(f'","name":"{n}')) | ANY_NAME.map(
    lambda n: utf7_hidden(f'","name":"{n}","version":"1.0","targetindex":"alice/other'))
UTF7 = ["utf-7", "UTF-7", "utf7", "unicode-1-1-utf-7", '"utf-7"']
# Families of (Content-Type, charset) and what is hidden in a JSON string:
# where devpi and a plugin may read one body two ways, each drawn often
# enough to be hit in a couple of hundred examples.  "other" holds the rest,
# including bodies devpi itself cannot read (latin-1 forms, multipart
# without parts, UTF-16 read as UTF-8).
FAMILIES = {
    "form": ([(FORM, None), (FORM, "utf-8"), (FORM, "UTF-8")], FORM_SMUGGLE),
    "none": ([(None, None)], SUBMIT_SMUGGLE | FORM_SMUGGLE),
    "utf7": ([(t, c) for t in (APPJSON, "text/plain") for c in UTF7], UTF7_SMUGGLE),
    "other": ([(APPJSON, None), (APPJSON, "utf-16"), (APPJSON, "latin-1"), ("text/plain", None),
               (MULTIPART, None), (FORM, "latin-1"), (FORM, "utf-7"), (APPJSON, "bogus")],
              FORM_SMUGGLE | SUBMIT_SMUGGLE | UTF7_SMUGGLE),
}


@st.composite
def json_specs(draw) -> Spec:
    """A push body: names, target, and form syntax or UTF-7 hidden in a string."""
    content_types, smuggle = FAMILIES[draw(st.sampled_from(sorted(FAMILIES)))]
    pairs = [("name", n) for n in draw(st.lists(ANY_NAME, min_size=1, max_size=2))]
    pairs.append(("version", draw(st.sampled_from(["1.0", "1.0", PLANTED]))))
    target = draw(st.sampled_from(["alice/other", "alice/other", "alice/dev"]))
    pairs.append(("targetindex", target))
    for key in draw(st.lists(st.sampled_from(["no_docs", "only_docs", "x"]),
                             min_size=1, max_size=2, unique=True)):
        pairs.append((key, draw(smuggle)))
    content_type, charset = draw(st.sampled_from(content_types))
    return Spec(pairs=tuple(draw(st.permutations(pairs))), kind="json",
                content_type=content_type, charset=charset,
                encoding=draw(st.sampled_from(ENCODINGS)), ensure_ascii=draw(st.booleans()),
                **{k: draw(v) for k, v in COMMON.items()})


@st.composite
def form_specs(draw) -> Spec:
    """An upload or register form: repeated names, actions, files."""
    kind = draw(st.sampled_from(["form", "multipart"]))
    pairs = [("name", n) for n in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))]
    pairs += [(":action", a) for a in draw(st.lists(
        st.sampled_from(["submit", "file_upload", ""]), min_size=0, max_size=2))]
    version = draw(st.sampled_from(["1.0", PLANTED]))
    pairs += [("version", version), ("summary", "planted")]
    if kind == "multipart" and draw(st.booleans()):
        stem = draw(st.sampled_from(["foo", "bar", "FOO", "Bar"]))
        pairs.append(("content", (f"{stem}-{version}.tar.gz", b"not really an sdist")))
    content_type = draw(st.sampled_from(
        [None, FORM, MULTIPART, APPJSON] + [FORM if kind == "form" else MULTIPART] * 3))
    return Spec(pairs=tuple(draw(st.permutations(pairs))), kind=kind,
                content_type=content_type,
                charset=draw(st.sampled_from([None, None, None, "utf-8", "latin-1", "utf-7"])),
                **{k: draw(v) for k, v in COMMON.items()})


def test_foo_token_changes_nothing_but_foo(server, foo_token):
    """Whatever the bytes, devpi's stored state of every non-foo project stays put."""
    log_mark = len(server.log())
    state = {"snapshot": snapshot(server)}
    assert ("alice/dev", "bar") in state["snapshot"]
    server_errors: dict[str, str] = {}

    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(spec=st.one_of(json_specs(), json_specs(), form_specs()))
    def check(spec: Spec) -> None:
        n = next(_planted)
        body, headers = spec.render(foo_token, n)
        what = f"{spec.method} {spec.path} {headers.get('Content-Type')!r} {body!r}"
        status, answer = send(server, spec.method, spec.path, body, headers, spec.chunked)
        before, state["snapshot"] = state["snapshot"], snapshot(server)
        if status >= 500:
            server_errors.setdefault(f"{spec.kind} {headers.get('Content-Type')}", what)
        assert_only_foo_changed(before, state["snapshot"], f"{what} -> {status} {answer[:200]!r}")

    check()
    log = server.log()
    assert foo_token not in log, "the token was written to the server log"
    assert not server_errors, "5xx answers:\n" + "\n".join(server_errors.values())
    assert "Traceback" not in log[log_mark:], tracebacks(log[log_mark:])


# --------------------------------------------------------------------------
# part B: explicit reproductions

def refused(status: int) -> bool:
    return 400 <= status < 500


@pytest.mark.parametrize("method", ["POST", "PUSH"])
def test_json_push_sent_as_form_is_judged_as_devpi_reads_it(server, foo_token, method):
    src, dst = new_indexes(server)
    body = json_text([("name", "bar"), ("version", "1.0"), ("targetindex", dst),
                      ("no_docs", "&name=foo&")]).encode()
    status, answer = send(server, method, f"/{src}", body, {
        **JSON_HEADERS, **token_auth("bearer", foo_token), "Content-Type": FORM})
    assert "bar" not in projects(server, dst), f"bar was pushed with a foo token ({status})"
    assert refused(status), (status, answer)


@pytest.mark.parametrize("method", ["POST", "PUSH"])
@pytest.mark.parametrize("charset", ["utf-7", "UTF-7", "unicode-1-1-utf-7"])
def test_json_push_read_with_the_declared_charset(server, foo_token, method, charset):
    src, dst = new_indexes(server)
    body = json_text([("name", "foo"), ("version", "1.0"), ("targetindex", dst),
                      ("no_docs", utf7_hidden('","name":"bar'))]).encode()
    assert json.loads(body)["name"] == "foo"
    assert json.loads(body.decode("utf-7"))["name"] == "bar"
    status, answer = send(server, method, f"/{src}", body, {
        **JSON_HEADERS, **token_auth("bearer", foo_token),
        "Content-Type": f"application/json; charset={charset}"})
    assert "bar" not in projects(server, dst), f"bar was pushed with a foo token ({status})"
    assert refused(status), (status, answer)


@pytest.mark.parametrize("slash", ["", "/"])
def test_body_without_content_type_is_read_as_a_form(server, foo_token, slash):
    src, _ = new_indexes(server)
    before = versions(server, src, "bar")
    body = json_text([("name", "foo"), ("version", "1.0"),
                      ("x", "&:action=submit&name=bar&version=66.6&summary=planted&")]).encode()
    status, answer = send(server, "POST", f"/{src}{slash}", body, {
        **JSON_HEADERS, **token_auth("bearer", foo_token)})
    after = versions(server, src, "bar")
    assert "66.6" not in after, f"bar 66.6 was registered with a foo token ({status})"
    assert after == before
    assert refused(status), (status, answer)


def kelvin_token_auth(server) -> dict[str, str]:
    """A token for "foo-k-bar": "foo-\u212a-bar" (KELVIN SIGN) is foo-k-bar to
    PEP 503's lower(), but foo-bar to devpi's normalize_name."""
    return {**JSON_HEADERS, **token_auth("bearer", mint_token(server, projects=["foo-k-bar"]))}


def test_upload_names_are_compared_as_devpi_normalizes_them(server):
    index, _ = new_indexes(server)
    status, answer = upload(server, index, "foo-\u212a-bar", "1.0", kelvin_token_auth(server),
                            filename="foo_bar-1.0.tar.gz", content=b"not really an sdist")
    assert "foo-bar" not in projects(server, index), f"foo-bar created ({status})"
    assert refused(status), (status, answer)


def test_url_names_are_compared_as_devpi_normalizes_them(server):
    index, _ = new_indexes(server)
    auth = kelvin_token_auth(server)
    status, answer = upload(server, index, "foo-bar", "1.0", ALICE)
    assert status == 200, answer
    status, answer = send(server, "DELETE", f"/{index}/foo-%E2%84%AA-bar/1.0", headers=auth)
    assert "1.0" in versions(server, index, "foo-bar"), f"foo-bar 1.0 deleted ({status})"
    assert status == 403, (status, answer)


@pytest.mark.parametrize("name", ["foo bar", "foo\u212a", "foo-\u212a-bar"])
def test_token_create_refuses_names_that_are_not_pep508(server, name):
    status, answer = mint(server, projects=[name])
    assert status == 400, answer
    assert message(answer), answer


def forged_token(identifier: str) -> str:
    macaroon = pymacaroons.Macaroon(
        location="", identifier=identifier, key="x", version=pymacaroons.MACAROON_V2)
    return "devpi-" + macaroon.serialize()


def test_log_lines_cannot_be_forged(server, foo_token):
    log_mark = len(server.log())
    attempts = [
        {"Authorization": f"Bearer {forged_token(ident)}"} for ident in (
            "alice-abc\nFORGED LOG LINE injected",
            "alice\nFORGED LOG LINE injected-abc",
            "alice\r\nFORGED LOG LINE injected-abc",
            "alice\rFORGED LOG LINE injected-abc")]
    attempts += [
        basic("__token__", forged_token("alice\nFORGED LOG LINE injected-abc")),
        basic("alice\nFORGED LOG LINE injected", foo_token),
        basic("x\r\nFORGED LOG LINE injected", foo_token),
        {"X-Devpi-Auth": base64.b64encode(
            f"alice\nFORGED LOG LINE injected:{foo_token}".encode()).decode()},
    ]
    for headers in attempts:
        for method, path in (("GET", "/alice/dev/+simple/foo/"), ("POST", "/alice/dev/")):
            status, answer = send(server, method, path, b"" if method == "POST" else None,
                                  {**JSON_HEADERS, **headers})
            assert status in (401, 403), (headers, status, answer)
    injected = [line for line in log_lines(server.log()[log_mark:])
                if line.lstrip().startswith("FORGED")]
    assert not injected, f"forged log lines: {injected}"
    assert foo_token not in server.log()


def test_token_create_refuses_deeply_nested_json(server):
    log_mark = len(server.log())
    depth = 100_000
    status, answer = send(server, "POST", f"/{USER}/+token-create",
                          b"[" * depth + b"]" * depth,
                          {**ALICE, **JSON_HEADERS, "Content-Type": "application/json"})
    assert status == 400, (status, answer[:300])
    assert message(answer), answer[:300]
    log = server.log()[log_mark:]
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]


def test_token_create_refuses_huge_bodies(server):
    body = b" " * (2 * 1024 * 1024) + json.dumps({"description": "padded"}).encode()
    status, answer = send(server, "POST", f"/{USER}/+token-create", body,
                          {**ALICE, **JSON_HEADERS, "Content-Type": "application/json"})
    assert status in (400, 413), (status, answer[:300])
    assert message(answer) or answer.strip(), "no reason given"
