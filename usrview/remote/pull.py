"""``pull``: an image from a repository URL into the store, then deployed.

In order:

1. The index from the origin (never from a mirror): ``latest``, then the index
   it names and its detached signature.  The signature must be GOOD with a
   trusted key (:func:`verifier.sigcheck.check_detached`), the index of the
   image asked for, not expired, and its serial not older than the last one
   this store accepted for that repository and image (``STORE/remote.json``):
   a replayed old index is refused.
2. Each package the store lacks is fetched into ``STORE/downloads/`` as
   ``RPM_SHA256.part``: first its header (a Range request up to the payload),
   whose SHA-256 must be the index's and whose signature must pass the trust
   gate before a byte of payload is asked for; then the rest.  The whole file
   must have the index's SHA-256; only then is it renamed ``RPM_SHA256.rpm``
   (not synced: the deploy that follows reads it from the page cache, and a
   pull that finds a ``.rpm`` an earlier one left checks its SHA-256 again).
   A ``.part`` left by an interrupted pull is resumed (Range) by the next one
   (what a crash tore fails the SHA-256, and is fetched again).
   Package bytes come from the mirrors in order, then the origin: an error or
   bytes that do not verify fail over to the next.  Several packages at a time.
3. The set is deployed through :func:`usrview.images.deploy_sources`: the
   importer checks every signature and every file again, the image is
   recorded and made current in one switch; the accepted serial is recorded
   and the imported downloads removed.  A failure anywhere before leaves the
   store's packages and images as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from usrview.errors import OperationalError
from usrview.images import SourcePackage, deploy_sources
from usrview.images.records import DeployResult
from usrview.remote.delta import Delta
from usrview.remote.downloads import clean_downloads, downloads_lock
from usrview.remote.http import DEFAULT_BACKOFF, Fetcher, HttpError, check_url, join
from usrview.remote.index import (
    DEFAULT_IMAGE,
    DEFAULT_JOBS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_INDEX_BYTES,
    MAX_LATEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_SUFFIX,
    ImageIndex,
    IndexEntry,
    IndexRefused,
    check_name,
    index_path,
    latest_path,
    parse_index,
    parse_latest,
)
from usrview.store import Store
from usrview.store.assemble import AssembledPackage
from usrview.store.importer import PackageRefused
from usrview.store.store import JSON_FILE_MAX, read_store_file
from usrview.store.trust import header_trust
from verifier import sigcheck
from verifier.errors import HeaderError
from verifier.header import Package, read_package, read_package_file
from verifier.keyring import Keyring, Verdict

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
READ_CHUNK = 1 << 20
RPM_SUFFIX = ".rpm"
STATE_FORMAT = 1

Progress = Callable[[int, int, int, int], None]


@dataclass
class PullResult:
    """What :func:`pull` did.

    Attributes: index (the accepted index), deploy (the deploy's result),
    fetched (NEVRAs downloaded by this pull), stored (packages the store had),
    bytes_fetched (package bytes received), resumed (NEVRAs continued from a
    partial download), assembled (NEVRAs fetched file by file, not as rpms),
    file_objects (file objects fetched), fallbacks (NEVRAs fetched whole after a
    file object failed).
    """

    index: ImageIndex
    deploy: DeployResult | None = None
    fetched: list[str] = field(default_factory=list)
    stored: int = 0
    bytes_fetched: int = 0
    resumed: list[str] = field(default_factory=list)
    assembled: list[str] = field(default_factory=list)
    file_objects: int = 0
    fallbacks: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = self.deploy
        return {"name": self.index.name, "serial": self.index.serial,
                "expires": self.index.to_json()["expires"], "packages": len(self.index.packages),
                "fetched": self.fetched, "resumed": self.resumed, "already_stored": self.stored,
                "bytes_fetched": self.bytes_fetched, "assembled": self.assembled,
                "file_objects": self.file_objects, "fallbacks": self.fallbacks,
                "image": d.image.id if d else None, "previous": d.previous if d else None,
                "already_current": d.already_current if d else None,
                "imported": d.imported if d else []}


class _BadBytes(Exception):
    """A source served bytes that do not match the index: try the next one."""


# -- the accepted serials -------------------------------------------------------------------

def _state_key(origin: str, name: str) -> str:
    return f"{origin.rstrip('/')}#{name}"


def _accepted(store: Store) -> dict:
    """The serials this store accepted (``remote.json``), read as every store file is."""
    path = store.remote_state_path
    try:
        data = json.loads(read_store_file(path, JSON_FILE_MAX))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise OperationalError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    accepted = data.get("accepted", {}) if isinstance(data, dict) else {}
    if not isinstance(accepted, dict):
        raise OperationalError(f"{path} is corrupt")
    return accepted


def accepted_serial(store: Store, origin: str, name: str) -> int:
    """The newest serial of ``name`` from ``origin`` this store accepted (0: none)."""
    serial = _accepted(store).get(_state_key(origin, name), 0)
    if type(serial) is not int:
        raise OperationalError(f"{store.remote_state_path} is corrupt")
    return serial


def _record_serial(store: Store, origin: str, name: str, serial: int) -> None:
    accepted = _accepted(store)
    accepted[_state_key(origin, name)] = serial
    data = {"format": STATE_FORMAT, "accepted": accepted}
    store.write_file(store.remote_state_path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


# -- the index ---------------------------------------------------------------------------------

def check_index(data: bytes, signature: bytes, keyring: Keyring, *, name: str, accepted: int,
                now: datetime) -> ImageIndex:
    """The index in ``data`` if it may be used; IndexRefused with the reason otherwise."""
    verdict = sigcheck.check_detached(signature, data, keyring, now=now.timestamp())
    if verdict.verdict is not Verdict.GOOD:
        raise IndexRefused(f"image index signature: {verdict.verdict.value} ({verdict.reason})")
    index = parse_index(data)
    if index.name != name:
        raise IndexRefused(f"the index is of image {index.name!r}, not {name!r}")
    if index.expires <= now:
        raise IndexRefused(f"image index {name} serial {index.serial} expired on "
                           f"{index.expires.isoformat()} (a frozen or stale repository)")
    if index.serial < accepted:
        raise IndexRefused(f"image index {name} serial {index.serial} is older than serial {accepted} "
                           "accepted before (a replayed index)")
    return index


async def _fetch_index(fetcher: Fetcher, origin: str, name: str) -> tuple[bytes, bytes]:
    serial = parse_latest(await fetcher.get(join(origin, latest_path(name)), max_size=MAX_LATEST_BYTES))
    url = join(origin, index_path(name, serial))
    data = await fetcher.get(url, max_size=MAX_INDEX_BYTES)
    signature = await fetcher.get(url + SIGNATURE_SUFFIX, max_size=MAX_SIGNATURE_BYTES)
    return data, signature


# -- one package ---------------------------------------------------------------------------------

class _Downloader:
    """Fetches packages into ``STORE/downloads/``; attributes as :func:`pull`'s arguments."""

    def __init__(self, store: Store, fetcher: Fetcher, sources: list[str], keyring: Keyring,
                 allow_unsigned: bool, progress: Progress | None, total: int, total_bytes: int):
        self.dir = store.downloads_dir
        self.fetcher, self.sources, self.keyring = fetcher, sources, keyring
        self.allow_unsigned = allow_unsigned
        self.progress = progress
        self.total, self.total_bytes = total, total_bytes
        self.done = self.done_bytes = 0
        self.resumed: list[str] = []
        self.headed: set[str] = set()  # NEVRAs whose header this pull fetched
        self.fetched: list[str] = []
        self.received = 0
        #: the file-level delta (:mod:`usrview.remote.delta`) when the repository has file objects
        self.delta = None

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

    async def get(self, entry: IndexEntry) -> Path | AssembledPackage:
        """The verified rpm (its path), fetched unless a pull fetched it before; or the
        package to assemble from its header and files (:mod:`usrview.remote.delta`)."""
        final = self.dir / (entry.rpm_sha256 + RPM_SUFFIX)
        if final.is_file() and final.stat().st_size == entry.size:
            if _sha256_of(final) == entry.rpm_sha256:  # not synced when renamed: checked again
                self._tick(entry.size, 1)
                return final
            os.unlink(final)
        part = self.dir / (entry.rpm_sha256 + PART_SUFFIX)
        if self.delta is not None:
            assembled = await self.delta.package(entry, part)
            if assembled is not None:
                return assembled
        failures = []
        for base in self.sources:
            try:
                await self._fetch(base, entry, part)
            except (HttpError, _BadBytes) as e:
                failures.append(str(e))
                if base != self.sources[-1]:
                    log.warning("%s: %s; trying the next source", entry.nevra, e)
                continue
            os.rename(part, final)
            self.fetched.append(entry.nevra)
            self._tick(packages=1)
            return final
        raise HttpError(f"{entry.nevra}: no source served it: {failures[-1]}")

    async def head(self, entry: IndexEntry, part: Path) -> Package | None:
        """The package's header, its bytes fetched into ``part`` (or there already) and
        checked; None when ``part`` holds more (a whole download to resume) or no
        source served it right (the whole download then tries again)."""
        for base in self.sources:
            url = join(base, entry.path)
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                have = os.fstat(fd).st_size
                if have > entry.header_length:
                    return None

                def write(chunk: bytes) -> None:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    self.tick(len(chunk))

                os.lseek(fd, have, os.SEEK_SET)
                try:
                    if have < entry.header_length:
                        await self.fetcher.fetch(url, have, entry.header_length, write)
                        self.headed.add(entry.nevra)
                    return self._check_header(os.pread(fd, entry.header_length, 0), entry, url)
                except (HttpError, _BadBytes) as e:
                    os.ftruncate(fd, 0)
                    log.warning("%s: %s; trying the %s", entry.nevra, e,
                                "next source" if base != self.sources[-1] else "whole rpm")
            finally:
                os.close(fd)
        return None

    async def _fetch(self, base: str, entry: IndexEntry, part: Path) -> None:
        url = join(base, entry.path)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            for fresh in (False, True):
                have = os.fstat(fd).st_size
                if fresh or have > entry.size:
                    os.ftruncate(fd, 0)
                    have = 0
                elif have and entry.nevra not in self.headed:
                    self.resumed.append(entry.nevra)
                try:
                    if await self._fill(fd, url, entry, have):
                        return
                except _BadBytes:
                    os.ftruncate(fd, 0)  # the next source starts afresh
                    raise
                if not have:
                    break  # a fresh download that does not verify: the next source
                log.info("%s: resumed download does not verify; fetching it again", entry.nevra)
            os.ftruncate(fd, 0)
            raise _BadBytes(f"{url}: the bytes do not match the index's SHA-256")
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
        if have < entry.header_length:
            await self.fetcher.fetch(url, have, entry.header_length, write)
        self._check_header(os.pread(fd, entry.header_length, 0), entry, url)
        await self.fetcher.fetch(url, max(have, entry.header_length), entry.size, write)
        return hasher.hexdigest() == entry.rpm_sha256

    def _check_header(self, header: bytes, entry: IndexEntry, url: str) -> Package:
        """The header must be the index's, and its signature trusted, before any payload."""
        try:
            package = read_package(header, strict=False)
        except HeaderError as e:
            raise _BadBytes(f"{url}: not the package's header: {e}") from None
        if package.header_sha256 != entry.header_sha256 or package.payload_offset != entry.header_length:
            raise _BadBytes(f"{url}: the header does not match the index")
        trust = header_trust(sigcheck.check_package(package, self.keyring),
                             unsigned_allowed=self.allow_unsigned)
        if not trust.usable:
            raise PackageRefused(f"{entry.nevra}: signature check: {trust.reason}; nothing of its payload "
                                 "was fetched")
        return package


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- the whole pull ------------------------------------------------------------------------------

async def _download(store: Store, origin: str, mirrors: list[str], name: str, keyring: Keyring, *,
                    ca_file, timeout, retries, backoff, jobs, allow_unsigned, progress, now,
                    result_box: list) -> dict[str, Path | AssembledPackage]:
    fetcher = Fetcher(ca_file=ca_file, timeout=timeout, retries=retries, backoff=backoff)
    try:
        data, signature = await _fetch_index(fetcher, origin, name)
        index = check_index(data, signature, keyring, name=name,
                            accepted=accepted_serial(store, origin, name), now=now)
        result = PullResult(index)
        result_box.append(result)
        missing = [e for e in index.packages if not store.has(e.pkgid)]
        result.stored = len(index.packages) - len(missing)
        downloader = _Downloader(store, fetcher, [*mirrors, origin], keyring, allow_unsigned, progress,
                                 len(missing), sum(e.size for e in missing))
        if index.file_objects is not None and missing:
            downloader.delta = Delta(store, downloader, index.file_objects)
        paths: dict[str, Path | AssembledPackage] = {}
        limiter = trio.CapacityLimiter(max(1, jobs))

        async def one(entry: IndexEntry) -> None:
            async with limiter:
                paths[entry.pkgid] = await downloader.get(entry)

        async with trio.open_nursery() as nursery:
            for entry in missing:
                nursery.start_soon(one, entry)
        result.fetched = sorted(downloader.fetched)
        result.resumed = sorted(set(downloader.resumed))
        result.bytes_fetched = downloader.received
        if downloader.delta is not None:
            result.assembled = sorted(downloader.delta.assembled)
            result.file_objects = downloader.delta.fetched
            result.fallbacks = sorted(downloader.delta.fallbacks)
        return paths
    finally:
        await fetcher.aclose()


def _unwrap(group: BaseException) -> BaseException:
    """The first error of a trio task group (one line for the user, not a tree)."""
    while isinstance(group, BaseExceptionGroup) and group.exceptions:
        group = group.exceptions[0]
    return group


def pull(store: Store, origin: str, keyring: Keyring, *, name: str = DEFAULT_IMAGE,
         mirrors: list[str] | tuple[str, ...] = (), ca_file: Path | None = None,
         timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES, backoff: float | None = None,
         jobs: int = DEFAULT_JOBS, allow_unsigned: bool = False, progress: Progress | None = None,
         deploy: bool = True, tries: int | None = None, now: datetime | None = None) -> PullResult:
    """Pull image ``name`` from the repository at ``origin`` and (with ``deploy``) make it current."""
    check_name(name)
    check_url(origin)
    for m in mirrors:
        check_url(m)
    now = now or datetime.now(UTC)
    box: list[PullResult] = []
    kwargs = dict(ca_file=ca_file, timeout=timeout, retries=retries, jobs=jobs, allow_unsigned=allow_unsigned,
                  progress=progress, now=now, result_box=box,
                  backoff=DEFAULT_BACKOFF if backoff is None else backoff)
    with downloads_lock(store):
        try:
            paths = trio.run(lambda: _download(store, origin, list(mirrors), name, keyring, **kwargs))
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        except OSError as e:
            raise OperationalError(f"cannot write into {store.downloads_dir}: {e.strerror or e}") from None
        result = box[0]
        if not deploy:
            return result
        with store.lock():
            sources = _sources(store, result.index, paths)
            extra = {} if tries is None else {"tries": tries}
            result.deploy = deploy_sources(store, sources, keyring, allow_unsigned=allow_unsigned, **extra)
            _record_serial(store, origin, name, result.index.serial)
            for path in paths.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            with contextlib.suppress(OSError):  # only what no pull needs: it may stay
                clean_downloads(store)
    return result


def _sources(store: Store, index: ImageIndex, paths: dict[str, Path | AssembledPackage]) -> list[SourcePackage]:
    """The index's packages as deploy reads them: downloaded rpms, packages to assemble,
    and the stored headers."""
    sources = []
    for entry in index.packages:
        path = paths.get(entry.pkgid) or store.header_path(entry.pkgid)
        try:
            package = read_package_file(path)
        except (OSError, HeaderError) as e:
            raise OperationalError(f"{path}: cannot read {entry.nevra}: {e}") from None
        sources.append(SourcePackage(path, package, entry.pkgid))
    return sources
