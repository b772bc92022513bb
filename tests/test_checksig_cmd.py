"""``usrview checksig`` against ``rpmkeys --checksig`` on packages built and signed here.

rpmkeys (rpm 4.18) trusts the same key as we do, in a throwaway rpm database.
For every package -- signed, unsigned, signed by a key we do not trust, a
signed header changed by one byte, a damaged signature packet, a header-only
copy -- both tools must give the same answer, and our exit status and output
must be what the manual page (docs/checksig.md) says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rpmbuild import FileSpec, make_gpg_key, sign_rpm, stop_gpg_agent
from verifier.header import read_package

FILES = [FileSpec("/usr/share/cs-demo/hello.txt", content=b"hello\n"),
         FileSpec("/usr/bin/cs-demo", content=b"#!/bin/sh\necho hi\n", mode=0o755)]

#: rpmkeys -Kv line for the header-only signature -> our verdict.
RPMKEYS_VERDICT = {"OK": "GOOD", "BAD": "BAD", "NOKEY": "NOKEY", "NOTTRUSTED": "NOTTRUSTED"}


def usrview(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usrview.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "USRVIEW_CONFIG": "/dev/null"})


def rpmkeys_verdict(db: Path, pkg: Path) -> str:
    """The verdict rpmkeys gives the header-only signature (UNSIGNED when it lists none)."""
    r = subprocess.run(["rpmkeys", "--dbpath", str(db), "-Kv", str(pkg)],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    m = re.search(r"Header V\d \S+ Signature, key ID [0-9a-f]+: (\w+)", out)
    if m:
        return RPMKEYS_VERDICT[m.group(1)]
    if "Header SHA256 digest: BAD" in out or "hdr load: BAD" in out or "not an rpm package" in out:
        return "BAD" if "Header SHA256 digest: BAD" in out else "PARSE"
    return "UNSIGNED"


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.fixture(scope="module")
def packages(rpm_packages, gpg_key, tmp_path_factory):
    d = tmp_path_factory.mktemp("checksig")
    good = rpm_packages("cs-demo", "1.0", "1", FILES)
    other_key = make_gpg_key(d / "gpg-other")
    try:
        foreign = d / "foreign.rpm"
        foreign.write_bytes(rpm_packages("cs-demo", "1.0", "2", FILES, signed=False).read_bytes())
        sign_rpm(foreign, other_key)
    finally:
        stop_gpg_agent(other_key)
    data = good.read_bytes()
    pkg = read_package(data)
    out = {
        "good": good,
        "unsigned": rpm_packages("cs-demo", "1.0", "3", FILES, signed=False),
        "foreign": foreign,
    }
    # One bit of the signed header changed, inside the Summary string.
    summary = data.index(b"cs-demo", pkg.header.start)
    (d / "tampered-header.rpm").write_bytes(flip(data, summary))
    out["tampered-header"] = d / "tampered-header.rpm"
    # One bit of the signature's MPI changed (the last bytes of the RSA tag).
    from verifier.tags import SigTag

    rsa = pkg.signature.entries[SigTag.RSA]
    (d / "tampered-sig.rpm").write_bytes(flip(data, pkg.signature._store + rsa.end - 3))
    out["tampered-sig"] = d / "tampered-sig.rpm"
    (d / "header-only.rpm").write_bytes(pkg.header_only())
    out["header-only"] = d / "header-only.rpm"
    (d / "truncated.rpm").write_bytes(data[:pkg.header.start + 100])
    out["truncated"] = d / "truncated.rpm"
    return out


EXPECTED = {
    "good": "GOOD", "unsigned": "UNSIGNED", "foreign": "NOKEY", "tampered-header": "BAD",
    "tampered-sig": "BAD", "header-only": "GOOD", "truncated": "PARSE",
}


def test_checksig_agrees_with_rpmkeys(packages, gpg_key, tmp_path):
    db = tmp_path / "rpmdb"
    subprocess.run(["rpmkeys", "--dbpath", str(db), "--import", str(gpg_key.public_path)],
                   check=True, timeout=120)
    compared = 0
    for name, pkg in packages.items():
        r = usrview("checksig", "--json", "--keys", str(gpg_key.public_path), str(pkg))
        ours = json.loads(r.stdout)["verdict"]
        assert ours == EXPECTED[name], (name, r.stdout, r.stderr)
        assert r.returncode == (0 if ours == "GOOD" else 1), name
        if name in ("header-only", "truncated"):
            continue  # rpmkeys wants whole packages
        theirs = rpmkeys_verdict(db, pkg)
        print(name, ours, theirs)
        assert theirs == ours, name
        compared += 1
    assert compared == 5


def test_output_lines_and_exit_status(packages, gpg_key):
    key = str(gpg_key.public_path)
    r = usrview("checksig", "--keys", key, str(packages["good"]), str(packages["header-only"]))
    assert r.returncode == 0, r.stderr
    fpr = gpg_key.fingerprint.lower()
    assert r.stdout.splitlines() == [f"{packages['good']}: GOOD key {fpr}",
                                     f"{packages['header-only']}: GOOD key {fpr}"]
    r = usrview("checksig", "--keys", key, str(packages["good"]), str(packages["tampered-header"]))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].endswith(f"GOOD key {fpr}")
    assert lines[1].startswith(f"{packages['tampered-header']}: BAD")
    r = usrview("checksig", "--keys", key, str(packages["unsigned"]))
    assert (r.returncode, r.stdout.strip()) == (1, f"{packages['unsigned']}: UNSIGNED (no header signature)")


def test_json_objects(packages, gpg_key):
    r = usrview("checksig", "--json", "--keys", str(gpg_key.public_path),
                str(packages["good"]), str(packages["foreign"]))
    good, foreign = [json.loads(line) for line in r.stdout.splitlines()]
    assert good["verdict"] == "GOOD" and good["nevra"] == "cs-demo-1.0-1.noarch"
    assert good["fingerprint"] == gpg_key.fingerprint.lower()
    assert len(good["header_sha256"]) == 64 and good["digests"]["sha256"] == "OK"
    assert foreign["verdict"] == "NOKEY" and foreign["fingerprint"] is None
    assert foreign["key_id"] and foreign["signatures"][0]["verdict"] == "NOKEY"


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required"),
    (["--keys"], "expected one argument"),
    (["--bogus", "x.rpm"], "unrecognized arguments"),
])
def test_usage_errors_exit_2(args, message):
    r = usrview("checksig", *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_unreadable_package_and_missing_keys_exit_2(packages, gpg_key, tmp_path):
    r = usrview("checksig", "--keys", str(gpg_key.public_path), str(tmp_path / "nope.rpm"),
                str(packages["good"]))
    assert r.returncode == 2
    assert "nope.rpm" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout.strip().endswith("GOOD key " + gpg_key.fingerprint.lower())
    r = usrview("checksig", "--keys", str(tmp_path / "no-such-key"), str(packages["good"]))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no-such-key" in r.stderr


def test_key_directory_and_config_file(packages, gpg_key, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "RPM-GPG-KEY-test").write_bytes(gpg_key.public_path.read_bytes())
    r = usrview("checksig", "--keys", str(keys), str(packages["good"]))
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = tmp_path / "usrview.toml"
    cfg.write_text(f'keys = ["{keys}"]\n')
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "--config", str(cfg), "checksig",
                        str(packages["good"])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cfg.write_text("keys = 3\n")
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "checksig", "--config", str(cfg),
                        str(packages["good"])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "'keys' must be" in r.stderr
