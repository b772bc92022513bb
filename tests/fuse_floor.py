"""The per-request floor of pyfuse3 + trio on this machine, for the view benchmark.

A file system of a few lines (one directory of symlinks and empty files, every
answer a constant, entries and attributes cached for an hour, ``keep_cache``,
FLUSH answered ENOSYS) measures what a request costs before any handler does
work.  ``tests/bench_view.py`` prints it beside the view's own per-request
figures, so a reader can tell the view's overhead from the binding's.
``tests/fuse_floor.c`` serves the same tree from a libfuse low-level file
system in C: the kernel's own floor, which ``--compare`` and
tests/bench_system.py measure beside this one, the daemon woken on the
caller's CPU and on the other.

    .venv/bin/python -m tests.fuse_floor MOUNTPOINT          # serve (foreground)
    .venv/bin/python -m tests.fuse_floor --measure MOUNTPOINT  # latencies, as JSON
    .venv/bin/python -m tests.fuse_floor --compare [WORKDIR]   # this one and tests/fuse_floor.c's
    .venv/bin/python -m tests.fuse_floor --probe OUT MOUNTPOINT  # serve; OUT: trio's other work (tests)

FLOOR_DISPATCH_SPIN=SECONDS (and FLOOR_DISPATCH_WAIT) in the environment set the
patched pyfuse3's busy-poll (wait in C) for the pyfuse3 floor: ``FLOOR_DISPATCH_SPIN=0.00003
... --compare`` measures it as ``usrview mount`` runs (pyfuse3's default is no busy-poll).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: Symlinks and files in the floor file system's root.
ENTRIES = 1000


def serve(mountpoint: str, probe: str | None = None) -> None:
    """Serve the floor file system until unmounted.  ``probe``: a file that gets,
    at the unmount, what the event loop's other work saw meanwhile (:func:`_probe`)."""
    import pyfuse3
    import trio

    # FLOOR_DISPATCH_SPIN / _WAIT: the patched pyfuse3's wait in C, to measure its settings.
    for knob in ("spin", "wait"):
        if os.environ.get(f"FLOOR_DISPATCH_{knob.upper()}") and hasattr(pyfuse3, f"dispatch_{knob}"):
            setattr(pyfuse3, f"dispatch_{knob}", float(os.environ[f"FLOOR_DISPATCH_{knob.upper()}"]))
    # FLOOR_GIL_HOG=1: a thread runs Python code all along, holding the GIL but for
    # the interpreter's forced switches (every 5 ms), as a busy thread of a daemon does.
    if os.environ.get("FLOOR_GIL_HOG"):
        def hog() -> None:
            while True:
                pass

        threading.Thread(target=hog, name="gil-hog", daemon=True).start()

    class Floor(pyfuse3.Operations):
        def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            a.entry_timeout = a.attr_timeout = 3600
            if inode == pyfuse3.ROOT_INODE:
                a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
            elif inode < 2 + ENTRIES:
                a.st_mode, a.st_size = stat.S_IFLNK | 0o777, 6
            else:
                a.st_mode = stat.S_IFREG | 0o644
            return a

        async def getattr(self, inode, ctx=None):
            return self._attr(inode)

        async def lookup(self, parent, name, ctx=None):
            kind, num = name[:1], name[1:]
            if kind in (b"l", b"f") and num.isdigit() and int(num) < ENTRIES:
                return self._attr(2 + int(num) + (ENTRIES if kind == b"f" else 0))
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def readlink(self, inode, ctx=None):
            return b"target"

        async def opendir(self, inode, ctx=None):
            return inode

        async def readdir(self, fh, start, token):
            for i in range(start, 2 * ENTRIES):
                name = f"l{i}" if i < ENTRIES else f"f{i - ENTRIES}"
                if not pyfuse3.readdir_reply(token, name.encode(), self._attr(2 + i), i + 1):
                    break

        async def releasedir(self, fh):
            pass

        async def open(self, inode, flags, ctx=None):
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):
            return b""

        async def release(self, fh):
            pass

        async def flush(self, fh):
            raise pyfuse3.FUSEError(errno.ENOSYS)

        async def getxattr(self, inode, name, ctx=None):
            if name == b"user.suspend":  # a handler that waits for a thread (tests)
                await trio.to_thread.run_sync(time.sleep, 0)
            raise pyfuse3.FUSEError(errno.ENODATA)

    async def main() -> None:
        pyfuse3.init(Floor(), mountpoint, {"ro", "fsname=floor", "subtype=floor", "default_permissions"})
        try:
            if probe is None:
                await pyfuse3.main()
                return
            seen = {"timer_late_s": [], "thread_s": [], "io_waits": 0}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_probe, seen)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
            Path(probe).write_text(json.dumps(seen))
        finally:
            pyfuse3.close()

    trio.run(main)


#: Seconds the caller works outside the file system before each request of
#: "getxattr_idle_us" and "ioctl_idle_us": bench_system's execs come 0.5 ms apart (200
#: in about 100 ms), its Python imports about as far (140 files in about 67 ms).
IDLE_GAP = 500e-6
#: Requests of "getxattr_idle_us" and of "ioctl_idle_us" a round.
IDLE_REQUESTS = 200


def _busy(seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


async def _probe(seen: dict) -> None:
    """Beside the file system, in its event loop: a timer of 10 ms (how late each
    fired, ``timer_late_s``), a thread's result sent back (``thread_s``, the
    round trip of each) and the event loop's waits for I/O (``io_waits``)."""
    import trio

    class CountIOWaits(trio.abc.Instrument):
        def before_io_wait(self, timeout):
            seen["io_waits"] += 1

    trio.lowlevel.add_instrument(CountIOWaits())

    async def timer():
        while True:
            t = time.monotonic()
            await trio.sleep(0.01)
            seen["timer_late_s"].append(time.monotonic() - t - 0.01)

    async def thread():
        while True:
            t = time.monotonic()
            await trio.to_thread.run_sync(time.sleep, 0)
            seen["thread_s"].append(time.monotonic() - t)
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer)
        nursery.start_soon(thread)


def measure(links: list[str], files: list[str], rounds: int = 5) -> dict:
    """Microseconds per readlink (one request each), per open+close (OPEN and
    RELEASE), per getxattr of a name the file has not (one GETXATTR each: the
    kernel caches no answer) and per ``isatty()`` of an open file (one IOCTL)
    over warm paths, back to back; and per getxattr sent after
    :data:`IDLE_GAP` of work outside the file system ("getxattr_idle_us": the
    daemon has gone to sleep and is woken, as for the GETXATTR of
    ``security.capability`` at every exec), and per ``isatty()`` after as much
    ("ioctl_idle_us": Python asks it of each file it imports); the best of ``rounds``."""
    for p in links + files:
        os.lstat(p)
    best = dict.fromkeys(("readlink_us", "open_close_us", "getxattr_us", "ioctl_us", "getxattr_idle_us",
                          "ioctl_idle_us"), float("inf"))
    fd = os.open(files[0], os.O_RDONLY)
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            for p in links:
                os.readlink(p)
            t1 = time.perf_counter()
            for p in files:
                os.close(os.open(p, os.O_RDONLY))
            t2 = time.perf_counter()
            for p in files:
                try:
                    os.getxattr(p, "security.selinux", follow_symlinks=False)
                except OSError:
                    pass
            t3 = time.perf_counter()
            for _ in files:
                os.isatty(fd)
            t4 = time.perf_counter()
            idle = 0.0
            for p in files[:IDLE_REQUESTS]:
                _busy(IDLE_GAP)
                t5 = time.perf_counter()
                try:
                    os.getxattr(p, "security.selinux", follow_symlinks=False)
                except OSError:
                    pass
                idle += time.perf_counter() - t5
            idle_ioctl = 0.0
            for _ in files[:IDLE_REQUESTS]:
                _busy(IDLE_GAP)
                t6 = time.perf_counter()
                os.isatty(fd)
                idle_ioctl += time.perf_counter() - t6
            for key, dt in (("readlink_us", t1 - t0), ("open_close_us", t2 - t1), ("getxattr_us", t3 - t2),
                            ("ioctl_us", t4 - t3)):
                best[key] = min(best[key], dt / len(files) * 1e6)
            best["getxattr_idle_us"] = min(best["getxattr_idle_us"], idle / len(files[:IDLE_REQUESTS]) * 1e6)
            best["ioctl_idle_us"] = min(best["ioctl_idle_us"], idle_ioctl / len(files[:IDLE_REQUESTS]) * 1e6)
    finally:
        os.close(fd)
    return best


def floor_paths(mountpoint: str) -> tuple[list[str], list[str]]:
    return ([f"{mountpoint}/l{i}" for i in range(ENTRIES)], [f"{mountpoint}/f{i}" for i in range(ENTRIES)])


def view_paths(root: str, count: int = ENTRIES) -> tuple[list[str], list[str]]:
    """Up to ``count`` symlinks and regular files of a mounted tree, in walk order."""
    links, files = [], []
    for d, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            p = os.path.join(d, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode) and len(links) < count:
                links.append(p)
            elif stat.S_ISREG(st.st_mode) and len(files) < count:
                files.append(p)
        if len(links) >= count and len(files) >= count:
            break
    return links, files


class NoCFloor(Exception):
    """The C floor could not be built (no gcc, pkg-config or libfuse3-dev)."""


def build_c_floor(outdir: Path) -> Path:
    """tests/fuse_floor.c compiled into ``outdir``: the program's path."""
    exe = Path(outdir) / "fuse_floor_c"
    try:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True,
                               check=True).stdout.split()
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(Path(__file__).with_suffix(".c")), *flags],
                       capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise NoCFloor(getattr(e, "stderr", None) or str(e)) from None
    return exe


@contextlib.contextmanager
def mounted_floor(mountpoint: Path, timeout: float = 30.0, c_floor: Path | None = None, probe: Path | None = None):
    """Serve the floor file system on ``mountpoint`` in a child process (with
    ``c_floor``, a directory: tests/fuse_floor.c built there; with ``probe``, a
    file: :func:`serve`'s), yielding its pid; unmount and end it on the way out,
    on errors too."""
    cmd = ([str(build_c_floor(c_floor)), str(mountpoint)] if c_floor is not None
           else [sys.executable, "-m", "tests.fuse_floor", *(["--probe", str(probe)] if probe else []),
                 str(mountpoint)])
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"floor file system did not mount: {proc.stderr.read().decode()[-500:]}"
                                   if proc.poll() is not None else "floor file system did not mount")
            time.sleep(0.01)
        yield proc.pid
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False, stdin=subprocess.DEVNULL,
                           capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        if c_floor is not None:
            (Path(c_floor) / "fuse_floor_c").unlink(missing_ok=True)


def measure_placed(mountpoint: str, daemon_pid: int) -> dict:
    """:func:`measure` with the daemon and this process on one CPU ("same_cpu")
    and on two ("other_cpu", when there are two): a request whose daemon must
    be woken on another CPU pays that CPU's wake-up too, which on a virtual
    machine is most of its cost.  Affinities are restored afterwards."""
    cpus = sorted(os.sched_getaffinity(0))
    daemon_cpus = os.sched_getaffinity(daemon_pid)
    out = {}
    try:
        os.sched_setaffinity(daemon_pid, {cpus[0]})
        for name, cpu in (("same_cpu", cpus[0]), ("other_cpu", cpus[-1])):
            if name == "other_cpu" and len(cpus) < 2:
                break
            os.sched_setaffinity(0, {cpu})
            out[name] = measure(*floor_paths(mountpoint))
    finally:
        os.sched_setaffinity(0, cpus)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(daemon_pid, daemon_cpus)
    return out


def compare(workdir: Path) -> dict:
    """The same measures in the pyfuse3 floor and the C floor, mounted in turn,
    unplaced ("any_cpu") and placed (:func:`measure_placed`)."""
    out = {}
    mnt = Path(tempfile.mkdtemp(prefix="floor-", dir=workdir))
    try:
        for name, c_floor in (("pyfuse3", None), ("c", workdir)):
            with mounted_floor(mnt, c_floor=c_floor) as pid:
                out[name] = {"any_cpu": measure(*floor_paths(str(mnt))), **measure_placed(str(mnt), pid)}
    finally:
        mnt.rmdir()
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(*floor_paths(sys.argv[2]))))
    elif sys.argv[1:2] == ["--compare"]:
        print(json.dumps(compare(Path(sys.argv[2] if len(sys.argv) > 2 else "/var/tmp")), indent=1))
    elif sys.argv[1:2] == ["--probe"]:
        serve(sys.argv[3], probe=sys.argv[2])
    else:
        serve(sys.argv[1])
