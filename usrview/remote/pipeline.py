"""Pull's pipeline: the packages' bytes fetched by a process of its own while pull imports them.

Fetching (HTTP, hashing, writing ``STORE/downloads/``) and importing (decompressing,
hashing, laying out files) are both busy in Python: in two threads of one process
they take turns on the interpreter lock, and a pull took as long as a fetch and a
deploy one after the other.  So the fetching runs in a child process, forked once
the headers are checked (:class:`Pipeline`): a trio run of
:meth:`usrview.remote.fetch.Downloader.get` for each package, several at a time in
the index's order, each result -- the verified rpm's path, or the package to
assemble from its files -- sent back on a pipe as soon as it is there; the importer
waits for each in that order (:meth:`Pipeline.wait`).

The child dies with its parent (``PR_SET_PDEATHSIG``): a pull killed with -9
leaves no process behind that still holds the downloads' lock.  What it fetched
stays in ``STORE/downloads/`` for the next pull; an error ends it and is sent
back, to be raised where the importer waits.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path

import trio

from usrview.errors import OperationalError
from usrview.remote.fetch import Downloader
from usrview.remote.http import Fetcher
from usrview.remote.index import IndexEntry
from usrview.store.assemble import AssembledPackage
from verifier.header import Package

#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def unwrap(group: BaseException) -> BaseException:
    """The first error of a trio task group (one line for the user, not a tree)."""
    while isinstance(group, BaseExceptionGroup) and group.exceptions:
        group = group.exceptions[0]
    return group


class Pipeline:
    """The packages' bytes fetched in a child process (see the module).

    Attributes: downloader, pending ((entry, header) of each package to fetch, in order),
    ready (pkgid -> what to import)."""

    def __init__(self, downloader: Downloader, pending: list[tuple[IndexEntry, Package]],
                 make_fetcher: Callable[[], Fetcher], jobs: int):
        self.downloader, self.pending = downloader, pending
        self.make_fetcher, self.jobs = make_fetcher, max(1, jobs)
        self.ready: dict[str, Path | AssembledPackage] = {}
        self._error: BaseException | None = None
        self._ended = False
        context = multiprocessing.get_context("fork")
        self._conn, self._child_conn = context.Pipe(duplex=False)
        self._process = context.Process(target=self._child, name="usrview-pull-fetch", daemon=True)

    def start(self) -> None:
        if not self.pending:
            self._ended = True
            return
        self._process.start()
        self._child_conn.close()

    # -- the child -----------------------------------------------------------------------

    def _child(self) -> None:
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before prctl
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        self._conn.close()
        conn = self._child_conn
        try:
            trio.run(self._main)
            message = ("done", None)
        except BaseException as e:
            error = unwrap(e)
            if isinstance(error, OSError):
                error = OperationalError(f"cannot write into {self.downloader.dir}: {error.strerror or error}")
            elif not isinstance(error, Exception):
                error = OperationalError(f"fetching ended: {type(error).__name__}")
            message = ("error", error)
        try:
            conn.send((*message, self._stats()))
        except Exception:  # an error that does not pickle: its line
            conn.send(("error", OperationalError(str(message[1])), self._stats()))
        conn.close()
        os._exit(0)

    async def _main(self) -> None:
        fetcher = self.downloader.fetcher = self.make_fetcher()
        # In the index's order, as the importer waits for them: ``jobs`` workers each take
        # the next package.  (Not a task per package behind a limiter: trio starts tasks in
        # an order of its own, and the importer would wait for the first package while the
        # last ones were fetched.)
        work = iter(self.pending)

        async def worker() -> None:
            for entry, package in work:
                what = await self.downloader.get(entry, package)
                self._child_conn.send(("ready", entry.pkgid, what))

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(min(self.jobs, len(self.pending))):
                    nursery.start_soon(worker)
        finally:
            await fetcher.aclose()

    def _stats(self) -> dict:
        d = self.downloader
        stats = {"fetched": d.fetched, "resumed": d.resumed, "received": d.received}
        if d.delta is not None:
            stats |= {"assembled": d.delta.assembled, "objects": d.delta.fetched, "fallbacks": d.delta.fallbacks}
        return stats

    # -- the parent ----------------------------------------------------------------------

    def _receive(self) -> None:
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            self._error = self._error or OperationalError("the process fetching the packages ended early")
            self._ended = True
            return
        if message[0] == "ready":
            self.ready[message[1]] = message[2]
            return
        kind, error, stats = message
        self._error, self._ended = error, True
        d = self.downloader
        d.fetched, d.resumed, d.received = stats["fetched"], stats["resumed"], stats["received"]
        if d.delta is not None and "assembled" in stats:
            d.delta.assembled, d.delta.fetched, d.delta.fallbacks = (stats["assembled"], stats["objects"],
                                                                     stats["fallbacks"])

    def wait(self, pkgid: str) -> Path | AssembledPackage:
        """What to import for ``pkgid``, once fetched; the error that stopped the fetching."""
        while pkgid not in self.ready and not self._ended:
            self._receive()
        if pkgid in self.ready:
            return self.ready[pkgid]
        raise self._error or OperationalError(f"{pkgid} was not fetched")

    def finish(self) -> None:
        """Wait for every package and for the child's account of what it did."""
        while not self._ended:
            self._receive()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """End the child (what it was fetching stays, to resume), and wait for it."""
        if self._process.pid is not None:
            if self._process.is_alive() and not self._ended:
                self._process.terminate()
            self._process.join()
        self._conn.close()
