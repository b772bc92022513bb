"""Physical extents of a file (the FIEMAP ioctl), to hash bytes shared by reflink once.

Two files whose data extents sit at the same physical addresses, at the same
logical offsets, with the same size, hold the same bytes: they read the same
disk blocks.  :func:`shared_extents_key` returns such a key for a file, or None
when its extents cannot prove that:

- an extent flagged UNKNOWN, DELALLOC (not yet on disk), ENCODED (compressed:
  two partial references to one compressed extent can report the same
  physical start for different bytes), DATA_ENCRYPTED, NOT_ALIGNED,
  DATA_INLINE or DATA_TAIL (packed with other data: the address is not the
  file's alone), or UNWRITTEN;
- an extent *not* flagged SHARED: then no other file can map it (and a
  hard link of the file is found by its inode number anyway);
- a file without extents (empty, or all inline), or a mapping that does not end
  with an extent flagged LAST.

The ioctl asks for FIEMAP_FLAG_SYNC, so dirty pages are written first and no
extent is still delayed.

Physical addresses are those of one file system, not of one subvolume: on btrfs
every subvolume has its own st_dev, while reflinks between packages (their
subvolumes) share extents.  :func:`filesystem_id` names the address space: the
btrfs file system's UUID, else the device number.
"""

from __future__ import annotations

import fcntl
import os
import struct

#: FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap) (linux/fs.h).
FS_IOC_FIEMAP = 0xC020660B
#: fm_flags: sync the file before mapping it.
FIEMAP_FLAG_SYNC = 0x1

FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_ENCODED = 0x8
FIEMAP_EXTENT_DATA_ENCRYPTED = 0x80
FIEMAP_EXTENT_NOT_ALIGNED = 0x100
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_DATA_TAIL = 0x400
FIEMAP_EXTENT_UNWRITTEN = 0x800
FIEMAP_EXTENT_SHARED = 0x2000

#: Extent flags that make a physical address unusable as proof of identical bytes.
UNUSABLE = (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_ENCODED
            | FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE
            | FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_UNWRITTEN)

_HEAD = struct.Struct("=QQIIII")          # fm_start, fm_length, fm_flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")     # logical, physical, length, reserved64[2], flags, reserved[3]
#: Extents asked for per ioctl call.
BATCH = 64
_MAX_LENGTH = 0xFFFFFFFFFFFFFFFF
#: struct btrfs_ioctl_fs_info_args is 1024 bytes; the fsid is at offset 16.
_FS_INFO_SIZE = 1024
_FS_INFO_FSID = slice(16, 32)
#: BTRFS_IOC_FS_INFO = _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args): unprivileged.
BTRFS_IOC_FS_INFO = (2 << 30) | (_FS_INFO_SIZE << 16) | (0x94 << 8) | 31


def extents(fd: int) -> list[tuple[int, int, int, int]]:
    """All extents of the open file ``fd``: (logical, physical, length, flags).

    Raises OSError (EOPNOTSUPP on file systems without FIEMAP).
    """
    out: list[tuple[int, int, int, int]] = []
    start = 0
    while True:
        buf = bytearray(_HEAD.size + BATCH * _EXTENT.size)
        _HEAD.pack_into(buf, 0, start, _MAX_LENGTH - start, FIEMAP_FLAG_SYNC, 0, BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        mapped = _HEAD.unpack_from(buf, 0)[3]
        if mapped == 0:
            return out
        for i in range(mapped):
            logical, physical, length, _r1, _r2, flags, *_ = _EXTENT.unpack_from(
                buf, _HEAD.size + i * _EXTENT.size)
            out.append((logical, physical, length, flags))
        last = out[-1]
        if last[3] & FIEMAP_EXTENT_LAST:
            return out
        start = last[0] + last[2]


def shared_extents_key(fd: int, size: int) -> tuple | None:
    """A key equal for two files exactly when they read the same disk blocks, or None
    when this file's extents cannot prove identity (see the module docstring)."""
    try:
        ext = extents(fd)
    except OSError:
        return None
    if not ext or not ext[-1][3] & FIEMAP_EXTENT_LAST:
        return None
    key = [size]
    for logical, physical, length, flags in ext:
        if flags & UNUSABLE or not flags & FIEMAP_EXTENT_SHARED:
            return None
        key.extend((logical, physical, length))
    return tuple(key)


def filesystem_id(fd: int) -> tuple:
    """What the physical addresses of files on ``fd``'s file system are relative to:
    ("btrfs", fsid) on btrfs (one for all its subvolumes), else ("dev", st_dev)."""
    buf = bytearray(_FS_INFO_SIZE)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, buf)
    except OSError:
        return ("dev", os.fstat(fd).st_dev)
    return ("btrfs", bytes(buf[_FS_INFO_FSID]))


__all__ = ["FS_IOC_FIEMAP", "extents", "filesystem_id", "shared_extents_key"]


if __name__ == "__main__":  # pragma: no cover - a debugging aid
    import sys

    for path in sys.argv[1:]:
        fd = os.open(path, os.O_RDONLY)
        try:
            print(path, extents(fd), shared_extents_key(fd, os.fstat(fd).st_size))
        finally:
            os.close(fd)
