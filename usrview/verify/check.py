"""The check of one package, as a worker process runs it: the header's signature
and package id (:func:`header_findings`), each file the header lists against the
package directory with rpm -V's rules, then what the directory holds besides
(:mod:`usrview.verify.unowned`).  The outcome (:class:`PackageOutcome`) holds only
findings, counters and digests -- never the file list -- and becomes the
package's findings in the parent (:func:`package_findings`).

Per regular file: lstat, open, fstat, flistxattr and fgetxattr when it names the
capabilities (P), reads into the run's buffer, close.  A file whose type, mode,
owner, group, size and mtime all equal the header's needs none of rpm -V's case
analysis (:func:`verifier.filecheck.metadata_matches`); any other file goes
through :func:`verifier.filecheck.check_file`.  A package's first read that would
wait for the disk starts a read-ahead thread (:class:`Prefetcher`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import threading
from dataclasses import dataclass, field

from usrview.store import fiemap
from usrview.store.store import Store, StoreError, pkgid_for
from usrview.store.trust import header_trust
from usrview.verify import vcache
from usrview.verify.context import RunContext
from usrview.verify.dedupe import DEDUPE_MIN_SIZE, Deferred
from usrview.verify.pkgcache import names_used
from usrview.verify.report import Finding, Stats
from usrview.verify.unowned import unowned_paths
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
from verifier.fileio import FILE_READ_FLAGS, hash_fd
from verifier.files import FileEntry, FileFlag, VerifyFlag, digest_name
from verifier.keyring import Keyring, Verdict

_SPECIAL = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
# Plain ints for the per-file loop (IntFlag arithmetic costs microseconds).
_F_DIGEST = int(VerifyFlag.FILEDIGEST)
_F_CAPS = int(VerifyFlag.CAPS)
_GHOST = int(FileFlag.GHOST)
_QUIET_MISSING = int(FileFlag.GHOST | FileFlag.MISSINGOK)
_NOT_A_DIRECTORY = os.strerror(errno.ENOTDIR)


@dataclass
class PackageOutcome:
    """What a worker sends back for one package.

    Attributes:
        header: the header's findings.
        results: entry index -> (FileResult, expected, actual) of the files that
            are not clean, and of the deferred ones (their digest verdict pending).
        digests: the vcache blob of the digests known good in this run.
        names: owner names used -> the ids they resolved to (for the package cache).
        digest_files: files whose digest applied (for the counters of a cached run).
        notdir: the directories of the tree that are no directory of the package (TreeDirs).
    """

    pkgid: str
    header: list[Finding] = field(default_factory=list)
    results: dict[int, tuple[FileResult, str, str]] = field(default_factory=dict)
    deferred: list[Deferred] = field(default_factory=list)
    unowned: list[str] = field(default_factory=list)
    notdir: list[str] = field(default_factory=list)
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


def header_findings(store: Store, pkgid: str, unsigned: bool, keyring: Keyring):
    """(findings, package or None when its files must not be trusted)."""
    hpath = store.header_path(pkgid)
    try:
        check = sigcheck.check_bytes(store.read_header(pkgid), keyring)
    except FileNotFoundError:
        return [Finding("header", pkgid, str(hpath), f"header    {pkgid}: header file missing",
                        message="header file missing")], None
    except OSError as e:
        return [Finding("header", pkgid, str(hpath), f"header    {pkgid}: unreadable ({e.strerror})",
                        message=f"header file unreadable: {e.strerror}")], None
    findings = []
    pkg = check.package
    # Accepted by a looser signature policy than this run's (keys bound by SHA-1
    # under default): reported, and its files still checked against it.
    trust = header_trust(check, unsigned_allowed=unsigned, looser_policy_allowed=True,
                         stored=True)
    trusted = trust.usable
    if trust.usable and trust.unsigned:
        findings.append(Finding("unsigned", pkgid, str(hpath),
                                f"unsigned  {pkgid}: imported unsigned (--allow-unsigned)",
                                expected="GOOD", actual="UNSIGNED",
                                message="package was imported without a signature"))
    elif trust.looser_policy is not None:
        findings.append(Finding("legacy", pkgid, str(hpath),
                                f"legacy    {pkgid}: accepted only by the {trust.looser_policy} signature policy: "
                                f"{trust.reason}",
                                expected=keyring.policy.name, actual=trust.looser_policy, message=trust.reason))
    elif not trust.usable:
        # PARSE also for a GOOD header whose file carries unsigned bytes (trust.reason says which)
        actual = check.verdict.value if check.verdict not in (Verdict.UNSIGNED, Verdict.GOOD) \
            or (check.verdict is Verdict.UNSIGNED and not unsigned) else "PARSE"
        findings.append(Finding("header", pkgid, str(hpath), f"header    {pkgid}: {trust.reason}",
                                expected="GOOD", actual=actual, message=trust.reason))
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


class TreeDirs:
    """The directories a package's tree needs -- listed ones and the parents of listed
    paths, such as an unlisted ``/usr/bin`` -- as the package directory holds them.

    Each must be a real directory on the package's own file system (its subvolume),
    reached from the package's root through real directories only: the walk the view's
    guard makes (:func:`verifier.fileio.open_dir_beneath`, component by component with
    O_NOFOLLOW).  Anything else there -- also a root-owned symlink to a directory, which
    rpm -V accepts for one -- is a ``notdir`` finding, and nothing beneath it is looked
    at: every file judged lies in the package's subvolume, so a change behind such a
    symlink can neither be missed nor hidden by the package cache (docs/verify.md).

    Attributes:
        state: directory install path ("" the root) -> True (a real directory of the
            package, reached through real ones), False (a non-directory stands there or
            above it), None (absent).
        notdir: the paths where a non-directory stands, in the order found.
    """

    def __init__(self, dir_fd: int):
        self.dir_fd = dir_fd
        self.dev = os.fstat(dir_fd).st_dev
        self.state: dict[str, bool | None] = {"": True}
        self.notdir: list[str] = []

    def note(self, path: str, st: os.stat_result | None) -> bool | None:
        """Record the lstat ``st`` (None: absent) of directory ``path``, whose parent is a
        real directory; its state."""
        if st is None:
            ok = None
        else:
            ok = stat.S_ISDIR(st.st_mode) and st.st_dev == self.dev
            if not ok:
                self.notdir.append(path)
        self.state[path] = ok
        return ok

    def lookup(self, path: str) -> bool | None:
        """The state of directory ``path`` (see the class docstring), its parents first."""
        ok = self.state.get(path, _UNKNOWN)
        if ok is not _UNKNOWN:
            return ok
        ok = self.lookup(path[:path.rfind("/")])
        if ok:
            try:
                st = os.stat(path[1:], dir_fd=self.dir_fd, follow_symlinks=False)
            except OSError:
                st = None
            return self.note(path, st)
        self.state[path] = ok
        return ok


_UNKNOWN = object()


class _DeferredMark:
    """The digest of a deferred file: decided by the parent."""


_DEFERRED = _DeferredMark()


class Prefetcher(threading.Thread):
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
                fd = os.open(relpath, FILE_READ_FLAGS, dir_fd=self.dir_fd)
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

    def __init__(self, out: PackageOutcome, dir_fd: int, known: dict, entries: list[FileEntry],
                 buf: bytearray, bucket):
        self.out = out
        self.stats = out.stats
        self.dir_fd = dir_fd
        self.known = known         # identity -> digest, from the cache
        self.local: dict = {}      # identity -> digest hashed in this package (hard links)
        self.records: list = []    # (identity, digest) for the cache
        self.buf = buf
        self.bucket = bucket       # the run's TokenBucket in this process, or None
        self.fsid: tuple | None = None
        self.entries = entries
        self.prefetcher: Prefetcher | None = None
        self.index = 0             # the entry being hashed (the read-ahead starts after it)
        # no read-ahead under an I/O limit: it would read past the limit.  A flag, not the
        # bound method kept here: that made a reference cycle, so every package's entries
        # waited for the garbage collector, whose passes over them took 9 % of the CPU time
        # of a run with cached digests.
        self.probe = bucket is None

    def read_ahead(self) -> None:
        """Start the read-ahead of the package's files after the one being hashed."""
        self.probe = False
        self.prefetcher = Prefetcher(self.dir_fd, [e.path.lstrip("/") for e in self.entries[self.index + 1:]
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
                    self.out.deferred.append(Deferred(index, relpath, ident, (self.fsid, extkey, algo), algo,
                                                       entry.digest.lower()))
                    return _DEFERRED
            self.index = index
            digest, n = hash_fd(fd, algo, buf=self.buf, size=size, throttle=self.bucket,
                               on_cold=self.read_ahead if self.probe else None)
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
            fd = os.open(relpath, FILE_READ_FLAGS, dir_fd=self.dir_fd)
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


def check_package(ctx: RunContext, pkgid: str, unsigned: bool) -> PackageOutcome:
    """Check one package: its header, then each file it lists, then what it does not list."""
    store = ctx.store
    out = PackageOutcome(pkgid)
    out.header, pkg = header_findings(store, pkgid, unsigned, ctx.keyring)
    if pkg is None:
        return out
    entries = pkg.files
    users, groups = ctx.users, ctx.groups
    out.names = names_used(entries, users, groups)
    filters = ctx.path_filters
    try:
        dir_fd = store.open_package_dir(pkgid)
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
    blob = ctx.digests.get(pkgid)
    check = _PackageCheck(out, dir_fd, vcache.unpack_digests(blob) if blob else {}, entries, ctx.buf,
                          ctx.bucket)
    results = out.results
    algo_id, algo = None, None   # the header's FILEDIGESTALGO, its hashlib name
    expect: dict[tuple, tuple[int, int, int]] = {}   # (user, group, mode) -> expected_ids_and_mode
    lstats: dict[str, os.stat_result | None] = {}   # for unowned_paths
    files = digest_files = 0
    lstat, regular = os.stat, check.regular
    tree = TreeDirs(dir_fd)
    tree_state = tree.state
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
            parent = path[:path.rfind("/")]
            if tree_state.get(parent) is not True and tree.lookup(parent) is False:
                # beneath a non-directory: not looked up (it would be through it)
                lstats[path] = None
                res = FileResult(path, attribute_marker(entry.flags), missing=True, error=_NOT_A_DIRECTORY,
                                 quiet_missing=bool(int(entry.flags) & _QUIET_MISSING))
                if not res.clean:
                    results[i] = (res, "", "")
                continue
            try:
                st = lstat(relpath, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                st = None
            lstats[path] = st
            if entry.mode & 0o170000 == stat.S_IFDIR and path not in tree_state:
                tree.note(path, st)   # a notdir finding, besides the rpm -V line check_file gives
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
                res = check_file(dir_fd, relpath, entry, check_digest=False, follow_dir_symlink=False)
            else:
                res = check_file(dir_fd, relpath, entry, check_digest=False, st=st, users=users, groups=groups,
                                 follow_dir_symlink=False)
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
            out.unowned = unowned_paths(dir_fd, entries, lstats, fiemap.filesystem_id(dir_fd)[0] == "btrfs")
    finally:
        check.close()
        os.close(dir_fd)
    out.notdir = sorted(tree.notdir)
    out.stats.files += files
    out.digest_files = digest_files
    out.digests = vcache.pack_digests(check.records)
    return out


def _record(out: PackageOutcome, index: int, entry: FileEntry, st: os.stat_result, algo: str | None,
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


def package_findings(out: PackageOutcome) -> list[Finding]:
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
    for path in out.notdir:
        findings.append(Finding("notdir", out.pkgid, path, f"notdir      {path}",
                                message="the view needs a directory here; a symlink or other file stands "
                                        "(nothing beneath it is checked)"))
    for path in out.unowned:
        findings.append(Finding("unowned", out.pkgid, path, f"unowned     {path}",
                                message="not listed in the package's header"))
    return findings
