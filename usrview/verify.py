"""Bulk verification of an image: the engine behind ``usrview verify`` and the monitor.

What is checked (docs/verify.md is the reference):

1. The image record (``images/ID.json`` through ``current`` or ``--image``):
   it must parse, its id's package-set hash must match its package list, every
   package it names must be stored, and its ``unsigned`` list must agree with
   the store's ``unsigned/`` markers.
2. Each package's header file: its signature must be GOOD with the trusted
   keys (UNSIGNED only for a package recorded as imported unsigned, and then it
   is still reported, kind ``unsigned``), and the SHA-256 of its header region
   must match the package id.  A header that fails is reported and its files
   are not checked: an untrusted header says nothing about them.
3. Every file each header lists, against the package directory, with rpm -V's
   rules (:func:`verifier.filecheck.check_file`), producing rpm -V's line.
   Device nodes and FIFOs are not stored (the importer leaves them in the
   header only), so they are not looked for.
4. Everything in a package directory that its header does not list (and that is
   not a parent directory of a listed path): an ``unowned`` line.

How it is fast:

- A pool of worker *processes* (``jobs``, default one per CPU; FACTS.md: two
  processes hash at twice the speed of one, threads do not).  One task per
  package, largest first; each worker checks the signature, the metadata and,
  for files whose extents are not shared, the digest.
- The verified-results cache (:mod:`usrview.vcache`): a file whose identity
  (device, inode, size, mtime, ctime) and algorithm are known is not read.
- The package cache (btrfs): a package whose subvolume generation, header file
  identity, keyring fingerprint and owner-name resolutions are those of a
  complete check less than an hour ago gets that check's findings without any
  file being looked at (docs/verify.md says why that is sound).  No pool is
  started when at most one package is left to check.
- Per file one lstat, compared in plain ints; unowned entries by scandir.
- Reflink dedupe: a file whose extents are all shared (:mod:`usrview.fiemap`)
  is not hashed by the worker; the parent groups such files by their physical
  extents and has one file of each group hashed.  Hard links (same inode) are
  hashed once too.

Workers are forked with the run's state (keyring, cache) in a module global:
nothing large is pickled.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import stat
import struct
import ctypes
import fcntl
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from verifier import sigcheck
from verifier.filecheck import FileResult, attribute_marker, check_file
from verifier.files import FileEntry, FileFlag, VerifyFlag, digest_name
from verifier.keyring import Keyring, Verdict

from . import fiemap, images, vcache
from .errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, OperationalError
from .store import HEADER_SUFFIX, UNSIGNED_DIR, Store, StoreError, pkgid_for

log = logging.getLogger(__name__)

#: Kinds of finding.  ``file``: an rpm -V line with flags; ``missing``; ``unowned``;
#: ``header``: a header file missing, altered or not trusted; ``unsigned``: a package
#: imported unsigned (flagged on every run); ``image``: the image record.
KINDS = ("file", "missing", "unowned", "header", "unsigned", "image")
#: Bytes per read while hashing.
HASH_CHUNK = 1 << 20
#: Files smaller than this are never reflinked by the importer (they sit inline in
#: btrfs metadata): not worth a FIEMAP call.
DEDUPE_MIN_SIZE = 4096
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SPECIAL = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


@dataclass
class Finding:
    """One discrepancy.

    Attributes:
        kind: one of KINDS.
        package: the package id (empty for the image record).
        path: the file's install path; for header/unsigned findings the header
            file, for image findings the record.
        line: what ``usrview verify`` prints for it (rpm -V's line for files).
        flags: the ``SM5DLUGTP`` column (file findings only).
        marker: the attribute marker (file, missing findings).
        expected, actual: the digests (``algo:hex``) for a 5, else other
            expected/actual values when they are one-dimensional (link target,
            size, header verdict).
        message: one line for humans (non-file findings; details of file ones).
    """

    kind: str
    package: str
    path: str
    line: str
    flags: str = ""
    marker: str = ""
    expected: str = ""
    actual: str = ""
    message: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Stats:
    """Counters of one run."""

    packages: int = 0
    files: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    cache_hits: int = 0
    deduped_files: int = 0
    cached_packages: int = 0


@dataclass
class Report:
    """The outcome of a run.

    Attributes:
        image: the image id checked ("" when the record could not be read).
        findings: in output order: the image record's, then per package its
            header's, its files' in header order, its unowned paths sorted.
        stats: counters.
        duration: seconds.
        errors: operational problems that are not findings (exit 2).
        cache_written: whether the cache was updated.
    """

    image: str = ""
    findings: list[Finding] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    duration: float = 0.0
    errors: list[str] = field(default_factory=list)
    cache_written: bool = False

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_ERROR
        return EXIT_FINDINGS if self.findings else EXIT_OK

    def by_kind(self) -> dict[str, int]:
        counts = Counter(f.kind for f in self.findings)
        return {k: counts.get(k, 0) for k in KINDS}

    def summary(self) -> dict:
        return {"summary": True, "image": self.image, "status": self.exit_code,
                "findings": len(self.findings), "by_kind": self.by_kind(),
                **dataclasses.asdict(self.stats), "duration": round(self.duration, 6),
                "errors": self.errors}


# -- the token bucket (the monitor's --io-limit) ------------------------------------

class TokenBucket:
    """At most ``rate`` bytes per second on average, bursts up to ``burst`` bytes."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic, sleep=time.sleep):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, HASH_CHUNK))
        self.tokens = self.burst
        self.clock, self.sleep = clock, sleep
        self.last = clock()

    def take(self, n: int) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)


def hash_fd(fd: int, algo: str, bucket: TokenBucket | None = None) -> tuple[str, int]:
    """(hex digest, bytes read) of the whole file behind ``fd``."""
    h = hashlib.new(algo)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = os.readv(fd, [buf])
        if n == 0:
            return h.hexdigest(), total
        if bucket is not None:
            bucket.take(n)
        h.update(view[:n])
        total += n


# -- work done in the worker processes ------------------------------------------------

@dataclass
class _RunState:
    """What every worker needs, inherited at fork time."""

    store_root: Path
    keyring: Keyring
    cache: dict
    path_filters: tuple[str, ...]
    io_rate: float | None


_STATE: _RunState | None = None
_BUCKET: TokenBucket | None = None


class _Names(dict):
    """Owner name -> id, looked up in the system databases once per run (filecheck
    calls ``get``; an unknown name stays None, as a failed getpwnam is there)."""

    def __init__(self, lookup):
        super().__init__()
        self.lookup = lookup

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            pass
        try:
            value = self.lookup(name)
        except KeyError:
            value = None
        self[name] = value
        return value


def _uid(name: str) -> int:
    import pwd
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp
    return grp.getgrnam(name).gr_gid


_USERS = _Names(_uid)
_GROUPS = _Names(_gid)


@dataclass
class _Deferred:
    """A file whose digest the parent decides (its extents are shared)."""

    index: int
    relpath: str
    ident: tuple
    extkey: tuple
    algo: str


@dataclass
class _PackageOutcome:
    pkgid: str
    header: list[Finding] = field(default_factory=list)
    #: entry index -> (FileResult without the digest verdict, expected, actual)
    results: dict[int, tuple[FileResult, str, str]] = field(default_factory=dict)
    deferred: list[_Deferred] = field(default_factory=list)
    unowned: list[str] = field(default_factory=list)
    matched: set[str] = field(default_factory=set)
    stats: Stats = field(default_factory=Stats)
    new_cache: list[tuple[tuple, str]] = field(default_factory=list)
    entries: list[FileEntry] = field(default_factory=list)
    #: files whose digest applied (for the counters of a later cached run)
    digest_files: int = 0


def _selected(path: str, filters: tuple[str, ...]) -> str | None:
    for f in filters:
        if path == f or path.startswith(f.rstrip("/") + "/"):
            return f
    return None


def _header_findings(store: Store, pkgid: str, unsigned: bool, keyring: Keyring):
    """(findings, package or None when its files must not be trusted)."""
    hpath = store.header_path(pkgid)
    try:
        check = sigcheck.check_file(hpath, keyring)
    except FileNotFoundError:
        return [Finding("header", pkgid, str(hpath), f"header    {pkgid}: header file missing",
                        message="header file missing")], None
    except OSError as e:
        return [Finding("header", pkgid, str(hpath), f"header    {pkgid}: unreadable ({e.strerror})",
                        message=f"header file unreadable: {e.strerror}")], None
    findings = []
    pkg = check.package
    trusted = check.verdict is Verdict.GOOD or (check.verdict is Verdict.UNSIGNED and unsigned)
    if check.verdict is Verdict.UNSIGNED and unsigned:
        findings.append(Finding("unsigned", pkgid, str(hpath),
                                f"unsigned  {pkgid}: imported unsigned (--allow-unsigned)",
                                expected="GOOD", actual="UNSIGNED",
                                message="package was imported without a signature"))
    elif check.verdict is not Verdict.GOOD:
        findings.append(Finding("header", pkgid, str(hpath), f"header    {pkgid}: {check.format()}",
                                expected="GOOD", actual=check.verdict.value, message=check.format()))
    if pkg is not None:
        try:
            real = pkgid_for(pkg)
        except StoreError:
            real = ""
        if real != pkgid:
            findings.append(Finding("header", pkgid, str(hpath),
                                    f"header    {pkgid}: header is {real or pkg.nevra!r}, not {pkgid}",
                                    expected=pkgid, actual=real,
                                    message="header file does not match its package id"))
            trusted = False
    if not trusted or pkg is None:
        return findings, None
    return findings, pkg


def _digest_applies(entry: FileEntry, st: os.stat_result) -> bool:
    return (stat.S_ISREG(st.st_mode) and not entry.is_ghost
            and bool(VerifyFlag(entry.verify_flags) & VerifyFlag.FILEDIGEST))


def _details(entry: FileEntry, st: os.stat_result | None, differs: VerifyFlag, dir_fd: int,
             relpath: str) -> tuple[str, str]:
    """expected/actual text for flags other than 5 (for the structured records)."""
    if st is None:
        return "", ""
    exp, act = [], []
    if differs & VerifyFlag.FILESIZE:
        exp.append(f"size={entry.size}")
        act.append(f"size={st.st_size}")
    if differs & VerifyFlag.MODE:
        exp.append(f"mode={entry.mode & 0xFFFF:o}")
        act.append(f"mode={st.st_mode:o}")
    if differs & VerifyFlag.LINKTO:
        exp.append(f"link={entry.linkto}")
        try:
            act.append(f"link={os.readlink(relpath, dir_fd=dir_fd)}")
        except OSError:
            act.append("link=?")
    if differs & VerifyFlag.USER:
        exp.append(f"user={entry.user}")
        act.append(f"uid={st.st_uid}")
    if differs & VerifyFlag.GROUP:
        exp.append(f"group={entry.group}")
        act.append(f"gid={st.st_gid}")
    if differs & VerifyFlag.MTIME:
        exp.append(f"mtime={entry.mtime}")
        act.append(f"mtime={st.st_mtime_ns // 1_000_000_000}")
    if differs & VerifyFlag.CAPS:
        exp.append(f"caps={entry.caps or '(none)'}")
        act.append("caps=(differs)")
    return " ".join(exp), " ".join(act)


def _check_package(pkgid: str, unsigned: bool, want_unowned: bool) -> _PackageOutcome:
    state = _STATE
    assert state is not None
    store = Store(state.store_root)
    out = _PackageOutcome(pkgid)
    out.header, pkg = _header_findings(store, pkgid, unsigned, state.keyring)
    if pkg is None:
        return out
    entries = pkg.files
    out.entries = entries
    try:
        dir_fd = os.open(store.package_dir(pkgid), _DIR_FLAGS)
    except OSError as e:
        dir_fd = None
        out.header.append(Finding("header", pkgid, str(store.package_dir(pkgid)),
                                  f"header    {pkgid}: package directory {os.strerror(e.errno)}",
                                  message=f"package directory: {os.strerror(e.errno)}"))
    local: dict[tuple, str] = {}   # (dev, ino) or extents key -> digest, within this package
    try:
        for i, entry in enumerate(entries):
            if entry.path == "/" or stat.S_IFMT(entry.mode) in _SPECIAL:
                continue
            if state.path_filters:
                hit = _selected(entry.path, state.path_filters)
                if hit is None:
                    continue
                out.matched.add(hit)
            out.stats.files += 1
            relpath = entry.path.lstrip("/")
            if dir_fd is None:
                out.results[i] = (FileResult(entry.path, attribute_marker(entry.flags), missing=True,
                                             quiet_missing=bool(entry.flags & (FileFlag.GHOST | FileFlag.MISSINGOK))),
                                  "", "")
                continue
            try:
                st = os.stat(relpath, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                st = None
            if st is None:
                res = check_file(dir_fd, relpath, entry, check_digest=False)
            else:
                res = check_file(dir_fd, relpath, entry, check_digest=False, st=st,
                                 users=_USERS, groups=_GROUPS)
                if res.missing:
                    st = None
            expected = actual = ""
            if st is not None and _digest_applies(entry, st):
                out.digest_files += 1
                res, expected, actual = _check_digest(out, local, dir_fd, relpath, entry, st, res, i)
            if res.differs & ~VerifyFlag.FILEDIGEST:
                e2, a2 = _details(entry, st, res.differs & ~VerifyFlag.FILEDIGEST, dir_fd, relpath)
                expected = " ".join(x for x in (expected, e2) if x)
                actual = " ".join(x for x in (actual, a2) if x)
            deferred = bool(out.deferred) and out.deferred[-1].index == i
            if not res.clean or deferred:
                out.results[i] = (res, expected, actual)
        if want_unowned and dir_fd is not None and not state.path_filters:
            out.unowned = _unowned(dir_fd, entries)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return out


def _check_digest(out: _PackageOutcome, local: dict, dir_fd: int, relpath: str, entry: FileEntry,
                  st: os.stat_result, res: FileResult, index: int):
    """Digest verdict for one regular file: cache, local dedupe, defer, or hash now."""
    state = _STATE
    algo = digest_name(entry.digest_algo)
    expected = f"{algo or entry.digest_algo}:{entry.digest}"
    if algo is None:
        return (dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST,
                                    unknown=res.unknown | VerifyFlag.FILEDIGEST), expected, "?")
    ident = vcache.identity(st, entry.digest_algo)
    digest = state.cache.get(ident)
    if digest is not None:
        out.stats.cache_hits += 1
    else:
        digest = local.get(("ino", ident))
        if digest is not None:
            out.stats.deduped_files += 1
    if digest is None:
        try:
            fd = os.open(relpath, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError:
            fd = None
        if fd is not None:
            try:
                fst = os.fstat(fd)
                if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                    raise OSError(errno.ESTALE, "replaced while checked")
                ident = vcache.identity(fst, entry.digest_algo)
                extkey = (fiemap.shared_extents_key(fd, fst.st_size)
                          if fst.st_size >= DEDUPE_MIN_SIZE else None)
                if extkey is not None:
                    key = ("ext", st.st_dev, extkey, algo)
                    digest = local.get(key)
                    if digest is None:
                        # the parent decides: another package may share these extents
                        out.deferred.append(_Deferred(index, relpath, ident, key, algo))
                        return res, expected, ""
                    out.stats.deduped_files += 1
                else:
                    digest, n = hash_fd(fd, algo, _BUCKET)
                    out.stats.hashed_files += 1
                    out.stats.hashed_bytes += n
                    # only a file unchanged while it was read is worth remembering
                    if vcache.identity(os.fstat(fd), entry.digest_algo) == ident:
                        out.new_cache.append((ident, digest))
                        local[("ino", ident)] = digest
            except OSError:
                digest = None
            finally:
                os.close(fd)
        if digest is None:
            return (dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST,
                                        unknown=res.unknown | VerifyFlag.FILEDIGEST), expected, "?")
    if digest != entry.digest.lower():
        res = dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST)
        return res, expected, f"{algo}:{digest}"
    return res, expected, ""


def _unowned(dir_fd: int, entries: list[FileEntry]) -> list[str]:
    listed = {e.path for e in entries}
    parents = set()
    for p in listed:
        while p not in ("/", ""):
            p = p.rsplit("/", 1)[0] or "/"
            if p in parents:
                break
            parents.add(p)
    found = []
    # os.scandir gives each entry's type from the directory itself (d_type): no stat per file
    stack = [("", os.dup(dir_fd))]
    while stack:
        base, fd = stack.pop()
        try:
            with os.scandir(fd) as it:
                for de in it:
                    path = f"{base}/{de.name}"
                    if path in listed or path in parents:
                        # an unowned directory is reported, not everything in it
                        if (path in parents or path in listed) and de.is_dir(follow_symlinks=False):
                            try:
                                stack.append((path, os.open(de.name, _DIR_FLAGS, dir_fd=fd)))
                            except OSError:
                                pass
                    else:
                        found.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return sorted(found)


def _hash_group(store_root: str, pkgid: str, relpath: str, ident: tuple, algo: str):
    """Hash one representative of a group of extent-sharing files.
    Returns (digest or None, bytes read, identity unchanged)."""
    try:
        dfd = os.open(Path(store_root) / "packages" / pkgid, _DIR_FLAGS)
    except OSError:
        return None, 0, False
    try:
        fd = os.open(relpath, _FILE_FLAGS, dir_fd=dfd)
    except OSError:
        return None, 0, False
    finally:
        os.close(dfd)
    try:
        if vcache.identity(os.fstat(fd), ident[5]) != ident:
            return None, 0, False
        digest, n = hash_fd(fd, algo, _BUCKET)
        return digest, n, vcache.identity(os.fstat(fd), ident[5]) == ident
    except OSError:
        return None, 0, False
    finally:
        os.close(fd)


def _worker_init() -> None:
    global _BUCKET
    # the parent decides when to stop: a worker must not run the parent's handlers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    state = _STATE
    if state is not None and state.io_rate:
        _BUCKET = TokenBucket(state.io_rate)


# -- the image record -------------------------------------------------------------------

def check_image(store: Store, ref: str) -> tuple[images.Image | None, list[Finding]]:
    """Read and check the image record ``ref``; (image or None when unreadable, findings)."""
    findings: list[Finding] = []

    def bad(path, message) -> None:
        findings.append(Finding("image", "", str(path), f"image     {Path(path).name}: {message}",
                                message=message))

    try:
        image = images.resolve(store, ref)
    except OperationalError as e:
        text = str(e)
        if "no image" in text or "has no" in text or "ambiguous" in text:
            raise
        bad(store.root / (ref if ref in (images.CURRENT, images.PREVIOUS) else f"images/{ref}"), text)
        return None, findings
    path = images.image_path(store, image.id)
    want = images.package_set_hash(image.packages)[:images.ID_HASH_DIGITS]
    if image.id.rsplit("-", 1)[-1] != want:
        bad(path, f"package list does not match the image id (hash {want}, id {image.id})")
    try:
        markers = set(os.listdir(store.root / UNSIGNED_DIR))
    except OSError:
        markers = set()
    for pkgid in image.packages:
        if not store.has(pkgid):
            bad(path, f"names {pkgid}, which is not in the store")
        elif (pkgid in image.unsigned) != (pkgid in markers):
            bad(path, f"{pkgid}: recorded {'unsigned' if pkgid in image.unsigned else 'signed'}, "
                      f"the store says {'unsigned' if pkgid in markers else 'signed'}")
    return image, findings


# -- the package cache ---------------------------------------------------------------
#
# A package whose subvolume, header file, keyring and owner names are unchanged
# since a run that checked it completely has the same findings: they are taken
# from the cache without touching its files (docs/verify.md, "The package cache").

#: struct btrfs_ioctl_get_subvol_info_args (linux/btrfs.h): treeid, name[256],
#: parent_id, dirid, generation, flags, uuid, parent_uuid, received_uuid,
#: ctransid, otransid, stransid, rtransid, 4 x btrfs_ioctl_timespec, reserved[8].
_SUBVOL_INFO = struct.Struct("=Q256sQQQQ16s16s16sQQQQ" + "QI4x" * 4 + "8Q")
#: BTRFS_IOC_GET_SUBVOL_INFO = _IOR(0x94, 60, args): unprivileged, kernel >= 4.18.
_IOC_GET_SUBVOL_INFO = (2 << 30) | (_SUBVOL_INFO.size << 16) | (0x94 << 8) | 60
#: The inode number of every btrfs subvolume's root directory.
_SUBVOL_ROOT_INO = 256
#: A cached package outcome older than this is checked again (signatures against
#: keys that may have expired meanwhile; the digests still come from the file cache).
PACKAGE_RECHECK_SECONDS = 3600
#: Bumped when what a package row means changes.
_PACKAGE_KEY_VERSION = "p1"


def _syncfs(fd: int) -> bool:
    """Commit the file system's pending changes (a btrfs subvolume's generation is
    updated at commit): True when that worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs(fd) == 0
    except (OSError, AttributeError):
        return False


def _subvolume_state(name: str | Path, dir_fd: int | None = None) -> str | None:
    """``uuid:treeid:generation`` of the btrfs subvolume whose root is ``name``
    (relative to ``dir_fd``); None when it is not one (or the ioctl fails)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino != _SUBVOL_ROOT_INO:
            return None
        buf = bytearray(_SUBVOL_INFO.size)
        fcntl.ioctl(fd, _IOC_GET_SUBVOL_INFO, buf)
        v = _SUBVOL_INFO.unpack(buf)
        return f"{v[6].hex()}:{v[0]}:{v[4]}"
    except OSError:
        return None
    finally:
        os.close(fd)


def keyring_fingerprint(keyring: Keyring) -> str:
    """A hash that changes when the trusted keys, their subkeys or revocations do."""
    h = hashlib.sha256()
    parts = []
    for cert in keyring.certificates:
        sigs = sorted(str(getattr(r, "created", r)) for r in cert.revocations)
        subs = sorted((sub.key.fingerprint_hex, len(sub.bindings),
                       tuple(sorted(str(getattr(r, "created", r)) for r in sub.revocations)))
                      for sub in cert.subkeys)
        parts.append(repr((cert.primary.fingerprint_hex, sigs, len(cert.direct_sigs), subs,
                           sorted(cert.rejected_hashes), len(cert.user_ids))))
    for part in sorted(parts):
        h.update(part.encode())
    return h.hexdigest()


def _package_key(dirs: tuple[int, int], pkgid: str, unsigned: bool, keyring_fp: str) -> str | None:
    """The package cache's key of ``pkgid``; ``dirs``: fds of the store's packages/ and headers/."""
    state = _subvolume_state(pkgid, dirs[0])
    if state is None:
        return None
    try:
        hst = os.stat(pkgid + HEADER_SUFFIX, dir_fd=dirs[1], follow_symlinks=False)
    except OSError:
        return None
    return json.dumps([_PACKAGE_KEY_VERSION, state, vcache.identity(hst, 0)[:5], keyring_fp, unsigned])


def _names_used(entries: list[FileEntry]) -> dict[str, int | None]:
    out = {}
    for e in entries:
        if e.user != "root":
            out["u:" + e.user] = _USERS.get(e.user)
        if e.group != "root":
            out["g:" + e.group] = _GROUPS.get(e.group)
    return out


def _names_unchanged(names: dict) -> bool:
    return all((_USERS if k[0] == "u" else _GROUPS).get(k[2:]) == v for k, v in names.items())


def _cacheable(out: _PackageOutcome) -> bool:
    """Only outcomes of the files themselves are remembered, not passing trouble
    (a file or header that could not be read)."""
    if any(r[0].unknown or r[0].error for r in out.results.values()):
        return False
    return not any("unreadable" in f.message or "package directory" in f.message for f in out.header)


def _outcome_json(out: _PackageOutcome) -> str:
    return json.dumps({"findings": [f.to_json() for f in _package_findings(out)],
                       "names": _names_used(out.entries), "files": out.stats.files,
                       "digests": out.digest_files})


# -- the run --------------------------------------------------------------------------

def _matches_package(pkgid: str, word: str) -> bool:
    nevra = pkgid.rsplit("-", 1)[0]
    name, version, release = nevra.rsplit("-", 2)
    nvra = f"{name}-{version.split(':', 1)[-1]}-{release}"  # name-E:V-R.A -> name-V-R.A
    return word in (pkgid, nevra, name, nvra)


class _InlinePool:
    """The executor interface, in this process: no pool to start when there is (almost)
    nothing to do."""

    def __enter__(self):
        global _BUCKET
        state = _STATE
        _BUCKET = TokenBucket(state.io_rate) if state is not None and state.io_rate else None
        return self

    def __exit__(self, *exc):
        global _BUCKET
        _BUCKET = None
        return False

    def submit(self, fn, *args):
        fut = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed over like a pool does
            fut.set_exception(e)
        return fut


def _package_cache_usable(store: Store) -> bool:
    """Commit pending changes so that subvolume generations are current (see
    _subvolume_state); False when that cannot be done."""
    try:
        fd = os.open(store.root / "packages", _DIR_FLAGS)
    except OSError:
        return False
    try:
        return _syncfs(fd)
    finally:
        os.close(fd)


def run(store: Store, keyring: Keyring, *, image_ref: str = images.CURRENT, filters: Sequence[str] = (),
        jobs: int | None = None, full: bool = False, io_limit: float | None = None,
        progress: Callable[[int, int, Stats], None] | None = None, use_cache: bool = True) -> Report:
    """Verify image ``image_ref`` of ``store``; see the module docstring.

    ``filters``: install paths (``/usr/bin/foo``: that file or what lies below)
    or packages (name, NEVRA, NVRA or package id).  ``full``: ignore the cache
    (and rewrite it from this run).  ``io_limit``: bytes per second read for
    hashing, shared by the workers.  Raises OperationalError when the image
    cannot be named at all.
    """
    global _STATE
    t0 = time.monotonic()
    report = Report()
    image, image_findings = check_image(store, image_ref)
    report.findings.extend(image_findings)
    if image is None:
        report.duration = time.monotonic() - t0
        return report
    report.image = image.id
    path_filters = tuple(f.rstrip("/") or "/" for f in filters if f.startswith("/"))
    pkg_filters = [f for f in filters if not f.startswith("/")]
    pkgids = [p for p in image.packages if store.has(p)]
    if pkg_filters:
        chosen = []
        for word in pkg_filters:
            hits = [p for p in pkgids if _matches_package(p, word)]
            if not hits:
                report.errors.append(f"package {word} is not in image {image.id}")
            chosen.extend(h for h in hits if h not in chosen)
        pkgids = chosen
        report.findings = [f for f in report.findings if not f.package or f.package in pkgids]
    cache_file = vcache.cache_path(store.root)
    _USERS.clear()
    _GROUPS.clear()
    unsigned = set(image.unsigned)
    stats = report.stats
    stats.packages = len(pkgids)
    # the package cache: only for whole packages, and never for --full
    pkg_keys: dict[str, str] = {}
    cached_findings: dict[str, list[Finding]] = {}
    packages_ok = use_cache and not path_filters and _package_cache_usable(store)
    if packages_ok:
        now = time.time()
        rows = {} if full else vcache.load_packages(cache_file)
        kfp = keyring_fingerprint(keyring)
        dirs = None
        try:
            pfd = os.open(store.root / "packages", _DIR_FLAGS)
            try:
                dirs = (pfd, os.open(store.header_path("x").parent, _DIR_FLAGS))
            except OSError:
                os.close(pfd)
        except OSError:
            pass
        try:
            for p in (pkgids if dirs else ()):
                key = _package_key(dirs, p, p in unsigned, kfp)
                if key is None:
                    continue
                pkg_keys[p] = key
                row = rows.get(p)
                if row is None or row[0] != key or not 0 <= now - row[1] < PACKAGE_RECHECK_SECONDS:
                    continue
                try:
                    data = json.loads(row[2])
                    if not _names_unchanged(data["names"]):
                        continue
                    cached_findings[p] = [Finding(**f) for f in data["findings"]]
                    stats.files += data["files"]
                    stats.cache_hits += data["digests"]
                    stats.cached_packages += 1
                except (ValueError, KeyError, TypeError):
                    continue
        finally:
            if dirs:
                os.close(dirs[0])
                os.close(dirs[1])
    todo = [p for p in pkgids if p not in cached_findings]
    cache = {} if (full or not use_cache or not todo) else vcache.load(cache_file)
    jobs = max(1, jobs or os.cpu_count() or 1)
    _STATE = _RunState(store.root, keyring, cache, path_filters,
                       io_limit / jobs if io_limit else None)
    # largest packages first: the pool ends evenly
    sizes = {}
    for p in todo:
        try:
            sizes[p] = os.stat(store.header_path(p)).st_size
        except OSError:
            sizes[p] = 0
    order = sorted(todo, key=lambda p: -sizes[p])
    outcomes: dict[str, _PackageOutcome] = {}
    new_cache: list = []
    try:
        if len(order) <= 1 or jobs == 1:
            pool = _InlinePool()
        else:
            ctx = multiprocessing.get_context("fork")
            pool = concurrent.futures.ProcessPoolExecutor(min(jobs, len(order)), mp_context=ctx,
                                                          initializer=_worker_init)
        with pool:
            futures = {pool.submit(_check_package, p, p in unsigned, True): p for p in order}
            for fut in concurrent.futures.as_completed(futures):
                out = fut.result()
                outcomes[out.pkgid] = out
                for k in ("files", "hashed_files", "hashed_bytes", "cache_hits", "deduped_files"):
                    setattr(stats, k, getattr(stats, k) + getattr(out.stats, k))
                if progress:
                    progress(len(outcomes) + len(cached_findings), len(pkgids), stats)
            new_cache = [row for o in outcomes.values() for row in o.new_cache]
            _resolve_deferred(pool, store, outcomes, stats, new_cache)
    finally:
        _STATE = None
    matched = set().union(*(o.matched for o in outcomes.values())) if outcomes else set()
    for f in path_filters:
        if f not in matched:
            report.errors.append(f"file {f} is not owned by any package of image {image.id}")
    package_rows = []
    checked = time.time()
    for pkgid in pkgids:
        if pkgid in cached_findings:
            report.findings.extend(cached_findings[pkgid])
            continue
        out = outcomes[pkgid]
        report.findings.extend(_package_findings(out))
        if pkgid in pkg_keys and _cacheable(out):
            package_rows.append((pkgid, pkg_keys[pkgid], checked, _outcome_json(out)))
    if use_cache:
        complete = not filters
        forget = [p for p in pkgids if p not in cached_findings and p not in {r[0] for r in package_rows}]
        report.cache_written = vcache.save(cache_file, new_cache, replace=full and complete,
                                           packages=package_rows if packages_ok else (),
                                           forget=forget)
    report.duration = time.monotonic() - t0
    return report


def _resolve_deferred(pool, store: Store, outcomes: dict[str, _PackageOutcome], stats: Stats,
                      new_cache: list) -> None:
    """Hash one file per group of extent-sharing files; give its digest to the group."""
    groups: dict[tuple, list[tuple[_PackageOutcome, _Deferred]]] = defaultdict(list)
    for out in outcomes.values():
        for d in out.deferred:
            groups[d.extkey].append((out, d))
    if not groups:
        return
    pending = {}
    for key, members in groups.items():
        out, d = members[0]
        pending[pool.submit(_hash_group, str(store.root), out.pkgid, d.relpath, d.ident, d.algo)] = key
    for fut in concurrent.futures.as_completed(pending):
        key = pending[fut]
        digest, n, stable = fut.result()
        members = groups[key]
        stats.hashed_files += 1
        stats.hashed_bytes += n
        if digest is None or not stable:
            # the representative changed under us: hash every member on its own
            results = [_hash_group(str(store.root), o.pkgid, d.relpath, d.ident, d.algo) for o, d in members]
            stats.hashed_files += len(members)
            stats.hashed_bytes += sum(r[1] for r in results)
        else:
            results = [(digest, 0, True)] * len(members)
            stats.deduped_files += len(members) - 1
        for (out, d), (dig, _n, ok) in zip(members, results):
            entry = out.entries[d.index]
            res, expected, _ = out.results[d.index]
            if dig is None:
                res = dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST,
                                          unknown=res.unknown | VerifyFlag.FILEDIGEST)
                actual = "?"
            else:
                if ok:
                    new_cache.append((d.ident, dig))
                actual = ""
                if dig != entry.digest.lower():
                    res = dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST)
                    actual = f"{d.algo}:{dig}"
            out.results[d.index] = (res, expected, actual)


def _package_findings(out: _PackageOutcome) -> list[Finding]:
    findings = list(out.header)
    for i in sorted(out.results):
        res, expected, actual = out.results[i]
        if res.clean:
            continue
        if res.missing:
            findings.append(Finding("missing", out.pkgid, res.path, res.format(), marker=res.marker,
                                    message=res.error or "missing"))
        else:
            if not res.differs & VerifyFlag.FILEDIGEST:
                # the digest matched (or was not checked): no digest to show
                expected = " ".join(w for w in expected.split() if "=" in w)
            findings.append(Finding("file", out.pkgid, res.path, res.format(), flags=res.flags,
                                    marker=res.marker, expected=expected, actual=actual))
    for path in out.unowned:
        findings.append(Finding("unowned", out.pkgid, path, f"unowned     {path}",
                                message="not listed in the package's header"))
    return findings


def format_text(f: Finding) -> str:
    return f.line


def write_json(report: Report, out) -> None:
    for f in report.findings:
        out.write(json.dumps(f.to_json()) + "\n")
    out.write(json.dumps(report.summary()) + "\n")
