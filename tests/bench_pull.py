"""Benchmark (issue 12 §6): ``usrview pull`` over loopback vs ``usrview deploy`` of a directory,
and the bytes an update costs: whole rpms, file objects, rsync, the changed files themselves.

Over the package set of tests/pkgset.py (250 signed rpms made from the installed Debian
packages, and its update set-v2 in which 10% of the packages changed; built first when
``--pkgset`` holds none), published by ``usrview publish --file-objects`` into a
repository that nginx (tests/remote_servers.py) serves on 127.0.0.1, stores on one
btrfs made for the run on a loop device:

1. ``usrview deploy --store A --keys KEY set-v1`` beside ``usrview pull --store B
   --keys KEY URL`` into an empty store (the same 250 packages, every rpm fetched
   whole: an empty store has none of their files).  Warm page cache; the best of
   ``--repeat`` runs each, fresh stores every time.  Goal: pull <= 1.2x deploy.
2. The update (set-v2 published as serial 2), the bytes each way costs:
   - whole rpms: ``usrview pull`` of an index without file objects into store A
     (set-v2 published there as image ``plain``): the changed packages' rpms;
   - file objects: ``usrview pull`` into a store like B of set-v2 published as
     image ``files`` (no earlier index, so no header deltas): each changed
     package's header (compressed, ``objects/files/heads/``) and the files the
     store lacks (needs ``--repeat`` 2 or more: the second pull's store);
   - file objects + deltas: ``usrview pull`` of serial 2 into store B: each changed
     package's header as a delta from the header of its set-v1 version, which the
     store holds (``objects/files/heads/deltas/``), and the files the store lacks;
   - rsync of the rpm directory (how the design's author moved images): a copy of
     set-v1 brought to set-v2 by ``rsync -a --delete --no-whole-file --stats``
     over a local pipe -- rsync's delta algorithm runs between its sender and
     receiver processes as it does over ssh, ``--no-whole-file`` because rsync
     skips it for local copies otherwise -- and again with ``--fuzzy
     --delete-after --compress`` (an updated rpm has a new name: --fuzzy lets
     rsync use the old one as its basis);
   - the changed files themselves: every file of an updated package whose digest
     no set-v1 package has, each compressed alone with zstd at publish's level.
   Bytes are what nginx's access log says it sent (bodies; the signed index, which
   both pulls fetch, printed apart), beside rsync's own "Total bytes sent" +
   "received".  Goal: file objects <= 1.2x the changed files;
   where it misses, the floor: the changed packages' signed headers, which a
   client must fetch to learn (and trust) their files' digests.

    .venv/bin/python tests/bench_pull.py [--pkgset DIR] [--workdir DIR] [--repeat N] [--size-gib N]

Needs root (loop device, mount), nginx and rsync (``apt-get install rsync``).  Prints
figures; asserts nothing.  The loop device is always detached, nginx always stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zstandard  # noqa: E402

from tests import pkgset  # noqa: E402
from tests.bench_store import _Terminated, loop_btrfs, usrview_cmd  # noqa: E402
from tests.remote_servers import nginx  # noqa: E402
from usrview.remote.publish import FILE_OBJECT_LEVEL  # noqa: E402
from usrview.store.payload import open_payload  # noqa: E402
from verifier.header import read_package_file  # noqa: E402

DEFAULT_WORKDIR = Path("/var/tmp/usrview-bench-pull")
GOAL_TIME = 1.2
GOAL_BYTES = 1.2


def run(cmd: list, *, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    os.sync()
    t0 = time.monotonic()
    r = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... exited {r.returncode}\n{r.stderr[-3000:]}")
    return wall, r


class Served:
    """What nginx sent since the last mark: request count and body bytes, by kind."""

    def __init__(self, server):
        self.server = server
        self.mark = 0

    def since(self) -> dict[str, int]:
        reqs = self.server.requests()[self.mark:]
        self.mark += len(reqs)
        out = {"requests": len(reqs), "bytes": 0, "rpm_bytes": 0, "file_object_bytes": 0, "file_objects": 0,
               "head_bytes": 0, "index_bytes": 0, "head_deltas": 0}
        for r in reqs:
            sent = int(r[3]) if r[3].isdigit() else 0
            out["bytes"] += sent
            if r[1].endswith(".rpm"):
                out["rpm_bytes"] += sent
            elif "/objects/files/heads/" in r[1]:
                out["head_bytes"] += sent
                out["head_deltas"] += "/heads/deltas/" in r[1]
            elif "/objects/files/" in r[1]:
                out["file_object_bytes"] += sent
                out["file_objects"] += 1
            else:
                out["index_bytes"] += sent
        return out


def fetch_only(store: Path, key: Path, url: str) -> float:
    """Seconds pull takes to fetch every package into an empty store, importing none
    (the network side of a pull alone, in a process of its own)."""
    code = ("import sys, time; from usrview.store import Store; from usrview.cli._common import load_keyring;"
            "from usrview.remote.pull import pull; from pathlib import Path; s = Store.open(sys.argv[1], create=True);"
            "k = load_keyring([Path(sys.argv[2])]); t = time.monotonic(); pull(s, sys.argv[3], k, deploy=False);"
            "print(time.monotonic() - t)")
    _, r = run([sys.executable, "-c", code, store, key, url])
    return float(r.stdout.split()[-1])


def publish(key_home: Path, fpr: str, src: Path, repo: Path, *more: str) -> float:
    wall, _ = run([*usrview_cmd(), "publish", "--gpg-home", key_home, "--sign-with", fpr, *more, src, repo])
    return wall


def rsync_bytes(v1: Path, v2: Path, dest: Path, *extra: str) -> tuple[int, int, float]:
    """(bytes sent + received, literal data, seconds) of bringing a copy of v1 to v2."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(v1, dest)
    wall, r = run(["rsync", "-a", "--delete", "--no-whole-file", "--stats", *extra, f"{v2}/", f"{dest}/"])

    def stat(name: str) -> int:
        m = re.search(rf"^{name}: ([\d,.]+)", r.stdout, re.M)
        return int(m.group(1).replace(",", "").replace(".", "")) if m else 0

    shutil.rmtree(dest)
    return stat("Total bytes sent") + stat("Total bytes received"), stat("Literal data"), wall


def changed_files(v1: list[Path], v2: list[Path]) -> dict[str, int]:
    """The files of set-v2's new rpms whose digest no set-v1 package has: count, bytes,
    compressed bytes (each alone, zstd at publish's level), and the new rpms' header bytes."""
    old = set()
    for p in v1:
        old |= {(f.digest_algo, f.digest) for f in read_package_file(p).files if f.digest}
    names = {p.name for p in v1}
    out = {"packages": 0, "files": 0, "bytes": 0, "compressed": 0, "headers": 0, "headers_compressed": 0,
           "rpm_bytes": 0}
    zstd = zstandard.ZstdCompressor(level=FILE_OBJECT_LEVEL)
    for p in v2:
        if p.name in names:
            continue
        package = read_package_file(p)
        out["packages"] += 1
        out["headers"] += package.payload_offset
        with open(p, "rb") as f:
            out["headers_compressed"] += len(zstd.compress(f.read(package.payload_offset)))
        out["rpm_bytes"] += p.stat().st_size
        seen = set()
        with open_payload(p, package) as members:
            for m in members:
                key = (m.entry.digest_algo, m.entry.digest)
                if not m.has_content or not m.entry.size or key in old or key in seen:
                    for _ in m.chunks():
                        pass
                    continue
                seen.add(key)
                data = b"".join(m.chunks(verify=True))
                out["files"] += 1
                out["bytes"] += len(data)
                out["compressed"] += len(zstd.compress(data))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help=f"where the package set, the repository and the filesystem image live "
                         f"(default {DEFAULT_WORKDIR})")
    ap.add_argument("--pkgset", type=Path, help="a package set made by tests/pkgset.py (default WORKDIR/pkgs; "
                                                "built there when absent)")
    ap.add_argument("--count", type=int, default=250, help="packages, when the set is built (default 250)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of deploy and of pull; the best counts (default 2)")
    ap.add_argument("--size-gib", type=float, default=8.0, help="btrfs size (default 8 GiB)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (loop device, mount)")
    if shutil.which("rsync") is None:
        ap.error("needs rsync (apt-get install rsync)")

    setdir = (args.pkgset or args.workdir / "pkgs").resolve()
    if not (setdir / "manifest.json").exists():
        print(f"bench: building the package set in {setdir} ...", flush=True)
        pkgset.build_set(setdir, args.count)
    man = pkgset.load(setdir)
    key, fpr = Path(man["key"]), man["fingerprint"]
    key_home = key.parent / "gnupg"
    v1_dir, v2_dir = setdir / "set-v1", setdir / "set-v2"
    v1, v2 = sorted(v1_dir.glob("*.rpm")), sorted(v2_dir.glob("*.rpm"))
    rpm_total = sum(p.stat().st_size for p in v1)
    print(f"package set {setdir}: {len(v1)} packages, {man['files']} files, {man['bytes'] / 1e6:.1f} MB, "
          f"rpms {rpm_total / 1e6:.1f} MB ({man['compress']}); set-v2 updates "
          f"{len({p.name for p in v2} - {p.name for p in v1})}", flush=True)

    work = args.workdir.resolve()
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    t_pub1 = publish(key_home, fpr, v1_dir, repo, "--file-objects")
    objects = list((repo / "objects" / "files").rglob("*.zst"))
    print(f"publish set-v1 --file-objects: {t_pub1:.1f} s; {len(objects)} file objects, "
          f"{sum(p.stat().st_size for p in objects) / 1e6:.1f} MB", flush=True)

    mnt = Path(tempfile.mkdtemp(prefix="mnt-", dir=work))
    try:
        with loop_btrfs(work / "btrfs.img", int(args.size_gib * 2**30), mnt) as dev, \
                nginx(work / "nginx", root=repo) as server:
            print(f"btrfs on {dev} at {mnt}; nginx {server.url}\n", flush=True)
            served = Served(server)
            deploys, pulls, fetches, first_pull = [], [], [], {}
            for i in range(args.repeat):
                t, _ = run([*usrview_cmd(), "deploy", "--store", mnt / f"deploy-{i}", "--keys", key, v1_dir])
                deploys.append(t)
                print(f"  deploy set-v1 (directory), run {i + 1}: {t:6.2f} s", flush=True)
                served.since()
                t, r = run([*usrview_cmd(), "pull", "--store", mnt / f"pull-{i}", "--keys", key, "--json",
                            server.url])
                pulls.append(t)
                first_pull = {"json": json.loads(r.stdout), "served": served.since()}
                print(f"  pull set-v1 (empty store),  run {i + 1}: {t:6.2f} s", flush=True)
                t = fetch_only(mnt / f"fetch-{i}", key, server.url)
                fetches.append(t)
                served.since()
                print(f"  fetch set-v1 only (no import), run {i + 1}: {t:6.2f} s", flush=True)

            first_pull["fetch"] = fetches
            t_pub2 = publish(key_home, fpr, v2_dir, repo, "--file-objects")
            publish(key_home, fpr, v2_dir, repo, "--name", "plain")
            served.since()
            t_whole, r = run([*usrview_cmd(), "pull", "--store", mnt / "deploy-0", "--keys", key, "--json",
                              "--image", "plain", server.url])
            whole = {"json": json.loads(r.stdout), "served": served.since(), "time": t_whole}
            t_delta, r = run([*usrview_cmd(), "pull", "--store", mnt / "pull-0", "--keys", key, "--json",
                              server.url])
            delta = {"json": json.loads(r.stdout), "served": served.since(), "time": t_delta}
            nodelta = None
            if args.repeat > 1:
                publish(key_home, fpr, v2_dir, repo, "--file-objects", "--name", "files")
                served.since()
                t_nd, r = run([*usrview_cmd(), "pull", "--store", mnt / "pull-1", "--keys", key, "--json",
                               "--image", "files", server.url])
                nodelta = {"json": json.loads(r.stdout), "served": served.since(), "time": t_nd}
        rs_plain = rsync_bytes(v1_dir, v2_dir, work / "rsync-dest")
        rs_fuzzy = rsync_bytes(v1_dir, v2_dir, work / "rsync-dest", "--fuzzy", "--delete-after", "--compress")
        changed = changed_files(v1, v2)
    except (KeyboardInterrupt, _Terminated) as e:
        print(f"\nbench: interrupted ({str(e) or 'Ctrl-C'}); filesystem unmounted, loop device detached",
              file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()
        subprocess.run(["gpgconf", "--homedir", str(key_home), "--kill", "gpg-agent"], check=False,
                       capture_output=True)  # publish's gpg started it

    report(deploys, pulls, first_pull, t_pub2, whole, delta, rs_plain, rs_fuzzy, changed, rpm_total, nodelta)
    return 0


def _mb(n: float) -> str:
    return f"{n / 1e6:9.3f} MB"


def report(deploys, pulls, first_pull, t_pub2, whole, delta, rs_plain, rs_fuzzy, changed, rpm_total,
           nodelta=None) -> None:
    d, p = min(deploys), min(pulls)
    print("\n=== 1. an empty store: pull over loopback vs deploy of a local directory (best of "
          f"{len(deploys)}) ===")
    print(f"  deploy set-v1       {d:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in deploys)})")
    print(f"  pull set-v1         {p:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in pulls)}); "
          f"nginx sent {_mb(first_pull['served']['bytes'])} in {first_pull['served']['requests']} requests "
          f"(rpms {_mb(rpm_total)})")
    ratio = p / d
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end (other work slows both)")
    print(f"  pull/deploy: {ratio:.2f}x -- {'meets' if ratio <= GOAL_TIME else 'MISSES'} the goal "
          f"(<= {GOAL_TIME}x)")
    f = min(first_pull["fetch"])
    print(f"  fetching alone (no import) {f:.2f} s (runs: {', '.join(f'{t:.2f}' for t in first_pull['fetch'])}); "
          f"pull overlaps it with the import (a process of its own), so on idle CPUs its floor is about "
          f"max(deploy, fetch) = {max(d, f):.2f} s ({max(d, f) / d:.2f}x), plus checking every header before "
          f"the set is linted (a few tenths of a second) and syncing the downloaded rpms with the packages; "
          f"on busy CPUs fetching and importing take turns: deploy + fetch = {d + f:.2f} s ({(d + f) / d:.2f}x)")

    ws, ds = whole["served"], delta["served"]
    print(f"\n=== 2. the update: {changed['packages']} of the packages changed (set-v2 published in "
          f"{t_pub2:.1f} s); package bytes (the signed index, ~{ws['index_bytes'] // 1000} kB, comes "
          "on top of both pulls) ===")
    ref = changed["compressed"]
    w_bytes, d_bytes = ws["bytes"] - ws["index_bytes"], ds["bytes"] - ds["index_bytes"]
    rows = [
        ("whole rpms (pull, index without file objects)", w_bytes, f"{whole['time']:.2f} s"),
        *([("file objects (pull, whole compressed headers)",
            nodelta["served"]["bytes"] - nodelta["served"]["index_bytes"], f"{nodelta['time']:.2f} s")]
          if nodelta else []),
        ("file objects + header deltas (pull)", d_bytes, f"{delta['time']:.2f} s"),
        ("rsync --no-whole-file of the rpm directory", rs_plain[0], f"{rs_plain[2]:.2f} s"),
        ("rsync --no-whole-file --fuzzy --compress", rs_fuzzy[0], f"{rs_fuzzy[2]:.2f} s"),
        ("the changed files themselves (zstd each)", ref, ""),
    ]
    print(f"  {'':48} {'bytes':>13} {'x changed files':>16}  time")
    for label, n, when in rows:
        print(f"  {label:48} {_mb(n)} {n / ref if ref else float('nan'):15.1f}x  {when}")
    print(f"\n  changed files: {changed['files']} files, {changed['bytes']} bytes, {ref} bytes compressed; "
          f"their packages' rpms {_mb(changed['rpm_bytes'])}, headers {changed['headers']} bytes "
          f"({changed['headers_compressed']} compressed)")
    print(f"  file objects pull: {ds['requests']} requests: {ds['file_objects']} file objects "
          f"({ds['file_object_bytes']} bytes), headers ({ds['head_bytes']} bytes, {ds['head_deltas']} of them "
          f"deltas), rpm bytes ({ds['rpm_bytes']}), index ({ds['index_bytes']} bytes); assembled "
          f"{len(delta['json']['assembled'])} packages, fell back {len(delta['json']['fallbacks'])}")
    print(f"  whole rpms pull: {ws['requests']} requests, rpms {ws['rpm_bytes']} bytes, index {ws['index_bytes']}")
    print(f"  rsync literal data: {rs_plain[1]} bytes (plain), {rs_fuzzy[1]} bytes (fuzzy)")
    goal = d_bytes / ref if ref else float("inf")
    print(f"  file objects / changed files: {goal:.2f}x -- {'meets' if goal <= GOAL_BYTES else 'MISSES'} the "
          f"goal (<= {GOAL_BYTES}x)")
    if goal > GOAL_BYTES:
        floor = ds["head_bytes"] + ref
        print(f"  floor: the {changed['packages']} changed packages' signed headers must be fetched to learn "
              f"and trust their files' digests: {changed['headers_compressed']} bytes compressed each alone "
              f"({changed['headers']} raw), {ds['head_bytes']} bytes as deltas from the stored versions; "
              f"header deltas + changed files = {floor} bytes = {floor / ref:.2f}x the changed files. The pull "
              f"fetched {d_bytes / floor:.2f}x that floor.")


if __name__ == "__main__":
    sys.exit(main())
