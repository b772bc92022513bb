"""One file as a signed RPM header describes it, and the flag words rpm uses.

A :class:`FileEntry` is built by :func:`verifier.header.file_entries` from a
parsed main header; the file check (:mod:`verifier.filecheck`) and everything in
``usrview/`` consume it.
"""

from __future__ import annotations

import enum
import hashlib
import stat
from typing import NamedTuple


class FileFlag(enum.IntFlag):
    """RPMFILE_* bits of RPMTAG_FILEFLAGS (rpm's rpmfiles.h)."""

    CONFIG = 1 << 0
    DOC = 1 << 1
    ICON = 1 << 2
    MISSINGOK = 1 << 3
    NOREPLACE = 1 << 4
    SPECFILE = 1 << 5
    GHOST = 1 << 6
    LICENSE = 1 << 7
    README = 1 << 8
    PUBKEY = 1 << 11
    ARTIFACT = 1 << 12


class VerifyFlag(enum.IntFlag):
    """RPMVERIFY_* bits of RPMTAG_FILEVERIFYFLAGS: which checks apply to a file."""

    FILEDIGEST = 1 << 0
    FILESIZE = 1 << 1
    LINKTO = 1 << 2
    USER = 1 << 3
    GROUP = 1 << 4
    MTIME = 1 << 5
    MODE = 1 << 6
    RDEV = 1 << 7
    CAPS = 1 << 8

    ALL = 0x1FF


#: OpenPGP hash algorithm ids (RFC 4880 9.4 / RFC 9580 9.5) used by
#: RPMTAG_FILEDIGESTALGO, mapped to hashlib names.  MD5 is the default when the
#: tag is absent.  SHA3 ids come from RFC 9580.
DIGEST_ALGOS: dict[int, str] = {
    1: "md5",
    2: "sha1",
    8: "sha256",
    9: "sha384",
    10: "sha512",
    11: "sha224",
    12: "sha3_256",
    14: "sha3_512",
}
DEFAULT_DIGEST_ALGO = 1


def digest_name(algo: int) -> str | None:
    """The hashlib name of a file-digest algorithm id, or None if unsupported."""
    name = DIGEST_ALGOS.get(algo)
    if name is None or name not in hashlib.algorithms_available:
        return None
    return name


class FileEntry(NamedTuple):
    """One file of a package, as the main header lists it.

    Attributes:
        path: absolute install path (dirname + basename, or OLDFILENAMES).
        size: file size in bytes (LONGFILESIZES when present, else FILESIZES).
        mode: the full st_mode, type bits included (FILEMODES, unsigned 16 bit).
        rdev: device number of a device node (FILERDEVS).
        mtime: modification time, seconds since the epoch (FILEMTIMES).
        digest: lowercase hex digest of a regular file's bytes; "" when none.
        digest_algo: OpenPGP hash id of ``digest`` (see DIGEST_ALGOS).
        linkto: symlink target; "" for anything but a symlink.
        flags: FileFlag bits (%config, %ghost, %doc ...).
        user, group: owner names (FILEUSERNAME, FILEGROUPNAME).
        verify_flags: VerifyFlag bits: the checks ``rpm -V`` applies.
        device, inode: FILEDEVICES/FILEINODES: equal pairs form a hardlink group.
        lang: FILELANGS entry, "" when none.
        caps: FILECAPS text (e.g. "cap_net_raw=ep"), "" when none.
        color: FILECOLORS bits (1 = ELF32, 2 = ELF64), 0 when absent.

    A named tuple, not a dataclass: headers of thousands of files build one
    per file, and a tuple is several times cheaper to make.
    """

    path: str
    size: int
    mode: int
    rdev: int
    mtime: int
    digest: str
    digest_algo: int
    linkto: str
    flags: FileFlag
    user: str
    group: str
    verify_flags: VerifyFlag
    device: int
    inode: int
    lang: str
    caps: str
    color: int = 0

    @property
    def is_ghost(self) -> bool:
        return bool(self.flags & FileFlag.GHOST)

    @property
    def is_ghost_symlink(self) -> bool:
        """A %ghost symlink whose header gives its target: how Fedora and openSUSE
        ship the names ``alternatives`` manages (/usr/bin/ld -> /etc/alternatives/ld).
        rpmbuild records a target only for a symlink that existed in the build root;
        a %ghost missing there has mode 0100000 and no target."""
        return bool(self.flags & FileFlag.GHOST) and stat.S_ISLNK(self.mode) and bool(self.linkto)

    @property
    def is_config(self) -> bool:
        return bool(self.flags & FileFlag.CONFIG)
