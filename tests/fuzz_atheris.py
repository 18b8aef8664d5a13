"""Coverage-guided fuzzing of the caveat parser and the token loader (atheris).

Run directly, bounded by libFuzzer's options::

    python tests/fuzz_atheris.py -runs=50000 -max_len=4096

Properties, for every input:
- ``parse_caveat`` returns a restriction or raises ``MalformedCaveat``;
  a restriction writes a caveat that parses back to itself, and describing
  or checking it never raises;
- ``Token.load`` returns a token or raises ``MalformedToken``; a loaded
  token dumps back to the same string.

Any other exception is a crash: libFuzzer prints it and exits non-zero.
``tests/test_hostile_fuzz.py`` runs a short, bounded session when atheris
is installed (``pip install atheris``).  With ``DEVPI_TOKENS_FUZZ_CORPUS=DIR``
the run starts from valid caveats and tokens written to DIR (and keeps its
corpus there).
"""
from __future__ import annotations

import base64
import os
import pathlib
import sys

import atheris

with atheris.instrument_imports():
    from devpi_tokens.restrictions import Context
    from devpi_tokens.restrictions import MalformedCaveat
    from devpi_tokens.restrictions import MalformedToken
    from devpi_tokens.restrictions import parse_caveat
    from devpi_tokens.tokens import PREFIX
    from devpi_tokens.tokens import Token


NOW = 1_800_000_000
CONTEXTS = (
    Context(user="alice", now=NOW),
    Context(user="alice", now=NOW, permission="upload", indexes=("alice/dev",), project="Pkg"),
    Context(user="bob", now=0, permission="pkg_read"),
)


def check_caveat(data: bytes) -> None:
    try:
        restriction = parse_caveat(data)
    except MalformedCaveat:
        return
    again = parse_caveat(restriction.dump())
    if again != restriction:
        raise AssertionError(f"{data!r} -> {restriction!r} does not round-trip: {again!r}")
    restriction.describe(NOW)
    restriction.describe()
    for ctx in CONTEXTS:
        restriction.check(ctx)


def check_token(text: str) -> None:
    try:
        token = Token.load(text)
    except MalformedToken:
        return
    if token.dump() != text:
        raise AssertionError(f"{text!r} loads but dumps as {token.dump()!r}")
    for restriction in token.restrictions:
        restriction.describe(NOW)


def test_one_input(data: bytes) -> None:
    # first byte picks the target, the rest is the input
    choice, rest = (data[0] % 3, data[1:]) if data else (0, b"")
    if choice == 0:
        check_caveat(rest)
    elif choice == 1:
        check_token(rest.decode("latin-1"))
    else:
        # a prefixed base64 body of arbitrary bytes: exercises the decoder
        check_token(PREFIX + base64.urlsafe_b64encode(rest).decode().rstrip("="))


SEED_CAVEATS = [
    "[0,1900000000,1700000000]", '[1,["pkg","Other_Pkg"]]', '[2,["6f1c"]]', '[3,"alice"]',
    '["devpi:indexes",["alice/dev"]]', '["devpi:allowed",["upload","pkg_read"]]',
    '{"version":1,"permissions":"user"}', '{"version":1,"permissions":{"projects":["a"]}}',
    '{"nbf":1700000000,"exp":1900000000}', "expires=1900000000", "expires=never",
    "not_before=1700000000", "projects=a,b", "indexes=alice/dev,bob/prod", "allowed=upload",
]


def write_seeds(directory: str) -> None:
    """Valid caveats and tokens, so the fuzzer starts from real structure."""
    from devpi_tokens.restrictions import parse_caveat as parse

    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    restrictions = [parse(c) for c in SEED_CAVEATS]
    token = Token.mint("alice", "abc123def0", b"k" * 32, restrictions[:6])
    seeds = [b"\x00" + c.encode() for c in SEED_CAVEATS]
    seeds += [b"\x01" + token.dump().encode(), b"\x01" + token.dump()[len(PREFIX):].encode()]
    seeds += [b"\x02" + base64.urlsafe_b64decode(token.dump()[len(PREFIX):] + "==")]
    for number, seed in enumerate(seeds):
        (path / f"seed-{number:02d}").write_bytes(seed)


def main() -> None:
    seeds = os.environ.get("DEVPI_TOKENS_FUZZ_CORPUS")
    if seeds:
        write_seeds(seeds)
        sys.argv.append(seeds)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
