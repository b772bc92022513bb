"""Importing an rpm into the store: header check, payload streamed into a new package tree.

:func:`import_package` is the whole operation.  In order:

1. The header's signature is checked (:func:`verifier.sigcheck.check_file`).
   Anything but GOOD is refused; UNSIGNED is accepted only with
   ``allow_unsigned`` and then recorded in ``unsigned/PKGID``.
2. The header's file list is checked before anything is written: every path
   absolute and normalized (no empty, ``.`` or ``..`` component, no NUL), no
   path twice, no path beneath a non-directory of the same header, hardlinked
   files alike in mode, owner and mtime.
3. Under the store lock, a new package tree (a btrfs subvolume, or a plain
   directory) is made under ``tmp/`` and the payload streamed into it by
   :mod:`usrview.store.payload`, which ties every cpio member to its header entry
   and checks each regular file's digest as its bytes go by.  Files are made
   from the *header's* path, type, mode, owner, mtime and link target, never
   from the cpio header; every component is opened relative to its parent's
   fd with ``O_NOFOLLOW`` (a symlink where a directory is expected refuses the
   package), files with ``O_CREAT|O_EXCL`` (a second entry for one path
   refuses it).  Device nodes, FIFOs and sockets stay in the header, and are
   not created.  Unknown owner names become root, with one warning.
4. A regular file whose bytes already exist in the store (same digest
   algorithm, digest and size in a stored header, the stored file re-hashed
   once per process before it is trusted; or an earlier file of the same
   package) is cloned with FICLONE instead of written; its payload bytes are
   still read and hashed.  Files below :data:`REFLINK_MIN_SIZE` are written:
   btrfs keeps them inline in metadata, where there is nothing to share.
5. Packages are committed in batches (:class:`_ImportBatch`, many packages per
   ``usrview import``): trees, header files and markers are made under ``tmp/``;
   one ``syncfs(2)`` per batch (instead of an fsync per file or a sync per package:
   see docs/store-format.md); then each tree renamed to ``packages/PKGID`` and set
   read-only (btrfs cannot move a read-only subvolume between directories), the
   markers renamed in, and last each header renamed to ``headers/PKGID.rpm`` -- the
   moment the package exists.

An :class:`~usrview.store.assemble.AssembledPackage` (pull's file-level delta) is
imported the same way, its members made from its header and fetched or stored files.

Any failure removes the temp tree; a crash leaves it in ``tmp/``, which the
next writer's :meth:`Store.lock` removes.

Test hooks (:mod:`usrview.faults`; see tests/test_crash.py):
``USRVIEW_TEST_KILL_AFTER_FILES=N`` SIGKILLs the process after it created N
entries in package trees, ``USRVIEW_TEST_KILL_AT=STAGE`` at one of the stages
in :data:`KILL_STAGES`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from usrview import faults
from usrview.errors import EXIT_FINDINGS, UsrviewError
from usrview.store.assemble import AssembledPackage
from usrview.store.commit import PackageBatch, StagedPackage, storage_error
from usrview.store.payload import CHUNK_SIZE, Member, PayloadError, open_payload
from usrview.store.store import (
    FILE_CREATE_FLAGS,
    LEGACY_POLICY,
    PACKAGES_DIR,
    Store,
    StoreError,
    pkgid_for,
)
from usrview.store.trust import header_trust
from verifier import filecaps, sigcheck
from verifier.filecaps import parse_text
from verifier.fileio import DIR_FLAGS, OwnerIds, hash_fd, open_beneath
from verifier.files import FileEntry, FileFlag, digest_name
from verifier.header import Package
from verifier.keyring import Keyring

from . import btrfs

log = logging.getLogger(__name__)

#: Smallest file worth a FICLONE: smaller ones sit inline in btrfs metadata
#: (max_inline is 2048 by default) and cost less to write than to look up.
REFLINK_MIN_SIZE = 4096
#: Mode of directories the header does not list but its files need (as rpm makes them).
IMPLICIT_DIR_MODE = 0o755
#: Directory fds kept open while a package is written (bounded: fds are few).
MAX_OPEN_DIRS = 256
#: Mode of a regular file while it is written, before the header's mode is set.
WRITE_MODE = 0o600

#: Stages USRVIEW_TEST_KILL_AT may name, in the order they happen.
KILL_STAGES = ("written", "synced", "renamed", "readonly", "header")

_SPECIAL_TYPES = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
_GHOST = int(FileFlag.GHOST)
#: One import command commits its packages in batches: one syncfs(2) per batch
#: (see :class:`_ImportBatch`), after this many packages or this many bytes written.
BATCH_MAX_PACKAGES = 128
BATCH_MAX_BYTES = 1 << 30


class PackageRefused(UsrviewError):
    """A package may not enter the store: its signature, header or payload is not acceptable."""

    exit_code = EXIT_FINDINGS


@dataclass
class ImportResult:
    """What :func:`import_package` did.

    Attributes:
        pkgid: the package's id in the store.
        nevra: its NEVRA.
        already_stored: True when it was in the store already (nothing done).
        unsigned: True when it was imported (or is stored) unsigned.
        legacy: True when only the legacy signature policy accepts it (legacy/PKGID).
        files: entries made from the header: regular files, hardlinks, directories, symlinks.
        reflinked: regular files cloned rather than written.
        bytes_written: file bytes written.
        bytes_reflinked: file bytes cloned.
        specials: paths of device nodes, FIFOs and sockets (in the header, not created).
        unknown_owners: user and group names the host does not know (made root).
    """

    pkgid: str
    nevra: str
    already_stored: bool = False
    unsigned: bool = False
    legacy: bool = False
    files: int = 0
    reflinked: int = 0
    bytes_written: int = 0
    bytes_reflinked: int = 0
    specials: list[str] = field(default_factory=list)
    unknown_owners: list[str] = field(default_factory=list)


# -- the header's file list -------------------------------------------------------

def check_file_list(package: Package) -> None:
    """Refuse a header whose file list could not be laid out safely in a package tree."""
    files = package.files
    paths: set[str] = set()
    non_dirs: set[str] = set()
    for f in files:
        p = f.path
        if "\0" in p or not p.startswith("/"):
            raise PackageRefused(f"file path {p!r} in the header is not absolute")
        if p == "/":
            if not stat.S_ISDIR(f.mode):
                raise PackageRefused("the header lists / as something other than a directory")
            continue
        parts = p[1:].split("/")
        if any(c in ("", ".", "..") for c in parts):
            raise PackageRefused(f"file path {p!r} in the header is not normalized")
        if p in paths:
            raise PackageRefused(f"the header lists {p} twice")
        paths.add(p)
        if not stat.S_ISDIR(f.mode):
            non_dirs.add(p)
    for p in paths:
        cut = p.find("/", 1)
        while cut != -1:
            if p[:cut] in non_dirs:
                raise PackageRefused(f"{p} lies beneath {p[:cut]}, which the header lists as "
                                     f"a non-directory")
            cut = p.find("/", cut + 1)
    for group in dict.fromkeys(package.hardlink_groups(files).values()):
        first = files[group[0]]
        for i in group[1:]:
            f = files[i]
            if (f.mode, f.user, f.group, f.mtime) != (first.mode, first.user, first.group, first.mtime):
                raise PackageRefused(f"hardlinked files {first.path} and {f.path} differ in mode, "
                                     f"owner or mtime")


def _parts(path: str) -> tuple[str, ...]:
    return tuple(path[1:].split("/"))


# -- owners ---------------------------------------------------------------------------

class _Owners:
    """User and group names resolved through the host's databases
    (:class:`verifier.fileio.OwnerIds`); an unknown one becomes 0.

    Attributes: users, groups (the lookups); unknown ("user NAME", "group NAME"
    in the order met)."""

    def __init__(self):
        self.users = OwnerIds.users()
        self.groups = OwnerIds.groups()
        self.unknown: list[str] = []

    def mode(self, entry: FileEntry) -> int:
        """The permission bits to set: as rpm -i does, a set-uid (set-gid) bit is
        dropped when the owner (group) is unknown here and became root."""
        mode = stat.S_IMODE(entry.mode)
        if entry.user in self.users.unknown:
            mode &= ~stat.S_ISUID
        if entry.group in self.groups.unknown:
            mode &= ~stat.S_ISGID
        return mode

    def uid(self, name: str) -> int:
        return self._resolve(self.users, "user", name)

    def gid(self, name: str) -> int:
        return self._resolve(self.groups, "group", name)

    def _resolve(self, table: OwnerIds, kind: str, name: str) -> int:
        looked_up = name in table
        value = table.get(name)
        if value is not None:
            return value
        if not looked_up:
            self.unknown.append(f"{kind} {name}")
        return 0


# -- walking a tree by directory fds ---------------------------------------------------

class _PackageDirFds:
    """The directory fds of a package tree being written, opened component by
    component with O_NOFOLLOW and made where absent.

    Attributes: root_fd (the tree's root, the caller's to close).  Directory fds
    are cached by path (at most MAX_OPEN_DIRS at once); :meth:`close` closes them.
    """

    def __init__(self, root_fd: int):
        self.root_fd = root_fd
        self._fds: dict[tuple[str, ...], int] = {(): root_fd}

    def close(self) -> None:
        for parts, fd in self._fds.items():
            if parts:
                os.close(fd)
        self._fds = {(): self.root_fd}

    def dir_fd(self, parts: tuple[str, ...], *, create: bool = True) -> int:
        """The fd of directory ``parts`` (made 0755 when absent and ``create``)."""
        fd = self._fds.get(parts)
        if fd is not None:
            return fd
        if len(self._fds) > MAX_OPEN_DIRS:
            self.close()
        parent = self.dir_fd(parts[:-1], create=create)
        name = parts[-1]
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, IMPLICIT_DIR_MODE, dir_fd=parent)
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PackageRefused(f"/{'/'.join(parts)} is not a directory, yet files lie "
                                     f"beneath it") from None
            raise
        self._fds[parts] = fd
        return fd


# -- writing one package ---------------------------------------------------------------

class _Writer:
    """Lays out one package's payload members in a tree; collects what the result reports."""

    def __init__(self, store: Store, package: Package, dir_fds: _PackageDirFds, result: ImportResult,
                 progress: Callable[[int, int], None] | None, batch: _ImportBatch | None = None):
        self.store = store
        self.batch = batch
        self.package = package
        self.dir_fds = dir_fds
        self.result = result
        self.owners = _Owners()
        self.progress = progress
        self.total = sum(1 for f in package.files if not int(f.flags) & _GHOST)
        self.seen = 0
        self.dirs: list[tuple[tuple[str, ...], FileEntry]] = []
        #: hardlink group -> parts of the file holding its bytes, once written
        self.group_data: dict[tuple[int, ...], tuple[str, ...]] = {}
        #: hardlink group -> parts of members seen before the bytes came
        self.group_pending: dict[tuple[int, ...], list[tuple[str, ...]]] = {}
        #: (algo, digest) -> parts of a file of this package already written and checked
        self.local: dict[tuple[int, str], tuple[str, ...]] = {}
        self.local_sizes: dict[tuple[int, str], int] = {}

    def add(self, member: Member) -> None:
        entry = member.entry
        if entry.path == "/":
            self._tick()
            return  # the package root stands for it
        parts = _parts(entry.path)
        kind = stat.S_IFMT(entry.mode)
        if kind == stat.S_IFREG:
            self._regular(member, parts)
        elif kind == stat.S_IFDIR:
            self._directory(entry, parts)
        elif kind == stat.S_IFLNK:
            self._symlink(entry, parts)
        elif kind in _SPECIAL_TYPES:
            self.result.specials.append(entry.path)
            self._tick()
            return
        else:
            raise PackageRefused(f"{entry.path}: unknown file type {entry.mode:o}")
        self.result.files += 1
        self._tick()
        faults.count_file()

    def _tick(self) -> None:
        self.seen += 1
        if self.progress is not None:
            self.progress(self.seen, self.total)

    def _create(self, parts: tuple[str, ...], path: str) -> int:
        parent = self.dir_fds.dir_fd(parts[:-1])
        try:
            return os.open(parts[-1], FILE_CREATE_FLAGS, WRITE_MODE, dir_fd=parent)
        except FileExistsError:
            raise PackageRefused(f"{path} appears twice in the package") from None

    def _regular(self, member: Member, parts: tuple[str, ...]) -> None:
        entry = member.entry
        group = member.hardlinks
        if not member.has_content:
            # a hardlink without the group's bytes: link it once they are written
            data = self.group_data.get(group)
            if data is None:
                self.group_pending.setdefault(group, []).append(parts)
            else:
                self._link(data, parts, entry.path)
            for _ in member.chunks(verify=False):  # nothing, but the reader checks it
                pass
            return
        fd = self._create(parts, entry.path)
        try:
            if not self._clone(member, fd):
                written = 0
                for chunk in member.chunks(CHUNK_SIZE, verify=True):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    written += len(chunk)
                self.result.bytes_written += written
            os.fchown(fd, self.owners.uid(entry.user), self.owners.gid(entry.group))
            os.fchmod(fd, self.owners.mode(entry))  # after chown, which clears setuid
            if entry.caps:  # after chown too, which clears capabilities
                caps = parse_text(entry.caps)
                if caps is None:
                    raise PackageRefused(f"{entry.path}: capabilities {entry.caps!r} cannot be parsed")
                os.setxattr(fd, filecaps.XATTR_NAME, caps.to_xattr())
            os.utime(fd, ns=(entry.mtime * 10**9, entry.mtime * 10**9))
        finally:
            os.close(fd)
        if entry.size >= REFLINK_MIN_SIZE and entry.digest:
            key = (entry.digest_algo, entry.digest)
            if key not in self.local:
                self.local[key] = parts
                self.local_sizes[key] = entry.size
        if group:
            self.group_data[group] = parts
            for other in self.group_pending.pop(group, ()):
                self._link(parts, other, "/" + "/".join(other))

    def _link(self, data: tuple[str, ...], parts: tuple[str, ...], path: str) -> None:
        src_dir = self.dir_fds.dir_fd(data[:-1])
        dst_dir = self.dir_fds.dir_fd(parts[:-1])
        try:
            os.link(data[-1], parts[-1], src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        except FileExistsError:
            raise PackageRefused(f"{path} appears twice in the package") from None

    def _clone(self, member: Member, dst_fd: int) -> bool:
        """FICLONE the member's bytes from a verified copy, if the store has one; then
        read and check the payload's bytes anyway.  False when nothing was cloned."""
        entry = member.entry
        store = self.store
        if entry.size < REFLINK_MIN_SIZE or store.reflinks is False or not entry.digest:
            return False
        key = (entry.digest_algo, entry.digest)
        src_fd = None
        local = self.local.get(key)
        try:
            batched = self.batch.index.get(key) if self.batch is not None and local is None else None
            if local is not None:
                src_fd = open_beneath(self.dir_fds.root_fd, local)
            elif batched is not None and batched[2] == entry.size:
                # a file of a package written earlier in this batch (still in
                # tmp/): written and checked by this process, like ``local``
                src_fd = open_beneath(self.batch.tmp_fd, (batched[0], *batched[1]))
            else:
                found = store.digest_index().get(key)
                if found is None or found[1].size != entry.size:
                    return False
                src_fd = self._open_stored(*found)
                if src_fd is None:
                    return False
            try:
                btrfs.clone_file(src_fd, dst_fd)
            except btrfs.CloneUnsupported as e:
                if e.errno != errno.EINVAL:  # EINVAL: this pair of files only
                    log.debug("no reflinks in %s (%s): files are written", store.root, e.strerror)
                    store.reflinks = False
                return False
        finally:
            if src_fd is not None:
                os.close(src_fd)
        store.reflinks = True
        for _ in member.chunks(CHUNK_SIZE, verify=True):
            pass
        self.result.reflinked += 1
        self.result.bytes_reflinked += entry.size
        return True

    def _open_stored(self, pkgid: str, source: FileEntry) -> int | None:
        """An fd on a stored file whose bytes match its header (hashed once per process)."""
        packages_fd = os.open(self.store.root / PACKAGES_DIR, DIR_FLAGS)
        try:
            fd = open_beneath(packages_fd, (pkgid, *_parts(source.path)))
        except OSError as e:
            log.warning("stored file %s of %s cannot be opened (%s); not reusing it",
                        source.path, pkgid, e.strerror or e)
            return None
        finally:
            os.close(packages_fd)
        if (pkgid, source.path) in self.store.verified_sources:
            return fd
        try:
            st = os.fstat(fd)
            algo = digest_name(source.digest_algo)
            ok = (stat.S_ISREG(st.st_mode) and st.st_size == source.size and algo is not None
                  and hash_fd(fd, algo, size=st.st_size)[0] == source.digest)
        except BaseException:
            os.close(fd)
            raise
        if not ok:
            os.close(fd)
            log.warning("stored file %s of %s does not match its header; not reusing it",
                        source.path, pkgid)
            return None
        self.store.verified_sources.add((pkgid, source.path))
        return fd

    def _directory(self, entry: FileEntry, parts: tuple[str, ...]) -> None:
        parent = self.dir_fds.dir_fd(parts[:-1])
        try:
            os.mkdir(parts[-1], IMPLICIT_DIR_MODE, dir_fd=parent)
        except FileExistsError:
            pass  # made earlier as a parent; dir_fd checks it is a directory
        self.dir_fds.dir_fd(parts)
        self.dirs.append((parts, entry))

    def _symlink(self, entry: FileEntry, parts: tuple[str, ...]) -> None:
        parent = self.dir_fds.dir_fd(parts[:-1])
        name = parts[-1]
        try:
            os.symlink(entry.linkto, name, dir_fd=parent)
        except FileExistsError:
            raise PackageRefused(f"{entry.path} appears twice in the package") from None
        os.chown(name, self.owners.uid(entry.user), self.owners.gid(entry.group),
                 dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(entry.mtime * 10**9, entry.mtime * 10**9), dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        """Directories' owner, mode and mtime: last, since their entries changed them."""
        if self.group_pending:
            paths = ["/" + "/".join(p) for ps in self.group_pending.values() for p in ps]
            raise PackageRefused(f"no member of the hardlink group of {paths[0]} carries its bytes")
        for parts, entry in sorted(self.dirs, key=lambda d: len(d[0]), reverse=True):
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=self.dir_fds.dir_fd(parts[:-1]))
            try:
                os.fchown(fd, self.owners.uid(entry.user), self.owners.gid(entry.group))
                os.fchmod(fd, stat.S_IMODE(entry.mode))
                os.utime(fd, ns=(entry.mtime * 10**9, entry.mtime * 10**9))
            finally:
                os.close(fd)
        self.result.unknown_owners = list(self.owners.unknown)


# -- the operation -----------------------------------------------------------------------

def check_header(path: str | os.PathLike, keyring: Keyring, *, allow_unsigned: bool = False
                 ) -> tuple[Package, bool, bool]:
    """The package's parsed header, if the trust gate lets it in
    (:func:`usrview.store.trust.header_trust`); whether it is unsigned; and
    whether only the legacy signature policy accepts it (:mod:`verifier.policy`).

    Raises PackageRefused, or StoreError when the file cannot be read.
    """
    try:
        check = sigcheck.check_file(path, keyring)
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None
    trust = header_trust(check, unsigned_allowed=allow_unsigned)
    if not trust.usable:
        hint = " (--allow-unsigned accepts unsigned packages)" if trust.unsigned and not allow_unsigned else ""
        raise PackageRefused(f"signature check: {trust.reason}{hint}")
    return check.package, trust.unsigned, check.policy == LEGACY_POLICY


def import_package(store: Store, path: str | os.PathLike, keyring: Keyring, *, allow_unsigned: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Import the rpm at ``path`` into ``store`` (a no-op when it is stored already).

    ``progress(done, total)`` is called after each payload member.  Raises
    PackageRefused (exit 1) when the package may not enter the store, and
    StoreError (exit 2) when the store cannot take it (I/O error, disk full);
    in both cases the store is as it was.  :func:`import_packages` imports
    many at lower cost.
    """
    [(_, outcome)] = import_packages(store, [path], keyring, allow_unsigned=allow_unsigned,
                                     progress=progress)
    if isinstance(outcome, UsrviewError):
        raise outcome
    return outcome


def import_packages(store: Store, paths: Iterable[str | os.PathLike], keyring: Keyring, *,
                    allow_unsigned: bool = False,
                    progress: Callable[[int, int], None] | None = None,
                    started: Callable[[str | os.PathLike], None] | None = None,
                    ) -> Iterator[tuple[str | os.PathLike, ImportResult | UsrviewError]]:
    """Import several rpms under one lock; yield ``(path, outcome)`` in the order given.

    The outcome is the ImportResult, or the PackageRefused/StoreError that kept
    that package out (the others go on).  Packages are committed in batches
    (:class:`_ImportBatch`): a package's outcome is yielded once its batch is
    committed, i.e. once it is durably in the store.  ``started(path)`` is
    called before each package is read, ``progress(done, total)`` after each
    payload member.  Abandoning the iteration removes what was not committed.
    """
    faults.arm_file_count()
    with store.lock():
        batch = _ImportBatch(store)
        try:
            waiting: list[tuple[str | os.PathLike, ImportResult | UsrviewError]] = []
            for path in paths:
                if started is not None:
                    started(path)
                try:
                    outcome: ImportResult | UsrviewError = _prepare(store, batch, path, keyring,
                                                                    allow_unsigned, progress)
                except UsrviewError as e:
                    outcome = e
                waiting.append((path, outcome))
                if batch.full():
                    yield from _settle(batch, waiting)
                    waiting = []
            yield from _settle(batch, waiting)
        finally:
            batch.close()


def _settle(batch: _ImportBatch, waiting: list) -> Iterator[tuple[str | os.PathLike, ImportResult | UsrviewError]]:
    failed = batch.commit()
    for path, outcome in waiting:
        if isinstance(outcome, ImportResult):
            error = failed.get(outcome.pkgid)
            if error is not None:
                outcome = error
            elif not outcome.already_stored:
                log.info("imported %s: %d files, %d reflinked", outcome.nevra, outcome.files, outcome.reflinked)
            if outcome is not error and outcome.unknown_owners and not outcome.already_stored:
                log.warning("%s: unknown owners made root: %s", outcome.nevra,
                            ", ".join(outcome.unknown_owners))
        yield path, outcome


def _prepare(store: Store, batch: _ImportBatch, path: str | os.PathLike, keyring: Keyring,
             allow_unsigned: bool, progress: Callable[[int, int], None] | None) -> ImportResult:
    """Check one package and write it into the batch (not committed yet)."""
    package, unsigned, legacy = check_header(path, keyring, allow_unsigned=allow_unsigned)
    if not (package.has_payload or isinstance(path, AssembledPackage)):
        raise PackageRefused("a header-only rpm has no files to import")
    try:
        pkgid = pkgid_for(package)
    except StoreError as e:
        raise PackageRefused(str(e)) from None
    result = ImportResult(pkgid, package.nevra, unsigned=unsigned, legacy=legacy)
    pending = batch.pending_by_id.get(pkgid)
    if pending is not None:  # given twice: stored by the first, when its batch commits
        result.already_stored = True
        result.unsigned, result.legacy = pending.result.unsigned, pending.result.legacy
        return result
    if store.has(pkgid):
        result.already_stored = True
        result.unsigned, result.legacy = store.unsigned_path(pkgid).exists(), store.legacy_path(pkgid).exists()
        return result
    check_file_list(package)
    try:
        batch.write(path, package, pkgid, result, progress)
    except PayloadError as e:
        raise PackageRefused(str(e)) from None
    except OSError as e:
        raise storage_error(package.nevra, e) from None
    return result


class _ImportBatch(PackageBatch):
    """The store's :class:`~usrview.store.commit.PackageBatch`, staged from rpm
    payloads: :meth:`write` makes each package's tree, header file and markers
    under ``tmp/``, and keeps an index of the batch's checked files for
    reflinks between its packages."""

    def __init__(self, store: Store):
        super().__init__(store)
        self._reset()

    def _reset(self) -> None:
        #: (algo, digest) -> (tree name in tmp/, parts, size): checked files of this batch
        self.index: dict[tuple[int, str], tuple[str, tuple[str, ...], int]] = {}
        self.bytes = 0

    def full(self) -> bool:
        return len(self.pending) >= BATCH_MAX_PACKAGES or self.bytes >= BATCH_MAX_BYTES

    def write(self, path: str | os.PathLike, package: Package, pkgid: str, result: ImportResult,
              progress: Callable[[int, int], None] | None) -> None:
        store, tmp_fd = self.store, self.tmp_fd
        name = header = unsigned = legacy = None
        try:
            name = self.new_tree()
            root_fd = os.open(name, DIR_FLAGS, dir_fd=tmp_fd)
            dir_fds = _PackageDirFds(root_fd)
            try:
                writer = _Writer(store, package, dir_fds, result, progress, self)
                with (path.open_members(store, package) if isinstance(path, AssembledPackage)
                      else open_payload(path, package)) as members:
                    for member in members:
                        writer.add(member)
                writer.finish()
            finally:
                dir_fds.close()
                os.close(root_fd)
            faults.kill_at("written")
            header = self.stage_header(package)
            unsigned, legacy = self.stage_markers(result.unsigned, result.legacy)
        except BaseException:
            self.remove_staged(name, header, unsigned, legacy)
            raise
        for key, parts in writer.local.items():
            self.index.setdefault(key, (name, parts, writer.local_sizes[key]))
        self.bytes += result.bytes_written
        self.add(StagedPackage(package, pkgid, result, name, header, unsigned, legacy))
