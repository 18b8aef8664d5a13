"""devpi-api-client 1.0.0 (the published Python client) against a real server.

One devpi-server process with the devpi-tokens plugin (loopback, free port,
``--offline-mode``, fresh serverdir) serves the module and is stopped by PID.
Everything goes through devpi-api-client's own ``Client``, as a script
using it would: user and indexes are created with it, tokens are minted,
listed and deleted with alice's password, and the tokens are then used by it
(``Client(url, token=...)`` sends them as basic auth ``__token__:<token>``).

What devpi-api-client reads from a listing: ``restrictions``, the
devpi-tokens 1.x ``name=value`` summary this server lists, parsed into
``TokenInfo.expires/allowed/indexes/projects``.  ``Token.inspect`` (offline)
splits the token's caveats the same way; ours are PyPI's JSON format, so
there it finds nothing to parse (documented below, not a failure).
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pymacaroons
import pytest

from devpi_process import make_wheel
from devpi_process import start_server
from devpi_tokens.tokens import Token as OurToken

devpi_api_client = pytest.importorskip("devpi_api_client")

from devpi_api_client import AuthenticationError  # noqa: E402
from devpi_api_client import Client  # noqa: E402
from devpi_api_client import ForbiddenError  # noqa: E402
from devpi_api_client import NotFoundError  # noqa: E402
from devpi_api_client import ServerError  # noqa: E402
from devpi_api_client.api.token import Token as ApiToken  # noqa: E402
from devpi_api_client.models.token import TokenInfo  # noqa: E402

pytestmark = pytest.mark.e2e

USER = "alice"
PASSWORD = "alice-password-api-client"
DAY = 86400


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("api-client")
    # a loaded machine can take well over a minute to import devpi-server
    proc = start_server(base / "server", timeout=180)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def alice(server) -> Client:
    """devpi-api-client logged in with alice's password; she has alice/dev and alice/other."""
    with Client(server.url) as anonymous:
        anonymous.user.create(USER, PASSWORD)
    client = Client(server.url, user=USER, password=PASSWORD)
    for name in ("dev", "other"):
        config = client.index.create(USER, name, bases=[])
        assert (config.user, config.name, config.type) == (USER, name, "stage")
    yield client
    client.close()


@pytest.fixture
def token_client(server):
    """Factory: a devpi-api-client authenticated with a token (``__token__``)."""
    clients = []

    def make(token: str) -> Client:
        client = Client(server.url, token=token)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def token_id(token: str) -> str:
    return OurToken.load(token).token_id


def raw_listing(alice: Client) -> dict:
    """The server's own JSON answer for GET /alice/+tokens (same session, same auth)."""
    answer = alice.token._request("GET", f"/{USER}/+tokens")
    assert answer["type"] == "tokens-info"
    return answer["result"]["tokens"]


def create_timed(alice: Client, **kw) -> tuple[str, int, int]:
    """token.create(**kw); returns (token, time before, time after) in epoch seconds."""
    before = int(time.time())
    token = alice.token.create(USER, **kw)
    after = int(time.time()) + 1
    return token, before, after


def wheel(tmp_path: Path, name: str, version: str = "1.0") -> str:
    return str(make_wheel(tmp_path / "dist", name, version))


def new_project() -> str:
    return f"api-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------
# create + list: every TokenInfo field, every listing field

def test_create_with_every_option_lists_every_field(alice):
    project = new_project()
    token, before, after = create_timed(
        alice, allowed=["upload", "pkg_read"], expires_in_seconds=3600,
        indexes=["alice/dev"], projects=[project])
    assert token.startswith("devpi-")
    tid = token_id(token)

    info = alice.token.list(USER)[tid]
    assert isinstance(info, TokenInfo)
    assert (info.id, info.user) == (tid, USER)
    # devpi-api-client sorts and de-duplicates the permissions it sends
    assert info.allowed == ["pkg_read", "upload"]
    assert info.indexes == ["alice/dev"]
    assert info.projects == [project]
    # devpi-api-client sends now + expires_in_seconds, computed on its side
    assert before + 3600 <= info.expires <= after + 3600

    raw = raw_listing(alice)[tid]
    created = raw["created"]
    assert before <= created <= after
    assert raw["expires"] == info.expires
    assert raw["not_before"] == created
    assert (raw["projects"], raw["indexes"], raw["allowed"]) == (
        [project], ["alice/dev"], ["pkg_read", "upload"])
    assert raw["description"] == ""
    assert raw["restrictions"] == [
        f"expires={info.expires}", f"not_before={created}", f"projects={project}",
        "indexes=alice/dev", "allowed=pkg_read,upload"]
    assert raw["caveats"] == [
        f"[0,{info.expires},{created}]", f'[1,["{project}"]]',
        '["devpi:indexes",["alice/dev"]]', '["devpi:allowed",["pkg_read","upload"]]']
    # TokenInfo keeps the 1.x summary as it came
    assert info.restrictions == raw["restrictions"]
    assert info.model_dump() == {
        "id": tid, "user": USER, "allowed": ["pkg_read", "upload"],
        "expires": raw["expires"], "indexes": ["alice/dev"], "projects": [project],
        "restrictions": raw["restrictions"]}


def test_create_with_several_indexes_and_projects(alice):
    token, _, _ = create_timed(
        alice, indexes=["alice/dev", "alice/other"], projects=["foo", "Bar.Baz"],
        expires_in_seconds=7 * DAY)
    tid = token_id(token)
    info = alice.token.list(USER)[tid]
    assert info.indexes == ["alice/dev", "alice/other"]
    assert info.projects == ["foo", "Bar.Baz"]  # as asked: not normalized in the listing
    assert info.allowed is None  # no `allowed` asked for: every permission alice has
    raw = raw_listing(alice)[tid]
    assert raw["restrictions"] == [
        f"expires={raw['expires']}", f"not_before={raw['created']}",
        "projects=foo,Bar.Baz", "indexes=alice/dev,alice/other"]
    assert raw["caveats"][1:] == [
        '[1,["foo","Bar.Baz"]]', '["devpi:indexes",["alice/dev","alice/other"]]']
    assert raw["allowed"] is None


def test_create_without_options_gets_the_default_year(alice):
    token, _, _ = create_timed(alice)
    tid = token_id(token)
    info = alice.token.list(USER)[tid]
    raw = raw_listing(alice)[tid]
    assert info.expires == raw["created"] + 365 * DAY
    assert (info.allowed, info.indexes, info.projects) == (None, None, None)
    assert info.restrictions == [f"expires={info.expires}", f"not_before={raw['created']}"]
    assert raw["caveats"] == [f"[0,{info.expires},{raw['created']}]"]


def test_refusals_at_create_reach_the_caller(alice):
    # devpi-api-client lets the user_* permissions through ("hidden"); the
    # server refuses them with a 400.  devpi-api-client 1.0.0 maps only
    # 401/403/404/409/5xx; a 400 ends in its HTTPError fallback, which tests
    # ``if response`` (False for any error response in requests), so the
    # ServerError it raises has no status_code and no response_data: only
    # its message names the 400.
    with pytest.raises(ServerError) as excinfo:
        alice.token.create(USER, allowed=["user_modify"])
    assert "400 Client Error" in str(excinfo.value)
    assert (excinfo.value.status_code, excinfo.value.response_data) == (None, None)
    # the server's reason is in the answer, for clients that read it
    answer = alice.session.post(
        f"{alice.base_url}/{USER}/+token-create", json={"allowed": ["user_modify"]})
    assert answer.status_code == 400
    assert answer.json()["message"] == (
        "'user_modify' cannot be given to a token: tokens never carry user permissions")
    # more than 366 days is for root and --restrict-modify users
    with pytest.raises(ForbiddenError) as excinfo:
        alice.token.create(USER, expires_in_seconds=400 * DAY)
    assert "366 days" in excinfo.value.response_data["message"]


# --------------------------------------------------------------------------
# using a token through devpi-api-client

def test_token_reads_and_uploads_within_its_restrictions(alice, token_client, tmp_path):
    project = new_project()
    token = alice.token.create(
        USER, allowed=["upload", "pkg_read"], expires_in_seconds=3600,
        indexes=["alice/dev"], projects=[project])
    client = token_client(token)
    # devpi-api-client decodes the user from the token itself
    assert client.auth.get_current_user() == USER

    config = client.index.get(USER, "dev")
    assert (config.user, config.name) == (USER, "dev")
    assert client.project.upload(USER, "dev", wheel(tmp_path, project)) is True
    assert client.project.list(USER, "dev") == [project]
    versions = client.project.get(USER, "dev", project)
    assert list(versions) == ["1.0"]
    assert [link.rel for link in versions["1.0"].links] == ["releasefile"]


def test_token_restrictions_are_enforced(alice, token_client, tmp_path):
    project = new_project()
    token = alice.token.create(
        USER, allowed=["upload", "pkg_read"], expires_in_seconds=3600,
        indexes=["alice/dev"], projects=[project])
    client = token_client(token)

    # another index: 403 with the token's reason
    with pytest.raises(ForbiddenError) as excinfo:
        client.project.upload(USER, "other", wheel(tmp_path, project))
    assert excinfo.value.status_code == 403
    assert excinfo.value.response_data == {"message": "token not valid for index 'alice/other'"}

    # another project on the allowed index: 403 naming it
    other = new_project()
    with pytest.raises(ForbiddenError) as excinfo:
        client.project.upload(USER, "dev", wheel(tmp_path, other))
    assert excinfo.value.response_data == {"message": f"token not valid for project '{other}'"}

    # outside `allowed`: no index_modify, although alice herself may
    with pytest.raises(ForbiddenError):
        client.index.modify(USER, "dev", volatile=False)
    assert alice.index.get(USER, "dev").volatile is True

    # a token never manages tokens, even its own user's
    with pytest.raises(ForbiddenError) as excinfo:
        client.token.list(USER)
    assert "log in with the password" in excinfo.value.response_data["message"]
    with pytest.raises(ForbiddenError):
        client.token.create(USER)

    # nothing landed anywhere
    assert not alice.project.exists(USER, "other", project)
    assert not alice.project.exists(USER, "dev", other)


def test_token_cannot_change_another_index(alice, token_client, tmp_path):
    # devpi-server lets anyone read an index's JSON config; changing what is
    # on an index the token is not for is refused with the reason
    project = new_project()
    assert alice.project.upload(USER, "other", wheel(tmp_path, project)) is True
    token = alice.token.create(USER, indexes=["alice/dev"], expires_in_seconds=3600)
    client = token_client(token)
    with pytest.raises(ForbiddenError) as excinfo:
        client.project.delete(USER, "other", project, "1.0")
    assert excinfo.value.status_code == 403
    assert "token not valid for index 'alice/other'" in str(excinfo.value.response_data)
    assert alice.project.exists(USER, "other", project, "1.0")


def test_token_as_basic_password_of_its_user(alice, server, tmp_path):
    # Client(user="alice", password=<token>): basic auth with the token's user
    project = new_project()
    token = alice.token.create(USER, projects=[project], expires_in_seconds=3600)
    with Client(server.url, user=USER, password=token) as client:
        assert client.project.upload(USER, "dev", wheel(tmp_path, project)) is True
        assert client.project.exists(USER, "dev", project, "1.0")


# --------------------------------------------------------------------------
# delete

def test_delete_revokes_and_unlists(alice, token_client):
    token = alice.token.create(USER, indexes=["alice/dev"], expires_in_seconds=3600)
    tid = token_id(token)
    client = token_client(token)
    assert client.index.get(USER, "dev").name == "dev"
    assert alice.token.exists(USER, tid)

    answer = alice.token.delete(USER, tid)
    assert answer.message == f"token {tid} of user {USER} deleted"
    assert tid not in alice.token.list(USER)
    assert not alice.token.exists(USER, tid)

    with pytest.raises(AuthenticationError) as excinfo:
        client.index.get(USER, "dev")
    assert excinfo.value.status_code == 401
    assert excinfo.value.response_data == {
        "message": f"token {tid} of user '{USER}' was deleted or never existed"}

    with pytest.raises(NotFoundError) as excinfo:
        alice.token.delete(USER, tid)
    assert excinfo.value.response_data == {"message": f"user '{USER}' has no token '{tid}'"}


# --------------------------------------------------------------------------
# Token.inspect (offline): what it gives for this server's tokens

def test_inspect_shows_json_caveats_unparsed(alice):
    """devpi-api-client's inspect splits 1.x ``name=value`` caveats only.

    Our caveats are PyPI's JSON format, so ``allowed``, ``expires``,
    ``indexes`` and ``projects`` come back None and ``restrictions`` holds
    the caveats exactly as minted (the listing's ``caveats``).  The listing
    (``token.list``) is where devpi-api-client gets the parsed fields.
    """
    project = new_project()
    token = alice.token.create(
        USER, allowed=["upload", "pkg_read"], expires_in_seconds=3600,
        indexes=["alice/dev"], projects=[project])
    tid = token_id(token)
    raw = raw_listing(alice)[tid]

    info = ApiToken.inspect(token)
    assert info.model_dump() == {
        "id": tid, "user": USER,
        "allowed": None, "expires": None, "indexes": None, "projects": None,
        "restrictions": [
            f"[0,{raw['expires']},{raw['created']}]", f'[1,["{project}"]]',
            '["devpi:indexes",["alice/dev"]]', '["devpi:allowed",["pkg_read","upload"]]'],
    }
    assert info.restrictions == raw["caveats"]
    # the listing of the same token has them parsed
    listed = alice.token.list(USER)[tid]
    assert (listed.expires, listed.projects) == (raw["expires"], [project])


def test_inspect_of_a_default_token(alice):
    token = alice.token.create(USER)
    raw = raw_listing(alice)[token_id(token)]
    info = ApiToken.inspect(token)
    assert info.expires is None
    assert info.restrictions == [f"[0,{raw['expires']},{raw['created']}]"]


def test_inspect_parses_1x_style_caveats_added_to_our_token(alice, token_client, tmp_path):
    """A 1.x-style derivation (``name=value`` caveats) of our token.

    devpi-api-client's inspect parses those, and this server enforces them.
    """
    project = new_project()
    token = alice.token.create(USER, expires_in_seconds=3600)
    macaroon = pymacaroons.Macaroon.deserialize(token[len("devpi-"):])
    expires = int(time.time()) + 600
    macaroon.add_first_party_caveat(f"expires={expires}")
    macaroon.add_first_party_caveat(f"projects={project}")
    derived = "devpi-" + macaroon.serialize()

    info = ApiToken.inspect(derived)
    assert info.expires == expires
    assert info.projects == [project]
    assert (info.allowed, info.indexes) == (None, None)
    assert info.restrictions[1:] == [f"expires={expires}", f"projects={project}"]

    client = token_client(derived)
    assert client.project.upload(USER, "dev", wheel(tmp_path, project)) is True
    other = new_project()
    with pytest.raises(ForbiddenError) as excinfo:
        client.project.upload(USER, "dev", wheel(tmp_path, other))
    assert excinfo.value.response_data == {"message": f"token not valid for project '{other}'"}
