"""Warming the kernel's caches through the mount: the recorded files read once, early.

The initrd's daemon mounts the view on ``SYSROOT/usr`` and the booted system's
systemd then reads its own binary, its libraries, its units and generators from
it, one file after another; each file not in the kernel's page cache costs a
FUSE round trip or more (lookups, reads) into the daemon, under the boot's load.
The kernel keeps what the view answered (pages across opens, entries and
attributes for ``CACHE_TIMEOUT``: :mod:`usrview.view.fs`), so the files the
last boot of the image opened (:mod:`usrview.view.prefetch`'s record) are read
*through the mount* by a thread of the daemon from the mount on, in the order
the last boot first opened them: by the time systemd is there, its reads are
answered from the kernel's caches.

Nothing changes for trust: the thread is one more reader of the view; each of
its reads is a FUSE request answered by the guard like any other (a file whose
bytes do not hash to its header's digest answers EIO and is logged as always,
and nothing of it reaches the page cache).  The record only chooses what is
read first.

The mount's directory is reached through a directory fd opened before READY
(the root file system's, on which the view is mounted): after switch-root the
daemon's paths lead into the initrd, while the fd still names that directory
and ``openat(fd, "usr")`` crosses into the view.  The thread runs at nice
:data:`NICE` (the boot's own priority, not the daemon's raised one), reads at
most :data:`MAX_BYTES`, closes every fd it opened when it ends, and stops at
the next file once :meth:`Warm.stop` is called.  It is never waited for: at the
unmount it may be waiting for a request the view will not answer any more, which
the kernel ends with the unmount.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

#: The warming thread's niceness: the booted system's own (its reads compete
#: with the boot's; the daemon answers them at its serving priority).
NICE = 0
#: Bytes read through the mount at most (the record's first files first).
MAX_BYTES = 256 << 20
#: Bytes per read.
CHUNK = 1 << 20
#: How a recorded file is opened through the mount: never a symlink (a record
#: names regular files), never the terminal's.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY


class Warm:
    """Reads ``paths`` (view paths, ``bin/ls``) through the view mounted on ``name``
    beneath the directory fd ``parent_fd`` (which it owns and closes), in a thread.

    Attributes: files, bytes, failed, seconds (set when done), done (an Event)."""

    def __init__(self, parent_fd: int, name: str, *, report: Callable[[str], None] | None = None,
                 max_bytes: int = MAX_BYTES):
        self.parent_fd, self.name = parent_fd, name
        self._report = report or log.info
        self.max_bytes = max_bytes
        self.files = self.bytes = self.failed = 0
        self.seconds = 0.0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, paths: Sequence[str]) -> None:
        """Start reading ``paths`` in a thread of its own (closes the fd when there are none)."""
        if not paths:
            self.close()
            self.done.set()
            return
        self._thread = threading.Thread(target=self._run, args=(list(paths),), name="usrview-warm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop at the next file (not waited for: see the module docstring)."""
        self._stop.set()

    def close(self) -> None:
        """Close the directory fd (once: the thread and the daemon's cleanup may both)."""
        with self._lock:
            fd, self.parent_fd = self.parent_fd, -1
        if fd >= 0:
            os.close(fd)

    def _run(self, paths: list[str]) -> None:
        t0 = time.monotonic()
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except OSError:
            pass
        try:
            self._read_all(paths)
        except OSError as e:  # the mount's root itself cannot be opened
            self._report(f"warm: {self.name}: {e.strerror or e}; nothing read ahead through the mount")
        else:
            self.seconds = time.monotonic() - t0
            self._report(f"warm: {self.files} recorded files ({self.bytes / 1e6:.1f} MB) read through the "
                         f"mount in {self.seconds:.2f} s, {self.failed} failed"
                         f"{' (stopped)' if self._stop.is_set() else ''}")
        finally:
            self.close()
            self.done.set()

    def _read_all(self, paths: list[str]) -> None:
        root = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.parent_fd)
        buf = bytearray(CHUNK)
        try:
            for path in paths:
                if self._stop.is_set() or self.bytes >= self.max_bytes:
                    break
                try:
                    fd = os.open(path, OPEN_FLAGS, dir_fd=root)
                except OSError:
                    self.failed += 1
                    continue
                try:
                    while n := os.readv(fd, [buf]):
                        self.bytes += n
                    self.files += 1
                except OSError:  # EIO: a file the guard refused (and logged)
                    self.failed += 1
                finally:
                    os.close(fd)
        finally:
            os.close(root)
