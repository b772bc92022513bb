"""A real btrfs for tests: a sparse file on a loop device, made, mounted and always removed.

:func:`btrfs_mount` is a context manager (usable outside pytest, e.g. by
benchmarks); the fixtures wrap it:

- ``btrfs_dir``: the mountpoint of a fresh 512 MiB btrfs (root needed: skips,
  or fails under ``USRVIEW_REQUIRE_PRIVILEGED=1``);
- ``store_dir``: parametrized over ``btrfs`` and ``plain`` (a directory under
  tmp_path), for tests that must hold on both.

Teardown always runs: ``umount`` (retried, then ``umount -l``) and ``losetup -d``.
Loop devices are few on these machines (FACTS.md); a test must never leave one
attached, even when it fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.prereq import require_btrfs

#: Default size of a test file system: sparse, so only what is written costs disk.
DEFAULT_SIZE = 512 << 20
#: Below about 114 MiB mkfs.btrfs wants --mixed (data and metadata in one group).
MIXED_BELOW = 300 << 20
UMOUNT_ATTEMPTS = 5
UMOUNT_RETRY_DELAY = 0.2
TOOL_TIMEOUT = 120


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TOOL_TIMEOUT,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


@contextlib.contextmanager
def btrfs_mount(workdir: Path, size: int = DEFAULT_SIZE, *, mixed: bool | None = None):
    """Make a btrfs of ``size`` bytes in ``workdir``, mount it and yield the mountpoint."""
    image = workdir / "btrfs.img"
    mnt = workdir / "mnt"
    mnt.mkdir(parents=True)
    with open(image, "wb") as f:
        f.truncate(size)
    if mixed is None:
        mixed = size < MIXED_BELOW
    _run("mkfs.btrfs", "-q", *(["--mixed"] if mixed else []), str(image))
    loop = _run("losetup", "--find", "--show", str(image)).strip()
    mounted = False
    try:
        _run("mount", "-t", "btrfs", loop, str(mnt))
        mounted = True
        yield mnt
    finally:
        try:
            if mounted:
                _umount(mnt)
        finally:
            _run("losetup", "-d", loop)
            image.unlink()


def _umount(mnt: Path) -> None:
    for _ in range(UMOUNT_ATTEMPTS):
        if subprocess.run(["umount", str(mnt)], capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=TOOL_TIMEOUT, check=False).returncode == 0:
            return
        time.sleep(UMOUNT_RETRY_DELAY)
    _run("umount", "-l", str(mnt))


@pytest.fixture
def btrfs_dir(tmp_path):
    """The mountpoint of a fresh btrfs on a loop device, removed afterwards."""
    require_btrfs()
    with btrfs_mount(tmp_path / "btrfs") as mnt:
        yield mnt


@pytest.fixture(params=["btrfs", "plain"])
def store_dir(request, tmp_path):
    """A directory for a store: on a fresh btrfs, or a plain directory (tmp_path's file system)."""
    if request.param == "btrfs":
        require_btrfs()
        with btrfs_mount(tmp_path / "btrfs") as mnt:
            yield mnt / "store"
    else:
        yield tmp_path / "store"


def disk_usage_exclusive(path: Path) -> tuple[int, int, int]:
    """``btrfs filesystem du -s --raw PATH``: (total, exclusive, set shared) bytes."""
    out = _run("btrfs", "filesystem", "du", "-s", "--raw", str(path)).splitlines()
    total, exclusive, shared = out[-1].split()[:3]
    return int(total), int(exclusive), int(shared)


def tree_listing(root: Path) -> dict[str, tuple]:
    """Everything under ``root``: relative path -> (type+mode, uid, gid, size, mtime_ns, content).

    Content is the bytes' SHA-256 for regular files, the target for symlinks.
    The mtime of ``tmp`` itself is left out: work in it that leaves nothing behind still
    changes it.
    Two equal listings mean the tree did not change, byte for byte.
    """
    import hashlib

    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                content = os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    content = hashlib.file_digest(f, "sha256").hexdigest()
            else:
                content = None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                              None if rel == "tmp" else st.st_mtime_ns, content)
    return out
