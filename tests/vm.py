"""Virtual machines for the boot tests and the boot benchmark.

Everything is real: Debian's cloud kernel (downloaded with ``apt-get download``
and unpacked, never installed here), an initrd made by dracut with usrview's
module (systemd/dracut/90usrview), qemu under TCG (KVM does not work on these
machines), a virtio disk holding a btrfs root with the store, and the guest's
/usr served by the view from signed rpms of this machine's own Debian packages
(tests/pkgset.py, relocated into /usr).

Pieces, each usable alone:

- :func:`fetch_kernel` -- the kernel and its modules, cached in :data:`CACHE`.
- :func:`build_initrd` -- dracut, with or without usrview's module.
- :func:`guest_packages` -- the guest's package set (signed rpms, set-v1 and the
  10%-updated set-v2), cached.
- :func:`make_view_disk` / :func:`make_plain_disk` -- a raw btrfs disk: the root
  file system with /etc, /var and an empty /usr, and either a store with images
  deployed (the view) or the same packages installed by ``rpm --root`` (the
  benchmark's baseline).
- :func:`boot` -- one qemu run on a copy-on-write overlay of a disk, with a
  script run in the booted guest; its results come back on a second virtio disk.

How a script runs in the guest: the root disk carries ``usrview-vmtest.service``
(wanted by multi-user.target, after it), which unpacks the tar archive on /dev/vdb
(the script as ``run``, and ``out/`` from earlier boots of the same run), runs it
with ``$OUT`` as working directory, writes ``run`` and ``out/`` back to /dev/vdb
and then powers the machine off -- or does what the script wrote into
``$OUT/next`` (``reboot``).  The console goes to a log file that every run keeps
(its path is in every failure message).

Every function cleans up what it made -- loop devices, mounts, qemu -- even on
failure; qemu is killed by pid at its timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import pkgset
from tests.rpmbuild import FileSpec, build_rpm, rpm_root_install

REPO = Path(__file__).resolve().parents[1]
#: Kernels, package sets and initrds survive between sessions here.
CACHE = Path(os.environ.get("USRVIEW_VM_CACHE", "/var/cache/usrview-test"))
#: The Debian metapackage whose dependency names the current cloud kernel.
KERNEL_META = "linux-image-cloud-amd64"
#: usrview's dracut module in this repository.
DRACUT_MODULE = REPO / "systemd" / "dracut" / "90usrview"
#: The unit that serves the view from the initrd.
VIEW_UNIT = "usrview-sysroot-usr.service"
#: The unit that marks the booted image good.
BOOT_COMPLETE_UNIT = "usrview-boot-complete.service"
#: dracut modules of every initrd here: systemd in the initrd, a btrfs root on a block device.
DRACUT_MODULES = ("systemd", "systemd-initrd", "base", "rootfs-block", "kernel-modules", "btrfs")
DRACUT_DRIVERS = ("virtio_blk", "virtio_pci", "btrfs", "fuse")
#: Both initrds (with usrview's module and without) are compressed with zstd, the
#: compression docs/boot.md recommends for an initrd that carries a Python runtime:
#: the kernel unpacks it about five times faster than dracut's default gzip.
DRACUT_COMPRESS = "zstd"
#: What the guest needs; the package set is these and everything they depend on.
GUEST_PACKAGES = ("systemd", "systemd-sysv", "udev", "bash", "coreutils", "util-linux", "mount", "python3",
                  "tar", "grep", "libfuse3-3")
#: Where the usrview package of the guest image keeps its Python runtime.
GUEST_RUNTIME = "/usr/lib/usrview"
#: Where the root file system keeps the store (usrview.store= default).
STORE = "var/lib/usrview"
#: qemu settings, the same for every boot (the benchmark compares boots).
QEMU = "qemu-system-x86_64"
MEMORY_MB = 1024
CPUS = 2
#: Kernel command line of every boot; the root is the first virtio disk.
CMDLINE = ("root=/dev/vda rootfstype=btrfs rw console=ttyS0 panic=-1 loglevel=4 "
           "systemd.show_status=1 systemd.journald.forward_to_console=0")
#: The results disk (/dev/vdb).
IO_DISK_BYTES = 32 * 1024 * 1024
#: Root disk size (sparse).
DISK_BYTES = 2 * 1024 ** 3

GUEST_RUNNER = r"""#!/bin/bash
# usrview VM test runner: run the script from /dev/vdb, write its results back.
set -u
mkdir -p /run/vmtest
tar -xf /dev/vdb -C /run/vmtest 2>/dev/null
mkdir -p /run/vmtest/out
cd /run/vmtest/out
boot=$(( $(cat boots 2>/dev/null || echo 0) + 1 ))
echo "$boot" > boots
systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target > "target-usec.$boot"
systemd-analyze time > "analyze.$boot" 2>&1
rm -f next
OUT=/run/vmtest/out BOOT=$boot bash /run/vmtest/run > "run.$boot.log" 2>&1
echo $? > "rc.$boot"
tar -cf /dev/vdb -C /run/vmtest run out
sync
# priority 2: shown on the console whatever the loglevel (the poweroff is timed from it)
echo "<2>usrview-vmtest: boot $boot done, rc $(cat "rc.$boot")" > /dev/kmsg
next=$(cat next 2>/dev/null || echo poweroff)
systemctl --no-block "$next"
"""

GUEST_UNIT = """[Unit]
Description=usrview VM test: run the script from /dev/vdb
After=multi-user.target
ConditionPathExists=/dev/vdb

[Service]
Type=oneshot
ExecStart=/bin/bash /etc/usrview-vmtest/runner
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""


def log(*args) -> None:
    print("vm:", *args, file=sys.stderr, flush=True)


def _run(cmd, *, timeout: float = 600, **kw) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                       check=False, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}\n"
                           f"{r.stdout.decode(errors='replace')[-3000:]}\n{r.stderr.decode(errors='replace')[-3000:]}")
    return r.stdout.decode(errors="replace")


def usrview_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "usrview.cli", *map(str, args)]


# --- kernel ---------------------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    kver: str
    root: Path  # the unpacked package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.kver}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.kver


def kernel_package() -> str:
    """The cloud kernel package the metapackage currently depends on."""
    out = _run(["apt-cache", "depends", "--important", KERNEL_META])
    names = re.findall(r"Depends:\s*(linux-image-\S+-cloud-amd64)\b", out)
    if not names:
        raise RuntimeError(f"apt-cache depends {KERNEL_META} names no kernel:\n{out}")
    return names[0]


def fetch_kernel(cache: Path = CACHE) -> Kernel:
    """Debian's cloud kernel, downloaded and unpacked once into ``cache``; the newest
    one unpacked there is reused (no network) when present."""
    kdir = cache / "kernel"
    have = sorted(kdir.glob("linux-image-*/boot/vmlinuz-*")) if kdir.is_dir() else []
    if have:
        vmlinuz = have[-1]
        return Kernel(vmlinuz.name.removeprefix("vmlinuz-"), vmlinuz.parents[1])
    name = kernel_package()
    kver = name.removeprefix("linux-image-")
    dest = kdir / name
    cache.mkdir(parents=True, exist_ok=True)  # a fresh machine has none
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _run(["apt-get", "download", name], cwd=tmp)
        (deb,) = Path(tmp).glob("*.deb")
        unpacked = Path(tmp) / "root"
        _run(["dpkg-deb", "-x", deb, unpacked])
        _run(["depmod", "-b", unpacked, kver])
        dest.parent.mkdir(parents=True, exist_ok=True)
        unpacked.rename(dest)
    return Kernel(kver, dest)


# --- initrd ---------------------------------------------------------------------

def dracut_basedir(cache: Path = CACHE) -> Path:
    """dracut's own directory with usrview's module beside its modules (dracut reads
    modules only from its base directory): links to /usr/lib/dracut's files, a
    modules.d of links, 90usrview the repository's."""
    system = Path("/usr/lib/dracut")
    base = cache / "dracut-base"
    if base.exists():
        shutil.rmtree(base)
    (base / "modules.d").mkdir(parents=True)
    for entry in system.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    for mod in (system / "modules.d").iterdir():
        if mod.name != DRACUT_MODULE.name:
            (base / "modules.d" / mod.name).symlink_to(mod)
    (base / "modules.d" / DRACUT_MODULE.name).symlink_to(DRACUT_MODULE)
    return base


def build_initrd(kernel: Kernel, out: Path, *, usrview: bool = True, keys: Path | None = None,
                 args: str = "", cache: Path = CACHE) -> Path:
    """An initrd made by dracut for ``kernel``: systemd, a btrfs root on virtio, and
    with ``usrview`` usrview's module (its daemon run by this interpreter, trusting
    ``keys``)."""
    modules = list(DRACUT_MODULES) + (["usrview"] if usrview else [])
    env = {**os.environ, "dracutbasedir": str(dracut_basedir(cache))}
    if usrview:
        env.update(usrview_python=sys.executable, usrview_pythonpath=str(REPO),
                   usrview_keys=str(keys) if keys else "", usrview_args=args)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    dracut_log = out.with_suffix(".dracut.log")
    with open(dracut_log, "wb") as f:
        r = subprocess.run(["dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline", "--no-early-microcode",
                            "--compress", DRACUT_COMPRESS,
                            "--kver", kernel.kver, "--kmoddir", str(kernel.moddir), "-m", " ".join(modules),
                            "--add-drivers", " ".join(DRACUT_DRIVERS), str(out)],
                           env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, timeout=900,
                           check=False)
    problems = [line for line in dracut_log.read_text(errors="replace").splitlines()
                if re.search(r"\b(FAILED|ERROR)\b|usrview:", line)]
    if r.returncode != 0 or problems:
        raise RuntimeError(f"dracut exited {r.returncode}; log {dracut_log}:\n" + "\n".join(problems[-20:]))
    log(f"initrd {out.name}: {out.stat().st_size / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s")
    return out


# --- the guest's packages ----------------------------------------------------------

def guest_packages(cache: Path = CACHE, *, roots=GUEST_PACKAGES) -> Path:
    """The guest's package set (tests/pkgset.py relocated: set-v1, set-v2 with 10%
    updated, key/, manifest.json), built once into ``cache``."""
    names = pkgset.dependency_closure(list(roots))
    tag = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:12]
    setdir = cache / f"guest-pkgs-{tag}"
    if (setdir / "manifest.json").exists():
        return setdir
    tmp = cache / f"guest-pkgs-{tag}.tmp"
    cache.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    pkgset.build_set(tmp, len(names), names=names, update_fraction=0.1, relocate=True, log=lambda *a: log(*a))
    # the key's path in the manifest moves with the directory
    tmp.rename(setdir)
    return setdir


def _package_bytes(path) -> bytes:
    """A file's bytes as a distribution packages them: shared objects and programs
    stripped (rpmbuild's brp-strip; pyenv's are not), the rest as they are.  The
    booted system's ``usrview boot-complete`` reads them through the view, which
    hashes every byte."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x7fELF"):
        return data
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stripped"
        try:
            r = subprocess.run(["strip", "--strip-unneeded", "-o", str(out), str(path)], capture_output=True,
                               check=False)
        except FileNotFoundError:  # no binutils: packaged as it is
            return data
        return out.read_bytes() if r.returncode == 0 else data


def usrview_package(workdir: Path, key) -> Path:
    """usrview as a package of the guest image, so that the booted system runs
    ``usrview boot-complete``: the runtime the dracut module takes into the initrd
    (usrview-runtime.py lists it: this interpreter, the modules usrview imports)
    under /usr/lib/usrview, /usr/bin/usrview, and the units: the initrd's view unit
    (the booted system must know it, see docs/boot.md) and the boot-complete unit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    listing = _run([sys.executable, DRACUT_MODULE / "usrview-runtime.py", "--all-commands"], env=env, cwd="/")
    files: dict[str, FileSpec] = {}
    home = exe = ""
    for line in listing.splitlines():
        kind, src, *rel = line.split("\t")
        if kind == "home":
            home = src
        elif kind == "python":
            exe = src
        elif kind == "stdlib":
            dest = f"{GUEST_RUNTIME}/python/{os.path.relpath(src, home)}"
            files[dest] = FileSpec(dest, content=_package_bytes(src), mode=0o755 if src.endswith(".so") else 0o644)
        elif kind == "site":
            dest = f"{GUEST_RUNTIME}/site/{rel[0]}"
            files[dest] = FileSpec(dest, content=_package_bytes(src), mode=0o755 if src.endswith(".so") else 0o644)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    bindest = f"{GUEST_RUNTIME}/python/bin/python{version}"
    files[bindest] = FileSpec(bindest, content=_package_bytes(exe), mode=0o755)
    libpython = Path(home) / "lib" / f"libpython{version}.so.1.0"
    if libpython.exists():
        dest = f"{GUEST_RUNTIME}/python/lib/{libpython.name}"
        files[dest] = FileSpec(dest, content=_package_bytes(libpython), mode=0o755)
    wrapper = (f"#!/bin/bash\n# usrview from its own runtime ({GUEST_RUNTIME})\n"
               f"PYTHONHOME={GUEST_RUNTIME}/python PYTHONPATH={GUEST_RUNTIME}/site "
               f"LD_LIBRARY_PATH={GUEST_RUNTIME}/python/lib PYTHONDONTWRITEBYTECODE=1 \\\n"
               f"    exec {bindest} -m usrview.cli \"$@\"\n")
    files["/usr/bin/usrview"] = FileSpec("/usr/bin/usrview", content=wrapper.encode(), mode=0o755)
    unitdir = "/usr/lib/systemd/system"
    files[f"{unitdir}/{VIEW_UNIT}"] = FileSpec(f"{unitdir}/{VIEW_UNIT}", content=booted_view_unit().encode(),
                                               mode=0o644)
    bc = REPO / "systemd" / BOOT_COMPLETE_UNIT
    files[f"{unitdir}/{BOOT_COMPLETE_UNIT}"] = FileSpec(f"{unitdir}/{BOOT_COMPLETE_UNIT}", content=bc.read_bytes(),
                                                        mode=0o644)
    link = f"{unitdir}/multi-user.target.wants/{BOOT_COMPLETE_UNIT}"
    files[link] = FileSpec(link, kind="symlink", target=f"../{BOOT_COMPLETE_UNIT}")
    workdir.mkdir(parents=True, exist_ok=True)
    rpm = build_rpm(workdir, "usrview", "0.1.0", "1", sorted(files.values(), key=lambda f: f.path),
                    summary="usrview, its Python runtime and its boot units", compress="w3.zstdio", sign_key=key,
                    noarch=False)
    log(f"usrview package: {len(files)} files, {rpm.stat().st_size / 1e6:.1f} MB")
    return rpm


# --- disks ------------------------------------------------------------------------

@contextlib.contextmanager
def loop_mount(image: Path, mountpoint: Path):
    """``image`` mounted on ``mountpoint`` through a loop device, both undone on exit."""
    loop = _run(["losetup", "--find", "--show", image]).strip()
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
        _run(["mount", loop, mountpoint])
        try:
            yield mountpoint
        finally:
            r = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                mountpoint.rmdir()
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


def skeleton(root: Path) -> None:
    """The root file system around /usr: merged-/usr links, mountpoints, /var."""
    for name in ("usr", "etc", "var/lib", "var/log", "var/tmp", "var/cache", "proc", "sys", "dev", "run",
                 "home", "mnt", "root", "tmp", STORE):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "root").chmod(0o700)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    for name in ("bin", "sbin", "lib", "lib64"):
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"usr/{name}")


def write_etc(root: Path, setdir: Path) -> None:
    """The guest's /etc: what the packages ship there (copied from this machine),
    accounts, fstab, machine-id, hostname, the alternatives selections of the
    packaged alternatives, and the test runner."""
    man = pkgset.load(setdir)
    etc = root / "etc"
    paths = sorted({p for pkg in man["packages"].values() for p in pkg.get("etc", [])})
    for path in paths:
        src, dest = Path(path), root / path.lstrip("/")
        if src.is_symlink():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.is_symlink():
                dest.symlink_to(os.readlink(src))
        elif src.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copystat(src, dest)
        elif src.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    for name in ("passwd", "group"):
        shutil.copy2(f"/etc/{name}", etc / name)
    # no password anywhere: accounts locked
    users = [line.split(":")[0] for line in (etc / "passwd").read_text().splitlines() if line]
    groups = [line.split(":")[0] for line in (etc / "group").read_text().splitlines() if line]
    (etc / "shadow").write_text("".join(f"{u}:*:19000:0:99999:7:::\n" for u in users))
    (etc / "gshadow").write_text("".join(f"{g}:*::\n" for g in groups))
    (etc / "shadow").chmod(0o640)
    (etc / "gshadow").chmod(0o640)
    (etc / "fstab").write_text("# the root is root= on the kernel command line; /usr is the view (usrview)\n")
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    (etc / "hostname").write_text("usrview-vm\n")
    alternatives = etc / "alternatives"
    alternatives.mkdir(exist_ok=True)
    for pkg in man["packages"].values():
        for link_target in pkg.get("ghosts", {}).values():
            name = Path(link_target).name
            live = pkgset.ALTERNATIVES_LINKS / name
            if live.is_symlink() and not (alternatives / name).is_symlink():
                (alternatives / name).symlink_to(os.readlink(live))
    runner = etc / "usrview-vmtest"
    runner.mkdir(exist_ok=True)
    (runner / "runner").write_text(GUEST_RUNNER)
    units = etc / "systemd" / "system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / "usrview-vmtest.service").write_text(GUEST_UNIT)
    want = units / "multi-user.target.wants" / "usrview-vmtest.service"
    if not want.is_symlink():
        want.symlink_to("../usrview-vmtest.service")
    # Nobody logs in: no getty on the console (its output would interleave with the log).
    # binfmt_misc is a module, and the root disk has no kernel modules.
    for unit in ("serial-getty@ttyS0.service", "getty@tty1.service", "proc-sys-fs-binfmt_misc.automount",
                 "systemd-binfmt.service"):
        masked = units / unit
        if not masked.is_symlink():
            masked.symlink_to("/dev/null")


def booted_view_unit() -> str:
    """usrview-sysroot-usr.service as the booted system reads it (the paths of the
    initrd's runtime do not matter there: the unit is running, never started)."""
    text = (DRACUT_MODULE / VIEW_UNIT).read_text()
    for key, value in {"@PYTHON@": "/usr/lib/usrview/python3", "@PYTHONHOME@": "/usr",
                       "@SITE@": "/usr/lib/usrview/site", "@ARGS@": ""}.items():
        text = text.replace(key, value)
    return text


def guest_images(setdir: Path, workdir: Path) -> list[Path]:
    """The guest's two images, as directories of rpms in ``workdir``: set-v1 and
    set-v2 of the cached package set (hard links), each with usrview's package
    built now from this tree (:func:`usrview_package`, signed with the set's key)."""
    key = pkgset.load_or_make_key(setdir / "key")
    try:
        rpm = usrview_package(workdir / "usrview-build", key)
    finally:
        pkgset.stop_gpg_agent(key)
    dirs = []
    for name in ("set-v1", "set-v2"):
        d = workdir / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        for src in (setdir / name).glob("*.rpm"):
            os.link(src, d / src.name)
        shutil.copy2(rpm, d / rpm.name)
        dirs.append(d)
    return dirs


def make_view_disk(out: Path, setdir: Path, images: list[Path], *, size: int = DISK_BYTES,
                   work: Path | None = None) -> Path:
    """A raw btrfs disk: the root file system with a store holding ``images``
    (deployed in that order by ``usrview deploy``: the last is current)."""
    key = setdir / "key" / pkgset.PUBKEY_NAME
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(size)
    _run(["mkfs.btrfs", "-q", "-L", "usrview-root", out])
    with tempfile.TemporaryDirectory(dir=work or out.parent) as tmp, loop_mount(out, Path(tmp) / "mnt") as mnt:
        skeleton(mnt)
        write_etc(mnt, setdir)
        store = mnt / STORE
        for image in images:
            t0 = time.monotonic()
            _run(usrview_cmd("deploy", "--store", store, "--keys", key, image),
                 env={**os.environ, "USRVIEW_CONFIG": "/dev/null"}, timeout=900)
            log(f"deployed {image.name} in {time.monotonic() - t0:.1f} s")
    return out


def make_plain_disk(out: Path, setdir: Path, image: Path, *, size: int = DISK_BYTES,
                    work: Path | None = None) -> Path:
    """A raw btrfs disk with the same root file system, the packages of ``image``
    installed by ``rpm --root`` into its /usr: no view, no loop device
    (``mkfs.btrfs --rootdir``)."""
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=work or out.parent) as tmp:
        root = Path(tmp) / "root"
        skeleton(root)
        write_etc(root, setdir)
        (root / "etc/fstab").write_text("# the root is root= on the kernel command line\n")
        rpm_root_install(root, sorted(image.glob("*.rpm")))
        with open(out, "wb") as f:
            f.truncate(size)
        _run(["mkfs.btrfs", "-q", "-L", "plain-root", "--rootdir", root, out], timeout=900)
    return out


# --- running ----------------------------------------------------------------------

@dataclass
class BootResult:
    """One qemu run: its directory (console.log, qemu.log, out/), how it ended."""

    workdir: Path
    seconds: float
    returncode: int | None
    timed_out: bool
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = self.workdir / "out"

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    def text(self, name: str) -> str:
        path = self.out / name
        if not path.exists():
            raise AssertionError(f"the guest wrote no {name}; console log: {self.console}")
        return path.read_text(errors="replace")

    @property
    def boots(self) -> int:
        p = self.out / "boots"
        return int(p.read_text()) if p.exists() else 0

    def target_seconds(self, boot: int = 1) -> float:
        """Seconds from the kernel's start to multi-user.target (the guest's clock)."""
        return int(self.text(f"target-usec.{boot}").strip()) / 1e6

    def why(self) -> str:
        tail = self.console.read_text(errors="replace")[-3000:] if self.console.exists() else ""
        return (f"qemu {'timed out' if self.timed_out else f'exited {self.returncode}'} after "
                f"{self.seconds:.1f} s; console log {self.console} ends:\n{tail}")


def copy_disk(src: Path, dest: Path) -> Path:
    """A copy of a raw disk to change before a boot (sparse: only the data is copied)."""
    _run(["cp", "--sparse=always", "--reflink=auto", src, dest])
    return dest


def _io_disk(path: Path, script: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        data = script.encode()
        info = tarfile.TarInfo("run")
        info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as f:
        f.write(buf.getvalue())
        f.truncate(IO_DISK_BYTES)


def qemu_argv(kernel: Kernel, initrd: Path, disk: Path, iodisk: Path, console: Path, cmdline: str, *,
              reboot: bool, snapshot: bool = True) -> list[str]:
    return [QEMU, "-accel", "tcg", "-m", str(MEMORY_MB), "-smp", str(CPUS), "-nodefaults", "-no-user-config",
            "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
            *([] if reboot else ["-no-reboot"]),
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", cmdline,
            "-drive", f"file={disk},if=virtio,format=raw,cache=unsafe,snapshot={'on' if snapshot else 'off'}",
            "-drive", f"file={iodisk},if=virtio,format=raw,cache=unsafe",
            "-device", "virtio-rng-pci"]


def _extract_out(tar: tarfile.TarFile, workdir: Path) -> None:
    """Extract the guest's out/ into ``workdir``: with the "data" filter where this
    Python has it (3.11.4 and newer; Debian 12's 3.11.2 has not), else only
    directories and regular files whose paths stay beneath ``workdir``."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(workdir, filter="data")
        return
    top = workdir.resolve()
    members = [m for m in tar.getmembers() if (m.isdir() or m.isreg()) and not os.path.isabs(m.name)
               and (top / m.name).resolve().is_relative_to(top)]
    tar.extractall(workdir, members=members)


def boot(base: Path, kernel: Kernel, initrd: Path, workdir: Path, *, script: str = "true\n", cmdline: str = "",
         timeout: float = 300, reboot: bool = False, persist: bool = False) -> BootResult:
    """Boot ``base`` (a raw disk) with ``script`` run once multi-user.target is
    reached.  The guest's writes go to a copy-on-write overlay qemu keeps for the
    run (``snapshot=on``: ``base`` is left as it was, reboots inside the run see
    them) -- or to ``base`` itself with ``persist``.  ``reboot``: the guest may
    reboot (qemu keeps running; the script's out/ survives), else a reboot ends qemu.
    Returns when qemu exits, or kills it at ``timeout`` seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    iodisk = workdir / "io.img"
    _io_disk(iodisk, script)
    console = workdir / "console.log"
    argv = qemu_argv(kernel, initrd, base, iodisk, console, f"{CMDLINE} {cmdline}".strip(), reboot=reboot,
                     snapshot=not persist)
    (workdir / "qemu.argv").write_text(" ".join(argv) + "\n")
    t0 = time.monotonic()
    with open(workdir / "qemu.log", "wb") as qlog:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    result = BootResult(workdir, time.monotonic() - t0, proc.returncode, timed_out)
    out = workdir / "out"
    if out.exists():
        shutil.rmtree(out)
    try:
        with tarfile.open(iodisk) as tar:
            _extract_out(tar, workdir)
    except (tarfile.TarError, OSError):
        pass
    log(f"boot in {workdir}: {result.seconds:.1f} s, {result.boots} boot(s) ran the script"
        + (" (timed out)" if timed_out else ""))
    return result
