"""File-level delta: a package's files fetched one by one, only those the store lacks.

When the index says the repository has file objects (``publish --file-objects``,
:mod:`usrview.remote.index`), pull tries each missing package this way before
its rpm (:meth:`Delta.package`):

1. The package's header: the rpm's bytes before its payload, fetched with a
   Range request into ``downloads/RPM_SHA256.part`` (the same file a whole
   download would start with), checked against the index and by the trust gate
   before anything else is fetched (:meth:`usrview.remote.fetch.Downloader.head`):
   its bytes must be the index's ``head_sha256`` (an index without it, written
   before it was added, has its packages fetched whole).
2. The plan (:func:`plan`): each regular file with bytes, by its digest in the
   signed header, is either in the store already (the store's digest index:
   a file of a stored package with that digest and size), or to be fetched
   unless a pull fetched it before (``downloads/files/ALGO-HEX``).  A file whose digest is
   weaker than SHA-256 cannot be fetched as an object, and a package most of
   whose bytes are new is cheaper as one compressed rpm (:data:`MAX_NEW_SHARE`):
   then the whole rpm is fetched instead.
3. Each file to fetch: its object from the mirrors in order, then the origin,
   decompressed as it arrives into ``downloads/files/.ALGO-HEX.tmp``, cut off
   past the header's size, hashed with the header's algorithm and renamed to
   ``ALGO-HEX`` only when the digest matches (not synced: one found by a later
   pull is hashed again before it is used).  An object that no source serves
   right makes the whole rpm be fetched instead (with one warning).
4. The package is then imported like an rpm, as an
   :class:`usrview.store.assemble.AssembledPackage`: every byte hashed again
   against the header as it is laid out, reflinked from the store where the
   store has it, committed with the rest of the deploy's packages.

An interruption leaves the header and the verified files in ``downloads/``;
the next pull uses them and fetches only the rest (a partial object is fetched
again from its start).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import trio
import zstandard

from usrview.remote.http import HttpError, join
from usrview.remote.index import IndexEntry, file_object_name
from usrview.store import Store
from usrview.store.assemble import AssembledPackage, local_object_name
from verifier.fileio import FILE_READ_FLAGS, hash_fd
from verifier.files import FileEntry, FileFlag, digest_name
from verifier.header import Package

log = logging.getLogger(__name__)

#: Where fetched files wait in ``STORE/downloads/``.
FILES_DIR = "files"
TMP_SUFFIX = ".tmp"
#: A package whose new bytes (not in the store) exceed this share of its files' bytes
#: is fetched as its rpm: one compressed stream costs less than many objects then.
MAX_NEW_SHARE = 0.5
#: The largest compressed object accepted for a file of N bytes: zstd's bound
#: (N + N/256 + a frame's overhead), with room to spare.
OBJECT_SLACK = 4096
_GHOST = int(FileFlag.GHOST)


class _BadObject(Exception):
    """A source served an object whose bytes are not the header's: try the next source."""


@dataclass
class Plan:
    """Which files of a package come from where.

    Attributes: fetch ((algo, digest) -> the header's entry, with the object's name
    below the index's file_objects directory: the files the store lacks, fetched
    unless a pull fetched them before), stored (files the store has), total_bytes
    and new_bytes (of the package's files with bytes, and of those not stored).
    """

    fetch: dict[tuple[int, str], tuple[FileEntry, str]] = field(default_factory=dict)
    stored: int = 0
    total_bytes: int = 0
    new_bytes: int = 0


def plan(store: Store, package: Package) -> Plan | None:
    """Where each file of ``package`` comes from; None when the rpm should be fetched
    whole (a digest no object can be named by, or mostly new bytes)."""
    result = Plan()
    index = store.digest_index()
    if not index:
        return None  # nothing stored: every byte is new
    groups = package.hardlink_groups()
    seen: set[tuple[int, str]] = set()
    for i, f in enumerate(package.files):
        if not stat.S_ISREG(f.mode) or int(f.flags) & _GHOST or not f.size:
            continue
        group = groups.get(i)
        if group and group[-1] != i:
            continue  # the group's bytes come with its last member
        key = (f.digest_algo, f.digest)
        result.total_bytes += f.size
        if key in seen:
            continue
        seen.add(key)
        found = index.get(key)
        local = local_object_name(f.digest_algo, f.digest)
        if found is not None and found[1].size == f.size:
            result.stored += 1
        else:
            name = file_object_name(f.digest_algo, f.digest)
            if name is None or local is None:
                return None
            result.fetch[key] = (f, name)
            result.new_bytes += f.size
    if result.new_bytes > MAX_NEW_SHARE * result.total_bytes:
        return None
    return result


def _is_file_of(path: Path, size: int, entry: FileEntry | None = None) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes (and with ``entry``, of its
    digest: files fetched are not synced, and a crash may have torn one)."""
    try:
        fd = os.open(path, FILE_READ_FLAGS)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        return entry is None or hash_fd(fd, digest_name(entry.digest_algo), size=size)[0] == entry.digest
    finally:
        os.close(fd)


class _ObjectSink:
    """Decompressed bytes of one object into ``fd``: hashed, and cut off past the file's size."""

    def __init__(self, fd: int, entry: FileEntry, url: str):
        self.fd, self.entry, self.url = fd, entry, url
        self.hash = hashlib.new(digest_name(entry.digest_algo))
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        if self.size > self.entry.size:
            raise _BadObject(f"{self.url}: more bytes than the header's {self.entry.size}")
        self.hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)

    def check(self) -> None:
        if self.size != self.entry.size or self.hash.hexdigest() != self.entry.digest:
            raise _BadObject(f"{self.url}: the bytes do not match the header's digest of {self.entry.path}")


class Delta:
    """Fetches packages file by file (see the module); one per pull.

    Attributes: store, downloader (pull's, for its fetcher, sources, header check and
    progress), base (the index's file_objects directory), files_dir, fetched (objects
    fetched), bytes (object bytes received), assembled (NEVRAs fetched this way),
    fallbacks (NEVRAs fetched whole after an object failed)."""

    def __init__(self, store: Store, downloader, base: str):
        self.store = store
        self.downloader = downloader
        self.base = base
        self.files_dir = store.downloads_dir / FILES_DIR
        self.files_dir.mkdir(mode=0o700, exist_ok=True)
        for name in os.listdir(self.files_dir):  # an interrupted pull's partial objects
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                os.unlink(self.files_dir / name)
        self.fetched = 0
        self.bytes = 0
        self.assembled: list[str] = []
        self.fallbacks: list[str] = []
        self._locks: dict[tuple[int, str], trio.Lock] = {}

    async def package(self, entry: IndexEntry, part: Path, package: Package) -> AssembledPackage | None:
        """The package assembled from its header (in ``part``, checked: ``package``) and its
        files, or None: fetch its rpm (also when the index does not pin the head's bytes:
        only the rpm's SHA-256 would, and the stored head must be the published one)."""
        if entry.head_sha256 is None:
            return None
        todo = plan(self.store, package)
        if todo is None:
            return None
        received = self.bytes
        for key, (f, name) in todo.fetch.items():
            try:
                await self._object(key, f, name)
            except HttpError as e:
                log.warning("%s: %s; fetching the whole rpm", entry.nevra, e)
                self.fallbacks.append(entry.nevra)
                return None
        self.assembled.append(entry.nevra)
        self.downloader.finished(entry, entry.header_length + self.bytes - received)
        return AssembledPackage(part, self.files_dir)

    async def _object(self, key: tuple[int, str], f: FileEntry, name: str) -> None:
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:  # two packages of one pull may need the same file
            local = local_object_name(f.digest_algo, f.digest)
            if _is_file_of(self.files_dir / local, f.size, f):
                return
            failures = []
            for source in self.downloader.sources:
                url = join(join(source, self.base), name)
                try:
                    await self._fetch(url, f, local)
                    self.fetched += 1
                    return
                except (HttpError, _BadObject, zstandard.ZstdError) as e:
                    failures.append(f"{url}: {e}" if isinstance(e, zstandard.ZstdError) else str(e))
                    if source != self.downloader.sources[-1]:
                        log.warning("%s; trying the next source", failures[-1])
            raise HttpError(f"no source served the file object of {f.path}: {failures[-1]}")

    async def _fetch(self, url: str, f: FileEntry, local: str) -> None:
        tmp = self.files_dir / f".{local}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            sink = _ObjectSink(fd, f, url)
            writer = zstandard.ZstdDecompressor().stream_writer(sink, write_return_read=True)
            limit = f.size + f.size // 128 + OBJECT_SLACK
            count = 0

            def take(chunk: bytes) -> None:
                nonlocal count
                count += len(chunk)
                if count > limit:
                    raise _BadObject(f"{url}: more than {limit} compressed bytes for {f.size} bytes")
                self.bytes += len(chunk)
                self.downloader.tick(len(chunk))
                writer.write(chunk)

            await self.downloader.fetcher.fetch(url, 0, None, take)
            sink.check()
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, self.files_dir / local)
