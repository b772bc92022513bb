"""The few btrfs (and generic Linux) file-system operations the store needs, by ioctl.

No program is run: each operation is one ``ioctl(2)`` (or ``statfs(2)``,
``syncfs(2)``) through :mod:`fcntl` and :mod:`ctypes`.  Every function that
makes or removes a package tree has a fallback for file systems that are not
btrfs, so the store code takes one path everywhere:

- :func:`create_tree` makes a subvolume on btrfs, a plain directory elsewhere;
- :func:`delete_tree` deletes a subvolume by ioctl (a read-only one too), or
  removes a plain directory tree;
- :func:`set_readonly` flips BTRFS_SUBVOL_RDONLY on a subvolume, and does
  nothing on a plain directory;
- :func:`clone_file` reflinks a whole file with FICLONE (btrfs, XFS, ...) and
  raises :class:`CloneUnsupported` where the file system cannot, so that the
  caller writes the bytes instead; :func:`clone_or_copy` copies in that case.

Errors are :class:`OSError` as the kernel reports them (ENOSPC, EPERM ...);
callers turn them into their own error type.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct

#: statfs f_type of btrfs (linux/magic.h).
BTRFS_SUPER_MAGIC = 0x9123683E
#: The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID).
BTRFS_SUBVOL_ROOT_INO = 256

BTRFS_IOCTL_MAGIC = 0x94
#: struct btrfs_ioctl_vol_args { __s64 fd; char name[BTRFS_PATH_NAME_MAX + 1]; }
BTRFS_PATH_NAME_MAX = 4087
BTRFS_VOL_ARGS_SIZE = 8 + BTRFS_PATH_NAME_MAX + 1
#: BTRFS_SUBVOL_RDONLY in the flags word of SUBVOL_GETFLAGS/SETFLAGS.
BTRFS_SUBVOL_RDONLY = 1 << 1

_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    """linux/ioctl.h's _IOC: the request number of an ioctl."""
    return (direction << 30) | (size << 16) | (typ << 8) | nr


#: _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
BTRFS_IOC_SUBVOL_CREATE = _ioc(_IOC_WRITE, BTRFS_IOCTL_MAGIC, 14, BTRFS_VOL_ARGS_SIZE)
#: _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
BTRFS_IOC_SNAP_DESTROY = _ioc(_IOC_WRITE, BTRFS_IOCTL_MAGIC, 15, BTRFS_VOL_ARGS_SIZE)
#: _IOR(0x94, 25, __u64)
BTRFS_IOC_SUBVOL_GETFLAGS = _ioc(_IOC_READ, BTRFS_IOCTL_MAGIC, 25, 8)
#: _IOW(0x94, 26, __u64)
BTRFS_IOC_SUBVOL_SETFLAGS = _ioc(_IOC_WRITE, BTRFS_IOCTL_MAGIC, 26, 8)
#: FICLONE = _IOW(0x94, 9, int): reflink a whole file (linux/fs.h).
FICLONE = _ioc(_IOC_WRITE, BTRFS_IOCTL_MAGIC, 9, 4)

#: errno values with which FICLONE says "not here" rather than "failed": the
#: file system has no reflinks, the files are on two file systems, or one is
#: not a regular file the file system can share.
CLONE_UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                                      errno.ENOSYS})
#: Bytes per copy_file_range call in the copy fallback.
COPY_CHUNK = 64 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type comes first; the rest is padding to us.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


_libc.statfs.argtypes = (ctypes.c_char_p, ctypes.POINTER(_Statfs))
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.POINTER(_Statfs))
_libc.syncfs.argtypes = (ctypes.c_int,)


class CloneUnsupported(OSError):
    """FICLONE is not available between these two files (see CLONE_UNSUPPORTED_ERRNOS)."""


def _raise_errno(what: str, path=None) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", *(() if path is None else (os.fsdecode(path),)))


def fs_type(path: str | os.PathLike | int) -> int:
    """statfs(2) f_type of the file system holding ``path`` (or the open fd)."""
    buf = _Statfs()
    if isinstance(path, int):
        rc = _libc.fstatfs(path, ctypes.byref(buf))
    else:
        rc = _libc.statfs(os.fsencode(path), ctypes.byref(buf))
    if rc != 0:
        _raise_errno("statfs", None if isinstance(path, int) else path)
    return buf.f_type & 0xFFFFFFFF


def is_btrfs(path: str | os.PathLike | int) -> bool:
    """True when ``path`` (or the open fd) lies on btrfs."""
    return fs_type(path) == BTRFS_SUPER_MAGIC


def syncfs(fd: int) -> None:
    """syncfs(2): write out everything of the file system holding ``fd``.

    Unlike sync(2) it reports write-back errors of that file system.
    """
    if _libc.syncfs(fd) != 0:
        _raise_errno("syncfs")


def _vol_args(name: str) -> bytearray:
    raw = os.fsencode(name)
    if not raw or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        raise ValueError(f"not a single file name: {name!r}")
    if len(raw) > BTRFS_PATH_NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), name)
    # A mutable buffer: fcntl.ioctl copies immutable arguments into 1024 bytes only.
    return bytearray(struct.pack("=q", 0) + raw.ljust(BTRFS_PATH_NAME_MAX + 1, b"\0"))


def is_subvolume(path: str | os.PathLike, *, dir_fd: int | None = None) -> bool:
    """True when ``path`` is the root directory of a btrfs subvolume."""
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode) or st.st_ino != BTRFS_SUBVOL_ROOT_INO:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return is_btrfs(fd)
    finally:
        os.close(fd)


def create_subvolume(parent_fd: int, name: str) -> None:
    """BTRFS_IOC_SUBVOL_CREATE: a new, empty subvolume ``name`` in the directory ``parent_fd``."""
    fcntl.ioctl(parent_fd, BTRFS_IOC_SUBVOL_CREATE, _vol_args(name))


def delete_subvolume(parent_fd: int, name: str) -> None:
    """BTRFS_IOC_SNAP_DESTROY: delete the subvolume ``name`` (read-only or not) in ``parent_fd``."""
    fcntl.ioctl(parent_fd, BTRFS_IOC_SNAP_DESTROY, _vol_args(name))


def get_readonly(fd: int) -> bool:
    """Whether the subvolume whose root directory ``fd`` is open is read-only."""
    buf = bytearray(8)
    fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, buf)
    return bool(struct.unpack("=Q", buf)[0] & BTRFS_SUBVOL_RDONLY)


def set_subvolume_readonly(fd: int, readonly: bool = True) -> None:
    """Set or clear BTRFS_SUBVOL_RDONLY on the subvolume whose root ``fd`` is."""
    buf = bytearray(8)
    fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, buf)
    flags = struct.unpack("=Q", buf)[0]
    flags = flags | BTRFS_SUBVOL_RDONLY if readonly else flags & ~BTRFS_SUBVOL_RDONLY
    fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, struct.pack("=Q", flags))


# -- one code path for btrfs and plain directories ----------------------------------

def create_tree(parent_fd: int, name: str, mode: int = 0o755) -> bool:
    """A new package tree ``name`` in ``parent_fd``: a subvolume on btrfs, else a directory.

    Returns True when it is a subvolume.
    """
    if is_btrfs(parent_fd):
        create_subvolume(parent_fd, name)
        os.chmod(name, mode, dir_fd=parent_fd, follow_symlinks=False)
        return True
    os.mkdir(name, mode, dir_fd=parent_fd)
    return False


def set_readonly(parent_fd: int, name: str) -> None:
    """Make the tree ``name`` read-only if it is a subvolume (a no-op for a directory)."""
    if not is_subvolume(name, dir_fd=parent_fd):
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        set_subvolume_readonly(fd, True)
    finally:
        os.close(fd)


def delete_tree(parent_fd: int, name: str) -> None:
    """Remove the tree ``name`` in ``parent_fd``, whatever it is.

    A subvolume is deleted by ioctl (a read-only one as well); anything else
    is removed recursively, with subvolumes found inside it deleted by ioctl
    (a half-made tree may hold none, but a hostile one should not stop us).
    A missing ``name`` is not an error.
    """
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    if st.st_ino == BTRFS_SUBVOL_ROOT_INO and is_subvolume(name, dir_fd=parent_fd):
        delete_subvolume(parent_fd, name)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        _remove_contents(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _remove_contents(dir_fd: int) -> None:
    # Iterative enough for package trees; a directory's fd is open while its
    # children go, which bounds open fds by the tree's depth.
    with os.scandir(dir_fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)  # a 0500 directory
            delete_tree(dir_fd, name)
        else:
            os.unlink(name, dir_fd=dir_fd)


def clone_file(src_fd: int, dst_fd: int) -> None:
    """FICLONE: make ``dst_fd`` share all of ``src_fd``'s extents (the whole file).

    Raises CloneUnsupported where the file systems cannot, OSError on a real failure.
    """
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as e:
        if e.errno in CLONE_UNSUPPORTED_ERRNOS:
            raise CloneUnsupported(e.errno, f"FICLONE: {os.strerror(e.errno)}") from None
        raise


def clone_or_copy(src_fd: int, dst_fd: int) -> bool:
    """Reflink ``src_fd`` into ``dst_fd`` when possible, else copy the bytes.

    Returns True when the data was cloned.  ``dst_fd`` must be empty.
    """
    try:
        clone_file(src_fd, dst_fd)
        return True
    except CloneUnsupported:
        pass
    size = os.fstat(src_fd).st_size
    offset = 0
    while offset < size:
        n = os.copy_file_range(src_fd, dst_fd, min(COPY_CHUNK, size - offset), offset, offset)
        if n == 0:
            raise OSError(errno.EIO, f"copy_file_range: source ended at {offset} of {size} bytes")
        offset += n
    return False


def remove_tree_path(path: str | os.PathLike) -> None:
    """delete_tree by path: the parent directory and the last component."""
    path = os.fspath(path)
    parent, name = os.path.split(path.rstrip("/"))
    fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        delete_tree(fd, name)
    finally:
        os.close(fd)


__all__ = [
    "BTRFS_IOC_SNAP_DESTROY", "BTRFS_IOC_SUBVOL_CREATE", "BTRFS_IOC_SUBVOL_GETFLAGS",
    "BTRFS_IOC_SUBVOL_SETFLAGS", "BTRFS_SUBVOL_RDONLY", "BTRFS_SUPER_MAGIC", "FICLONE",
    "CloneUnsupported", "clone_file", "clone_or_copy", "create_subvolume", "create_tree",
    "delete_subvolume", "delete_tree", "fs_type", "get_readonly", "is_btrfs", "is_subvolume",
    "remove_tree_path", "set_readonly", "set_subvolume_readonly", "syncfs",
]
