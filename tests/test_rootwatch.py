"""The initrd daemon's priority raised at the root's mount (usrview/boot/rootwatch.py).

The unit starts the daemon at nice 5 and names /sysroot in USRVIEW_ROOT_WATCH; the
moment something is mounted there, the daemon's main thread runs at SERVING_NICE --
also while it is still busy importing.  Here a child plays the daemon (busy in a loop,
as its imports keep it) and a tmpfs plays the root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usrview.boot import rootwatch

REPO = Path(__file__).resolve().parents[1]

#: The daemon's start: nice 5, the watch started first, then busy until its nice changes.
CHILD = r"""
import os, sys, time
os.setpriority(os.PRIO_PROCESS, 0, 5)
from usrview.boot import rootwatch
rootwatch.start(sys.argv[1])
print("watching", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline and os.getpriority(os.PRIO_PROCESS, 0) != rootwatch.SERVING_NICE:
    pass
nice = os.getpriority(os.PRIO_PROCESS, 0)
raised = rootwatch.stop()
import threading
print(nice, raised is not None, threading.active_count(), flush=True)
"""


def _thread_nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[16])


def _child(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/")
    assert proc.stdout.readline().strip() == "watching"
    return proc


@pytest.mark.privileged
def test_priority_raised_the_moment_the_root_is_mounted(tmp_path):
    root = tmp_path / "sysroot"
    root.mkdir()
    proc = _child(root, 60)
    try:
        time.sleep(0.5)
        assert proc.poll() is None and _thread_nice(proc.pid) == 5  # not mounted: the unit's nice
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "root", str(root)], check=True)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if rootwatch.is_mount_point(root):
            subprocess.run(["umount", str(root)], check=True)
    nice, raised, threads = out.split()
    # raised while busy; the watch's thread gone once stopped (the daemon forks after)
    assert (int(nice), raised, int(threads)) == (rootwatch.SERVING_NICE, "True", 1), out


def test_stopped_before_the_root_the_priority_stays(tmp_path):
    root = tmp_path / "sysroot"
    root.mkdir()
    proc = _child(root, 0.3)
    out, _ = proc.communicate(timeout=30)
    nice, raised, threads = out.split()
    assert (int(nice), raised, int(threads)) == (5, "False", 1), out


def test_mount_table_paths_unescaped(tmp_path):
    # a mount point whose name has a space is written "\040" in the mount table
    assert rootwatch._unescape(b"/sys\\040root\\134x") == b"/sys root\\x"
    assert rootwatch.is_mount_point("/proc") and not rootwatch.is_mount_point(tmp_path)
