"""``pull``: an image from a repository URL into the store, then deployed.

In order:

1. The index from the origin (never from a mirror): ``latest``, then the index
   it names and its detached signature.  The signature must be GOOD with a
   trusted key (:func:`verifier.sigcheck.check_detached`), the index of the
   image asked for, not expired, and its serial not older than the last one
   this store accepted for that repository and image (``STORE/remote.json``):
   a replayed old index is refused.
2. The header of each package the store lacks (:meth:`usrview.remote.fetch.Downloader.head`:
   a Range request up to the payload; or, when the store lacks many of the image's
   packages (:data:`PACKED_HEADS_SHARE`), all of them in one request, the index's
   packed heads), its bytes the index's (``head_sha256``) and its signature
   passing the trust gate before a byte of payload is asked for.  A package
   whose header is refused refuses the pull, nothing of its payload fetched.
3. The set is deployed through :func:`usrview.images.deploy_sources` (lint, then
   import, then the image recorded and made current in one switch), while the
   packages' bytes are fetched by a process of its own (:mod:`usrview.remote.pipeline`,
   several packages at a time, in the index's order): each package is imported as soon
   as its bytes are there -- its rpm, or its files the store lacks
   (:mod:`usrview.remote.delta`) -- so that fetching and importing overlap.  The
   importer checks every signature and every file again.  Then the accepted
   serial is recorded and the downloads no pull needs are removed
   (:func:`usrview.remote.downloads.clean_downloads`).

A failure anywhere leaves the store's images as they were and no package
half-imported: the importer commits packages in batches, so those of a batch
committed before the failure stay in the store, unreferenced (as after an
``import``), and the next pull need not fetch them again; downloads stay for the
next pull to resume (Range).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from usrview.errors import OperationalError
from usrview.images import SourcePackage, deploy_sources
from usrview.images.records import DeployResult
from usrview.remote.delta import Delta
from usrview.remote.downloads import clean_downloads, downloads_lock
from usrview.remote.fetch import BadBytes, Downloader, Progress
from usrview.remote.http import DEFAULT_BACKOFF, Fetcher, check_url, join
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
from usrview.remote.pipeline import Pipeline, unwrap
from usrview.store import Store
from usrview.store.store import JSON_FILE_MAX, read_store_file
from verifier import sigcheck
from verifier.errors import HeaderError
from verifier.header import Package, read_package_file
from verifier.keyring import Keyring, Verdict

log = logging.getLogger(__name__)

STATE_FORMAT = 1
#: The packed heads (one request) are fetched when the store lacks, and has no earlier version
#: to take a header delta from, at least this share of the image's packages and at least
#: PACKED_HEADS_MIN of them; else each missing package's header alone (a request each: for a
#: few packages, or a few changed ones, that is fewer bytes than every header of the image).
PACKED_HEADS_SHARE = 0.5
PACKED_HEADS_MIN = 16


@dataclass
class PullResult:
    """What :func:`pull` did.

    Attributes: index (the accepted index), deploy (the deploy's result),
    fetched (NEVRAs downloaded by this pull), stored (packages the store had),
    bytes_fetched (package bytes received), resumed (NEVRAs continued from a
    partial download), assembled (NEVRAs fetched file by file, not as rpms),
    file_objects (file objects fetched), fallbacks (NEVRAs fetched whole after a
    file object failed), head_deltas (NEVRAs whose header came as a delta from a
    stored version).
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
    head_deltas: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = self.deploy
        return {"name": self.index.name, "serial": self.index.serial,
                "expires": self.index.to_json()["expires"], "packages": len(self.index.packages),
                "fetched": self.fetched, "resumed": self.resumed, "already_stored": self.stored,
                "bytes_fetched": self.bytes_fetched, "assembled": self.assembled,
                "file_objects": self.file_objects, "fallbacks": self.fallbacks, "head_deltas": self.head_deltas,
                "image": d.image.id if d else None, "previous": d.previous if d else None,
                "already_current": d.already_current if d else None,
                "imported": d.imported if d else []}


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


# -- the whole pull ------------------------------------------------------------------------------

async def _prepare(store: Store, origin: str, mirrors: list[str], name: str, keyring: Keyring, *,
                   fetcher: Fetcher, jobs: int, allow_unsigned: bool, progress: Progress | None,
                   now: datetime) -> tuple[PullResult, Downloader, list[tuple[IndexEntry, Package]]]:
    """The checked index, and the checked header of every package the store lacks."""
    try:
        data, signature = await _fetch_index(fetcher, origin, name)
        index = check_index(data, signature, keyring, name=name,
                            accepted=accepted_serial(store, origin, name), now=now)
        result = PullResult(index)
        missing = [e for e in index.packages if not store.has(e.pkgid)]
        result.stored = len(index.packages) - len(missing)
        downloader = Downloader(store, [*mirrors, origin], keyring, allow_unsigned, progress,
                                len(missing), sum(e.size for e in missing))
        downloader.fetcher, downloader.heads = fetcher, index.file_objects
        heads: dict[str, Package] = {}
        limiter = trio.CapacityLimiter(max(1, jobs))
        packed = {}
        alone = [e for e in missing if downloader.fresh(e) and not (
            index.file_objects is not None and e.head_deltas and downloader.stored_version(e))]
        if index.heads is not None and len(alone) >= max(PACKED_HEADS_MIN, PACKED_HEADS_SHARE * len(index.packages)):
            packed = await downloader.packed_heads(index)

        async def one(entry: IndexEntry) -> None:
            if entry.pkgid in packed and downloader.fresh(entry):
                try:
                    heads[entry.pkgid] = downloader.head_from_pack(entry, packed[entry.pkgid])
                    return
                except BadBytes as e:
                    log.warning("%s: %s; fetching its header alone", entry.nevra, e)
            async with limiter:
                heads[entry.pkgid] = await downloader.head(entry)

        async with trio.open_nursery() as nursery:
            for entry in missing:
                nursery.start_soon(one, entry)
        if index.file_objects is not None and missing:
            downloader.delta = Delta(store, downloader, index.file_objects)
        return result, downloader, [(e, heads[e.pkgid]) for e in missing]
    finally:
        await fetcher.aclose()


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
    backoff = DEFAULT_BACKOFF if backoff is None else backoff

    def make_fetcher() -> Fetcher:
        return Fetcher(ca_file=ca_file, timeout=timeout, retries=retries, backoff=backoff)

    with downloads_lock(store):
        try:
            result, downloader, pending = trio.run(lambda: _prepare(
                store, origin, list(mirrors), name, keyring, fetcher=make_fetcher(), jobs=jobs,
                allow_unsigned=allow_unsigned, progress=progress, now=now))
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        except OSError as e:
            raise OperationalError(f"cannot write into {store.downloads_dir}: {e.strerror or e}") from None
        pipeline = Pipeline(downloader, pending, make_fetcher, jobs)
        pipeline.start()
        try:
            if deploy:
                with store.lock():
                    sources = _sources(store, result.index, downloader, dict((e.pkgid, p) for e, p in pending))
                    extra = {} if tries is None else {"tries": tries}
                    result.deploy = deploy_sources(store, sources, keyring, allow_unsigned=allow_unsigned,
                                                   fetch=lambda s: pipeline.wait(s.pkgid), **extra)
                    _record_serial(store, origin, name, result.index.serial)
                    for path in pipeline.ready.values():
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                    pipeline.finish()  # its account of what it fetched
                    with contextlib.suppress(OSError):  # only what no pull needs: it may stay
                        clean_downloads(store)
            else:
                pipeline.finish()
        finally:
            pipeline.stop()
    result.fetched = sorted(downloader.fetched)
    result.resumed = sorted(set(downloader.resumed))
    result.bytes_fetched = downloader.received
    result.head_deltas = sorted(downloader.head_deltas)
    if downloader.delta is not None:
        result.assembled = sorted(downloader.delta.assembled)
        result.file_objects = downloader.delta.fetched
        result.fallbacks = sorted(downloader.delta.fallbacks)
    return result


def _sources(store: Store, index: ImageIndex, downloader: Downloader,
             headers: dict[str, Package]) -> list[SourcePackage]:
    """The index's packages as deploy reads them: the stored headers, and the headers of
    the packages being fetched (what to import comes from the pipeline)."""
    sources = []
    for entry in index.packages:
        package = headers.get(entry.pkgid)
        if package is not None:
            sources.append(SourcePackage(downloader.part(entry), package, entry.pkgid))
            continue
        path = store.header_path(entry.pkgid)
        try:
            package = read_package_file(path)
        except (OSError, HeaderError) as e:
            raise OperationalError(f"{path}: cannot read {entry.nevra}: {e}") from None
        sources.append(SourcePackage(path, package, entry.pkgid))
    return sources
