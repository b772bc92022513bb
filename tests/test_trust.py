"""The trust gate: whether a header may be used is decided once, and import,
mount and verify agree.

An rpm's header that is UNSIGNED (accepted with ``--allow-unsigned``) but that
rpm's import check refuses (its data store has a gap) used to be imported --
the importer looked at the signature verdict only -- and pass verify, and then
be refused at mount, whose loader also made the import check.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime

import pytest

from tests import hdrbuild
from tests.rpmbuild import FileSpec
from usrview import images
from usrview.errors import OperationalError
from usrview.store import Store, pkgid_for
from usrview.store.importer import PackageRefused, import_package
from usrview.store.trust import HeaderTrust, header_trust
from usrview.verify.check import header_findings
from usrview.view.loader import load_headers
from verifier.header import read_package
from verifier.keyring import Keyring, Verdict
from verifier.sigcheck import HeaderCheck

#: rpmbuild writes this build host (tests/rpmbuild.py): a string to shorten.
BUILDHOST = b"usrview.test\0"


def unsigned_with_an_import_error(rpm_packages, tmp_path):
    """A full rpm, UNSIGNED, whose main header's entries no longer fill its data
    store (the build host shortened by one byte); its payload is intact."""
    rpm = rpm_packages("gap", "1", "1", [FileSpec("/usr/share/gap/file", content=b"gap\n")], signed=False)
    data = rpm.read_bytes()
    pkg = read_package(data, strict=False)
    main = bytearray(data[pkg.header.start:pkg.header.end])
    i = main.index(BUILDHOST)
    main[i + len(BUILDHOST) - 2] = 0  # "usrview.tes"
    out = tmp_path / "gap-1-1.noarch.rpm"
    # A signature header without digests (they would no longer match): UNSIGNED.
    out.write_bytes(hdrbuild.build_package(bytes(main), payload=data[pkg.payload_offset:]))
    edited = read_package(out.read_bytes(), strict=False)
    assert edited.header.import_error and edited.has_payload
    return out, edited


def test_import_and_mount_agree_on_an_unsigned_header_with_an_import_error(rpm_packages, tmp_path):
    rpm, package = unsigned_with_an_import_error(rpm_packages, tmp_path)
    store = Store.open(tmp_path / "store", create=True)
    with pytest.raises(PackageRefused, match="does not match its entries"):
        import_package(store, rpm, Keyring(), allow_unsigned=True)
    assert store.packages() == []

    # The mount refuses it too: put it in the store as an older importer would have.
    pkgid = pkgid_for(package)
    store.header_path(pkgid).write_bytes(package.header_only())
    store.unsigned_path(pkgid).touch()
    # a record as deploy --allow-unsigned makes it (the mount serves unsigned only what it lists so)
    image = images.Image(images.make_image_id([pkgid], datetime.now(UTC)), "", (pkgid,), (pkgid,))
    with pytest.raises(OperationalError, match="does not match its entries"):
        load_headers(store, image, Keyring())

    # And verify reports its header, and does not check its files against it.
    findings, trusted_package = header_findings(store, pkgid, True, Keyring())
    assert trusted_package is None
    assert [(f.kind, f.actual) for f in findings] == [("header", "PARSE")]
    assert "does not match its entries" in findings[0].line


def _check(verdict: Verdict, import_error: str | None = None) -> HeaderCheck:
    part = types.SimpleNamespace(import_error=None)
    package = types.SimpleNamespace(signature=part, header=types.SimpleNamespace(import_error=import_error))
    return HeaderCheck(verdict, "why", package=package)


GAP = "header: data store size 100 does not match its entries (99)"


@pytest.mark.parametrize("verdict, import_error, unsigned_allowed, usable, unsigned, reason", [
    (Verdict.GOOD, None, False, True, False, ""),
    (Verdict.GOOD, None, True, True, False, ""),
    (Verdict.UNSIGNED, None, False, False, True, "UNSIGNED (why)"),
    (Verdict.UNSIGNED, None, True, True, True, ""),
    # the case the importer used to let in, and the view refused
    (Verdict.UNSIGNED, GAP, True, False, True, f"PARSE ({GAP})"),
    (Verdict.UNSIGNED, GAP, False, False, True, "UNSIGNED (why)"),
    (Verdict.PARSE, None, True, False, False, "PARSE (why)"),
    (Verdict.BAD, None, True, False, False, "BAD (why)"),
    (Verdict.NOKEY, None, True, False, False, "NOKEY (why)"),
    (Verdict.NOTTRUSTED, None, True, False, False, "NOTTRUSTED (why)"),
])
def test_header_trust(verdict, import_error, unsigned_allowed, usable, unsigned, reason):
    assert header_trust(_check(verdict, import_error), unsigned_allowed=unsigned_allowed) == \
        HeaderTrust(usable, unsigned, reason)
