"""The shared restriction module: formats, round trips, checks, fail closed."""
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devpi_tokens import restrictions as r
from devpi_tokens.restrictions import Context
from devpi_tokens.restrictions import MalformedCaveat
from devpi_tokens.restrictions import parse_caveat

NOW = 1_800_000_000

int64 = st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
text = st.text(min_size=1, max_size=30).filter(lambda s: s == s.strip() and s)
plain = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._]{0,20}", fullmatch=True)
index_name = st.builds(lambda u, i: f"{u}/{i}", plain, plain)
names = st.lists(text, min_size=1, max_size=5).map(tuple)
plain_names = st.lists(plain, min_size=1, max_size=5).map(tuple)
indexes = st.lists(index_name, min_size=1, max_size=5).map(tuple)

restriction_values = st.one_of(
    st.builds(r.ValidityWindow, not_after=int64, not_before=int64),
    st.builds(r.ProjectNames, names),
    st.builds(r.ProjectIDs, names),
    st.builds(r.UserName, text),
    st.builds(r.Indexes, indexes),
    st.builds(r.Allowed, names),
    st.just(r.LegacyNoop()),
    st.builds(r.LegacyProjectNames, names),
    st.builds(r.LegacyDate, not_before=int64, not_after=int64),
    st.builds(r.V1Expires, st.none() | st.integers(0, 2 ** 40)),
    st.builds(r.V1NotBefore, st.integers(0, 2 ** 40)),
    st.builds(r.V1Projects, plain_names),
    st.builds(r.V1Indexes, indexes),
    st.builds(r.V1Allowed, plain_names),
)


@given(restriction_values)
def test_every_kind_round_trips(restriction):
    caveat = restriction.dump()
    assert parse_caveat(caveat) == restriction
    assert parse_caveat(caveat.encode("utf-8")) == restriction
    bad_names = [
        name for name in getattr(restriction, "names", ())
        if r.project_name_problem(name) is not None]
    if bad_names:
        # parsing accepts what others minted; building refuses invalid names
        with pytest.raises(r.MalformedCaveat, match="not a valid project name"):
            r.validated(restriction)
    else:
        assert r.validated(restriction) is restriction
    assert isinstance(restriction.describe(NOW), str) and restriction.describe(NOW)


@pytest.mark.parametrize(("value", "caveat"), [
    (r.ValidityWindow(not_after=200, not_before=100), "[0,200,100]"),
    (r.ProjectNames(("foo", "bar")), '[1,["foo","bar"]]'),
    (r.ProjectIDs(("abc",)), '[2,["abc"]]'),
    (r.UserName("alice"), '[3,"alice"]'),
    (r.Indexes(("alice/dev",)), '["devpi:indexes",["alice/dev"]]'),
    (r.Allowed(("pkg_read", "upload")), '["devpi:allowed",["pkg_read","upload"]]'),
    (r.LegacyNoop(), '{"version":1,"permissions":"user"}'),
    (r.LegacyProjectNames(("foo",)), '{"version":1,"permissions":{"projects":["foo"]}}'),
    (r.LegacyDate(not_before=100, not_after=200), '{"nbf":100,"exp":200}'),
    (r.V1Expires(200), "expires=200"),
    (r.V1Expires(None), "expires=never"),
    (r.V1NotBefore(100), "not_before=100"),
    (r.V1Projects(("a", "b")), "projects=a,b"),
    (r.V1Indexes(("u/i", "u/j")), "indexes=u/i,u/j"),
    (r.V1Allowed(("p", "q")), "allowed=p,q"),
])
def test_exact_caveat_format(value, caveat):
    assert value.dump() == caveat
    assert parse_caveat(caveat) == value


def test_spaced_json_from_other_writers_parses():
    # pypitoken writes json.dumps() with spaces; we write compact JSON.
    assert parse_caveat("[0, 200, 100]") == r.ValidityWindow(200, 100)
    assert parse_caveat('{"version": 1, "permissions": "user"}') == r.LegacyNoop()


def test_values_compare_and_print():
    assert r.ProjectNames(("a",)) == r.ProjectNames(("a",))
    assert r.ProjectNames(("a",)) != r.LegacyProjectNames(("a",))
    assert "ProjectNames" in repr(r.ProjectNames(("a",)))
    assert str(r.ProjectNames(("a", "b"))) == "only projects: a, b"


MALFORMED = [
    "", "[]", "{}", "null", "1", '"text"', "[0]", "[0,1]", "[0,1,2,3]",
    "[0,1.5,0]", "[0,NaN,0]", "[0,Infinity,0]", "[0,-Infinity,0]",
    "[0,true,0]", "[0,1,false]", '[0,"1",0]', "[0,1e3,0]",
    f"[0,{2 ** 63},0]", f"[0,1,{-(2 ** 63) - 1}]",
    "[1,[]]", "[1,[1]]", '[1,"foo"]', "[1,[null]]", '[1,[""]]', '[1,["foo"],1]',
    '[1,[["nested"]]]', '[1,[" foo"]]', "[2,[]]", "[3,1]", '[3,""]', "[3,null]",
    "[4,1]", "[-1,1]", '["unknown",1]', "[true,[\"foo\"]]", "[[0],1,2]", "[null]",
    '["devpi:indexes",[]]', '["devpi:indexes",["noslash"]]', '["devpi:indexes",["a/b/c"]]',
    '["devpi:indexes",["/b"]]', '["devpi:indexes",[1]]', '["devpi:allowed",[]]',
    '["devpi:allowed","upload"]', '["devpi:allowed",["upload"],"x"]',
    '{"version":2,"permissions":"user"}', '{"version":1,"permissions":"admin"}',
    '{"version":1,"permissions":{"projects":[]}}',
    '{"version":1,"permissions":{"projects":["a"],"x":1}}',
    '{"version":1,"permissions":"user","extra":1}', '{"version":true,"permissions":"user"}',
    '{"nbf":1}', '{"nbf":1,"exp":2,"x":3}', '{"nbf":1.0,"exp":2}', '{"nbf":1,"exp":"2"}',
    '{"nbf":1,"nbf":1,"exp":2}', "[0,1,2] trailing", "[0,1,2",
    "expires=", "expires=soon", "expires=1.5", "expires=-", "not_before=never",
    "projects=", "projects=a,,b", "indexes=nouser", "allowed=", "color=red",
    "no equals sign", "=1", "EXPIRES=1", "expires=" + "9" * 30,
]


@pytest.mark.parametrize("caveat", MALFORMED)
def test_malformed_caveats_fail_closed(caveat):
    with pytest.raises(MalformedCaveat) as excinfo:
        parse_caveat(caveat)
    assert str(excinfo.value)


def test_non_utf8_and_oversize_and_deep_nesting():
    with pytest.raises(MalformedCaveat, match="UTF-8"):
        parse_caveat(b"[1,[\"\xff\xfe\"]]")
    with pytest.raises(MalformedCaveat, match="longer"):
        parse_caveat("[1,[" + ",".join(['"a"'] * 5000) + "]]")
    with pytest.raises(MalformedCaveat):
        parse_caveat("[" * 4000 + "]" * 4000)
    with pytest.raises(MalformedCaveat):
        parse_caveat(12)  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_only_malformed(caveat):
    try:
        value = parse_caveat(caveat)
    except MalformedCaveat:
        return
    # whatever parses must write back to something meaning the same
    assert parse_caveat(value.dump()) == value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)),
    max_leaves=20)


@given(json_values)
def test_arbitrary_json_parses_or_raises_only_malformed(value):
    try:
        parse_caveat(json.dumps(value))
    except MalformedCaveat:
        pass


# ---------------------------------------------------------------- checking

def ctx(**kw):
    kw.setdefault("user", "alice")
    kw.setdefault("now", NOW)
    return Context(**kw)


def test_window_met_and_not_met_with_time_in_reason():
    window = r.ValidityWindow(not_after=NOW + 10, not_before=NOW - 10)
    assert window.check(ctx())
    assert window.check(ctx(now=NOW - 10))
    expired = window.check(ctx(now=NOW + 10))
    assert not expired and expired.reason == "token expired at 2027-01-15 08:00 UTC"
    early = window.check(ctx(now=NOW - 11))
    assert not early and "not valid before 2027-01-15 07:59 UTC" in early.reason
    assert not r.LegacyDate(not_before=0, not_after=NOW).check(ctx())
    assert not r.V1Expires(NOW).check(ctx())
    assert r.V1Expires(None).check(ctx(now=2 ** 62))
    assert not r.V1NotBefore(NOW + 1).check(ctx())


@pytest.mark.parametrize("cls", [r.ProjectNames, r.LegacyProjectNames, r.V1Projects])
def test_projects_normalized_and_read_only_without_project(cls):
    only = cls(("Foo.Bar",))
    assert only.check(ctx(permission="upload", project="foo-bar"))
    assert only.check(ctx(permission="upload", project="FOO_bar"))
    refused = only.check(ctx(permission="upload", project="bar"))
    assert not refused and refused.reason == "token not valid for project 'bar'"
    assert only.check(ctx(permission="pkg_read"))
    assert only.check(ctx(permission=None))
    assert not only.check(ctx(permission="index_modify"))
    assert not only.check(ctx(permission="index_create"))


@pytest.mark.parametrize("cls", [r.Indexes, r.V1Indexes])
def test_indexes_all_touched_must_be_allowed(cls):
    only = cls(("alice/dev",))
    assert only.check(ctx(permission="upload", indexes=("alice/dev",)))
    refused = only.check(ctx(permission="upload", indexes=("alice/dev", "alice/prod")))
    assert not refused and refused.reason == "token not valid for index 'alice/prod'"
    assert only.check(ctx(permission="pkg_read"))
    assert not only.check(ctx(permission="index_create"))


@pytest.mark.parametrize("cls", [r.Allowed, r.V1Allowed])
def test_allowed_denies_everything_else(cls):
    only = cls(("pkg_read", "made_up"))
    assert only.check(ctx(permission="pkg_read"))
    assert only.check(ctx(permission=None))
    refused = only.check(ctx(permission="upload"))
    assert not refused and refused.reason == "token does not allow 'upload'"


def test_user_and_project_ids_and_noop():
    assert r.UserName("alice").check(ctx())
    assert not r.UserName("bob").check(ctx())
    refused = r.ProjectIDs(("x",)).check(ctx(project="foo"))
    assert not refused and "project ids" in refused.reason
    assert r.LegacyNoop().check(ctx(permission="upload", project="x"))


def test_check_all_reports_first_failure():
    values = [r.Allowed(("upload",)), r.ProjectNames(("foo",))]
    assert r.check_all(values, ctx(permission="upload", project="foo"))
    result = r.check_all(values, ctx(permission="upload", project="bar"))
    assert result.reason == "token not valid for project 'bar'"
    assert r.check_all([], ctx())


def test_expiry_and_not_before_of():
    values = [r.ValidityWindow(300, 100), r.V1Expires(200), r.V1NotBefore(150)]
    assert r.expiry_of(values) == 200
    assert r.not_before_of(values) == 150
    assert r.expiry_of([r.V1Expires(None)]) is None


def test_describe_in_words():
    window = r.ValidityWindow(not_after=NOW + 23 * 3600, not_before=NOW - 60)
    assert window.describe(NOW) == "valid until 2027-01-16 07:00 UTC (in 23 hours)"
    assert window.describe() == (
        "not valid before 2027-01-15 07:59 UTC, valid until 2027-01-16 07:00 UTC")
    assert window.describe(NOW - 120).startswith(
        "not valid before 2027-01-15 07:59 UTC (in 1 minute)")
    assert "expired at" in window.describe(NOW + 2 * 86400)
    assert "2 days ago" in window.describe(NOW + 23 * 3600 + 2 * 86400)
    assert r.Indexes(("a/b",)).describe() == "only indexes: a/b"
    assert r.Allowed(("upload",)).describe() == "only permissions: upload"
    assert r.V1Expires(None).describe() == "never expires"
    assert r.format_time(2 ** 62) == f"epoch {2 ** 62}"
    assert r.describe_relative(NOW + 3 * 86400, NOW) == "in 3 days"


# the listing's summary says exactly what the restrictions allow

summary_kinds = st.one_of(
    st.builds(r.ValidityWindow, not_after=st.integers(0, 100), not_before=st.integers(0, 100)),
    st.builds(r.ProjectNames, st.lists(
        st.sampled_from(["foo", "Foo", "f.o.o", "bar", "baz"]), min_size=1, max_size=3)
        .map(tuple)),
    st.builds(r.Indexes, st.lists(
        st.sampled_from(["a/x", "a/y", "b/x"]), min_size=1, max_size=3).map(tuple)),
    st.builds(r.Allowed, st.lists(
        st.sampled_from(["upload", "pkg_read", "del_entry"]), min_size=1, max_size=3)
        .map(tuple)),
)


@given(
    st.lists(summary_kinds, max_size=6),
    st.integers(0, 100),
    st.sampled_from(["foo", "f-o-o", "bar", "baz", "qux"]),
    st.sampled_from(["a/x", "a/y", "b/x", "c/z"]),
    st.sampled_from(["upload", "pkg_read", "del_entry", "index_modify"]),
)
def test_effective_summary_allows_exactly_what_the_restrictions_allow(
        restrictions, now, project, index, permission):
    effective = r.Effective.of(restrictions)
    ctx = Context(user="a", now=now, permission=permission, indexes=(index,), project=project)
    by_summary = (
        (effective.expires is None or now < effective.expires)
        and (effective.not_before is None or now >= effective.not_before)
        and (effective.projects is None or r.normalize_project(project) in {
            r.normalize_project(p) for p in effective.projects})
        and (effective.indexes is None or index in effective.indexes)
        and (effective.allowed is None or permission in effective.allowed))
    assert bool(r.check_all(restrictions, ctx)) == by_summary
    # and the 1.x strings parse back (as 1.x caveats) to the same summary
    parsed = [parse_caveat(text) for text in effective.v1_strings() if not text.endswith("=")]
    if all(values != () for values in (effective.projects, effective.indexes, effective.allowed)):
        assert r.Effective.of(parsed) == effective


# ---------------------------------------------------------------- client networks

IPS = '["devpi:ips",["192.0.2.0/24","2001:db8::1"]]'

networks = st.lists(st.sampled_from([
    "192.0.2.0/24", "192.0.2.0/25", "192.0.2.128/25", "192.0.2.5", "10.0.0.0/8",
    "0.0.0.0/0", "2001:db8::/32", "2001:db8::1", "::/0", "::ffff:192.0.2.0/120",
]), min_size=1, max_size=4).map(tuple)
addresses = st.sampled_from([
    "192.0.2.5", "192.0.2.200", "10.1.2.3", "203.0.113.9", "::ffff:192.0.2.5",
    "2001:db8::1", "2001:db8::2", "::1", "127.0.0.1",
])


def test_client_networks_parse_dump_describe():
    value = parse_caveat(IPS)
    assert value == r.ClientNetworks(("192.0.2.0/24", "2001:db8::1"))
    assert value.dump() == IPS
    assert r.validated(value) is value
    assert value.describe() == "only from: 192.0.2.0/24, 2001:db8::1"


@given(networks)
def test_client_networks_round_trip(values):
    value = r.ClientNetworks(values)
    assert parse_caveat(value.dump()) == value
    assert r.validated(value) is value


@pytest.mark.parametrize("caveat", [
    '["devpi:ips",["192.0.2.7/24"]]', '["devpi:ips",["2001:db8::1/32"]]',
    '["devpi:ips",["garbage"]]', '["devpi:ips",[]]', '["devpi:ips","192.0.2.0/24"]',
    '["devpi:ips",[1]]', '["devpi:ips",["192.0.2.0/33"]]', '["devpi:ips",["fe80::1%eth0"]]',
    '["devpi:ips",[" 192.0.2.1"]]', '["devpi:ips",["01.2.3.4"]]',
    '["devpi:ips",["192.0.2.0/24"],1]', '["devpi:ips"]',
])
def test_client_networks_malformed(caveat):
    with pytest.raises(MalformedCaveat):
        parse_caveat(caveat)


def test_client_networks_builders_refuse_host_bits():
    with pytest.raises(MalformedCaveat, match="host bits set"):
        r.validated(r.ClientNetworks(("192.0.2.7/24",)))


@pytest.mark.parametrize(("address", "met"), [
    ("192.0.2.5", True), ("::ffff:192.0.2.5", True), ("2001:db8::1", True),
    ("192.0.3.1", False), ("2001:db8::2", False), ("::ffff:203.0.113.9", False),
    ("0.0.0.1", False), ("garbage", False), ("::1", False),
])
def test_client_networks_check(address, met):
    value = parse_caveat(IPS)
    result = value.check(ctx(client_address=address))
    assert bool(result) is met
    if not met:
        assert result.reason == (
            f"token not valid from {address} (allowed: 192.0.2.0/24, 2001:db8::1)")


def test_client_networks_unknown_address_fails_closed():
    result = parse_caveat(IPS).check(ctx())
    assert not result
    assert "client address is not known" in result.reason
    assert "192.0.2.0/24, 2001:db8::1" in result.reason


def test_client_networks_versions_do_not_mix():
    assert not r.ClientNetworks(("::/0",)).check(ctx(client_address="192.0.2.9"))
    assert not r.ClientNetworks(("0.0.0.0/0",)).check(ctx(client_address="2001:db8::1"))
    mapped = r.ClientNetworks(("::ffff:192.0.2.0/120",))
    assert mapped.check(ctx(client_address="::ffff:192.0.2.9"))
    assert not mapped.check(ctx(client_address="192.0.2.9"))


def test_client_networks_check_never_raises_on_bad_values():
    assert not r.ClientNetworks(("192.0.2.7/24",)).check(ctx(client_address="192.0.2.7"))


def test_client_networks_summary():
    a = r.ClientNetworks(("192.0.2.0/24", "2001:db8::1"))
    b = r.ClientNetworks(("192.0.2.0/25", "10.0.0.0/8", "2001:db8::/32"))
    effective = r.Effective.of([a, b])
    assert effective.ips == ("2001:db8::1", "192.0.2.0/25")
    assert "ips=2001:db8::1,192.0.2.0/25" in effective.v1_strings()
    assert r.Effective.of([]).ips is None
    assert r.Effective.of([a]).v1_strings() == ["ips=192.0.2.0/24,2001:db8::1"]


@given(st.lists(networks.map(r.ClientNetworks), min_size=1, max_size=3), addresses)
def test_client_networks_summary_allows_what_the_caveats_allow(caveats, address):
    """For plain (unmapped) networks the summary is exact."""
    summary = r.Effective.of(caveats).ips
    assert summary is not None
    by_caveats = bool(r.check_all(caveats, ctx(client_address=address)))
    by_summary = bool(summary) and bool(
        r.ClientNetworks(summary).check(ctx(client_address=address)))
    if "::ffff:" not in address:
        assert by_caveats == by_summary
    elif by_summary:
        # a mapped client may be left out of the summary, never added
        assert by_caveats
