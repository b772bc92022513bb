"""A store tampered with while the view is not running (issue 15): each way that once got
past the view or ``usrview verify`` is reported or refused here.

The stores are real: packages built by rpmbuild, signed by the test key, deployed by
the importer into btrfs on a loop device (package subvolumes read-only, as deploy
makes them) or into a plain directory.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.prereq import require_privileged, require_tools
from tests.rpmbuild import FileSpec
from tests.test_verify import MAIN_FILES, OTHER_FILES, World, _writable
from tests.test_view_lifecycle import mountpoint, start, store  # noqa: F401 -- fixtures
from usrview import images
from usrview.errors import OperationalError
from usrview.store.importer import import_package
from usrview.view.fs import kernel_cache_features
from usrview.view.loader import load_headers
from verifier.header import read_package
from verifier.headerfile import header_file_error


@pytest.fixture
def bworld(btrfs_dir, rpm_packages, gpg_key):
    require_privileged("owners and modes as rpm -i makes them")
    require_tools("rpm", "btrfs")
    return World(btrfs_dir, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)


def _lines(report) -> list[str]:
    return [f.line for f in report.findings]


# -- 1. a directory of the tree replaced by a symlink ---------------------------------

def _dir_to_symlink(pkgdir: Path, relpath: str, copy: Path) -> None:
    """Move the directory ``relpath`` of a package out to ``copy`` and leave a root-owned
    symlink to it in its place (what rpm -V accepts as the directory)."""
    shutil.copytree(pkgdir / relpath, copy, symlinks=True)
    shutil.rmtree(pkgdir / relpath)
    os.symlink(copy, pkgdir / relpath)


SYMLINKED = [
    "notdir      /usr/bin",
    "missing     /usr/bin/tool (Not a directory)",
    "....L....    /usr/share/tool",
    "notdir      /usr/share/tool",
    "missing     /usr/share/tool/data (Not a directory)",
    "missing     /usr/share/tool/small (Not a directory)",
]


def test_directory_replaced_by_symlink_is_reported_and_caches_hide_nothing(bworld, tmp_path):
    """The issue's scenario: usr/share/tool (listed) and usr/bin (an unlisted parent)
    replaced by root-owned symlinks to copies outside the package.  Before: verify and
    verify --full exited 0 with no output, then saw at most a changed byte behind the
    symlink (--full), nothing incremental (the package cache)."""
    assert bworld.verify().findings == []   # fills both caches
    d = bworld.pkgdir("tool")
    elsewhere = bworld.store.root.parent / "elsewhere"
    elsewhere.mkdir()
    _writable(d)
    _dir_to_symlink(d, "usr/share/tool", elsewhere / "share-tool")
    _dir_to_symlink(d, "usr/bin", elsewhere / "bin")
    _writable(d, False)
    for report in (bworld.verify(), bworld.verify(full=True), bworld.verify(jobs=1)):
        assert sorted(_lines(report)) == sorted(SYMLINKED)
        assert report.exit_code == 1
    assert {f.kind for f in bworld.verify().findings} == {"notdir", "missing", "file"}
    # behind the symlinks: a changed file and a new one.  Still exactly the symlinks (nothing
    # behind them is looked at), also when the package's row is taken from the cache.
    (elsewhere / "share-tool" / "small").write_bytes(b"SMALL\n")
    (elsewhere / "share-tool" / "new").write_bytes(b"new\n")
    (elsewhere / "bin" / "backdoor").write_bytes(b"new\n")
    for report in (bworld.verify(), bworld.verify(full=True)):
        assert sorted(_lines(report)) == sorted(SYMLINKED)


def test_symlinked_directory_in_a_plain_store(tmp_path, rpm_packages, gpg_key):
    """The same on a plain directory store (the file cache alone)."""
    require_privileged("owners and modes as rpm -i makes them")
    require_tools("rpm")
    world = World(tmp_path, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)
    assert world.verify().findings == []
    d = world.pkgdir("tool")
    _dir_to_symlink(d, "usr/share/tool", tmp_path / "share-tool")
    _dir_to_symlink(d, "usr/bin", tmp_path / "bin")
    (tmp_path / "share-tool" / "small").write_bytes(b"SMALL\n")
    for report in (world.verify(), world.verify(full=True)):
        assert sorted(_lines(report)) == sorted(SYMLINKED)


# -- 2. header files carrying unsigned bytes -------------------------------------------

def _other_payload(rpm_packages) -> bytes:
    other = rpm_packages("intruder", "1.0", "1", [FileSpec("/usr/bin/intruder", content=b"evil\n", mode=0o755)])
    data = other.read_bytes()
    return data[read_package(data).payload_offset:]


def _lead_renamed(data: bytes) -> bytes:
    return data[:10] + b"evil-1.0-1".ljust(66, b"\0") + data[76:]


@pytest.mark.parametrize("tamper", ["appended", "lead"])
def test_header_file_with_unsigned_bytes_is_refused(tmp_path, rpm_packages, gpg_key, tamper):
    """A header file in the store with another package's payload appended, or with its lead
    renamed: the loader refuses the mount, verify reports the header and checks none of its
    files.  Before: the mount served the file, verify exited 0."""
    require_privileged("owners and modes as rpm -i makes them")
    require_tools("rpm")
    world = World(tmp_path, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)
    pkgid = world.pkgids["tool"]
    hpath = world.store.header_path(pkgid)
    data = hpath.read_bytes()
    hpath.write_bytes(data + _other_payload(rpm_packages) if tamper == "appended" else _lead_renamed(data))
    with pytest.raises(OperationalError, match="header file: " + (
            r"\d+ byte\(s\) after the header" if tamper == "appended" else "the lead does not match")):
        load_headers(world.store, world.image, world.keyring)
    report = world.verify()
    assert [(f.kind, f.package) for f in report.findings] == [("header", pkgid)]
    assert "header file: " in report.findings[0].line and report.exit_code == 1
    assert header_file_error(read_package(data)) is None   # the importer wrote it canonical


def _rpmkeys_ok(db: Path, path: Path) -> bool:
    r = subprocess.run(["rpmkeys", "--dbpath", str(db), "--checksig", str(path)], capture_output=True,
                       text=True, timeout=120)
    return r.returncode == 0


def test_checksig_agrees_with_rpmkeys_on_unsigned_bytes(tmp_path, rpm_packages, gpg_key):
    """rpmkeys --checksig as the oracle beside ``usrview checksig``: a package whose payload was
    swapped, a header file with a payload appended (what a tampered store served) and bytes
    after a whole package are NOT OK to rpmkeys and not GOOD to us; an untouched package and
    one whose lead alone was renamed (rpm ignores the lead) are OK to both.  Before: GOOD for
    the swapped and the appended payload."""
    require_tools("rpmkeys")
    db = tmp_path / "rpmdb"
    subprocess.run(["rpmkeys", "--dbpath", str(db), "--import", str(gpg_key.public_path)], check=True,
                   timeout=120, capture_output=True)
    good = rpm_packages("tool", "1.0", "1", MAIN_FILES)
    data = good.read_bytes()
    pkg = read_package(data)
    intruder = _other_payload(rpm_packages)
    cases = {"good": data, "swapped-payload": data[:pkg.payload_offset] + intruder,
             "header-appended": pkg.header_only() + intruder, "trailing": data + b"\0" * 64,
             "lead-renamed": _lead_renamed(data)}
    for name, content in cases.items():
        path = tmp_path / f"{name}.rpm"
        path.write_bytes(content)
        r = subprocess.run([sys.executable, "-m", "usrview.cli", "checksig", "--json", "--keys",
                            str(gpg_key.public_path), str(path)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "USRVIEW_CONFIG": "/dev/null"})
        ours = json.loads(r.stdout)["verdict"]
        assert (ours == "GOOD") == _rpmkeys_ok(db, path), (name, ours, r.stdout)
        assert r.returncode == (0 if ours == "GOOD" else 1), name


# -- 3. the image record ------------------------------------------------------------------

def _edit_record(store, image, packages) -> None:
    """The current record rewritten in place (same name, same unsigned list)."""
    path = images.image_path(store, image.id)
    data = json.loads(path.read_bytes())
    data["packages"] = sorted(packages)
    path.write_text(json.dumps(data))


def test_the_mount_honours_the_image_record(tmp_path, rpm_packages, gpg_key, expect_logs):
    """The issue's attack: a set-uid unsigned package imported with --allow-unsigned, its id
    then added in place to the current record (which still lists it as signed).  The loader
    refuses: the record's id no longer matches; and with a consistent id, the record does
    not list the package as unsigned.  A record edited to drop a package is refused too.
    Before: served with one WARNING (and the dropped package silently)."""
    require_privileged("set-uid files as rpm -i makes them")
    require_tools("rpm")
    world = World(tmp_path, [rpm_packages("tool", "1.0", "1", MAIN_FILES),
                             rpm_packages("other", "2.0", "1", OTHER_FILES)], gpg_key)
    store, image = world.store, world.image
    suid = rpm_packages("suid", "1.0", "1", [FileSpec("/usr/bin/suid", content=b"#!/bin/sh\nid\n",
                                                      mode=0o4755)], signed=False)
    pkgid = import_package(store, suid, world.keyring, allow_unsigned=True).pkgid
    assert store.unsigned_path(pkgid).exists()
    _edit_record(store, image, [*image.packages, pkgid])
    edited = images.resolve(store, images.CURRENT)
    with pytest.raises(OperationalError, match="record was changed: package list does not match"):
        load_headers(store, edited, world.keyring)
    consistent = images.Image(images.make_image_id([*image.packages, pkgid], datetime.now(UTC)),
                              image.created, tuple(sorted([*image.packages, pkgid])), ())
    with pytest.raises(OperationalError, match=f"{pkgid}: UNSIGNED"):
        load_headers(store, consistent, world.keyring)
    opted_in = dataclasses.replace(consistent, unsigned=(pkgid,))
    with expect_logs("serves UNSIGNED packages"):
        assert load_headers(store, opted_in, world.keyring).unsigned == [pkgid]   # deploy's opt-in
    _edit_record(store, image, [p for p in image.packages if p != world.pkgids["other"]])
    with pytest.raises(OperationalError, match="record was changed"):
        load_headers(store, images.resolve(store, images.CURRENT), world.keyring)
    assert any(f.kind == "image" for f in world.verify().findings)


# -- 4. inputs that hang or exhaust -------------------------------------------------------

#: Seconds a command may take on a hostile store file before it counts as hung.
HANG_TIMEOUT = 60


def _usrview(*args: str, timeout: float = HANG_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usrview.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "USRVIEW_CONFIG": "/dev/null", "NOTIFY_SOCKET": ""})


def _plant(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)


def _one_line_error(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("usrview: error:")]
    assert len(lines) == 1, r.stderr


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
@pytest.mark.parametrize("which", ["record", "header"])
def test_hostile_store_files_never_hang(tmp_path, rpm_packages, gpg_key, kind, which):
    """An image record or a header file replaced by a FIFO or a symlink to /dev/zero: mount,
    verify, status and monitor --once answer within the timeout with one line, no
    traceback.  Before: each hung on the FIFO (and read /dev/zero without a cap)."""
    require_privileged("mount and owners as rpm -i makes them")
    require_tools("rpm", "fusermount3")
    world = World(tmp_path, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)
    store, key = str(world.store.root), str(gpg_key.public_path)
    target = (images.image_path(world.store, world.image.id) if which == "record"
              else world.store.header_path(world.pkgids["tool"]))
    _plant(target, kind)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = _usrview("mount", "--store", store, "--keys", key, str(mnt))
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], timeout=30)
    assert r.returncode == 2, r.stderr
    _one_line_error(r)
    r = _usrview("verify", "--store", store, "--keys", key)
    assert "Traceback" not in r.stderr
    if which == "record":
        assert r.returncode == 1 and r.stdout.startswith("image "), r.stdout + r.stderr
    else:   # a header file that is no regular file is no stored package: a finding, as before
        assert r.returncode == 1 and "which is not in the store" in r.stdout, r.stdout + r.stderr
    r = _usrview("status", "--store", store)
    assert "Traceback" not in r.stderr
    if which == "record":
        assert r.returncode == 2, r.stdout + r.stderr
        _one_line_error(r)
    r = _usrview("monitor", "--once", "--store", store, "--keys", key)
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr, r.stderr


def test_monitor_answers_sigterm_during_a_stuck_run(tmp_path, rpm_packages, gpg_key):
    """A run stuck on I/O (here: verify.run blocked reading a pipe nobody writes): the metrics
    say a run is in progress since its start (stale, not the last clean status), and SIGTERM
    ends the monitor at once.  Before: SIGTERM only set a flag looked at between runs."""
    require_privileged("owners as rpm -i makes them")
    require_tools("rpm")
    world = World(tmp_path, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)
    metrics = tmp_path / "metrics.prom"
    script = f"""
import os, sys
from usrview import verify
from usrview.cli.main import main
r, w = os.pipe()
verify.run = lambda *a, **k: os.read(r, 1)   # stuck on I/O
sys.exit(main(["monitor", "--store", {str(world.store.root)!r}, "--keys", {str(gpg_key.public_path)!r},
               "--metrics-file", {str(metrics)!r}, "--interval", "1s"]))
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "USRVIEW_CONFIG": "/dev/null"})
    try:
        deadline = time.monotonic() + HANG_TIMEOUT
        while not (metrics.exists() and "usrview_verify_run_in_progress 1" in metrics.read_text()):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate(timeout=5)
            time.sleep(0.1)
        text = metrics.read_text()
        started = float(re.search(r"^usrview_verify_run_started_timestamp_seconds (\S+)$", text, re.M).group(1))
        assert 0 < time.time() - started < HANG_TIMEOUT
        assert "usrview_verify_last_run_status" not in text   # no run finished: no status to show
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        assert p.returncode == 0 and "Traceback" not in err, err
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


# -- 5. while the view runs (outside the threat model: today's behaviour, written down) ---

@pytest.mark.parametrize("kernel_cache", ["auto", "off"])
def test_backing_file_changed_while_served(store, gpg_key, mountpoint, tmp_path, kernel_cache):
    """docs/trust-chain.md, "While the view runs": a backing file changed in place after its
    first verified read.  With --kernel-cache auto (the default) every READ that reaches the
    daemon checks the backing file's identity, so once the kernel's cached pages are gone a
    file descriptor opened before the change gets EIO, as does a new one.  With off, a file
    descriptor opened before is served the changed bytes through its own backing fd, and
    only a new open is refused.  Should either change, this test says so."""
    if kernel_cache == "auto" and "no_open" not in kernel_cache_features("auto"):
        pytest.skip("the installed pyfuse3 has no kernel caching (.ci/pyfuse3-kernel-cache.patch)")
    mnt, daemons = mountpoint
    start(store, gpg_key, mnt, daemons, tmp_path / "mount.log", "--kernel-cache", kernel_cache)
    served = mnt / "share/life/data"
    backing = store.package_dir(next(p for p in store.pkgids() if p.startswith("life-"))) / "usr/share/life/data"
    original = b"life data\n" * 100
    fd = os.open(served, os.O_RDONLY)
    try:
        assert os.pread(fd, len(original), 0) == original
        mapped = mmap.mmap(fd, len(original), prot=mmap.PROT_READ) if kernel_cache == "off" else None
        with open(backing, "r+b") as f:   # same size, in place
            f.write(b"EVIL")
        if mapped is not None:
            mapped.madvise(mmap.MADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # the kernel's cached pages evicted
        if kernel_cache == "auto":
            with pytest.raises(OSError) as e:    # the open fd: the READ checks again, refused
                os.pread(fd, 4, 0)
            assert e.value.errno == errno.EIO
            fd2 = os.open(served, os.O_RDONLY)  # no OPEN reaches the daemon: refused at the read
            try:
                with pytest.raises(OSError) as e:
                    os.pread(fd2, 4, 0)
                assert e.value.errno == errno.EIO
            finally:
                os.close(fd2)
        else:
            assert os.pread(fd, 4, 0) == b"EVIL"     # the open fd: served changed
            assert mapped[:4] == b"EVIL"             # the existing mapping: served changed
            mapped.close()
            with pytest.raises(OSError) as e:        # a new open: checked again, refused
                os.open(served, os.O_RDONLY)
            assert e.value.errno == errno.EIO
    finally:
        os.close(fd)
