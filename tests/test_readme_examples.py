"""The README's console examples are what the commands really print.

A scenario runs every documented ``devpi`` command (and the hidden steps
that put the server in the state the README describes) against a real
devpi-server with the plugin.  Then every ``$ devpi ...`` line of the
README's console blocks is matched, in order, to a scenario step with the
same command, and the output shown under it must be that step's output,
line for line, with ids, times, durations, epoch seconds, tokens and the
server URL as placeholders.  A line ``...`` stands for any lines; a token
ending in ``...`` for any token.  A command shown without output is only
checked to be part of the scenario.  Blocks right after the comment
``.. sketch (not run)`` are not checked.

Set ``README_EXAMPLES_SHOW=1`` to print the real transcript (to refresh the
README from a real run).
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from devpi_process import DevpiClient
from devpi_process import start_server
from devpi_tokens.quickstart_server import write_wheel

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parent.parent / "README.rst"
PASSWORD = "s3cret"  # as the README shows it
EXAMPLE_URLS = ("https://devpi.example.com", "http://127.0.0.1:3141")
SKETCH = ".. sketch (not run)"

#: Every documented command, in a real order, with the hidden steps that
#: make the README's story true.  ``{name}`` is the id of the token created
#: by the step named ``name``.
SCENARIO: list[tuple[str | None, str]] = [
    ("ci", 'devpi token-create -p mypkg -e 90d -d "CI upload of mypkg" -o ci.token'),
    # hidden: a use of the CI token, for token-list's "used" line
    (None, "devpi token-login -f ci.token"),
    (None, "devpi getjson /alice/dev"),
    (None, f"devpi login alice --password {PASSWORD}"),
    ("ro", 'devpi token-create -i alice/dev -a pkg_read -d "read-only for pip"'),
    (None, "devpi token-create -e never"),
    (None, "devpi token-derive -f ci.token -e 1h -o job.token"),
    (None, 'devpi token-derive -f ci.token -e "1 year" -o year.token'),
    (None, 'devpi token-derive -f ci.token -p "foo bar"'),
    (None, "devpi token-inspect -f job.token"),
    (None, "devpi token-inspect -f job.token --json"),
    (None, "devpi token-list"),
    (None, "devpi token-delete {ro}"),
    (None, "devpi token-delete {ro}"),
    (None, "devpi use {url}/alice/dev"),
    (None, "devpi token-login -f job.token"),
    (None, "devpi upload dist/mypkg-1.0-py3-none-any.whl"),
    (None, "devpi upload dist/other-1.0-py3-none-any.whl"),
    (None, f"devpi login alice --password {PASSWORD}"),
    (None, "devpi token-delete {ci}"),
    (None, "devpi token-login -f job.token"),
    # the upload section's example: a token for one demo project
    (None, f"devpi login alice --password {PASSWORD}"),
    ("demo", "devpi token-create -p tokendemo-hello -e 1d -o demo.token"),
    (None, "devpi token-login -f demo.token"),
    (None, "devpi upload --index alice/demo dist/tokendemo_hello-1.0-py3-none-any.whl"),
    (None, "devpi upload --index alice/demo dist/tokendemo_other-1.0-py3-none-any.whl"),
]


@dataclass
class Step:
    command: str
    output: list[str]


@dataclass
class Example:
    line_number: int
    command: str
    output: list[str]


# --------------------------------------------------------------------------
# placeholders

_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")
_DURATION = re.compile(r"\b\d+ (?:years?|days?|hours?|minutes?|seconds?)\b")
_EPOCH = re.compile(r"\b1\d{9}\b")
_TOKEN = re.compile(r"devpi-[A-Za-z0-9_-]{10,}(?:\.\.\.)?")
_README_ID = re.compile(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{10}\b")


def normalize(line: str, url: str, ids: set[str]) -> str:
    for known in (url, *EXAMPLE_URLS):
        line = line.replace(known, "URL")
    line = _TOKEN.sub("TOKEN", line)
    for token_id in ids:
        line = line.replace(token_id, "ID")
    line = _README_ID.sub("ID", line)
    line = _TIME.sub("TIME", line)
    line = _DURATION.sub("DURATION", line)
    line = _EPOCH.sub("EPOCH", line)
    return line.rstrip()


def command_key(command: str, url: str, ids: set[str]) -> str:
    words = shlex.split(command, comments=True)
    return normalize(shlex.join(words), url, ids)


def lines_match(expected: list[str], actual: list[str]) -> bool:
    """``expected`` against ``actual``; an expected ``...`` line matches any lines."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() == "...":
        return any(lines_match(rest, actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and head == actual[0] and lines_match(rest, actual[1:])


# --------------------------------------------------------------------------
# the README's examples

def readme_examples() -> list[Example]:
    examples: list[Example] = []
    lines = README.read_text().splitlines()
    previous = ""
    for number, line in enumerate(lines):
        if line.strip() == ".. code-block:: console" and previous.strip() != SKETCH:
            examples += _block_examples(lines, number + 1)
        if line.strip():
            previous = line
    return examples


def _block_examples(lines: list[str], start: int) -> list[Example]:
    examples: list[Example] = []
    current: Example | None = None
    for number in range(start, len(lines)):
        line = lines[number]
        if line.strip() and not line.startswith("    "):
            break
        text = line[4:]
        if text.startswith("$ "):
            current = None
            if text.startswith("$ devpi "):
                current = Example(number + 1, text[2:], [])
                examples.append(current)
        elif current is not None and (text.strip() or current.output):
            current.output.append(text)
    for example in examples:
        while example.output and not example.output[-1].strip():
            example.output.pop()
    return examples


# --------------------------------------------------------------------------
# the real run

@pytest.fixture(scope="module")
def transcript(tmp_path_factory) -> tuple[list[Step], str, set[str]]:
    base = tmp_path_factory.mktemp("readme")
    server = start_server(base / "server")
    try:
        work = base / "work"
        for name in ("mypkg", "other", "tokendemo-hello", "tokendemo-other"):
            write_wheel(work / "dist", name, "1.0")
        client = DevpiClient(base / "client", server.url)
        client.run("use", server.url)
        client.run("user", "-c", "alice", f"password={PASSWORD}")
        client.run("login", "alice", "--password", PASSWORD)
        for index in ("dev", "demo"):
            client.run("index", "-c", f"alice/{index}", "bases=")
        client.run("use", f"{server.url}/alice/dev")
        steps, ids = run_scenario(client, server.url, work)
    finally:
        server.stop()
    if os.environ.get("README_EXAMPLES_SHOW"):
        for step in steps:
            print(f"\n$ {step.command}\n" + "\n".join(step.output))
    return steps, server.url, ids


def run_scenario(client: DevpiClient, url: str, work: Path) -> tuple[list[Step], set[str]]:
    names: dict[str, str] = {}
    steps = []
    for name, template in SCENARIO:
        command = template.format(url=url, **names)
        args = shlex.split(command)[1:]
        proc = client.run(*args, check=False, cwd=work, merge_output=True)
        output = proc.stdout.rstrip("\n").splitlines()
        steps.append(Step(command, output))
        if name is not None:
            found = re.search(r"created token ([0-9a-f]+) ", proc.stdout)
            assert found, "\n".join(f"$ {s.command}\n" + "\n".join(s.output) for s in steps)
            names[name] = found.group(1)
    return steps, set(names.values())


def test_every_readme_example_is_a_real_run(transcript):
    steps, url, ids = transcript
    unused = [(command_key(step.command, url, ids), step) for step in steps]
    checked = 0
    for example in readme_examples():
        key = command_key(example.command, url, ids)
        match = next((i for i, (k, _) in enumerate(unused) if k == key), None)
        assert match is not None, (
            f"README.rst:{example.line_number}: `{example.command}` is not part of the "
            f"scenario in {Path(__file__).name} (or is shown more often than it runs)")
        _, step = unused.pop(match)
        if not example.output:
            continue
        expected = [normalize(line, url, ids) for line in example.output]
        actual = [normalize(line, url, ids) for line in step.output]
        assert lines_match(expected, actual), (
            f"README.rst:{example.line_number}: `{example.command}` prints\n"
            + "\n".join(step.output) + "\n\nbut the README shows\n" + "\n".join(example.output))
        checked += 1
    assert checked >= 15


def test_placeholders_keep_what_matters():
    """The comparison is not blind: only ids, times and tokens are free."""
    ids, url = {"0123456789"}, "http://127.0.0.1:1234"
    assert normalize("created token 95562446fa for user alice", url, set()) == \
        "created token ID for user alice"
    assert normalize("token 0123456789 of user bob", url, ids) == "token ID of user bob"
    assert normalize("valid until 2027-02-19 06:42 UTC (in 90 days)", url, ids) == \
        "valid until TIME (in DURATION)"
    assert normalize(f"to {url}/alice/dev/", url, ids) == "to URL/alice/dev/"
    assert not lines_match(["only projects: mypkg"], ["only projects: other"])
    assert not lines_match(["a", "...", "z"], ["a", "b"])
    assert lines_match(["a", "...", "z"], ["a", "b", "c", "z"])
