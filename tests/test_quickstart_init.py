"""The quick start's first run: devpi-init with a random root password."""
from __future__ import annotations

import json

from devpi_tokens.quickstart_server import DemoDir


def test_a_root_password_starting_with_a_dash_is_one_argument(tmp_path):
    # secrets.token_urlsafe makes one in 64 passwords start with "-": devpi-init
    # must not take it for an option (it failed with "expected one argument")
    demo = DemoDir(tmp_path / "demo")
    demo.root.mkdir()
    demo.init_server("-x" + "a" * 14)
    assert (demo.serverdir / ".serverversion").exists()
    assert json.loads((demo.serverdir / ".nodeinfo").read_text())["role"]
