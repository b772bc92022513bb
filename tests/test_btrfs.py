"""btrfs subvolume states: one search of the root tree gives what an ioctl per
subvolume gives (the package cache relies on it, docs/verify.md)."""

from __future__ import annotations

import os

from tests.btrfs_fixture import btrfs_dir  # noqa: F401 - fixture
from usrview.store import btrfs

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _per_subvolume(fd: int) -> dict[str, str]:
    """What BTRFS_IOC_GET_SUBVOL_INFO says of every entry of ``fd`` that is a subvolume."""
    out = {}
    # listed through a new open: a btrfs directory fd lists only the entries it had
    # when opened (until rewound)
    for name in os.listdir(f"/proc/self/fd/{fd}"):
        state = btrfs.subvolume_state(name, fd)
        if state is not None:
            out[name] = state
    return out


def test_child_subvolume_states_equal_the_per_subvolume_ioctl(btrfs_dir):  # noqa: F811
    top = btrfs_dir / "packages"
    top.mkdir()
    (btrfs_dir / "elsewhere").mkdir()
    fd = os.open(top, _DIR)
    other = os.open(btrfs_dir / "elsewhere", _DIR)
    try:
        # enough subvolumes that their root items fill more than one search buffer
        names = [f"pkg-{i:04d}" for i in range(600)]
        for name in names:
            btrfs.create_subvolume(fd, name)
        btrfs.create_subvolume(other, "not-here")           # another directory's subvolume
        os.mkdir("plain", dir_fd=fd)                          # a directory, not a subvolume
        inner = os.open(names[0], _DIR, dir_fd=fd)
        try:
            btrfs.create_subvolume(inner, "nested")           # a subvolume inside one
        finally:
            os.close(inner)
        btrfs.syncfs(fd)
        before = btrfs.child_subvolume_states(fd)
        assert set(before) == set(names)
        assert before == _per_subvolume(fd)
        assert len({s.split(":")[0] for s in before.values()}) == len(names), "uuids differ"

        # a write into one subvolume, committed, moves its generation only
        (top / names[7] / "file").write_bytes(b"x")
        btrfs.syncfs(fd)
        after = btrfs.child_subvolume_states(fd)
        assert after == _per_subvolume(fd)
        assert int(after[names[7]].rsplit(":", 1)[1]) > int(before[names[7]].rsplit(":", 1)[1])
        assert {n: s for n, s in after.items() if n != names[7]} == \
            {n: s for n, s in before.items() if n != names[7]}

        # renamed: the same subvolume (uuid, tree, generation) under its new name
        os.rename(top / names[3], top / "renamed")
        btrfs.delete_subvolume(fd, names[4])
        btrfs.syncfs(fd)
        moved = btrfs.child_subvolume_states(fd)
        assert moved == _per_subvolume(fd)
        assert names[3] not in moved and names[4] not in moved
        assert moved["renamed"].split(":")[:2] == after[names[3]].split(":")[:2]
    finally:
        os.close(fd)
        os.close(other)
