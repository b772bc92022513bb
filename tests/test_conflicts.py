"""The shared-path conflict rule (usrview.images.conflicts), with rpm 4.18 as its source.

Every case is a pair of rpmbuild packages shipping ``/usr/share/d``.  What rpm
did when both were installed in one transaction (``rpm -i --root``: ``file
/usr/share/d conflicts between attempted installs of ...`` and exit 2, or both
installed) was measured and is written in the table; the rule must give the
same verdict, lint and the tree must both apply it, and a privileged test runs
rpm again as the oracle.  The one deliberate difference from rpm, file
capabilities, is listed in :data:`NOT_RPM`.
"""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from tests.prereq import require_privileged
from tests.rpmbuild import RPM_ROOT_INSTALL_OPTS, FileSpec, rpm_root_cmd
from usrview.images.conflicts import describe, differences
from usrview.images.lint import lint
from usrview.store import pkgid_for
from usrview.view.tree import PackageSource, TreeConflict, build_tree
from verifier.files import FileEntry, FileFlag, VerifyFlag
from verifier.header import read_package_file

D = "/usr/share/d"
C = b"same\n"
#: In both packages of every case: device nodes are not staged, and rpmbuild
#: needs something to copy.  Identical, so it never conflicts.
STAGED = FileSpec("/usr/share/staged", content=b"staged\n")


def dev(kind="c", minor=3, **kw):
    return FileSpec(D, "device", mode=kw.pop("mode", 0o644), device=(kind, 1, minor), **kw)


#: case -> (package a's entry, package b's entry, b's build options, the
#: attributes the rule reports: empty when the packages may share the path).
#: Measured with rpm 4.18.0 on Debian 12: rpm refused exactly the pairs with a
#: non-empty list, except those in NOT_RPM.
CASES = {
    "dir-same": (FileSpec(D, "dir", mode=0o755), FileSpec(D, "dir", mode=0o755), {}, []),
    "dir-mode": (FileSpec(D, "dir", mode=0o755), FileSpec(D, "dir", mode=0o700), {}, ["mode"]),
    "dir-group": (FileSpec(D, "dir", mode=0o755), FileSpec(D, "dir", mode=0o755, group="bin"), {}, ["group"]),
    "dir-owner": (FileSpec(D, "dir", mode=0o755), FileSpec(D, "dir", mode=0o755, user="bin"), {}, ["owner"]),
    "dir-mtime": (FileSpec(D, "dir", mode=0o755), FileSpec(D, "dir", mode=0o755, mtime=1_600_000_000), {}, []),
    "link-same": (FileSpec(D, "symlink", target="a"), FileSpec(D, "symlink", target="a"), {}, []),
    "link-target": (FileSpec(D, "symlink", target="a"), FileSpec(D, "symlink", target="b"), {},
                    ["link target"]),
    "link-owner": (FileSpec(D, "symlink", target="a"), FileSpec(D, "symlink", target="a", user="bin"), {},
                   ["owner"]),
    "link-group": (FileSpec(D, "symlink", target="a"), FileSpec(D, "symlink", target="a", group="bin"), {},
                   ["group"]),
    "dev-same": (dev(), dev(), {}, []),
    "dev-number": (dev(), dev(minor=5), {}, ["device number"]),
    "dev-mode": (dev(), dev(mode=0o600), {}, ["mode"]),
    "dev-owner": (dev(), dev(user="bin"), {}, ["owner"]),
    "dev-group": (dev(), dev(group="bin"), {}, ["group"]),
    "dev-char-vs-block": (dev(), dev("b"), {}, ["type"]),
    "file-same": (FileSpec(D, content=C), FileSpec(D, content=C), {}, []),
    "file-mode": (FileSpec(D, content=C, mode=0o644), FileSpec(D, content=C, mode=0o755), {}, ["mode"]),
    "file-owner": (FileSpec(D, content=C), FileSpec(D, content=C, user="bin"), {}, ["owner"]),
    "file-group": (FileSpec(D, content=C), FileSpec(D, content=C, group="bin"), {}, ["group"]),
    "file-content": (FileSpec(D, content=C), FileSpec(D, content=b"other\n"), {}, ["digest"]),
    "file-digest-algo": (FileSpec(D, content=C), FileSpec(D, content=C), {"digest_algo": 10}, ["digest"]),
    "file-mtime": (FileSpec(D, content=C), FileSpec(D, content=C, mtime=1_600_000_000), {}, []),
    "file-config": (FileSpec(D, content=C), FileSpec(D, content=C, directives="%config"), {}, []),
    "file-caps": (FileSpec(D, content=C, directives="%caps(cap_net_raw=ep)"),
                  FileSpec(D, content=C, directives="%caps(cap_net_admin=ep)"), {}, ["capabilities"]),
    "file-vs-dir": (FileSpec(D, content=C), FileSpec(D, "dir"), {}, ["type"]),
    "dir-vs-link": (FileSpec(D, "dir"), FileSpec(D, "symlink", target="a"), {}, ["type"]),
}
#: Cases where the rule is not rpm's: rpm 4.18 installed both packages with
#: different capabilities, and the file got those of the package installed
#: last; an image has no install order (see usrview.images.conflicts).
NOT_RPM = {"file-caps"}


@pytest.fixture
def pair(rpm_packages):
    def build(case):
        spec_a, spec_b, options, _ = CASES[case]
        return (rpm_packages(f"cf-{case}-a", "1.0", "1", [spec_a, STAGED], signed=False),
                rpm_packages(f"cf-{case}-b", "1.0", "1", [spec_b, STAGED], signed=False, **options))
    return build


def entry_at(package, path=D):
    [entry] = [f for f in package.files if f.path == path]
    return entry


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_gives_rpms_verdict(pair, case):
    a, b = (read_package_file(p) for p in pair(case))
    found = differences(entry_at(a), entry_at(b))
    assert [d.attribute for d in found] == CASES[case][3]
    assert differences(entry_at(b), entry_at(a)) == [(d.attribute, d.second, d.first) for d in found]


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_and_the_tree_apply_the_rule(pair, case):
    a, b = (read_package_file(p) for p in pair(case))
    expected = CASES[case][3]
    findings = [f for f in lint([a, b]) if f.kind == "conflict"]
    assert bool(findings) == bool(expected)
    sources = [PackageSource(pkgid_for(p), p, None, path) for p, path in zip((a, b), pair(case), strict=True)]
    if expected:
        message = describe(differences(entry_at(a), entry_at(b)))
        assert message in findings[0].message
        with pytest.raises(TreeConflict) as raised:
            build_tree(sources)
        assert message in str(raised.value)
    else:
        assert build_tree(sources).resolve("share/d") is not None


def _rpm_refuses(tmp_path, pa, pb) -> bool:
    root = tmp_path / "root"
    # not rpmbuild.rpm_root_install: it raises when rpm refuses
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy2(f"/etc/{name}", root / "etc" / name)
    r = subprocess.run([*rpm_root_cmd(root), *RPM_ROOT_INSTALL_OPTS, str(pa), str(pb)],
                       capture_output=True, text=True, timeout=120, check=False)
    refused = f"file {D} conflicts between attempted installs" in r.stderr
    assert (r.returncode != 0) == refused, r.stderr
    return refused


@pytest.mark.parametrize("case", sorted(CASES))
def test_rpm_is_the_oracle(tmp_path, pair, case):
    require_privileged("rpm -i into a scratch root sets owners and makes device nodes")
    pa, pb = pair(case)
    assert _rpm_refuses(tmp_path, pa, pb) == (bool(CASES[case][3]) and case not in NOT_RPM)


def _entry(mode: int, **changes) -> FileEntry:
    entry = FileEntry(path=D, size=1, mode=mode, rdev=0, mtime=0, digest="", digest_algo=8, linkto="a",
                      flags=FileFlag(0), user="root", group="root", verify_flags=VerifyFlag.ALL, device=1,
                      inode=1, lang="", caps="", color=0)
    return entry._replace(**changes)


def test_symlink_permission_bits_are_not_compared():
    """rpmbuild always records a symlink as 0777, so no package pair shows this; rpm's
    rpmfilesCompare: "Mode difference is a conflict, except for symlinks"."""
    assert differences(_entry(stat.S_IFLNK | 0o777), _entry(stat.S_IFLNK | 0o755)) == []
    assert [d.attribute for d in differences(_entry(stat.S_IFREG | 0o777), _entry(stat.S_IFREG | 0o755))] \
        == ["mode"]


def test_what_rpm_ignores_is_ignored():
    """Size (the digest decides), mtime, flags, verify flags, language, color."""
    a = _entry(stat.S_IFREG | 0o644, digest="ab")
    b = a._replace(size=2, mtime=5, flags=FileFlag.CONFIG, verify_flags=VerifyFlag(0), lang="de", color=2,
                   device=9, inode=9)
    assert differences(a, b) == []
    assert [d.attribute for d in differences(a, a._replace(digest="AB"))] == []
