"""kill -9 during ``usrview import``, and a full disk: the store stays consistent.

The kill points are deterministic, through the importer's test-only hooks:
``USRVIEW_TEST_KILL_AFTER_FILES=N`` (SIGKILL after N entries were made) and
``USRVIEW_TEST_KILL_AT=STAGE`` (after a stage of the commit sequence).  After
each kill: readers see no half package (``Store.packages()`` lists only
complete ones), taking the lock removes every leftover, and importing again
succeeds with the right bytes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.btrfs_fixture import btrfs_mount, tree_listing
from tests.prereq import require_btrfs
from tests.rpmbuild import FileSpec
from usrview.faults import KILL_AFTER_FILES_ENV, KILL_AT_ENV
from usrview.store import Store
from usrview.store.importer import KILL_STAGES

MiB = 1 << 20
N_FILES = 24
CRASH_FILES = [FileSpec(f"/usr/lib/crash/f{i:02d}", content=hashlib.sha256(b"%d" % i).digest() * (100 + 50 * i))
               for i in range(N_FILES)] + [FileSpec("/usr/lib/crash", kind="dir"),
                                           FileSpec("/usr/lib/crash/link", kind="symlink", target="f00")]


def run_import(store: Path, key: Path, *pkgs: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usrview.cli", "import", "--store", str(store),
                           "--keys", str(key), *map(str, pkgs)], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "USRVIEW_CONFIG": "/dev/null", **(env or {})})


def check_consistent(store_root: Path) -> Store:
    """Every header has its package tree and nothing else lies around (after cleanup)."""
    store = Store.open(store_root)
    with store.lock():
        pass
    headers = sorted(p.pkgid for p in store.packages())
    assert sorted(os.listdir(store_root / "packages")) == headers
    assert os.listdir(store_root / "tmp") == []
    return store


KILL_POINTS = [(KILL_AFTER_FILES_ENV, str(n)) for n in (1, 2, 7, 13, N_FILES, N_FILES + 2)] + \
              [(KILL_AT_ENV, stage) for stage in KILL_STAGES]


@pytest.mark.parametrize("var, value", KILL_POINTS, ids=[f"{v.split('_')[-1].lower()}-{x}" for v, x in KILL_POINTS])
def test_kill_during_import(store_dir, rpm_packages, gpg_key, var, value):
    first = rpm_packages("before", "1", "1", [FileSpec("/usr/share/before", content=b"b" * 5000)])
    pkg = rpm_packages("crash", "1", "1", CRASH_FILES)
    r = run_import(store_dir, gpg_key.public_path, first)
    assert r.returncode == 0, r.stderr
    before = Store.open(store_dir).packages()
    r = run_import(store_dir, gpg_key.public_path, pkg, env={var: value})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    # what a reader sees right after the crash, before anyone cleans up
    visible = [p.pkgid for p in Store.open(store_dir).packages()]
    complete = value == "header"
    if complete:
        assert len(visible) == 2
    else:
        assert visible == [p.pkgid for p in before]
    store = check_consistent(store_dir)
    r = run_import(store_dir, gpg_key.public_path, pkg)
    assert r.returncode == 0, r.stderr
    assert ("already stored" in r.stdout) == complete
    check_consistent(store_dir)
    [crash] = [p for p in store.packages() if p.nevra == "crash-1-1.noarch"]
    for spec in CRASH_FILES:
        if spec.kind == "file":
            assert (crash.path / spec.path.lstrip("/")).read_bytes() == spec.content


def test_full_disk(tmp_path, rpm_packages, gpg_key):
    """A package larger than the free space: one line, exit 2, nothing left behind."""
    require_btrfs()
    big = rpm_packages("huge", "1", "1", [FileSpec(f"/usr/lib/huge/part{i}", content=os.urandom(30 * MiB))
                                          for i in range(3)], compress="w0.ufdio")
    small = rpm_packages("small", "1", "1", [FileSpec("/usr/share/small", content=b"s" * 10000)])
    with btrfs_mount(tmp_path / "btrfs", 64 * MiB) as mnt:
        store_root = mnt / "store"
        assert run_import(store_root, gpg_key.public_path, small).returncode == 0
        before = tree_listing(store_root)
        r = run_import(store_root, gpg_key.public_path, big)
        assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
        assert r.stderr == f"usrview: error: {big}: cannot store huge-1-1.noarch: no space left in the store\n"
        assert r.stdout == ""
        assert tree_listing(store_root) == before
        check_consistent(store_root)
        # the store still works once btrfs's cleaner has freed the deleted subvolume
        # (subvolume deletion is asynchronous: its space returns after a commit)
        subprocess.run(["btrfs", "subvolume", "sync", str(mnt)], check=True, capture_output=True, timeout=120)
        other = rpm_packages("after", "1", "1", [FileSpec("/usr/share/after", content=b"a" * 10000)])
        r = run_import(store_root, gpg_key.public_path, other)
        assert r.returncode == 0, r.stderr
