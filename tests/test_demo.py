"""The README's demo (docs/demo.sh) runs the whole flow and catches both tamperings.

The demo checks its own outcome (checksig: a changed header is BAD; the view:
a changed store file gives EIO; verify reports it) and exits non-zero
otherwise; here it runs without its setup step.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.prereq import require, require_btrfs, require_fuse, require_tools

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs():
    require_tools("rpmbuild", "rpmsign", "rpmkeys", "gpg", "gpgconf")
    require_btrfs()
    require_fuse()
    require((REPO / ".venv" / "bin" / "usrview").exists(),
            "the demo uses .venv/bin/usrview: run .ci/setup (pip install -e '.[test]')")
    r = subprocess.run(["bash", str(REPO / "docs" / "demo.sh")], capture_output=True, text=True,
                       env={**os.environ, "USRVIEW_DEMO_NO_SETUP": "1"}, stdin=subprocess.DEVNULL,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tampered.rpm: BAD" in r.stdout
    assert "tampered.rpm: DIGESTS SIGNATURES NOT OK" in r.stdout  # rpmkeys agrees
    assert "hello from a usrview view: Hello, world (greeting 1.1)" in r.stdout
    assert "message.txt: Input/output error" in r.stdout
    assert "..5....T.    /usr/share/greeting/message.txt" in r.stdout
    assert "upgraded    greeting 1.0-1 -> 1.1-1" in r.stdout
