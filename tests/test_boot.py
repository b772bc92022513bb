"""A machine whose /usr is the view, booted in a real virtual machine (issue 11).

Debian's cloud kernel, an initrd made by dracut with usrview's module, qemu under
TCG, a btrfs root holding the store, and a guest image of this machine's own
Debian packages relocated into /usr as signed rpms (tests/vm.py).  The kernel,
the package set and the initrd are made once per module; every boot runs on a
copy-on-write overlay or a sparse copy of one base disk.

Boots: the main one (checks in the guest, then poweroff), one with
usrview.image=previous on a disk with a tampered store file, and one run in
which a broken image (no systemd) falls back to the last good image after its
tries are spent, rebooting by itself (systemd.crash_reboot=1).

Every run keeps its console log; a failure message names it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import pkgset, vm
from tests.prereq import require_tools

pytestmark = [pytest.mark.slow, pytest.mark.privileged("fuse", "btrfs")]

#: Seconds a single boot may take under TCG on a loaded 2-core machine before qemu is killed.
BOOT_TIMEOUT = 420
#: Poweroff must finish within this (issue 11).
POWEROFF_LIMIT = 30.0
#: Tries of the broken image in the fallback test (the default is 3; 2 keeps the run shorter).
BROKEN_TRIES = 2

#: Run in the guest after multi-user.target (bash; $OUT is the results directory).
#: The checks are Python (Debian's python3 from the view) writing check.json.
MAIN_SCRIPT = r"""
cat /proc/self/mountinfo > mountinfo
# boot-complete runs beside the end of the boot (Type=exec): wait for its result
for i in $(seq 300); do systemctl is-active -q usrview-boot-complete.service || break; sleep 1; done
systemctl show -p Result -p ExecMainStatus -p ExecMainStartTimestampMonotonic usrview-boot-complete.service > boot-complete
usrview status > status 2>&1
python3 - <<'PY'
import json, os, stat, time

out = {}
usr_dev = os.stat("/usr").st_dev
out["usr_dev"] = [os.major(usr_dev), os.minor(usr_dev)]
# the compiled trees in the store, by inode (the maps name btrfs's device, stat a subvolume's)
import glob
out["trees"] = {p: os.stat(p).st_ino for p in glob.glob("/var/lib/usrview/images/*.tree")}
pid = int(open("/run/vmtest/daemon-pid").read()) if os.path.exists("/run/vmtest/daemon-pid") else 0
if not pid:
    import subprocess
    pid = int(subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", "usrview-sysroot-usr.service"],
                             capture_output=True, text=True).stdout.strip() or 0)
out["pid"] = pid
out["argv0"] = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
maps = []
for line in open(f"/proc/{pid}/maps"):
    fields = line.split(None, 5)
    dev, inode = fields[3], int(fields[4])
    path = fields[5].strip() if len(fields) > 5 else ""
    if inode:
        major, minor = (int(x, 16) for x in dev.split(":"))
        maps.append({"dev": [major, minor], "inode": inode, "path": path})
out["maps"] = maps
fds = []
for fd in os.listdir(f"/proc/{pid}/fd"):
    p = f"/proc/{pid}/fd/{fd}"
    try:
        st = os.stat(p)
        fds.append({"fd": int(fd), "target": os.readlink(p), "dev": [os.major(st.st_dev), os.minor(st.st_dev)]})
    except OSError as e:
        fds.append({"fd": int(fd), "target": os.readlink(p), "error": e.strerror})
out["fds"] = fds
out["cwd"] = os.readlink(f"/proc/{pid}/cwd")
out["root"] = os.readlink(f"/proc/{pid}/root")
status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
out["rss_kib"] = int(status["VmRSS"].split()[0])

# programs run from the view
import subprocess
def run(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return {"rc": r.returncode, "out": r.stdout[-2000:], "err": r.stderr[-2000:]}
out["programs"] = {
    "bash": run("bash", "-c", "echo hello from $BASH_VERSION"),
    "python3": run("python3", "-c", "import sqlite3, json, ssl, hashlib; print('python', json.dumps(sqlite3.sqlite_version))"),
    "ls": run("ls", "/usr/bin"),
    "id": run("id", "-un"),
}

# owner names resolved in the root's /etc/group (the initrd's knows only root):
# chage is set-gid shadow in its package's header
import grp
st = os.lstat("/usr/bin/chage")
out["chage"] = {"uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode & 0o7777,
                "shadow_gid": grp.getgrnam("shadow").gr_gid}

# stress: read every file of the view (each checked against its digest on first open)
t0 = time.monotonic()
files = nbytes = 0
errors = []
for dirpath, dirnames, filenames in os.walk("/usr"):
    for name in filenames:
        p = os.path.join(dirpath, name)
        try:
            if stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        nbytes += len(chunk)
                files += 1
        except OSError as e:
            errors.append(f"{p}: {e.strerror}")
out["stress"] = {"files": files, "bytes": nbytes, "seconds": time.monotonic() - t0, "errors": errors[:50]}
# the daemon after the stress: still the same maps, nothing new under /usr
out["maps_after_under_usr"] = [l for l in open(f"/proc/{pid}/maps")
                               if l.split()[3] == "%02x:%02x" % (os.major(usr_dev), os.minor(usr_dev))]
out["alive_after"] = os.path.exists(f"/proc/{pid}")
# the files this boot opened, recorded beneath fds the daemon opened before READY
# (usrview.boot.initrd.FIRST_SAVE seconds after it, then every SAVE_PERIOD)
for _ in range(90):
    records = glob.glob("/var/lib/usrview/cache/opened-*")
    if records:
        break
    time.sleep(1)
out["records"] = {os.path.basename(p): len(open(p).read().splitlines()) - 1 for p in records}
json.dump(out, open("check.json", "w"), indent=1)
PY
journalctl -b -o short-monotonic --no-pager > journal 2>&1
"""


@dataclass
class Env:
    work: Path
    kernel: vm.Kernel
    setdir: Path
    images: list[Path]
    key: Path
    initrd: Path
    base: Path

    def manifest(self) -> dict:
        return pkgset.load(self.setdir)


#: Where each session's disks and runs go (not pytest's tmp_path: its old numbered
#: directories are removed by other pytest sessions, which must not happen to a disk
#: under a running qemu).  The console logs stay; the disks and images go.
WORK_ROOT = Path(os.environ.get("USRVIEW_BOOT_TEST_DIR", "/var/tmp"))


@pytest.fixture(scope="module")
def env() -> Env:
    require_tools(vm.QEMU, "dracut", "mkfs.btrfs", "btrfs", "losetup", "rpmbuild", "rpmsign", "apt-get", "dpkg-deb",
                  "depmod")
    work = Path(tempfile.mkdtemp(prefix="usrview-boot-", dir=WORK_ROOT))
    try:
        kernel = vm.fetch_kernel()
        setdir = vm.guest_packages()
        images = vm.guest_images(setdir, work)
        key = setdir / "key" / pkgset.PUBKEY_NAME
        initrd = vm.build_initrd(kernel, work / "initrd.img", keys=key)
        base = vm.make_view_disk(work / "view.raw", setdir, images)
        yield Env(work, kernel, setdir, images, key, initrd, base)
    finally:
        for big in [*work.glob("*.raw"), *work.glob("*.img"), *work.glob("run-*/io.img")]:
            big.unlink()
        for d in ("set-v1", "set-v2", "usrview-build", "broken"):
            shutil.rmtree(work / d, ignore_errors=True)
        vm.log(f"boot test logs kept in {work}")


@dataclass
class MainBoot:
    result: vm.BootResult
    disk: Path
    check: dict


@pytest.fixture(scope="module")
def main_boot(env) -> MainBoot:
    """The base disk (v1 then v2 deployed, v2 current and on trial), booted on a
    copy that keeps what the guest wrote."""
    disk = vm.copy_disk(env.base, env.work / "main.raw")
    result = vm.boot(disk, env.kernel, env.initrd, env.work / "run-main", script=MAIN_SCRIPT,
                     timeout=BOOT_TIMEOUT, persist=True)
    assert result.boots == 1 and not result.timed_out, result.why()
    assert result.text("rc.1").strip() == "0", result.text("run.1.log") + result.why()
    check = json.loads(result.text("check.json"))
    vm.log(f"main boot: multi-user.target {result.target_seconds():.1f} s after the kernel started, qemu "
           f"{result.seconds:.1f} s; daemon RSS {check['rss_kib'] / 1024:.1f} MiB; read {check['stress']['files']} "
           f"files ({check['stress']['bytes'] / 1e6:.0f} MB) through the view in {check['stress']['seconds']:.1f} s")
    return MainBoot(result, disk, check)


def store_ids(disk: Path, work: Path) -> dict:
    """The store's image records and boot states, read from the disk on the host."""
    with vm.loop_mount(disk, work / "mnt-read") as mnt:
        store = mnt / vm.STORE
        ids = sorted(p.stem for p in (store / "images").glob("*.json"))
        boot = json.loads((store / "boot.json").read_text()) if (store / "boot.json").exists() else {}
        link = store / "current"  # -> images/ID.json (docs/store-format.md)
        current = Path(os.readlink(link)).name.removesuffix(".json") if link.is_symlink() else None
    return {"ids": ids, "boot": boot, "current": current}


def _unit_environment(unit: str) -> dict[str, str]:
    """The Environment= assignments of a unit file (no quoting in ours)."""
    env = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            env.update(word.split("=", 1) for word in line[len("Environment="):].split())
    return env


def test_initrd_runtime_runs_from_the_initrd_alone(env, tmp_path):
    """The daemon's runtime in the initrd, as the unit starts it: its modules are
    sourceless bytecode (no .py of usrview or its packages), the libraries its
    compiled modules link are there (a distribution's are 0644, which dracut's own
    resolution skips: Debian's _ctypes needs libffi), and every module the daemon
    imports, the rarely used ones too, imports from the initrd with nothing else."""
    root = tmp_path / "initrd"
    root.mkdir()
    unpack = subprocess.run(f"zstd -dc {env.initrd} | cpio -idm --quiet", shell=True, cwd=root,
                            capture_output=True, text=True, check=False)
    assert unpack.returncode == 0, unpack.stderr
    unit = (root / "usr/lib/systemd/system/usrview-sysroot-usr.service").read_text()
    python = re.search(r"^ExecStart=@(\S+) @usrview", unit, re.M).group(1)
    unit_env = _unit_environment(unit)
    # the daemon's hash seed, drawn when the initrd was made, in a file only root reads:
    # Python's start then reads no /dev/urandom (early in boot the kernel would first
    # generate entropy for it, a second of CPU under TCG)
    assert re.search(r"^EnvironmentFile=-/etc/usrview/initrd\.env$", unit, re.M), unit
    env_file = root / "etc/usrview/initrd.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    seed = re.fullmatch(r"PYTHONHASHSEED=(\d+)\n", env_file.read_text())
    assert seed and int(seed.group(1)) < 2**32, env_file.read_text()
    unit_env["PYTHONHASHSEED"] = seed.group(1)
    site = root / unit_env["PYTHONPATH"].lstrip("/")
    sources = [p for p in site.rglob("*.py") if p.is_file() and not p.is_symlink()]
    assert not sources, sources[:10]
    assert (site / "usrview/cli/main.pyc").is_file() and (site / "trio/__init__.pyc").is_file()
    from usrview.boot.initrd import RUNTIME_IMPORTS
    code = f"import usrview.cli.main\nfor name in {RUNTIME_IMPORTS!r}: __import__(name)\n"
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    run = subprocess.run([chroot, str(root), python, "-S", "-c", code], env=unit_env, capture_output=True,
                         text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    # the command itself, as far as it goes without a root file system: one line, exit 2
    run = subprocess.run([chroot, str(root), python, "-S", "-m", "usrview.cli", "initrd-mount", "--sysroot",
                          "/nonexistent", "--keys", "/etc/usrview/keys"], env=unit_env, capture_output=True,
                         text=True, check=False, timeout=120)
    assert run.returncode == 2 and "nothing to serve" in run.stderr, (run.returncode, run.stderr[-3000:])


def test_usr_is_the_view(main_boot):
    mounts = [line.split() for line in main_boot.result.text("mountinfo").splitlines()]
    usr = [m for m in mounts if m[4] == "/usr"]
    assert usr, main_boot.result.why()
    fstype = usr[0][usr[0].index("-") + 1]
    assert fstype == "fuse.usrview", usr
    assert main_boot.result.target_seconds() > 0
    # the booted system marked its image good (boot-complete.target reached)
    bc = dict(line.split("=", 1) for line in main_boot.result.text("boot-complete").splitlines() if "=" in line)
    assert bc["Result"] == "success" and bc["ExecMainStatus"] == "0" and int(bc["ExecMainStartTimestampMonotonic"]), \
        (bc, main_boot.result.text("journal")[-3000:])


def test_switch_root_waits_for_the_view(main_boot):
    """The initrd reads the root's fstab beside the daemon's start (the unit is not
    ordered before initrd-parse-etc.service), but it cleans up and switches root only
    once the view is mounted (READY=1: the unit started)."""
    journal = main_boot.result.text("journal")

    def when(pattern: str) -> float:
        found = re.findall(r"^\[\s*(\d+\.\d+)\] \S+ systemd\[1\]: " + pattern, journal, re.M)
        assert found, (pattern, journal[-3000:])
        return float(found[0])

    ready = when(r"Started usrview-sysroot-usr\.service")  # READY=1
    assert ready <= when(r"Reached target initrd-usr-fs\.target")
    assert ready <= when(r"Reached target initrd-fs\.target") <= when(r"Starting initrd-cleanup\.service")
    assert when(r"Starting initrd-cleanup\.service") <= when(r"Switching root\.")


def test_programs_run(main_boot):
    programs = main_boot.check["programs"]
    assert programs["bash"]["rc"] == 0 and "hello from 5." in programs["bash"]["out"], programs["bash"]
    assert programs["python3"]["rc"] == 0 and programs["python3"]["out"].startswith("python"), programs["python3"]
    assert programs["ls"]["rc"] == 0 and "systemctl" in programs["ls"]["out"].split(), programs["ls"]
    assert programs["id"]["out"].strip() == "root", programs["id"]


def test_owner_names_resolved_in_the_root_file_system(main_boot):
    """A file whose header names a group the initrd does not know (only the
    root's /etc/group does) has that group's id in the booted system."""
    chage = main_boot.check["chage"]
    assert chage["shadow_gid"] != 0, chage
    assert (chage["uid"], chage["gid"], chage["mode"]) == (0, chage["shadow_gid"], 0o2755), chage


def test_daemon_needs_no_file_gone_or_under_usr(main_boot):
    """The booted system's daemon: argv[0] '@' (it survived switch-root), its maps
    and open files are the initrd's (deleted) or the store's, never the view's; it
    still serves after every file of /usr was read through it."""
    c = main_boot.check
    usr_dev = c["usr_dev"]
    assert c["argv0"].startswith("@"), c["argv0"]
    assert c["cwd"] == "/" and c["root"] == "/", (c["cwd"], c["root"])
    file_maps = c["maps"]
    assert file_maps, "no file-backed maps?"
    under_usr = [m for m in file_maps if m["dev"] == usr_dev]
    assert not under_usr, under_usr
    # what is mapped from the initrd is gone (deleted), and still mapped: memory;
    # beside it only the image's compiled tree, in the store on the root (opened before switch-root)
    from_initrd = [m for m in file_maps if m["path"].endswith("(deleted)")]
    assert from_initrd, file_maps[:10]
    compiled = [m for m in file_maps if c["trees"].get(m["path"]) == m["inode"]]
    assert compiled, file_maps
    assert all(m["path"].endswith("(deleted)") or m in compiled for m in file_maps), \
        [m for m in file_maps if not m["path"].endswith("(deleted)")]
    fds_under_usr = [f for f in c["fds"] if f.get("dev") == usr_dev]
    assert not fds_under_usr, fds_under_usr
    assert any(f["target"] == "/dev/fuse" for f in c["fds"]), c["fds"]
    stress = c["stress"]
    assert stress["files"] > 3000 and not stress["errors"], stress
    assert c["alive_after"] and not c["maps_after_under_usr"], c["maps_after_under_usr"]
    journal = main_boot.result.text("journal")
    pid = c["pid"]
    daemon_lines = [line for line in journal.splitlines() if re.search(rf"usrview\[{pid}\]|python3\.\d+\[{pid}\]", line)]
    assert not [line for line in daemon_lines if re.search(r"Traceback|Error|No module", line)], daemon_lines
    # the initrd mapped the compiled tree, and the full check did not refuse it
    assert re.search(r"usrview: ready .*headers \(\d+ signatures\) and compiled tree", journal), journal[-3000:]
    # the code its imports generate came compiled with the initrd (usrview.boot.codecache)
    # (recorded under the daemon's hash seed: attrs' __hash__ holds the hash of a name)
    cached = re.search(r"usrview: ready .*serving modules \(generated code: (\d+) of (\d+) compiled ahead\)", journal)
    assert cached and int(cached.group(1)) >= int(cached.group(2)) - 10, journal[-3000:]
    # nothing the daemon did before READY had the kernel generate entropy (under TCG the
    # guest has no RDRAND: the pool is seeded in the booted system, as in a plain boot)
    ready = re.search(r"^\[\s*(\d+\.\d+)\] \S+ systemd\[1\]: Started usrview-sysroot-usr\.service", journal, re.M)
    crng = re.search(r"^\[\s*(\d+\.\d+)\] \S+ kernel: random: crng init done", journal, re.M)
    assert ready and (not crng or float(crng.group(1)) > float(ready.group(1))), (ready, crng)
    assert "compiled tree refused" not in journal and "full check of the compiled tree" not in journal
    # the files this boot opened were recorded (the next boot of the image checks them ahead)
    assert c["records"] and max(c["records"].values()) > 50, c["records"]


def test_poweroff_within_limit(main_boot):
    console = main_boot.result.console.read_text(errors="replace")
    done = re.findall(r"\[\s*(\d+\.\d+)\] usrview-vmtest: boot 1 done", console)
    down = re.findall(r"\[\s*(\d+\.\d+)\] reboot: Power down", console)
    assert done and down, main_boot.result.why()
    seconds = float(down[-1]) - float(done[-1])
    vm.log(f"poweroff: {seconds:.1f} s")
    assert seconds < POWEROFF_LIMIT, f"poweroff took {seconds:.1f} s; {main_boot.result.console}"
    assert main_boot.result.returncode == 0


def test_store_consistent_after_poweroff(main_boot, env):
    r = subprocess.run(["btrfs", "check", "--readonly", str(main_boot.disk)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    state = store_ids(main_boot.disk, env.work)
    current = state["boot"]["boot"]["image"]
    assert state["boot"]["images"][current]["state"] == "good", state["boot"]
    assert state["boot"]["last_good"] == current


# --- usrview.image=previous, and a tampered file ---------------------------------

PREVIOUS_SCRIPT = r"""
cat /proc/cmdline > cmdline
python3 - <<'PY'
import errno, json, os
out = {}
try:
    data = open(os.environ["CHANGED"], "rb").read()
    out["changed_tail"] = data.endswith(os.environ["TAIL"].encode().decode("unicode_escape").encode())
except OSError as e:
    out["changed_error"] = e.strerror
try:
    open(os.environ["TAMPERED"], "rb").read()
    out["tampered"] = "read"
except OSError as e:
    out["tampered"] = errno.errorcode.get(e.errno, str(e.errno))
json.dump(out, open("check.json", "w"))
PY
journalctl -b -o json --no-pager > journal.json 2>&1
"""


def tamper(disk: Path, work: Path, relpath: str) -> str:
    """Change one byte of ``relpath`` (a /usr path) in every package subvolume of the
    store on ``disk`` that holds it; returns the store path changed."""
    changed = []
    with vm.loop_mount(disk, work / "mnt-tamper") as mnt:
        for sub in sorted((mnt / vm.STORE / "packages").iterdir()):
            target = sub / relpath.lstrip("/")
            if target.is_file() and not target.is_symlink():
                subprocess.run(["btrfs", "property", "set", "-ts", str(sub), "ro", "false"], check=True)
                with open(target, "r+b") as f:
                    first = f.read(1)
                    f.seek(0)
                    f.write(bytes([first[0] ^ 0xFF]))
                subprocess.run(["btrfs", "property", "set", "-ts", str(sub), "ro", "true"], check=True)
                changed.append(str(target.relative_to(mnt)))
    assert changed, f"{relpath} is in no package of the store"
    return changed[0]


@dataclass
class PreviousBoot:
    result: vm.BootResult
    check: dict
    tampered: str
    changed: str


@pytest.fixture(scope="module")
def previous_boot(env) -> PreviousBoot:
    man = env.manifest()
    updated = sorted((n, p) for n, p in man["packages"].items() if p["update"])
    changed = updated[0][1]["update"]["changed"]
    # a file of a package no update touched (the same in v1 and v2), not needed to boot
    docs = []
    for name in sorted(n for n, p in man["packages"].items() if not p["update"]):
        rpm = env.setdir / "set-v1" / man["packages"][name]["rpm"]
        docs = [line for line in subprocess.run(["rpm", "-qpl", "--nosignature", str(rpm)], capture_output=True,
                                                text=True, check=True).stdout.splitlines()
                if line.startswith("/usr/share/doc/") and line.endswith("/copyright")]
        if docs:
            break
    tampered_path = docs[0]
    disk = vm.copy_disk(env.base, env.work / "previous.raw")
    tamper(disk, env.work, tampered_path)
    script = (f"export CHANGED='{changed}' TAMPERED='{tampered_path}' "
              f"TAIL='{pkgset.UPDATE_TAIL.decode().encode('unicode_escape').decode()}'\n" + PREVIOUS_SCRIPT)
    result = vm.boot(disk, env.kernel, env.initrd, env.work / "run-previous", script=script,
                     cmdline="usrview.image=previous", timeout=BOOT_TIMEOUT)
    assert result.boots == 1 and not result.timed_out, result.why()
    try:
        return PreviousBoot(result, json.loads(result.text("check.json")), tampered_path, changed)
    finally:
        disk.unlink()


def test_image_previous_boots_the_previous_image(previous_boot):
    assert "usrview.image=previous" in previous_boot.result.text("cmdline")
    # set-v2 appended a tail to this file; the previous image (set-v1) has it without
    assert previous_boot.check.get("changed_tail") is False, previous_boot.check


def test_tampered_file_gives_eio_and_a_journal_record(previous_boot):
    assert previous_boot.check["tampered"] == "EIO", previous_boot.check
    records = []
    for line in previous_boot.result.text("journal.json").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if previous_boot.tampered in json.dumps(rec):
            records.append(rec.get("MESSAGE"))
    assert records, f"no journal record names {previous_boot.tampered}"


# --- fallback: an image that cannot boot ------------------------------------------

FALLBACK_SCRIPT = r"""
usrview status > status 2>&1
cat /proc/cmdline > cmdline
journalctl -b -o short-monotonic --no-pager > journal 2>&1
"""


def test_broken_image_falls_back_to_last_good(env, main_boot):
    """An image without systemd (init cannot run) deployed on the machine whose
    current image booted good: each boot spends a try, init fails, systemd reboots
    (systemd.crash_reboot=1); once its tries are spent the initrd serves the last
    good image by itself, and the booted system records the event."""
    disk = vm.copy_disk(main_boot.disk, env.work / "fallback.raw")
    try:
        broken = env.work / "broken"
        broken.mkdir()
        for rpm in env.images[1].glob("*.rpm"):
            if not re.match(r"systemd-\d", rpm.name):
                os.link(rpm, broken / rpm.name)
        config = env.work / "tries.toml"
        config.write_text(f"tries = {BROKEN_TRIES}\n")
        with vm.loop_mount(disk, env.work / "mnt-broken") as mnt:
            vm._run(vm.usrview_cmd("deploy", "--store", mnt / vm.STORE, "--keys", env.key, broken),
                    env={**os.environ, "USRVIEW_CONFIG": str(config)})
        before = store_ids(disk, env.work)
        broken_id, good_id = before["current"], before["boot"]["last_good"]
        assert broken_id and good_id and broken_id != good_id, before
        result = vm.boot(disk, env.kernel, env.initrd, env.work / "run-fallback", script=FALLBACK_SCRIPT,
                         cmdline="systemd.crash_reboot=1", reboot=True,
                         timeout=BOOT_TIMEOUT * (BROKEN_TRIES + 1), persist=True)
        assert result.boots == 1 and not result.timed_out, result.why()
        console = result.console.read_text(errors="replace")
        # each boot's initrd reached initrd-usr-fs.target (the view mounted); the broken
        # ones then failed to execute init and rebooted
        boots = len(re.findall(r"Reached target .*Initrd /usr File System", console))
        failed_init = len(re.findall(r"\] Failed to execute /sbin/init", console))  # the status line
        assert (boots, failed_init) == (BROKEN_TRIES + 1, BROKEN_TRIES), \
            f"{boots} boots, {failed_init} failed to execute init; {result.console}"
        after = store_ids(disk, env.work)
        assert after["boot"]["images"][broken_id]["state"] == "bad", after["boot"]
        assert after["boot"]["boot"]["image"] == good_id and after["boot"]["boot"]["fallback"], after["boot"]
        assert after["boot"]["events"] and after["boot"]["events"][-1]["booted"] == good_id, after["boot"]
        assert "bad" in result.text("status"), result.text("status")
        # the last good image booted again: the files its boot opened at the main boot,
        # recorded then, are checked ahead this time
        recorded = re.findall(r"usrview: ready .*prefetch record \((\d+) files\)", result.text("journal"))
        assert recorded and int(recorded[-1]) > 50, recorded
    finally:
        disk.unlink(missing_ok=True)
        shutil.rmtree(env.work / "broken", ignore_errors=True)
