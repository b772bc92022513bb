"""The full check of a compiled tree (docs/trust-chain.md "The compiled tree", 4):
right after a mount, a child process checks every header's signature, compiles
the image again from the headers and compares the whole file with the one the
mount serves; a mismatch, a header refused or any failure of the check fails
the served tree (every request answers EIO).  :func:`start_full_check` is
what a mount calls; :func:`full_check` is the check itself.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from usrview.errors import OperationalError
from usrview.store import Store
from usrview.view import compiled
from usrview.view.compiled import ENTRY, HEAD, PKG
from usrview.view.loader import load_headers

log = logging.getLogger(__name__)

#: Niceness of the full check's process: serving comes first.
CHECK_NICENESS = 10


def full_check(store: Store, image, keyring, buf) -> str | None:
    """Compile ``image`` again from its headers and compare with ``buf``: None when
    equal, else where they differ or why a header is refused (the check a mount starts)."""
    return _full_check(store, image, keyring, buf)[0]


def _full_check(store: Store, image, keyring, buf) -> tuple[str | None, list[str]]:
    """:func:`full_check`, and the packages only the legacy signature policy accepts."""
    try:
        loaded = load_headers(store, image, keyring)
        return difference(compiled.compile_loaded(loaded), buf), loaded.legacy
    except OperationalError as e:
        return str(e), []


def difference(data: bytes, buf) -> str | None:
    """Where ``buf`` differs from ``data``, what the headers compile to; None when equal."""
    with memoryview(buf) as view:
        if view == data:
            return None
    if len(data) != len(buf):
        return f"{len(buf)} bytes, the headers compile to {len(data)}"
    at = next(i for i in range(len(data)) if data[i] != buf[i])
    return f"differs from what the headers compile to at byte {at} ({part_at(data, at)})"


def part_at(data: bytes, at: int) -> str:
    """Which part of a compiled tree (as the headers compile it) holds byte ``at``."""
    _, _, npkgs, _, _, _, entries_off, names_off, blocks_off, _ = HEAD.unpack_from(data, 0)
    if at < HEAD.size:
        return "file head"
    if at < entries_off:
        return f"package table, package {(at - HEAD.size) // PKG.size}"
    if at < names_off:
        return f"entry {(at - entries_off) // ENTRY.size + 1}"
    if at < blocks_off:
        return "names"
    for i in range(npkgs):
        _, block_off, block_len, _, _, _ = PKG.unpack_from(data, HEAD.size + i * PKG.size)
        if block_off <= at < block_off + block_len:
            return f"block of package {i}"
    return "end"


def _daemon_ends_within(w: int, seconds: float) -> bool:
    """Wait ``seconds`` on the write end ``w`` of the verdict's pipe; True as soon as
    its read end is closed (the daemon ended: poll reports POLLERR on a pipe's write
    end then)."""
    poller = select.poll()
    poller.register(w, 0)
    return bool(poller.poll(seconds * 1000))


def start_full_check(tree, store: Store, image, keyring, *, confined: bool = False,
                     on_failure: Callable[[str], None] | None = None,
                     nice: int = CHECK_NICENESS,
                     on_proven: Callable[[str], None] | None = None,
                     delay: float = 0.0) -> FullCheck | None:
    """Start the full check of ``tree`` in a child process (forked: call it before
    any thread or the FUSE session starts); a thread waits for its verdict and
    fails the tree on a mismatch, then calls ``on_failure`` with why.  None when
    the tree needs no check.

    ``confined`` (the initrd's daemon, whose paths lead nowhere after switch-root):
    the child changes its root to the store's directory, through a directory fd
    opened here, before it reads anything, so that it reads the store by paths
    within that fd whenever it runs; its modules are imported already (the
    mount checked the headers' signatures with them).

    ``nice``: the child's niceness, absolute (never below the daemon's own: a
    daemon serving at a raised priority does not hand it to the check).
    ``on_proven`` is called with a line saying how long the check took when it passed.
    ``delay``: seconds the child waits before it reads anything (at boot: until the
    boot's busiest seconds are over; what is served meanwhile is checked at its
    package's first use)."""
    if tree.proven:
        return None
    root_fd = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if confined else None
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: check, answer, exit without running the parent's cleanups
        status = 0
        try:
            os.close(r)
            gc.enable()  # the daemon's collector is paused until it serves (usrview.cli.main)
            if delay > 0 and _daemon_ends_within(w, delay):
                os._exit(0)  # nobody is left to tell, and the store must not stay busy
            with contextlib.suppress(OSError):  # not allowed: checked at the daemon's priority
                os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
            if root_fd is not None:
                os.fchdir(root_fd)
                os.chroot(".")
                store = Store(Path("/"))
            # the mount logged the unsigned packages already; the legacy ones are answered
            logging.getLogger(load_headers.__module__).setLevel(logging.ERROR)
            reason, legacy = _full_check(store, image, keyring, tree.buf)
            os.write(w, b"\n".join([b"ok", *map(os.fsencode, legacy)]) if reason is None
                     else os.fsencode(reason)[:4000])
        except BaseException as e:  # noqa: BLE001 -- reported to the parent, which fails closed
            os.write(w, os.fsencode(f"the check failed: {e}")[:4000])
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    if root_fd is not None:
        os.close(root_fd)
    log.info("image %s: full check of the compiled tree started (process %d%s)", image.id, pid,
             f", reading in {delay:g} s" if delay > 0 else "")

    def wait() -> None:
        with os.fdopen(r, "rb") as f:
            answer = f.read()
        os.waitpid(pid, 0)
        if thread.stopped:  # ended with the view: no verdict
            return
        verdict, *legacy = answer.split(b"\n")
        if verdict == b"ok":
            tree.proven = True
            legacy = sorted(map(os.fsdecode, legacy))
            if legacy:
                log.warning("image %s serves packages only the legacy signature policy accepts (keys bound "
                            "by SHA-1): %s", image.id, ", ".join(legacy))
            took = time.monotonic() - t0 - delay
            done = f"image {image.id}: compiled tree checked against the headers in {took:.2f} s"
            log.info("%s", done)
            if on_proven is not None:
                on_proven(f"{done} ({time.monotonic():.2f} s after the kernel started)")
        else:
            reason = f"image {image.id}: the full check of the compiled tree: {os.fsdecode(answer) or 'no answer'}"
            tree.fail(reason)
            if on_failure is not None:
                on_failure(reason)

    thread = FullCheck(pid, wait)
    thread.start()
    return thread


class FullCheck(threading.Thread):
    """The thread that waits for a full check's child (``pid``) and acts on its verdict."""

    def __init__(self, pid: int, wait: Callable[[], None]):
        super().__init__(target=wait, name="usrview-tree-check", daemon=True)
        self.pid = pid
        self.stopped = False

    def stop(self) -> None:
        """End the child if it still runs, without a verdict (the view is gone: nobody
        is left to tell, and a child confined to the store must not keep its file
        system busy past the daemon), and reap it."""
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.join(10)
