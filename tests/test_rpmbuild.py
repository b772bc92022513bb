"""The package builder, and our header parser on what it builds.

The builder's packages are only useful as oracles if they are what the tests
think they are: signed (rpmkeys says so), with the files, flags and digests
asked for.  And on them, every field of every file our parser reads must equal
what rpm itself reads (``rpm -qp --dump`` and ``--queryformat``).
"""

from __future__ import annotations

import stat
import subprocess

import pytest

from tests.rpmbuild import COMPRESSORS, FileSpec, rpm_dump, rpm_file_entries
from tests.test_filecheck import PACKAGES
from verifier.files import FileFlag, VerifyFlag, digest_name

SMALL = [
    FileSpec("/usr/share/vf-small", kind="dir"),
    FileSpec("/usr/share/vf-small/a file", content=b"a\n"),
    FileSpec("/usr/share/vf-small/fifo", kind="fifo"),  # built, never installed (rpm 4.18.0 hangs)
    FileSpec("/usr/share/vf-small/link", kind="symlink", target="a file"),
]


@pytest.fixture(scope="module")
def built(rpm_packages):
    pkgs = {name: rpm_packages(name, "1.0", "1", files, **opts) for name, (files, opts) in PACKAGES.items()}
    for compress in COMPRESSORS:
        pkgs[f"small-{compress}"] = rpm_packages("vf-small", "1.0", compress.replace(".", "_"), SMALL,
                                                 compress=compress)
    pkgs["unsigned"] = rpm_packages("vf-small", "1.0", "unsigned", SMALL, signed=False)
    return pkgs


def test_dump_and_queryformat_agree(built):
    """The two ways tests read rpm's view of a package agree (names with spaces too)."""
    for name, pkg in built.items():
        dump, entries = rpm_dump(pkg), rpm_file_entries(pkg)
        assert [d.path for d in dump] == [e.path for e in entries], name
        for d, e in zip(dump, entries):
            assert (d.size, d.mtime, d.mode, d.user, d.group, d.rdev, d.linkto) == (
                e.size, e.mtime, e.mode, e.user, e.group, e.rdev, e.linkto), e.path
            assert d.digest.strip("0") == e.digest.strip("0"), e.path  # dump shows zeros for none
            assert d.is_config == bool(e.flags & FileFlag.CONFIG) and d.is_doc == bool(e.flags & FileFlag.DOC)


def test_parser_reads_every_field_as_rpm_does(built):
    from verifier.header import read_package_file
    for name, pkg in built.items():
        ours = read_package_file(pkg).files
        theirs = rpm_file_entries(pkg)
        assert len(ours) == len(theirs), name
        for a, b in zip(ours, theirs):
            # our parser leaves digest and link target empty where the type has none
            if not stat.S_ISREG(b.mode):
                b = b._replace(digest="")
            assert a == b, f"{name}: {a.path}"


def test_packages_are_what_was_asked_for(built):
    main = {e.path: e for e in rpm_file_entries(built["vf-main"])}
    assert main["/usr/bin/vf-suid"].mode == stat.S_IFREG | 0o4755
    assert main["/usr/bin/vf-caps"].caps == "cap_net_raw=ep"
    assert main["/etc/vf/vf.conf"].flags == FileFlag.CONFIG | FileFlag.NOREPLACE
    assert main["/usr/share/vf/ghost"].flags & FileFlag.GHOST
    assert not main["/usr/share/vf/nover"].verify_flags & (VerifyFlag.FILEDIGEST | VerifyFlag.FILESIZE
                                                           | VerifyFlag.MTIME)
    assert (main["/usr/share/vf/hl-a"].inode == main["/usr/share/vf/hl-b"].inode
            == main["/usr/share/vf/hl-c"].inode)
    assert main["/usr/share/vf/null"].rdev == 0x0103 and stat.S_ISCHR(main["/usr/share/vf/null"].mode)
    assert main["/usr/share/vf/nobody"].user == "nobody"
    algos = {name: rpm_file_entries(pkg)[1].digest_algo for name, pkg in built.items() if name in PACKAGES}
    assert algos == {"vf-main": 8, "vf-md5": 1, "vf-sha1": 2, "vf-sha224": 11, "vf-sha384": 9, "vf-sha512": 10}
    assert all(digest_name(a) for a in algos.values())
    compressors = {subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{PAYLOADCOMPRESSOR}", str(built[k])],
                                  capture_output=True, text=True, check=True).stdout
                   for k in built if k.startswith("small-")}
    # w0.ufdio (no compression) writes no PAYLOADCOMPRESSOR tag at all
    assert compressors == {"gzip", "xz", "zstd", "bzip2", "lzma", "(none)"}


def test_packages_are_signed(built, gpg_key, tmp_path):
    """rpmkeys, trusting the session key, accepts every signed package and no unsigned one."""
    db = tmp_path / "rpmdb"
    subprocess.run(["rpmkeys", "--dbpath", str(db), "--import", str(gpg_key.public_path)], check=True)
    for name, pkg in built.items():
        r = subprocess.run(["rpmkeys", "--dbpath", str(db), "-Kv", str(pkg)], capture_output=True, text=True)
        header_sig = [line for line in r.stdout.splitlines() if "Header V4 RSA/" in line]
        if name == "unsigned":
            assert not header_sig, r.stdout
        else:
            assert r.returncode == 0 and header_sig and "OK" in header_sig[0], r.stdout
            assert f"key ID {gpg_key.fingerprint[-8:].lower()}:" in header_sig[0], r.stdout


def test_scriptlets(rpm_packages):
    pkg = rpm_packages("vf-scripts", "1.0", "1", SMALL[:2],
                       scriptlets={"pre": "echo before", "post": "echo after"})
    out = subprocess.run(["rpm", "-qp", "--nosignature", "--scripts", str(pkg)],
                         capture_output=True, text=True, check=True).stdout
    assert "preinstall scriptlet" in out and "echo before" in out
    assert "postinstall scriptlet" in out and "echo after" in out
