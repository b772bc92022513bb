"""``usrview initrd-mount`` on a real FUSE mount: a temporary sysroot (a store
under var/lib/usrview, keys under etc/pki/rpm-gpg, an empty usr), the daemon
started as systemd starts it from the initrd (argv[0] "@usrview", -S, the
modules on PYTHONPATH as in an initrd, no virtual environment), and the proof that
after READY it opens, imports and runs nothing: an audit hook installed at
READY (USRVIEW_TEST_AUDIT_LOG) records every such event while the test walks,
reads, reads links, tampers a stored file (EIO and a journal record), signals
SIGUSR1 and SIGTERM; the store's path and the journal socket's path are made
to vanish after READY, as switch-root makes them.  Then boot-complete.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import os
import re
import signal
import site
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyfuse3
import pytest

from tests.prereq import require_fuse
from tests.rpmbuild import FileSpec
from tests.test_mount import MOUNT_TIMEOUT, REPO, _dead_mount, unmount
from tests.viewstore import deploy_store, load_keyring
from usrview.boot.initrd import FUSE_DEVICE_ENV, READ_AHEAD_KIB, SERVING_NICE
from usrview.boot.rootdaemon import AUDIT_ENV
from usrview.config import BOOT_SPIN_US, DISPATCH_SPIN_US
from usrview.journal import INTEGRITY_MESSAGE_ID
from usrview.view.compiled import HEAD, compile_image
from usrview.view.prefetch import format_record, opened_record_path

FILES = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/life", content=b"#!/bin/sh\necho life\n", mode=0o755),
    FileSpec("/usr/bin/ld.bfd", content=b"bfd\n", mode=0o755),
    FileSpec("/usr/bin/ld", kind="symlink", target="/etc/alternatives/ld", directives="%ghost"),
    FileSpec("/usr/bin/editor", content=b"", directives="%ghost"),
    FileSpec("/usr/bin/sh-link", kind="symlink", target="life"),
    FileSpec("/usr/share/life/data", content=b"life data\n" * 100),
    FileSpec("/usr/share/life/deep/er/file", content=b"deep\n" * 5000),
    # larger than the guard hashes in the event loop: hashed in a worker thread
    FileSpec("/usr/share/life/big", content=bytes(range(256)) * 8192),
]


def daemon_env(tmp_path: Path, **extra: str) -> dict:
    """An initrd's environment: the modules on PYTHONPATH, no venv to find by argv[0]."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site.getsitepackages()])
    env["USRVIEW_CONFIG"] = "/nonexistent/usrview.toml"  # initrd-mount must not read it
    env.update(extra)
    return env


def initrd_mount(sysroot: Path, cmdline: Path, env: dict, log_path: Path, *args: str) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(["@usrview", "-S", "-m", "usrview.cli", "initrd-mount", "--sysroot", str(sysroot),
                                 "--cmdline", str(cmdline), *args], executable=sys.executable, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=log_path.parent)


def stop(proc: subprocess.Popen, log_path: Path) -> None:
    """SIGTERM: the daemon unmounts and exits 0."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=MOUNT_TIMEOUT) == 0, log_path.read_text()


def kill(proc: subprocess.Popen) -> None:
    """End a daemon a failed test left running (by its pid)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def usrview(*args, env=None, check=0) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "usrview.cli", *map(str, args)], capture_output=True,
                       text=True, cwd=REPO, env=env or {**os.environ, "USRVIEW_CONFIG": "/dev/null"},
                       check=False)
    assert r.returncode == check, r.stdout + r.stderr
    return r


@pytest.fixture
def sysroot(rpm_packages, gpg_key, tmp_path):
    require_fuse()
    root = tmp_path / "sysroot"
    store, image = deploy_store(root / "var/lib/usrview", [rpm_packages("life", files=FILES)], gpg_key)
    compile_image(store, image, load_keyring([gpg_key.public_path]))  # as deploy does: the boot maps it
    keys = root / "etc/pki/rpm-gpg"
    keys.mkdir(parents=True)
    keys.joinpath("RPM-GPG-KEY-test").write_bytes(gpg_key.public_path.read_bytes())
    (root / "usr").mkdir()
    yield root, store, image
    unmount(root / "usr")
    assert not os.path.ismount(root / "usr") and not _dead_mount(root / "usr")


@pytest.fixture(scope="module")
def code_cache(tmp_path_factory) -> Path:
    """The generated code of the daemon's imports, as the dracut module records it
    for the initrd (usrview.boot.codecache; the unit names it in USRVIEW_CODE_CACHE)."""
    out = tmp_path_factory.mktemp("codecache") / "usrview-generated-code"
    r = subprocess.run([sys.executable, str(REPO / "systemd/dracut/90usrview/usrview-runtime.py"),
                        f"--code-cache={out}"], capture_output=True, text=True, cwd="/", timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stderr
    return out


def _mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def record_temp(name: str) -> bool:
    """The temp file of a record of opened files (usrview.view.prefetch.RecordDirs,
    by way of Store.atomic_write_beneath)."""
    return bool(re.fullmatch(r"\.opened-[\w-]+\.usrview-tmp\.\d+\.[0-9a-f]+", name))


def _store_names(store_root: Path) -> set[str]:
    names = {"."}
    for _, dirs, files in os.walk(store_root):
        names.update(dirs, files)
    return names


def test_initrd_mount_opens_and_imports_nothing_after_ready(sysroot, tmp_path, code_cache):
    root, _, image = sysroot
    mnt = root / "usr"
    cmdline = tmp_path / "cmdline"
    # Two wrong words: a line each on the console, and the boot goes on.
    cmdline.write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda rw usrview.verify=bogus usrview.image=nope quiet\n")
    audit, kmsg = tmp_path / "audit.log", tmp_path / "kmsg"
    kmsg.touch()
    notify_path, journal_path = tmp_path / "notify", tmp_path / "journal"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        notify.bind(str(notify_path))
        notify.settimeout(MOUNT_TIMEOUT)
        journal.bind(str(journal_path))
        journal.settimeout(MOUNT_TIMEOUT)
        env = daemon_env(tmp_path, NOTIFY_SOCKET=str(notify_path), INVOCATION_ID="test",
                         USRVIEW_JOURNAL_SOCKET=str(journal_path), USRVIEW_KMSG=str(kmsg),
                         USRVIEW_CODE_CACHE=str(code_cache), **{AUDIT_ENV: str(audit)})
        proc = initrd_mount(root, cmdline, env, tmp_path / "daemon.log")
        try:
            try:
                ready = notify.recv(4096)
            except TimeoutError:
                proc.kill()
                pytest.fail("no READY=1: " + (tmp_path / "daemon.log").read_text())
            assert b"READY=1" in ready.split(b"\n")
            assert os.path.ismount(mnt)
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                assert f.read().split(b"\0")[0] == b"@usrview"
            assert os.readlink(f"/proc/{proc.pid}/cwd") == "/"
            maps_at_ready = _mapped_files(proc.pid)
            # As switch-root: the store's and the journal socket's paths no longer lead there.
            moved = root / "var/lib/usrview-moved"
            os.rename(root / "var/lib/usrview", moved)
            journal_path.unlink()

            # exercise: walk, read, readlink, the alternatives link; "data" is not
            # read before it is tampered with below (with the kernel caching what
            # it read, the default at boot, a file changed after it was read is
            # served from the kernel's cache, its checked bytes: docs/view.md)
            seen = []
            for dirpath, dirnames, filenames in os.walk(mnt):
                for name in filenames:
                    path = Path(dirpath, name)
                    if path.is_symlink():
                        seen.append((name, os.readlink(path)))
                    elif name != "data":
                        seen.append((name, len(path.read_bytes())))
            assert ("ld", "/etc/alternatives/ld") in seen and ("sh-link", "life") in seen
            assert ("big", 2 << 20) in seen
            os.statvfs(mnt)
            assert os.getxattr(mnt / "bin/life", "user.rpm.package", follow_symlinks=False)
            assert "user.rpm.digest" in os.listxattr(mnt / "bin/life")
            assert os.access(mnt / "bin/life", os.X_OK)
            with pytest.raises(OSError) as e:
                (mnt / "bin/new").write_bytes(b"")
            assert e.value.errno == errno.EROFS
            assert not (mnt / "bin/editor").exists()  # a %ghost regular file stays out
            assert (mnt / "share/life/deep/er/file").read_bytes() == b"deep\n" * 5000
            # tamper: EIO, and a record on the journal socket connected before READY
            data = moved / "packages" / image.packages[0] / "usr/share/life/data"
            os.chmod(data, 0o644)
            data.write_bytes(b"evil data\n" * 100)
            with pytest.raises(OSError) as e:
                (mnt / "share/life/data").read_bytes()
            assert e.value.errno == errno.EIO
            record = journal.recv(65536)
            assert f"MESSAGE_ID={INTEGRITY_MESSAGE_ID}".encode() in record
            assert b"PATH=/usr/share/life/data" in record
            # SIGUSR2: what was answered so far, by kind, and what was hashed: two records
            proc.send_signal(signal.SIGUSR2)
            records = []
            while not any("files hashed" in r for r in records):  # after the tampered file's records
                records.append(journal.recv(65536).decode())
            answered = re.search(r"MESSAGE=requests: (.*)", records[-2])
            assert answered, records
            kinds = {k: int(v) for k, v in (kind.rsplit(" ", 1) for kind in answered.group(1).split(", "))}
            assert kinds["lookup"] > 0 and kinds["read"] > 0, kinds
            hashed = re.search(r"MESSAGE=files hashed: (\d+) \(\d+ in the event loop\), [\d.]+ MB", records[-1])
            assert hashed and int(hashed.group(1)) >= 5, records[-1]
            # SIGUSR1: a stack dump (faulthandler), no file opened for it
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            assert proc.poll() is None
            # the same maps (the compiled tree's shows the path it moved to)
            assert _mapped_files(proc.pid) == {m.replace(str(root / "var/lib/usrview") + "/", str(moved) + "/")
                                               for m in maps_at_ready}
            stop(proc, tmp_path / "daemon.log")
            assert b"STOPPING=1" in notify.recv(4096).split(b"\n")
        finally:
            kill(proc)
    log = (tmp_path / "daemon.log").read_text()
    assert not os.path.ismount(mnt)
    assert "Current thread" in log or "Thread 0x" in log  # the SIGUSR1 dump

    # The console: one line per wrong word, the fallback, on stderr and in the kernel log.
    console = kmsg.read_text()
    assert "<4>usrview: usrview.verify=bogus: not one of enforce, warn, off" in console
    assert f"booting image {image.id} instead of nope: no image 'nope'" in console
    assert "usrview.verify=bogus" in log
    # where the time to READY went: one console line, each stage timed
    ready = re.search(r"<5>usrview: ready [\d.]+ s after the kernel started \(process started [\d.]+, "
                      r"CPU [\d.]+ s\): (.*)",
                      console)
    assert ready, console
    stages = [part.rsplit(" ", 2)[0] for part in re.sub(r" \(generated code[^)]*\)", "", ready.group(1)).split(", ")]
    # the code its imports generate was read from the cache, not compiled again
    cached = re.search(r"serving modules \(generated code: (\d+) of (\d+) compiled ahead\)", ready.group(1))
    assert cached and int(cached.group(1)) > 150, ready.group(1)
    assert stages == ["interpreter and command line", "serving modules", "store and keys", "records and plan",
                      # no signature before READY: the root is no package's, the package's
                      # header is checked at its first use (above, after READY) and by the full check
                      "headers (0 signatures) and compiled tree", "prefetch record (0 files)",
                      "mount"], stages
    # The files opened, recorded at unmount beneath the store's directories
    # opened before READY (their path had moved): the next boot checks them ahead.
    record = (moved / "cache" / f"opened-{image.id}").read_text().splitlines()
    assert record[0] == "usrview-opened 1" and "bin/life" in record[1:], record

    # After READY: no import, no exec, no open by path; only opens of names
    # below the package directories opened before READY.
    lines = audit.read_text().splitlines()
    assert lines[0].startswith("# audit hook installed")
    modules = dict(line.split(" ", 3)[2:] for line in lines if line.startswith("# module "))
    lines = [line for line in lines[1:] if not line.startswith("# module ")]
    assert_in_the_initrd_runtime(modules, env)
    names = _store_names(moved)
    wrong = []
    for line in lines:
        event, _, args = line.partition(" ")
        if event == "open":
            path = ast.literal_eval(args)[0]  # the recorder's repr of (path, mode, flags)
            if isinstance(path, str) and not path.startswith("/") and (path in names or record_temp(path)):
                continue
        if event == "os.rename":  # the record of opened files, beneath the fds of tmp/ and cache/
            src, dst, src_fd, dst_fd = ast.literal_eval(args)
            if record_temp(src) and dst == f"opened-{image.id}" and src_fd >= 0 and dst_fd >= 0:
                continue
        wrong.append(line)
    assert wrong == [], "\n".join(wrong)

    # The store, back in place: the boot is recorded; boot-complete marks the image good.
    os.rename(moved, root / "var/lib/usrview")
    state = json.loads((root / "var/lib/usrview/boot.json").read_text())
    assert state["boot"]["image"] == image.id and state["boot"]["fallback"] is True
    assert state["events"][-1]["requested"] == "nope" and state["events"][-1]["booted"] == image.id
    r = usrview("boot-complete", "--store", root / "var/lib/usrview")
    assert r.stdout == f"image {image.id} is good (was on trial)\n"
    st = json.loads(usrview("status", "--store", root / "var/lib/usrview", "--json").stdout)
    assert st["images"][0]["boot"] == "good" and st["last_good"] == image.id
    assert st["last_fallback"]["requested"] == "nope"


#: What the other commands import and the initrd need not hold.
NOT_IN_THE_INITRD = ("usrview.verify", "usrview.remote", "usrview.store.importer", "httpx", "zstandard",
                     "sqlite3", "multiprocessing")


def assert_in_the_initrd_runtime(modules: dict[str, str], env: dict) -> None:
    """Every module the daemon imported until READY is a file the dracut module's
    usrview-runtime.py lists for the initrd; what only other commands need is not."""
    listing = subprocess.run([sys.executable, str(REPO / "systemd/dracut/90usrview/usrview-runtime.py")],
                             env=env, capture_output=True, text=True, check=True, cwd="/").stdout
    listed = {os.path.realpath(row.split("\t")[1]) for row in listing.splitlines()
              if row.startswith(("stdlib\t", "site\t"))}
    missing = sorted(f"{name} {path}" for name, path in modules.items() if os.path.realpath(path) not in listed)
    assert missing == [], "\n".join(missing)
    extra = sorted(name for name in modules if name.startswith(NOT_IN_THE_INITRD))
    assert extra == [], extra
    assert not [row for row in listing.splitlines() if "/_tests/" in row or "/httpx/" in row]


def _wait_for_console(kmsg: Path, line: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while line not in kmsg.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def test_initrd_mount_waits_for_the_sysroot(sysroot, tmp_path):
    """Started before the root file system is mounted (as the initrd's unit is), the
    daemon waits until SYSROOT is a mount point; started before the fuse module is
    loaded (the unit does not wait for systemd-modules-load.service), it waits for
    the FUSE device too; then serves."""
    root, _, image = sysroot
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/vda rw usrview.kernel_cache=off\n")
    kmsg = tmp_path / "kmsg"
    kmsg.touch()
    notify_path = tmp_path / "notify"
    device = tmp_path / "fuse-device"  # stands for /dev/fuse: the mount opens the real one
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = daemon_env(tmp_path, NOTIFY_SOCKET=str(notify_path), USRVIEW_KMSG=str(kmsg),
                         **{FUSE_DEVICE_ENV: str(device)})
        proc = initrd_mount(root, cmdline, env, tmp_path / "daemon.log", "--wait-for-sysroot")
        bound = False
        try:
            _wait_for_console(kmsg, "waiting for the root file system", proc, tmp_path / "daemon.log")
            time.sleep(0.5)
            assert proc.poll() is None and not os.path.ismount(root / "usr")
            subprocess.run(["mount", "--bind", str(root), str(root)], check=True)  # the root is mounted
            bound = True
            _wait_for_console(kmsg, f"waiting for {device}", proc, tmp_path / "daemon.log")
            time.sleep(0.3)
            assert proc.poll() is None and not os.path.ismount(root / "usr")
            device.touch()  # the module is loaded
            notify.settimeout(MOUNT_TIMEOUT)
            assert b"READY=1" in notify.recv(4096).split(b"\n"), (tmp_path / "daemon.log").read_text()
            assert (root / "usr/bin/life").read_bytes() == b"#!/bin/sh\necho life\n"
            # once the root is mounted the boot waits for the daemon: it serves at a higher priority
            with open(f"/proc/{proc.pid}/stat") as f:
                assert int(f.read().rpartition(")")[2].split()[16]) == SERVING_NICE
            console = kmsg.read_text()
            assert f"<5>usrview: serving image {image.id} on {root}/usr (verify=enforce, kernel cache off)" \
                in console
            assert re.search(r"waiting for \S+ [\d.]+ s, store and keys", console), console
            assert re.search(r"waiting for the FUSE device [\d.]+ s, mount", console), console
            stop(proc, tmp_path / "daemon.log")
        finally:
            kill(proc)
            unmount(root / "usr")
            if bound and subprocess.run(["umount", str(root)]).returncode:
                subprocess.run(["umount", "-l", str(root)], check=True)  # nothing left mounted, and
                raise AssertionError(f"{root} still busy after the daemon ended")  # a failure all the same


def _fds_on(pid: int, dev: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.stat(f"/proc/{pid}/fd/{fd}").st_dev == dev:
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


@contextlib.contextmanager
def journaled_daemon(root: Path, tmp_path: Path, words: str, *args: str):
    """initrd-mount on ROOT with the command line ``root=/dev/vda rw WORDS``, its console in
    tmp_path/kmsg and its journal records on a socket: (process, journal socket, kmsg path);
    the daemon killed at the end if still running."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"root=/dev/vda rw {words}".rstrip() + "\n")
    kmsg, journal_path = tmp_path / "kmsg", tmp_path / "journal"
    kmsg.touch()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(str(journal_path))
        journal.settimeout(MOUNT_TIMEOUT)
        env = daemon_env(tmp_path, USRVIEW_KMSG=str(kmsg), USRVIEW_JOURNAL_SOCKET=str(journal_path),
                         INVOCATION_ID="test")
        proc = initrd_mount(root, cmdline, env, tmp_path / "daemon.log", *args)
        try:
            yield proc, journal, kmsg
        finally:
            kill(proc)


def test_the_recorded_files_are_read_through_the_mount_before_anyone_asks(sysroot, tmp_path):
    """The last boot's record names four files: with --warm on, from the mount on, a thread of the
    daemon reads them through SYSROOT/usr (usrview.view.warm), in order, each read
    answered by the guard: the tampered one is refused (EIO, the integrity
    record) and stays refused; the others are served, read before the test reads
    anything; then the daemon holds no fd on the view.  The kernel may read 1 MiB
    ahead per READ of the view's files."""
    root, store, image = sysroot
    record = ["bin/life", "share/life/data", "share/life/big", "share/life/deep/er/file"]
    opened_record_path(store, image.id).parent.mkdir(mode=0o700, exist_ok=True)
    opened_record_path(store, image.id).write_bytes(format_record(record))
    data = store.package_dir(image.packages[0]) / "usr/share/life/data"
    os.chmod(data, 0o644)
    data.write_bytes(b"evil data\n" * 100)
    with journaled_daemon(root, tmp_path, "", "--warm", "on") as (proc, journal, kmsg):
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not (warm := re.search(r"<5>usrview: warm: (.*)", kmsg.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        assert re.fullmatch(r"3 recorded files \(2\.1 MB\) read through the mount in [\d.]+ s, 1 failed",
                            warm.group(1)), warm.group(1)
        assert "prefetch record (4 files)" in kmsg.read_text()
        # the kernel reads ahead up to 1 MiB per READ of the view's files (128 KiB by default)
        dev = os.stat(root / "usr").st_dev
        bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        assert bdi.read_text() == f"{READ_AHEAD_KIB}\n"
        integrity = journal.recv(65536)
        assert f"MESSAGE_ID={INTEGRITY_MESSAGE_ID}".encode() in integrity
        assert b"PATH=/usr/share/life/data" in integrity
        # the reads were the daemon's own, answered by the guard: the test read nothing yet
        proc.send_signal(signal.SIGUSR2)
        while not (answered := re.search(r"MESSAGE=requests: (.*)", journal.recv(65536).decode())):
            pass
        kinds = {k: int(v) for k, v in (kind.rsplit(" ", 1) for kind in answered.group(1).split(", "))}
        while not (dispatch := re.search(r"MESSAGE=dispatch: (.*)", journal.recv(65536).decode(errors="replace"))):
            pass
        # each READ answered by a handler, or in C from the fd the prefetch checked the file
        # from, if it got there first (c_reads, usrview.view.fs)
        c_reads = re.search(r"\bc_reads (\d+)", dispatch.group(1))
        reads = kinds.get("read", 0) + (int(c_reads.group(1)) if c_reads else 0)
        assert reads >= 3 and kinds["lookup"] >= 4, (kinds, dispatch.group(1))
        assert _fds_on(proc.pid, os.stat(root / "usr").st_dev) == []
        with pytest.raises(OSError) as e:
            (root / "usr/share/life/data").read_bytes()
        assert e.value.errno == errno.EIO
        assert (root / "usr/share/life/big").read_bytes() == bytes(range(256)) * 8192
        stop(proc, tmp_path / "daemon.log")


def test_usrview_profile_logs_where_the_serving_threads_cpu_goes(sysroot, tmp_path):
    """``usrview.profile`` on the kernel command line: SIGUSR2 logs, beside the requests, the
    serving thread's profile from READY on: the CPU counted, the top costs, every handler's calls."""
    root, _, _ = sysroot
    with journaled_daemon(root, tmp_path, "usrview.profile=1") as (proc, journal, kmsg):
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while "<5>usrview: ready " not in kmsg.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        assert "unknown word" not in kmsg.read_text()
        assert (root / "usr/bin/life").read_bytes() == b"#!/bin/sh\necho life\n"
        proc.send_signal(signal.SIGUSR2)
        messages = []
        while not any("MESSAGE=profile handlers: " in m for m in messages):
            messages.append(journal.recv(65536).decode(errors="replace"))
        text = "\n".join(messages)
        assert re.search(r"MESSAGE=profile: serving thread [\d.]+ s of CPU counted in \d+ functions", text)
        assert re.search(r"MESSAGE=profile own: [\d.]+ s \d+ calls ", text)
        assert re.search(r"MESSAGE=profile beneath: [\d.]+ s \d+ calls ", text)
        handlers = re.search(r"MESSAGE=profile handlers: (.*)", text).group(1)
        assert re.search(r"\blookup [1-9]\d* \(", handlers) and re.search(r"\bread [1-9]\d* \(", handlers)
        stop(proc, tmp_path / "daemon.log")


def _dispatch_line(proc, journal) -> str:
    proc.send_signal(signal.SIGUSR2)
    while not (line := re.search(r"MESSAGE=(dispatch: .*)", journal.recv(65536).decode(errors="replace"))):
        pass
    return line.group(1)


def test_the_boot_polls_longer_then_as_any_mount(sysroot, tmp_path):
    """While the booted system starts (--boot-spin seconds from the mount) the wait for a
    request polls up to BOOT_SPIN_US within a burst; then DISPATCH_SPIN_US, as usrview mount."""
    if "set_spin" not in getattr(pyfuse3, "DISPATCH_FEATURES", ()):
        pytest.skip("pyfuse3 without set_dispatch_spin (run .ci/setup)")
    root, _, _ = sysroot
    with journaled_daemon(root, tmp_path, "", "--boot-spin", "2") as (proc, journal, kmsg):
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while "<5>usrview: ready " not in kmsg.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        assert _dispatch_line(proc, journal).endswith(f", spin_us {BOOT_SPIN_US}")
        time.sleep(2.5)
        assert _dispatch_line(proc, journal).endswith(f", spin_us {DISPATCH_SPIN_US}")
        assert (root / "usr/bin/life").read_bytes() == b"#!/bin/sh\necho life\n"
        stop(proc, tmp_path / "daemon.log")


def test_tampered_compiled_tree_says_so_on_the_console(sysroot, tmp_path):
    """A compiled tree changed where no per-package check looks (a link count) but
    the full check does: the check's child, confined to the store's fd, still reads
    the headers after the store's path moved away (switch-root); its verdict is
    one console line, and every request answers EIO from then on.  The check starts
    ``usrview.full_check_delay`` seconds after the mount (30 by default at boot), and
    not before: the path moves away before the child reads anything."""
    root, store, image = sysroot
    tree_file = store.root / "images" / f"{image.id}.tree"
    data = bytearray(tree_file.read_bytes())
    entries_off = HEAD.unpack_from(data, 0)[6]
    nlink_at = entries_off + 32  # the root entry's link count (ENTRY: ..., first, children, nlink, mtime)
    data[nlink_at] ^= 0x40
    tree_file.write_bytes(bytes(data))
    cmdline = tmp_path / "cmdline"
    delay = 3.0
    cmdline.write_text(f"root=/dev/vda rw usrview.kernel_cache=off usrview.full_check_delay={delay:g}\n")
    kmsg = tmp_path / "kmsg"
    kmsg.touch()
    notify_path = tmp_path / "notify"
    moved = root / "var/lib/usrview-moved"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(MOUNT_TIMEOUT)
        env = daemon_env(tmp_path, NOTIFY_SOCKET=str(notify_path), USRVIEW_KMSG=str(kmsg))
        proc = initrd_mount(root, cmdline, env, tmp_path / "daemon.log")
        try:
            assert b"READY=1" in notify.recv(4096).split(b"\n"), (tmp_path / "daemon.log").read_text()
            ready = time.monotonic()
            os.rename(store.root, moved)  # as switch-root: the store's path leads nowhere
            deadline = ready + delay + MOUNT_TIMEOUT
            while "full check of the compiled tree" not in kmsg.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, kmsg.read_text()
                time.sleep(0.1)
            assert time.monotonic() - ready >= delay - 0.5, "the full check did not wait"  # forked before READY
            line = next(x for x in kmsg.read_text().splitlines() if "full check" in x)
            assert line.startswith(f"<3>usrview: image {image.id}: the full check of the compiled tree: differs "
                                   "from what the headers compile to at byte"), line
            assert line.endswith(f"every file of {root}/usr answers EIO from now on"), line
            with pytest.raises(OSError) as e:
                (root / "usr/share/life/deep/er/file").read_bytes()
            assert e.value.errno == errno.EIO
            stop(proc, tmp_path / "daemon.log")
        finally:
            kill(proc)
            if moved.exists():
                os.rename(moved, store.root)


def test_nothing_to_serve_exits_2_with_one_line(tmp_path, gpg_key):
    root = tmp_path / "sysroot"
    (root / "usr").mkdir(parents=True)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("usrview.store=/srv/store\n")
    kmsg = tmp_path / "kmsg"
    kmsg.touch()
    proc = subprocess.run([sys.executable, "-m", "usrview.cli", "initrd-mount", "--sysroot", str(root),
                           "--cmdline", str(cmdline)], capture_output=True, text=True, cwd=REPO,
                          env=daemon_env(tmp_path, USRVIEW_KMSG=str(kmsg)), timeout=MOUNT_TIMEOUT,
                          check=False)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"usrview: usrview.store=/srv/store: no store at {root}/srv/store")
    assert lines[0].endswith("trying /var/lib/usrview")
    assert lines[1] == f"usrview: no store at {root}/var/lib/usrview (import or deploy a package to create " \
                       "one); nothing to serve"
    assert kmsg.read_text().splitlines() == ["<4>" + lines[0], "<3>" + lines[1]]
