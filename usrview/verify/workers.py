"""The worker pool: forked processes that check packages, then hash the
representatives of extent-sharing groups (:mod:`usrview.verify.dedupe`).

Each worker takes packages from a shared counter (the tasks are sorted largest
header first, so the workers finish together) and sends back only their
outcomes (:class:`usrview.verify.check.PackageOutcome`) -- never a file list.
The run's context (:class:`usrview.verify.context.RunContext`: keyring, cached
digests) is the worker's argument, inherited at fork: nothing large is pickled
on the way in.  Processes, not threads: two processes hash at twice the speed
of one, threads do not (FACTS.md).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import traceback
from collections.abc import Callable
from typing import Self

from usrview.errors import OperationalError
from usrview.verify import check, dedupe
from usrview.verify.context import RunContext

#: How often the parent updates the progress line while workers run (seconds).
PROGRESS_INTERVAL = 0.1


class _WorkerFailed:
    """A worker's exception, as text (sent instead of its results)."""

    def __init__(self, text: str):
        self.text = text


def _worker_main(ctx: RunContext, conn, index: int, tasks: list, counter, progress) -> None:
    """A worker's life: packages from the shared counter until none is left, their
    outcomes to the parent; then the group representatives the parent sends, their
    digests back.  Never returns (os._exit)."""
    code = 1
    try:
        # the parent decides when to stop: a worker must not run the parent's handlers
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # what was inherited stays put: no collection walks it (nor copies its pages)
        gc.freeze()
        ctx.limit_reads()
        outcomes = []
        while True:
            with counter.get_lock():
                i = counter.value
                counter.value = i + 1
            if i >= len(tasks):
                break
            out = check.check_package(ctx, *tasks[i])
            outcomes.append(out)
            progress[3 * index] += 1
            progress[3 * index + 1] += out.stats.files
            progress[3 * index + 2] += out.stats.hashed_bytes
        conn.send(outcomes)
        groups = conn.recv()
        if groups is not None:
            conn.send([(key, dedupe.hash_group(ctx, *job)) for key, job in groups])
        code = 0
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        with contextlib.suppress(BaseException):   # else the parent sees the pipe close
            conn.send(_WorkerFailed(traceback.format_exc()))
    finally:
        os._exit(code)


class Workers:
    """``n`` forked worker processes (see _worker_main) checking ``tasks`` (pkgid,
    imported unsigned) with ``ctx``, and the parent's side of them."""

    def __init__(self, n: int, ctx: RunContext, tasks: list):
        mp = multiprocessing.get_context("fork")
        self.counter = mp.Value("q", 0)
        self.progress = mp.RawArray("q", 3 * n)
        self.procs: list = []
        self.conns: list = []
        try:
            for k in range(n):
                mine, theirs = mp.Pipe()
                p = mp.Process(target=_worker_main, args=(ctx, theirs, k, tasks, self.counter, self.progress),
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

    def packages(self, tick: Callable[[int, int, int], None] | None = None) -> list[check.PackageOutcome]:
        """Every package's outcome (phase 1).  ``tick(packages, files, bytes)`` is called
        with the counts so far, every PROGRESS_INTERVAL."""
        def counts():
            p = self.progress
            tick(sum(p[0::3]), sum(p[1::3]), sum(p[2::3]))
        return [out for outs in self._gather(counts if tick else None) for out in outs]

    def hash_groups(self, jobs: list[list]) -> list:
        """Phase 2: worker k hashes jobs[k] (a list of (key, dedupe.hash_group's arguments
        after the context))."""
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


def split_by_size(jobs: list[tuple[int, object]], n: int) -> list[list]:
    """``n`` lists of (size, job) pairs' jobs, balanced by size (largest first, each to
    the least loaded list)."""
    bins: list[list] = [[] for _ in range(n)]
    load = [0] * n
    for size, job in sorted(jobs, key=lambda j: -j[0]):
        k = load.index(min(load))
        bins[k].append(job)
        load[k] += size
    return bins
