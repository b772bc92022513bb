"""The view's lifecycle, on real mounts of ``usrview mount`` in a subprocess.

Recovery of a mountpoint left by a killed daemon, detaching (and finding the
daemon by the pid it prints), READY=1 on $NOTIFY_SOCKET, SIGINT, the mount
options the kernel reports, refusal of a header whose signature is bad, and an
unsigned package the store recorded as unsigned.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prereq import require_fuse
from tests.rpmbuild import FileSpec
from tests.test_mount import MOUNT_TIMEOUT, REPO, _dead_mount, unmount, wait_for_mount
from tests.viewstore import deploy_store
from usrview import images
from usrview.cli._common import load_keyring
from usrview.store import Store
from usrview.view import compiled

FILES = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/life", content=b"#!/bin/sh\necho life\n", mode=0o755),
    FileSpec("/usr/share/life/data", content=b"life data\n" * 100),
]
UNSIGNED_FILES = [
    FileSpec("/usr/share/unsigned/data", content=b"unsigned but recorded\n"),
]
#: What the detached command prints once the view serves.
SERVING_RE = re.compile(r"usrview: serving (\S+) \(pid (\d+)\)")


def usrview(*args: str) -> list[str]:
    return [sys.executable, "-m", "usrview.cli", *args]


def mount_args(store: Store, key, mountpoint: Path, *extra: str) -> list[str]:
    return usrview("mount", "--store", str(store.root), "--keys", str(key.public_path), *extra,
                   str(mountpoint))


ENV = {**os.environ, "USRVIEW_CONFIG": "/dev/null"}


class Daemon:
    """A foreground ``usrview mount`` in a subprocess, logging to a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO, env=env or ENV)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=MOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def store(rpm_packages, gpg_key, tmp_path):
    require_fuse()
    store, _ = deploy_store(tmp_path / "store", [rpm_packages("life", files=FILES)], gpg_key)
    return store


@pytest.fixture
def mountpoint(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    daemons: list[Daemon] = []
    yield mnt, daemons
    for d in daemons:
        d.stop()
    unmount(mnt)
    assert not os.path.ismount(mnt) and not _dead_mount(mnt)


def start(store, key, mnt, daemons, log_path: Path, *extra: str, env=None) -> Daemon:
    d = Daemon(mount_args(store, key, mnt, "--foreground", *extra), log_path, env)
    daemons.append(d)
    wait_for_mount(d.proc, mnt)
    # A dead mount left there counts as a mount for ismount (its root's
    # attributes are cached): wait until the daemon answers statfs -- on a
    # mount: between the dead mount's removal and the new one, statfs answers
    # for the bare directory.
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while True:
        try:
            os.statvfs(mnt)
            if os.path.ismount(mnt):
                return d
        except OSError as e:
            assert e.errno == errno.ENOTCONN, e
        assert d.proc.poll() is None, f"usrview mount exited {d.proc.returncode}:\n{d.log()}"
        assert time.monotonic() < deadline, "the view did not serve in time"
        time.sleep(0.05)


def test_dead_daemon_mountpoint_is_recovered(store, gpg_key, mountpoint, tmp_path):
    mnt, daemons = mountpoint
    first = start(store, gpg_key, mnt, daemons, tmp_path / "first.log")
    assert (mnt / "bin/life").read_bytes().startswith(b"#!/bin/sh")
    first.proc.kill()  # SIGKILL: no chance to unmount
    first.proc.wait(timeout=MOUNT_TIMEOUT)
    # The kernel aborts the connection when the daemon's /dev/fuse fd closes;
    # give it a moment on a loaded machine.
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.statvfs(mnt)
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                break
        time.sleep(0.05)
    # The kernel still answers stat of the root from its attribute cache; what
    # asks the daemon fails.
    for probe in (os.statvfs, os.listdir, lambda m: os.stat(m / "share/life/never")):
        with pytest.raises(OSError) as e:
            probe(mnt)
        assert e.value.errno == errno.ENOTCONN, probe
    second = start(store, gpg_key, mnt, daemons, tmp_path / "second.log")
    assert (mnt / "share/life/data").read_bytes() == b"life data\n" * 100
    assert "a dead usrview mount" in second.log()
    assert second.stop() == 0
    assert not os.path.ismount(mnt)


def test_live_mount_is_refused(store, gpg_key, mountpoint, tmp_path):
    mnt, daemons = mountpoint
    start(store, gpg_key, mnt, daemons, tmp_path / "first.log")
    r = subprocess.run(mount_args(store, gpg_key, mnt, "--foreground"), check=False, capture_output=True, text=True,
                       cwd=REPO, env=ENV, timeout=MOUNT_TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert "already a mount point" in r.stderr
    assert (mnt / "bin/life").exists()  # the first view still serves


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_detached_mount_prints_pid_and_umount_ends_it(store, gpg_key, mountpoint):
    mnt, _ = mountpoint
    pid = None
    try:
        r = subprocess.run(mount_args(store, gpg_key, mnt), check=False, capture_output=True, text=True, cwd=REPO,
                           env=ENV, timeout=MOUNT_TIMEOUT, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        m = SERVING_RE.search(r.stdout)
        assert m, r.stdout
        assert m.group(1) == str(mnt)
        pid = int(m.group(2))
        # Serving already when the command returns.
        assert os.path.ismount(mnt)
        assert (mnt / "bin/life").read_bytes().startswith(b"#!/bin/sh")
        assert _alive(pid)
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"usrview.cli"]
        r = subprocess.run(usrview("umount", str(mnt)), check=False, capture_output=True, text=True, cwd=REPO, env=ENV,
                           timeout=MOUNT_TIMEOUT)
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(mnt)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while _alive(pid):
            assert time.monotonic() < deadline, f"daemon {pid} still running after umount"
            time.sleep(0.05)
        pid = None
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)


def test_notify_socket_gets_ready(store, gpg_key, mountpoint, tmp_path):
    mnt, daemons = mountpoint
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(MOUNT_TIMEOUT)
        d = Daemon(mount_args(store, gpg_key, mnt, "--foreground"), tmp_path / "mount.log",
                   {**ENV, "NOTIFY_SOCKET": str(address)})
        daemons.append(d)
        message = sock.recv(4096)
        assert b"READY=1" in message.split(b"\n")
        # READY=1 means serving: the mount exists and answers.
        assert os.path.ismount(mnt)
        assert (mnt / "share/life/data").stat().st_size == 1000
        assert d.stop() == 0
        assert b"STOPPING=1" in sock.recv(4096).split(b"\n")


def test_sigint_unmounts_cleanly(store, gpg_key, mountpoint, tmp_path):
    mnt, daemons = mountpoint
    d = start(store, gpg_key, mnt, daemons, tmp_path / "mount.log", "-v")
    assert d.stop(signal.SIGINT) == 0
    assert not os.path.ismount(mnt) and not _dead_mount(mnt)
    assert "SIGINT: unmounting" in d.log()
    assert "Traceback" not in d.log()


def _mountinfo(mnt: Path) -> tuple[list[str], str, str, list[str]]:
    """(per-mount options, fstype, source, super options) of the mount on ``mnt``."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, after = line.split(" - ", 1)
        fields = before.split()
        if fields[4] == str(mnt):
            fstype, source, super_opts = after.split()
            return fields[5].split(","), fstype, source, super_opts.split(",")
    raise AssertionError(f"{mnt} is not in /proc/self/mountinfo")


def test_mount_options(store, gpg_key, mountpoint, tmp_path):
    mnt, daemons = mountpoint
    start(store, gpg_key, mnt, daemons, tmp_path / "mount.log")
    opts, fstype, source, super_opts = _mountinfo(mnt)
    assert "ro" in opts
    assert "nosuid" not in opts  # /usr needs sudo and passwd
    assert "nodev" in opts  # device nodes stay inert
    assert fstype == "fuse.usrview"  # subtype
    assert source == "usrview"  # fsname
    assert "allow_other" in super_opts
    assert "default_permissions" in super_opts
    assert "ro" in super_opts


def flip_signed_byte(store, pkgid: str, name: str) -> None:
    """The first letter of the last file name ``name`` in ``pkgid``'s main header changed:
    a name lives only there, which the signature covers; the file keeps its size."""
    header = store.header_path(pkgid)
    data = bytearray(header.read_bytes())
    at = bytes(data).rindex(name.encode() + b"\0")
    data[at] = ord(name[0].upper())
    header.chmod(0o644)
    header.write_bytes(bytes(data))


def test_bad_header_signature_refuses_mount(store, gpg_key, mountpoint):
    mnt, _ = mountpoint
    image = images.resolve(store, images.CURRENT)
    (pkgid,) = image.packages
    flip_signed_byte(store, pkgid, "life")
    try:
        r = subprocess.run(mount_args(store, gpg_key, mnt), check=False, capture_output=True, text=True, cwd=REPO,
                           env=ENV, timeout=MOUNT_TIMEOUT, stdin=subprocess.DEVNULL)
    finally:
        unmount(mnt)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("usrview: error: refusing to mount image ")
    assert pkgid in lines[0] and "BAD" in lines[0]
    assert not os.path.ismount(mnt)


def test_bad_header_signature_of_a_compiled_tree_answers_eio(store, gpg_key, mountpoint, tmp_path):
    """Issue 14: with a compiled tree the mount checks no header but the root's package's
    (here /usr is no package's): it serves, and the first request touching the tampered
    package -- or any request once the full check found it -- answers EIO, with an ERROR
    naming the package and its verdict; nothing of it is ever served."""
    mnt, daemons = mountpoint
    image = images.resolve(store, images.CURRENT)
    (pkgid,) = image.packages
    compiled.compile_image(store, image, load_keyring([gpg_key.public_path]))
    flip_signed_byte(store, pkgid, "life")
    d = Daemon(mount_args(store, gpg_key, mnt, "--foreground"), tmp_path / "mount.log")
    daemons.append(d)
    # mounted: in the mount table (os.path.ismount stats the root, which may answer EIO already:
    # for so small an image the full check can end first)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not any(line.split()[4] == str(mnt) for line in Path("/proc/self/mountinfo").read_text().splitlines()):
        assert d.proc.poll() is None, f"usrview mount exited {d.proc.returncode}:\n{d.log()}"
        assert time.monotonic() < deadline, "the view did not mount in time"
        time.sleep(0.05)
    for touch in (lambda: os.stat(mnt / "bin/life"), lambda: os.listdir(mnt / "share/life"),
                  lambda: (mnt / "share/life/data").read_bytes()):
        with pytest.raises(OSError) as e:
            touch()
        assert e.value.errno == errno.EIO
    assert d.stop() == 0
    errors = [line for line in d.log().splitlines() if "ERROR" in line]
    # whichever found it first: the package's check at its first use, or the full check
    assert errors and f"not trusted: {pkgid}: BAD" in errors[0], d.log()


def test_unsigned_package_recorded_unsigned_is_served_with_warning(rpm_packages, gpg_key, mountpoint,
                                                                    tmp_path):
    require_fuse()
    mnt, daemons = mountpoint
    rpms = [rpm_packages("life", files=FILES),
            rpm_packages("nosig", files=UNSIGNED_FILES, signed=False)]
    source = tmp_path / "source"
    source.mkdir()
    for rpm in rpms:
        (source / Path(rpm).name).write_bytes(Path(rpm).read_bytes())
    store = Store.open(tmp_path / "store", create=True)
    image = images.deploy(store, source, load_keyring([gpg_key.public_path]), allow_unsigned=True).image
    unsigned = next(p for p in image.packages if p.startswith("nosig-"))
    assert store.unsigned_path(unsigned).exists()
    d = start(store, gpg_key, mnt, daemons, tmp_path / "mount.log")
    assert (mnt / "share/unsigned/data").read_bytes() == b"unsigned but recorded\n"
    warnings = [line for line in d.log().splitlines() if "UNSIGNED" in line]
    assert len(warnings) == 1 and unsigned in warnings[0], d.log()
    assert warnings[0].startswith("usrview: WARNING: ")
    assert d.stop() == 0
