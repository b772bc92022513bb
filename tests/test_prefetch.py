"""Cold starts (usrview.view.prefetch): the files a mount opened are recorded, and
checked ahead at the next mount -- which never makes a bad file good.

In-process with pytest-trio (the guard's counters say what was hashed where),
and real mounts of ``usrview mount --foreground`` for the record's life across
mounts and a clean unmount while checking ahead."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pyfuse3
import pytest
import trio

from tests.prereq import require
from tests.rpmbuild import FileSpec
from tests.test_mount import MOUNT_TIMEOUT, running_view
from tests.viewstore import deploy_store
from usrview.cli._common import load_keyring
from usrview.view import prefetch as prefetch_module
from usrview.view.guard import Guard
from usrview.view.loader import build_view
from usrview.view.prefetch import (
    RECORD_HEADER,
    RECORD_MAX_PATHS,
    Prefetch,
    RecordError,
    format_record,
    load_record,
    opened_record_path,
    parse_record,
    remove_stale_records,
)

BIG = bytes(range(253)) * 16384  # 4 MB: several reads, so a stop lands between them
FILES = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/tool", content=b"#!/bin/sh\necho tool\n", mode=0o755),
    FileSpec("/usr/lib/p/big", content=BIG),
    FileSpec("/usr/lib/p/link", kind="symlink", target="big"),
] + [FileSpec(f"/usr/share/p/f{i:02d}", content=b"file %d\n" % i) for i in range(20)]
READ = ["bin/tool", "share/p/f03", "lib/p/big", "share/p/f01"]


@pytest.fixture
def deployed(rpm_packages, gpg_key, tmp_path):
    rpm = rpm_packages("pf", files=FILES)
    return deploy_store(tmp_path / "store", [rpm], gpg_key)


def view_of(deployed, gpg_key):
    store, image = deployed
    _, tree = build_view(store, image, load_keyring([gpg_key.public_path]))
    return store, image, tree


def tamper(store, image, rel: str) -> None:
    path = store.package_dir(image.packages[0]) / "usr" / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


# -- the record ----------------------------------------------------------------

def test_record_round_trip_and_bounds():
    paths = ["bin/ls", "lib/x86_64-linux-gnu/libc.so.6", "share/a b/ü"]
    assert parse_record(format_record(paths)) == paths
    assert format_record([]) == f"{RECORD_HEADER}\n".encode()
    many = [f"f{i}" for i in range(RECORD_MAX_PATHS + 10)]
    assert parse_record(format_record(many)) == many[:RECORD_MAX_PATHS]


@pytest.mark.parametrize("data, why", [
    (b"", "first line"),
    (b"usrview-opened 2\nbin/ls\n", "first line"),
    (f"{RECORD_HEADER}\nbin/ls".encode(), "newline"),
    (f"{RECORD_HEADER}\n../../etc/shadow\n".encode(), "not a view path"),
    (f"{RECORD_HEADER}\n/etc/shadow\n".encode(), "not a view path"),
    (f"{RECORD_HEADER}\nbin//ls\n".encode(), "not a view path"),
    (f"{RECORD_HEADER}\nbin/\0ls\n".encode(), "not a view path"),
    (f"{RECORD_HEADER}\nbin/\xff\n".encode("latin-1"), "UTF-8"),
    (("\n".join([RECORD_HEADER] + ["x"] * (RECORD_MAX_PATHS + 1)) + "\n").encode(), "at most"),
])
def test_a_record_that_is_not_one_is_refused(data, why):
    with pytest.raises(RecordError, match=why):
        parse_record(data)


@pytest.mark.parametrize("make", ["garbage", "symlink", "fifo", "huge"])
def test_a_hostile_record_is_ignored_with_a_warning(deployed, make, expect_logs, tmp_path):
    store, image = deployed
    path = opened_record_path(store, image.id)
    path.parent.mkdir(exist_ok=True)
    if make == "garbage":
        path.write_bytes(b"\x00\xffnot a record\n")
    elif make == "symlink":
        (tmp_path / "elsewhere").write_bytes(format_record(["bin/tool"]))
        path.symlink_to(tmp_path / "elsewhere")
    elif make == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.truncate(prefetch_module.RECORD_MAX_BYTES + 1)
    with expect_logs("ignoring the record of opened files", level=logging.WARNING):
        assert load_record(store, image.id) == []


def test_no_record_is_no_warning(deployed):
    store, image = deployed
    assert load_record(store, image.id) == []


def test_the_records_of_deleted_images_are_removed(deployed):
    store, image = deployed
    remove_stale_records(store)  # no cache/ yet: nothing to do
    for image_id in (image.id, "20200101-000000-0123456789ab"):
        opened_record_path(store, image_id).parent.mkdir(exist_ok=True)
        store.write_file(opened_record_path(store, image_id), format_record(["bin/tool"]))
    store.write_file(store.cache_path("verify.sqlite"), b"")
    remove_stale_records(store)
    assert sorted(p.name for p in store.cache_path("").iterdir()) == [f"opened-{image.id}", "verify.sqlite"]


# -- in process: what is hashed where ----------------------------------------------

async def _open_all(guard, tree, paths):
    out = {}
    for p in paths:
        try:
            fd = await guard.open(tree.resolve(p))
        except OSError as e:
            out[p] = e.errno
        else:
            os.close(fd)
            out[p] = "ok"
    return out


async def check_ahead(prefetch: Prefetch) -> None:
    """Run ``prefetch`` until its threads are done and their hand-overs ran in the event loop."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetch.run)
        with trio.fail_after(30):
            while not prefetch.done.is_set():
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_opens_are_recorded_and_saved_in_order(deployed, gpg_key):
    store, image, tree = view_of(deployed, gpg_key)
    guard = Guard(tree)
    prefetch = Prefetch(tree, guard, store, image.id, ["share/p/f10", "bin/tool"])
    try:
        assert await _open_all(guard, tree, READ + ["bin/tool"]) == dict.fromkeys(READ, "ok")
        prefetch.save()
    finally:
        guard.close()
    # this mount's opens first (each once), then the previous record's others
    assert load_record(store, image.id) == READ + ["share/p/f10"]


async def test_recorded_files_are_checked_before_their_first_open(deployed, gpg_key):
    store, image, tree = view_of(deployed, gpg_key)
    guard = Guard(tree)
    # a record naming a directory, a symlink and a path the image lacks: left out
    prefetch = Prefetch(tree, guard, store, image.id, READ + ["share/p", "lib/p/link", "no/such"])
    try:
        await check_ahead(prefetch)
        assert (prefetch.ahead, prefetch.refused, prefetch.skipped) == (4, 0, 3)
        assert await _open_all(guard, tree, READ) == dict.fromkeys(READ, "ok")
        assert guard.hashed == 0  # every first open found its file checked
        assert await _open_all(guard, tree, ["share/p/f07"]) == {"share/p/f07": "ok"}
        assert guard.hashed == 1  # one not recorded is hashed at its open
    finally:
        guard.close()


async def test_read_ahead_waits_while_the_record_is_checked(deployed, gpg_key, monkeypatch):
    # The guard's read-ahead (a guess from inode order) reads nothing while the
    # record (what this mount will open) is being checked ahead; after, it does.
    store, image, tree = view_of(deployed, gpg_key)
    monkeypatch.setattr(prefetch_module, "THREADS", 1)
    guard = Guard(tree)
    hold = threading.Event()
    real_hash = Prefetch._hash

    def held_hash(self, *args):
        hold.wait(30)
        return real_hash(self, *args)

    monkeypatch.setattr(Prefetch, "_hash", held_hash)
    prefetch = Prefetch(tree, guard, store, image.id, ["share/p/f10"])
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prefetch.run)
            with trio.fail_after(30):
                while not guard.read_ahead_paused:
                    await trio.sleep(0.01)
            assert await _open_all(guard, tree, ["share/p/f01"]) == {"share/p/f01": "ok"}
            assert guard.read_ahead == 0  # the files after f01 were not read ahead
            hold.set()
            with trio.fail_after(30):
                while not prefetch.done.is_set():
                    await trio.sleep(0.01)
            assert not guard.read_ahead_paused
            assert await _open_all(guard, tree, ["share/p/f03"]) == {"share/p/f03": "ok"}
            assert guard.read_ahead > 0  # once checked, opens read ahead again
            nursery.cancel_scope.cancel()
    finally:
        hold.set()
        guard.close()


async def test_the_threads_checking_ahead_run_only_when_nothing_else_wants_the_cpu(deployed, gpg_key, monkeypatch):
    # SCHED_IDLE (and nice 19): under a booting system's load nice 19 alone still took
    # time from PID 1 (docs/boot.md); the event loop's own thread keeps its policy.
    store, image, tree = view_of(deployed, gpg_key)
    seen = []
    real_hash = Prefetch._hash

    def noting_hash(self, *args):
        seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real_hash(self, *args)

    monkeypatch.setattr(Prefetch, "_hash", noting_hash)
    guard = Guard(tree)
    prefetch = Prefetch(tree, guard, store, image.id, READ)
    try:
        await check_ahead(prefetch)
        assert prefetch.ahead == len(READ)
    finally:
        guard.close()
    assert seen and set(seen) == {(os.SCHED_IDLE, prefetch_module.NICE)}, seen
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


async def test_checking_ahead_never_makes_a_bad_file_good(deployed, gpg_key, expect_logs):
    store, image, tree = view_of(deployed, gpg_key)
    tamper(store, image, "lib/p/big")
    tamper(store, image, "share/p/f03")
    guard = Guard(tree)
    prefetch = Prefetch(tree, guard, store, image.id, READ)
    try:
        await check_ahead(prefetch)
        assert (prefetch.ahead, prefetch.refused) == (2, 2)
        with expect_logs("integrity violation", level=logging.ERROR, count=2):
            got = await _open_all(guard, tree, READ)
        assert got == {"bin/tool": "ok", "share/p/f03": errno.EIO, "lib/p/big": errno.EIO, "share/p/f01": "ok"}
        assert guard.hashed == 2  # the bad ones, hashed again at their open and refused
    finally:
        guard.close()


async def test_a_file_changed_after_it_was_checked_ahead_is_hashed_again(deployed, gpg_key, expect_logs):
    store, image, tree = view_of(deployed, gpg_key)
    guard = Guard(tree)
    prefetch = Prefetch(tree, guard, store, image.id, ["share/p/f03"])
    try:
        await check_ahead(prefetch)
        assert prefetch.ahead == 1
        tamper(store, image, "share/p/f03")
        with expect_logs("integrity violation", level=logging.ERROR):
            assert await _open_all(guard, tree, ["share/p/f03"]) == {"share/p/f03": errno.EIO}
    finally:
        guard.close()


async def test_stop_while_checking_ahead_ends_the_threads(deployed, gpg_key, monkeypatch):
    store, image, tree = view_of(deployed, gpg_key)
    monkeypatch.setattr(prefetch_module, "THREADS", 1)
    guard = Guard(tree)
    prefetch = Prefetch(tree, guard, store, image.id, ["lib/p/big"] * 2000)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prefetch.run)
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert prefetch.done.is_set()
        assert not prefetch._threads
        assert not [t for t in __import__("threading").enumerate() if t.name.startswith("usrview-prefetch")]
    finally:
        guard.close()


# -- real mounts -------------------------------------------------------------------

@contextmanager
def mounted(store, gpg_key, mountpoint: Path, log_path: Path, *args: str):
    """``usrview -v mount --foreground`` running; ended by SIGTERM (a clean unmount, status 0)."""
    mountpoint.mkdir(exist_ok=True)
    with running_view(store, gpg_key.public_path, mountpoint, log_path, *args) as proc:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=MOUNT_TIMEOUT) == 0, log_path.read_text()


def _wait_for(log_path: Path, text: str) -> str:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while text not in (log := log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{log}"
        time.sleep(0.02)
    return log


def test_a_mount_records_and_the_next_checks_ahead(deployed, gpg_key, tmp_path):
    store, image = deployed
    mnt, log1, log2, log3 = tmp_path / "mnt", tmp_path / "1.log", tmp_path / "2.log", tmp_path / "3.log"
    with mounted(store, gpg_key, mnt, log1):
        for p in READ:
            (mnt / p).read_bytes()
    assert load_record(store, image.id) == READ
    assert "prefetch: on: 0 files recorded by the last mount" in log1.read_text()
    with mounted(store, gpg_key, mnt, log2):
        _wait_for(log2, "prefetch: 4 recorded files checked ahead, 0 differed")
        for p in READ:
            (mnt / p).read_bytes()
    assert "prefetch: on: 4 files recorded by the last mount" in log2.read_text()
    assert "files hashed: 0 " in log2.read_text()  # every first read found its file checked
    with mounted(store, gpg_key, mnt, log3, "--prefetch", "off"):
        for p in READ:
            (mnt / p).read_bytes()
    assert "prefetch: off (--prefetch off)" in log3.read_text()
    assert "files hashed: 4 " in log3.read_text()


def test_a_tampered_recorded_file_is_refused_at_its_read(deployed, gpg_key, tmp_path):
    store, image = deployed
    store.cache_path("x").parent.mkdir(exist_ok=True)
    store.write_file(opened_record_path(store, image.id), format_record(READ))
    tamper(store, image, "lib/p/big")
    mnt, log = tmp_path / "mnt", tmp_path / "mount.log"
    with mounted(store, gpg_key, mnt, log):
        _wait_for(log, "prefetch: 3 recorded files checked ahead, 1 differed")
        with pytest.raises(OSError) as e:
            (mnt / "lib/p/big").read_bytes()
        assert e.value.errno == errno.EIO
        assert (mnt / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert "integrity violation: /usr/lib/p/big of pf-" in log.read_text()


def test_a_hostile_record_does_not_stop_the_mount(deployed, gpg_key, tmp_path):
    store, image = deployed
    store.cache_path("x").parent.mkdir(exist_ok=True)
    opened_record_path(store, image.id).write_bytes(b"usrview-opened 1\n../../../etc/shadow\n")
    mnt, log = tmp_path / "mnt", tmp_path / "mount.log"
    with mounted(store, gpg_key, mnt, log):
        assert (mnt / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    text = log.read_text()
    assert "WARNING" in text and "ignoring the record of opened files" in text and "not a view path" in text
    assert load_record(store, image.id) == ["bin/tool"]  # replaced by this mount's


def test_unmount_while_checking_ahead_is_clean(deployed, gpg_key, tmp_path):
    store, image = deployed
    store.cache_path("x").parent.mkdir(exist_ok=True)
    store.write_file(opened_record_path(store, image.id), format_record(["lib/p/big"] * 4000))
    mnt, log = tmp_path / "mnt", tmp_path / "mount.log"
    with mounted(store, gpg_key, mnt, log):
        pass  # SIGTERM at once, while the threads check ahead
    assert not os.path.ismount(mnt)
    text = log.read_text()
    assert "prefetch: " in text and "Traceback" not in text
    assert load_record(store, image.id) == ["lib/p/big"] * 4000  # nothing opened: the record stays


def _counts(log: str, prefix: str) -> dict[str, int]:
    """The last ``requests: read 3, lookup 5`` (or ``dispatch: ...``) line of a mount's log, as a dict."""
    line = [ln for ln in log.splitlines() if f"{prefix}: " in ln][-1].split(f"{prefix}: ", 1)[1]
    return {k: int(v) for k, v in (item.rsplit(" ", 1) for item in line.split(", ")) if v.isdigit()}


def test_files_checked_ahead_are_read_in_c_and_still_recorded(deployed, gpg_key, tmp_path):
    """The fds the prefetch hashed are kept: their READs (the first one too) are answered
    in C, byte for byte, and the record written at the unmount still lists them, in the
    order they were first read."""
    require("c_read" in getattr(pyfuse3, "DISPATCH_FEATURES", ()), "pyfuse3 without c_read (run .ci/setup)")
    store, image = deployed
    store.cache_path("x").parent.mkdir(exist_ok=True)
    recorded = ["share/p/f10", *READ, "share/p/f11"]
    store.write_file(opened_record_path(store, image.id), format_record(recorded))
    mnt, log = tmp_path / "mnt", tmp_path / "mount.log"
    with mounted(store, gpg_key, mnt, log):
        _wait_for(log, "prefetch: 6 recorded files checked ahead, 0 differed")
        order = ["lib/p/big", "share/p/f03", "bin/tool"]
        assert (mnt / "lib/p/big").read_bytes() == BIG
        assert (mnt / "share/p/f03").read_bytes() == b"file 3\n"
        assert (mnt / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
        assert (mnt / "share/p/f05").read_bytes() == b"file 5\n"  # not recorded: hashed at its read
    text = log.read_text()
    assert "files hashed: 1 " in text
    # the recorded files' READs never reached a handler: the one READ there is f05's
    assert _counts(text, "requests").get("read") == 1, text
    assert _counts(text, "dispatch")["c_reads"] >= 6, text  # big alone is 4 READs of 1 MiB
    assert load_record(store, image.id) == [*order, "share/p/f05", "share/p/f10", "share/p/f01", "share/p/f11"]


def test_a_file_changed_after_its_fd_was_kept_is_refused_at_its_read(deployed, gpg_key, tmp_path):
    require("c_read" in getattr(pyfuse3, "DISPATCH_FEATURES", ()), "pyfuse3 without c_read (run .ci/setup)")
    store, image = deployed
    store.cache_path("x").parent.mkdir(exist_ok=True)
    store.write_file(opened_record_path(store, image.id), format_record(READ))
    mnt, log = tmp_path / "mnt", tmp_path / "mount.log"
    with mounted(store, gpg_key, mnt, log):
        _wait_for(log, "prefetch: 4 recorded files checked ahead, 0 differed")
        tamper(store, image, "share/p/f03")  # its kept fd now has another ctime: not read in C
        with pytest.raises(OSError) as e:
            (mnt / "share/p/f03").read_bytes()
        assert e.value.errno == errno.EIO
        assert (mnt / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    text = log.read_text()
    assert "integrity violation: /usr/share/p/f03 of pf-" in text
    assert _counts(text, "dispatch")["c_reads"] >= 1
