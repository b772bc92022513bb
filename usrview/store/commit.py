"""The store's commit protocol: packages staged under ``tmp/`` and made to
appear together, with one syncfs(2) -- the only code that moves anything into
``packages/``, ``unsigned/``, ``legacy/`` and ``headers/``.

The importer stages each package (:meth:`PackageBatch.new_tree`, the tree's
files, :meth:`PackageBatch.stage_header`, :meth:`PackageBatch.stage_markers`,
then :meth:`PackageBatch.add`) and calls :meth:`PackageBatch.commit`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from typing import Any

from usrview import faults
from usrview.store import btrfs
from usrview.store.store import FILE_CREATE_FLAGS, HEADER_SUFFIX, LEGACY_DIR, UNSIGNED_DIR, Store, StoreError
from verifier.header import Package
from verifier.headerfile import canonical_header_only


def storage_error(nevra: str, e: OSError) -> StoreError:
    """The one line for a package the store could not take."""
    what = "no space left in the store" if e.errno in (errno.ENOSPC, errno.EDQUOT) else f"{e.strerror or e}"
    return StoreError(f"cannot store {nevra}: {what}")


@dataclass
class StagedPackage:
    """A package written under ``tmp/`` and not committed yet.

    Attributes: package, pkgid, result (the stager's own record of it), tree (its
    tree's name in tmp/), header (its header file's name in tmp/), unsigned (its
    unsigned marker's name in tmp/, if unsigned), legacy (its legacy marker's
    name in tmp/, if only the legacy signature policy accepts it)."""

    package: Package
    pkgid: str
    result: Any
    tree: str
    header: str
    unsigned: str | None
    legacy: str | None = None

    def markers(self) -> dict[str, str]:
        """Marker directory -> the staged marker's name in tmp/."""
        return {d: n for d, n in ((UNSIGNED_DIR, self.unsigned), (LEGACY_DIR, self.legacy)) if n is not None}


class PackageBatch:
    """Packages written under ``tmp/`` and committed together, with one syncfs(2).

    Per package, the stager makes everything that must be durable before the
    package may appear, all of it under ``tmp/``: the tree (a subvolume on
    btrfs), the header file, the markers (unsigned, legacy).  :meth:`commit` then:

    1. ``syncfs(2)``, once: every tree, header file and marker of the batch is
       on disk (on btrfs this also commits the transaction).  One call instead
       of one per package: each call costs a transaction commit and a device
       flush, measured at about 30 ms on a loop-mounted btrfs (250 packages:
       7 s of syncfs alone).
    2. per package, the tree renamed to ``packages/PKGID``; then (all renames
       first) each set read-only (btrfs refuses to move a read-only subvolume
       between directories); on btrfs that ioctl commits a transaction, which
       makes the renames durable; then one ``fsync`` of ``packages/`` for the
       other file systems.
    3. the markers renamed into ``unsigned/`` and ``legacy/``, and those that
       received one fsynced, before any header appears (a header made durable by a later
       fsync must not outlive its package's marker).
    4. per package, the header renamed to ``headers/PKGID.rpm`` -- the moment
       the package exists -- and ``headers/`` fsynced once at the end.

    A header is renamed in only after its bytes, its tree and its read-only
    flag are durable, so whatever a crash interrupts, a header on disk names
    a complete package; trees and markers without a header, and everything
    in ``tmp/``, are leftovers the next writer removes (Store.cleanup).  A
    package's outcome is reported after step 4.
    """

    def __init__(self, store: Store):
        self.store = store
        self.pending: list[StagedPackage] = []
        self.pending_by_id: dict[str, StagedPackage] = {}
        self._fds: list[int] = []
        try:
            self.tmp_fd = self._keep(store.open_tmp_dir())
            self.packages_fd = self._keep(store.open_packages_dir())
            self.headers_fd = self._keep(store.open_headers_dir())
            #: marker directory -> its fd
            self.marker_fds = {UNSIGNED_DIR: self._keep(store.open_unsigned_dir()),
                               LEGACY_DIR: self._keep(store.open_legacy_dir())}
        except BaseException:
            self.close()
            raise

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _reset(self) -> None:
        """Called when the pending packages are handed to a commit."""

    # -- staging ------------------------------------------------------------------

    def new_tree(self) -> str:
        """A new, empty package tree in tmp/ (a subvolume on btrfs): its name."""
        name = self.store.temp_name("import")
        btrfs.create_tree(self.tmp_fd, name)
        return name

    def stage_header(self, package: Package) -> str:
        """The package's header-only file written in tmp/: its name."""
        name = self.store.temp_name("header")
        _write_file(self.tmp_fd, name, canonical_header_only(package))
        return name

    def stage_markers(self, unsigned: bool, legacy: bool) -> tuple[str | None, str | None]:
        """The package's markers written in tmp/: an unsigned one when ``unsigned``,
        a legacy one (only the legacy signature policy accepts it) when ``legacy``;
        their names (None: not wanted)."""
        names = []
        for marker_dir, wanted in ((UNSIGNED_DIR, unsigned), (LEGACY_DIR, legacy)):
            names.append(self.store.temp_name(marker_dir) if wanted else None)
            if wanted:
                _write_file(self.tmp_fd, names[-1], b"")
        return names[0], names[1]

    def remove_staged(self, *names: str | None) -> None:
        """Remove what staging made in tmp/.  Best effort: the error that brought
        the caller here propagates, and Store.cleanup removes what is left."""
        for n in names:
            if n is not None:
                with contextlib.suppress(OSError):
                    btrfs.delete_tree(self.tmp_fd, n)

    def add(self, staged: StagedPackage) -> None:
        self.pending.append(staged)
        self.pending_by_id[staged.pkgid] = staged

    # -- committing ---------------------------------------------------------------

    def commit(self) -> dict[str, StoreError]:
        """Make the pending packages appear (see the class); the errors of those that did not."""
        failed: dict[str, StoreError] = {}
        pending, self.pending, self.pending_by_id = self.pending, [], {}
        self._reset()
        if not pending:
            return failed

        def fail(p: StagedPackage, e: OSError) -> None:
            failed[p.pkgid] = storage_error(p.package.nevra, e)

        try:
            btrfs.syncfs(self.tmp_fd)
        except OSError as e:
            for p in pending:
                fail(p, e)
            self._discard(pending)
            return failed
        faults.kill_at("synced")

        renamed: list[StagedPackage] = []
        for p in pending:
            try:
                os.rename(p.tree, p.pkgid, src_dir_fd=self.tmp_fd, dst_dir_fd=self.packages_fd)
            except OSError as e:
                fail(p, e)
                self._discard([p])
                continue
            renamed.append(p)
            faults.kill_at("renamed")

        def seal(p: StagedPackage) -> OSError | None:
            try:
                btrfs.set_readonly(self.packages_fd, p.pkgid)
            except OSError as e:
                fail(p, e)
                self._discard([p], in_packages=True)
                return e
            faults.kill_at("readonly")
            return None

        # On btrfs each SUBVOL_SETFLAGS commits a transaction, under a lock
        # (subvol_sem) that serializes them: calls from several threads took
        # as long (about 8-15 ms each on a loop device).  One after another.
        errors = [seal(p) for p in renamed]
        moved = [p for p, e in zip(renamed, errors, strict=True) if e is None]
        try:
            if moved:
                os.fsync(self.packages_fd)
            marked = set()
            for p in moved:
                for marker_dir, name in p.markers().items():
                    os.rename(name, p.pkgid, src_dir_fd=self.tmp_fd, dst_dir_fd=self.marker_fds[marker_dir])
                    marked.add(marker_dir)
                p.unsigned = p.legacy = None
            for marker_dir in sorted(marked):
                os.fsync(self.marker_fds[marker_dir])
        except OSError as e:
            for p in moved:
                fail(p, e)
            self._discard(moved, in_packages=True)
            return failed
        done: list[StagedPackage] = []
        for p in moved:
            try:
                os.rename(p.header, p.pkgid + HEADER_SUFFIX, src_dir_fd=self.tmp_fd, dst_dir_fd=self.headers_fd)
            except OSError as e:
                fail(p, e)
                self._discard([p], in_packages=True)
                continue
            faults.kill_at("header")
            done.append(p)
        if done:
            try:
                os.fsync(self.headers_fd)
            except OSError as e:
                # the headers are in place; whether they are durable is unknown
                raise StoreError(f"cannot sync {self.store.headers_dir}: {e.strerror or e}") from None
        for p in done:
            self.store.index_package(p.pkgid, p.package)
        return failed

    def _discard(self, pending: list[StagedPackage], *, in_packages: bool = False) -> None:
        """Remove what these packages left, wherever it is.  Best effort, any OSError
        ignored: the caller reports the error that made it discard them, and
        Store.cleanup removes what a failed removal leaves."""
        for p in pending:
            with contextlib.suppress(OSError):
                if in_packages:
                    btrfs.delete_tree(self.packages_fd, p.pkgid)
                    for fd in self.marker_fds.values():
                        with contextlib.suppress(OSError):
                            os.unlink(p.pkgid, dir_fd=fd)
            for n in (p.tree, p.header, p.unsigned, p.legacy):
                if n is not None:
                    with contextlib.suppress(OSError):
                        btrfs.delete_tree(self.tmp_fd, n)

    def close(self) -> None:
        """Remove anything not committed, and close the directory fds."""
        try:
            if self.pending:
                pending, self.pending, self.pending_by_id = self.pending, [], {}
                self._discard(pending)
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds = []


def _write_file(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(name, FILE_CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
