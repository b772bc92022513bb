"""Verification on open: a regular file's bytes are served only after they hashed
to the digest its signed header records.  (Where the kernel opens files without
asking, docs/view.md "Letting the kernel answer", the first READ opens and
checks: :meth:`Guard.open_checked`, then :meth:`Guard.still_checked` per READ.)

:class:`Guard` opens a node's backing file safely and, depending on the mode,
checks it:

- ``enforce``: a backing file that is missing, not a regular file, of the wrong
  size or whose digest differs is refused (``OSError(EIO)``) and an ERROR
  record is logged with the structured fields PATH, PACKAGE, EXPECTED, ACTUAL
  and MESSAGE_ID = :data:`INTEGRITY_MESSAGE_ID` (the monitor reuses the id).
- ``warn``: the same record at WARNING level; the file is served.
- ``off``: no digest check (the backing file must still be a regular file).

Results are cached per backing-file identity (st_dev, st_ino, st_size,
st_mtime_ns, st_ctime_ns) and digest algorithm: any change of the file's bytes
changes its ctime.  A later open of a file whose check passed costs one
``lstat`` (:meth:`Guard.unchanged`); its backing file is opened, and checked
again, at the first read.  Concurrent first opens of one file hash it once (the others wait
on a ``trio.Event``).  Hashing runs in worker threads under a
``trio.CapacityLimiter``, so a large file never stalls the event loop.

Hashing a file whose bytes are in the page cache takes less than handing it to
a thread: a file of at most :data:`INLINE_HASH_MAX` bytes is hashed in the
event loop with ``preadv2(RWF_NOWAIT)``, which never waits for the disk; at
the first read that would, the hash is carried on in a thread from there.

Verification read-ahead: a program reading many files (a walk, a backup, a
compiler going through headers) opens them one after another, and each first
open waits for its bytes.  Inode numbers follow name order within a directory
(:mod:`usrview.view.tree`), so after an open of inode *i* the guard has a thread of
its own ask the kernel to read the backing files of the next inodes
(``posix_fadvise(WILLNEED)``: the disk works while the view serves, and the
metadata reads that asking may wait for do not hold up the event loop).  The
window works like the kernel's page read-ahead: it starts at :data:`READAHEAD_START` files and doubles, up to
:data:`READAHEAD_MAX`, while the opens land on files it read ahead; an open
elsewhere starts a new small window.  Read-ahead only warms the page cache:
what is verified, logged and refused is decided by each open as before.  It
pauses while the prefetch checks the last mount's record of opens ahead
(:attr:`Guard.read_ahead_paused`): the record says what this mount will open,
the window only guesses, and both read the disk at once — at boot the guess
read hundreds of files no one opened (docs/boot.md, "Polling within a burst, nice 0, a zstd initrd, the
read-ahead paused").

Backing files are opened relative to the package directory, one component at
a time with ``O_NOFOLLOW`` (:func:`verifier.fileio.open_dir_beneath`), the file
itself with :data:`verifier.fileio.FILE_READ_FLAGS`: a symlink planted in the
store is never followed.  The directories' fds are kept (at most :data:`DIR_FD_CACHE`),
so a later open of a file in the same directory costs one ``openat``.

The package directories themselves are opened once, when the guard is made
(before the view serves): a daemon serving ``/usr`` from the initrd never
resolves a store path afterwards, which after switch-root would no longer
lead to the store (docs/boot-core.md).
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable

import trio

from usrview.journal import INTEGRITY_MESSAGE_ID
from usrview.view.tree import Node, Tree
from verifier.fileio import (
    DIR_PATH_FLAGS,
    FILE_READ_FLAGS,
    hash_fd,
    hasher,
    open_dir_beneath,
    split_relpath,
)
from verifier.files import digest_name

log = logging.getLogger(__name__)

#: Worker threads hashing at once: FACTS.md measured two threads hashing no
#: faster than one, but a second lets a small file pass a large one.
HASH_THREADS = 2
#: Bytes per read while hashing (each thread's buffer): larger than
#: :data:`verifier.fileio.HASH_CHUNK`, as an inline hash is one read.
HASH_CHUNK = 1 << 20
#: Backing directories whose O_PATH fd is kept (walking a path component by
#: component costs one openat per component: deep paths made it most of an
#: open's cost).  When full the cache is emptied and refilled.
DIR_FD_CACHE = 4096
#: Largest file hashed in the event loop when its bytes are in the page cache.
INLINE_HASH_MAX = 1 << 20
#: Verification read-ahead window (in files): after an open elsewhere, and the
#: most it grows to while opens follow it.
READAHEAD_START = 4
READAHEAD_MAX = 64


class VerifyMode(str, enum.Enum):
    ENFORCE = "enforce"
    WARN = "warn"
    OFF = "off"


_buffers = threading.local()


def _buffer() -> bytearray:
    """This thread's read buffer (a fresh 1 MiB per small file cost more than hashing it)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(HASH_CHUNK)
    return buf


def hash_cached(fd: int, algo: str):
    """Hash what the page cache holds of ``fd``'s file without waiting for the
    disk: (hex digest, None, size) when it held everything, else (None, hash
    object, offset) to carry on from with :func:`verifier.fileio.hash_fd`.

    Not ``hash_fd``'s ``on_cold``: that tries one read without waiting and then
    waits for the disk in the caller's thread -- here the event loop, which must
    hand the rest (also of a file only partly cached) to a worker thread.
    """
    h = hasher(algo)()
    buf = _buffer()
    view = memoryview(buf)
    off = 0
    while True:
        try:
            n = os.preadv(fd, [buf], off, os.RWF_NOWAIT)
        except BlockingIOError:
            return None, h, off
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                return None, h, off
            raise
        if n == 0:
            return h.hexdigest(), None, off
        h.update(view[:n])
        off += n


def _hash_rest(fd: int, algo: str, h, offset: int) -> str:
    """Hex digest of ``fd``'s file, carrying on with ``h`` from ``offset`` (in a worker thread)."""
    return hash_fd(fd, algo, h=h, offset=offset, buf=_buffer())[0]


def open_backing_dirs(tree: Tree) -> list[int | None]:
    """An ``O_PATH`` fd of each of the tree's backing directories (None where there
    is none, or it cannot be opened: its files then answer EIO)."""
    fds: list[int | None] = []
    for path in tree.backing_dirs:
        try:
            fds.append(os.open(path, DIR_PATH_FLAGS) if path is not None else None)
        except OSError as e:
            log.error("backing directory %s cannot be opened: %s", path, e.strerror)
            fds.append(None)
    return fds


def _open_cached(dir_fds: dict, base: int, node: Node) -> int:
    """Open ``node``'s backing file below the directory fd ``base``, keeping its
    directory's fd in ``dir_fds`` (emptied when it holds :data:`DIR_FD_CACHE`)."""
    parts = split_relpath(node.relpath)
    key = (node.backing, node.relpath.rpartition("/")[0])
    dfd = dir_fds.get(key)
    if dfd is None:
        dfd = open_dir_beneath(base, parts[:-1])
        if len(dir_fds) >= DIR_FD_CACHE:
            _close_all(dir_fds)
        dir_fds[key] = dfd
    return os.open(parts[-1], FILE_READ_FLAGS, dir_fd=dfd)


def _close_all(dir_fds: dict) -> None:
    for fd in dir_fds.values():
        os.close(fd)
    dir_fds.clear()


class _ReadAhead:
    """A thread that opens backing files and asks the kernel to read them
    (``posix_fadvise(WILLNEED)``): on btrfs that can wait for metadata, which
    must not hold up the event loop.  It has its own directory fds."""

    def __init__(self, tree: Tree, bases: list[int | None]):
        self.tree = tree
        self.bases = bases
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def submit(self, nodes: list[Node]) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="usrview-readahead", daemon=True)
            self.thread.start()
        self.queue.put(nodes)

    def stop(self) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None

    def _run(self) -> None:
        dir_fds: dict = {}
        try:
            while (nodes := self.queue.get()) is not None:
                for node in nodes:
                    try:
                        fd = _open_cached(dir_fds, self.bases[node.backing], node)
                    except OSError:
                        continue
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                    except OSError:
                        pass
                    finally:
                        os.close(fd)
        finally:
            _close_all(dir_fds)


class Guard:
    """Opens and checks backing files.

    Attributes:
        tree: the view's tree (nodes, package names, backing directories).
        bases: an O_PATH fd of each backing directory (None: none), indexed as
            ``tree.backing_dirs``; open while the guard lives.
        mode: VerifyMode.
        limiter: bounds the hashing threads.
        hashed: how many times a file was actually hashed (for tests and stats),
            hashed_inline of them in the event loop; read_ahead: files read ahead;
            hashed_bytes: their bytes; hash_seconds: the time spent waiting for
            their digests (in the event loop, or for a worker thread).
        on_open: None, or called with each node opened for a check.
    """

    def __init__(self, tree: Tree, mode: VerifyMode | str = VerifyMode.ENFORCE, *,
                 limiter: trio.CapacityLimiter | None = None):
        self.tree = tree
        self.bases = open_backing_dirs(tree)
        self.mode = VerifyMode(mode)
        self.limiter = limiter or trio.CapacityLimiter(HASH_THREADS)
        self.hashed = 0
        self.hashed_inline = 0
        self.hashed_bytes = 0
        self.hash_seconds = 0.0
        # (st_dev, st_ino, size, mtime_ns, ctime_ns, algo) -> actual hex digest
        self._cache: dict[tuple, str] = {}
        self._pending: dict[tuple, trio.Event] = {}
        # (backing index, directory relpath) -> O_PATH fd, reached without symlinks
        self._dir_fds: dict[tuple[int, str], int] = {}
        # inode -> the cache key (identity and algorithm) of its backing file
        # when its check passed
        self._good: dict[int, tuple] = {}
        # read-ahead: per inode 1 once opened or read ahead; the inodes read
        # ahead and not opened since; the window.
        self._ra_seen = bytearray(len(tree.nodes))
        self._ra_pending: set[int] = set()
        self._ra_window = READAHEAD_START
        self._ra_thread = _ReadAhead(tree, self.bases)
        self.read_ahead = 0
        #: Files the prefetch hashed to their digest before their first open.
        self.ahead = 0
        #: Set by the prefetch while it checks its record ahead: opens queue no
        #: read-ahead meanwhile (see the module docstring).
        self.read_ahead_paused = False
        # called with each node opened for a check (usrview.view.prefetch records them)
        self.on_open: Callable[[Node], None] | None = None
        #: Given a file the prefetch checked ahead, its backing fd still open and the
        #: identity it was checked with (in the event loop): True when it keeps the fd
        #: to answer the file's READs from (usrview.view.fs), else the fd is closed.
        self.adopt: Callable[[Node, int, tuple], bool] | None = None
        #: Notes (through on_open) the kept files first read since it was last called.
        self.collect_opens: Callable[[], None] | None = None

    def statistics(self) -> str:
        return (f"files hashed: {self.hashed} ({self.hashed_inline} in the event loop), "
                f"{self.hashed_bytes / 1e6:.1f} MB in {self.hash_seconds:.2f} s; read ahead: {self.read_ahead}; "
                f"checked ahead: {self.ahead}")

    def close(self) -> None:
        """Stop the read-ahead thread; close the cached directory fds."""
        log.info("%s", self.statistics())
        self._ra_thread.stop()
        _close_all(self._dir_fds)
        for fd in self.bases:
            if fd is not None:
                os.close(fd)
        self.bases = [None] * len(self.bases)

    def _open_backing(self, base, node: Node) -> int:
        return _open_cached(self._dir_fds, base, node)

    def unchanged(self, node: Node) -> bool:
        """Whether ``node``'s backing file is, by its identity (one ``lstat``), the
        one whose check passed at an earlier open: then an open need not open it
        (:class:`usrview.fs.ViewOperations` opens it at the first read, through
        :meth:`open`, which checks again)."""
        good = self._good.get(node.inode)
        if good is None:
            return False
        directory, _, name = node.relpath.rpartition("/")
        dfd = self._dir_fds.get((node.backing, directory))
        if dfd is None:
            return False
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, node.algo) == good

    async def open(self, node: Node) -> int:
        """An fd of ``node``'s backing file, checked as the mode says.  Raises
        OSError(EIO) for a refused file, after logging why."""
        return (await self.open_checked(node))[0]

    async def open_checked(self, node: Node) -> tuple[int, tuple]:
        """:meth:`open`, and the identity of the backing file as it was checked,
        for :meth:`still_checked`."""
        if self.on_open is not None:
            self.on_open(node)
        base = self.bases[node.backing] if node.backing >= 0 else None
        if base is None:
            self._violation(node, "no backing file (the package's files are not in the store)", fatal=True)
            raise OSError(errno.EIO, "no backing file")
        try:
            fd = self._open_backing(base, node)
        except OSError as e:
            self._violation(node, f"backing file cannot be opened: {os.strerror(e.errno or errno.EIO)}",
                            fatal=True)
            raise OSError(errno.EIO, "backing file cannot be opened") from None
        if self.mode is not VerifyMode.OFF and not self.read_ahead_paused:
            self._read_ahead(node)
        try:
            identity = await self._check(node, fd)
        except BaseException:
            os.close(fd)
            raise
        return fd, identity

    @staticmethod
    def identity(st: os.stat_result, node: Node) -> tuple:
        """The key checks are cached by: the backing file's identity and the digest algorithm."""
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, node.algo)

    def is_checked(self, key: tuple) -> bool:
        """Whether the file of identity ``key`` was hashed already."""
        return key in self._cache

    def checked_ahead(self, node: Node, key: tuple, actual: str, fd: int = -1) -> None:
        """A file hashed ahead of its first open (:mod:`usrview.view.prefetch`), by
        its identity ``key`` before hashing: remembered when ``actual`` is the
        header's digest, so that its open hashes nothing.  A digest that differs
        is not remembered: the open hashes the file and refuses it.  ``fd``: the
        backing fd it was hashed from, handed to :attr:`adopt` when it matched
        (and closed here when nobody keeps it)."""
        if actual != node.digest:
            if fd >= 0:
                os.close(fd)
            return
        self._cache[key] = node.digest
        self.ahead += 1
        if fd >= 0 and (self.adopt is None or self.mode is VerifyMode.OFF or not self.adopt(node, fd, key)):
            os.close(fd)

    @staticmethod
    def still_checked(fd: int, identity: tuple) -> bool:
        """Whether the file of ``fd`` has the identity it was checked with (one
        ``fstat``): its bytes did not change since (they change its ctime)."""
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == identity[:5]

    def _read_ahead(self, node: Node) -> None:
        """Queue the window after ``node`` (see the module docstring)."""
        inode = node.inode
        self._ra_seen[inode] = 1
        if inode in self._ra_pending:
            self._ra_pending.discard(inode)
            self._ra_window = min(self._ra_window * 2, READAHEAD_MAX)
        else:
            self._ra_window = READAHEAD_START
        nodes = self.tree.nodes
        batch = []
        # what the window covers and was seen already (read ahead or opened) is skipped
        for i in range(inode + 1, min(inode + 1 + self._ra_window, len(self._ra_seen))):
            if self._ra_seen[i]:
                continue
            self._ra_seen[i] = 1
            other = nodes[i]
            if (other is None or not other.is_reg or other.backing < 0 or not other.digest or not other.size
                    or self.bases[other.backing] is None):
                continue
            batch.append(other)
            self._ra_pending.add(i)
        if batch:
            self.read_ahead += len(batch)
            self._ra_thread.submit(batch)

    async def _check(self, node: Node, fd: int) -> tuple:
        """Check ``fd`` as the mode says; the backing file's identity (and
        algorithm) taken before it was hashed."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            self._violation(node, f"backing file is not a regular file ({stat.filemode(st.st_mode)})",
                            fatal=True)
            raise OSError(errno.EIO, "backing file is not a regular file")
        key = self.identity(st, node)
        if self.mode is VerifyMode.OFF:
            self._good[node.inode] = key
            return key
        self._good.pop(node.inode, None)
        if st.st_size != node.size:
            if self._violation(node, f"size {st.st_size}, expected {node.size}"):
                raise OSError(errno.EIO, "backing file has the wrong size")
            return key
        algo = digest_name(node.algo)
        if algo is None or not node.digest:
            # Nothing to compare with: a header without a usable digest for a
            # file with bytes.  rpm -V cannot check it either.
            if node.size == 0:
                self._good[node.inode] = key
                return key
            if self._violation(node, f"no usable digest in the header (algorithm {node.algo})"):
                raise OSError(errno.EIO, "no usable digest")
            return key
        actual = await self._digest(key, fd, algo)
        if actual == node.digest:
            # the tree's string, not a copy of it per file (memory of a long mount)
            self._cache[key] = node.digest
            self._good[node.inode] = key
        elif self._violation(node, f"{algo}:{actual}"):
            raise OSError(errno.EIO, "digest mismatch")
        return key

    async def _digest(self, key: tuple, fd: int, algo: str) -> str:
        while True:
            actual = self._cache.get(key)
            if actual is not None:
                return actual
            event = self._pending.get(key)
            if event is None:
                break
            # Someone is hashing this file: wait; if they failed, try ourselves.
            await event.wait()
        h, off = None, 0
        started = time.monotonic()
        if key[2] <= INLINE_HASH_MAX:
            actual, h, off = hash_cached(fd, algo)
            if actual is not None:
                self._hashed(key[2], started)
                self.hashed_inline += 1
                self._cache[key] = actual
                return actual
        event = self._pending[key] = trio.Event()
        try:
            actual = await trio.to_thread.run_sync(_hash_rest, fd, algo, h, off, limiter=self.limiter)
            self._hashed(key[2], started)
            self._cache[key] = actual
            return actual
        finally:
            del self._pending[key]
            event.set()

    def _hashed(self, size: int, started: float) -> None:
        self.hashed += 1
        self.hashed_bytes += size
        self.hash_seconds += time.monotonic() - started

    def _violation(self, node: Node, actual: str, *, fatal: bool = False) -> bool:
        """Log an integrity violation; True when the open must be refused
        (``fatal``: whatever the mode, as there is nothing to serve)."""
        package = self.tree.package_of(node) or "(image header file)"
        path = "/usr/" + node.path
        expected = f"{digest_name(node.algo) or node.algo}:{node.digest}" if node.digest else "(none)"
        extra = {"MESSAGE_ID": INTEGRITY_MESSAGE_ID, "PATH": path, "PACKAGE": package,
                 "EXPECTED": expected, "ACTUAL": actual}
        if self.mode is VerifyMode.WARN and not fatal:
            log.warning("integrity violation (served, verify=warn): %s of %s: expected %s, found %s",
                        path, package, expected, actual, extra=extra)
            return False
        log.error("integrity violation: %s of %s: expected %s, found %s", path, package,
                  expected, actual, extra=extra)
        return True
