"""The store: packages at their install paths, their signed headers, and the lock.

Layout (docs/store-format.md is the reference; this module checks it)::

    STORE/format             "usrview-store 1\\n"
    STORE/lock               flock()ed exclusively by every command that changes the store
    STORE/packages/PKGID/    one package's files (a read-only subvolume on btrfs)
    STORE/headers/PKGID.rpm  the package's header-only rpm, byte-exact
    STORE/unsigned/PKGID     present when the package was imported unsigned
    STORE/legacy/PKGID       present when only the legacy signature policy accepts the package
    STORE/images/, current, previous   the image layer's (usrview/images/records.py)
    STORE/boot.json          the images' boot states and fallback events (usrview/images/bootstate.py)
    STORE/cache/             hints, rebuilt when lost: verify.sqlite (usrview/verify/vcache.py)
    STORE/downloads/         pull's rpms by SHA-256: H.part being fetched (kept to resume),
                             H.rpm fetched whole and verified; never a package (usrview/remote/)
    STORE/remote.json        the newest image index serial accepted per repository and image
    STORE/tmp/               work in progress; leftovers are removed under the lock

A package exists exactly when its header file exists: the header is written
last on import and removed first on deletion.  Readers take no lock; every
change they can see is one ``rename(2)`` or ``unlink(2)``.

Writers take :meth:`Store.lock` (reentrant within one Store object).  Taking
it cleans up after an interrupted command: everything in ``tmp/`` goes, and so
does every ``packages/PKGID``, ``unsigned/PKGID`` or ``legacy/PKGID`` without
its header.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from usrview.errors import OperationalError
from usrview.store.atomic import FILE_CREATE_FLAGS, temp_token, write_and_rename  # noqa: F401 -- FILE_CREATE_FLAGS: for commit, importer
from verifier import policy as policies
from verifier.errors import HeaderError
from verifier.fileio import DIR_FLAGS, FILE_READ_FLAGS
from verifier.files import FileEntry, FileFlag
from verifier.header import Package, read_package
from verifier.headerfile import HEADER_FILE_MAX

from . import btrfs

log = logging.getLogger(__name__)

_GHOST = int(FileFlag.GHOST)
FORMAT_FILE = "format"
FORMAT_NAME = "usrview-store"
FORMAT_VERSION = 1
FORMAT_LINE = f"{FORMAT_NAME} {FORMAT_VERSION}\n"
LOCK_FILE = "lock"
PACKAGES_DIR = "packages"
HEADERS_DIR = "headers"
UNSIGNED_DIR = "unsigned"
#: Markers of packages only the legacy signature policy accepts (verifier.policy).
#: Made by ``Store.open(create=True)`` and by the first import that needs it: a
#: store without it has no such package.
LEGACY_DIR = "legacy"
IMAGES_DIR = "images"
#: The images' boot states (usrview/images/bootstate.py), replaced whole by atomic_write.
BOOT_STATE_FILE = "boot.json"
TMP_DIR = "tmp"
#: Made by the first cache written, not by ``Store.open``: a store without it is whole.
CACHE_DIR = "cache"
#: Made by the first pull: what ``tmp/`` cannot hold, as the lock empties it.
DOWNLOADS_DIR = "downloads"
#: The serials of the image indexes accepted by pull (replayed old ones are refused).
REMOTE_STATE_FILE = "remote.json"
HEADER_SUFFIX = ".rpm"
#: Directories made by ``Store.open(create=True)``, besides the root.
LAYOUT_DIRS = (PACKAGES_DIR, HEADERS_DIR, UNSIGNED_DIR, IMAGES_DIR, TMP_DIR)
#: Directories a store of this format may lack (older stores), made when first needed.
LATER_DIRS = (LEGACY_DIR,)
#: The signature policy recorded for a package without a legacy/ marker, and with one.
DEFAULT_POLICY = policies.DEFAULT.name
LEGACY_POLICY = policies.LEGACY.name
#: Mode of the store root and its directories: setuid copies inside stay unreachable.
STORE_MODE = 0o700
#: Hex digits of the header SHA-256 in a package id.
PKGID_HASH_DIGITS = 16
#: Longest file name (NAME_MAX): a package id is a file name.
NAME_MAX = 255
#: How long a writer waits for another to release the lock, and how often it looks.
LOCK_TIMEOUT = 600.0
LOCK_POLL = 0.2

#: The largest image record or boot state read: far above any real one (a record of
#: 100,000 packages is about 10 MiB), far below what would exhaust memory.
JSON_FILE_MAX = 64 << 20



#: Part of the name of every temp file atomic_write and atomic_symlink make.
TEMP_MARK = ".usrview-tmp."


def _temp_file_name(name: str) -> str:
    return f".{name}{TEMP_MARK}{os.getpid()}.{temp_token()}"


class StoreError(OperationalError):
    """The store is missing, of another format, busy, or an operation on it failed."""


def pkgid_for(package: Package) -> str:
    """``NEVRA-H``: the package's id in the store (H: 16 hex digits of the header SHA-256).

    Raises StoreError when the NEVRA cannot be a file name (a hostile header).
    """
    return make_pkgid(package.nevra if package.name else "", package.header_sha256)


def make_pkgid(nevra: str, header_sha256: str) -> str:
    """The id of the package NEVRA whose header region has this SHA-256 (:func:`pkgid_for`)."""
    pkgid = f"{nevra}-{header_sha256[:PKGID_HASH_DIGITS]}"
    if ("/" in nevra or "\0" in nevra or nevra.startswith(".") or not nevra
            or len(os.fsencode(pkgid + HEADER_SUFFIX)) > NAME_MAX):
        raise StoreError(f"package name {nevra!r} cannot be stored (not a valid file name)")
    return pkgid


def _valid_pkgid(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


@dataclass
class StoredPackage:
    """A package in the store.

    Attributes:
        pkgid: its id (``NEVRA-H``), the name of its directory and header file.
        store: the store holding it.
        unsigned: True when it was imported with ``--allow-unsigned``.
        signature_policy: "legacy" when only the legacy signature policy accepts
            it (its ``legacy/`` marker), else "default".
        nevra: its NEVRA (from the id; no parsing).
        package: its parsed header (read on first use).
        header_sha256: SHA-256 of its signed header region (parses the header).
        name: the package name (parses the header).
    """

    pkgid: str
    store: Store = field(repr=False)
    unsigned: bool = False
    signature_policy: str = DEFAULT_POLICY

    @property
    def nevra(self) -> str:
        return self.pkgid.rsplit("-", 1)[0]

    @property
    def header_path(self) -> Path:
        return self.store.header_path(self.pkgid)

    @property
    def path(self) -> Path:
        return self.store.package_dir(self.pkgid)

    @cached_property
    def package(self) -> Package:
        try:
            return read_package(self.store.read_header(self.pkgid))
        except HeaderError as e:
            raise StoreError(f"stored header {self.header_path} is corrupt: {e}") from None
        except OSError as e:
            raise StoreError(f"cannot read stored header {self.header_path}: {e.strerror or e}") from None

    @property
    def header_sha256(self) -> str:
        return self.package.header_sha256

    @property
    def name(self) -> str:
        return self.package.name


class Store:
    """An open store.

    Attributes:
        root: the store directory.
        is_btrfs: whether it lies on btrfs (packages are subvolumes then).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.is_btrfs = btrfs.is_btrfs(self.root)
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._index: dict[tuple[int, str], tuple[str, FileEntry]] | None = None
        self._index_pkgids: set[str] = set()
        #: (pkgid, path) of stored files whose bytes were hashed and matched in this process.
        self.verified_sources: set[tuple[str, str]] = set()
        #: None until known: whether FICLONE works inside this store.
        self.reflinks: bool | None = None

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike, *, create: bool = False) -> Store:
        """Open the store at ``root``; with ``create``, make it first when absent.

        Refuses a directory whose ``format`` is not this version's.  Opening
        takes no lock: writers call :meth:`lock`.
        """
        root = Path(root)
        fmt = root / FORMAT_FILE
        try:
            if create and not fmt.exists():
                cls._create(root)
            text = fmt.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if root.is_dir() and any(root.iterdir()):
                raise StoreError(f"{root} is not a usrview store (no {FORMAT_FILE} file)") from None
            raise StoreError(f"no store at {root} (import or deploy a package to create one)") from None
        except OSError as e:
            raise StoreError(f"cannot open the store {root}: {e.strerror or e}") from None
        if text != FORMAT_LINE:
            words = text.split()
            if len(words) == 2 and words[0] == FORMAT_NAME:
                raise StoreError(f"{root} is a store of format version {words[1]}; this usrview "
                                 f"reads version {FORMAT_VERSION} only")
            raise StoreError(f"{root} is not a usrview store ({FORMAT_FILE} says {text[:40]!r})")
        missing = [d for d in LAYOUT_DIRS if not (root / d).is_dir()]
        if missing:
            raise StoreError(f"store {root} is damaged: missing {', '.join(missing)}")
        return cls(root)

    @staticmethod
    def _create(root: Path) -> None:
        if root.exists() and any(p.name != "lost+found" for p in root.iterdir()):
            raise StoreError(f"cannot create a store in {root}: the directory is not empty")
        root.mkdir(mode=STORE_MODE, parents=True, exist_ok=True)
        os.chmod(root, STORE_MODE)
        for name in LAYOUT_DIRS + LATER_DIRS:
            (root / name).mkdir(mode=STORE_MODE, exist_ok=True)
        (root / LOCK_FILE).touch(mode=0o600)
        # format last: a store whose creation was interrupted has no format
        # file and is created again.
        Store.atomic_write(root / FORMAT_FILE, FORMAT_LINE.encode(), tmp_dir=root / TMP_DIR)
        log.info("created the store %s", root)

    # -- the lock ------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, timeout: float = LOCK_TIMEOUT) -> Iterator[Store]:
        """Hold the store's exclusive lock (reentrant), cleaning leftovers on taking it."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreError(f"the store {self.root} is locked by another command") from None
                    if not waited:
                        log.info("waiting for the lock of %s", self.root)
                        waited = True
                    time.sleep(LOCK_POLL)
            self._lock_fd, self._lock_depth = fd, 1
            self.cleanup()
            yield self
        finally:
            self._lock_fd, self._lock_depth = None, 0
            os.close(fd)  # releases the flock

    @property
    def locked(self) -> bool:
        return self._lock_depth > 0

    def _require_lock(self) -> None:
        if not self.locked:
            raise RuntimeError("this store operation needs Store.lock()")

    def cleanup(self) -> list[str]:
        """Remove the leftovers of interrupted commands (needs the lock); return what went."""
        self._require_lock()
        removed = []
        try:
            tmp = self._dir_fd(TMP_DIR)
            try:
                for name in os.listdir(tmp):
                    btrfs.delete_tree(tmp, name)
                    removed.append(f"{TMP_DIR}/{name}")
            finally:
                os.close(tmp)
            # atomic_write's and atomic_symlink's temp files: hidden names
            later = [d for d in LATER_DIRS if (self.root / d).is_dir()]
            for sub in ("", HEADERS_DIR, UNSIGNED_DIR, IMAGES_DIR, *later):
                for name in os.listdir(self.root / sub):
                    if name.startswith(".") and TEMP_MARK in name:
                        os.unlink(self.root / sub / name)
                        removed.append(f"{sub}/{name}" if sub else name)
            headers = {n[:-len(HEADER_SUFFIX)] for n in os.listdir(self.root / HEADERS_DIR)
                       if n.endswith(HEADER_SUFFIX)}
            for sub in (PACKAGES_DIR, UNSIGNED_DIR, *later):
                fd = self._dir_fd(sub)
                try:
                    for name in os.listdir(fd):
                        if name not in headers:
                            btrfs.delete_tree(fd, name)
                            removed.append(f"{sub}/{name}")
                finally:
                    os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot clean up the store {self.root}: {e.strerror or e}") from None
        if removed:
            log.info("removed leftovers of an interrupted command: %s", ", ".join(removed))
            self._index = None
        return removed

    # -- packages ------------------------------------------------------------

    @property
    def boot_state_path(self) -> Path:
        return self.root / BOOT_STATE_FILE

    @property
    def downloads_dir(self) -> Path:
        return self.root / DOWNLOADS_DIR

    @property
    def remote_state_path(self) -> Path:
        return self.root / REMOTE_STATE_FILE

    def package_dir(self, pkgid: str) -> Path:
        return self.root / PACKAGES_DIR / pkgid

    def header_path(self, pkgid: str) -> Path:
        return self.root / HEADERS_DIR / (pkgid + HEADER_SUFFIX)

    def unsigned_path(self, pkgid: str) -> Path:
        return self.root / UNSIGNED_DIR / pkgid

    def read_header(self, pkgid: str) -> bytes:
        """The bytes of the package's header file (:func:`read_store_file`); OSError."""
        return read_store_file(self.header_path(pkgid), HEADER_FILE_MAX)

    def legacy_path(self, pkgid: str) -> Path:
        return self.root / LEGACY_DIR / pkgid

    def make_later_dirs(self) -> None:
        """Make the directories an older store lacks (:data:`LATER_DIRS`), durably;
        needs the lock."""
        self._require_lock()
        made = False
        for name in LATER_DIRS:
            try:
                os.mkdir(self.root / name, STORE_MODE)
                made = True
            except FileExistsError:
                pass
        if made:
            self.fsync_dir(self.root)

    def has(self, pkgid: str) -> bool:
        """True when the package is stored (its header file exists)."""
        return _valid_pkgid(pkgid) and self.header_path(pkgid).is_file()

    def pkgids(self) -> list[str]:
        """Ids of the stored packages, sorted."""
        try:
            names = os.listdir(self.root / HEADERS_DIR)
        except OSError as e:
            raise StoreError(f"cannot list {self.root / HEADERS_DIR}: {e.strerror or e}") from None
        return sorted(n[:-len(HEADER_SUFFIX)] for n in names
                      if n.endswith(HEADER_SUFFIX) and _valid_pkgid(n))

    def stored(self, pkgids: Iterable[str]) -> list[str]:
        """The ``pkgids`` that are stored (as :meth:`has` says), in their order, with one
        read of ``headers/``; none when it cannot be read."""
        try:
            with os.scandir(self.root / HEADERS_DIR) as it:
                names = {de.name[:-len(HEADER_SUFFIX)] for de in it
                         if de.name.endswith(HEADER_SUFFIX) and not de.name.startswith(".") and de.is_file()}
        except OSError:
            names = set()
        return [p for p in pkgids if p in names]

    def unsigned_pkgids(self) -> set[str]:
        """Ids of the packages imported unsigned (their ``unsigned/`` markers); OSError
        when they cannot be listed."""
        return set(os.listdir(self.root / UNSIGNED_DIR))

    def legacy_pkgids(self) -> set[str]:
        """Ids of the packages only the legacy signature policy accepts (their
        ``legacy/`` markers; none in a store without ``legacy/``); OSError when
        they cannot be listed."""
        try:
            return set(os.listdir(self.root / LEGACY_DIR))
        except FileNotFoundError:
            return set()

    def signature_policy(self, pkgid: str) -> str:
        """The signature policy recorded for a package: "legacy" or "default"."""
        return LEGACY_POLICY if self.legacy_path(pkgid).exists() else DEFAULT_POLICY

    def packages(self) -> list[StoredPackage]:
        """Every stored package, sorted by id; headers are parsed only when asked."""
        unsigned, legacy = self.unsigned_pkgids(), self.legacy_pkgids()
        return [StoredPackage(p, self, p in unsigned, LEGACY_POLICY if p in legacy else DEFAULT_POLICY)
                for p in self.pkgids()]

    def header_stats(self, pkgids: Iterable[str]) -> dict[str, os.stat_result]:
        """pkgid -> the lstat of its header file, for the ``pkgids`` whose header file
        could be looked at, from one open of ``headers/`` (for keys that change with
        the header file: device, inode, size, mtime, ctime)."""
        out: dict[str, os.stat_result] = {}
        try:
            hfd = self._dir_fd(HEADERS_DIR)
        except OSError:
            return out
        try:
            for p in pkgids:
                try:
                    out[p] = os.stat(p + HEADER_SUFFIX, dir_fd=hfd, follow_symlinks=False)
                except OSError:
                    continue
        finally:
            os.close(hfd)
        return out

    def cache_path(self, name: str) -> Path:
        """The cache file ``name`` (its directory, ``cache/``, may not exist yet)."""
        return self.root / CACHE_DIR / name

    def open_package_dir(self, pkgid: str) -> int:
        """An fd of the package's directory (``O_DIRECTORY|O_NOFOLLOW``), to open its
        files beneath; the caller closes it.  Raises OSError."""
        return os.open(self.package_dir(pkgid), DIR_FLAGS)

    def open_packages_dir(self) -> int:
        """An fd of the directory holding every package's directory (for syncfs and
        btrfs's subvolume searches); the caller closes it.  Raises OSError."""
        return self._dir_fd(PACKAGES_DIR)

    def open_tmp_dir(self) -> int:
        """An fd of ``tmp/``, where writers stage their work; the caller closes it."""
        return self._dir_fd(TMP_DIR)

    def open_headers_dir(self) -> int:
        """An fd of ``headers/``; the caller closes it."""
        return self._dir_fd(HEADERS_DIR)

    def open_unsigned_dir(self) -> int:
        """An fd of ``unsigned/``; the caller closes it."""
        return self._dir_fd(UNSIGNED_DIR)

    def open_legacy_dir(self) -> int:
        """An fd of ``legacy/``, made first in an older store (needs the lock); the
        caller closes it."""
        self.make_later_dirs()
        return self._dir_fd(LEGACY_DIR)

    @property
    def headers_dir(self) -> Path:
        return self.root / HEADERS_DIR

    def get(self, pkgid: str) -> StoredPackage:
        """The stored package ``pkgid``; StoreError when absent."""
        if not self.has(pkgid):
            raise StoreError(f"package {pkgid} is not in the store {self.root}")
        return StoredPackage(pkgid, self, self.unsigned_path(pkgid).exists(), self.signature_policy(pkgid))

    pkgid_for = staticmethod(pkgid_for)

    def delete_package(self, pkgid: str) -> None:
        """Remove a package: header first (it vanishes atomically), then its files.

        Needs the lock.  A subvolume goes in one ioctl; a plain directory
        tree interrupted while it is removed is a leftover (no header) that
        cleanup removes.
        """
        self._require_lock()
        if not self.has(pkgid):
            raise StoreError(f"package {pkgid} is not in the store {self.root}")
        try:
            os.unlink(self.header_path(pkgid))
            self.fsync_dir(self.root / HEADERS_DIR)
            for marker in (self.unsigned_path(pkgid), self.legacy_path(pkgid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)
            # deleted where it is (btrfs cannot move a read-only subvolume to
            # tmp/): without its header it is a leftover that cleanup removes
            # should this be interrupted.
            packages = self._dir_fd(PACKAGES_DIR)
            try:
                btrfs.delete_tree(packages, pkgid)
            finally:
                os.close(packages)
        except OSError as e:
            raise StoreError(f"cannot delete {pkgid}: {e.strerror or e}") from None
        self._index = None
        log.info("deleted %s", pkgid)

    # -- the digest index (for reflinks) -------------------------------------

    def digest_index(self) -> dict[tuple[int, str], tuple[str, FileEntry]]:
        """(digest algorithm, hex digest) -> (pkgid, FileEntry) of a stored regular file.

        Built from the stored headers once per Store object and extended by
        :meth:`index_package`; non-empty, non-ghost regular files only.
        """
        if self._index is None:
            self._index, self._index_pkgids = {}, set()
            for sp in self.packages():
                self.index_package(sp.pkgid, sp.package)
        return self._index

    def index_package(self, pkgid: str, package: Package) -> None:
        """Add a stored package's files to the digest index (if it is built)."""
        if self._index is None or pkgid in self._index_pkgids:
            return
        self._index_pkgids.add(pkgid)
        index = self._index
        for f in package.files:
            if f.size and f.digest and stat.S_ISREG(f.mode) and not int(f.flags) & _GHOST:
                index.setdefault((f.digest_algo, f.digest), (pkgid, f))

    # -- helpers for writers -------------------------------------------------

    def temp_name(self, what: str) -> str:
        """A fresh name for work in ``tmp/``."""
        return f"{what}.{os.getpid()}.{temp_token()}"

    def _dir_fd(self, sub: str) -> int:
        return os.open(self.root / sub, DIR_FLAGS)

    @staticmethod
    def fsync_dir(path: str | os.PathLike) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_file(self, path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
        """:meth:`atomic_write` of one of the store's own files, by way of ``tmp/``."""
        Store.atomic_write(path, data, tmp_dir=self.root / TMP_DIR, mode=mode)

    def point_symlink(self, target: str, link: str | os.PathLike) -> None:
        """:meth:`atomic_symlink` of one of the store's own links, by way of ``tmp/``."""
        Store.atomic_symlink(target, link, tmp_dir=self.root / TMP_DIR)

    @staticmethod
    def atomic_write(path: str | os.PathLike, data: bytes, *, tmp_dir: str | os.PathLike | None = None,
                     mode: int = 0o644) -> None:
        """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync the directory.

        The temp file is made in ``tmp_dir`` (default: beside ``path``; it
        must be on the same file system).
        """
        path = Path(path)
        tmp_dir = Path(tmp_dir) if tmp_dir is not None else path.parent
        write_and_rename(tmp_dir / _temp_file_name(path.name), path, data, mode)
        Store.fsync_dir(path.parent)

    @staticmethod
    def atomic_write_beneath(dir_fd: int, name: str, data: bytes, *, tmp_dir_fd: int, mode: int = 0o644) -> None:
        """:meth:`atomic_write` by names beneath directory fds only (:mod:`usrview.store.atomic`)."""
        write_and_rename(_temp_file_name(name), name, data, mode, tmp_dir_fd, dir_fd)
        os.fsync(dir_fd)

    @staticmethod
    def atomic_symlink(target: str, link: str | os.PathLike, *, tmp_dir: str | os.PathLike | None = None) -> None:
        """Point the symlink ``link`` at ``target`` atomically (new link, rename over, fsync)."""
        link = Path(link)
        tmp_dir = Path(tmp_dir) if tmp_dir is not None else link.parent
        tmp = tmp_dir / _temp_file_name(link.name)
        os.symlink(target, tmp)
        try:
            os.rename(tmp, link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        Store.fsync_dir(link.parent)


def read_store_file(path: str | os.PathLike, cap: int, *, dir_fd: int | None = None) -> bytes:
    """The bytes of one of the store's own files (a header file, an image record, the boot
    state), read the one way every reader reads them: opened with
    :data:`verifier.fileio.FILE_READ_FLAGS` (O_NOFOLLOW: a symlink in its place is refused;
    O_NONBLOCK: a FIFO never blocks the open), ``fstat``-ed to be a regular file, and read to
    at most ``cap`` bytes, a cap from the file's format (``HEADER_FILE_MAX``,
    ``JSON_FILE_MAX``).  Raises OSError whose strerror is one line: ELOOP for a symlink,
    EINVAL "not a regular file (...)", EFBIG "larger than its format allows (...)"."""
    fd = os.open(path, FILE_READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size > cap:
            raise OSError(errno.EFBIG, f"larger than its format allows ({st.st_size} bytes, at most {cap})")
        chunks, total = [], 0
        while total <= cap:
            chunk = os.read(fd, min(cap + 1 - total, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:   # grew since fstat
            raise OSError(errno.EFBIG, f"larger than its format allows (more than {cap} bytes)")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return f"mode {mode:o}"


def is_enospc(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)
