"""Benchmark (issue 4 §5): the usrview view vs fuse-overlayfs vs rpm's native tree.

Over the package set of tests/pkgset.py (reused from ``--pkgset``, default
/var/tmp/usrview-bench/pkgs; built when absent), on one btrfs made for the run on
a loop device (tests/bench_store.py's ``loop_btrfs``):

- native: ``rpm --root R -i --nodeps --noscripts ...`` of set-v1 (FACTS.md), walked at R/usr;
- usrview: ``usrview deploy`` of set-v1 into a store, then ``usrview mount --foreground``
  (verification ``enforce``: a cold read is the first open, which hashes the file);
- fuse-overlayfs: one read-only lower layer per package directory of that store
  (``lowerdir=`` colon list, most packages first), walked at MNT/usr.  When it
  refuses that many layers the count is halved until it mounts; the count used is printed.

Printed side by side: mount time; ``find -ls`` walk cold (``echo 3 >
/proc/sys/vm/drop_caches``) and warm; reading every byte cold and warm; one large
file cold and warm; the daemon's VmRSS; and, when the set has fewer than 50,000
files, the memory of a 50,000-entry tree built in-process (the real headers, copied
under other prefixes) by tracemalloc and RSS.  Then what one request (readlink;
open+close) costs in each tree and in tests/fuse_floor.py, a pyfuse3 file system
that does nothing: the floor any pyfuse3 view stands on.  The goals are printed
beside the figures.  Asserts nothing.

    .venv/bin/python tests/bench_view.py [--pkgset DIR] [--workdir DIR] [--layers N]
    .venv/bin/python tests/bench_view.py --mount-store STORE [--mount-runs N] [--pkgset DIR]

    .venv/bin/python tests/bench_view.py --kernel-cache STORE NATIVE [--mount-runs N] [--pkgset DIR]

The second form only times ``usrview mount`` of an already deployed store's current
image, N times (median printed): the way to measure the mount-time goal's 300
packages, with a store deployed from ``tests/pkgset.py OUT --count 300``.

The third (issue 14) serves the store's current image twice at once, with
``--kernel-cache off`` (what a stock pyfuse3 does) and ``auto`` (the patched
pyfuse3 .ci/setup installs: symlinks, listings and opens left to the kernel),
and times, warm, in them and in NATIVE (the same packages' ``/usr`` installed
by ``rpm --root``): a walk (``find -ls``), a readlink of every symlink, an open
and close of every regular file, a read of every byte.  Trees are interleaved
round by round; the best of N rounds is printed.

Needs root.  Every mount is unmounted and the loop device detached, on errors too.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import fuse_floor, pkgset
from tests.bench_store import (
    DEFAULT_WORKDIR,
    REPO,
    RPM_INSTALL_OPTS,
    _Terminated,
    drop_caches,
    loop_btrfs,
    prepare_rpm_root,
    run,
    usrview_cmd,
)
from tests.rpmbuild import rpm_root_cmd

MOUNT_TIMEOUT = 120
#: Files the in-process tree is scaled to when the set has fewer (the RSS goal's size).
SYNTHETIC_FILES = 50_000
GOALS = {
    "walk_cold": "usrview >= 4x faster than fuse-overlayfs",
    "walk_warm": "usrview within 3x native",
    "read_warm": "usrview within 1.3x native",
    "read_cold": "usrview (verifying) >= 70% of native throughput",
    "mount": "usrview < 1 s for 300 packages; <= 0.3 s for a whole system's 931 (issue 14)",
    "rss": "usrview < 150 MB for 50,000 files",
    "rss_system": "daemon RSS <= 64 MB at 115k paths, a 300k-path desktop under 128 MB (issue 14)",
}


def _timed_shell(script: str, cwd: Path, *, cold: bool) -> tuple[float, str]:
    if cold:
        drop_caches()
    t0 = time.monotonic()
    r = subprocess.run(["sh", "-c", script], cwd=cwd, check=False, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    dt = time.monotonic() - t0
    note = "" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
    if "loop detected" in r.stderr:
        note += f" ({r.stderr.count('loop detected')} 'File system loop detected')"
    return dt, note


def walk(root: Path, *, cold: bool) -> tuple[float, str]:
    return _timed_shell("find . -ls > /dev/null", root, cold=cold)


def read_all(root: Path, *, cold: bool) -> tuple[float, str]:
    return _timed_shell("find . -type f -print0 | xargs -0 -n 256 cat > /dev/null", root, cold=cold)


def warm(measure, root: Path, runs: int = 2) -> tuple[float, str]:
    """The best of ``runs`` warm runs: this VM pages out page cache left idle for a few
    seconds (DAMON, see FACTS.md), so the first "warm" run after a long cold one is partly
    cold, for every tree alike; other work on the machine only ever adds time."""
    return min((measure(root, cold=False) for _ in range(runs)), key=lambda r: r[0])


def read_one(path: Path, *, cold: bool) -> float:
    if cold:
        drop_caches()
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.monotonic() - t0


def count(root: Path) -> tuple[int, int, int, int]:
    """(entries, regular files, directories, symlinks) that find sees below root."""
    def n(test: str) -> int:
        return int(run(["sh", "-c", f"cd {root} && find . {test} 2>/dev/null | wc -l"], check=False).stdout)

    return n(""), n("-type f"), n("-type d"), n("-type l")


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU seconds process ``pid`` and its reaped children used so far (/proc/PID/stat):
    what mounting cost, whatever else the machine runs meanwhile."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _serving(mnt: Path) -> bool:
    try:
        os.statvfs(mnt)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return False
        raise
    return os.path.ismount(mnt)


class Daemon:
    """A FUSE daemon run in the foreground; ``stop`` unmounts and ends it."""

    def __init__(self, cmd: list[str], mnt: Path, log: Path):
        self.mnt = mnt
        self.log = log
        t0 = time.monotonic()
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=REPO)
        while not _serving(mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {self.proc.returncode}: "
                                   f"{log.read_text(errors='replace')[-1500:]}")
            if time.monotonic() - t0 > MOUNT_TIMEOUT:
                self.stop()
                raise RuntimeError(f"{cmd[0]} did not mount in {MOUNT_TIMEOUT} s")
            time.sleep(0.005)
        self.mount_time = time.monotonic() - t0
        self.mount_cpu = cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if ((os.path.ismount(self.mnt) or not _serving_or_absent(self.mnt))
                and run(["fusermount3", "-u", str(self.mnt)], check=False).returncode != 0):
                run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _serving_or_absent(mnt: Path) -> bool:
    try:
        os.statvfs(mnt)
    except OSError as e:
        return e.errno != errno.ENOTCONN
    return True


def synthetic_tree_memory(store: Path, key: Path, target: int) -> dict:
    """Memory of a tree of >= ``target`` regular files, built in a fresh process from
    the image's headers copied under /usr/copyN/ prefixes.

    As in the daemon, each copy's file list is made when the builder asks for it
    and dropped once that package is composed (``Package.read_files``), and the
    headers go once the tree exists (``loader.release_free_memory`` as in
    ``usrview mount``).  Reports the tree's own allocations (tracemalloc) and, from
    a second run without tracemalloc (whose own records would count), the process's
    RSS with the modules loaded, with the headers, after the build and at the end."""
    code = r"""
import dataclasses, gc, json, os, sys, tracemalloc
from pathlib import Path
from usrview.cli._common import load_keyring
from usrview.store import Store
from usrview import images
from usrview.view.loader import load_headers, release_free_memory
from usrview.view.tree import PackageSource, build_tree
from verifier.header import Package
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
import usrview.view.fs, usrview.view.mount  # what the daemon has loaded too
start = rss()

@dataclasses.dataclass(slots=True)
class CopiedPackage(Package):
    # A header's files under /usr/copyK/: made on each request, not kept.
    copy: int = 0

    def read_files(self):
        return [f._replace(path=f.path.replace("/usr/", f"/usr/copy{self.copy}/", 1))
                for f in Package.read_files(self)]

    @property
    def files(self):
        return self.read_files()

store = Store.open(sys.argv[1]); target = int(sys.argv[3])
loaded = load_headers(store, images.resolve(store, "current"), load_keyring([Path(sys.argv[2])]))
real = sum(1 for s in loaded.sources for f in s.package.read_files()
           if f.path.startswith("/usr/") and f.mode & 0o170000 == 0o100000)
copies = -(-target // real)
sources, digests = [], {}
for k in range(copies):
    for s in loaded.sources:
        p = s.package
        pkgid = f"{s.pkgid}-c{k}"
        sources.append(PackageSource(pkgid, CopiedPackage(p.lead, p.signature, p.header, p.payload_offset,
                                                          p.has_payload, None, k),
                                     s.package_dir, s.header_path))
        digests[pkgid] = loaded.header_digests[s.pkgid]
gc.collect()
base = rss()
gc.disable()  # as loader.build_view
tracing = sys.argv[4] == "trace"
if tracing:
    tracemalloc.start()
tree = build_tree(sources, header_digests=digests)
current, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
gc.enable()
built = rss()
del sources, loaded, s, p
gc.collect()
release_free_memory()
regular = sum(1 for n in tree.nodes if n is not None and n.is_reg)
print(json.dumps({"files": regular, "inodes": tree.inode_count, "copies": copies, "traced": current,
                  "traced_peak": peak, "rss_total": rss(), "rss_built": built, "rss_before_tree": base,
                  "rss_start": start}))
"""
    traced = json.loads(run([sys.executable, "-c", code, str(store), str(key), str(target), "trace"]).stdout)
    mem = json.loads(run([sys.executable, "-c", code, str(store), str(key), str(target), "rss"]).stdout)
    mem["traced"], mem["traced_peak"] = traced["traced"], traced["traced_peak"]
    return mem


def mount_times(store: Path, key: Path, workdir: Path, runs: int) -> list[float]:
    """Seconds from starting ``usrview mount --foreground`` until the view answers statfs, ``runs`` times."""
    top = Path(tempfile.mkdtemp(prefix="mount-", dir=workdir))
    mnt = top / "uv"
    mnt.mkdir()
    times = []
    try:
        for _ in range(runs):
            d = Daemon([*usrview_cmd(), "mount", "--foreground", "--store", str(store), "--keys", str(key),
                        str(mnt)], mnt, top / "uv.log")
            try:
                times.append(d.mount_time)
            finally:
                d.stop()
    finally:
        mnt.rmdir()
        (top / "uv.log").unlink(missing_ok=True)
        top.rmdir()
    return times


#: The full check's line in the daemon's log (usrview/view/ctree.py).
CHECK_LINE = re.compile(r"compiled tree checked against the headers in ([0-9.]+) s")
#: Seconds to wait for the full check's line.
CHECK_TIMEOUT = 120


def mount_figures(store: Path, key: Path, workdir: Path, runs: int) -> list[dict]:
    """Per run of ``usrview mount --foreground -v``: seconds until the view answers
    statfs ("mount"), the daemon's VmRSS then, after the compiled tree's full check
    (its seconds, "check", from the daemon's log; None when the log has none: a tree
    compiled at this mount, or a usrview without compiled trees) and after a warm
    ``find -ls`` ("walk", the second of two), and how many entries that walk saw."""
    top = Path(tempfile.mkdtemp(prefix="mount-", dir=workdir))
    mnt = top / "uv"
    mnt.mkdir()
    log = top / "uv.log"
    figures = []
    try:
        for _ in range(runs):
            d = Daemon([*usrview_cmd(), "mount", "-v", "--foreground", "--store", str(store), "--keys", str(key),
                        str(mnt)], mnt, log)
            try:
                run_figures = {"mount": d.mount_time, "cpu": d.mount_cpu, "rss_mounted": rss(d.proc.pid),
                               "check": None}
                t0 = time.monotonic()
                while time.monotonic() - t0 < CHECK_TIMEOUT:
                    text = log.read_text(errors="replace")
                    found = CHECK_LINE.search(text)
                    # "compiled in": compiled at this mount, nothing to check; no
                    # "compiled tree" at all: a usrview without compiled trees
                    if found or "compiled in" in text or (time.monotonic() - t0 > 3 and "compiled tree" not in text):
                        run_figures["check"] = float(found.group(1)) if found else None
                        break
                    time.sleep(0.05)
                run_figures["rss_checked"] = rss(d.proc.pid)
                walk(mnt, cold=False)
                run_figures["walk"] = walk(mnt, cold=False)[0]
                run_figures["rss_walked"] = rss(d.proc.pid)
                # of it: the heap (anonymous) and mapped files (the compiled tree, libraries)
                run_figures["anon_walked"] = rss(d.proc.pid, "RssAnon")
                run_figures["file_walked"] = rss(d.proc.pid, "RssFile")
                run_figures["entries"] = count(mnt)[0]
                figures.append(run_figures)
            finally:
                d.stop()
    finally:
        mnt.rmdir()
        log.unlink(missing_ok=True)
        top.rmdir()
    return figures


#: What --kernel-cache times, in each tree.
KERNEL_CACHE_MEASURES = ("walk", "readlink", "open_close", "read")


def _tree_paths(root: Path) -> tuple[list[str], list[str]]:
    """The symlinks and regular files below ``root`` (relative, walk order)."""
    links, files = [], []
    for d, dirs, names in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(d, root)
        for name in sorted(names):
            mode = os.lstat(os.path.join(d, name)).st_mode
            (links if stat.S_ISLNK(mode) else files if stat.S_ISREG(mode) else []).append(
                os.path.normpath(os.path.join(rel, name)))
    return links, files


def _time_tree(root: Path, links: list[str], files: list[str]) -> dict[str, float]:
    out = {"walk": walk(root, cold=False)[0]}
    t0 = time.perf_counter()
    for p in links:
        os.readlink(root / p)
    t1 = time.perf_counter()
    for p in files:
        os.close(os.open(root / p, os.O_RDONLY))
    t2 = time.perf_counter()
    out["readlink"], out["open_close"] = t1 - t0, t2 - t1
    out["read"] = read_all(root, cold=False)[0]
    return out


def kernel_cache_compare(store: Path, key: Path, native: Path, workdir: Path, rounds: int) -> dict:
    """Best-of-``rounds`` warm times in NATIVE and in the view with the kernel's caches off and on."""
    top = Path(tempfile.mkdtemp(prefix="kcache-", dir=workdir))
    daemons: list[Daemon] = []
    try:
        trees = {"native": native}
        for mode, name in (("off", "stock"), ("auto", "kernel cache")):
            mnt = top / mode
            mnt.mkdir()
            daemons.append(Daemon([*usrview_cmd(), "-v", "mount", "--foreground", "--kernel-cache", mode,
                                   "--store", str(store), "--keys", str(key), str(mnt)], mnt, top / f"{mode}.log"))
            trees[name] = mnt
        links, files = _tree_paths(native)
        for root in trees.values():  # first reads (the view hashes every file once) and caches filled
            _time_tree(root, links, files)
        best: dict[str, dict[str, float]] = {name: {} for name in trees}
        for r in range(rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                for k, v in _time_tree(trees[name], links, files).items():
                    best[name][k] = min(best[name].get(k, v), v)
        caching = [line.split("kernel caching: ", 1)[1] for d in daemons
                   for line in d.log.read_text(errors="replace").splitlines() if "kernel caching: " in line]
        return {"best": best, "links": len(links), "files": len(files), "rounds": rounds, "caching": caching,
                "bytes": sum(os.lstat(native / p).st_size for p in files)}
    finally:
        for d in daemons:
            d.stop()
        for p in top.iterdir():
            p.rmdir() if p.is_dir() else p.unlink()
        top.rmdir()


def kernel_cache_report(res: dict) -> None:
    best = res["best"]
    nat = best["native"]
    print(f"=== kernel caches (issue 14): warm, best of {res['rounds']}; {res['files']} files "
          f"({res['bytes'] / 1e6:.0f} MB), {res['links']} symlinks ===")
    for line in res["caching"]:
        print(f"  view: kernel caching: {line}")
    labels = {"walk": "find -ls", "readlink": "readlink every symlink", "open_close": "open+close every file",
              "read": "read every byte"}
    print(f"{'':24}" + "".join(f"{n:>22}" for n in best))
    for k in KERNEL_CACHE_MEASURES:
        cells = [f"{nat[k]:8.3f} s"] + [f"{best[n][k]:8.3f} s ({best[n][k] / nat[k]:5.2f}x)"
                                        for n in best if n != "native"]
        print(f"{labels[k]:24}" + "".join(f"{c:>22}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--pkgset", type=Path, help="default WORKDIR/pkgs (built there when absent)")
    ap.add_argument("--layers", type=int, help="fuse-overlayfs layers to try first (default: one per package)")
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--mount-store", type=Path, metavar="STORE",
                    help="only time mounting this deployed store's current image, then exit")
    ap.add_argument("--mount-runs", type=int, default=5, metavar="N")
    ap.add_argument("--kernel-cache", type=Path, nargs=2, metavar=("STORE", "NATIVE"),
                    help="only compare the view with and without the kernel's caches, and NATIVE")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (loop device, mounts, drop_caches)")
    setdir = (args.pkgset or args.workdir / "pkgs").resolve()
    if args.kernel_cache:
        if not (setdir / "manifest.json").exists():
            ap.error(f"--kernel-cache needs the package set's key: no {setdir}/manifest.json (--pkgset)")
        args.workdir.mkdir(parents=True, exist_ok=True)
        store, native = (p.resolve() for p in args.kernel_cache)
        kernel_cache_report(kernel_cache_compare(store, Path(pkgset.load(setdir)["key"]), native,
                                                 args.workdir, args.mount_runs))
        return 0
    if args.mount_store:
        # Only the set's key is needed: never build a set (and a new key) here.
        if not (setdir / "manifest.json").exists():
            ap.error(f"--mount-store needs the package set's key: no {setdir}/manifest.json (--pkgset)")
        key = Path(pkgset.load(setdir)["key"])
        args.workdir.mkdir(parents=True, exist_ok=True)
        store = args.mount_store.resolve()
        n = len(json.loads((store / "current").read_text())["packages"]) if (store / "current").is_file() else "?"
        runs = mount_figures(store, key, args.workdir, args.mount_runs)
        times = [r["mount"] for r in runs]
        print(f"usrview mount of {store} ({n} packages): " + " ".join(f"{t:.3f}" for t in times)
              + f" s; median {sorted(times)[len(times) // 2]:.3f} s   goal: {GOALS['mount']}")
        for what, label in (("cpu", "mount CPU (s, with children)"), ("rss_mounted", "daemon VmRSS mounted"), ("rss_checked", "  after the full check"),
                            ("rss_walked", "  after find -ls"), ("anon_walked", "    of it RssAnon"),
                            ("file_walked", "    of it RssFile"), ("check", "full check (s)"),
                            ("walk", "find -ls (s, warm)")):
            values = sorted(r[what] for r in runs if r[what] is not None)
            if values:
                median = values[len(values) // 2]
                shown = f"{median / 2**20:.1f} MB" if what.startswith(("rss", "anon", "file")) else f"{median:.2f}"
                print(f"  {label:26} median {shown}")
        entries = runs[0]["entries"]
        if entries:
            per = sorted(r["rss_walked"] for r in runs)[len(runs) // 2] / entries
            print(f"  {entries} entries: {per:.0f} bytes of daemon RSS per entry after find -ls   "
                  f"goal: {GOALS['rss_system']}")
        return 0
    if not (setdir / "manifest.json").exists():
        pkgset.build_set(setdir)
    man = pkgset.load(setdir)
    key = Path(man["key"])
    v1 = sorted((setdir / "set-v1").glob("*.rpm"))
    print(f"package set {setdir}: {len(v1)} packages, {man['files']} regular files, {man['bytes'] / 1e6:.0f} MB")

    args.workdir.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="view-", dir=args.workdir))
    daemons: list[Daemon] = []
    try:
        with loop_btrfs(top / "btrfs.img", int(args.size_gib * 2**30), top / "fs") as dev:
            fs = top / "fs"
            print(f"btrfs on {dev} at {fs}")
            store = fs / "store"
            t0 = time.monotonic()
            run([*usrview_cmd(), "deploy", "--store", str(store), "--keys", str(key), str(setdir / "set-v1")])
            print(f"usrview deploy: {time.monotonic() - t0:.1f} s")
            root = fs / "root"
            prepare_rpm_root(root, key)
            t0 = time.monotonic()
            run([*rpm_root_cmd(root), *RPM_INSTALL_OPTS, *map(str, v1)])
            print(f"rpm -i: {time.monotonic() - t0:.1f} s\n")
            try:
                results = bench_all(store, key, root / "usr", fs, top, daemons, args.layers)
            finally:
                # Before the btrfs below them goes.
                for d in daemons:
                    d.stop()
            report(results)
            mem = synthetic_tree_memory(store, key, SYNTHETIC_FILES)
            print(f"\nin-process tree of {mem['files']} regular files, {mem['inodes']} inodes "
                  f"({mem['copies']} copies of the set's /usr): tracemalloc {mem['traced'] / 1e6:.1f} MB "
                  f"(peak {mem['traced_peak'] / 1e6:.1f} MB while building); process RSS "
                  f"{mem['rss_start'] / 1e6:.1f} MB with the modules loaded, {mem['rss_before_tree'] / 1e6:.1f} MB "
                  f"with the headers, {mem['rss_built'] / 1e6:.1f} MB built, {mem['rss_total'] / 1e6:.1f} MB "
                  f"with the headers released   goal: {GOALS['rss']}")
    except (KeyboardInterrupt, _Terminated) as e:
        print(f"bench: interrupted ({e or 'Ctrl-C'})", file=sys.stderr)
        return 130
    finally:
        for d in daemons:
            d.stop()
        with contextlib.suppress(OSError):
            for p in (top / "fs", top / "uv", top / "ovl", top / "floor"):
                p.rmdir()
            if (top / "layers").is_dir():
                for p in (top / "layers").iterdir():
                    p.unlink()
                (top / "layers").rmdir()
            for p in top.iterdir():
                p.unlink()
            top.rmdir()
    return 0


def bench_all(store: Path, key: Path, native: Path, fs: Path, top: Path, daemons: list, layers: int | None):
    res: dict[str, dict] = {"native": {}, "usrview": {}, "fuse-overlayfs": {}}
    # The largest regular file of the view, the same path everywhere.
    big = max((p for p in native.rglob("*") if p.is_file() and not p.is_symlink()), key=lambda p: p.stat().st_size)
    big_rel = big.relative_to(native)
    res["big"] = {"path": str(big_rel), "size": big.stat().st_size}

    uv_mnt, ovl_mnt = top / "uv", top / "ovl"
    uv_mnt.mkdir()
    ovl_mnt.mkdir()
    uv = Daemon([*usrview_cmd(), "mount", "--foreground", "--store", str(store), "--keys", str(key),
                 str(uv_mnt)], uv_mnt, top / "uv.log")
    daemons.append(uv)
    res["usrview"]["mount"] = uv.mount_time

    # Package ids hold the epoch's ':', lowerdir's separator: name each layer by a
    # short symlink instead (which also keeps the option string short).
    pkgdirs = sorted(p for p in (store / "packages").iterdir() if p.is_dir())
    links = top / "layers"
    links.mkdir()
    for i, p in enumerate(pkgdirs):
        (links / str(i)).symlink_to(p)
    n = layers or len(pkgdirs)
    ovl = None
    while n >= 1:
        lower = ":".join(str(links / str(i)) for i in range(n))
        try:
            ovl = Daemon(["fuse-overlayfs", "-f", "-o", f"lowerdir={lower}", str(ovl_mnt)], ovl_mnt,
                         top / "ovl.log")
            break
        except RuntimeError as e:
            print(f"fuse-overlayfs refused {n} layers ({len(lower)}-byte lowerdir): {str(e)[:300]}")
            n //= 2
    if ovl is not None:
        daemons.append(ovl)
        res["fuse-overlayfs"]["mount"] = ovl.mount_time
        res["fuse-overlayfs"]["layers"] = n
    res["layers_total"] = len(pkgdirs)

    trees = {"native": native, "usrview": uv_mnt}
    if ovl is not None:
        trees["fuse-overlayfs"] = ovl_mnt / "usr"
    for name, where in trees.items():
        r = res[name]
        r["count"] = count(where)
        drop_caches()
        r["walk_cold"] = walk(where, cold=True)
        r["walk_warm"] = warm(walk, where)
        # The large file first (for usrview its first open hashes it), then everything.
        if (where / big_rel).exists():
            r["big_cold"] = read_one(where / big_rel, cold=True)
            r["big_warm"] = read_one(where / big_rel, cold=False)
        r["read_cold"] = read_all(where, cold=True)
        r["read_warm"] = warm(read_all, where)
        if name == "usrview":
            r["rss"] = rss(uv.proc.pid)
        elif name == "fuse-overlayfs":
            r["rss"] = rss(ovl.proc.pid)
    # Per request: the view beside fuse-overlayfs (C) and a pyfuse3 file system
    # that does nothing (tests/fuse_floor.py): what a request costs before any handler works.
    per = res["per_request"] = {"native": fuse_floor.measure(*fuse_floor.view_paths(str(native))),
                                "usrview": fuse_floor.measure(*fuse_floor.view_paths(str(uv_mnt)))}
    if ovl is not None:
        per["fuse-overlayfs"] = fuse_floor.measure(*fuse_floor.view_paths(str(ovl_mnt / "usr")))
    floor_mnt = top / "floor"
    floor_mnt.mkdir()
    with fuse_floor.mounted_floor(floor_mnt):
        per["pyfuse3 floor"] = fuse_floor.measure(*fuse_floor.floor_paths(str(floor_mnt)))
    res["usrview"]["log_errors"] = [line for line in uv.log.read_text(errors="replace").splitlines()
                                    if "ERROR" in line][:5]
    return res


def report(res: dict) -> None:
    names = [n for n in ("native", "usrview", "fuse-overlayfs") if res[n]]
    nat = res["native"]
    print("=== view benchmark (seconds; x = relative to native) ===")
    print(f"fuse-overlayfs layers: {res['fuse-overlayfs'].get('layers', 0)} of {res['layers_total']} packages")
    print(f"{'':22}" + "".join(f"{n:>26}" for n in names))

    def row(label, key, fmt=lambda v: f"{v[0] if isinstance(v, tuple) else v:8.3f} s", goal=""):
        cells = []
        for n in names:
            v = res[n].get(key)
            if v is None:
                cells.append(f"{'-':>26}")
                continue
            t = v[0] if isinstance(v, tuple) else v
            rel = ""
            if n != "native" and nat.get(key):
                base = nat[key][0] if isinstance(nat[key], tuple) else nat[key]
                rel = f" ({t / base:5.2f}x)" if base else ""
            note = " !" if isinstance(v, tuple) and v[1] else ""
            cells.append(f"{fmt(v) + rel + note:>26}")
        print(f"{label:22}" + "".join(cells) + (f"   goal: {goal}" if goal else ""))

    for n in names:
        e, f, d, sl = res[n]["count"]
        print(f"  {n}: find sees {e} entries, {f} regular files, {d} directories, {sl} symlinks")
    row("mount", "mount", goal=GOALS["mount"])
    row("find -ls cold", "walk_cold", goal=GOALS["walk_cold"])
    row("find -ls warm", "walk_warm", goal=GOALS["walk_warm"])
    row("read all cold", "read_cold", goal=GOALS["read_cold"])
    row("read all warm", "read_warm", goal=GOALS["read_warm"])
    big = res["big"]
    print(f"large file: {big['path']} ({big['size'] / 1e6:.1f} MB)")
    mbps = lambda v: f"{big['size'] / v / 1e6:7.0f} MB/s"
    for key in ("big_cold", "big_warm"):
        print(f"{key:22}" + "".join(f"{mbps(res[n][key]) if res[n].get(key) else '-':>26}" for n in names))
    print(f"{'daemon VmRSS':22}" + "".join(
        f"{(str(round(res[n]['rss'] / 1e6, 1)) + ' MB') if res[n].get('rss') else '-':>26}" for n in names))
    for n in names:
        for key in ("walk_cold", "walk_warm", "read_cold", "read_warm"):
            if res[n].get(key) and res[n][key][1]:
                print(f"  ! {n} {key}: {res[n][key][1]}")
    # The goals, computed.
    u, o = res["usrview"], res["fuse-overlayfs"]
    print("goals:")
    if o.get("walk_cold"):
        print(f"  cold walk: fuse-overlayfs / usrview = {o['walk_cold'][0] / u['walk_cold'][0]:.2f}x (goal >= 4)")
    print(f"  warm walk: usrview / native = {u['walk_warm'][0] / nat['walk_warm'][0]:.2f}x (goal <= 3)")
    print(f"  warm read: usrview / native = {u['read_warm'][0] / nat['read_warm'][0]:.2f}x (goal <= 1.3)")
    print(f"  cold read: usrview throughput = {nat['read_cold'][0] / u['read_cold'][0] * 100:.0f}% of native "
          f"(goal >= 70%)")
    print(f"  mount: {u['mount']:.2f} s for {res['layers_total']} packages (goal < 1 s for 300)")
    per = res.get("per_request")
    if per:
        print("per request (best of 5 rounds over 1,000 warm paths; tests/fuse_floor.py):")
        for name, v in per.items():
            print(f"  {name:16} readlink {v['readlink_us']:6.1f} us   open+close {v['open_close_us']:6.1f} us")
        # Lower bounds for any pyfuse3 view of this tree, from the floor's costs and
        # the requests the kernel must send (entry and attribute caches warm):
        # warm walk: per directory OPENDIR and two READDIRPLUS (the last one empty)
        # waited for, per symlink a READLINK (RELEASEDIR is not waited for);
        # warm read: per file OPEN (+ RELEASE); cold read: OPEN and READ per file.
        req = per["pyfuse3 floor"]["readlink_us"] * 1e-6
        open_close = per["pyfuse3 floor"]["open_close_us"] * 1e-6
        _, files, dirs, links = res["usrview"]["count"]
        walk = nat["walk_warm"][0] + (3 * dirs + links) * req
        warm = nat["read_warm"][0] + files * open_close
        cold = nat["read_cold"][0] + files * (open_close + req)
        print(f"  so at the floor any pyfuse3 file system serving this tree needs at least: warm walk "
              f"{walk:.2f} s ({walk / nat['walk_warm'][0]:.1f}x native), warm read {warm:.2f} s "
              f"({warm / nat['read_warm'][0]:.1f}x), cold read {cold:.2f} s "
              f"({nat['read_cold'][0] / cold * 100:.0f}% of native throughput)")
    if u["log_errors"]:
        print("usrview logged errors:\n  " + "\n  ".join(u["log_errors"]))


if __name__ == "__main__":
    sys.exit(main())
