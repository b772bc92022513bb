"""Load (issue 4 §4): 16 processes read random files through a mounted view.

Each worker opens random files of the view, drops their pages from the cache
(``POSIX_FADV_DONTNEED``, so every read reaches the daemon instead of the
page cache ``keep_cache`` keeps), reads them whole and compares the SHA-256
with the digest ``rpm -qp --dump`` lists for the file (an oracle not written
here); it also lists directories and stats files.  The run lasts
``$USRVIEW_LOAD_SECONDS`` seconds (default :data:`DEFAULT_SECONDS` for CI; the
issue's full run is 60).  It passes when no worker saw an error or a wrong
byte, none hung (each must finish within the duration plus
:data:`HANG_GRACE` seconds) and the daemon's VmRSS grew by less than
:data:`RSS_GROWTH_LIMIT` between the warm-up and the end.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prereq import require_fuse
from tests.rpmbuild import FileSpec, rpm_dump
from tests.test_mount import REPO
from tests.test_view_lifecycle import mountpoint, start  # noqa: F401  (fixture)
from tests.viewstore import deploy_store

pytestmark = pytest.mark.slow

WORKERS = 16
DEFAULT_SECONDS = 20
SECONDS_ENV = "USRVIEW_LOAD_SECONDS"
#: A worker that has not finished this long after the duration hangs.
HANG_GRACE = 60
#: Allowed growth of the daemon's resident memory over the run.
RSS_GROWTH_LIMIT = 50 << 20
PACKAGES = 4
FILES_PER_PACKAGE = 60

WORKER = r"""
import hashlib, json, os, random, sys, time
manifest, root, seconds, seed = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
files = sorted(manifest)
dirs = sorted({os.path.dirname(p) for p in files})
deadline = time.monotonic() + seconds
reads = nbytes = 0
errors = []
while time.monotonic() < deadline and len(errors) < 10:
    path = rng.choice(files)
    full = os.path.join(root, path)
    try:
        if rng.random() < 0.1:
            d = os.path.join(root, rng.choice(dirs))
            for name in os.listdir(d):
                os.lstat(os.path.join(d, name))
        fd = os.open(full, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            h = hashlib.sha256()
            while True:
                chunk = os.read(fd, rng.choice((4096, 65536, 1 << 20)))
                if not chunk:
                    break
                h.update(chunk)
                nbytes += len(chunk)
        finally:
            os.close(fd)
        reads += 1
        if h.hexdigest() != manifest[path]:
            errors.append(f"{path}: sha256 {h.hexdigest()}, expected {manifest[path]}")
    except OSError as e:
        errors.append(f"{path}: {e}")
print(json.dumps({"reads": reads, "bytes": nbytes, "errors": errors}))
"""


def _files(pkg: int) -> list[FileSpec]:
    rng = random.Random(pkg)
    files = [FileSpec(f"/usr/lib/load{pkg}", kind="dir")]
    for i in range(FILES_PER_PACKAGE):
        size = rng.choice((0, 1, 100, 4095, 4096, 4097, 65536, 100_000, 300_000))
        files.append(FileSpec(f"/usr/lib/load{pkg}/d{i % 6}/f{i}", content=rng.randbytes(size)))
    # One larger file per package: reads of it interleave with the small ones.
    files.append(FileSpec(f"/usr/lib/load{pkg}/big", content=rng.randbytes(4 << 20)))
    return files


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_sixteen_readers(rpm_packages, gpg_key, mountpoint, tmp_path):  # noqa: F811
    require_fuse()
    seconds = float(os.environ.get(SECONDS_ENV, DEFAULT_SECONDS))
    print(f"load: {WORKERS} workers for {seconds:g} s (${SECONDS_ENV}; the issue's full run is 60)")
    mnt, daemons = mountpoint
    rpms = [rpm_packages(f"load{p}", files=_files(p)) for p in range(PACKAGES)]
    manifest = {}
    for rpm in rpms:
        for line in rpm_dump(rpm):
            if line.path.startswith("/usr/") and line.mode & 0o170000 == 0o100000:
                manifest[line.path[len("/usr/"):]] = line.digest
    assert len(manifest) == PACKAGES * (FILES_PER_PACKAGE + 1)
    store, _ = deploy_store(tmp_path / "store", rpms, gpg_key)
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    daemon = start(store, gpg_key, mnt, daemons, tmp_path / "mount.log")

    # Warm-up: every file once, so the verification cache is full before RSS is taken.
    for path in manifest:
        (mnt / path).read_bytes()
    rss_before = _rss(daemon.proc.pid)

    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(manifest_path), str(mnt), str(seconds),
                               str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for seed in range(1, WORKERS + 1)]
    results = []
    try:
        for p in procs:
            remaining = max(1.0, t0 + seconds + HANG_GRACE - time.monotonic())
            out, err = p.communicate(timeout=remaining)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a reader hung: not done {HANG_GRACE} s after the {seconds:g} s run")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - t0
    rss_after = _rss(daemon.proc.pid)

    errors = [e for r in results for e in r["errors"]]
    assert not errors, "\n".join(errors[:20])
    reads = sum(r["reads"] for r in results)
    nbytes = sum(r["bytes"] for r in results)
    print(f"load: {reads} reads, {nbytes / 1e6:.0f} MB in {elapsed:.1f} s "
          f"({reads / elapsed:.0f} opens/s, {nbytes / elapsed / 1e6:.0f} MB/s); "
          f"daemon VmRSS {rss_before >> 20} MiB -> {rss_after >> 20} MiB")
    assert all(r["reads"] > 0 for r in results)
    assert rss_after - rss_before < RSS_GROWTH_LIMIT
    # The daemon survived and answers.
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.log() and "ERROR" not in daemon.log()
