"""The patched pyfuse3's wait for the next request in C (docs/view.md, "What a
request costs"): requests that stream are answered without a pass through
trio's event loop each, yet trio's other work — a timer, a thread's result, a
signal — still runs on time, and the view unmounts while idle and under load.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pyfuse3
import pytest

from tests.fuse_floor import floor_paths, mounted_floor
from tests.prereq import require_fuse
from tests.test_mount import MOUNT_TIMEOUT, REPO, _dead_mount, _requests
from tests.test_view_lifecycle import mountpoint, start, store  # noqa: F401 (fixtures)
from usrview.config import DISPATCH_SPIN_US

#: A client of a mount: isatty (one IOCTL each) and getxattr ATTR of PATHS
#: (one GETXATTR each: the kernel caches none) for SECONDS or until the mount
#: goes; prints the count.
HAMMER = """
import os, sys, time
seconds, attr, paths = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
fd = os.open(paths[0], os.O_RDONLY)
end, n = time.monotonic() + seconds, 0
try:
    while time.monotonic() < end:
        for p in paths:
            os.isatty(fd)
            try:
                os.getxattr(p, attr)
            except OSError as e:
                if e.errno != 61:
                    raise
            n += 2
except OSError as e:
    print(e, file=sys.stderr)  # the mount went
print(n, flush=True)
"""

#: The longest trio's other work may wait while requests stream (the dispatch
#: keeps it waiting 10 ms at most; the rest is a loaded machine's noise).
LATE = 0.25


def hammer(seconds: float, paths: list[str], attr: str = "user.none") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HAMMER, str(seconds), attr, *paths], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def finish(clients: list[subprocess.Popen], timeout: float = 30) -> list[int]:
    counts = []
    for c in clients:
        try:
            out, _ = c.communicate(timeout=timeout)
        finally:
            if c.poll() is None:
                c.kill()
                c.wait()
        counts.append(int(out.split()[-1]) if out.split() else 0)
    return counts


@pytest.mark.parametrize("value", ["-5", "abc", "2e6"])
def test_bad_spin_is_refused(value, tmp_path):
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "mount", "--spin-us", value, str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"usrview: error: argument --spin-us: not a number of microseconds from 0 to 1000000: {value!r}")
    assert list(tmp_path.iterdir()) == []


def test_trio_stays_responsive_while_requests_stream(tmp_path):
    require_fuse()
    if "c_wait" not in getattr(pyfuse3, "DISPATCH_FEATURES", ()):
        pytest.skip("pyfuse3 without the c_wait dispatch (run .ci/setup)")
    mnt, probe = tmp_path / "mnt", tmp_path / "probe.json"
    mnt.mkdir()
    clients = []
    try:
        with mounted_floor(mnt, probe=probe):
            files = floor_paths(str(mnt))[1]
            # First a client whose handler waits for a thread (a second task
            # reads requests meanwhile), then two at once (requests queued
            # while another is answered), then one alone (each request finds
            # /dev/fuse empty).
            requests = 0
            for phase in ([(0.5, [files[0]], "user.suspend")], [(2, files[1:3]), (2, files[3:5])],
                          [(1.5, [files[5]])]):
                clients = [hammer(*args) for args in phase]
                requests += sum(finish(clients))
    finally:
        finish(clients)
        mnt.rmdir()
    seen = json.loads(probe.read_text())
    assert requests > 2000
    # The timer fired all along, on time, and the threads' results came back.
    assert len(seen["timer_late_s"]) > 100, seen["timer_late_s"]
    assert max(seen["timer_late_s"]) < LATE, sorted(seen["timer_late_s"])[-5:]
    assert len(seen["thread_s"]) > 100
    assert max(seen["thread_s"]) < LATE, sorted(seen["thread_s"])[-5:]
    # Yet most requests cost no wait in trio's loop (without the wait in C,
    # every request that finds /dev/fuse empty costs one).
    assert seen["io_waits"] < requests / 4, (seen["io_waits"], requests)


def _stop_within(d, seconds: float) -> None:
    t = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    try:
        d.proc.wait(timeout=MOUNT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    took = time.monotonic() - t
    assert d.proc.returncode == 0 and took < seconds, (d.proc.returncode, took, d.log()[-2000:])


def test_view_unmounts_right_after_a_request(store, gpg_key, mountpoint, tmp_path):  # noqa: F811
    mnt, daemons = mountpoint
    d = start(store, gpg_key, mnt, daemons, tmp_path / "mount.log", "-v")
    if "c_wait" in getattr(pyfuse3, "DISPATCH_FEATURES", ()):
        assert ("the next request waited for in C while trio is idle (10 ms at most, "
                f"polled {DISPATCH_SPIN_US:g} µs") in d.log()
    fd = os.open(mnt / "share/life/data", os.O_RDONLY)
    try:
        finish([hammer(1, [str(mnt / "share/life/data")])])
        os.isatty(fd)  # answered: the daemon waits for the next request in C now
        _stop_within(d, 5)
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: the daemon is gone
            os.close(fd)
    assert not os.path.ismount(mnt) and not _dead_mount(mnt)
    assert "SIGTERM: unmounting" in d.log() and "Traceback" not in d.log()


def test_view_unmounts_under_load(store, gpg_key, mountpoint, tmp_path):  # noqa: F811
    mnt, daemons = mountpoint
    paths = [str(mnt / "share/life/data"), str(mnt / "bin/life")]
    for how in ("SIGTERM", "fusermount3 -u -z"):
        d = start(store, gpg_key, mnt, daemons, tmp_path / f"mount-{how[0]}.log", "-v", "--spin-us", "0")
        if "c_wait" in getattr(pyfuse3, "DISPATCH_FEATURES", ()):
            assert "polled 0 µs before sleeping" in d.log()
        clients = [hammer(60, paths), hammer(60, paths[::-1])]
        try:
            time.sleep(1)
            assert all(c.poll() is None for c in clients)
            if how == "SIGTERM":
                _stop_within(d, 10)
            else:
                # The mount goes at once; the connection when its last open file is
                # closed: the clients end when they find the mount gone.
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=True, cwd=REPO)
                counts = finish(clients, timeout=20)
                d.proc.wait(timeout=10)
                assert d.proc.returncode == 0, d.log()[-2000:]
                assert min(counts) > 0
        finally:
            finish(clients, timeout=20)
        assert not os.path.ismount(mnt) and not _dead_mount(mnt), how


def test_spin_only_within_a_burst(store, gpg_key, mountpoint, tmp_path):  # noqa: F811
    # The busy-poll after an answer is for a stream of requests (PID 1 loading
    # its units, a program starting): a request that comes alone costs no spin.
    if "burst_spin" not in getattr(pyfuse3, "DISPATCH_FEATURES", ()):
        pytest.skip("pyfuse3 without the burst_spin dispatch (run .ci/setup)")
    mnt, daemons = mountpoint
    d = start(store, gpg_key, mnt, daemons, tmp_path / "mount.log", "-v", "--spin-us", "5000")
    assert "polled 5000 µs before sleeping within a burst of requests" in d.log()
    path = str(mnt / "share/life/data")
    fd = os.open(path, os.O_RDONLY)
    try:
        before = _requests(d, "dispatch: ")
        for _ in range(40):  # alone: 50 ms apart, ten times the spin
            os.isatty(fd)
            time.sleep(0.05)
        alone = _requests(d, "dispatch: ")
        finish([hammer(1, [path])])  # a stream: back to back
        stream = _requests(d, "dispatch: ")
    finally:
        os.close(fd)

    def delta(a, b):
        return {k: b[k] - a[k] for k in b}

    alone, stream = delta(before, alone), delta(alone, stream)
    # Each of the 40 isatty was waited for (in C or through trio) and almost
    # none found the daemon polling; in the stream most waits polled (on a
    # loaded machine the client is now and then descheduled longer than the spin).
    assert alone["c_wait_spins"] <= 3, alone
    assert stream["c_waits"] > 100, stream
    assert stream["c_wait_spins"] > 0.6 * stream["c_waits"], stream


def test_ioctls_are_answered_while_python_holds_the_gil(tmp_path, monkeypatch):
    # A thread of the daemon runs Python code (it holds the GIL but for the
    # interpreter's switches every 5 ms): the ioctls that stream meanwhile --
    # PID 1's isatty of every unit file it reads at boot -- are answered in C
    # without the GIL, each in microseconds, not after a wait for the GIL.
    require_fuse()
    if "c_ioctl" not in getattr(pyfuse3, "DISPATCH_FEATURES", ()):
        pytest.skip("pyfuse3 without the c_ioctl dispatch (run .ci/setup)")
    monkeypatch.setenv("FLOOR_GIL_HOG", "1")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        with mounted_floor(mnt):
            fd = os.open(floor_paths(str(mnt))[1][0], os.O_RDONLY)
            try:
                took = []
                for _ in range(1000):
                    t = time.perf_counter()
                    os.isatty(fd)
                    took.append(time.perf_counter() - t)
                    time.sleep(0.0002)  # the caller's own work: the busy thread takes the GIL
            finally:
                os.close(fd)
    finally:
        mnt.rmdir()
    took.sort()
    # Through the GIL each waited for the busy thread's switch: 5.2 ms (median,
    # pyfuse3 without c_ioctl), against 12 µs answered in C.
    assert took[len(took) // 2] < 1e-3, took[len(took) // 2]
