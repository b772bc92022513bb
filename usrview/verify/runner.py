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

How it is fast (docs/verify.md, "How it is fast", has the measurements):

- ``jobs`` forked worker processes (default one per CPU; FACTS.md: two
  processes hash at twice the speed of one, threads do not) take packages from
  a shared counter, largest header first, so they finish together.  A worker
  checks a package's signature, the metadata of its files and, unless a file's
  extents are shared, its digest; it sends back only findings, counters and
  the package's digests as one packed blob -- never the file list.  No pool is
  started when at most one package is left to check.
- Per regular file: lstat, open, fstat, flistxattr and fgetxattr when it names
  the capabilities (P), reads into one buffer per process, close.  A file whose
  type, mode, owner, group, size and mtime all equal the header's needs none of
  rpm -V's case analysis
  (:func:`verifier.filecheck.metadata_matches`); any other file goes through
  :func:`verifier.filecheck.check_file`.
- Unowned entries: a walk of the real directories on the file loop's lstat
  results; on btrfs a directory whose size is that of the names expected in it
  (all found) holds nothing else and is not read (:func:`_unowned`).
- A cold page cache: a package's first read that would wait (RWF_NOWAIT) starts
  a read-ahead thread (:class:`_Prefetcher`) for the package's following files.
- The verified-results cache (:mod:`usrview.verify.vcache`, rows per package): a
  file whose identity (device, inode, size, mtime, ctime) and algorithm are
  known is not read.
- The package cache (btrfs): a package whose subvolume generation, header file
  identity, keyring fingerprint and owner-name resolutions are those of a
  complete check less than an hour ago gets that check's findings without any
  file being looked at (docs/verify.md says why that is sound).  The subvolumes'
  generations come from one search of btrfs's root tree
  (:func:`usrview.btrfs.child_subvolume_states`) after a syncfs that runs while
  the image and the cache rows are read.
- Reflink dedupe: a file of at least DEDUPE_MIN_SIZE bytes whose extents are
  all shared (:mod:`usrview.store.fiemap`) is not hashed by the worker; once every
  package is done, the parent groups such files by file system and physical
  extents and the workers hash one file of each group.  Hard links (same
  inode) are hashed once too.

Workers are forked with the run's state (keyring, cached digests) in a module
global: nothing large is pickled on the way in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import gc
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import stat
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from usrview import images
from usrview.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, OperationalError
from usrview.store import btrfs, fiemap
from usrview.store.store import (
    HEADER_SUFFIX,
    HEADERS_DIR,
    UNSIGNED_DIR,
    Store,
    StoreError,
    pkgid_for,
)
from usrview.verify import vcache
from verifier import sigcheck
from verifier.filecaps import XATTR_NAME as CAPS_XATTR
from verifier.filecaps import caps_differ
from verifier.filecheck import (
    FileResult,
    attribute_marker,
    check_file,
    expected_ids_and_mode,
    metadata_matches,
)
from verifier.files import FileEntry, FileFlag, VerifyFlag, digest_name
from verifier.keyring import Keyring, Verdict

log = logging.getLogger(__name__)

#: Kinds of finding.  ``file``: an rpm -V line with flags; ``missing``; ``unowned``;
#: ``header``: a header file missing, altered or not trusted; ``unsigned``: a package
#: imported unsigned (flagged on every run); ``image``: the image record.
KINDS = ("file", "missing", "unowned", "header", "unsigned", "image")
#: Bytes per read while hashing: the buffer stays in a core's L2 cache between the
#: copy out of the page cache and the hash (1 MiB was no faster).
HASH_CHUNK = 256 << 10
#: Smaller files are hashed without asking FIEMAP whether their extents are shared:
#: the ioctl costs about 15 us a file here, what hashing 30 KiB costs; from 64 KiB
#: on, hashing costs three times the ioctl or more (docs/verify.md).
DEDUPE_MIN_SIZE = 64 << 10
#: The token bucket's default burst is at least this (and so more than one read).
BUCKET_MIN_BURST = 1 << 20
#: How often the parent updates the progress line while workers run (seconds).
PROGRESS_INTERVAL = 0.1
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SPECIAL = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
# Plain ints for the per-file loop (IntFlag arithmetic costs microseconds).
_F_DIGEST = int(VerifyFlag.FILEDIGEST)
_F_CAPS = int(VerifyFlag.CAPS)
_GHOST = int(FileFlag.GHOST)
_QUIET_MISSING = int(FileFlag.GHOST | FileFlag.MISSINGOK)


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
    """At most ``rate`` bytes per second on average, bursts up to ``burst`` bytes.

    The bucket starts with :data:`BUCKET_MIN_BURST` bytes, not a full burst: a run
    reads at most that plus ``rate`` bytes a second from its start (a full bucket at
    the start let a 4 s run at 100 MB/s read 116 MB/s on average)."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic, sleep=time.sleep):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, BUCKET_MIN_BURST))
        self.tokens = min(self.burst, BUCKET_MIN_BURST)
        self.clock, self.sleep = clock, sleep
        self.last = clock()

    def take(self, n: int) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)


def hash_fd(fd: int, algo: str, bucket: TokenBucket | None = None, buf: bytearray | None = None,
            size: int | None = None, on_cold: Callable[[], None] | None = None) -> tuple[str, int]:
    """(hex digest, bytes read) of the whole file behind ``fd`` (from its start), read to
    its end.

    ``buf``: a buffer to read into (reused by the caller), else a new one.  ``size``:
    the file's size as fstat gave it; a short read that completes it is taken as the
    end (one read for a small file, not two).  ``on_cold``: called when the file's
    first bytes are not in the page cache (the first read does not wait for the disk:
    RWF_NOWAIT), before reading them anyway.
    """
    h = _hasher(algo)()
    if buf is None:
        buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    whole = len(buf)
    total = 0
    n = -1
    if on_cold is not None:
        try:
            n = os.preadv(fd, [buf], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            on_cold()
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
    while True:
        if n < 0:
            n = os.preadv(fd, [buf], total)
        if n == 0:
            return h.hexdigest(), total
        if bucket is not None:
            bucket.take(n)
        h.update(buf if n == whole else view[:n])
        total += n
        if n < whole and total == size:
            return h.hexdigest(), total
        n = -1


_HASHERS: dict[str, Callable] = {}


def _hasher(algo: str) -> Callable:
    """The hashlib constructor of ``algo`` (the named ones are faster than hashlib.new)."""
    try:
        return _HASHERS[algo]
    except KeyError:
        named = getattr(hashlib, algo, None) if algo in hashlib.algorithms_guaranteed else None
        return _HASHERS.setdefault(algo, named or functools.partial(hashlib.new, algo))


# -- work done in the worker processes ------------------------------------------------

@dataclass
class _RunState:
    """What every worker needs, inherited at fork time.

    Attributes:
        digests: pkgid -> the cache's digest blob of that package (vcache).
        buf: the buffer hashing reads into, one per process (a worker writes its own
            copy): not 256 KiB allocated and zeroed per package.
    """

    store: Store
    keyring: Keyring
    digests: dict[str, bytes]
    path_filters: tuple[str, ...]
    io_rate: float | None
    buf: bytearray = field(default_factory=lambda: bytearray(HASH_CHUNK))


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
    """A file whose digest the parent decides (its extents are shared).

    Attributes:
        index: the entry's index in the header.
        ident: its identity (vcache.identity) when it was checked.
        extkey: (file system, extents key, algo): equal for files holding the same bytes.
        want: the header's digest.
    """

    index: int
    relpath: str
    ident: tuple
    extkey: tuple
    algo: str
    want: str


@dataclass
class _PackageOutcome:
    """What a worker sends back for one package.

    Attributes:
        header: the header's findings.
        results: entry index -> (FileResult, expected, actual) of the files that
            are not clean, and of the deferred ones (their digest verdict pending).
        digests: the vcache blob of the digests known good in this run.
        names: owner names used -> the ids they resolved to (for the package cache).
        digest_files: files whose digest applied (for the counters of a cached run).
    """

    pkgid: str
    header: list[Finding] = field(default_factory=list)
    results: dict[int, tuple[FileResult, str, str]] = field(default_factory=dict)
    deferred: list[_Deferred] = field(default_factory=list)
    unowned: list[str] = field(default_factory=list)
    matched: set[str] = field(default_factory=set)
    stats: Stats = field(default_factory=Stats)
    digests: bytes = b""
    names: dict[str, int | None] = field(default_factory=dict)
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


def _digest_applies(entry: FileEntry, st: os.stat_result) -> bool:
    return (stat.S_ISREG(st.st_mode) and not int(entry.flags) & _GHOST
            and bool(int(entry.verify_flags) & _F_DIGEST))


class _DeferredMark:
    """The digest of a deferred file: decided by the parent."""


_DEFERRED = _DeferredMark()


class _Prefetcher(threading.Thread):
    """Reads ahead of a worker whose files are not in memory: lstat, and for a regular
    file open and POSIX_FADV_WILLNEED, in header order, so that the disk always has
    requests queued (and the metadata is read) while the worker waits for one file or
    hashes it.  Only regular files are opened, as the worker opens them."""

    def __init__(self, dir_fd: int, relpaths: list[str]):
        super().__init__(name="verify-prefetch", daemon=True)
        self.dir_fd = dir_fd
        self.relpaths = relpaths
        self.stopped = False

    def run(self) -> None:
        for relpath in self.relpaths:
            if self.stopped:
                return
            try:
                if not stat.S_ISREG(os.stat(relpath, dir_fd=self.dir_fd, follow_symlinks=False).st_mode):
                    continue
                fd = os.open(relpath, _FILE_FLAGS, dir_fd=self.dir_fd)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def stop(self) -> None:
        self.stopped = True
        self.join()


class _PackageCheck:
    """The per-package state of the file loop: cached digests, digests found, dedupe,
    read-ahead."""

    def __init__(self, out: _PackageOutcome, dir_fd: int, known: dict, entries: list[FileEntry],
                 buf: bytearray):
        self.out = out
        self.stats = out.stats
        self.dir_fd = dir_fd
        self.known = known         # identity -> digest, from the cache
        self.local: dict = {}      # identity -> digest hashed in this package (hard links)
        self.records: list = []    # (identity, digest) for the cache
        self.buf = buf
        self.fsid: tuple | None = None
        self.entries = entries
        self.prefetcher: _Prefetcher | None = None
        self.index = 0             # the entry being hashed (the read-ahead starts after it)
        # no read-ahead under an I/O limit: it would read past the limit.  A flag, not the
        # bound method kept here: that made a reference cycle, so every package's entries
        # waited for the garbage collector, whose passes over them took 9 % of the CPU time
        # of a run with cached digests.
        self.probe = _BUCKET is None

    def read_ahead(self) -> None:
        """Start the read-ahead of the package's files after the one being hashed."""
        self.probe = False
        self.prefetcher = _Prefetcher(self.dir_fd, [e.path.lstrip("/") for e in self.entries[self.index + 1:]
                                                    if stat.S_IFMT(e.mode) not in _SPECIAL])
        self.prefetcher.start()

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.stop()

    def digest(self, fd: int, fst: os.stat_result, entry: FileEntry, algo: str, relpath: str,
               index: int):
        """The hex digest of the open regular file ``fd`` (``fst``: its fstat): from the cache,
        a hard link, or by hashing it; _DEFERRED when its extents are shared; None when
        reading failed."""
        size = fst.st_size
        ident = (fst.st_dev, fst.st_ino, size, fst.st_mtime_ns, fst.st_ctime_ns, entry.digest_algo)
        digest = self.known.get(ident)
        if digest is not None:
            self.stats.cache_hits += 1
            self.records.append((ident, digest))
            return digest
        digest = self.local.get(ident)
        if digest is not None:
            self.stats.deduped_files += 1
            return digest
        try:
            if size >= DEDUPE_MIN_SIZE:
                extkey = fiemap.shared_extents_key(fd, size)
                if extkey is not None:
                    if self.fsid is None:
                        self.fsid = fiemap.filesystem_id(self.dir_fd)
                    self.out.deferred.append(_Deferred(index, relpath, ident, (self.fsid, extkey, algo), algo,
                                                       entry.digest.lower()))
                    return _DEFERRED
            self.index = index
            digest, n = hash_fd(fd, algo, _BUCKET, self.buf, size, self.read_ahead if self.probe else None)
            self.stats.hashed_files += 1
            self.stats.hashed_bytes += n
            # Remembered under the identity the file had before it was read: should it
            # change while read, its ctime changes (or it is another inode), so this
            # record is never looked up again (docs/verify.md).
            self.records.append((ident, digest))
            self.local[ident] = digest
            return digest
        except OSError:
            return None

    def regular(self, relpath: str, entry: FileEntry, st: os.stat_result, algo: str, index: int,
                caps: bool):
        """The digest (and with ``caps``, the capabilities) of the regular file lstat saw
        (``st``): (differs bits, digest or _DEFERRED or None), or None when the file cannot
        be opened or is not the one lstat saw (replaced meanwhile)."""
        try:
            fd = os.open(relpath, _FILE_FLAGS, dir_fd=self.dir_fd)
        except OSError:
            return None
        try:
            fst = os.fstat(fd)
            if fst.st_ino != st.st_ino or fst.st_dev != st.st_dev or not stat.S_ISREG(fst.st_mode):
                return None
            differs = 0
            if caps:
                try:
                    # listed first: most files have no attribute, and getxattr's "no such
                    # attribute" costs Python an exception (about 1 µs a file)
                    value = os.getxattr(fd, CAPS_XATTR) if CAPS_XATTR in os.listxattr(fd) else None
                except OSError:
                    value = None
                if (value is not None or entry.caps) and caps_differ(entry.caps, value):
                    differs = _F_CAPS
            return differs, self.digest(fd, fst, entry, algo, relpath, index)
        except OSError:   # fstat failed
            return None
        finally:
            os.close(fd)


def _check_package(pkgid: str, unsigned: bool) -> _PackageOutcome:
    """Check one package: its header, then each file it lists, then what it does not list."""
    state = _STATE
    assert state is not None
    store = state.store
    out = _PackageOutcome(pkgid)
    out.header, pkg = _header_findings(store, pkgid, unsigned, state.keyring)
    if pkg is None:
        return out
    entries = pkg.files
    out.names = _names_used(entries)
    filters = state.path_filters
    try:
        dir_fd = os.open(store.package_dir(pkgid), _DIR_FLAGS)
    except OSError as e:
        out.header.append(Finding("header", pkgid, str(store.package_dir(pkgid)),
                                  f"header    {pkgid}: package directory {os.strerror(e.errno)}",
                                  message=f"package directory: {os.strerror(e.errno)}"))
        for i, entry in enumerate(entries):
            if entry.path == "/" or stat.S_IFMT(entry.mode) in _SPECIAL:
                continue
            if filters:
                hit = _selected(entry.path, filters)
                if hit is None:
                    continue
                out.matched.add(hit)
            out.stats.files += 1
            out.results[i] = (FileResult(entry.path, attribute_marker(entry.flags), missing=True,
                                         quiet_missing=bool(int(entry.flags) & _QUIET_MISSING)), "", "")
        return out
    blob = state.digests.get(pkgid)
    check = _PackageCheck(out, dir_fd, vcache.unpack_digests(blob) if blob else {}, entries, state.buf)
    results = out.results
    users, groups = _USERS, _GROUPS
    algo_id, algo = None, None   # the header's FILEDIGESTALGO, its hashlib name
    expect: dict[tuple, tuple[int, int, int]] = {}   # (user, group, mode) -> expected_ids_and_mode
    lstats: dict[str, os.stat_result | None] = {}   # for _unowned
    files = digest_files = 0
    lstat, regular = os.stat, check.regular
    try:
        for i, entry in enumerate(entries):
            path = entry.path
            if path == "/" or entry.mode & 0o170000 in _SPECIAL:
                continue
            if filters:
                hit = _selected(path, filters)
                if hit is None:
                    continue
                out.matched.add(hit)
            files += 1
            relpath = path.lstrip("/")
            try:
                st = lstat(relpath, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                st = None
            lstats[path] = st
            if entry.digest_algo != algo_id:
                algo_id = entry.digest_algo
                algo = digest_name(algo_id)
            if st is not None:
                owner = (entry.user, entry.group, entry.mode)
                expected = expect.get(owner)
                if expected is None:
                    expected = expect[owner] = expected_ids_and_mode(entry, users, groups)
                uid, gid, mode = expected
                if metadata_matches(entry, st, uid, gid, mode):
                    if stat.S_ISDIR(mode):
                        continue
                    # a regular file (metadata_matches accepts no other type but directories)
                    vflags = int(entry.verify_flags)
                    if algo is not None and vflags & _F_DIGEST and not int(entry.flags) & _GHOST:
                        fast = regular(relpath, entry, st, algo, i, vflags & _F_CAPS)
                        if fast is not None:
                            digest_files += 1
                            differs, digest = fast
                            if differs or digest != entry.digest:
                                _record(out, i, entry, st, algo, differs, digest, dir_fd, relpath)
                            continue
            # anything else: rpm -V's whole case analysis
            if st is None:
                res = check_file(dir_fd, relpath, entry, check_digest=False)
            else:
                res = check_file(dir_fd, relpath, entry, check_digest=False, st=st, users=users, groups=groups)
            if res.missing or st is None:
                if not res.clean:
                    results[i] = (res, "", "")
                continue
            if _digest_applies(entry, st):
                digest_files += 1
                # check_file compared the capabilities
                fast = None if algo is None else regular(relpath, entry, st, algo, i, False)
                digest = None if fast is None else fast[1]
                _record(out, i, entry, st, algo, int(res.differs), digest, dir_fd, relpath, res)
            elif not res.clean:
                e2, a2 = _details(entry, st, res.differs, dir_fd, relpath)
                results[i] = (res, e2, a2)
        if not filters:
            out.unowned = _unowned(dir_fd, entries, lstats, fiemap.filesystem_id(dir_fd)[0] == "btrfs")
    finally:
        check.close()
        os.close(dir_fd)
    out.stats.files += files
    out.digest_files = digest_files
    out.digests = vcache.pack_digests(check.records)
    return out


def _record(out: _PackageOutcome, index: int, entry: FileEntry, st: os.stat_result, algo: str | None,
            differs: int, digest, dir_fd: int, relpath: str, res: FileResult | None = None) -> None:
    """Put a regular file's verdict into ``out.results`` unless it is clean: ``differs``
    without the digest's verdict, ``digest`` as _PackageCheck.digest gives it, ``res``
    check_file's result when it was called."""
    actual = ""
    unknown = 0
    if digest is _DEFERRED:
        pass
    elif digest is None:
        differs |= _F_DIGEST
        unknown = _F_DIGEST
        actual = "?"
    elif digest != entry.digest.lower():
        differs |= _F_DIGEST
        actual = f"{algo}:{digest}"
    if not differs and digest is not _DEFERRED:
        return
    expected = f"{algo or entry.digest_algo}:{entry.digest}"
    if res is None:
        res = FileResult(entry.path, attribute_marker(entry.flags))
    res = dataclasses.replace(res, differs=VerifyFlag(differs), unknown=res.unknown | VerifyFlag(unknown))
    other = VerifyFlag(differs & ~_F_DIGEST)
    if other:
        e2, a2 = _details(entry, st, other, dir_fd, relpath)
        expected = f"{expected} {e2}" if e2 else expected
        actual = " ".join(x for x in (actual, a2) if x)
    out.results[index] = (res, expected, actual)


#: On btrfs a directory's size is twice the total length of its entries' names
#: (btrfs_add_link and btrfs_unlink_inode keep it so; no system call sets it).
BTRFS_DIR_SIZE_PER_NAME_BYTE = 2


def _unowned(dir_fd: int, entries: list[FileEntry], lstats: dict[str, os.stat_result | None],
             btrfs: bool) -> list[str]:
    """The paths in the package directory ``dir_fd`` that ``entries`` do not list and that
    are no parent of a listed path (an unowned directory is reported, not its contents).

    ``lstats``: install path -> its lstat (None: not found), for the paths the file
    loop looked at; the others are looked up here.  The walk goes down real
    directories only (lstat, never through a symlink), from the package's root.
    ``btrfs``: the package directory is on btrfs, where a directory's size is twice
    the length of its entries' names: a directory in which every expected entry
    was found and whose size is that of their names holds nothing else (a name
    more would add its length), and is not read.  Every other directory is listed.
    """
    children: dict[str, list[str]] = {"": []}   # every expected path -> those expected in it
    for e in entries:
        p = e.path
        if p in children or p[:1] != "/" or p == "/":
            continue
        children[p] = []
        while True:
            parent = p[:p.rfind("/")]
            siblings = children.get(parent)
            if siblings is not None:
                siblings.append(p)
                break
            children[parent] = [p]
            p = parent

    def lstat(path: str) -> os.stat_result | None:
        if path in lstats:
            return lstats[path]
        try:
            return os.stat(path[1:], dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None

    found = []
    root = os.fstat(dir_fd)
    stack = [("", root)]
    while stack:
        base, st = stack.pop()
        paths = children[base]
        if btrfs and st.st_dev == root.st_dev:
            try:   # usually the file loop looked at all of them
                sts = list(map(lstats.__getitem__, paths))
            except KeyError:
                sts = [lstat(p) for p in paths]
            if None not in sts and st.st_size == BTRFS_DIR_SIZE_PER_NAME_BYTE * _name_bytes(base, paths):
                for p, s in zip(paths, sts):
                    if stat.S_ISDIR(s.st_mode):
                        stack.append((p, s))
                continue
        try:
            fd = os.open(base[1:] or ".", _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            # os.scandir gives each entry's type from the directory itself (d_type): no stat
            with os.scandir(fd) as it:
                for de in it:
                    path = f"{base}/{de.name}"
                    if path not in children:
                        found.append(path)
                    elif de.is_dir(follow_symlinks=False):
                        sub = lstat(path)
                        if sub is not None and stat.S_ISDIR(sub.st_mode):
                            stack.append((path, sub))
        except OSError:
            pass
        finally:
            os.close(fd)
    return sorted(found)


def _name_bytes(base: str, paths: list[str]) -> int:
    """The total length in bytes of the last components of ``paths`` (all in directory
    ``base``); -1 when one may be "." or "..", which lstat finds but no directory holds
    (each path starts with "/": a name "." or ".." is followed by one, or ends them all)."""
    joined = "".join(paths)
    if "/./" in joined or "/../" in joined or joined.endswith(("/.", "/..")):
        return -1
    return len(joined if joined.isascii() else os.fsencode(joined)) - len(paths) * (len(base) + 1)


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


class _WorkerFailed:
    """A worker's exception, as text (sent instead of its results)."""

    def __init__(self, text: str):
        self.text = text


def _worker_main(conn, index: int, tasks: list, counter, progress) -> None:
    """A worker's life: packages from the shared counter until none is left, their
    outcomes to the parent; then the group representatives the parent sends, their
    digests back.  Never returns (os._exit)."""
    global _BUCKET
    code = 1
    try:
        # the parent decides when to stop: a worker must not run the parent's handlers
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # what was inherited stays put: no collection walks it (nor copies its pages)
        gc.freeze()
        state = _STATE
        if state is not None and state.io_rate:
            _BUCKET = TokenBucket(state.io_rate)
        outcomes = []
        while True:
            with counter.get_lock():
                i = counter.value
                counter.value = i + 1
            if i >= len(tasks):
                break
            out = _check_package(*tasks[i])
            outcomes.append(out)
            progress[3 * index] += 1
            progress[3 * index + 1] += out.stats.files
            progress[3 * index + 2] += out.stats.hashed_bytes
        conn.send(outcomes)
        groups = conn.recv()
        if groups is not None:
            conn.send([(key, _hash_group(*job)) for key, job in groups])
        code = 0
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        with contextlib.suppress(BaseException):   # else the parent sees the pipe close
            conn.send(_WorkerFailed(traceback.format_exc()))
    finally:
        os._exit(code)


class _Workers:
    """``n`` forked worker processes (see _worker_main) and the parent's side of them."""

    def __init__(self, n: int, tasks: list):
        ctx = multiprocessing.get_context("fork")
        self.counter = ctx.Value("q", 0)
        self.progress = ctx.RawArray("q", 3 * n)
        self.procs: list = []
        self.conns: list = []
        try:
            for k in range(n):
                mine, theirs = ctx.Pipe()
                p = ctx.Process(target=_worker_main, args=(theirs, k, tasks, self.counter, self.progress),
                                daemon=True)
                p.start()
                theirs.close()
                self.procs.append(p)
                self.conns.append(mine)
        except BaseException:
            self.close(kill=True)
            raise

    def _gather(self, tick: Callable[[], None] | None = None) -> list:
        """One message from every worker, in worker order."""
        got: dict[int, object] = {}
        pending = {c: k for k, c in enumerate(self.conns)}
        while pending:
            ready = multiprocessing.connection.wait(list(pending), PROGRESS_INTERVAL if tick else None)
            if tick:
                tick()
            for c in ready:
                k = pending.pop(c)
                try:
                    msg = c.recv()
                except EOFError:
                    self.procs[k].join(1)
                    raise OperationalError(f"verify worker {self.procs[k].pid} died "
                                           f"(exit status {self.procs[k].exitcode})") from None
                if isinstance(msg, _WorkerFailed):
                    raise RuntimeError(  # noqa: TRY004 - a worker's bug, not a type error
                        f"verify worker {self.procs[k].pid} failed:\n{msg.text}")
                got[k] = msg
        return [got[k] for k in range(len(self.conns))]

    def packages(self, tick: Callable[[int, int, int], None] | None = None) -> list[_PackageOutcome]:
        """Every package's outcome (phase 1).  ``tick(packages, files, bytes)`` is called
        with the counts so far, every PROGRESS_INTERVAL."""
        def counts():
            p = self.progress
            tick(sum(p[0::3]), sum(p[1::3]), sum(p[2::3]))
        return [out for outs in self._gather(counts if tick else None) for out in outs]

    def hash_groups(self, jobs: list[list]) -> list:
        """Phase 2: worker k hashes jobs[k] (a list of (key, _hash_group arguments))."""
        for c, mine in zip(self.conns, jobs):
            c.send(mine)
        return [r for rs in self._gather() for r in rs]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(kill=exc_type is not None)

    def close(self, kill: bool = False) -> None:
        if kill:
            for p in self.procs:
                p.kill()
        for c in self.conns:
            try:
                c.send(None)   # no phase 2 (ignored after it)
            except OSError:
                pass
            c.close()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def _split(jobs: list[tuple[int, object]], n: int) -> list[list]:
    """``n`` lists of (size, job) pairs' jobs, balanced by size (largest first, each to
    the least loaded list)."""
    bins: list[list] = [[] for _ in range(n)]
    load = [0] * n
    for size, job in sorted(jobs, key=lambda j: -j[0]):
        k = load.index(min(load))
        bins[k].append(job)
        load[k] += size
    return bins


# -- the image record -------------------------------------------------------------------

def check_image(store: Store, ref: str) -> tuple[images.Image | None, list[Finding], list[str]]:
    """Read and check the image record ``ref``: (image or None when unreadable, findings,
    the image's packages that are in the store)."""
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
        return None, findings, []
    path = images.image_path(store, image.id)
    want = images.package_set_hash(image.packages)[:images.ID_HASH_DIGITS]
    if image.id.rsplit("-", 1)[-1] != want:
        bad(path, f"package list does not match the image id (hash {want}, id {image.id})")
    try:
        markers = set(os.listdir(store.root / UNSIGNED_DIR))
    except OSError:
        markers = set()
    in_store = _stored(store, image.packages)
    stored = set(in_store)
    for pkgid in image.packages:
        if pkgid not in stored:
            bad(path, f"names {pkgid}, which is not in the store")
        elif (pkgid in image.unsigned) != (pkgid in markers):
            bad(path, f"{pkgid}: recorded {'unsigned' if pkgid in image.unsigned else 'signed'}, "
                      f"the store says {'unsigned' if pkgid in markers else 'signed'}")
    return image, findings, in_store


# -- the package cache ---------------------------------------------------------------
#
# A package whose subvolume, header file, keyring and owner names are unchanged
# since a run that checked it completely has the same findings: they are taken
# from the cache without touching its files (docs/verify.md, "The package cache").

#: A cached package outcome older than this is checked again (signatures against
#: keys that may have expired meanwhile; the digests still come from the file cache).
PACKAGE_RECHECK_SECONDS = 3600
#: Bumped when what a package row means changes.
_PACKAGE_KEY_VERSION = "p2"


def _syncfs(fd: int) -> bool:
    """Commit the file system's pending changes (a btrfs subvolume's generation is
    updated at commit): True when that worked."""
    try:
        btrfs.syncfs(fd)
    except OSError:
        return False
    return True


def _subvolume_states(pfd: int, pkgids: Sequence[str]) -> dict[str, str]:
    """pkgid -> ``uuid:treeid:generation`` of each package subvolume in the packages
    directory ``pfd`` (absent: not a subvolume): from one search of btrfs's root
    tree where that is allowed (root), else one ioctl per package."""
    try:
        return btrfs.child_subvolume_states(pfd)
    except OSError:   # EPERM without CAP_SYS_ADMIN; ENOTTY off btrfs
        pass
    out = {}
    for p in pkgids:
        state = btrfs.subvolume_state(p, pfd)
        if state is not None:
            out[p] = state
    return out


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


def _header_identity(hfd: int, pkgid: str) -> tuple | None:
    """The identity (vcache.identity, without the algorithm) of ``pkgid``'s header file;
    ``hfd``: the store's headers/ directory."""
    try:
        return vcache.identity(os.stat(pkgid + HEADER_SUFFIX, dir_fd=hfd, follow_symlinks=False), 0)[:5]
    except OSError:
        return None


def _package_key(state: str | None, header: tuple | None, unsigned: bool, keyring_fp: str) -> str | None:
    """The package cache's key of a package: its subvolume's state, its header file's
    identity, the keyring and whether it was imported unsigned."""
    if state is None or header is None:
        return None
    return f"{_PACKAGE_KEY_VERSION} {state} {header} {keyring_fp} {unsigned}"


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


def _outcome_json(out: _PackageOutcome, findings: list[Finding]) -> str:
    return json.dumps({"findings": [f.to_json() for f in findings], "names": out.names,
                       "files": out.stats.files, "digests": out.digest_files})


# -- the run --------------------------------------------------------------------------


# -- the run --------------------------------------------------------------------------

def _matches_package(pkgid: str, word: str) -> bool:
    nevra = pkgid.rsplit("-", 1)[0]
    name, version, release = nevra.rsplit("-", 2)
    nvra = f"{name}-{version.split(':', 1)[-1]}-{release}"  # name-E:V-R.A -> name-V-R.A
    return word in (pkgid, nevra, name, nvra)


class _Commit(threading.Thread):
    """Commits pending changes so that subvolume generations are current (see
    _subvolume_state), in the background while the run reads the image; ``ok``:
    whether that worked (else the package cache is not used)."""

    def __init__(self, store: Store):
        super().__init__(name="verify-syncfs", daemon=True)
        self.root = store.root
        self.ok = False
        self.start()

    def run(self) -> None:
        try:
            fd = os.open(self.root / "packages", _DIR_FLAGS)
        except OSError:
            return
        try:
            self.ok = _syncfs(fd)
        finally:
            os.close(fd)

    def wait(self) -> bool:
        self.join()
        return self.ok


def _stored(store: Store, pkgids: Sequence[str]) -> list[str]:
    """The ``pkgids`` that are in the store (as Store.has says, with one directory read)."""
    try:
        with os.scandir(store.root / HEADERS_DIR) as it:
            names = {de.name[:-len(HEADER_SUFFIX)] for de in it
                     if de.name.endswith(HEADER_SUFFIX) and not de.name.startswith(".") and de.is_file()}
    except OSError:
        names = set()
    return [p for p in pkgids if p in names]


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
    global _STATE, _BUCKET
    t0 = time.monotonic()
    report = Report()
    path_filters = tuple(f.rstrip("/") or "/" for f in filters if f.startswith("/"))
    # the package cache: only for whole packages, and never for --full
    commit = _Commit(store) if use_cache and not path_filters else None
    pkg_keys: dict[str, str] = {}
    cached_findings: dict[str, list[Finding]] = {}
    try:
        image, image_findings, pkgids = check_image(store, image_ref)
        report.findings.extend(image_findings)
        if image is None:
            report.duration = time.monotonic() - t0
            return report
        report.image = image.id
        pkg_filters = [f for f in filters if not f.startswith("/")]
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
        # while the commit runs: what the package cache needs that does not depend on it
        pkg_rows = _package_rows(store, pkgids, {} if full else vcache.load_packages(cache_file)) \
            if commit is not None else None
    finally:
        packages_ok = commit is not None and commit.wait()
    if packages_ok and pkg_rows is not None:
        _cached_packages(store, keyring, pkgids, unsigned, pkg_rows, pkg_keys, cached_findings, stats)
    todo = [p for p in pkgids if p not in cached_findings]
    digests = vcache.load_digests(cache_file, todo) if use_cache and not full and todo else {}
    # largest packages first (by header size: about their number of files), so that
    # the workers finish together
    sizes = {}
    for p in todo:
        try:
            sizes[p] = os.stat(store.header_path(p)).st_size
        except OSError:
            sizes[p] = 0
    tasks = [(p, p in unsigned) for p in sorted(todo, key=lambda p: -sizes[p])]
    n = min(max(1, jobs or os.cpu_count() or 1), len(tasks))
    _STATE = _RunState(store, keyring, digests, path_filters, io_limit / max(n, 1) if io_limit else None)
    done_before = len(cached_findings)
    files_before = stats.files

    def tick(packages: int, files: int, hashed: int) -> None:
        progress(done_before + packages, len(pkgids),
                 dataclasses.replace(stats, files=files_before + files, hashed_bytes=hashed))

    try:
        if n <= 1:
            _BUCKET = TokenBucket(io_limit) if io_limit else None
            outcomes = []
            for task in tasks:
                outcomes.append(_check_package(*task))
                if progress:
                    tick(len(outcomes), sum(o.stats.files for o in outcomes),
                         sum(o.stats.hashed_bytes for o in outcomes))
            _resolve_deferred(store, outcomes, stats,
                              lambda jobs: [(key, _hash_group(*args)) for _size, (key, args) in jobs])
        else:
            with _Workers(n, tasks) as workers:
                outcomes = workers.packages(tick if progress else None)
                _resolve_deferred(store, outcomes, stats, lambda jobs: workers.hash_groups(_split(jobs, n)))
    finally:
        _STATE = None
        _BUCKET = None
    by_id = {out.pkgid: out for out in outcomes}
    for out in outcomes:
        for k in ("files", "hashed_files", "hashed_bytes", "cache_hits", "deduped_files"):
            setattr(stats, k, getattr(stats, k) + getattr(out.stats, k))
    matched = set().union(*(o.matched for o in outcomes))
    for f in path_filters:
        if f not in matched:
            report.errors.append(f"file {f} is not owned by any package of image {image.id}")
    rows = []
    checked = time.time()
    for pkgid in pkgids:
        if pkgid in cached_findings:
            report.findings.extend(cached_findings[pkgid])
            continue
        out = by_id[pkgid]
        findings = _package_findings(out)
        report.findings.extend(findings)
        key = pkg_keys.get(pkgid, "") if _cacheable(out) else ""
        rows.append((pkgid, key, checked, _outcome_json(out, findings) if key else "", out.digests))
    if use_cache and not path_filters:
        # only whole packages are written: a row holds all of a package's digests
        report.cache_written = vcache.save(cache_file, rows, replace=full and not filters)
    report.duration = time.monotonic() - t0
    return report


def _package_rows(store: Store, pkgids: list[str], rows: dict) -> dict[str, tuple]:
    """pkgid -> (header file identity or None, parsed cache row or None): the part of
    the package cache's check that does not need the file system committed."""
    now = time.time()
    out: dict[str, tuple] = {}
    try:
        hfd = os.open(store.header_path("x").parent, _DIR_FLAGS)
    except OSError:
        return out
    try:
        for p in pkgids:
            header = _header_identity(hfd, p)
            row = rows.get(p)
            data = None
            if header is not None and row is not None and 0 <= now - row[1] < PACKAGE_RECHECK_SECONDS:
                try:
                    data = (row[0], json.loads(row[2]))
                except ValueError:
                    data = None
            out[p] = (header, data)
    finally:
        os.close(hfd)
    return out


def _cached_packages(store: Store, keyring: Keyring, pkgids: list[str], unsigned: set[str], rows: dict,
                     pkg_keys: dict[str, str], cached_findings: dict[str, list[Finding]], stats: Stats) -> None:
    """Fill ``pkg_keys`` (every package's cache key) and ``cached_findings`` (the packages
    whose row in ``rows``, as _package_rows gives them, is valid: the package cache).
    Called once the file system is committed (subvolume generations are current)."""
    kfp = keyring_fingerprint(keyring)
    try:
        pfd = os.open(store.root / "packages", _DIR_FLAGS)
    except OSError:
        return
    try:
        states = _subvolume_states(pfd, pkgids)
    finally:
        os.close(pfd)
    for p in pkgids:
        header, row = rows.get(p, (None, None))
        key = _package_key(states.get(p), header, p in unsigned, kfp)
        if key is None:
            continue
        pkg_keys[p] = key
        if row is None or row[0] != key:
            continue
        data = row[1]
        try:
            if not _names_unchanged(data["names"]):
                continue
            cached_findings[p] = [Finding(**f) for f in data["findings"]]
            stats.files += data["files"]
            stats.cache_hits += data["digests"]
            stats.cached_packages += 1
        except (KeyError, TypeError, AttributeError):
            continue


def _resolve_deferred(store: Store, outcomes: list[_PackageOutcome], stats: Stats, hash_groups) -> None:
    """Hash one file per group of extent-sharing files (``hash_groups``: a list of
    (size, (key, _hash_group arguments)) -> [(key, result)]); give its digest to the group."""
    groups: dict[tuple, list[tuple[_PackageOutcome, _Deferred]]] = defaultdict(list)
    for out in outcomes:
        for d in out.deferred:
            groups[d.extkey].append((out, d))
    if not groups:
        return
    root = str(store.root)
    jobs = []
    for key, members in groups.items():
        out, d = members[0]
        jobs.append((d.ident[2], (key, (root, out.pkgid, d.relpath, d.ident, d.algo))))
    results = dict(hash_groups(jobs))
    records: dict[str, list] = defaultdict(list)
    for key, members in groups.items():
        digest, n, stable = results[key]
        stats.hashed_files += 1
        stats.hashed_bytes += n
        if digest is None or not stable:
            # the representative changed under us: hash every member on its own
            found = [_hash_group(root, o.pkgid, d.relpath, d.ident, d.algo) for o, d in members]
            stats.hashed_files += len(members)
            stats.hashed_bytes += sum(r[1] for r in found)
        else:
            found = [(digest, 0, True)] * len(members)
            stats.deduped_files += len(members) - 1
        for (out, d), (dig, _n, ok) in zip(members, found):
            res, expected, actual = out.results[d.index]
            if dig is None:
                res = dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST,
                                          unknown=res.unknown | VerifyFlag.FILEDIGEST)
                mine = "?"
            else:
                if ok:
                    records[out.pkgid].append((d.index, d.ident, dig))
                mine = ""
                if dig != d.want:
                    res = dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST)
                    mine = f"{d.algo}:{dig}"
            out.results[d.index] = (res, expected, " ".join(x for x in (mine, actual) if x))
    for out in outcomes:
        if out.pkgid in records:   # in header order: the same blob as last time, unless a file changed
            out.digests += vcache.pack_digests(r[1:] for r in sorted(records[out.pkgid]))


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


def write_json(report: Report, out) -> None:
    for f in report.findings:
        out.write(json.dumps(f.to_json()) + "\n")
    out.write(json.dumps(report.summary()) + "\n")
