"""The file primitives every part of usrview uses, written once: the open flags,
opening a path beneath a directory without following any symlink, hashing what a
file descriptor holds, and owner name -> id lookups.

Everything here reads; nothing writes.  A symlink is never followed below the
directory a path is opened beneath: each component is opened with ``O_NOFOLLOW``,
so a symlink where a directory should stand gives ELOOP or ENOTDIR.
"""

from __future__ import annotations

import errno
import functools
import grp
import hashlib
import os
import pwd
from collections.abc import Callable, Sequence
from typing import Protocol

#: A file to read: never through a symlink, never blocking on a FIFO planted
#: in its place (the caller's fstat then refuses it), never a controlling tty.
FILE_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
#: A directory to list or to open files beneath.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A directory only to open files beneath (no read permission needed).
DIR_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Bytes read at a time when hashing.
HASH_CHUNK = 256 << 10


def split_relpath(relpath: str) -> list[str]:
    """The components of a plain relative path; OSError(EINVAL) for an empty
    component, ``.`` or ``..``."""
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise OSError(errno.EINVAL, f"unsafe path {relpath!r}")
    return parts


def open_dir_beneath(base: int | str | os.PathLike, parts: Sequence[str], flags: int = DIR_PATH_FLAGS) -> int:
    """An fd of the directory ``base/parts...`` reached without following any
    symlink (``base`` a path or a directory fd, which stays open); the caller
    closes it.  Raises OSError (ELOOP or ENOTDIR where a symlink stands)."""
    if isinstance(base, int):
        dfd = os.open(".", flags, dir_fd=base) if not parts else None
        start = base
    else:
        dfd = start = os.open(base, flags)
    try:
        for part in parts:
            nfd = os.open(part, flags, dir_fd=start)
            if dfd is not None:
                os.close(dfd)
            dfd = start = nfd
    except BaseException:
        if dfd is not None:
            os.close(dfd)
        raise
    return dfd


def open_beneath(base: int | str | os.PathLike, path: str | Sequence[str], flags: int = FILE_READ_FLAGS) -> int:
    """Open ``path`` (a plain relative path, or its components) beneath ``base``
    (a path or a directory fd) without following any symlink on the way; the
    caller closes the fd.  Raises OSError (ELOOP or ENOTDIR where a symlink stands)."""
    parts = split_relpath(path) if isinstance(path, str) else list(path)
    if isinstance(base, int) and len(parts) == 1:
        return os.open(parts[0], flags | os.O_NOFOLLOW, dir_fd=base)
    dfd = open_dir_beneath(base, parts[:-1])
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=dfd)
    finally:
        os.close(dfd)


_HASHERS: dict[str, Callable] = {}


def hasher(algo: str) -> Callable:
    """The hashlib constructor of ``algo`` (the named ones are faster than hashlib.new)."""
    try:
        return _HASHERS[algo]
    except KeyError:
        named = getattr(hashlib, algo, None) if algo in hashlib.algorithms_guaranteed else None
        return _HASHERS.setdefault(algo, named or functools.partial(hashlib.new, algo))


class Throttle(Protocol):
    def take(self, n: int) -> None: ...


def hash_fd(fd: int, algo: str, *, h=None, offset: int = 0, buf: bytearray | None = None,
            size: int | None = None, throttle: Throttle | None = None,
            on_cold: Callable[[], None] | None = None) -> tuple[str, int]:
    """(hex digest, bytes read) of the file behind ``fd`` from ``offset`` to its end,
    read with pread (the fd's offset is untouched).

    ``h``: a hash object to carry on with (what was hashed before ``offset``).
    ``buf``: a buffer to read into (reused by the caller), else a new one.  ``size``:
    the file's size as fstat gave it; a short read that completes it is taken as
    the end (one read for a small file, not two).  ``throttle``: told of every read
    (an I/O limit).  ``on_cold``: called when the first bytes are not in the page
    cache (the first read does not wait for the disk: RWF_NOWAIT), before reading
    them anyway.
    """
    h = h or hasher(algo)()
    if buf is None:
        buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    whole = len(buf)
    off = offset
    n = -1
    if on_cold is not None:
        try:
            n = os.preadv(fd, [buf], off, os.RWF_NOWAIT)
        except BlockingIOError:
            on_cold()
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
    while True:
        if n < 0:
            n = os.preadv(fd, [buf], off)
        if n == 0:
            return h.hexdigest(), off - offset
        if throttle is not None:
            throttle.take(n)
        h.update(buf if n == whole else view[:n])
        off += n
        if n < whole and off == size:
            return h.hexdigest(), off - offset
        n = -1


class OwnerIds(dict):
    """Owner name -> uid (or gid) through the system's databases, each name looked
    up once; None for a name that does not resolve (then also in ``unknown``).

    ``OwnerIds.users()`` and ``OwnerIds.groups()`` make the two tables.  A dict,
    so that it can stand where a ``Mapping[str, int]`` of ids is expected."""

    def __init__(self, lookup: Callable[[str], int]):
        super().__init__()
        self.lookup = lookup
        self.unknown: set[str] = set()

    @classmethod
    def users(cls) -> OwnerIds:
        return cls(lambda name: pwd.getpwnam(name).pw_uid)

    @classmethod
    def groups(cls) -> OwnerIds:
        return cls(lambda name: grp.getgrnam(name).gr_gid)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> OwnerIds:
        """Names and ids from a file in the format of ``/etc/passwd`` or
        ``/etc/group`` (``name:x:id:...``), not from this system's databases: the
        initrd serves the root file system's owners, named in the root's own
        ``/etc``.  A missing file gives an empty table (every name unknown)."""
        table: dict[str, int] = {}
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.rstrip("\n").split(":")
                    if len(fields) >= 3 and fields[0] and fields[2].isdigit():
                        table.setdefault(fields[0], int(fields[2]))
        except FileNotFoundError:
            pass

        def lookup(name: str) -> int:
            return table[name]
        return cls(lookup)

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            pass
        try:
            value = self.lookup(name)
        except KeyError:
            value = None
            self.unknown.add(name)
        self[name] = value
        return value

    def clear(self) -> None:
        super().clear()
        self.unknown.clear()
