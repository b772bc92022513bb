"""The unowned walk: what lies in a package directory that its header does not
list.  The walk goes down real directories only, from the package's root, on
the lstat results the file loop already has; on btrfs a directory whose size is
that of the names expected in it (all found) holds nothing else and is not read."""

from __future__ import annotations

import os
import stat

from verifier.fileio import DIR_FLAGS
from verifier.files import FileEntry

#: On btrfs a directory's size is twice the total length of its entries' names
#: (btrfs_add_link and btrfs_unlink_inode keep it so; no system call sets it).
BTRFS_DIR_SIZE_PER_NAME_BYTE = 2


def unowned_paths(dir_fd: int, entries: list[FileEntry], lstats: dict[str, os.stat_result | None],
             btrfs: bool) -> list[str]:
    """The paths in the package directory ``dir_fd`` that ``entries`` do not list and that
    are no parent of a listed path (an unowned directory is reported, not its contents).

    ``lstats``: install path -> its lstat (None: not found), for the paths the file
    loop looked at; the others are looked up here.  The walk goes down real
    directories only (lstat, never through a symlink), from the package's root.
    ``btrfs``: the package directory is on btrfs, where a directory's size is twice
    the length of its entries' names: a directory in which every expected entry
    was found and whose size is that of their names holds nothing else (a name
    more would add its length), and is not read.  Every other directory is listed.
    """
    children: dict[str, list[str]] = {"": []}   # every expected path -> those expected in it
    for e in entries:
        p = e.path
        if p in children or p[:1] != "/" or p == "/":
            continue
        children[p] = []
        while True:
            parent = p[:p.rfind("/")]
            siblings = children.get(parent)
            if siblings is not None:
                siblings.append(p)
                break
            children[parent] = [p]
            p = parent

    def lstat(path: str) -> os.stat_result | None:
        if path in lstats:
            return lstats[path]
        try:
            return os.stat(path[1:], dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None

    found = []
    root = os.fstat(dir_fd)
    stack = [("", root)]
    while stack:
        base, st = stack.pop()
        paths = children[base]
        if btrfs and st.st_dev == root.st_dev:
            try:   # usually the file loop looked at all of them
                sts = list(map(lstats.__getitem__, paths))
            except KeyError:
                sts = [lstat(p) for p in paths]
            if None not in sts and st.st_size == BTRFS_DIR_SIZE_PER_NAME_BYTE * _name_bytes(base, paths):
                for p, s in zip(paths, sts):
                    if stat.S_ISDIR(s.st_mode):
                        stack.append((p, s))
                continue
        try:
            fd = os.open(base[1:] or ".", DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            # os.scandir gives each entry's type from the directory itself (d_type): no stat
            with os.scandir(fd) as it:
                for de in it:
                    path = f"{base}/{de.name}"
                    if path not in children:
                        found.append(path)
                    elif de.is_dir(follow_symlinks=False):
                        sub = lstat(path)
                        if sub is not None and stat.S_ISDIR(sub.st_mode):
                            stack.append((path, sub))
        except OSError:
            pass
        finally:
            os.close(fd)
    return sorted(found)


def _name_bytes(base: str, paths: list[str]) -> int:
    """The total length in bytes of the last components of ``paths`` (all in directory
    ``base``); -1 when one may be "." or "..", which lstat finds but no directory holds
    (each path starts with "/": a name "." or ".." is followed by one, or ends them all)."""
    joined = "".join(paths)
    if "/./" in joined or "/../" in joined or joined.endswith(("/.", "/..")):
        return -1
    return len(joined if joined.isascii() else os.fsencode(joined)) - len(paths) * (len(base) + 1)

