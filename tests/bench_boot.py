"""Boot time with the view as /usr against the same packages installed plainly.

Not a test: figures for issue 11, section 6.  Two disks of the same kind (a raw
btrfs root, tests/vm.py), the same package set (the guest image of tests/vm.py:
set-v2 and usrview's package), the same qemu settings (TCG, 2 CPUs, 1 GiB):

- **view**: the store on the root, the image deployed, the initrd made by dracut
  with usrview's module, which mounts the view on /sysroot/usr;
- **plain**: the packages installed by ``rpm --root`` into the root's /usr, the
  initrd made by the same dracut command without usrview's module.

Rounds alternate view and plain boots in the same sitting, after one view boot
kept on the disk (not counted; ``--no-record-boot`` leaves it out): it records
the files the boot opens, which the measured view boots check ahead (the
prefetch, docs/boot.md).  A boot's time is the
guest's own: kernel start to multi-user.target (its ActiveEnterTimestampMonotonic),
read by a script run after the target, which then powers off.  Also printed: the
daemon's CPU time by thread and its children's (the forked signature checks and the
full check of the compiled tree), when the full check passed, what warming read, the
wall time of each qemu run, the daemon's RSS at the end of boot, the number of
FUSE requests it answered during boot (estimated: every answer is one write to
/dev/fuse, so the daemon's write system calls from /proc/PID/io, its few log
writes included), and the sizes of both initrds.

    .venv/bin/python tests/bench_boot.py [--rounds 3] [--workdir DIR] [--keep]

The machine is shared and TCG is CPU-bound: run it on a quiet machine, and read
the median and the spread, not one boot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import pkgset, vm

SCRIPT = r"""
systemctl show -p InitRDTimestampMonotonic -p UserspaceTimestampMonotonic > times
systemctl show -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic \
    usrview-sysroot-usr.service | while read -r line; do echo "view_$line"; done >> times
pid=$(systemctl show -p MainPID --value usrview-sysroot-usr.service 2>/dev/null)
if [ -n "$pid" ] && [ "$pid" != 0 ]; then
    grep VmRSS /proc/$pid/status > rss
    cat /proc/$pid/io > io
    cat /proc/$pid/stat > stat
    for t in /proc/$pid/task/*; do echo "$(cat $t/comm 2>/dev/null) $(cat $t/stat 2>/dev/null)"; done > threads
    kill -USR2 "$pid"  # the daemon logs the requests it answered by kind, and its checks
    sleep 1
fi
# where the time went (kept with --keep): the booted systemd's view of the boot,
# the journal and the kernel log (the daemon's console lines, with its stage times)
# (systemd-analyze blame refuses while this unit still runs: the units' own times instead)
systemctl show -p Id -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic '*' > units 2>&1
journalctl -b -o short-monotonic --no-pager > journal 2>&1
systemd-analyze critical-chain multi-user.target > critical-chain 2>&1
dmesg > dmesg 2>&1
"""


def boot_once(kind: str, disk: Path, kernel: vm.Kernel, initrd: Path, workdir: Path, persist: bool = False,
              cmdline: str = "") -> dict:
    result = vm.boot(disk, kernel, initrd, workdir, script=SCRIPT, timeout=600, persist=persist, cmdline=cmdline)
    if result.boots != 1:
        raise RuntimeError(result.why())
    row = {"kind": kind, "target_s": result.target_seconds(), "wall_s": result.seconds}
    times = {k: int(v) / 1e6 for k, v in (line.split("=", 1) for line in result.text("times").splitlines())
             if v.strip().isdigit()}
    # initrd start, the view's daemon started and ready (in the initrd), switch-root (the
    # booted system's systemd starting): seconds after the kernel started
    row["initrd_s"] = times.get("InitRDTimestampMonotonic", 0)
    row["switch_root_s"] = times.get("UserspaceTimestampMonotonic", 0)
    if times.get("view_ActiveEnterTimestampMonotonic"):
        row["view_start_s"] = times["view_ExecMainStartTimestampMonotonic"]
        row["view_ready_s"] = times["view_ActiveEnterTimestampMonotonic"]
    if (result.out / "rss").exists():
        row["rss_kib"] = int(result.text("rss").split()[1])
        io = dict(line.split(": ") for line in result.text("io").splitlines())
        row["daemon_writes"] = int(io["syscw"])
        row["daemon_reads"] = int(io["syscr"])
        if (result.out / "stat").exists():  # utime + stime: the daemon's CPU during the boot
            fields = result.text("stat").rpartition(")")[2].split()
            tick = os.sysconf("SC_CLK_TCK")
            row["daemon_cpu_s"] = round((int(fields[11]) + int(fields[12])) / tick, 2)
            # cutime + cstime: the children waited for: the forked signature checks of the
            # headers (before READY) and the full check of the compiled tree
            row["children_cpu_s"] = round((int(fields[13]) + int(fields[14])) / tick, 2)
        if (result.out / "threads").exists():  # the daemon's threads' CPU, the main thread (serving) first
            cpu = []
            for line in result.text("threads").splitlines():
                stat = line.rpartition(")")[2].split()
                if len(stat) > 12:
                    cpu.append(round((int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), 2))
            row["thread_cpu_s"] = cpu
    journal = result.text("journal") if (result.out / "journal").exists() else ""
    # the daemon's own account: its stages to READY (a console line), and what it
    # answered and hashed until the end of boot (SIGUSR2)
    ready = re.search(r"usrview: (ready [\d.]+ s after the kernel started.*)", journal)
    if ready:
        row["daemon_stages"] = ready.group(1)
    requests = re.findall(r"usrview\[\d+\]: requests: (.*)", journal)
    if requests:
        kinds = {k: int(v) for k, v in (item.rsplit(" ", 1) for item in requests[-1].split(", ") if item != "none")}
        row["fuse_requests"] = sum(kinds.values())
        row["fuse_requests_by_kind"] = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    dispatch = re.findall(r"usrview\[\d+\]: dispatch: (.*)", journal)
    if dispatch:
        row["dispatch"] = dispatch[-1]
    profile = re.findall(r"usrview\[\d+\]: (profile.*)", journal)
    if profile:  # usrview.profile=1: the serving thread's profile, logged with the requests
        row["profile"] = profile
    hashed = re.findall(r"files hashed: (\d+) .*?, ([\d.]+) MB in ([\d.]+) s", journal)
    if hashed:
        row["files_hashed"], row["hashed_mb"], row["hash_s"] = int(hashed[-1][0]), *map(float, hashed[-1][1:])
    proven = re.search(r"compiled tree checked against the headers in ([\d.]+) s \(([\d.]+) s after", journal)
    if proven:
        row["full_check_s"], row["full_check_done_s"] = map(float, proven.group(1, 2))
    warm = re.search(r"warm: (\d+) recorded files \(([\d.]+) MB\) read through the mount in ([\d.]+) s", journal)
    if warm:
        row["warmed_files"], row["warmed_mb"], row["warm_s"] = int(warm.group(1)), *map(float, warm.group(2, 3))
    ahead = re.findall(r"checked ahead: (\d+)", journal)
    if ahead:
        row["checked_ahead"] = int(ahead[-1])
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="view+plain boot pairs (default 3)")
    ap.add_argument("--workdir", type=Path, help="where disks and logs go (default a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-record-boot", dest="record_boot", action="store_false",
                    help="measure without a first view boot recording the files opened (the prefetch's record)")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-boot-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        kernel = vm.fetch_kernel()
        setdir = vm.guest_packages()
        images = vm.guest_images(setdir, work)
        key = setdir / "key" / pkgset.PUBKEY_NAME
        initrd_view = vm.build_initrd(kernel, work / "initrd-usrview.img", keys=key)
        initrd_plain = vm.build_initrd(kernel, work / "initrd-plain.img", usrview=False)
        view_disk = vm.make_view_disk(work / "view.raw", setdir, [images[1]])
        plain_disk = vm.make_plain_disk(work / "plain.raw", setdir, images[1])
        rows = []
        if args.record_boot:
            # a first view boot kept on the disk: it records the files the boot opens
            # (STORE/cache/opened-ID), which every measured view boot then checks ahead
            row = boot_once("view", view_disk, kernel, initrd_view, work / "run-view-record", persist=True)
            print("record boot (not counted):", json.dumps(row), flush=True)
        for i in range(args.rounds):
            for kind, disk, initrd in (("view", view_disk, initrd_view), ("plain", plain_disk, initrd_plain)):
                row = boot_once(kind, disk, kernel, initrd, work / f"run-{kind}-{i}")
                rows.append(row)
                print(json.dumps(row), flush=True)
        view = [r["target_s"] for r in rows if r["kind"] == "view"]
        plain = [r["target_s"] for r in rows if r["kind"] == "plain"]
        mv, mp = statistics.median(view), statistics.median(plain)
        print(f"\nboot to multi-user.target (guest clock, {args.rounds} rounds, TCG, {vm.CPUS} CPUs, "
              f"{vm.MEMORY_MB} MiB):")
        print(f"  view  (usrview /usr): median {mv:.2f} s  (min {min(view):.2f}, max {max(view):.2f})")
        print(f"  plain (rpm --root):   median {mp:.2f} s  (min {min(plain):.2f}, max {max(plain):.2f})")
        print(f"  ratio view/plain: {mv / mp:.2f}x (medians); best against best {min(view) / min(plain):.2f}x; "
              f"goal <= 1.3x")
        for kind in ("view", "plain"):
            mine = [r for r in rows if r["kind"] == kind]
            med = {k: statistics.median(r.get(k, 0) for r in mine)
                   for k in ("initrd_s", "switch_root_s", "view_start_s", "view_ready_s", "target_s")}
            line = f"  {kind:5} stages (medians, s after kernel start): initrd {med['initrd_s']:.1f}"
            if kind == "view" and med["view_ready_s"]:
                line += f", view daemon started {med['view_start_s']:.1f}, ready {med['view_ready_s']:.1f}"
            line += f", switch-root {med['switch_root_s']:.1f}, multi-user.target {med['target_s']:.1f}"
            print(line)
        rss = [r["rss_kib"] for r in rows if "rss_kib" in r]
        writes = [r["daemon_writes"] for r in rows if "daemon_writes" in r]
        if rss:
            print(f"  daemon RSS at the end of boot: median {statistics.median(rss) / 1024:.1f} MiB")
            print(f"  daemon write calls during boot (an upper bound of the FUSE answers): "
                  f"median {statistics.median(writes):.0f}")
        counted = [r for r in rows if "fuse_requests" in r]
        if counted:
            mid = sorted(counted, key=lambda r: r["fuse_requests"])[len(counted) // 2]
            print(f"  FUSE requests answered during boot (the daemon's count): median {mid['fuse_requests']} "
                  f"({mid['fuse_requests_by_kind']})")
            print(f"  files hashed during boot: median {statistics.median(r['files_hashed'] for r in counted):.0f}, "
                  f"{statistics.median(r['hashed_mb'] for r in counted):.1f} MB, waited "
                  f"{statistics.median(r['hash_s'] for r in counted):.2f} s for digests; checked ahead: median "
                  f"{statistics.median(r.get('checked_ahead', 0) for r in counted):.0f}")
        for r in rows:
            if "daemon_stages" in r:
                print(f"  daemon ({r['kind']}, {r['target_s']:.1f} s boot): {r['daemon_stages']}")
                print(f"    CPU {r.get('daemon_cpu_s')} s (threads {r.get('thread_cpu_s')}), children (signature "
                      f"checks, full check) {r.get('children_cpu_s')} s; warm {r.get('warmed_files')} files, {r.get('warmed_mb')} MB "
                      f"in {r.get('warm_s')} s; " + (
                          f"full check {r['full_check_s']} s, passed {r['full_check_done_s']} s after the kernel started"
                          if r.get("full_check_s") is not None else
                          "full check not run by the target (usrview.full_check_delay after the mount)")
                      + f"; switch-root {r['switch_root_s']:.2f} s")
                if "dispatch" in r:
                    print(f"    requests waited for: {r['dispatch']}")
        size_view, size_plain = initrd_view.stat().st_size, initrd_plain.stat().st_size
        print(f"  initrd: {size_view / 1e6:.1f} MB with usrview's module, {size_plain / 1e6:.1f} MB without "
              f"(+{(size_view - size_plain) / 1e6:.1f} MB)")
        (work / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"(kept {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
