"""Static checks as part of the test run: ruff, and mypy --strict.

CI runs the test suite only (``.ci/run`` -> ``quickstart.py test``), so the
linters run here, from the same virtual environment as the tests (the test
extra installs both).  Their settings live in pyproject.toml.
"""
from __future__ import annotations

from pathlib import Path
import subprocess
import sys

import pytest


ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _check(args: list[str]) -> None:
    """Run a linter; fail with its whole output when it finds anything."""
    result = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} (exit {result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False)


def test_ruff() -> None:
    _check([str(BIN / "ruff"), "check", "devpi_tokens", "tests", "quickstart.py"])


def test_mypy(tmp_path: Path) -> None:
    # files and strictness come from [tool.mypy]; the cache stays out of the tree
    _check([str(BIN / "mypy"), "--cache-dir", str(tmp_path / "mypy_cache")])


def test_readme_is_valid_restructuredtext():
    """A broken table or link in the README is an error, not a silent mess on PyPI."""
    import docutils.core
    import docutils.utils

    text = (ROOT / "README.rst").read_text()
    try:
        docutils.core.publish_string(
            text, writer_name="null",
            settings_overrides={"report_level": 2, "halt_level": 2})
    except docutils.utils.SystemMessage as exc:
        pytest.fail(f"README.rst: {exc}")
