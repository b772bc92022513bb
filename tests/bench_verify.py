"""Benchmark: ``usrview verify`` beside ``rpm --root R -Va`` over the same package set.

Over the package set of tests/pkgset.py (built first when ``--pkgset`` holds none),
on one fresh btrfs on a loop device: the set-v1 rpms are deployed into a store
(usrview deploy: reflinks, read-only subvolumes) and installed with
``rpm --root R -i`` beside it.  Then, in one run, each measured cold (after
``echo 3 > /proc/sys/vm/drop_caches``) and warm:

- ``rpm --root R -Va``;
- ``usrview verify --full`` (every file hashed, the cache ignored);
- ``usrview verify`` over the unchanged store (the cache filled by the run before).

Warm figures are the best of WARM_RUNS runs, each right after the same run.
Each verify figure is of ``verify.run`` in this process (the issue's comparison);
beside it, the same check as a ``usrview verify`` process end to end (``cli``),
which adds the interpreter's start-up and imports.  The issue's targets are printed beside the figures: full verify warm at most
half of rpm -Va warm, cold no slower than rpm -Va cold; re-verify at most 1/50 of
rpm -Va warm.  Also set-v2 is deployed (most packages shared with set-v1 by
reflink) and ``verify --full --image previous`` then current are timed, to show
the reflink dedupe.  Needs root.  Always unmounts and detaches what it made.

    .venv/bin/python tests/bench_verify.py [--pkgset DIR] [--workdir DIR] [--jobs N]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import pkgset, rpmbuild  # noqa: E402
from tests.bench_store import DEFAULT_WORKDIR, drop_caches, loop_btrfs  # noqa: E402
from usrview import images, verify  # noqa: E402
from usrview.cli._common import load_keyring  # noqa: E402
from usrview.store import Store  # noqa: E402
from verifier import sigcheck  # noqa: E402
from verifier.keyring import Verdict  # noqa: E402

#: Warm figures are the best of this many runs (each right after the one before).
WARM_RUNS = 3


def _hash_files(paths: list[str]) -> int:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            h = hashlib.sha256()
            while n := os.readv(fd, [buf]):
                h.update(view[:n])
                total += n
        finally:
            os.close(fd)
    return total


def hash_floor(store_root: Path, jobs: int):
    """What only opening, reading and hashing every regular file of the store costs
    in ``jobs`` forked processes: no metadata, no headers, no cache (the floor under
    a full verify in Python on this machine)."""
    paths = []
    for d, _dirs, names in os.walk(store_root / "packages"):
        for name in names:
            p = os.path.join(d, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                paths.append(p)
    paths.sort()

    def run():
        pool = multiprocessing.get_context("fork").Pool(jobs)
        try:
            return sum(pool.map(_hash_files, [paths[i::jobs] for i in range(jobs)]))
        finally:
            pool.close()  # not terminate(): the workers would run this script's SIGTERM handler
            pool.join()

    return run


_CAPS = "security.capability"


def _check_files(groups: list[tuple[str, list[str]]]) -> int:
    """What rpm -V's file loop cannot do without, per regular file: lstat, open, fstat
    (the same inode?), the capabilities xattr, read to the end, sha256, close."""
    buf = bytearray(256 << 10)
    view = memoryview(buf)
    total = 0
    for top, rels in groups:
        dfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for rel in rels:
                os.stat(rel, dir_fd=dfd, follow_symlinks=False)
                fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    os.fstat(fd)
                    try:
                        os.getxattr(fd, _CAPS)
                    except OSError:
                        pass
                    h = hashlib.sha256()
                    off = 0
                    while n := os.preadv(fd, [buf], off):
                        h.update(view[:n])
                        off += n
                        if n < len(buf):
                            break
                    total += off
                finally:
                    os.close(fd)
        finally:
            os.close(dfd)
    return total


def file_floor(store_root: Path, jobs: int):
    """The least any check like rpm -V's of every regular file of the store costs in
    ``jobs`` forked Python processes: the system calls of _check_files and sha256,
    nothing else (no header, no comparison, no cache)."""
    packages = store_root / "packages"
    groups = []
    for pkg in sorted(os.listdir(packages)):
        top = packages / pkg
        rels = []
        for d, _dirs, names in os.walk(top):
            for name in names:
                p = os.path.join(d, name)
                if stat.S_ISREG(os.lstat(p).st_mode):
                    rels.append(os.path.relpath(p, top))
        groups.append((str(top), rels))

    def run():
        pool = multiprocessing.get_context("fork").Pool(jobs)
        try:
            # every package's files dealt out among the processes: even shares
            return sum(pool.map(_check_files, [[(top, rels[i::jobs]) for top, rels in groups]
                                               for i in range(jobs)]))
        finally:
            pool.close()
            pool.join()

    return run


_FLOOR_STATE: tuple | None = None


def _read_headers(paths: list[str]) -> int:
    """Each header file's signature checked and its file list read (what verify needs
    of a header before it can look at one file)."""
    keyring = _FLOOR_STATE[0]
    n = 0
    for p in paths:
        check = sigcheck.check_file(p, keyring)
        assert check.verdict is Verdict.GOOD, check.format()
        n += len(check.package.files)
    return n


def header_floor(store: Store, keyring, jobs: int):
    """What checking the signatures of the image's headers and reading their file
    lists costs in ``jobs`` forked processes, nothing else."""
    global _FLOOR_STATE
    _FLOOR_STATE = (keyring,)
    paths = sorted(str(store.header_path(p)) for p in images.resolve(store, images.CURRENT).packages)

    def run():
        pool = multiprocessing.get_context("fork").Pool(jobs)
        try:
            return sum(pool.map(_read_headers, [paths[i::jobs] for i in range(jobs)]))
        finally:
            pool.close()
            pool.join()

    return run


def timed(fn, *, cold: bool):
    if cold:
        drop_caches()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--pkgset", type=Path)
    ap.add_argument("--count", type=int, default=250)
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (loop device, mount, drop_caches)")
    setdir = (args.pkgset or args.workdir / "pkgs").resolve()
    if not (setdir / "manifest.json").exists():
        pkgset.build_set(setdir, args.count)
    man = pkgset.load(setdir)
    key = Path(man["key"])
    v1 = sorted((setdir / "set-v1").glob("*.rpm"))
    print(f"package set: {len(v1)} packages, {man['files']} regular files, {man['bytes'] / 1e6:.1f} MB")
    size = int(max(8.0, 8 * man["bytes"] / 2**30) * 2**30)
    args.workdir.mkdir(parents=True, exist_ok=True)
    mnt = Path(tempfile.mkdtemp(prefix="mnt-verify-", dir=args.workdir))
    try:
        with loop_btrfs(args.workdir / "btrfs-verify.img", size, mnt):
            store = Store.open(mnt / "store", create=True)
            keyring = load_keyring([key])
            t0 = time.perf_counter()
            images.deploy(store, setdir / "set-v1", keyring)
            print(f"deploy set-v1: {time.perf_counter() - t0:.1f} s")
            root = mnt / "rpmroot"
            t0 = time.perf_counter()
            rpmbuild.rpm_root_install(root, v1)
            print(f"rpm -i into R: {time.perf_counter() - t0:.1f} s")

            def rpm_va():
                return subprocess.run([*rpmbuild.rpm_root_cmd(root), "-Va", "--nodeps", "--noscripts"],
                                      capture_output=True, stdin=subprocess.DEVNULL)

            def full():
                return verify.run(store, keyring, full=True, jobs=args.jobs)

            def incremental():
                return verify.run(store, keyring, jobs=args.jobs)

            def cli(*extra):
                jobs = ["--jobs", str(args.jobs)] if args.jobs else []
                return lambda: subprocess.run(
                    [sys.executable, "-m", "usrview.cli", "verify", "--store", str(store.root), "--keys", str(key),
                     *jobs, *extra], capture_output=True, stdin=subprocess.DEVNULL, check=False,
                    cwd=Path(__file__).resolve().parents[1])

            res = {}
            for temp in ("cold", "warm"):
                cold = temp == "cold"

                def measure(fn, cold=cold):
                    if cold:
                        return timed(fn, cold=True)
                    # warm: the same run just before, because this VM pages out page cache
                    # left idle for a few seconds (DAMON), rpm's and ours alike; the best of
                    # WARM_RUNS, because other work on the machine only ever adds time
                    fn()
                    return min((timed(fn, cold=False) for _ in range(WARM_RUNS)), key=lambda t: t[0])

                res["rpm", temp], r = measure(rpm_va)
                rpm_lines = len(r.stdout.splitlines())
                res["full", temp], rep = measure(full)
                res["incr", temp], rep2 = measure(incremental)
                res["clifull", temp], p1 = measure(cli("--full"))
                res["cliincr", temp], p2 = measure(cli())
                jobs = args.jobs or os.cpu_count() or 1
                res["floor", temp], _ = measure(hash_floor(store.root, jobs))
                res["ffloor", temp], _ = measure(file_floor(store.root, jobs))
                res["hfloor", temp], _ = measure(header_floor(store, keyring, jobs))
                res["python", temp], _ = measure(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
                assert p1.returncode == p2.returncode == rep.exit_code, (p1.stderr, p2.stderr)
                print(f"[{temp}] rpm -Va: {res['rpm', temp]:.2f} s ({rpm_lines} lines)   "
                      f"verify --full: {res['full', temp]:.2f} s ({rep.stats.files} files, "
                      f"{rep.stats.hashed_bytes / 1e6:.0f} MB hashed, {len(rep.findings)} findings)   "
                      f"verify (cached): {res['incr', temp]:.3f} s ({rep2.stats.hashed_files} files hashed, "
                      f"{rep2.stats.cache_hits} cache hits, {rep2.stats.cached_packages} packages cached)\n"
                      f"[{temp}] cli: usrview verify --full {res['clifull', temp]:.2f} s, "
                      f"usrview verify (cached) {res['cliincr', temp]:.3f} s; `python -c pass` alone "
                      f"{res['python', temp]:.3f} s\n"
                      f"[{temp}] floor: open + read + sha256 of the store's regular files in "
                      f"{jobs} processes, nothing else: {res['floor', temp]:.2f} s; adding the lstat, "
                      f"fstat and capabilities rpm -V also needs: {res['ffloor', temp]:.2f} s; the "
                      f"headers' signatures and file lists alone: {res['hfloor', temp]:.2f} s")
                if rep.findings:
                    print("  first findings:", *[f.line for f in rep.findings[:5]], sep="\n    ")
            ok = lambda c: "OK" if c else "MISSED"  # noqa: E731
            print(f"full warm / rpm warm = {res['full', 'warm'] / res['rpm', 'warm']:.2f} (target <= 0.5: "
                  f"{ok(res['full', 'warm'] <= 0.5 * res['rpm', 'warm'])})")
            print(f"full cold / rpm cold = {res['full', 'cold'] / res['rpm', 'cold']:.2f} (target <= 1: "
                  f"{ok(res['full', 'cold'] <= res['rpm', 'cold'])})")
            print(f"  (floors warm / rpm warm: open+read+sha256 {res['floor', 'warm'] / res['rpm', 'warm']:.2f}, "
                  f"with rpm -V's other calls {res['ffloor', 'warm'] / res['rpm', 'warm']:.2f}, headers "
                  f"{res['hfloor', 'warm'] / res['rpm', 'warm']:.2f}: together "
                  f"{(res['ffloor', 'warm'] + res['hfloor', 'warm']) / res['rpm', 'warm']:.2f}, before any "
                  f"comparison, report or cache)")
            print(f"re-verify warm / rpm warm = {res['incr', 'warm'] / res['rpm', 'warm']:.4f} (target <= 0.02: "
                  f"{ok(res['incr', 'warm'] <= res['rpm', 'warm'] / 50)})")
            v2 = setdir / "set-v2"
            if v2.is_dir():
                images.deploy(store, v2, keyring)
                t_prev, a = timed(lambda: verify.run(store, keyring, image_ref="previous", full=True, jobs=args.jobs),
                                  cold=True)
                t_cur, b = timed(lambda: verify.run(store, keyring, full=True, jobs=args.jobs), cold=True)
                print(f"set-v2 deployed: verify --full previous (cold) {t_prev:.2f} s, then current "
                      f"{t_cur:.2f} s: {b.stats.hashed_bytes / 1e6:.0f} MB hashed, {b.stats.deduped_files} "
                      f"files deduplicated by shared extents (--full ignores the caches by design)")
                t_inc, c = timed(lambda: verify.run(store, keyring, image_ref="previous", jobs=args.jobs), cold=True)
                t_inc2, d = timed(lambda: verify.run(store, keyring, jobs=args.jobs), cold=True)
                print(f"  then incremental (cold): previous {t_inc:.2f} s, current {t_inc2:.2f} s "
                      f"({d.stats.cached_packages}/{d.stats.packages} packages from the package cache, "
                      f"{d.stats.hashed_bytes / 1e6:.0f} MB hashed)")
    finally:
        try:
            mnt.rmdir()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
