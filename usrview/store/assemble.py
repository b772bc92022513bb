"""A package's payload assembled from files instead of read from its rpm (pull's file-level delta).

Pull (:mod:`usrview.remote.delta`) fetches a package's header, and then only the
files the store lacks, each into a file named by its digest
(:func:`local_object_name`) in a directory of its own.  :class:`AssembledPackage`
stands for such a package where the importer takes an rpm's path: its
``__fspath__`` is the header-only file (whose signature the importer checks as
it checks an rpm's), and :meth:`AssembledPackage.open_members` yields the
members the importer's writer lays out -- the same :class:`~usrview.store.payload.Member`
interface, made from the header's file list in header order, as the payload
reader makes them from a cpio archive:

- every non-ghost file of the header, once; a regular file's bytes carried by
  the file itself, or in a hardlink group by the group's last member in header
  order (as rpm's payloads carry them);
- a regular file's bytes read from the fetched file of its digest, else from a
  stored package's file of that digest (the store's digest index), and hashed
  as they are read: a byte that does not match the signed header's digest
  refuses the package (PayloadError), whatever its source;
- the reader's checks on the header kept: hardlinked files agree in size and
  digest, a symlink's size is its target's length.

So the package tree, its header file and markers are made by the same code, from
the same header, as an import of the rpm makes them: the stored package is the
same, byte for byte and attribute for attribute (tests/test_remote_delta.py).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from usrview.store.payload import CHUNK_SIZE, DigestCheck, PayloadError
from usrview.store.store import PACKAGES_DIR, Store
from verifier.fileio import DIR_FLAGS, FILE_READ_FLAGS, open_beneath
from verifier.files import FileEntry, FileFlag, digest_name
from verifier.header import Package

_GHOST = int(FileFlag.GHOST)
_HEX = re.compile(r"[0-9a-f]+")


def local_object_name(algo: int, digest: str) -> str | None:
    """``ALGO-HEX``: the name of the file holding the bytes of this digest, in the
    directory of fetched files; None when the digest cannot name a file."""
    name = digest_name(algo)
    if name is None or not _HEX.fullmatch(digest):
        return None
    return f"{name}-{digest}"


class _Member:
    """A member of an assembled payload (see :class:`usrview.store.payload.Member`)."""

    __slots__ = ("_payload", "entry", "hardlinks", "has_content", "index", "name", "remaining", "size")

    def __init__(self, payload: AssembledPayload, index: int, entry: FileEntry, hardlinks: tuple[int, ...]):
        self._payload = payload
        self.index = index
        self.entry = entry
        self.name = None
        self.hardlinks = hardlinks
        self.has_content = stat.S_ISREG(entry.mode) and (not hardlinks or hardlinks[-1] == index)
        self.size = entry.size if self.has_content or stat.S_ISLNK(entry.mode) else 0
        self.remaining = self.size if self.has_content else 0

    @property
    def path(self) -> str:
        return self.entry.path

    def chunks(self, chunk_size: int = CHUNK_SIZE, *, verify: bool = False) -> Iterator[bytes]:
        if not self.has_content:
            if stat.S_ISLNK(self.entry.mode) and self.entry.linkto:
                yield self.entry.linkto.encode("utf-8", "surrogateescape")
            return
        check = DigestCheck(self.entry) if verify else None
        if self.remaining:
            fd = self._payload.open_source(self.entry)
            try:
                while self.remaining:
                    data = os.read(fd, min(chunk_size, self.remaining))
                    if not data:
                        raise PayloadError(f"{self.entry.path}: its source holds fewer bytes than the header says")
                    self.remaining -= len(data)
                    if check is not None:
                        check.update(data)
                    yield data
            finally:
                os.close(fd)
        if check is not None:
            check.verify()


class AssembledPayload:
    """The members of an assembled package, in header order (an iterator and a context
    manager, as :class:`usrview.store.payload.PayloadReader`).

    Attributes: package, objects_dir (the fetched files), store (the stored files)."""

    def __init__(self, package: Package, objects_dir: Path, store: Store):
        self.package = package
        self.objects_dir = objects_dir
        self.store = store
        self._groups = package.hardlink_groups()
        files = package.files
        for index, group in self._groups.items():
            first, f = files[group[0]], files[index]
            if (f.size, f.digest, f.digest_algo) != (first.size, first.digest, first.digest_algo):
                raise PayloadError(f"hardlinked files {first.path} and {f.path} differ in size or digest "
                                   "in the header")
        self._members = self._make()

    def _make(self) -> Iterator[_Member]:
        for index, entry in enumerate(self.package.files):
            if int(entry.flags) & _GHOST:
                continue
            if stat.S_ISLNK(entry.mode) and entry.size != len(entry.linkto.encode("utf-8", "surrogateescape")):
                raise PayloadError(f"{entry.path}: the header's size {entry.size} is not the length of its "
                                   "symlink target")
            yield _Member(self, index, entry, self._groups.get(index, ()))

    def __iter__(self) -> AssembledPayload:
        return self

    def __next__(self) -> _Member:
        return next(self._members)

    def __enter__(self) -> AssembledPayload:
        return self

    def __exit__(self, *exc) -> None:
        self._members.close()

    def open_source(self, entry: FileEntry) -> int:
        """An fd on a regular file holding the bytes of ``entry``'s digest: the fetched
        one, else a stored package's; PayloadError when there is none."""
        name = local_object_name(entry.digest_algo, entry.digest)
        if name is not None:
            try:
                return _open_regular(name, self.objects_dir, entry.size)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise PayloadError(f"{entry.path}: cannot read its fetched bytes: {e.strerror or e}") from None
        found = self.store.digest_index().get((entry.digest_algo, entry.digest))
        if found is not None and found[1].size == entry.size:
            pkgid, source = found
            try:
                packages = os.open(self.store.root / PACKAGES_DIR, DIR_FLAGS)
                try:
                    return open_beneath(packages, (pkgid, *source.path[1:].split("/")))
                finally:
                    os.close(packages)
            except OSError as e:
                raise PayloadError(f"{entry.path}: cannot read its bytes from the stored {pkgid} "
                                   f"({e.strerror or e}); pull again") from None
        raise PayloadError(f"{entry.path}: its bytes were neither fetched nor found in the store")


def _open_regular(name: str, directory: Path, size: int) -> int:
    fd = os.open(directory / name, FILE_READ_FLAGS)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        os.close(fd)
        raise PayloadError(f"{directory / name} is not a regular file of {size} bytes")
    return fd


class AssembledPackage(os.PathLike):
    """A package to import whose payload is assembled (see the module docstring).

    Attributes: head (its header-only file: the rpm's bytes before the payload),
    objects_dir (the directory of fetched files, named by :func:`local_object_name`)."""

    def __init__(self, head: Path, objects_dir: Path):
        self.head = Path(head)
        self.objects_dir = Path(objects_dir)

    def __fspath__(self) -> str:
        return os.fspath(self.head)

    def __repr__(self) -> str:
        return f"<AssembledPackage {self.head}>"

    def open_members(self, store: Store, package: Package) -> AssembledPayload:
        return AssembledPayload(package, self.objects_dir, store)
