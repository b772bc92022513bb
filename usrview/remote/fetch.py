"""Fetching one package into ``STORE/downloads/`` (:mod:`usrview.remote.downloads` has the layout).

:meth:`Downloader.head` fetches a package's header: the rpm's bytes before its
payload, into ``RPM_SHA256.part`` -- with a Range request, or where the
repository has file objects, its compressed copy (``objects/files/heads/``), or
where the index lists a header delta from a version the store holds, that delta
decompressed against the stored header (anything amiss: the compressed header
instead); its SHA-256 must be the
index's and its signature must pass the trust gate before a byte of payload is
asked for.  :meth:`Downloader.get` then fetches the rest: its files the store
lacks (:mod:`usrview.remote.delta`, when the repository has file objects), or
the rest of its rpm, resumed (Range) from what a ``.part`` holds.  The whole file
must have the index's SHA-256; only then is it renamed ``RPM_SHA256.rpm`` (not
synced: the deploy that follows reads it from the page cache, and a pull that
finds a ``.rpm`` an earlier one left checks its SHA-256 again; what a crash tore
in a ``.part`` fails the SHA-256 and is fetched again).  Bytes come from the
mirrors in order, then the origin: an error or bytes that do not verify fail
over to the next.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import zstandard

from usrview.remote.http import Fetcher, HttpError, join
from usrview.remote.index import ImageIndex, IndexEntry, head_delta_name, head_object_name
from usrview.store import Store
from usrview.store.assemble import AssembledPackage
from usrview.store.importer import PackageRefused
from usrview.store.store import PKGID_HASH_DIGITS, StoreError
from usrview.store.trust import header_trust
from verifier import sigcheck
from verifier.errors import HeaderError
from verifier.header import Package, read_package
from verifier.keyring import Keyring

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
RPM_SUFFIX = ".rpm"
READ_CHUNK = 1 << 20
#: The most bytes of packed heads held in memory (the 250-package set has 5 MB); past it,
#: each header is fetched alone.
MAX_PACKED_HEADS = 256 << 20

Progress = Callable[[int, int, int, int], None]


class BadBytes(Exception):
    """A source served bytes that do not match the index: try the next one."""


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Downloader:
    """Fetches packages into ``STORE/downloads/``.

    Attributes: dir, fetcher (set by the caller: one per trio run), sources (mirrors,
    then the origin), keyring, allow_unsigned, progress (``progress(done, total,
    done_bytes, total_bytes)``), total and total_bytes (packages and bytes to fetch),
    done and done_bytes, received (package bytes received), fetched (NEVRAs), resumed
    (NEVRAs continued from a partial download), headed (NEVRAs whose header this pull
    fetched), delta (the file-level delta, when the repository has file objects),
    head_deltas (NEVRAs whose header came as a delta from a stored version)."""

    def __init__(self, store: Store, sources: list[str], keyring: Keyring, allow_unsigned: bool,
                 progress: Progress | None, total: int, total_bytes: int):
        self.store = store
        self.dir = store.downloads_dir
        self.head_deltas: list[str] = []
        self._stored_by_hash: dict[str, str] | None = None
        self.fetcher: Fetcher | None = None
        self.sources, self.keyring = sources, keyring
        self.allow_unsigned = allow_unsigned
        self.progress = progress
        self.total, self.total_bytes = total, total_bytes
        self.done = self.done_bytes = 0
        self.resumed: list[str] = []
        self.headed: set[str] = set()
        self.fetched: list[str] = []
        self.received = 0
        self.delta = None
        #: the index's file_objects directory, where compressed headers are (None: none)
        self.heads: str | None = None

    def _tick(self, count: int = 0, packages: int = 0) -> None:
        self.done_bytes += count
        self.done += packages
        if self.progress is not None:
            self.progress(self.done, self.total, self.done_bytes, self.total_bytes)

    def tick(self, count: int) -> None:
        """``count`` bytes of a package received."""
        self.received += count
        self._tick(count)

    def finished(self, entry: IndexEntry, fetched: int) -> None:
        """A package fetched otherwise than whole, ``fetched`` bytes for it: one more done,
        and what was not fetched no longer expected."""
        self.total_bytes -= max(0, entry.size - fetched)
        self.fetched.append(entry.nevra)
        self._tick(packages=1)

    def part(self, entry: IndexEntry) -> Path:
        return self.dir / (entry.rpm_sha256 + PART_SUFFIX)

    def final(self, entry: IndexEntry) -> Path:
        return self.dir / (entry.rpm_sha256 + RPM_SUFFIX)

    # -- the header --------------------------------------------------------------------

    async def head(self, entry: IndexEntry) -> Package:
        """The package's checked header: from the ``.rpm`` an earlier pull fetched whole,
        else from the ``.part`` (its first bytes fetched first where it lacks them).
        Raises PackageRefused (the trust gate) or HttpError (no source served it)."""
        final = self.final(entry)
        if final.is_file() and final.stat().st_size == entry.size:
            if _sha256_of(final) == entry.rpm_sha256:
                try:
                    return self._check_header(_read_head(final, entry.header_length), entry, str(final))
                except BadBytes as e:  # the rpm the index names, not the head it names
                    raise HttpError(f"{entry.nevra}: {e}") from None
            os.unlink(final)
        failures = []
        for base in self.sources:
            fd = os.open(self.part(entry), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                return await self._head_from(fd, base, entry)
            except (HttpError, BadBytes) as e:
                os.ftruncate(fd, 0)
                failures.append(str(e))
                if base != self.sources[-1]:
                    log.warning("%s: %s; trying the next source", entry.nevra, e)
            finally:
                os.close(fd)
        raise HttpError(f"{entry.nevra}: no source served it: {failures[-1]}")

    async def _head_object(self, fd: int, base: str, entry: IndexEntry) -> bool:
        """The header from the repository's compressed copy (``publish --file-objects``),
        written at the start of ``fd``: True; False when it cannot be had (then the rpm's
        own bytes are asked for)."""
        url = join(join(base, self.heads), head_object_name(entry.rpm_sha256))
        try:
            data = await self.fetcher.get(url, max_size=entry.header_length + entry.header_length // 128 + 4096)
            head = zstandard.ZstdDecompressor().decompress(data, max_output_size=entry.header_length)
        except (HttpError, zstandard.ZstdError) as e:
            log.info("%s: %s; asking for the rpm's first bytes", entry.nevra, e)
            return False
        self.tick(len(data))
        if len(head) != entry.header_length:
            log.info("%s: the compressed header is not the index's length", entry.nevra)
            return False
        os.pwrite(fd, head, 0)
        return True

    def stored_version(self, entry: IndexEntry) -> tuple[str, bytes] | None:
        """A version the repository has a header delta from that the store holds: its
        header SHA-256 and the header the store keeps of it."""
        if self._stored_by_hash is None:
            self._stored_by_hash = {p.rsplit("-", 1)[1]: p for p in self.store.pkgids()}
        name = entry.nevra.rsplit("-", 2)[0]
        for old in entry.head_deltas:
            pkgid = self._stored_by_hash.get(old[:PKGID_HASH_DIGITS])
            if pkgid is not None and pkgid.rsplit("-", 3)[0] == name:
                try:
                    return old, self.store.read_header(pkgid)
                except (OSError, StoreError) as e:
                    log.info("%s: cannot read %s: %s", entry.nevra, pkgid, e)
        return None

    async def _head_delta(self, fd: int, base: str, entry: IndexEntry) -> Package | None:
        """The header from a delta against a version the store holds, checked, written at
        the start of ``fd``; None when there is none or it does not give the index's header."""
        stored = self.stored_version(entry)
        if stored is None:
            return None
        url = join(join(base, self.heads), head_delta_name(stored[0], entry.rpm_sha256))
        try:
            data = await self.fetcher.get(url, max_size=entry.header_length + 4096)
            dictionary = zstandard.ZstdCompressionDict(stored[1], dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            head = zstandard.ZstdDecompressor(dict_data=dictionary).decompress(
                data, max_output_size=entry.header_length)
        except (HttpError, zstandard.ZstdError) as e:
            log.info("%s: %s; fetching the whole header", entry.nevra, e)
            return None
        self.tick(len(data))
        try:
            if len(head) != entry.header_length:
                raise BadBytes(f"{url}: not the index's header length")
            package = self._check_header(head, entry, url)
        except (BadBytes, PackageRefused) as e:
            log.warning("%s: header delta refused: %s; fetching the whole header", entry.nevra, e)
            return None
        os.pwrite(fd, head, 0)
        self.head_deltas.append(entry.nevra)
        return package

    async def _head_from(self, fd: int, base: str, entry: IndexEntry) -> Package:
        def write(chunk: bytes) -> None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            self.tick(len(chunk))

        url = join(base, entry.path)
        compressed = self.heads is not None  # tried once: its bytes are checked as the rpm's
        if compressed and entry.head_deltas and not os.fstat(fd).st_size:
            package = await self._head_delta(fd, base, entry)
            if package is not None:
                self.headed.add(entry.nevra)
                return package
        for _ in range(2):
            have = os.fstat(fd).st_size
            if have > entry.size:
                os.ftruncate(fd, 0)
                have = 0
            if not have and compressed:
                compressed = False
                if await self._head_object(fd, base, entry):
                    have = entry.header_length
                    self.headed.add(entry.nevra)
            if have < entry.header_length:
                os.lseek(fd, have, os.SEEK_SET)
                await self.fetcher.fetch(url, have, entry.header_length, write)
                self.headed.add(entry.nevra)
            try:
                return self._check_header(os.pread(fd, entry.header_length, 0), entry, url)
            except BadBytes:
                if not have:
                    raise
                log.info("%s: the partial download does not verify; fetching it again", entry.nevra)
                os.ftruncate(fd, 0)
        raise BadBytes(f"{url}: not the package's header")

    def _check_header(self, header: bytes, entry: IndexEntry, url: str) -> Package:
        """The header must be the index's, and its signature trusted, before any payload."""
        try:
            package = read_package(header, strict=False)
        except HeaderError as e:
            raise BadBytes(f"{url}: not the package's header: {e}") from None
        if package.header_sha256 != entry.header_sha256 or package.payload_offset != entry.header_length:
            raise BadBytes(f"{url}: the header does not match the index")
        if entry.head_sha256 is not None and hashlib.sha256(header).hexdigest() != entry.head_sha256:
            raise BadBytes(f"{url}: the header's bytes are not the index's (head_sha256: another lead or "
                           "signature header)")
        trust = header_trust(sigcheck.check_package(package, self.keyring),
                             unsigned_allowed=self.allow_unsigned)
        if not trust.usable:
            raise PackageRefused(f"{entry.nevra}: signature check: {trust.reason}; nothing of its payload "
                                 "was fetched")
        return package

    # -- the packed heads -------------------------------------------------------------

    def fresh(self, entry: IndexEntry) -> bool:
        """Whether no earlier pull left anything of the package in ``downloads/``."""
        return not self.final(entry).exists() and not (self.part(entry).is_file() and self.part(entry).stat().st_size)

    async def packed_heads(self, index: ImageIndex) -> dict[str, bytes]:
        """The heads of the index's packages from its packed heads object, by pkgid (the
        object's SHA-256 the index's; each head is checked by :meth:`head_from_pack`); {}
        when no source serves it right (then each head is fetched alone)."""
        heads = index.heads
        total = sum(e.header_length for e in index.packages)
        if total > MAX_PACKED_HEADS:
            return {}
        for base in self.sources:
            url = join(base, heads.path)
            try:
                data = await self.fetcher.get(url, max_size=heads.size)
                if hashlib.sha256(data).hexdigest() != heads.sha256:
                    raise BadBytes(f"{url}: the bytes do not match the index's SHA-256")
                packed = zstandard.ZstdDecompressor().decompress(data, max_output_size=total)
                if len(packed) != total:
                    raise BadBytes(f"{url}: not the index's heads")
            except (HttpError, BadBytes, zstandard.ZstdError) as e:
                log.warning("packed heads: %s%s; %s", "" if isinstance(e, HttpError | BadBytes) else f"{url}: ", e,
                            "trying the next source" if base != self.sources[-1] else "fetching each header alone")
                continue
            self.tick(len(data))
            out, at = {}, 0
            for e in index.packages:
                out[e.pkgid] = packed[at:at + e.header_length]
                at += e.header_length
            return out
        return {}

    def head_from_pack(self, entry: IndexEntry, head: bytes) -> Package:
        """The package's header from the packed heads: checked, then written to its ``.part``."""
        package = self._check_header(head, entry, "packed heads")
        fd = os.open(self.part(entry), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, head, 0)
        finally:
            os.close(fd)
        self.headed.add(entry.nevra)
        return package

    # -- the rest ------------------------------------------------------------------------

    async def get(self, entry: IndexEntry, package: Package) -> Path | AssembledPackage:
        """What to import, once :meth:`head` checked ``package``: the verified rpm, or the
        package to assemble from its header and files (:mod:`usrview.remote.delta`)."""
        final, part = self.final(entry), self.part(entry)
        if final.is_file() and final.stat().st_size == entry.size:  # verified by head()
            self._tick(entry.size, 1)
            return final
        if self.delta is not None and part.stat().st_size <= entry.header_length:
            assembled = await self.delta.package(entry, part, package)
            if assembled is not None:
                return assembled
        failures = []
        for base in self.sources:
            try:
                await self._fetch(base, entry, part)
            except (HttpError, BadBytes) as e:
                failures.append(str(e))
                if base != self.sources[-1]:
                    log.warning("%s: %s; trying the next source", entry.nevra, e)
                continue
            os.rename(part, final)
            self.fetched.append(entry.nevra)
            self._tick(packages=1)
            return final
        raise HttpError(f"{entry.nevra}: no source served it: {failures[-1]}")

    async def _fetch(self, base: str, entry: IndexEntry, part: Path) -> None:
        url = join(base, entry.path)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            for fresh in (False, True):
                have = os.fstat(fd).st_size
                if fresh or have > entry.size:
                    os.ftruncate(fd, 0)
                    have = 0
                elif have > entry.header_length or (have and entry.nevra not in self.headed):
                    self.resumed.append(entry.nevra)
                try:
                    if await self._fill(fd, url, entry, have):
                        return
                except BadBytes:
                    os.ftruncate(fd, 0)  # the next source starts afresh
                    raise
                if not have:
                    break  # a fresh download that does not verify: the next source
                log.info("%s: resumed download does not verify; fetching it again", entry.nevra)
            os.ftruncate(fd, 0)
            raise BadBytes(f"{url}: the bytes do not match the index's SHA-256")
        finally:
            os.close(fd)

    async def _fill(self, fd: int, url: str, entry: IndexEntry, have: int) -> bool:
        """Complete the partial file ``fd`` (``have`` bytes) from ``url``: True when it verifies."""
        hasher = hashlib.sha256()
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, READ_CHUNK):
            hasher.update(chunk)

        def write(chunk: bytes) -> None:
            hasher.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            self.tick(len(chunk))

        os.lseek(fd, have, os.SEEK_SET)
        if have < entry.header_length:  # else head() checked these bytes of the .part this pull
            await self.fetcher.fetch(url, have, entry.header_length, write)
            self._check_header(os.pread(fd, entry.header_length, 0), entry, url)
        await self.fetcher.fetch(url, max(have, entry.header_length), entry.size, write)
        return hasher.hexdigest() == entry.rpm_sha256


def _read_head(path: Path, length: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(length)
