"""A store tampered with while the view is not running (issue 15): each way that once got
past the view or ``usrview verify`` is reported or refused here.

The stores are real: packages built by rpmbuild, signed by the test key, deployed by
the importer into btrfs on a loop device (package subvolumes read-only, as deploy
makes them) or into a plain directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.prereq import require_privileged, require_tools
from tests.test_verify import MAIN_FILES, World, _writable


@pytest.fixture
def bworld(btrfs_dir, rpm_packages, gpg_key):
    require_privileged("owners and modes as rpm -i makes them")
    require_tools("rpm", "btrfs")
    return World(btrfs_dir, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)


def _lines(report) -> list[str]:
    return [f.line for f in report.findings]


# -- 1. a directory of the tree replaced by a symlink ---------------------------------

def _dir_to_symlink(pkgdir: Path, relpath: str, copy: Path) -> None:
    """Move the directory ``relpath`` of a package out to ``copy`` and leave a root-owned
    symlink to it in its place (what rpm -V accepts as the directory)."""
    shutil.copytree(pkgdir / relpath, copy, symlinks=True)
    shutil.rmtree(pkgdir / relpath)
    os.symlink(copy, pkgdir / relpath)


SYMLINKED = [
    "notdir      /usr/bin",
    "missing     /usr/bin/tool (Not a directory)",
    "....L....    /usr/share/tool",
    "notdir      /usr/share/tool",
    "missing     /usr/share/tool/data (Not a directory)",
    "missing     /usr/share/tool/small (Not a directory)",
]


def test_directory_replaced_by_symlink_is_reported_and_caches_hide_nothing(bworld, tmp_path):
    """The issue's scenario: usr/share/tool (listed) and usr/bin (an unlisted parent)
    replaced by root-owned symlinks to copies outside the package.  Before: verify and
    verify --full exited 0 with no output, then saw at most a changed byte behind the
    symlink (--full), nothing incremental (the package cache)."""
    assert bworld.verify().findings == []   # fills both caches
    d = bworld.pkgdir("tool")
    elsewhere = bworld.store.root.parent / "elsewhere"
    elsewhere.mkdir()
    _writable(d)
    _dir_to_symlink(d, "usr/share/tool", elsewhere / "share-tool")
    _dir_to_symlink(d, "usr/bin", elsewhere / "bin")
    _writable(d, False)
    for report in (bworld.verify(), bworld.verify(full=True), bworld.verify(jobs=1)):
        assert sorted(_lines(report)) == sorted(SYMLINKED)
        assert report.exit_code == 1
    assert {f.kind for f in bworld.verify().findings} == {"notdir", "missing", "file"}
    # behind the symlinks: a changed file and a new one.  Still exactly the symlinks (nothing
    # behind them is looked at), also when the package's row is taken from the cache.
    (elsewhere / "share-tool" / "small").write_bytes(b"SMALL\n")
    (elsewhere / "share-tool" / "new").write_bytes(b"new\n")
    (elsewhere / "bin" / "backdoor").write_bytes(b"new\n")
    for report in (bworld.verify(), bworld.verify(full=True)):
        assert sorted(_lines(report)) == sorted(SYMLINKED)


def test_symlinked_directory_in_a_plain_store(tmp_path, rpm_packages, gpg_key):
    """The same on a plain directory store (the file cache alone)."""
    require_privileged("owners and modes as rpm -i makes them")
    require_tools("rpm")
    world = World(tmp_path, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)
    assert world.verify().findings == []
    d = world.pkgdir("tool")
    _dir_to_symlink(d, "usr/share/tool", tmp_path / "share-tool")
    _dir_to_symlink(d, "usr/bin", tmp_path / "bin")
    (tmp_path / "share-tool" / "small").write_bytes(b"SMALL\n")
    for report in (world.verify(), world.verify(full=True)):
        assert sorted(_lines(report)) == sorted(SYMLINKED)
