"""Benchmark (issue 14 §4): the view as the ``/usr`` of a whole system, beside the host's own.

The package set is every installed package of this machine that tests/pkgset.py
can package (all but a few whose paths rpm cannot list), relocated into ``/usr``
as Fedora ships them, Python bytecode included (``pkgset.build_set(relocate=True)``);
``--count N`` takes the packages the workloads need (:data:`WORKLOAD_PACKAGES` and
what they depend on) and others in name order, N in all.  The set is built once
into ``--cache`` (default /var/cache/usrview-bench) and reused.

Then, on a btrfs made for the run on a loop device from a sparse file:

- ``usrview deploy`` of the set into a store;
- ``usrview mount --foreground`` of it (``--kernel-cache`` and ``--prefetch`` as
  given), the mount timed until the view answers statfs;
- two chroots beside each other, each entered through ``unshare -m`` (a private
  mount namespace, so nothing is left mounted behind): the *view* chroot, whose
  ``/usr`` is the view (bind-mounted), and the *native* twin, whose ``/usr`` is
  the host's own; both get the host's ``/etc``, ``/var/lib/dpkg``, ``/dev``,
  ``/proc``, ``/sys`` and a fresh ``/tmp``;
- every packaged path compared between the view and the host (type, mode,
  owner, size, link target, mtime, set-id bits, file capabilities);
- the workloads of issue 14's table, run in each chroot in turn (view, native,
  view, ...), medians printed side by side with the goals of issue 14 §5 and,
  where a goal is missed, the floor that stops it: the requests the view still
  answered in a warm run (counted by the daemon, logged at SIGUSR2) times what
  one costs in tests/fuse_floor.py's do-nothing file system;
- cold: per round a fresh mount (checked ahead when prefetch is on), the page
  cache dropped for both, the first python start and a ``find /usr``;
- the daemon's RSS mounted and at its peak.

    .venv/bin/python tests/bench_system.py [--count N] [--rounds R] [--kernel-cache auto|off]
                                           [--prefetch on|off] [--cache DIR] [--workdir DIR]

Needs root.  Every mount, loop device and process it makes is undone at the end,
on errors and Ctrl-C too.  Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import fuse_floor, pkgset  # noqa: E402
from tests.bench_store import _Terminated, loop_btrfs, run, usrview_cmd  # noqa: E402
from tests.bench_view import Daemon  # noqa: E402

DEFAULT_CACHE = Path("/var/cache/usrview-bench")
DEFAULT_WORKDIR = Path("/var/tmp/usrview-bench-system")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# --- the package set ---------------------------------------------------------------

#: The Debian packages the workloads run (with what they depend on, always in a
#: smaller set: ``--count`` adds others to them).
WORKLOAD_PACKAGES = ["python3", "gcc", "libc6-dev", "perl", "git", "passwd", "login", "dpkg", "coreutils",
                     "findutils", "util-linux", "dash"]


def packageable(count: int | None = None) -> list[str]:
    """The names of the installed packages tests/pkgset.py can package relocated
    (sorted); with ``count``, those the workloads need and others in name order, ``count`` in all."""
    names = []
    for name, arch, version in pkgset.installed():
        pkg, why = pkgset.scan(name, arch, version, relocated=True)
        if pkg is None:
            log(f"bench: not packaged: {name}: {why}")
            continue
        if name not in names:
            names.append(name)
    names.sort()
    if not count:
        return names
    needed = [n for n in pkgset.dependency_closure(WORKLOAD_PACKAGES) if n in names]
    others = [n for n in names if n not in needed]
    return sorted(needed + others[:max(0, count - len(needed))])


def system_set(cache: Path, count: int | None = None) -> Path:
    """The package set of every packageable installed package (or the first
    ``count``), built once into ``cache``: its directory."""
    names = packageable(count)
    tag = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:12]
    setdir = cache / f"system-{len(names)}-{tag}"
    if (setdir / "manifest.json").exists():
        return setdir
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{setdir.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.monotonic()
    pkgset.build_set(tmp, len(names), names=names, update_fraction=0, relocate=True, log=log)
    # the manifest names the key by its path: it moves with the directory
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["key"] = str(setdir / "key" / pkgset.PUBKEY_NAME)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.rename(setdir)
    log(f"bench: package set of {len(names)} packages built in {time.monotonic() - t0:.0f} s: {setdir}")
    return setdir


# --- the chroots -------------------------------------------------------------------

#: Runs in each chroot (the chroot's own python3): one JSON request a line on
#: stdin ({"sh": SCRIPT} or {"drop": true}), one JSON answer a line on stdout
#: ({"t": seconds, "rc": status, "err": the end of stderr}).
AGENT = r'''
import json, os, subprocess, sys, time
env = {"PATH": "/usr/local/bin:/usr/bin:/usr/sbin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
for line in sys.stdin:
    req = json.loads(line)
    if req.get("drop"):
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        print(json.dumps({"t": 0, "rc": 0, "err": ""}), flush=True)
        continue
    t0 = time.perf_counter()
    r = subprocess.run(["/bin/sh", "-c", req["sh"]], cwd="/tmp", env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t = time.perf_counter() - t0
    print(json.dumps({"t": t, "rc": r.returncode, "err": r.stderr.decode(errors="replace")[-300:]}), flush=True)
'''
#: The host's directories each chroot sees besides its /usr (bound read-only
#: where nothing writes; /tmp is the chroot's own).
HOST_BINDS = ("etc", "var/lib/dpkg", "root")


class Chroot:
    """A chroot whose /usr is ``usr``, entered through ``unshare -m`` (a private
    mount namespace: its mounts go when the agent ends) and driven by AGENT."""

    def __init__(self, name: str, root: Path, usr: Path):
        self.name, self.root, self.usr = name, root, usr
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        root = self.root
        for d in ("usr", "tmp", "dev", "proc", "sys", "run", *HOST_BINDS):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        for name in os.listdir("/"):
            target = Path("/") / name
            if target.is_symlink() and not (root / name).is_symlink():  # bin -> usr/bin ...
                (root / name).symlink_to(os.readlink(target))
        (root / "tmp" / "agent.py").write_text(AGENT)
        nosuid = NOSUID_USR.lstrip("/")
        binds = [f"mount --bind {shlex.quote(str(self.usr))} usr",
                 f"mkdir -p {nosuid} && mount --bind -o nosuid {shlex.quote(str(self.usr))} {nosuid}"]
        for d in HOST_BINDS:
            binds.append(f"mount --bind /{d} {d} && mount -o remount,bind,ro {d}")
        binds += ["mount --rbind /dev dev", "mount -t proc proc proc", "mount --rbind /sys sys",
                  "mount -t tmpfs tmpfs run"]
        script = "set -e; cd " + shlex.quote(str(root)) + "; " + "; ".join(binds) + \
            "; exec chroot . /usr/bin/python3 -u /tmp/agent.py"
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.ask({"sh": "true"})

    def ask(self, request: dict) -> dict:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"the {self.name} chroot's agent ended: {err[-1000:]}")
        return json.loads(line)

    def time(self, script: str) -> float:
        r = self.ask({"sh": script})
        if r["rc"] != 0:
            raise RuntimeError(f"{self.name}: {script!r} exited {r['rc']}: {r['err'].strip()}")
        return r["t"]

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


# --- the workloads ---------------------------------------------------------------

#: The execs row without the capability request: each chroot's ``/usr`` also bound
#: nosuid here, in the chroot's own mount namespace (gone with it).
NOSUID_USR = "/tmp/usr-nosuid"
EXECS = "200 execs of /usr/bin/true"
NOSUID_EXECS = "200 execs from /usr bound nosuid"
HELLO_C = '#include <stdio.h>\\nint main(void) { puts("hello"); return 0; }\\n'
#: name -> (shell script run in each chroot, goal as view/native).
WORKLOADS = {
    "python imports (with bytecode)": (
        "python3 -c 'import json, asyncio, email.mime.text, http.client, xml.etree.ElementTree, "
        "sqlite3, decimal, unittest, argparse, logging'", 1.1),
    "gcc compile and link": (f"printf '{HELLO_C}' > /tmp/h.c && gcc -O2 -o /tmp/h /tmp/h.c && /tmp/h", 1.1),
    "perl start": ("perl -MPOSIX -e 1", 1.1),
    "git init and commit": ("rm -rf /tmp/g && git init -q /tmp/g && cd /tmp/g && echo x > f && git add f && "
                            "git -c user.email=b@e -c user.name=b commit -qm m", 1.2),
    EXECS: ("i=0; while [ $i -lt 200 ]; do /usr/bin/true; i=$((i+1)); done", 1.1),
    # No goal: the same execs where the kernel asks no capability (a nosuid mount), to
    # tell the GETXATTR of security.capability at every exec from the rest of FUSE's path.
    NOSUID_EXECS: (f"i=0; while [ $i -lt 200 ]; do {NOSUID_USR}/bin/true; i=$((i+1)); done", None),
    "set-id programs (passwd -S, chage -l)": ("passwd -S root && chage -l root && "
                                             "setpriv --reuid=65534 --regid=65534 --clear-groups chage -l nobody",
                                             1.1),
    "warm find /usr": ("find /usr > /dev/null", 1.5),
    "dpkg -l": ("dpkg -l > /dev/null", 1.1),
    "ls -l /usr/bin": ("ls -l /usr/bin > /dev/null", 1.5),
}
COLD = {
    "python start, cold caches": ("python3 -c pass", 2.5),
    "cold find /usr": ("find /usr > /dev/null", None),
}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# --- equality with the host ---------------------------------------------------------

def _attrs(path: str) -> tuple:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    out = {"type": kind, "mode": stat.S_IMODE(st.st_mode), "owner": (st.st_uid, st.st_gid)}
    if kind == stat.S_IFREG:
        out["size"] = st.st_size
        try:
            out["caps"] = os.getxattr(path, "security.capability", follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
            out["caps"] = None
    if kind == stat.S_IFLNK:
        out["target"] = os.readlink(path)
    if kind != stat.S_IFDIR:
        # rpm keeps whole seconds; a directory's mtime changes whenever its host
        # listing does (installs, caches), so only files and links are compared
        out["mtime"] = int(st.st_mtime)
    return out


def compare_with_host(view: Path, skip: str = "lib/sysimage") -> dict:
    """Every path of the view (every packaged path; not the header files in
    ``skip``, which the host has not) against the host's /usr: counts, and the
    first differences.  A ``.pyc`` whose only difference is its mtime is counted
    apart: the set's bytecode is compiled by tests/pkgset.py, the host's by
    py3compile at install time (it is no Debian package's file)."""
    paths = differ = setid = caps = pyc_mtime = 0
    by_attr: dict[str, int] = {}
    examples: list[str] = []
    for dirpath, dirnames, filenames in os.walk(view):
        rel_dir = os.path.relpath(dirpath, view)
        if rel_dir == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel == skip:
                continue
            paths += 1
            mine = _attrs(os.path.join(dirpath, name))
            setid += bool(mine["mode"] & (stat.S_ISUID | stat.S_ISGID)) and mine["type"] == stat.S_IFREG
            caps += bool(mine.get("caps"))
            try:
                host = _attrs(os.path.join("/usr", rel))
            except FileNotFoundError:
                host = {"type": None}
            bad = sorted(k for k in set(mine) | set(host) if mine.get(k) != host.get(k))
            if bad == ["mtime"] and rel.endswith(".pyc") and "/__pycache__/" in rel:
                pyc_mtime += 1
            elif bad:
                differ += 1
                for k in bad:
                    by_attr[k] = by_attr.get(k, 0) + 1
                if len(examples) < 10:
                    examples.append(f"/usr/{rel}: " + ", ".join(f"{k} {mine.get(k)!r} != {host.get(k)!r}"
                                                                 for k in bad))
    host_entries = sum(len(d) + len(f) for _, d, f in os.walk("/usr"))
    return {"paths": paths, "differ": differ, "by_attr": by_attr, "examples": examples, "setid": setid,
            "caps": caps, "pyc_mtime": pyc_mtime, "host_entries": host_entries}


# --- the run -------------------------------------------------------------------------

def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


#: Where the kernel's trace events are (tracefs); each traced run makes an instance
#: of its own there (a private buffer), removed afterwards.
TRACEFS = Path("/sys/kernel/tracing")


def traced_requests(mnt: Path, action) -> dict[str, int]:
    """FUSE requests sent to the connection of the mount at ``mnt`` while
    ``action()`` runs, by opcode name (the ``fuse:fuse_request_send`` trace event;
    {} when the kernel has no such event)."""
    if not (TRACEFS / "events" / "fuse" / "fuse_request_send").is_dir():
        return {}
    connection = os.minor(os.stat(mnt).st_dev)  # an anonymous device: major 0
    inst = TRACEFS / "instances" / f"usrview-bench-{os.getpid()}"
    inst.mkdir()
    try:
        event = inst / "events" / "fuse" / "fuse_request_send"
        (inst / "buffer_size_kb").write_text("8192\n")
        (event / "filter").write_text(f"connection == {connection}\n")
        (event / "enable").write_text("1\n")
        try:
            action()
        finally:
            (event / "enable").write_text("0\n")
        text = (inst / "trace").read_text(errors="replace")
    finally:
        inst.rmdir()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("#") and "(FUSE_" in line:
            op = line.split("(FUSE_", 1)[1].split(")", 1)[0].lower()
            counts[op] = counts.get(op, 0) + 1
    return counts


class View:
    """The view's daemon (tests/bench_view.py's Daemon) and the chroot over it."""

    def __init__(self, store: Path, key: Path, mnt: Path, root: Path, log_dir: Path, options: list[str]):
        self.cmd = [*usrview_cmd(), "-v", "mount", "--foreground", *options, "--store", str(store),
                    "--keys", str(key), str(mnt)]
        self.mnt, self.root, self.log_dir = mnt, root, log_dir
        self.daemon: Daemon | None = None
        self.chroot: Chroot | None = None
        self.mounts = 0
        self.mount_times: list[float] = []

    def mount(self) -> Chroot:
        self.mounts += 1
        self.daemon = Daemon(self.cmd, self.mnt, self.log_dir / f"view-{self.mounts}.log")
        self.mount_times.append(self.daemon.mount_time)
        self.chroot = Chroot("view", self.root, self.mnt)
        self.chroot.start()
        return self.chroot

    def log(self) -> str:
        return self.daemon.log.read_text(errors="replace") if self.daemon else ""

    def wait_prefetch(self, timeout: float = 300) -> float | None:
        """Seconds from the mount until checking ahead ended (None: not running)."""
        if "prefetch: on:" not in self.log():
            return None
        t0 = time.monotonic()
        while "recorded files checked ahead" not in self.log():
            if time.monotonic() - t0 > timeout:
                return float("inf")
            time.sleep(0.05)
        return self.daemon.mount_time + time.monotonic() - t0

    def requests(self) -> dict[str, int]:
        """The requests the daemon answered so far (it logs them at SIGUSR2), and
        its GETXATTR by name (as "getxattr NAME")."""
        last = "getxattr by name: "  # logged after the requests
        before = self.log().count(last)
        self.daemon.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while (text := self.log()).count(last) == before:
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.01)
        counts = {}
        for head, prefix in (("requests: ", ""), (last, "getxattr ")):
            line = text[text.rindex(head) + len(head):].split("\n", 1)[0]
            counts.update({prefix + k: int(v) for k, v in (item.rsplit(" ", 1) for item in line.split(", ")
                                                           if item != "none")})
        return counts

    def kernel_requests(self, script: str) -> dict[str, int]:
        """The FUSE requests the kernel sends this mount in a run of ``script`` in
        the view's chroot, by opcode (the ``fuse:fuse_request_send`` trace event; IOCTL,
        FORGET and FLUSH too, which the daemon's handlers never see); {} when the kernel
        has no such event."""
        return traced_requests(self.mnt, lambda: self.chroot.time(script))

    def unmount(self) -> None:
        if self.chroot is not None:
            self.chroot.stop()  # its namespace, and the bind of the view in it, go first
            self.chroot = None
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


def run_bench(setdir: Path, args) -> dict:
    man = pkgset.load(setdir)
    key = Path(man["key"])
    res: dict = {"set": setdir, "packages": man["count"], "files": man["files"], "bytes": man["bytes"]}
    args.workdir.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="system-", dir=args.workdir))
    view = native = None
    try:
        with loop_btrfs(top / "btrfs.img", int(args.size_gib * 2**30), top / "fs") as dev:
            store = top / "fs" / "store"
            log(f"bench: btrfs on {dev}; deploying {man['count']} packages")
            t0 = time.monotonic()
            run([*usrview_cmd(), "deploy", "--store", str(store), "--keys", str(key), str(setdir / "set-v1")])
            res["deploy"] = time.monotonic() - t0
            log(f"bench: deployed in {res['deploy']:.0f} s")
            (top / "uv").mkdir()
            options = ["--kernel-cache", args.kernel_cache, "--prefetch", args.prefetch]
            view = View(store, key, top / "uv", top / "root-view", top, options)
            native = Chroot("native", top / "root-native", Path("/usr"))
            res["options"] = options
            try:
                res.update(measure(view, native, args))
            finally:
                view.unmount()
                native.stop()
    finally:
        for p in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        with contextlib.suppress(OSError):
            top.rmdir()
    return res


def measure(view: View, native: Chroot, args) -> dict:
    res: dict = {}
    # 1. A first mount: equality, and every workload once (this mount's record
    #    of opened files is what the next mounts check ahead).
    view.mount()
    res["kernel_caching"] = next((line.split("kernel caching: ", 1)[1] for line in view.log().splitlines()
                                  if "kernel caching: " in line), "?")
    log("bench: comparing every path of the view with the host's")
    t0 = time.monotonic()
    res["equal"] = compare_with_host(view.mnt)
    log(f"bench: {res['equal']['paths']} paths compared in {time.monotonic() - t0:.0f} s, "
        f"{res['equal']['differ']} differ")
    native.start()
    for script, _ in WORKLOADS.values():
        view.chroot.time(script)
        native.time(script)
    view.unmount()
    # 2. The mount as the next boot makes it: timed, checked ahead, then the
    #    workloads interleaved view/native, warm (after an untimed run each).
    chroot = view.mount()
    res["prefetch_s"] = view.wait_prefetch()
    res["prefetch_log"] = [line.split("INFO: ", 1)[-1] for line in view.log().splitlines() if "prefetch: " in line]
    times: dict[str, dict[str, list[float]]] = {name: {"view": [], "native": []} for name in [*WORKLOADS, *COLD]}
    for script, _ in WORKLOADS.values():  # warm: once each before timing
        chroot.time(script)
        native.time(script)
    requests: dict[str, dict[str, int]] = {}
    for r in range(args.rounds):
        for name, (script, _) in WORKLOADS.items():
            order = (("view", chroot), ("native", native)) if r % 2 == 0 else (("native", native), ("view", chroot))
            for which, c in order:
                if which == "view" and r == args.rounds - 1:
                    # what still reaches the daemon in a warm run (counted outside the timing)
                    before = view.requests()
                    times[name][which].append(c.time(script))
                    after = view.requests()
                    requests[name] = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
                else:
                    times[name][which].append(c.time(script))
        log(f"bench: warm round {r + 1} of {args.rounds}")
    res["requests"] = requests
    res["kernel_requests"] = {name: view.kernel_requests(script) for name, (script, _) in WORKLOADS.items()}
    res["rss"] = rss(view.daemon.proc.pid)
    # 3. Cold: each round a fresh mount (the first start after it, checked
    #    ahead when prefetch is on), caches dropped for both.
    for r in range(args.rounds):
        view.unmount()
        chroot = view.mount()
        view.wait_prefetch()
        for name, (script, _) in COLD.items():
            for which, c in (("view", chroot), ("native", native)):
                c.ask({"drop": True})
                times[name][which].append(c.time(script))
        log(f"bench: cold round {r + 1} of {args.rounds}")
    res["rss_last_mount"] = rss(view.daemon.proc.pid)
    res["integrity_errors"] = sum(view.log_dir.joinpath(f"view-{n}.log").read_text(errors="replace")
                                  .count("integrity violation") for n in range(1, view.mounts + 1))
    res["times"] = times
    res["mount_times"] = view.mount_times
    return res


# --- floors --------------------------------------------------------------------------

FLOOR_IMPORTS = "import usrview.cli.mount_cmd, usrview.view.mount, usrview.view.loader, usrview.view.prefetch"


def floors(workdir: Path) -> dict:
    """What no change to the view's own code removes: the interpreter and the
    modules a mount imports (time, RSS), and what one request costs in a pyfuse3
    file system that does nothing (tests/fuse_floor.py)."""
    out = {}
    code = (f"import time; t0 = time.perf_counter(); {FLOOR_IMPORTS}; t = time.perf_counter() - t0; "
            "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]; "
            "print(t, int(rss) * 1024)")
    starts, rsss = [], []
    for _ in range(3):
        t0 = time.monotonic()
        r = run([sys.executable, "-c", code])
        starts.append(time.monotonic() - t0)
        rsss.append(int(r.stdout.split()[1]))
    out["interpreter_s"], out["interpreter_rss"] = median(starts), median(rsss)
    mnt = Path(tempfile.mkdtemp(prefix="floor-", dir=workdir))
    try:
        for name, c_floor in (("python", None), ("c", workdir)):
            with fuse_floor.mounted_floor(mnt, c_floor=c_floor) as pid:
                out[name] = fuse_floor.measure_placed(str(mnt), pid)
    except fuse_floor.NoCFloor as e:
        log(f"bench: no C floor: {e}")
    finally:
        mnt.rmdir()
    out["request_us"] = out["python"]["same_cpu"]["readlink_us"]
    return out


#: Which of tests/fuse_floor.py's figures a request of each kind costs at least.  A
#: GETXATTR comes alone after the caller's own work (an exec's security.capability), the
#: daemon asleep: its figure after idle; so does an IOCTL (Python's isatty() of each file
#: it imports, after the work on the file before).
FLOOR_OF = {"getxattr": "getxattr_idle_us", "ioctl": "ioctl_idle_us"}


def floor_ms(counts: dict[str, int], floor: dict[str, float]) -> float:
    """The least time ``counts`` requests take in a do-nothing file system whose
    measured costs are ``floor`` (readlink's for the kinds not measured)."""
    return sum(n * floor[FLOOR_OF.get(op, "readlink_us")] for op, n in counts.items()) / 1e3


# --- the report ----------------------------------------------------------------------

def _requests_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.upper()}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def report(res: dict, fl: dict) -> None:
    eq = res["equal"]
    print(f"=== the view as /usr (issue 14): {res['packages']} packages, {res['files']} files, "
          f"{res['bytes'] / 1e9:.1f} GB; {' '.join(res['options'])} ===")
    print(f"set: {res['set']}; deploy {res['deploy']:.0f} s; kernel caching: {res['kernel_caching']}")
    print(f"equality with the host: {eq['paths']} paths compared (type, mode, owner, size, link target, mtime, "
          f"caps), {eq['differ']} differ; {eq['setid']} set-id files, {eq['caps']} with capabilities; "
          f"{eq['pyc_mtime']} generated .pyc differ in mtime only (compiled by tests/pkgset.py, not py3compile); "
          f"find /usr sees {eq['paths']} entries in the view, {eq['host_entries']} on the host"
          + (f"; by attribute {eq['by_attr']}" if eq["differ"] else ""))
    for line in eq["examples"]:
        print(f"  {line}")
    print(f"integrity violations logged: {res['integrity_errors']}")
    if res.get("prefetch_s") is not None:
        print(f"prefetch: checking ahead ended {res['prefetch_s']:.1f} s after the mount started")
    for line in res.get("prefetch_log", []):
        print(f"  {line[:200]}")
    rounds = len(next(iter(res["times"].values()))["view"])
    print(f"\n{'workload (median of ' + str(rounds) + ')':42}{'native':>10}{'view':>10}{'view/native':>13}{'goal':>8}")
    missed = []
    for name, (_, goal) in [*WORKLOADS.items(), *COLD.items()]:
        t = res["times"][name]
        nat, mine = median(t["native"]), median(t["view"])
        ratio = mine / nat if nat else float("inf")
        ok = goal is None or ratio <= goal
        mark = "" if ok else "  MISSED"
        goal_text = "" if goal is None else f"{goal}x"
        print(f"{name:42}{nat * 1e3:8.1f}ms{mine * 1e3:8.1f}ms{ratio:11.2f}x{goal_text:>8}{mark}")
        if not ok:
            missed.append(name)
    print("\nrequests the kernel sent the view in one warm run (fuse:fuse_request_send; FORGET left out), "
          "and the daemon's GETXATTR by name:")
    for name in WORKLOADS:
        sent = {k: n for k, n in res.get("kernel_requests", {}).get(name, {}).items()
                if k not in ("forget", "batch_forget")}
        names = {k.split(" ", 1)[1]: n for k, n in res["requests"].get(name, {}).items() if k.startswith("getxattr ")}
        print(f"  {name}: {_requests_text(sent) if sent else 'not traced'}"
              + (f"; GETXATTR of {_names_text(names)}" if names else ""))
    if fl.get("python"):
        print("per-request floor (tests/fuse_floor.py and .c, best of 5, us; daemon and caller on one CPU / on two):")
        for kind, what in (("python", "pyfuse3"), ("c", "C libfuse")):
            if kind in fl:
                print(f"  {what:10}" + ", ".join(
                    f"{k[:-3]} " + " / ".join(f"{fl[kind][p][k]:.1f}" for p in ("same_cpu", "other_cpu")
                                              if p in fl[kind])
                    for k in fl[kind]["same_cpu"]))
    mt = res["mount_times"]
    rss_now, rss_peak = res["rss"]
    per_path = (rss_now - fl["interpreter_rss"]) / max(1, eq["paths"])
    print(f"\nmount: median {median(mt):.2f} s of {len(mt)} ({', '.join(f'{t:.2f}' for t in mt)})   goal 0.3 s"
          + ("" if median(mt) <= 0.3 else f"  MISSED: floor {fl['interpreter_s']:.2f} s for the interpreter and "
             "the modules a mount imports; the rest is the mount's own work (the compiled tree's package table, "
             "its root's package, the FUSE session: the same whatever the image's size) and, after the first "
             "mount, reading the interpreter's files again after the cold rounds dropped the page cache"))
    print(f"daemon RSS after the warm workloads: {rss_now / 1e6:.0f} MB (peak {rss_peak / 1e6:.0f} MB), "
          f"{per_path:.0f} bytes a path above the interpreter's {fl['interpreter_rss'] / 1e6:.0f} MB   goal 64 MB"
          + ("" if rss_now <= 64e6 else f"  MISSED: floor {fl['interpreter_rss'] / 1e6:.0f} MB for the interpreter "
             "and modules; the rest is the bounded caches, the guard's records of files read, and what the "
             "package checks made before the full check ended left in the heap"))
    print(f"daemon RSS on the last (cold) mount: {res['rss_last_mount'][0] / 1e6:.0f} MB "
          f"(peak {res['rss_last_mount'][1] / 1e6:.0f} MB)")
    if missed:
        print("\nfloors of the missed goals:")
        for name in missed:
            if name.startswith("python start"):
                why = ("the first start after a mount: each file's pages come through FUSE READs of "
                       f"{fl['request_us']:.0f} us or more, and a file not checked ahead is hashed whole "
                       "at its first read")
            elif name.startswith("cold find"):
                why = f"one LOOKUP or READDIRPLUS round trip of {fl['request_us']:.0f} us or more per entry"
            else:
                why = _request_floor(name, res, fl)
            print(f"  {name}: {why}")


def _request_floor(name: str, res: dict, fl: dict) -> str:
    """Why a warm workload misses its goal: the requests still sent, and the
    least they cost in the do-nothing file systems (pyfuse3's and C's)."""
    t = res["times"][name]
    extra_ms = (median(t["view"]) - median(t["native"])) * 1e3
    handled = res["requests"].get(name, {})
    names = {k.split(" ", 1)[1]: n for k, n in handled.items() if k.startswith("getxattr ")}
    handled = {k: n for k, n in handled.items() if " " not in k}
    sent = res.get("kernel_requests", {}).get(name) or handled
    sent = {k: n for k, n in sent.items() if k not in ("forget", "batch_forget")}  # answer nothing
    total = sum(sent.values())
    floors = []
    for kind, what in (("python", "a do-nothing pyfuse3 file system"), ("c", "a do-nothing C libfuse one")):
        if kind in fl:
            placed = fl[kind]
            span = "–".join(f"{floor_ms(sent, placed[p]):.1f}" for p in ("same_cpu", "other_cpu") if p in placed)
            floors.append(f"{span} ms in {what}")
    floors[-1] += " (daemon woken on the same CPU – on the other)"
    why = (f"{extra_ms:.1f} ms above native; the kernel still sends {total} requests a run "
           f"({_requests_text(sent)}{'; GETXATTR of ' + _names_text(names) if names else ''}): "
           + ", ".join(floors))
    if name == EXECS and NOSUID_EXECS in res["times"]:
        n = res["times"][NOSUID_EXECS]
        rest_ms = (median(n["view"]) - median(n["native"])) * 1e3
        return (why + f"; from /usr bound nosuid, where the kernel asks no capability, the same execs take "
                f"{median(n['view']) / median(n['native']):.2f}x native ({rest_ms:.1f} ms above): the rest of "
                "FUSE's exec path; the capability's GETXATTR, asked at every exec of a file on a suid mount "
                "and never cached by the kernel, is the difference")
    return why + "; the rest is the kernel's path for FUSE files and the machine's noise"


def _names_text(names: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(names.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, help="only the first N packageable packages (default: all)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"package sets (default {DEFAULT_CACHE})")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"default {DEFAULT_WORKDIR}")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each workload (default 5)")
    ap.add_argument("--kernel-cache", choices=("auto", "off"), default="auto")
    ap.add_argument("--prefetch", choices=("on", "off"), default="on")
    ap.add_argument("--size-gib", type=float, help="the btrfs file system's size (default: from the set's size)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--build-only", action="store_true", help="build (or find) the package set and stop")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="print the report of an earlier --json run again, with the floors measured now")
    args = ap.parse_args(argv)
    if args.report:
        res = json.loads(args.report.read_text())
        fl = floors(args.workdir)
        report(res, fl)
        return 0
    if os.geteuid() != 0:
        ap.error("needs root (loop device, mounts, chroot, drop_caches)")
    setdir = system_set(args.cache, args.count)
    if args.build_only:
        print(setdir)
        return 0
    if args.size_gib is None:
        args.size_gib = 4 + 2.5 * pkgset.load(setdir)["bytes"] / 2**30
    try:
        res = run_bench(setdir, args)
        fl = floors(args.workdir)
    except (KeyboardInterrupt, _Terminated) as e:
        log(f"bench: interrupted ({e or 'Ctrl-C'})")
        return 130
    report(res, fl)
    if args.json:
        args.json.write_text(json.dumps({**res, "set": str(res["set"]), "floors": fl}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
