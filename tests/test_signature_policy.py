"""The named signature policies (docs/signature-policy.md, "Named policies") on
real rpms: keys bound with SHA-1 and packages they signed, under ``default`` and
``legacy``, with rpm 4.18's own verdict beside ours.

The keys: EPEL 7's real key (bound by one SHA-1 self-signature, RSA 4096) and a
package it signed, epel-release-7-14 (tests/data/legacy/README.md says where they
come from); and keys made here with gpg, their self-signatures made with SHA-1
(``--cert-digest-algo SHA1``), the packages signed with rpmsign.  gpg 2.2.40
refuses to make a SHA-1 back-signature, so the subkey cases are hand-built in
tests/test_keyring.py (test_signature_policies).

Then the store: what ``legacy`` accepted is recorded (``legacy/PKGID``) and
shown by ``status`` and ``verify --json``; ``verify``, ``deploy`` and the view's
loader under ``default`` report or refuse it, naming the option.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rpmbuild import FileSpec, make_gpg_key, sign_rpm, stop_gpg_agent
from usrview import images
from usrview.errors import OperationalError
from usrview.store import Store
from usrview.view import compiled, ctree
from usrview.view.loader import load_headers
from verifier import policy as policies
from verifier.keyring import Keyring

DATA = Path(__file__).parent / "data" / "legacy"
EPEL_KEY = DATA / "RPM-GPG-KEY-EPEL-7"
EPEL_RPM = DATA / "epel-release-7-14.noarch.rpm"
FILES = [FileSpec("/usr/share/legacy-demo/hello.txt", content=b"hello\n")]
OPT_IN = "--signature-policy legacy"
HINT = f"its bindings use SHA1, which the legacy signature policy accepts: {OPT_IN}"

#: gpg keys made here: name -> (algorithm, hash of the self-signature).
GPG_KEYS = {
    "sha256": ("rsa2048", "SHA256"),
    "sha1": ("rsa2048", "SHA1"),
    "sha1-rsa1024": ("rsa1024", "SHA1"),
}

#: (case, key, data signature hash (None: the real EPEL 7 package), our verdict
#: under default, under legacy, rpm 4.18's verdict as measured here).  legacy
#: accepts SHA-1 on bindings only: never on data signatures, never small keys.
CASES = [
    ("sha256-bound key", "sha256", "sha256", "GOOD", "GOOD", "OK"),
    ("sha1-bound key", "sha1", "sha256", "NOTTRUSTED", "GOOD", "OK"),
    ("sha1-bound key, sha1 data signature", "sha1", "sha1", "NOTTRUSTED", "NOTTRUSTED", "OK"),
    ("sha1-bound rsa1024 key", "sha1-rsa1024", "sha256", "NOTTRUSTED", "NOTTRUSTED", "OK"),
    ("EPEL 7 key and epel-release-7-14 (real)", "epel7", None, "NOTTRUSTED", "GOOD", "OK"),
]


def usrview(*args: str, config: Path | str = "/dev/null") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usrview.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "USRVIEW_CONFIG": str(config)})


def rpmkeys_verdict(key: Path, pkg: Path, tmp: Path) -> str:
    """rpm 4.18's verdict on the header signature, the key imported in a new rpmdb."""
    db = tmp / f"rpmdb-{pkg.stem}"
    db.mkdir()
    subprocess.run(["rpmkeys", "--dbpath", str(db), "--import", str(key)], check=True,
                   capture_output=True, timeout=120)
    r = subprocess.run(["rpmkeys", "--dbpath", str(db), "-Kv", str(pkg)], capture_output=True,
                       text=True, timeout=120)
    m = re.search(r"Header V4 RSA/\S+ Signature, key ID [0-9a-f]+: (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    return m.group(1)


@pytest.fixture(scope="module")
def signed(rpm_packages, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """case -> (the key's armored file, the package it signed)."""
    d = tmp_path_factory.mktemp("legacy")
    keys = {}
    for name, (algo, cert_digest) in GPG_KEYS.items():
        keys[name] = make_gpg_key(d / f"gpg-{name}", algo=algo, cert_digest_algo=cert_digest,
                                  uid=f"{name} <{name}@usrview.invalid>")
    out = {}
    try:
        for i, (case, key, data_hash, *_rest) in enumerate(CASES):
            if data_hash is None:
                out[case] = (EPEL_KEY, EPEL_RPM)
                continue
            pkg = d / f"legacy-demo-{i}.rpm"
            shutil.copy(rpm_packages(f"legacy-demo{i}", "1.0", "1", FILES, signed=False), pkg)
            sign_rpm(pkg, keys[key], digest_algo=data_hash)
            out[case] = (keys[key].public_path, pkg)
    finally:
        for key in keys.values():
            stop_gpg_agent(key)
    return out


def test_the_keys_are_bound_with_sha1(signed, tmp_path):
    """What the cases claim: the self-signatures' hash, as gpg --list-packets reads it."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    for case, key, *_ in CASES:
        path = signed[case][0]
        r = subprocess.run(["gpg", "--list-packets"], input=path.read_bytes(), capture_output=True,
                           timeout=60, env={**os.environ, "GNUPGHOME": str(home)})
        algos = re.findall(r"sigclass 0x1[0-3]\n\s+digest algo (\d+)", r.stdout.decode())
        assert algos == (["8"] if key == "sha256" else ["2"]), (case, r.stdout.decode())


@pytest.mark.parametrize("case, under_default, under_legacy, rpm",
                         [(c[0], *c[3:]) for c in CASES], ids=[c[0] for c in CASES])
def test_verdicts_beside_rpm(signed, tmp_path, case, under_default, under_legacy, rpm):
    key, pkg = signed[case]
    assert rpmkeys_verdict(key, pkg, tmp_path) == rpm
    for policy, expected in (("default", under_default), ("legacy", under_legacy)):
        r = usrview("checksig", "--json", "--keys", key, "--signature-policy", policy, pkg)
        assert r.returncode == (0 if expected == "GOOD" else 1), r.stderr
        [verdict] = map(json.loads, r.stdout.splitlines())
        assert verdict["verdict"] == expected, (policy, verdict)
        # Under default the line says why and how to opt in, exactly when that would help.
        line = usrview("checksig", "--keys", key, "--signature-policy", policy, pkg).stdout
        assert (HINT in line) == (expected != "GOOD" and under_legacy == "GOOD"), line


def test_the_configuration_chooses_the_policy(signed, tmp_path):
    key, pkg = signed["sha1-bound key"]
    cfg = tmp_path / "usrview.toml"
    cfg.write_text('signature_policy = "legacy"\n')
    assert usrview("checksig", "--keys", key, pkg, config=cfg).returncode == 0
    # the option overrides the file
    assert usrview("checksig", "--keys", key, "--signature-policy", "default", pkg, config=cfg).returncode == 1
    cfg.write_text('signature_policy = "sha1"\n')
    r = usrview("checksig", "--keys", key, pkg, config=cfg)
    assert r.returncode == 2 and "unknown signature policy 'sha1'" in r.stderr


def test_every_command_that_checks_signatures_takes_the_option():
    for command in ("checksig", "import", "deploy", "pull", "mount", "verify", "monitor", "initrd-mount"):
        assert "--signature-policy {default,legacy}" in usrview(command, "--help").stdout, command


def test_import_records_the_policy_and_default_reports_or_refuses_it(signed, tmp_path, expect_logs):
    """import under legacy records legacy/PKGID; status and verify --json show it;
    verify under default reports it (kind legacy, its files still checked);
    deploy and the view's loader under default refuse it, naming the option."""
    key, pkg = signed["sha1-bound key"]
    _, good = signed["sha256-bound key"]
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(key, keys / "sha1.asc")
    shutil.copy(signed["sha256-bound key"][0], keys / "sha256.asc")
    store_dir, source = tmp_path / "store", tmp_path / "image"
    source.mkdir()
    shutil.copy(pkg, source)
    shutil.copy(good, source)
    common = ("--store", store_dir, "--keys", keys)

    refused = usrview("deploy", *common, source)
    assert refused.returncode == 1 and HINT in refused.stderr, refused.stderr
    r = usrview("deploy", *common, "--signature-policy", "legacy", source)
    assert r.returncode == 0, r.stderr
    store = Store.open(store_dir)
    [legacy_id] = store.legacy_pkgids()
    assert legacy_id.startswith("legacy-demo1-1.0-1.")
    assert store.get(legacy_id).signature_policy == "legacy"
    assert {sp.pkgid: sp.signature_policy for sp in store.packages()} == {
        p: ("legacy" if p == legacy_id else "default") for p in store.pkgids()}

    status = json.loads(usrview("status", "--json", "--store", store_dir).stdout)
    assert status["images"][0]["legacy_signature_policy"] == [legacy_id.rsplit("-", 1)[0]]
    assert "legacy signature policy: legacy-demo1-1.0-1" in usrview("status", "--store", store_dir).stdout

    # verify: clean under legacy; under default one finding of kind legacy, exit 1
    r = usrview("verify", "--json", *common, "--signature-policy", "legacy")
    *findings, summary = map(json.loads, r.stdout.splitlines())
    assert r.returncode == 0 and findings == [], r.stdout
    assert summary["signature_policy"] == "legacy" and summary["legacy_signature_policy"] == [legacy_id]
    r = usrview("verify", "--json", *common)
    *findings, summary = map(json.loads, r.stdout.splitlines())
    assert r.returncode == 1, r.stdout + r.stderr
    assert [(f["kind"], f["package"], f["actual"]) for f in findings] == [("legacy", legacy_id, "legacy")]
    assert HINT in findings[0]["line"]
    assert summary["by_kind"]["legacy"] == 1 and summary["signature_policy"] == "default"
    text = usrview("verify", *common)
    assert text.returncode == 1 and text.stdout.startswith(f"legacy    {legacy_id}: "), text.stdout
    # its files are checked all the same: a changed byte is found under default too
    stored = store.package_dir(legacy_id) / "usr/share/legacy-demo/hello.txt"
    os.chmod(stored, 0o644)
    stored.write_bytes(b"hellO\n")
    r = usrview("verify", *common, "--full")
    assert r.returncode == 1 and "/usr/share/legacy-demo/hello.txt" in r.stdout, r.stdout

    # the loader (usrview mount, initrd-mount) under default refuses the image, naming the option
    image = images.resolve(store, "current")
    with pytest.raises(OperationalError) as refusal:
        load_headers(store, image, Keyring.load([keys]))
    assert f"{legacy_id}: NOTTRUSTED" in str(refusal.value) and HINT in str(refusal.value)
    with expect_logs("serves packages only the legacy signature policy accepts"):
        loaded = load_headers(store, image, Keyring.load([keys], policy=policies.LEGACY))
    assert loaded.legacy == [legacy_id]
    # a mount of the compiled tree checks the header at its package's first use: refused under
    # default (every request EIO), served under legacy, named again when the full check ends
    legacy_ring = Keyring.load([keys], policy=policies.LEGACY)
    with expect_logs("serves packages only the legacy signature policy accepts"):
        compiled.compile_image(store, image, legacy_ring)
    own = f"lib/sysimage/packages/{legacy_id}.rpm"  # the package's alone (others ship hello.txt too)
    tree = ctree.open_view(store, image, Keyring.load([keys]))
    with expect_logs("compiled tree refused", level=logging.ERROR), pytest.raises(OSError):
        tree.resolve(own)
    assert f"{legacy_id}: NOTTRUSTED" in tree.failed and HINT in tree.failed
    tree = ctree.open_view(store, image, legacy_ring)
    with expect_logs(f"package {legacy_id} is served under the legacy signature policy only"):
        assert tree.resolve(own) is not None
    with expect_logs(f"serves packages only the legacy signature policy accepts.*{legacy_id}"):
        ctree.start_full_check(tree, store, image, legacy_ring).join(60)
    assert tree.proven and tree.failed is None

    # deploy under default of the stored package given as a header-only rpm: refused
    headers = tmp_path / "headers"
    headers.mkdir()
    shutil.copy(store.header_path(legacy_id), headers)
    r = usrview("deploy", *common, headers)
    assert r.returncode == 2 and f"stored under the legacy signature policy: {legacy_id}" in r.stderr
    assert OPT_IN in r.stderr


def test_import_under_default_names_the_option(signed, tmp_path):
    r = usrview("import", "--store", tmp_path / "store", "--keys", EPEL_KEY, EPEL_RPM)
    assert r.returncode == 1 and HINT in r.stderr and "91e97d7c4a5e96f17f3e888f6a2faea2352c64e5" in r.stderr
    r = usrview("import", "--store", tmp_path / "store", "--keys", EPEL_KEY, "--signature-policy", "legacy",
                EPEL_RPM)
    assert r.returncode == 0 and "[legacy signature policy]" in r.stdout, r.stderr
    store = Store.open(tmp_path / "store")
    assert store.legacy_pkgids() == set(store.pkgids())
    assert store.pkgids()[0].startswith("epel-release-7-14.noarch-")
