"""The token layer, and interop with the real pypitoken package."""
import base64

import pymacaroons
import pypitoken
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from devpi_tokens import restrictions as r
from devpi_tokens.restrictions import Context
from devpi_tokens.restrictions import MalformedToken
from devpi_tokens.tokens import MAX_TOKEN_LENGTH
from devpi_tokens.tokens import PREFIX
from devpi_tokens.tokens import Token
from devpi_tokens.tokens import looks_like_token
from devpi_tokens.tokens import new_token_id
from devpi_tokens.tokens import split_identifier

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000
# pypitoken only accepts lowercase UUIDs as the value of a [3, ...] caveat
UUID_USER = "0d6a1e4c-4c1c-4c8a-9b44-2f6d7e8a9b10"


def mint(*restrictions, user="alice"):
    return Token.mint(user, new_token_id(), KEY, restrictions)


def test_mint_load_round_trip():
    token = mint(r.ValidityWindow(NOW + 60, NOW), r.Indexes(("alice/dev",)))
    assert token.raw.startswith(PREFIX)
    loaded = Token.load(token.dump())
    assert loaded == token
    assert (loaded.user, loaded.token_id) == ("alice", token.token_id)
    assert loaded.restrictions == token.restrictions
    assert loaded.expires == NOW + 60 and loaded.not_before == NOW
    assert loaded.verify_signature(KEY)
    assert not loaded.verify_signature(b"another key of enough length....")


def test_user_names_with_dashes():
    token = mint(user="my-ci-user")
    assert Token.load(token.raw).user == "my-ci-user"
    assert split_identifier("a-b-c1") == ("a-b", "c1")
    for bad in ("nodash", "-id", "user-", "user-id-with/slash"):
        with pytest.raises(MalformedToken):
            split_identifier(bad)


def test_token_ids_are_short_random_and_dashless():
    ids = {new_token_id() for _ in range(200)}
    assert len(ids) == 200
    assert all("-" not in i and 6 <= len(i) <= 16 for i in ids)


def test_derive_appends_and_keeps_signature_valid():
    token = mint(r.ValidityWindow(NOW + 600, NOW))
    derived = token.derive(r.ProjectNames(("foo",)), r.Allowed(("upload",)))
    assert derived.restrictions[:1] == token.restrictions
    assert derived.restrictions[1:] == (r.ProjectNames(("foo",)), r.Allowed(("upload",)))
    assert derived.raw != token.raw
    # the parent is untouched
    assert Token.load(token.raw).restrictions == token.restrictions
    assert Token.load(derived.raw).verify_signature(KEY)


def test_check_signature_then_restrictions():
    token = mint(r.ProjectNames(("foo",)))
    ok = Context(user="alice", now=NOW, permission="upload", project="foo")
    assert token.check(KEY, ok)
    refused = token.check(KEY, Context(user="alice", now=NOW, permission="upload", project="bar"))
    assert refused.reason == "token not valid for project 'bar'"
    forged = token.check(b"x" * 32, ok)
    assert not forged and "signature" in forged.reason


def test_removing_a_caveat_breaks_the_signature():
    token = mint(r.ProjectNames(("foo",)), r.Allowed(("pkg_read",)))
    # rebuild the macaroon without its last caveat but with the old signature
    macaroon = pymacaroons.Macaroon(
        location="", identifier=token.macaroon.identifier, key=b"whatever",
        version=pymacaroons.MACAROON_V2)
    macaroon.add_first_party_caveat(token.macaroon.caveats[0].caveat_id)
    macaroon.signature = token.macaroon.signature
    stripped = Token.load(PREFIX + macaroon.serialize())
    assert stripped.restrictions == token.restrictions[:1]
    assert not stripped.verify_signature(KEY)


# ------------------------------------------------------------- pypitoken interop

def test_our_token_loads_in_pypitoken_with_equal_restrictions():
    token = Token.mint(UUID_USER, new_token_id(), KEY, [
        r.ValidityWindow(NOW + 60, NOW), r.ProjectNames(("foo", "bar")), r.UserName(UUID_USER)])
    theirs = pypitoken.Token.load(token.dump())
    assert theirs.prefix == "devpi"
    assert theirs.restrictions == [
        pypitoken.DateRestriction(not_before=NOW, not_after=NOW + 60),
        pypitoken.ProjectNamesRestriction(project_names=["foo", "bar"]),
        pypitoken.UserIDRestriction(user_id=UUID_USER),
    ]
    theirs.check(KEY, project_name="foo", user_id=UUID_USER, now=NOW + 1)


def test_pypitoken_rejects_plain_usernames_in_user_caveat():
    # Documented limitation: pypitoken only knows UUID user ids, so a
    # [3, "alice"] caveat makes its .restrictions fail.  New tokens never
    # carry a user caveat by default for that reason.
    theirs = pypitoken.Token.load(mint(r.UserName("alice")).dump())
    with pytest.raises(pypitoken.LoaderError):
        theirs.restrictions  # noqa: B018


def test_pypitoken_narrowed_token_parses_here_with_same_meaning():
    token = mint(r.ValidityWindow(NOW + 3600, NOW))
    theirs = pypitoken.Token.load(token.dump())
    theirs.restrict(project_names=["foo"], not_before=NOW + 5, not_after=NOW + 65)
    theirs.restrict(user_id=UUID_USER)
    ours = Token.load(theirs.dump())
    assert set(ours.restrictions[1:]) == {
        r.ProjectNames(("foo",)), r.ValidityWindow(NOW + 65, NOW + 5), r.UserName(UUID_USER)}
    assert ours.verify_signature(KEY)
    assert ours.expires == NOW + 65
    upload = dict(user=UUID_USER, permission="upload")
    assert r.check_all(ours.restrictions, Context(now=NOW + 10, project="foo", **upload))
    assert not r.check_all(ours.restrictions, Context(now=NOW + 70, project="foo", **upload))
    assert not r.check_all(ours.restrictions, Context(now=NOW + 10, project="bar", **upload))


def test_pypitoken_legacy_restrictions_parse_here():
    token = mint()
    theirs = pypitoken.Token.load(token.dump())
    theirs.restrict(legacy_noop=True)
    theirs.restrict(legacy_project_names=["foo"], legacy_not_before=NOW, legacy_not_after=NOW + 60)
    ours = Token.load(theirs.dump())
    assert set(ours.restrictions) == {
        r.LegacyNoop(), r.LegacyProjectNames(("foo",)), r.LegacyDate(NOW, NOW + 60)}
    assert ours.verify_signature(KEY)


def test_pypitoken_project_ids_are_never_met():
    theirs = pypitoken.Token.load(mint().dump())
    theirs.restrict(project_ids=["00000000-0000-0000-0000-000000000000"])
    ours = Token.load(theirs.dump())
    result = r.check_all(ours.restrictions, Context(user="alice", now=NOW, project="foo"))
    assert not result and "project ids" in result.reason


def test_devpi_client_upload_narrowing_round_trips():
    # devpi-client's own derive_token uses pypitoken on the login password
    from devpi.main import Hub
    token = mint(r.ValidityWindow(NOW + 3600, NOW - 10))

    class Args:
        debug = False
        quiet = True
    hub = Hub.__new__(Hub)
    hub.args = Args()
    hub.quiet = True
    hub.info = lambda *a, **k: None
    hub.debug = lambda *a, **k: None
    narrowed = Token.load(hub.derive_token(token.dump(), "foo", now=NOW))
    assert narrowed.raw != token.raw
    assert set(narrowed.restrictions[1:]) == {
        r.ProjectNames(("foo",)), r.ValidityWindow(NOW + 60, NOW - 1)}
    assert narrowed.verify_signature(KEY)


# ------------------------------------------------------------- fail closed

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_malformed_token_strings():
    good = mint(r.ProjectNames(("foo",))).raw
    bad_inputs = [
        "", "devpi-", "devpi-!!!!", "devpi-" + "A" * 10, "pypi-" + good[6:10],
        good[:len(good) // 2], good[:-3] + "===", "devpi-" + _b64(b"\x02" + b"\xff" * 40),
        "devpi-" + "A" * (MAX_TOKEN_LENGTH + 1), "devpi-" + "ü" * 20,
    ]
    for raw in bad_inputs:
        with pytest.raises(MalformedToken) as excinfo:
            Token.load(raw)
        assert str(excinfo.value)
    with pytest.raises(MalformedToken):
        Token.load(b"devpi-abc")  # type: ignore[arg-type]


def _macaroon_with(identifier: bytes, *caveats: bytes) -> str:
    macaroon = pymacaroons.Macaroon(
        location="", identifier=identifier, key=KEY, version=pymacaroons.MACAROON_V2)
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat)
    return PREFIX + macaroon.serialize()


@pytest.mark.parametrize(("identifier", "caveats", "message"), [
    (b"alice-abc", [b"[9,1]"], "invalid restriction"),
    (b"alice-abc", [b"[0,1.5,0]"], "integer"),
    (b"alice-abc", [b"[" * 3000 + b"]" * 3000], "invalid restriction"),
    (b"alice-abc", [b'["devpi:allowed",[]]'], "empty"),
    (b"alice-abc", [b"[1,[\"a\"]]"] * 65, "more than 64"),
    (b"\xff\xfe-abc", [], "UTF-8"),
    (b"noseparator", [], "identifier"),
])
def test_tokens_with_junk_fail_closed(identifier, caveats, message):
    with pytest.raises(MalformedToken, match=message):
        Token.load(_macaroon_with(identifier, *caveats))


def test_non_utf8_caveat_inside_a_token_fails_closed():
    # pymacaroons refuses to add such a caveat, so patch the serialized bytes
    raw = _macaroon_with(b"alice-abc", b'[1,["A"]]')
    data = base64.urlsafe_b64decode(raw[6:] + "==").replace(b'["A"]', b'["\xff"]')
    with pytest.raises(MalformedToken, match="UTF-8"):
        Token.load(PREFIX + _b64(data))


def test_trailing_data_after_the_signature_is_refused():
    good = mint(r.ProjectNames(("foo",))).raw
    with pytest.raises(MalformedToken, match="extra or altered data"):
        Token.load(good + "AAAA")
    for junk in ("A", "_w", "AAAAAAAA"):
        with pytest.raises(MalformedToken):
            Token.load(good + junk)
    assert Token.load(good + "=").raw == good + "="


def test_third_party_caveats_refused():
    macaroon = pymacaroons.Macaroon(
        location="", identifier="alice-abc", key=KEY, version=pymacaroons.MACAROON_V2)
    macaroon.add_third_party_caveat("elsewhere", b"k" * 32, "tp")
    with pytest.raises(MalformedToken, match="third-party"):
        Token.load(PREFIX + macaroon.serialize())


def test_flipped_bytes_never_verify():
    token = mint(r.ProjectNames(("foo",)))
    data = bytearray(base64.urlsafe_b64decode(token.raw[6:] + "=="))
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        try:
            loaded = Token.load(PREFIX + _b64(bytes(flipped)))
        except MalformedToken:
            continue
        assert not (loaded.verify_signature(KEY) and loaded.restrictions == token.restrictions
                    and loaded.identifier == token.identifier)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_load_or_raise_malformed(data):
    try:
        loaded = Token.load(PREFIX + _b64(data))
    except MalformedToken:
        return
    assert not loaded.verify_signature(KEY)


@given(st.text(max_size=100))
def test_random_text_load_or_raise_malformed(text):
    try:
        Token.load(text)
    except MalformedToken:
        pass


def test_bare_macaroon_of_1x_derivation_loads():
    token = mint(r.V1Expires(NOW + 60))
    bare = token.raw[len(PREFIX):]
    assert looks_like_token(bare)
    assert Token.load(bare).restrictions == token.restrictions
    assert Token.load(bare).verify_signature(KEY)
    assert looks_like_token(token.raw)
    assert not looks_like_token("correct horse battery staple")
    assert not looks_like_token("x" * 60)
