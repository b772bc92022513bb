"""Benchmark (issue 3 §4): ``usrview import`` vs ``rpm -i``, and the disk cost of a second image.

Over the package set of tests/pkgset.py (200+ signed rpms made from the installed
Debian packages; built first when ``--pkgset`` holds none), on one btrfs made for
the run on a loop device:

1. ``usrview import --store S --keys KEY set-v1/*.rpm`` beside
   ``rpm --root R --dbpath /var/lib/rpm -i --nodeps --noscripts --ignorearch --ignoreos
   --define '_pkgverify_level all' set-v1/*.rpm`` -- rpm checks signatures too, and
   requires them: the key is imported into R's rpmdb first (``rpmkeys --root R
   --import``), and R/etc holds copies of /etc/passwd and
   /etc/group (FACTS.md).  Each is timed cold (``sync``, ``echo 3 >
   /proc/sys/vm/drop_caches``) into a fresh store/root, then warm into another
   fresh one.  "wall" is until the command exits; "+sync" adds the ``sync``
   that follows (rpm does not fsync; usrview does, per issue 3).
2. ``usrview deploy --store S --keys KEY set-v1``, then ``... set-v2`` (90% of its
   rpms are set-v1's): the store's disk use with one image and with two, by
   ``btrfs filesystem du`` (data extents, shared ones once) and by the filesystem's
   used bytes (data and metadata, after a commit), beside rpm's two separate roots.

    .venv/bin/python tests/bench_store.py [--pkgset DIR] [--count 250] [--size-gib N]

Needs root (loop device, mount, drop_caches).  Prints figures; asserts nothing.
Goals: import no slower than rpm -i; the second image costs at most 10% extra.
The loop device is always detached and the filesystem unmounted, on errors,
Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import pkgset
from tests.rpmbuild import rpm_root_cmd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = Path("/var/tmp/usrview-bench")
#: rpm -i as the comparison: no scriptlets, no dependencies, and -- like usrview import,
#: which refuses anything not GOOD -- a valid signature by an imported key required.
RPM_INSTALL_OPTS = ("-i", "--nodeps", "--noscripts", "--ignorearch", "--ignoreos",
                    "--define", "_pkgverify_level all")


def usrview_cmd() -> list[str]:
    """The usrview command, its modules compiled (:func:`compile_bytecode`)."""
    compile_bytecode()
    exe = Path(sys.executable).with_name("usrview")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "usrview.cli"]


@functools.cache
def compile_bytecode() -> None:
    """Write usrview's and verifier's bytecode (``__pycache__``), as an installed usrview has it
    (rpm, pip install): with PYTHONDONTWRITEBYTECODE set, as on the project's machines, an
    editable install compiles every module from source at each start (about 0.1 s of a mount)."""
    run([sys.executable, "-m", "compileall", "-q", str(REPO / "usrview"), str(REPO / "verifier")])


def run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''} exited {r.returncode}\n"
                           f"{r.stdout[-2000:]}{r.stderr[-4000:]}")
    return r


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# --- the filesystem ------------------------------------------------------------

class _Terminated(BaseException):
    pass


def _on_signal(signum, frame):
    raise _Terminated(f"signal {signum}")


@contextlib.contextmanager
def loop_btrfs(image: Path, size: int, mnt: Path):
    """A fresh btrfs on a sparse file on a loop device, mounted at ``mnt``; always
    unmounted and detached afterwards, whatever happens (SIGTERM and SIGHUP raise)."""
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    dev = None
    mounted = False
    try:
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(size)
        run(["mkfs.btrfs", "-q", "-f", str(image)])
        dev = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
        mnt.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "btrfs", dev, str(mnt)])
        mounted = True
        yield dev
    finally:
        # Cleanup must not be cut short by a second Ctrl-C.
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if mounted:
                for attempt in range(10):
                    if run(["umount", str(mnt)], check=False).returncode == 0:
                        break
                    time.sleep(0.5)
                else:
                    print(f"bench: {mnt} busy; lazy unmount", file=sys.stderr)
                    run(["umount", "-l", str(mnt)], check=False)
            if dev:
                r = run(["losetup", "-d", dev], check=False)
                if r.returncode != 0:
                    print(f"bench: losetup -d {dev} failed: {r.stderr.strip()}", file=sys.stderr)
            image.unlink(missing_ok=True)
        finally:
            signal.signal(signal.SIGINT, sigint)
            for s, h in old.items():
                signal.signal(s, h)


def fs_commit(mnt: Path) -> None:
    os.sync()
    run(["btrfs", "filesystem", "sync", str(mnt)])


def fs_used(mnt: Path) -> int:
    """Bytes the filesystem has in use (data + metadata), after a commit."""
    fs_commit(mnt)
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def btrfs_du(*paths: Path) -> tuple[int, int, int]:
    """``btrfs filesystem du -s --raw`` over ``paths`` together: (total, exclusive,
    set shared).  exclusive + set shared is the data the paths occupy on disk."""
    out = run(["btrfs", "filesystem", "du", "-s", "--raw", *map(str, paths)]).stdout
    total = excl = 0
    shared = 0
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit():
            total += int(fields[0])
            excl += int(fields[1])
            shared = max(shared, int(fields[2]))  # "set shared" counts the whole set; same on each line
    return total, excl, shared


def on_disk(*paths: Path) -> int:
    _, excl, shared = btrfs_du(*paths)
    return excl + shared


# --- timed runs --------------------------------------------------------------------

@dataclass
class Timing:
    wall: float
    synced: float
    ok: bool = True
    note: str = ""


def timed(cmd: list[str], *, cold: bool) -> Timing:
    if cold:
        drop_caches()
    else:
        os.sync()
    t0 = time.monotonic()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    t1 = time.monotonic()
    os.sync()
    t2 = time.monotonic()
    if r.returncode != 0:
        return Timing(t1 - t0, t2 - t0, ok=False,
                      note=f"exit {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:] or ''}")
    return Timing(t1 - t0, t2 - t0)


def prepare_rpm_root(root: Path, key: Path) -> None:
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy2(f"/etc/{name}", root / "etc" / name)
    run(["rpmkeys", "--root", str(root), "--dbpath", "/var/lib/rpm", "--import", str(key)])


def rpm_install(root: Path, key: Path, rpms: list[Path], *, cold: bool) -> Timing:
    prepare_rpm_root(root, key)
    return timed([*rpm_root_cmd(root), *RPM_INSTALL_OPTS, *map(str, rpms)], cold=cold)


def usrview_available(sub: str) -> tuple[bool, str]:
    r = subprocess.run([*usrview_cmd(), sub, "--help"], check=False, capture_output=True, text=True, cwd=REPO,
                       stdin=subprocess.DEVNULL)
    if r.returncode == 0:
        return True, ""
    return False, (r.stderr.strip().splitlines() or ["?"])[-1]


def usrview_import(store: Path, key: Path, rpms: list[Path], *, cold: bool) -> Timing:
    return timed([*usrview_cmd(), "import", "--store", str(store), "--keys", str(key), *map(str, rpms)],
                 cold=cold)


# --- report ------------------------------------------------------------------------

def _rate(t: Timing, files: int, nbytes: int) -> str:
    if not t.ok:
        return f"FAILED ({t.note})"
    return (f"{t.wall:7.2f} s  (+sync {t.synced:6.2f} s)  {files / t.wall:8.0f} files/s  "
            f"{nbytes / t.wall / 1e6:7.1f} MB/s")


def _mb(n: int) -> str:
    return f"{n / 1e6:9.1f} MB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help=f"where the package set and the filesystem image live (default {DEFAULT_WORKDIR})")
    ap.add_argument("--pkgset", type=Path, help="a package set made by tests/pkgset.py (default WORKDIR/pkgs; "
                                                "built there when absent)")
    ap.add_argument("--count", type=int, default=250, help="packages, when the set is built (default 250)")
    ap.add_argument("--size-gib", type=float, help="btrfs size (default: 8 GiB or 8x the set, the larger)")
    ap.add_argument("--no-warm", action="store_true", help="cold runs only")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (loop device, mount, drop_caches)")

    setdir = (args.pkgset or args.workdir / "pkgs").resolve()
    if not (setdir / "manifest.json").exists():
        print(f"bench: building the package set in {setdir} ...")
        pkgset.build_set(setdir, args.count)
    man = pkgset.load(setdir)
    key = Path(man["key"])
    v1 = sorted((setdir / "set-v1").glob("*.rpm"))
    v2 = sorted((setdir / "set-v2").glob("*.rpm"))
    files, nbytes = man["files"], man["bytes"]
    shared = len({p.name for p in v1} & {p.name for p in v2})
    print(f"package set {setdir}: {len(v1)} packages, {files} regular files, {nbytes / 1e6:.1f} MB "
          f"(+{man['symlinks']} symlinks), payload {man['compress']}; set-v2 shares {shared} of "
          f"{len(v2)} rpms")

    size = int((args.size_gib or max(8.0, 8 * nbytes / 2**30)) * 2**30)
    have_import, why_import = usrview_available("import")
    have_deploy, why_deploy = usrview_available("deploy")
    if not have_import:
        print(f"bench: usrview import not available ({why_import}): rpm side only")
    if not have_deploy:
        print(f"bench: usrview deploy not available ({why_deploy}): no image figures")

    args.workdir.mkdir(parents=True, exist_ok=True)
    mnt = Path(tempfile.mkdtemp(prefix="mnt-", dir=args.workdir))
    results: dict[str, Timing] = {}
    space: dict[str, int] = {}
    try:
        with loop_btrfs(args.workdir / "btrfs.img", size, mnt) as dev:
            print(f"btrfs {size / 2**30:.1f} GiB on {dev} at {mnt}\n")
            modes = [("cold", True)] + ([] if args.no_warm else [("warm", False)])
            for label, cold in modes:
                if have_import:
                    results[f"usrview import {label}"] = t = usrview_import(mnt / f"store-{label}", key, v1, cold=cold)
                    print(f"  usrview import {label:4}: {_rate(t, files, nbytes)}", flush=True)
                results[f"rpm -i {label}"] = t = rpm_install(mnt / f"root-{label}", key, v1, cold=cold)
                print(f"  rpm -i         {label:4}: {_rate(t, files, nbytes)}", flush=True)

            # Disk space: a fresh store deployed with set-v1 (importing it all), then
            # set-v2; rpm's two separate roots beside it.
            store = mnt / "store-images"
            if have_deploy:
                base = fs_used(mnt)
                for n, src in ((1, v1), (2, v2)):
                    t = timed([*usrview_cmd(), "deploy", "--store", str(store), "--keys", str(key),
                               str(src[0].parent)], cold=False)
                    results[f"usrview deploy {n}"] = t
                    if t.ok:
                        space[f"store {n} du"] = on_disk(store)
                        space[f"store {n} used"] = fs_used(mnt) - base
                    print(f"  usrview deploy set-v{n}: {t.wall:.2f} s{'' if t.ok else '  FAILED ' + t.note}",
                          flush=True)
            used_before_v2root = fs_used(mnt)
            t = rpm_install(mnt / "root-v2", key, v2, cold=False)
            results["rpm -i set-v2"] = t
            print(f"  rpm -i set-v2 (second root): {t.wall:.2f} s{'' if t.ok else '  FAILED ' + t.note}")
            space["root-v2 used delta"] = fs_used(mnt) - used_before_v2root
            fs_commit(mnt)
            space["root-v1 du"] = on_disk(mnt / "root-cold")
            space["roots du"] = on_disk(mnt / "root-cold", mnt / "root-v2")
            print()
            report(results, space, files, nbytes)
            if have_deploy and (store / ".").exists():
                r = run([*usrview_cmd(), "status", "--store", str(store)], check=False)
                print("\nusrview status:\n" + (r.stdout or r.stderr).rstrip())
    except (KeyboardInterrupt, _Terminated) as e:
        print(f"\nbench: interrupted ({str(e) or 'Ctrl-C'}); filesystem unmounted and loop device detached",
              file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()
    return 0


def report(results: dict[str, Timing], space: dict[str, int], files: int, nbytes: int) -> None:
    print("=== import vs rpm -i (same rpms, same btrfs; rpm checks signatures too) ===")
    for label in ("cold", "warm"):
        u, r = results.get(f"usrview import {label}"), results.get(f"rpm -i {label}")
        if r is None:
            continue
        print(f"{label}:")
        print(f"  usrview import  {_rate(u, files, nbytes) if u else 'not run'}")
        print(f"  rpm -i          {_rate(r, files, nbytes)}")
        if u and u.ok and r.ok:
            verdict = "meets" if u.wall <= r.wall else "MISSES"
            print(f"  usrview/rpm: {u.wall / r.wall:.2f}x wall, {u.synced / r.synced:.2f}x with sync "
                  f"-- {verdict} the goal (no slower than rpm -i)")
    print("\n=== disk: one image vs two (set-v2 shares 90% of set-v1's rpms) ===")
    if "store 1 du" in space and "store 2 du" in space:
        for how, k1, k2 in (("btrfs fi du (data)", "store 1 du", "store 2 du"),
                            ("fs used (data+metadata)", "store 1 used", "store 2 used")):
            a, b = space[k1], space[k2]
            extra = (b - a) / a * 100 if a else float("nan")
            verdict = "meets" if extra <= 10 else "MISSES"
            print(f"  usrview store, {how:24}: one image {_mb(a)}, two images {_mb(b)}: "
                  f"+{extra:.1f}% -- {verdict} the goal (<= 10%)")
    else:
        print("  usrview images: not measured (usrview deploy missing or failed)")
    one, two = space.get("root-v1 du"), space.get("roots du")
    if one and two:
        print(f"  rpm, two separate roots, btrfs fi du       : one root  {_mb(one)}, two roots  {_mb(two)}: "
              f"+{(two - one) / one * 100:.1f}%")
    print(f"  (rpm root-v2 alone, fs used delta: {_mb(space.get('root-v2 used delta', 0))})")


if __name__ == "__main__":
    sys.exit(main())
