"""Compare one file on disk with its header entry, exactly as ``rpm -V`` does.

The rules are those of rpm 4.18's ``rpmfilesVerify`` and ``verifyHeader``
(lib/verify.c), the version Debian 12 ships and our tests use as the oracle:

- The file is looked up with lstat, relative to a directory fd; a final
  symlink is never followed -- except that where the header lists a directory
  and a symlink to a directory is found, rpm follows it (if the link belongs to
  root or to the directory's owner), and so do we unless told not to
  (``follow_dir_symlink=False``: ``usrview verify`` judges such a link as the
  symlink it is, docs/verify.md).
- Which checks apply depends on the type found on disk, not the one in the
  header: symlinks are not checked for mode (M); everything but a symlink is
  not checked for link target (L); anything but a regular file is not checked
  for digest, size, mtime or capabilities (5 S T P).
- %ghost files are not checked for digest, size, mtime or link target, and
  their mode is compared without the file-type bits.
- The header's verify flags (``%verify(not ...)``) and the caller's ``omit``
  drop further checks.
- Owner and group: the header's *names* are turned into ids (root is always 0)
  and compared with the file's ids.  A name that does not resolve stands for
  id 0, and then the set-uid (set-gid) bit is expected to be clear -- which is
  what ``rpm -i`` installed.
- Device numbers (D) compare the file types char/block and the low 16 bits of
  the device numbers.
- Capabilities (P) compare the effective, permitted and inheritable sets of
  the header's text and the file's ``security.capability`` attribute.
- A file lstat cannot find is ``missing``; if the error was not ENOENT its
  text follows in parentheses.  rpm does not report a missing %ghost or
  %missingok file.
- ``?`` replaces 5 when the file cannot be read and L when readlink fails.

Not done here, because they need the package database rather than one entry:
rpm drops T for a path that several installed packages own, and appends a file
state such as "(replaced)" for files another package replaced.  rpm builds
without ACL support (Debian's) do not check ACLs, and neither do we.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from verifier.filecaps import XATTR_NAME as CAPS_XATTR
from verifier.filecaps import caps_differ
from verifier.fileio import FILE_READ_FLAGS, OwnerIds, hash_fd
from verifier.files import FileEntry, FileFlag, VerifyFlag, digest_name

#: A handle on the file's name alone, for its attributes (no read permission needed).
_NAME_ONLY_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: Bytes read at a time while hashing a file: memory stays bounded for any size.
DIGEST_CHUNK = 1 << 20

#: The flag letters in rpm -V's order, with the check each stands for.
FLAG_LETTERS = (
    (VerifyFlag.FILESIZE, "S"),
    (VerifyFlag.MODE, "M"),
    (VerifyFlag.FILEDIGEST, "5"),
    (VerifyFlag.RDEV, "D"),
    (VerifyFlag.LINKTO, "L"),
    (VerifyFlag.USER, "U"),
    (VerifyFlag.GROUP, "G"),
    (VerifyFlag.MTIME, "T"),
    (VerifyFlag.CAPS, "P"),
)

#: The attribute marker is the first letter of rpm's rpmFFlagsString, in this order
#: (so %doc wins over %config).  SPECFILE only occurs in source packages.
MARKERS = (
    (FileFlag.DOC, "d"),
    (FileFlag.CONFIG, "c"),
    (FileFlag.SPECFILE, "s"),
    (FileFlag.MISSINGOK, "m"),
    (FileFlag.NOREPLACE, "n"),
    (FileFlag.GHOST, "g"),
    (FileFlag.LICENSE, "l"),
    (FileFlag.README, "r"),
    (FileFlag.ARTIFACT, "a"),
)

_CONTENT_CHECKS = VerifyFlag.FILEDIGEST | VerifyFlag.FILESIZE | VerifyFlag.MTIME
_RDEV_MASK = 0xFFFF  # rpm keeps device numbers in 16 bits


_MARKER_MEMO: dict[int, str] = {}
_MARKERS_INT = tuple((int(flag), letter) for flag, letter in MARKERS)


def attribute_marker(flags: FileFlag) -> str:
    """The one-character attribute column of an rpm -V line (space when none)."""
    flags = int(flags)
    letter = _MARKER_MEMO.get(flags)
    if letter is None:
        letter = next((ch for bit, ch in _MARKERS_INT if flags & bit), " ")
        _MARKER_MEMO[flags] = letter
    return letter


@dataclass(frozen=True, slots=True)
class FileResult:
    """The outcome of checking one file, as rpm -V sees it.

    Attributes:
        path: the path the header lists.
        marker: attribute character: ``d c s m n g l r a`` or space.
        differs: VerifyFlag bits of the checks that found a difference (or
            could not be done; see ``unknown``).
        unknown: VerifyFlag bits shown as ``?``: FILEDIGEST when the file could
            not be read or hashed, LINKTO when readlink failed.
        missing: lstat failed.
        error: the strerror text when lstat failed with anything but ENOENT.
        quiet_missing: missing, but rpm does not report it (%ghost, %missingok).
    """

    path: str
    marker: str
    differs: VerifyFlag = VerifyFlag(0)
    unknown: VerifyFlag = VerifyFlag(0)
    missing: bool = False
    error: str = ""
    quiet_missing: bool = False

    @property
    def flags(self) -> str:
        """The nine-character ``SM5DLUGTP`` column: letter, ``.`` or ``?``."""
        return "".join("?" if self.unknown & bit else letter if self.differs & bit else "."
                       for bit, letter in FLAG_LETTERS)

    @property
    def clean(self) -> bool:
        """True when plain rpm -V prints nothing for this file."""
        if self.missing:
            return self.quiet_missing
        return not self.differs

    def format(self) -> str:
        """The line rpm -V prints (rpm -Vv for a clean file), without newline."""
        if self.missing:
            line = f"missing   {self.marker} {self.path}"
            return f"{line} ({self.error})" if self.error else line
        return f"{self.flags}  {self.marker} {self.path}"


def _resolve_id(name: str, table: Mapping[str, int]) -> int | None:
    return 0 if name == "root" else table.get(name)


def expected_ids_and_mode(entry: FileEntry, users: Mapping[str, int] | None = None,
                          groups: Mapping[str, int] | None = None) -> tuple[int, int, int]:
    """(uid, gid, st_mode) that ``rpm -i`` gives ``entry``, as rpm -V expects them.

    An owner name that does not resolve becomes 0, and the set-uid (set-gid)
    bit is dropped: rpm installs such files as root without it.
    """
    mode = entry.mode & 0xFFFF
    uid = _resolve_id(entry.user, OwnerIds.users() if users is None else users)
    if uid is None:
        uid = 0
        mode &= ~stat.S_ISUID
    gid = _resolve_id(entry.group, OwnerIds.groups() if groups is None else groups)
    if gid is None:
        gid = 0
        mode &= ~stat.S_ISGID
    return uid, gid, mode


def metadata_matches(entry: FileEntry, st: os.stat_result, uid: int, gid: int, mode: int) -> bool:
    """A shortcut for bulk checks: True when ``st`` (the file's lstat) shows exactly what
    ``entry`` describes -- the same type and mode, owner and group ids, and for a regular
    file the same size and mtime.  ``uid, gid, mode``: :func:`expected_ids_and_mode`'s.

    Then :func:`check_file` finds no difference but possibly 5 and P (the digest and
    the capabilities, which need the file's bytes and attribute): each comparison it
    makes is between equal values, whatever the verify flags and file flags.  A
    symlink is never accepted (its target needs readlink), nor any other type.  On
    False, call check_file.
    """
    st_mode = st.st_mode
    if st_mode != mode or st.st_uid != uid or st.st_gid != gid:
        return False
    if stat.S_ISREG(st_mode):
        return st.st_size == entry.size and st.st_mtime_ns // 1_000_000_000 == entry.mtime
    return stat.S_ISDIR(st_mode)


def _open_regular(dir_fd: int, relpath: str, st: os.stat_result) -> int | None:
    """Open the file lstat found, for reading; None if that is impossible.

    O_NONBLOCK: should the file have been swapped for a FIFO since lstat, the
    open must not wait for a writer; the fstat check then refuses it.
    """
    try:
        fd = os.open(relpath, FILE_READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    fst = os.fstat(fd)
    if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        return None
    return fd


def _read_caps_xattr(dir_fd: int, relpath: str, fd: int | None) -> bytes | None:
    """The file's security.capability value, None when it has none or it cannot be read
    (libcap's cap_get_file then returns NULL too)."""
    try:
        if fd is not None:
            return os.getxattr(fd, CAPS_XATTR)
        # Unreadable file: reading an attribute needs no read permission, but
        # os.getxattr takes no dir_fd, so go through an O_PATH descriptor.
        pfd = os.open(relpath, _NAME_ONLY_FLAGS, dir_fd=dir_fd)
        try:
            return os.getxattr(f"/proc/self/fd/{pfd}", CAPS_XATTR)
        finally:
            os.close(pfd)
    except OSError:
        return None


# Plain ints for the per-file hot path (IntFlag arithmetic costs microseconds per operation).
_F_DIGEST = int(VerifyFlag.FILEDIGEST)
_F_SIZE = int(VerifyFlag.FILESIZE)
_F_LINKTO = int(VerifyFlag.LINKTO)
_F_USER = int(VerifyFlag.USER)
_F_GROUP = int(VerifyFlag.GROUP)
_F_MTIME = int(VerifyFlag.MTIME)
_F_MODE = int(VerifyFlag.MODE)
_F_RDEV = int(VerifyFlag.RDEV)
_F_CAPS = int(VerifyFlag.CAPS)
_F_ALL = int(VerifyFlag.ALL)
_F_CONTENT = int(_CONTENT_CHECKS)
_GHOST = int(FileFlag.GHOST)
_QUIET_MISSING = int(FileFlag.GHOST | FileFlag.MISSINGOK)
_NO_FLAGS = VerifyFlag(0)


def check_file(dir_fd: int, relpath: str, entry: FileEntry, *, check_digest: bool = True,
               users: Mapping[str, int] | None = None, groups: Mapping[str, int] | None = None,
               omit: VerifyFlag = VerifyFlag(0), st: os.stat_result | None = None,
               follow_dir_symlink: bool = True) -> FileResult:
    """Check the file at ``relpath`` (relative to ``dir_fd``) against ``entry``.

    ``users``/``groups`` map owner names to ids (None: the system's passwd and
    group databases); ``check_digest=False`` or ``omit`` leave checks out, as
    rpm -V's ``--nofiledigest``, ``--nomtime`` ... do.  ``st``: the file's
    lstat result when the caller already has it (one system call less).
    ``follow_dir_symlink=False``: a symlink where the header lists a directory is
    checked as a symlink, never followed (rpm follows a root-owned one).
    """
    marker = attribute_marker(entry.flags)
    eflags = int(entry.flags)
    if st is None:
        try:
            st = os.stat(relpath, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            return FileResult(entry.path, marker, missing=True,
                              error="" if e.errno == errno.ENOENT else os.strerror(e.errno),
                              quiet_missing=bool(eflags & _QUIET_MISSING))

    expected_mode = entry.mode & 0xFFFF
    st_mode = st.st_mode
    if follow_dir_symlink and stat.S_ISDIR(expected_mode) and stat.S_ISLNK(st_mode):
        try:
            target = os.stat(relpath, dir_fd=dir_fd, follow_symlinks=True)
        except OSError:
            target = None
        if target is not None and stat.S_ISDIR(target.st_mode) and st.st_uid in (0, target.st_uid):
            st = target
            st_mode = st.st_mode

    checks = int(entry.verify_flags) & _F_ALL
    is_reg = stat.S_ISREG(st_mode)
    if stat.S_ISLNK(st_mode):
        checks &= ~_F_MODE
    else:
        checks &= ~_F_LINKTO
    if not is_reg:
        checks &= ~(_F_CONTENT | _F_CAPS)
    if eflags & _GHOST:
        checks &= ~(_F_CONTENT | _F_LINKTO)
    if not check_digest:
        checks &= ~_F_DIGEST
    checks &= ~int(omit)

    differs = 0
    unknown = 0
    uid, gid, expected_mode = expected_ids_and_mode(entry, users, groups)

    fd = None
    if checks & (_F_DIGEST | _F_CAPS):
        fd = _open_regular(dir_fd, relpath, st)
    try:
        if checks & _F_DIGEST:
            algo = digest_name(entry.digest_algo)
            if fd is None or algo is None:
                differs |= _F_DIGEST
                unknown |= _F_DIGEST
            else:
                try:
                    actual = hash_fd(fd, algo, buf=bytearray(DIGEST_CHUNK))[0]
                except OSError:
                    differs |= _F_DIGEST
                    unknown |= _F_DIGEST
                else:
                    # An empty header digest (a non-regular entry) never matches, as in rpm.
                    if actual != entry.digest.lower():
                        differs |= _F_DIGEST

        if checks & _F_LINKTO:
            try:
                target = os.readlink(relpath, dir_fd=dir_fd)
            except OSError:
                differs |= _F_LINKTO
                unknown |= _F_LINKTO
            else:
                if target != entry.linkto:
                    differs |= _F_LINKTO

        if checks & _F_SIZE:
            # The header has a size only for regular files and symlinks.
            size = entry.size if stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode) else 0
            if st.st_size != size:
                differs |= _F_SIZE

        if checks & _F_MODE:
            mine, theirs = st_mode, expected_mode
            if eflags & _GHOST:  # the type of a %ghost is meaningless
                mine, theirs = stat.S_IMODE(mine), stat.S_IMODE(theirs)
            if mine != theirs:
                differs |= _F_MODE

        if checks & _F_RDEV:
            if (stat.S_ISCHR(expected_mode) != stat.S_ISCHR(st_mode)
                    or stat.S_ISBLK(expected_mode) != stat.S_ISBLK(st_mode)):
                differs |= _F_RDEV
            elif stat.S_ISCHR(st_mode) or stat.S_ISBLK(st_mode):
                if (st.st_rdev & _RDEV_MASK) != (entry.rdev & _RDEV_MASK):
                    differs |= _F_RDEV

        if checks & _F_CAPS:
            if caps_differ(entry.caps, _read_caps_xattr(dir_fd, relpath, fd)):
                differs |= _F_CAPS
    finally:
        if fd is not None:
            os.close(fd)

    if checks & _F_MTIME and st.st_mtime_ns // 1_000_000_000 != entry.mtime:
        differs |= _F_MTIME
    if checks & _F_USER and st.st_uid != uid:
        differs |= _F_USER
    if checks & _F_GROUP and st.st_gid != gid:
        differs |= _F_GROUP

    if not differs:
        return FileResult(entry.path, marker)
    return FileResult(entry.path, marker, VerifyFlag(differs), VerifyFlag(unknown))
