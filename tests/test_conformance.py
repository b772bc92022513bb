"""Every MANIFEST.tsv row of the conformance corpus: our header verdict equals the expected one.

``GOOD?`` rows are policy choices; docs/signature-policy.md decides them and
POLICY below records the decision per case.  Expected verdicts come from the
test suites of rpm, rpm-rs and go-rpmutils, not from us.

The corpus' selfbuilt/signed/ packages are also made here (tests/corpus.py,
``signed_samples``), so a clone without the corpus checks those signatures too.
"""

from __future__ import annotations

import pytest

from tests.corpus import build_sample, manifest
from verifier import sigcheck
from verifier.header import read_package_file
from verifier.keyring import Keyring

#: Our decision for each GOOD? row (docs/signature-policy.md, "Policy decisions").
POLICY = {
    "selfbuilt/signed/rsa3072-sha1.rpm": "NOTTRUSTED",  # SHA-1 data signatures are refused
    "selfbuilt/signed/expired-key-signed-while-valid.rpm": "GOOD",  # judged when it signed
}


def _expected(case) -> str:
    if case.expected == "GOOD?":
        return POLICY[case.case_id]
    return case.expected


def test_every_manifest_row_gives_its_verdict(conformance):
    root = conformance
    rings: dict[tuple[str, ...], Keyring] = {}
    agree, disagree = 0, []
    rows = [c for c in manifest(root) if c.is_package_case]
    for case in rows:
        ring = rings.get(case.keys)
        if ring is None:
            ring = rings[case.keys] = Keyring.load([root / k for k in case.keys])
        result = sigcheck.check_file(root / case.file, ring)
        want = _expected(case)
        if result.verdict.value == want:
            agree += 1
        else:
            disagree.append(f"{case.case_id}: expected {want}, got {result.format()}")
    print(f"conformance: {agree} of {len(rows)} MANIFEST rows agree")
    assert len(rows) >= 40
    assert not disagree, "\n".join(disagree)


def test_header_only_files_give_the_same_verdict_as_full_packages(conformance):
    """A header-only file (what /usr/lib/sysimage/packages holds) carries the whole signature."""
    root = conformance
    compared = 0
    for case in manifest(root):
        if not case.is_package_case or "#" in case.case_id:
            continue
        hdr = root / "derived" / "header-only" / case.file.replace(".rpm", ".hdronly.rpm")
        if not hdr.exists():
            continue
        ring = Keyring.load([root / k for k in case.keys])
        full = sigcheck.check_file(root / case.file, ring)
        only = sigcheck.check_file(hdr, ring)
        assert (only.verdict, only.fingerprint) == (full.verdict, full.fingerprint), case.file
        compared += 1
    assert compared >= 20


def test_good_verdicts_name_the_signing_certificate(conformance):
    root = conformance
    ring = Keyring.load([root / "rpm-tests/keys/rpm.org-rsa-2048-test.pub"])
    r = sigcheck.check_file(root / "rpm-tests/RPMS/hello-2.0-1.x86_64-signed.rpm", ring)
    assert r.good
    assert r.fingerprint == ring.certificates[0].fingerprint
    assert r.key_id and r.fingerprint.endswith(r.key_id)
    assert r.digests.get("sha256") == "OK"
    assert r.package.nevra == "hello-2.0-1.x86_64"


# -- the corpus' selfbuilt/signed/, made here ---------------------------------------

#: Their MANIFEST.tsv verdicts, GOOD? rows as POLICY decides them.
SIGNED_HERE = {
    "rsa3072-sha256": "GOOD",
    "rsa3072-sha512": "GOOD",
    "rsa3072-sha1": POLICY["selfbuilt/signed/rsa3072-sha1.rpm"],
    "ed25519": "GOOD",
    "dsa2048": "GOOD",
    "subkey-signed": "GOOD",
    "expired-key-signed-while-valid": POLICY["selfbuilt/signed/expired-key-signed-while-valid.rpm"],
    "revoked-key": "NOTTRUSTED",
}


@pytest.mark.parametrize("name", SIGNED_HERE)
def test_packages_signed_here_give_their_verdicts(signed_samples, name):
    """The package and its header-only copy give the verdict; a GOOD one names
    the certificate (for the subkey, its primary key's)."""
    sample = signed_samples[name]
    ring = Keyring.load([sample.public_key])
    full = sigcheck.check_file(sample.package, ring, now=sample.check_at)
    assert full.verdict.value == SIGNED_HERE[name], full.format()
    only = sigcheck.check_bytes(read_package_file(sample.package).header_only(), ring, now=sample.check_at)
    assert (only.verdict, only.fingerprint) == (full.verdict, full.fingerprint)
    if full.good:
        assert full.fingerprint == ring.certificates[0].fingerprint
        assert full.fingerprint.endswith(full.key_id) == (name != "subkey-signed")  # a subkey's key ID


def test_packages_signed_here_wrong_key_and_unsigned(signed_samples, rpm_packages):
    other = Keyring.load([signed_samples["ed25519"].public_key])
    assert sigcheck.check_file(signed_samples["rsa3072-sha256"].package, other).verdict.value == "NOKEY"
    unsigned = build_sample(rpm_packages, "gzip", signed=False)
    assert sigcheck.check_file(unsigned, other).verdict.value == "UNSIGNED"
