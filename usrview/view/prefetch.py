"""Cold starts: the files a mount opened, recorded, and checked ahead at the next mount.

The first open of a file hashes all of it, where a native program reads only
the pages it touches.  What a system opens after it starts is much the same
from one boot to the next, so the view remembers it:

- **The record.** Every file the guard opens for a check (:attr:`Guard.on_open`)
  is noted once, in the order of first opens, up to :data:`RECORD_MAX_PATHS`.
  The record is written to ``STORE/cache/opened-ID`` (ID: the image's id; the
  records of images gc deleted are deleted at the next mount) through
  the store's write path (:meth:`usrview.store.store.Store.write_file`: a temp file
  in ``tmp/``, fsync, rename) every :data:`SAVE_PERIOD` seconds when it changed,
  and at unmount.  Format: the line :data:`RECORD_HEADER`, then one view path a
  line (``bin/ls``); this mount's files first, then the previous record's that
  this mount did not open (the oldest fall off the end).
- **Checking ahead.** Right after the next mount of the image, :data:`THREADS`
  thread(s) of its own, at the lowest CPU priority (``SCHED_IDLE``, nice 19), open the recorded
  files' backing files (beneath the package directories, as the guard does) and
  hash them; a file that hashed to its header's digest is handed to the guard
  (:meth:`Guard.checked_ahead`, in the event loop), whose first open of it then
  costs no hash.  Unmounting stops them (at the next 1 MiB read) and waits.
  Meanwhile the guard's verification read-ahead is paused
  (:attr:`Guard.read_ahead_paused`): the record, not inode order, says what
  this mount opens next.

The record only steers performance, never trust: it is read under a cap
(:data:`RECORD_MAX_BYTES`), a path that is not a regular file of this image is
skipped, and a record that does not parse is ignored with a warning.  Nothing a
record names is served unless its bytes hash to the signed header's digest, at
the guard, as without a record: a file whose hash differs is left unchecked
and refused at its read (EIO and the integrity record, as always), a file
changed after it was checked ahead has another identity and is hashed again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import trio

from usrview.images.records import image_ids
from usrview.store.store import CACHE_DIR, TMP_DIR, Store, read_store_file
from usrview.view.guard import HASH_CHUNK, Guard, _close_all, _open_cached
from usrview.view.tree import Node, Tree
from usrview.view.warm import Warm
from verifier.fileio import hash_fd
from verifier.files import digest_name

log = logging.getLogger(__name__)

#: The record's first line (its format and version).
RECORD_HEADER = "usrview-opened 1"
#: Files a record names at most ...
RECORD_MAX_PATHS = 8192
#: ... and the most bytes it may have (longer records are ignored).
RECORD_MAX_BYTES = 1 << 20
#: Seconds between writes of a changed record while mounted.
SAVE_PERIOD = 60.0
#: Threads checking ahead, scheduled SCHED_IDLE (they run when nothing else wants the
#: CPU: under a booting system's load, nice 19 still took time from PID 1; lab boots,
#: docs/boot.md) at :data:`NICE` (what is left of it where SCHED_IDLE is refused).  One:
#: a second kept the boot's other virtual CPU busy too, and its booted system started
#: 0.2-0.3 s later under TCG (docs/boot.md, "Nice 5 until the root, one thread checking ahead"); natively one
#: hashes a boot's record in a fraction of a second.
THREADS = 1
NICE = 19


#: The records' names in ``STORE/cache/``: the prefix, then the image's id.
RECORD_PREFIX = "opened-"


def opened_record_path(store: Store, image_id: str) -> Path:
    return store.cache_path(RECORD_PREFIX + image_id)


def remove_stale_records(store: Store) -> None:
    """Delete the records of images gc deleted (hints that nothing will read again)."""
    try:
        names = os.listdir(store.cache_path(""))
    except FileNotFoundError:
        return
    alive = set(image_ids(store))
    for name in names:
        if name.startswith(RECORD_PREFIX) and name[len(RECORD_PREFIX):] not in alive:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(store.cache_path(name))


class RecordDirs:
    """The store's directory and its ``tmp/``, opened now, to write records in
    ``cache/`` later by names beneath them only: the initrd's daemon, whose paths
    lead nowhere after switch-root (docs/boot.md).  ``cache/`` is made now when
    missing, or at the first write when it cannot be yet (a root mounted
    read-only until the booted system remounts it).  Raises OSError."""

    FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW

    def __init__(self, store: Store):
        with contextlib.suppress(OSError):
            os.mkdir(store.cache_path(""), 0o700)
        self.root_fd = os.open(store.root, self.FLAGS)
        try:
            self.tmp_fd = os.open(TMP_DIR, self.FLAGS, dir_fd=self.root_fd)
        except BaseException:
            os.close(self.root_fd)
            raise

    def write(self, name: str, data: bytes) -> None:
        """Replace ``cache/NAME`` with ``data``: a temp file in ``tmp/``, fsync, rename, fsync."""
        try:
            cache_fd = os.open(CACHE_DIR, self.FLAGS, dir_fd=self.root_fd)
        except FileNotFoundError:
            os.mkdir(CACHE_DIR, 0o700, dir_fd=self.root_fd)
            cache_fd = os.open(CACHE_DIR, self.FLAGS, dir_fd=self.root_fd)
        try:
            Store.atomic_write_beneath(cache_fd, name, data, tmp_dir_fd=self.tmp_fd, mode=0o600)
        finally:
            os.close(cache_fd)

    def close(self) -> None:
        os.close(self.root_fd)
        os.close(self.tmp_fd)


class RecordError(ValueError):
    pass


def parse_record(data: bytes) -> list[str]:
    """The view paths of a record; RecordError when it is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    lines = text.split("\n")
    if lines[0] != RECORD_HEADER:
        raise RecordError(f"its first line is not {RECORD_HEADER!r}")
    if lines[-1] != "":
        raise RecordError("it does not end with a newline")
    paths = lines[1:-1]
    if len(paths) > RECORD_MAX_PATHS:
        raise RecordError(f"{len(paths)} paths, at most {RECORD_MAX_PATHS}")
    for path in paths:
        parts = path.split("/")
        if "\0" in path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise RecordError(f"not a view path: {path[:80]!r}")
    return paths


def format_record(paths: list[str]) -> bytes:
    return "".join(f"{p}\n" for p in [RECORD_HEADER, *paths[:RECORD_MAX_PATHS]]).encode()


def load_record(store: Store, image_id: str) -> list[str]:
    """The paths the image's record names (none when there is none; a record
    that cannot be read or parsed is ignored, with a warning)."""
    path = opened_record_path(store, image_id)
    try:
        return parse_record(read_store_file(path, RECORD_MAX_BYTES))
    except FileNotFoundError:
        return []
    except (OSError, RecordError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        log.warning("ignoring the record of opened files %s: %s", path, reason)
        return []


class _Stop(Exception):
    pass


class _StopCheck:
    """hash_fd's throttle: raises :class:`_Stop` at the next read once ``stop`` is set."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def take(self, n: int) -> None:
        if self.stop.is_set():
            raise _Stop


class Prefetch:
    """Records the files a mount opens and checks the previous mount's ahead.

    Attributes:
        tree, guard: the view's.
        store, image_id: where the record lives.
        previous: the paths of the record found at mount.
        opened: the inodes this mount opened, in order of first open.
        ahead, refused, skipped: files checked ahead (hashed to their digest),
            whose hash differed (left to the guard to refuse), left out (not
            a regular file of the image, already checked, unreadable).
        done: set when checking ahead ended.
    """

    def __init__(self, tree: Tree, guard: Guard, store: Store, image_id: str, previous: list[str], *,
                 record_dirs: RecordDirs | None = None, first_save: float = SAVE_PERIOD,
                 save_period: float = SAVE_PERIOD, report: Callable[[str], None] | None = None,
                 warm: Warm | None = None):
        self.tree, self.guard = tree, guard
        #: None, or what reads the recorded files through the mount (:mod:`usrview.view.warm`).
        self.warm = warm
        self.store, self.image_id = store, image_id
        self.previous = previous
        #: The record is written beneath these fds (opened before READY), not by path.
        self.record_dirs = record_dirs
        self.first_save, self.save_period = first_save, save_period
        self._report = report
        self.opened: list[int] = []
        self._seen = bytearray(len(tree.nodes))
        self._collecting = False
        self._saved = 0
        self._writable = True
        self.ahead = self.refused = self.skipped = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._todo: list[str] = []  # the record's paths still to check, the next last
        self._threads: list[threading.Thread] = []
        self._running = 0
        guard.on_open = self.note

    def describe(self) -> str:
        """What ``usrview mount -v`` says of it."""
        return (f"on: {len(self.previous)} files recorded by the last mount of image {self.image_id} "
                f"checked ahead by {THREADS} thread(s) at SCHED_IDLE; this mount's opens recorded in "
                f"{opened_record_path(self.store, self.image_id)}")

    # -- recording ---------------------------------------------------------

    def note(self, node: Node) -> None:
        """The guard opens ``node`` for a check (called in the event loop)."""
        self._collect()  # the files first read in C before it come before it
        if not self._seen[node.inode] and len(self.opened) < RECORD_MAX_PATHS:
            self._seen[node.inode] = 1
            self.opened.append(node.inode)

    def record(self, count: int | None = None) -> list[str]:
        """The record to write: this mount's (first ``count``) opens, then the previous record's others."""
        nodes = self.tree.nodes
        paths = [nodes[i].path for i in self.opened[:count]]
        mine = set(paths)
        paths += [p for p in self.previous if p not in mine]
        return paths[:RECORD_MAX_PATHS]

    def save(self) -> None:
        """Write the record when this mount opened files not written yet."""
        if not self._writable or len(self.opened) == self._saved:
            return
        count = len(self.opened)
        path = opened_record_path(self.store, self.image_id)
        try:
            if self.record_dirs is not None:
                self.record_dirs.write(RECORD_PREFIX + self.image_id, format_record(self.record(count)))
            else:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                self.store.write_file(path, format_record(self.record(count)), mode=0o600)
        except OSError as e:
            if e.errno == errno.EROFS:  # a root mounted read-only until the system remounts it
                return
            # Only speed depends on it: say so once, serve on.
            log.info("cannot write the record of opened files %s: %s (not trying again)", path,
                     e.strerror or e)
            self._writable = False
            return
        self._saved = count

    # -- checking ahead ------------------------------------------------------

    def _node(self, path: str) -> Node | None:
        """The node to check ahead at ``path``, or None.  Called in the threads: a
        compiled tree checks the package before its first node (its header's
        signature, its block), which the event loop then need not wait for."""
        try:
            node = self.tree.resolve(path)
        except OSError:  # a compiled tree found not to match its headers: it refuses everything
            return None
        if node is None or not node.is_reg or node.backing < 0 or not node.digest:
            return None
        return node

    def start(self, token: trio.lowlevel.TrioToken) -> None:
        """Start checking the previous record's files ahead (threads of their own),
        and reading them through the mount when told to (``warm``: each path as
        recorded; one that is not a regular file of the view fails to open there)."""
        if self.warm is not None:
            self.warm.start(self.previous)
        self._todo = self.previous[::-1]
        if not self._todo:
            self.done.set()
            return
        # The record says what this mount opens: the guard's read-ahead, a guess
        # from inode order, waits until it was checked (usrview.view.guard).
        self.guard.read_ahead_paused = True
        self._running = THREADS
        for n in range(THREADS):
            t = threading.Thread(target=self._work, args=(token,), name=f"usrview-prefetch-{n}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """Stop checking ahead (at the next read of each thread) and wait for the
        threads; stop reading through the mount (not waited for)."""
        self._stop.set()
        if self.warm is not None:
            self.warm.stop()
        for t in self._threads:
            t.join()
        self._threads.clear()

    def _next(self) -> Node | None:
        while True:
            with self._lock:
                if not self._todo or self._stop.is_set():
                    return None
                path = self._todo.pop()
            node = self._node(path)
            if node is not None:
                return node
            self._count("skipped")

    def _work(self, token: trio.lowlevel.TrioToken) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except OSError:
            pass
        try:  # this thread only (Linux schedules threads apart)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass
        dir_fds: dict = {}
        buf = bytearray(HASH_CHUNK)
        check = _StopCheck(self._stop)
        try:
            while (node := self._next()) is not None:
                try:
                    found = self._hash(dir_fds, node, buf, check)
                except _Stop:
                    break
                except OSError:
                    found = None
                if found is None:
                    self._count("skipped")
                    continue
                key, actual, fd = found
                if actual != node.digest:
                    # Not marked: the guard hashes it at its first open and refuses it there.
                    os.close(fd)
                    self._count("refused")
                    continue
                # The fd goes along: the view may answer the file's READs from it.
                try:
                    token.run_sync_soon(self.guard.checked_ahead, node, key, actual, fd)
                except trio.RunFinishedError:
                    os.close(fd)
                    break
                self._count("ahead")
        finally:
            _close_all(dir_fds)
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self.guard.read_ahead_paused = False
                summary = (f"prefetch: {self.ahead} recorded files checked ahead, {self.refused} differed "
                           f"from their digest, {self.skipped} left out"
                           f"{' (stopped at unmount)' if self._stop.is_set() else ''}")
                report = self._report or log.info
                if self._stop.is_set():  # the event loop waits for this thread: said now
                    report(summary)
                else:  # said in the event loop, after the hand-overs queued before it ran
                    try:
                        token.run_sync_soon(report, summary)
                    except trio.RunFinishedError:
                        report(summary)
                self.done.set()

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def _hash(self, dir_fds: dict, node: Node, buf: bytearray,
              check: _StopCheck) -> tuple[tuple, str, int] | None:
        """(identity, digest, fd) of ``node``'s backing file, the fd still open
        (the caller's); None when it is not to be checked ahead."""
        base = self.guard.bases[node.backing]
        algo = digest_name(node.algo)
        if base is None or algo is None:
            return None
        fd = _open_cached(dir_fds, base, node)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != node.size:
                os.close(fd)
                return None
            key = Guard.identity(st, node)
            if self.guard.is_checked(key):
                os.close(fd)
                return None
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError as e:
                if e.errno != errno.ESPIPE:
                    raise
            return key, hash_fd(fd, algo, buf=buf, size=st.st_size, throttle=check)[0], fd
        except BaseException:
            os.close(fd)
            raise

    # -- the mount's task ----------------------------------------------------

    async def run(self) -> None:
        """Check ahead, save the record every :data:`SAVE_PERIOD` seconds; at
        cancellation (unmount) stop the threads and save it a last time."""
        try:
            self.start(trio.lowlevel.current_trio_token())
            await trio.sleep(self.first_save)
            while True:
                self._collect()
                await trio.to_thread.run_sync(self.save)
                await trio.sleep(self.save_period)
        finally:
            self.stop()
            self._collect()
            self.save()

    def _collect(self) -> None:
        """Note the opens the view answered without the guard (READs in C of
        files checked ahead): before the record is written and before an open
        through the guard, so that the record keeps the order of first reads."""
        if self.guard.collect_opens is not None and not self._collecting:
            self._collecting = True  # its notes come back through note()
            try:
                self.guard.collect_opens()
            finally:
                self._collecting = False
