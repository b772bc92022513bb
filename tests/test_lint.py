"""The package-set checks of usrview.lint, on real packages built by rpmbuild.

File conflicts are also compared with rpm itself: both packages are installed
in one transaction into a scratch root, and rpm's verdict (``file X conflicts
between attempted installs``) must equal ours.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.prereq import require_privileged
from tests.rpmbuild import RPM_ROOT_INSTALL_OPTS, FileSpec, rpm_root_cmd
from usrview.images.lint import Severity, has_errors, is_under_usr, lint
from verifier.header import read_package_file


@pytest.fixture
def pkgs(rpm_packages):
    """``pkgs((name, version, files, kwargs)...)`` -> parsed Package objects."""

    def build(*specs):
        out = []
        for spec in specs:
            name, version, files, *rest = spec
            kwargs = rest[0] if rest else {}
            out.append(read_package_file(rpm_packages(name, version, "1", files, signed=False, **kwargs)))
        return out

    return build


def kinds(findings):
    return sorted((f.kind, str(f.severity)) for f in findings)


BIN = FileSpec("/usr/bin/tool", content=b"#!/bin/sh\necho tool\n", mode=0o755)


def test_identical_file_in_two_packages_is_fine(pkgs):
    a, b = pkgs(("one", "1.0", [BIN, FileSpec("/usr/share/d", "dir")]),
                ("two", "1.0", [BIN, FileSpec("/usr/share/d", "dir")]))
    assert lint([a, b]) == []


def test_conflicting_content_names_both_packages_and_the_path(pkgs):
    a, b = pkgs(("one", "1.0", [BIN]),
                ("two", "1.0", [FileSpec("/usr/bin/tool", content=b"other\n", mode=0o755)]))
    findings = lint([a, b])
    assert kinds(findings) == [("conflict", "error")]
    f = findings[0]
    assert f.paths == ("/usr/bin/tool",)
    assert set(f.packages) == {a.nevra, b.nevra}
    assert "/usr/bin/tool" in f.message and a.nevra in f.message and b.nevra in f.message
    assert "digest" in f.message
    assert has_errors(findings)


@pytest.mark.parametrize(("other", "what"), [
    (FileSpec("/usr/bin/tool", content=BIN.content, mode=0o700), "mode 0755 vs 0700"),
    (FileSpec("/usr/bin/tool", content=BIN.content, mode=0o755, user="bin"), "owner"),
    (FileSpec("/usr/bin/tool", content=BIN.content, mode=0o755, group="bin"), "group"),
    (FileSpec("/usr/bin/tool", "symlink", target="tool.real"), "type file vs symlink"),
    (FileSpec("/usr/bin/tool", "dir"), "type file vs directory"),
])
def test_metadata_conflicts(pkgs, other, what):
    a, b = pkgs(("one", "1.0", [BIN]), ("two", "1.0", [other]))
    findings = lint([a, b])
    assert kinds(findings) == [("conflict", "error")]
    assert what in findings[0].message


def test_symlink_targets(pkgs):
    a, b, c = pkgs(("one", "1.0", [FileSpec("/usr/lib/libx.so", "symlink", target="libx.so.1")]),
                   ("two", "1.0", [FileSpec("/usr/lib/libx.so", "symlink", target="libx.so.1")]),
                   ("three", "1.0", [FileSpec("/usr/lib/libx.so", "symlink", target="libx.so.2")]))
    assert lint([a, b]) == []
    findings = lint([a, c])
    assert kinds(findings) == [("conflict", "error")]
    assert "link target 'libx.so.1' vs 'libx.so.2'" in findings[0].message


def test_directories_merge_when_they_agree_and_conflict_otherwise(pkgs):
    a, b, c = pkgs(("one", "1.0", [FileSpec("/usr/share/d", "dir", mode=0o755),
                                   FileSpec("/usr/share/d/a", content=b"a")]),
                   ("two", "1.0", [FileSpec("/usr/share/d", "dir", mode=0o755),
                                   FileSpec("/usr/share/d/b", content=b"b")]),
                   ("three", "1.0", [FileSpec("/usr/share/d", "dir", mode=0o700)]))
    assert lint([a, b]) == []
    findings = lint([a, b, c])
    assert kinds(findings) == [("conflict", "error")]
    assert "/usr/share/d:" in findings[0].message and "three-1.0-1.noarch" in findings[0].message


def test_files_outside_usr_are_reported_per_package(pkgs):
    (a,) = pkgs(("spread", "1.0", [
        FileSpec("/usr", "dir"),  # /usr itself is fine
        FileSpec("/usr/bin/spread", content=b"x"),
        FileSpec("/etc/spread.conf", content=b"x", directives="%config(noreplace)"),
        FileSpec("/var/lib/spread", "dir"),
        FileSpec("/bin/spread", "symlink", target="../usr/bin/spread"),
        FileSpec("/var/log/spread.log", directives="%ghost", staged=False),  # no bytes
    ]))
    findings = lint([a])
    assert kinds(findings) == [("outside-usr", "warning")]
    f = findings[0]
    assert set(f.paths) == {"/etc/spread.conf", "/var/lib/spread", "/bin/spread"}
    assert "/bin, /etc, /var" in f.message and "3 file(s)" in f.message
    assert not has_errors(findings)


def test_outside_usr_files_do_not_conflict(pkgs):
    a, b = pkgs(("one", "1.0", [FileSpec("/etc/x.conf", content=b"1")]),
                ("two", "1.0", [FileSpec("/etc/x.conf", content=b"2")]))
    assert kinds(lint([a, b])) == [("outside-usr", "warning")] * 2


def test_ghost_files_never_conflict(pkgs):
    a, b = pkgs(("one", "1.0", [FileSpec("/usr/lib/cache", content=b"1", directives="%ghost")]),
                ("two", "1.0", [FileSpec("/usr/lib/cache", content=b"2")]))
    assert lint([a, b]) == []


def test_scriptlets_are_reported(pkgs):
    (a,) = pkgs(("scripted", "1.0", [BIN], {"scriptlets": {"post": "true", "preun": "true"}}))
    findings = lint([a])
    assert kinds(findings) == [("scriptlets", "warning")]
    assert "%post" in findings[0].message and "%preun" in findings[0].message
    assert findings[0].packages == (a.nevra,)


def test_two_versions_of_one_name(pkgs):
    a, b = pkgs(("tool", "1.0", [BIN]), ("tool", "2.0", [BIN]))
    findings = lint([a, b])
    assert kinds(findings) == [("duplicate-name", "error")]
    assert "tool-1.0-1.noarch" in findings[0].message and "tool-2.0-1.noarch" in findings[0].message


def test_the_same_package_twice_counts_once(pkgs):
    a, a2 = pkgs(("tool", "1.0", [BIN]), ("tool", "1.0", [BIN]))
    assert lint([a, a2]) == []


def test_path_beneath_a_symlink(pkgs):
    a, b = pkgs(("links", "1.0", [FileSpec("/usr/lib64", "symlink", target="lib")]),
                ("libs", "1.0", [FileSpec("/usr/lib64/libz.so", content=b"z")]))
    findings = lint([a, b])
    assert kinds(findings) == [("not-a-directory", "error")]
    assert findings[0].paths == ("/usr/lib64", "/usr/lib64/libz.so")


def test_findings_are_errors_first(pkgs):
    a, b = pkgs(("one", "1.0", [BIN, FileSpec("/etc/one", content=b"1")]),
                ("two", "1.0", [FileSpec("/usr/bin/tool", content=b"2")]))
    severities = [f.severity for f in lint([a, b])]
    assert severities == sorted(severities, reverse=True)
    assert Severity.ERROR in severities and Severity.WARNING in severities


@pytest.mark.parametrize(("path", "inside"), [
    ("/usr", True), ("/usr/bin/x", True), ("/usrx", False), ("/usr2/x", False),
    ("/etc/usr", False), ("/", False),
])
def test_is_under_usr(path, inside):
    assert is_under_usr(path) is inside


# -- rpm as the oracle for file conflicts ------------------------------------

ORACLE_CASES = {
    "same-file": (BIN, BIN),
    "content": (BIN, FileSpec("/usr/bin/tool", content=b"other", mode=0o755)),
    "file-mode": (BIN, FileSpec("/usr/bin/tool", content=BIN.content, mode=0o750)),
    "file-owner": (BIN, FileSpec("/usr/bin/tool", content=BIN.content, mode=0o755, user="bin")),
    "file-mtime": (BIN, FileSpec("/usr/bin/tool", content=BIN.content, mode=0o755, mtime=1)),
    "config-flag": (BIN, FileSpec("/usr/bin/tool", content=BIN.content, mode=0o755,
                                  directives="%config")),
    "dir-same": (FileSpec("/usr/share/d", "dir"), FileSpec("/usr/share/d", "dir")),
    "dir-mode": (FileSpec("/usr/share/d", "dir", mode=0o755), FileSpec("/usr/share/d", "dir", mode=0o700)),
    "dir-group": (FileSpec("/usr/share/d", "dir"), FileSpec("/usr/share/d", "dir", group="bin")),
    "link-same": (FileSpec("/usr/lib/l", "symlink", target="x"), FileSpec("/usr/lib/l", "symlink", target="x")),
    "link-target": (FileSpec("/usr/lib/l", "symlink", target="x"), FileSpec("/usr/lib/l", "symlink", target="y")),
    "link-owner": (FileSpec("/usr/lib/l", "symlink", target="x"),
                   FileSpec("/usr/lib/l", "symlink", target="x", user="bin")),
    "file-vs-dir": (FileSpec("/usr/share/e", content=b"x"), FileSpec("/usr/share/e", "dir")),
    "ghost": (FileSpec("/usr/lib/g", content=b"1", directives="%ghost"), FileSpec("/usr/lib/g", content=b"2")),
    # same bytes, one package's digests are MD5: rpm calls that a conflict, and so do we
    "digest-algo": (BIN, BIN, {"digest_algo": 1}),
}


def _rpm_conflicts(tmp_path, pa, pb) -> bool:
    root = tmp_path / "root"
    root.mkdir()
    r = subprocess.run(rpm_root_cmd(root) + list(RPM_ROOT_INSTALL_OPTS) + [str(pa), str(pb)],
                       capture_output=True, text=True, timeout=120, check=False)
    conflict = "conflicts between attempted installs" in r.stderr
    assert r.returncode == 0 or conflict, r.stderr
    return conflict


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
def test_conflicts_agree_with_rpm(tmp_path, rpm_packages, case):
    require_privileged("rpm -i into a scratch root sets file owners")
    spec_a, spec_b, *kwargs = ORACLE_CASES[case]
    pa = rpm_packages(f"oracle-{case}-a", "1.0", "1", [spec_a], signed=False)
    pb = rpm_packages(f"oracle-{case}-b", "1.0", "1", [spec_b], signed=False, **(kwargs or [{}])[0])
    ours = any(f.kind == "conflict" for f in lint([read_package_file(pa), read_package_file(pb)]))
    assert ours == _rpm_conflicts(tmp_path, pa, pb)


def test_oracle_sees_a_conflict_and_a_clean_pair(tmp_path, rpm_packages):
    """The oracle test above would pass vacuously if rpm never reported (or always
    reported) a conflict: check that both verdicts occur among the cases."""
    require_privileged("rpm -i into a scratch root sets file owners")
    verdicts = set()
    for case in ("same-file", "content"):
        a, b = ORACLE_CASES[case][:2]
        pa = rpm_packages(f"oracle-{case}-a", "1.0", "1", [a], signed=False)
        pb = rpm_packages(f"oracle-{case}-b", "1.0", "1", [b], signed=False)
        (tmp_path / case).mkdir()
        verdicts.add(_rpm_conflicts(tmp_path / case, pa, pb))
    assert verdicts == {True, False}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
