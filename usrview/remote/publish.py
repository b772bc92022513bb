"""``publish``: a directory of rpms into a repository, as a new signed image index.

The order keeps every state a reader can see whole (:mod:`usrview.remote.index`
has the layout): the rpm objects first (each written under ``.tmp/``, synced,
renamed to its content-addressed name; an object already there is reused), then
the index and its signature under their immutable serial names, and last
``latest`` replaced by one rename.  Publishes of one repository take turns on
its ``.lock``.  Every index entry pins the package's head (``head_sha256``: its
bytes before the payload), and every index names a packed heads object
(``objects/heads/``: all its heads in one zstd frame) that a store lacking many of
the packages fetches in one request.

With ``file_objects``, every regular file of every package (its bytes checked
against the header's digest as the payload is read) is also written as a file
object (``objects/files/ALGO/AB/HEX.zst``, compressed alone with zstd), and so is
the header of every rpm (``objects/files/heads/``); the index says so: pull then
fetches a package's compressed header and only the files a store lacks.  New file
objects are written under ``.tmp/``, made durable by one ``syncfs`` and then
renamed in, so a crash never leaves a short object under its final name.
A package whose name the image's last :data:`DELTA_HISTORY` indexes had at another
version also gets a header delta for each such version (``heads/deltas/``): its
header compressed with the store's copy of the old header as zstd's dictionary,
listed in its index entry (``head_deltas``).  The signature is made by gpg, as rpmsign makes package
signatures; pull checks it with the verifier.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import zstandard

from usrview.errors import OperationalError
from usrview.images import read_source
from usrview.images.lint import has_errors, lint
from usrview.remote.index import (
    FILE_OBJECTS_DIR,
    LATEST,
    LOCK_FILE,
    REPO_FORMAT_LINE,
    REPO_MARKER,
    SIGNATURE_SUFFIX,
    TMP_DIR,
    ImageIndex,
    IndexEntry,
    IndexRefused,
    PackedHeads,
    check_name,
    file_object_name,
    head_delta_name,
    head_object_name,
    index_path,
    latest_path,
    object_path,
    packed_heads_path,
    parse_index,
    parse_latest,
)
from usrview.store import Store, btrfs
from usrview.store.payload import PayloadError, open_payload
from verifier.errors import HeaderError
from verifier.header import read_package
from verifier.headerfile import canonical_header_only

log = logging.getLogger(__name__)

#: How long an index is valid unless told otherwise.
DEFAULT_VALID_DAYS = 30
#: gpg, as rpmsign runs it.
GPG = "gpg"
GPG_TIMEOUT = 300
COPY_CHUNK = 1 << 20
#: zstd level of file objects: written once, fetched by every machine (decompression
#: costs the same at every level).
FILE_OBJECT_LEVEL = 12
#: zstd level of header deltas (a few kB each).
HEAD_DELTA_LEVEL = 19
#: How many earlier indexes of an image header deltas are made from.
DELTA_HISTORY = 3


@dataclass
class PublishResult:
    """What :func:`publish` did: the index written, and which objects were new."""

    index: ImageIndex
    index_path: str
    added: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    bytes_added: int = 0
    file_objects_added: int = 0
    file_object_bytes_added: int = 0
    head_deltas_added: int = 0


def _open_repo(repo: Path) -> None:
    marker = repo / REPO_MARKER
    try:
        if not marker.exists():
            if repo.exists() and any(p.name not in (LOCK_FILE, TMP_DIR) for p in repo.iterdir()):
                raise OperationalError(f"{repo} is not empty and not a usrview repository")
            (repo / TMP_DIR).mkdir(parents=True, exist_ok=True)
            Store.atomic_write(marker, REPO_FORMAT_LINE.encode(), tmp_dir=repo / TMP_DIR)
        elif marker.read_text(errors="replace") != REPO_FORMAT_LINE:
            raise OperationalError(f"{repo} is a repository of another format")
        (repo / TMP_DIR).mkdir(exist_ok=True)
    except OSError as e:
        raise OperationalError(f"cannot open the repository {repo}: {e.strerror or e}") from None


@contextlib.contextmanager
def _repo_lock(repo: Path):
    fd = os.open(repo / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _add_object(repo: Path, rel: str, write) -> bool:
    """Make ``rel`` with ``write(file)`` (under ``.tmp/``, synced, renamed in) unless it is
    there; True when made."""
    dest = repo / rel
    if dest.is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = repo / TMP_DIR / f"{dest.name}.{os.getpid()}"
    try:
        with open(tmp, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    Store.fsync_dir(dest.parent)
    return True


def _copy_from(source: Path):
    def write(out) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, out, COPY_CHUNK)
    return write


def _read_head(path: Path, length: int) -> bytes:
    with open(path, "rb") as f:
        head = f.read(length)
    if len(head) != length:
        raise OperationalError(f"{path}: shorter than its header")
    return head


def _add_packed_heads(repo: Path, heads: list[bytes]) -> PackedHeads:
    """The packed heads object of ``heads`` (in the index's order), made unless it is there."""
    data = zstandard.ZstdCompressor(level=FILE_OBJECT_LEVEL).compress(b"".join(heads))
    digest = hashlib.sha256(data).hexdigest()
    rel = packed_heads_path(digest)
    _add_object(repo, rel, lambda out: out.write(data))
    return PackedHeads(rel, digest, len(data))


class _FileObjects:
    """The file objects of a publish: written under ``.tmp/``, then moved in together."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.compressor = zstandard.ZstdCompressor(level=FILE_OBJECT_LEVEL)
        self.staged: dict[str, Path] = {}  # relative name -> its temp file
        self.added = self.bytes_added = self.deltas_added = 0

    def add_package(self, path: Path, package, rpm_sha256: str, head_bytes: bytes,
                    earlier: list[IndexEntry]) -> list[str]:
        """Stage the package's header (``head_bytes``), its header deltas from the ``earlier``
        versions and its files; the header SHA-256s of the versions it has a delta from."""
        head = head_object_name(rpm_sha256)
        if not (self.repo / FILE_OBJECTS_DIR / head).is_file():
            self._stage_bytes(head, head_bytes)
        deltas = [old.header_sha256 for old in earlier if self._add_delta(old, rpm_sha256, head_bytes)]
        self._add_files(path, package)
        return deltas

    def _add_delta(self, old: IndexEntry, rpm_sha256: str, head_bytes: bytes) -> bool:
        rel = head_delta_name(old.header_sha256, rpm_sha256)
        if rel in self.staged or (self.repo / FILE_OBJECTS_DIR / rel).is_file():
            return True
        try:
            with open(self.repo / old.path, "rb") as f:
                base = canonical_header_only(read_package(f.read(old.header_length), strict=False))
        except (OSError, HeaderError) as e:
            log.info("no header delta from %s: %s", old.nevra, e)
            return False
        packer = zstandard.ZstdCompressor(level=HEAD_DELTA_LEVEL, dict_data=zstandard.ZstdCompressionDict(
            base, dict_type=zstandard.DICT_TYPE_RAWCONTENT))
        self._stage_bytes(rel, head_bytes, packer)
        self.deltas_added += 1
        return True

    def _add_files(self, path: Path, package) -> None:
        try:
            with open_payload(path, package) as members:
                for member in members:
                    entry = member.entry
                    rel = member.has_content and entry.size and file_object_name(entry.digest_algo, entry.digest)
                    if not rel or rel in self.staged or (self.repo / FILE_OBJECTS_DIR / rel).is_file():
                        for _ in member.chunks(verify=member.has_content):
                            pass
                        continue
                    self._stage(rel, member)
        except PayloadError as e:
            raise OperationalError(f"{path}: cannot make its file objects: {e}") from None

    def _stage_bytes(self, rel: str, data: bytes, compressor=None) -> None:
        tmp = self.repo / TMP_DIR / f"{len(self.staged)}.{os.getpid()}{Path(rel).suffix}"
        self.staged[rel] = tmp
        tmp.write_bytes((compressor or self.compressor).compress(data))

    def _stage(self, rel: str, member) -> None:
        tmp = self.repo / TMP_DIR / f"{len(self.staged)}.{os.getpid()}{Path(rel).suffix}"
        self.staged[rel] = tmp
        packer = self.compressor.compressobj(size=member.entry.size)
        with open(tmp, "wb") as out:
            for chunk in member.chunks(COPY_CHUNK, verify=True):
                out.write(packer.compress(chunk))
            out.write(packer.flush())
            self.bytes_added += out.tell()
        self.added += 1

    def commit(self) -> None:
        """Durable first (one syncfs), then under their names, then durable again."""
        if not self.staged:
            return
        fd = os.open(self.repo / TMP_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            btrfs.syncfs(fd)
            for rel, tmp in self.staged.items():
                dest = self.repo / FILE_OBJECTS_DIR / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tmp, dest)
            btrfs.syncfs(fd)
        finally:
            os.close(fd)
        self.staged = {}

    def discard(self) -> None:
        for tmp in self.staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _sign(data_path: Path, sig_path: Path, key: str | None, gpg_home: Path | None) -> None:
    cmd = [GPG, "--batch", "--yes", "--no-tty", "--detach-sign", "--output", str(sig_path)]
    if gpg_home is not None:
        cmd[1:1] = ["--homedir", str(gpg_home)]
    if key:
        cmd += ["--local-user", key]
    try:
        r = subprocess.run([*cmd, str(data_path)], capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=GPG_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OperationalError(f"cannot run {GPG}: {e}") from None
    if r.returncode != 0:
        last = (r.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise OperationalError(f"{GPG} could not sign the index: {last}")


def _previous_serial(repo: Path, name: str) -> int:
    try:
        return parse_latest((repo / latest_path(name)).read_bytes())
    except FileNotFoundError:
        return 0


def _earlier_versions(repo: Path, name: str, serial: int) -> dict[str, list[IndexEntry]]:
    """Package name -> the distinct versions the image's last DELTA_HISTORY indexes had."""
    out: dict[str, dict[str, IndexEntry]] = {}
    for earlier in range(serial, max(0, serial - DELTA_HISTORY), -1):
        try:
            index = parse_index((repo / index_path(name, earlier)).read_bytes())
        except (OSError, IndexRefused) as e:
            log.info("no header deltas from %s serial %d: %s", name, earlier, e)
            continue
        for entry in index.packages:
            out.setdefault(entry.nevra.rsplit("-", 2)[0], {}).setdefault(entry.header_sha256, entry)
    return {k: list(v.values()) for k, v in out.items()}


def publish(image_dir: Path, repo: Path, *, name: str, sign_with: str | None = None,
            gpg_home: Path | None = None, valid_days: int = DEFAULT_VALID_DAYS,
            now: datetime | None = None, file_objects: bool = False) -> PublishResult:
    """Publish the rpms of ``image_dir`` as the next index of image ``name`` in ``repo``
    (with ``file_objects``, every file of every package as a file object too)."""
    check_name(name)
    if valid_days < 1:
        raise OperationalError("--valid-days must be 1 or more")
    sources = read_source(image_dir)
    header_only = [s.path.name for s in sources if s.header_only]
    if header_only:
        raise OperationalError(f"publish needs full rpms; header-only: {', '.join(header_only)}")
    findings = lint(s.package for s in sources)
    if has_errors(findings):
        first = next(f for f in findings if f.severity.name == "ERROR")
        raise OperationalError(f"the package set has lint errors (usrview lint {image_dir}): {first.format()}")
    repo.mkdir(parents=True, exist_ok=True)
    _open_repo(repo)
    with _repo_lock(repo):
        entries, added, reused, added_bytes, heads = [], [], [], 0, {}
        files = _FileObjects(repo) if file_objects else None
        serial = _previous_serial(repo, name) + 1
        earlier = _earlier_versions(repo, name, serial - 1) if file_objects else {}
        try:
            for s in sources:
                digest, size = _sha256(s.path), s.path.stat().st_size
                head = heads[s.package.nevra] = _read_head(s.path, s.package.payload_offset)
                deltas = []
                if files is not None:
                    olds = [e for e in earlier.get(s.package.name, []) if e.header_sha256 != s.package.header_sha256]
                    deltas = files.add_package(s.path, s.package, digest, head, olds)
                rel = object_path(digest)
                if _add_object(repo, rel, _copy_from(s.path)):
                    added.append(s.package.nevra)
                    added_bytes += size
                else:
                    reused.append(s.package.nevra)
                entries.append(IndexEntry(s.package.nevra, s.package.header_sha256, digest, size,
                                          s.package.payload_offset, rel, tuple(deltas),
                                          hashlib.sha256(head).hexdigest()))
            entries.sort(key=lambda e: e.nevra)
            packed = _add_packed_heads(repo, [heads[e.nevra] for e in entries])
            if files is not None:
                files.commit()
        except OSError as e:
            raise OperationalError(f"cannot write into the repository {repo}: {e.strerror or e}") from None
        finally:
            if files is not None:
                files.discard()
        when = (now or datetime.now(UTC)).replace(microsecond=0)
        index = ImageIndex(name, serial, when, when + timedelta(days=valid_days),
                           tuple(entries), FILE_OBJECTS_DIR if file_objects else None, packed)
        data = index.to_bytes()
        rel = index_path(name, serial)
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_index = repo / TMP_DIR / f"{name}.{serial}{path.suffix}"
        tmp_sig = repo / TMP_DIR / f"{name}.{serial}{path.suffix}{SIGNATURE_SUFFIX}"
        try:
            Store.atomic_write(tmp_index, data)
            _sign(tmp_index, tmp_sig, sign_with, gpg_home)
            os.rename(tmp_sig, repo / (rel + SIGNATURE_SUFFIX))
            os.rename(tmp_index, path)
            Store.fsync_dir(path.parent)
            Store.atomic_write(repo / latest_path(name), f"{serial}\n".encode(), tmp_dir=repo / TMP_DIR)
        except OSError as e:
            raise OperationalError(f"cannot write the index {rel}: {e.strerror or e}") from None
        finally:
            for leftover in (tmp_index, tmp_sig):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
    log.info("published %s serial %d (%s); %d objects added", name, serial, LATEST, len(added))
    result = PublishResult(index, rel, added, reused, added_bytes)
    if files is not None:
        result.file_objects_added, result.file_object_bytes_added = files.added, files.bytes_added
        result.head_deltas_added = files.deltas_added
    return result
