"""The units in systemd/ pass ``systemd-analyze verify`` without a single message.

systemd-analyze checks that each ExecStart= binary exists.  The units name
/usr/bin/usrview (where a package installs it); where that is absent (a
development checkout), the test writes the units to a scratch directory with
that one path replaced by the virtualenv's ``usrview`` script -- nothing else is
changed, and the substitution is asserted to have happened exactly where
expected.  ``systemd-analyze verify`` exits 0 on an unknown key (it only
warns), so any output at all fails the test.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prereq import require_tools

UNIT_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNITS = sorted(p.name for p in UNIT_DIR.iterdir() if p.suffix in (".service", ".timer"))
INSTALLED = "/usr/bin/usrview"


def _usrview_exe() -> str:
    if Path(INSTALLED).exists():
        return INSTALLED
    venv = Path(sys.executable).parent / "usrview"
    return str(venv) if venv.exists() else shutil.which("usrview") or INSTALLED


def _analyze(unit_dir: Path, names) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *(str(unit_dir / n) for n in names)],
                          capture_output=True, text=True, timeout=120, cwd=unit_dir)


@pytest.fixture
def units(tmp_path) -> Path:
    require_tools("systemd-analyze")
    exe = _usrview_exe()
    for name in UNITS:
        text = (UNIT_DIR / name).read_text()
        if name.endswith(".service"):
            assert f"ExecStart={INSTALLED} " in text, f"{name} must run {INSTALLED}"
        (tmp_path / name).write_text(text.replace(INSTALLED, exe))
    return tmp_path


def test_expected_units_exist():
    assert UNITS == ["usrview-boot-complete.service", "usrview-monitor.service", "usrview-verify.service",
                     "usrview-verify.timer", "usrview-view.service"]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(units, name):
    r = _analyze(units, [name])
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_analyzer_catches_mistakes(units):
    """The check above can fail: a misspelt key and a missing binary are reported."""
    bad = (units / "usrview-verify.service").read_text().replace("ProtectHome=", "ProtectHom=")
    (units / "bad.service").write_text(bad)
    r = _analyze(units, ["bad.service"])
    assert "ProtectHom" in r.stderr
    missing = bad.replace("ProtectHom=", "ProtectHome=").replace(_usrview_exe(), "/nonexistent/usrview")
    (units / "bad2.service").write_text(missing)
    r = _analyze(units, ["bad2.service"])
    assert r.returncode != 0 or r.stderr


def _ini(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string((UNIT_DIR / name).read_text().replace("\\\n", " "))
    return cp


def test_view_unit_contract():
    cp = _ini("usrview-view.service")
    s = cp["Service"]
    assert s["Type"] == "notify" and s["Restart"] == "on-failure"
    assert s["ExecStart"].split() == [INSTALLED, "mount", "--foreground", "/usr"]
    assert s["DeviceAllow"] == "/dev/fuse rw" and "CAP_SYS_ADMIN" in s["CapabilityBoundingSet"]
    # a private mount namespace would hide the view from the system
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ReadOnlyPaths", "ReadWritePaths", "TemporaryFileSystem", "PrivateMounts"):
        assert key not in s, key
    assert s["NoNewPrivileges"] == "yes"


def test_checker_units_hardened():
    for name in ("usrview-verify.service", "usrview-monitor.service"):
        s = _ini(name)["Service"]
        for key, value in (("ProtectSystem", "strict"), ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                           ("NoNewPrivileges", "yes"), ("PrivateNetwork", "yes")):
            assert s[key] == value, (name, key)
    assert _ini("usrview-verify.timer")["Timer"]["Persistent"] == "true"
