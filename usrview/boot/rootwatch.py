"""The initrd daemon's priority raised the moment the root file system is mounted.

The unit starts the daemon at nice 5: until the root is mounted, its start (the
interpreter and its imports, about 2 s of CPU under TCG) shares the CPUs with the
initrd's search for the root, which should have the larger part.  From the root's
mount on, the boot waits for the daemon, whose imports may not be done yet on a slow
machine.  So ``python -m usrview.cli`` starts :func:`start` before it imports anything
else when ``USRVIEW_ROOT_WATCH`` names the root's mount point (the unit sets it): a
thread waits on the mount table (the kernel signals every change) and, once that path
is a mount point, sets the main thread's nice value to :data:`SERVING_NICE` -- while
its imports run, if they still do.  ``initrd-mount`` calls :func:`stop` once it has
waited for the root itself, before it starts any other thread or forks.

Standard library only: it runs before the daemon's imports.
"""

from __future__ import annotations

import os
import select
import threading
import time

#: The mount table: readable for what is mounted, pollable for changes.
MOUNTINFO = "/proc/self/mountinfo"
#: Milliseconds between looks at the mount table when no change was signalled.
MOUNT_POLL_MS = 1000
#: The daemon's nice value once the root is mounted: from then on the boot waits
#: for it (the headers, the tree, then every access to /usr).  The unit starts it
#: at nice 5: until the root is mounted it shares the CPUs with the initrd's own
#: work (finding and mounting the root), which -10 would starve.
SERVING_NICE = -10


def mounted_device(target: bytes) -> str | None:
    """``MAJOR:MINOR`` of the last mount on ``target`` (an absolute path as the mount
    table writes it, unescaped), by the mount table; None when nothing is mounted there."""
    found = None
    with open(MOUNTINFO, "rb") as f:
        for line in f:
            fields = line.split(b" ", 5)
            if len(fields) > 4 and _unescape(fields[4]) == target:
                found = fields[2].decode()
    return found


def _unescape(field: bytes) -> bytes:
    """A mount table path: space, tab, newline and backslash written as octal escapes."""
    if b"\\" not in field:
        return field
    return (field.replace(b"\\040", b" ").replace(b"\\011", b"\t").replace(b"\\012", b"\n")
            .replace(b"\\134", b"\\"))


def is_mount_point(path: str | os.PathLike) -> bool:
    """Whether ``path`` is where something is mounted (bind mounts too), by the mount table."""
    return mounted_device(os.fsencode(os.path.realpath(path))) is not None


def wait_until_mounted(path: str | os.PathLike, stop_fd: int | None = None) -> bool:
    """Return True once ``path`` is a mount point, False when ``stop_fd`` became
    readable first.  The mount table is polled, and looked at every
    :data:`MOUNT_POLL_MS` regardless."""
    fd = os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        if stop_fd is not None:
            poller.register(stop_fd, select.POLLIN)
        while not is_mount_point(path):
            if any(ready == stop_fd for ready, _ in poller.poll(MOUNT_POLL_MS)):
                return False
        return True
    finally:
        os.close(fd)


class RootWatch:
    """The thread of :func:`start`.  ``raised_at``: time.monotonic() when it set the
    main thread's priority (None until then, or when the setting was refused)."""

    def __init__(self, path: str, nice: int = SERVING_NICE):
        self.path = path
        self.nice = nice
        self.raised_at: float | None = None
        self._tid = threading.get_native_id()  # the calling (main) thread's
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="usrview-root-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if wait_until_mounted(self.path, self._stop_r):
                os.setpriority(os.PRIO_PROCESS, self._tid, self.nice)
                self.raised_at = time.monotonic()
        except OSError:  # no mount table, or the priority not ours to raise: the main thread goes on
            pass

    def stop(self) -> float | None:
        """End the thread and wait for it; :attr:`raised_at`."""
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)
        return self.raised_at


#: The watch :func:`start` started (None when none runs).
active: RootWatch | None = None


def start(path: str) -> RootWatch:
    """Watch ``path`` from the calling thread (the daemon's main thread)."""
    global active
    active = RootWatch(path)
    return active


def stop() -> float | None:
    """Stop the active watch, if any; when it raised the priority (time.monotonic()), or None."""
    global active
    watch, active = active, None
    return watch.stop() if watch is not None else None
