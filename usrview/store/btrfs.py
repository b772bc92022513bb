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
import errno
import fcntl
import os
import stat
import struct

from verifier.fileio import DIR_FLAGS

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

#: The C library's functions, among the symbols the process has loaded: no search for its
#: file (ctypes.util's would import shutil, subprocess and tempfile into every command).
_libc = ctypes.CDLL(None, use_errno=True)


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
    fd = os.open(path, DIR_FLAGS, dir_fd=dir_fd)
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


# -- subvolume states: what changes when a subvolume's content does ------------------
#
# A subvolume's generation is the transaction that last wrote its tree; it is
# recorded at commit (so a caller that relies on it syncs first).  The state
# string is "uuid:treeid:generation": another subvolume under the same name has
# another uuid and tree id.

#: struct btrfs_ioctl_get_subvol_info_args (linux/btrfs.h): treeid, name[256],
#: parent_id, dirid, generation, flags, uuid, parent_uuid, received_uuid,
#: ctransid, otransid, stransid, rtransid, 4 x btrfs_ioctl_timespec, reserved[8].
_SUBVOL_INFO = struct.Struct("=Q256sQQQQ16s16s16sQQQQ" + "QI4x" * 4 + "8Q")
#: BTRFS_IOC_GET_SUBVOL_INFO = _IOR(0x94, 60, args): unprivileged, kernel >= 4.18.
BTRFS_IOC_GET_SUBVOL_INFO = _ioc(_IOC_READ, BTRFS_IOCTL_MAGIC, 60, _SUBVOL_INFO.size)

#: struct btrfs_ioctl_search_key: tree_id, min/max objectid, min/max offset,
#: min/max transid, min/max type, nr_items, unused, unused1..4.
_SEARCH_KEY = struct.Struct("=7Q4I4Q")
#: struct btrfs_ioctl_search_header: transid, objectid, offset, type, len.
_SEARCH_HEADER = struct.Struct("=3Q2I")
#: Bytes of results per BTRFS_IOC_TREE_SEARCH_V2 call.
_SEARCH_BUF = 256 << 10
#: BTRFS_IOC_TREE_SEARCH_V2 = _IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2):
#: the key, then buf_size (u64), then the results.  Needs CAP_SYS_ADMIN.
BTRFS_IOC_TREE_SEARCH_V2 = _ioc(_IOC_READ | _IOC_WRITE, BTRFS_IOCTL_MAGIC, 17, _SEARCH_KEY.size + 8)
_U64_MAX = (1 << 64) - 1
#: The root tree (BTRFS_ROOT_TREE_OBJECTID) and the item types read from it.
_ROOT_TREE = 1
_ROOT_ITEM_KEY = 132
_ROOT_REF_KEY = 156
#: struct btrfs_root_ref (dirid, sequence, name_len), followed by the name.
_ROOT_REF = struct.Struct("<QQH")
#: In struct btrfs_root_item: generation follows the 160-byte inode item; the
#: uuid follows generation, root_dirid, bytenr, byte_limit, bytes_used,
#: last_snapshot, flags, refs, drop_progress (17), drop_level, level, generation_v2.
_ROOT_ITEM_GENERATION = struct.Struct("<Q")
_ROOT_ITEM_GENERATION_AT = 160
_ROOT_ITEM_UUID_AT = 160 + 7 * 8 + 4 + 17 + 1 + 1 + 8
_ROOT_ITEM_MIN_SIZE = _ROOT_ITEM_UUID_AT + 16


def _state(uuid: bytes, treeid: int, generation: int) -> str:
    return f"{uuid.hex()}:{treeid}:{generation}"


def subvolume_state(name: str | os.PathLike, dir_fd: int | None = None) -> str | None:
    """``uuid:treeid:generation`` of the subvolume whose root directory is ``name``
    (relative to ``dir_fd``); None when it is not one, or the ioctl fails."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino != BTRFS_SUBVOL_ROOT_INO:
            return None
        buf = bytearray(_SUBVOL_INFO.size)
        fcntl.ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, buf)
        v = _SUBVOL_INFO.unpack(buf)
        return _state(v[6], v[0], v[4])
    except OSError:
        return None
    finally:
        os.close(fd)


def tree_search(fd: int, tree_id: int, lo: tuple[int, int, int], hi: tuple[int, int, int]):
    """The items of btrfs tree ``tree_id`` (0: the subvolume holding ``fd``) whose keys
    (objectid, type, offset) lie between ``lo`` and ``hi`` (compared as tuples),
    as (objectid, type, offset, bytes), in key order.  BTRFS_IOC_TREE_SEARCH_V2;
    raises OSError (EPERM without CAP_SYS_ADMIN)."""
    buf = bytearray(_SEARCH_KEY.size + 8 + _SEARCH_BUF)
    start = _SEARCH_KEY.size + 8
    key = lo
    while key <= hi:
        _SEARCH_KEY.pack_into(buf, 0, tree_id, key[0], hi[0], key[2], _U64_MAX, 0, _U64_MAX,
                              key[1], hi[1], 0xFFFFFFFF, 0, 0, 0, 0, 0)
        struct.pack_into("=Q", buf, _SEARCH_KEY.size, _SEARCH_BUF)
        fcntl.ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, buf)
        # the kernel compares whole keys against the two given: what comes back lies
        # between them (checked again below all the same); it sets nr_items
        nr = _SEARCH_KEY.unpack_from(buf)[9]
        if nr == 0:
            return
        pos = start
        for _ in range(nr):
            _transid, objectid, offset, typ, length = _SEARCH_HEADER.unpack_from(buf, pos)
            pos += _SEARCH_HEADER.size
            item = (objectid, typ, offset)
            if lo <= item <= hi:
                yield objectid, typ, offset, bytes(buf[pos:pos + length])
            pos += length
        if offset < _U64_MAX:
            key = (objectid, typ, offset + 1)
        elif typ < 0xFF:
            key = (objectid, typ + 1, 0)
        elif objectid < _U64_MAX:
            key = (objectid + 1, 0, 0)
        else:
            return


def child_subvolume_states(dir_fd: int) -> dict[str, str]:
    """name -> ``uuid:treeid:generation`` of every subvolume whose root is an entry of
    the btrfs directory ``dir_fd``, from two searches of the root tree instead of an
    open and an ioctl per subvolume: the directory's ROOT_REF items name them, their
    ROOT_ITEMs give uuid and generation (what GET_SUBVOL_INFO reports).  Raises
    OSError when the search cannot be made (EPERM without CAP_SYS_ADMIN)."""
    buf = bytearray(_SUBVOL_INFO.size)
    fcntl.ioctl(dir_fd, BTRFS_IOC_GET_SUBVOL_INFO, buf)
    parent = _SUBVOL_INFO.unpack(buf)[0]
    dirid = os.fstat(dir_fd).st_ino
    names: dict[int, str] = {}
    for _obj, _typ, child, data in tree_search(dir_fd, _ROOT_TREE, (parent, _ROOT_REF_KEY, 0),
                                               (parent, _ROOT_REF_KEY, _U64_MAX)):
        ref_dirid, _seq, name_len = _ROOT_REF.unpack_from(data)
        if ref_dirid == dirid:
            names[child] = os.fsdecode(data[_ROOT_REF.size:_ROOT_REF.size + name_len])
    if not names:
        return {}
    out = {}
    for tree, typ, _off, data in tree_search(dir_fd, _ROOT_TREE, (min(names), _ROOT_ITEM_KEY, 0),
                                             (max(names), _ROOT_ITEM_KEY, _U64_MAX)):
        name = names.get(tree)
        if name is None or typ != _ROOT_ITEM_KEY or len(data) < _ROOT_ITEM_MIN_SIZE:
            continue
        generation, = _ROOT_ITEM_GENERATION.unpack_from(data, _ROOT_ITEM_GENERATION_AT)
        out[name] = _state(data[_ROOT_ITEM_UUID_AT:_ROOT_ITEM_UUID_AT + 16], tree, generation)
    return out


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
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
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
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
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
    "BTRFS_IOC_SNAP_DESTROY",
    "BTRFS_IOC_SUBVOL_CREATE",
    "BTRFS_IOC_SUBVOL_GETFLAGS",
    "BTRFS_IOC_SUBVOL_SETFLAGS",
    "BTRFS_SUBVOL_RDONLY",
    "BTRFS_SUPER_MAGIC",
    "FICLONE",
    "CloneUnsupported",
    "child_subvolume_states",
    "clone_file",
    "clone_or_copy",
    "create_subvolume",
    "create_tree",
    "delete_subvolume",
    "delete_tree",
    "fs_type",
    "get_readonly",
    "is_btrfs",
    "is_subvolume",
    "remove_tree_path",
    "set_readonly",
    "set_subvolume_readonly",
    "subvolume_state",
    "syncfs",
    "tree_search",
]
