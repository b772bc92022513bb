"""A diagnostic: where the serving thread's CPU goes (``usrview.profile`` at boot,
docs/boot.md).

:class:`ServingProfile` runs the interpreter's deterministic profiler
(``_lsprof``, what ``cProfile`` is made of, imported before serving: nothing is
imported once the view serves) over the thread that serves, timed by that
thread's CPU clock, so the other threads' work and the waits for requests are
not counted.  :meth:`ServingProfile.lines` summarizes it as text lines, for the
log: the functions with the most CPU of their own, then with the most CPU
beneath them.  Profiling slows every Python call: the figures rank the costs,
their sum is more than an unprofiled boot's.
"""

from __future__ import annotations

import _lsprof
import os
import time

#: Functions listed per ranking.
TOP = 30
#: The module of the request handlers, whose every function's calls are listed.
HANDLERS = os.path.join("usrview", "view", "fs.py")


def _where(code) -> str:
    if isinstance(code, str):  # a built-in: "<built-in method ...>"
        return code
    path = code.co_filename
    parts = path.split(os.sep)
    short = os.sep.join(parts[-2:]) if len(parts) > 1 else path
    return f"{short}:{code.co_firstlineno}({code.co_name})"


class ServingProfile:
    """The profiler of one thread: :meth:`enable` in the thread to profile."""

    def __init__(self):
        self._profiler = _lsprof.Profiler(time.thread_time)

    def enable(self) -> None:
        self._profiler.enable(subcalls=False, builtins=True)

    def disable(self) -> None:
        self._profiler.disable()

    def lines(self, top: int = TOP) -> list[str]:
        """``profile: …`` lines: the CPU counted, the ``top`` functions by own CPU and
        by CPU beneath them (seconds of the thread's CPU clock, calls), then the
        request handlers' calls.
        Call it in the profiled thread."""
        self._profiler.disable()
        try:
            entries = self._profiler.getstats()
        finally:
            self._profiler.enable(subcalls=False, builtins=True)
        total = sum(e.inlinetime for e in entries)
        out = [f"profile: serving thread {total:.2f} s of CPU counted in {len(entries)} functions"]
        for title, key, value in (("own", lambda e: e.inlinetime, lambda e: e.inlinetime),
                                  ("beneath", lambda e: e.totaltime, lambda e: e.totaltime)):
            for e in sorted(entries, key=key, reverse=True)[:top]:
                out.append(f"profile {title}: {value(e):.3f} s {e.callcount} calls {_where(e.code)}")
        # every request handler's calls (those the request count leaves out too: forget)
        handlers = [e for e in entries if not isinstance(e.code, str) and e.code.co_filename.endswith(HANDLERS)]
        out.append("profile handlers: " + ", ".join(
            f"{e.code.co_name} {e.callcount} ({e.totaltime:.2f} s)"
            for e in sorted(handlers, key=lambda e: -e.callcount) if e.code.co_name != "wrapper"))
        return out
