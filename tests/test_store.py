"""The store's layout, format check, lock, package listing, deletion and leftover cleanup."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from tests import hdrbuild
from tests.rpmbuild import FileSpec
from usrview.store import FORMAT_LINE, LAYOUT_DIRS, Store, StoreError, btrfs, pkgid_for
from usrview.store import atomic
from usrview.store.importer import import_package
from verifier.header import read_package
from verifier.keyring import Keyring
from verifier.tags import Tag, TagType

FILES = [FileSpec("/usr/share/s/a", content=os.urandom(9000)), FileSpec("/usr/share/s", kind="dir")]


@pytest.fixture
def keyring(gpg_key):
    return Keyring.load([gpg_key.public_path])


def test_create_layout(store_dir):
    store = Store.open(store_dir, create=True)
    assert (store_dir / "format").read_text() == FORMAT_LINE == "usrview-store 1\n"
    assert os.stat(store_dir).st_mode & 0o777 == 0o700
    for d in LAYOUT_DIRS:
        assert os.stat(store_dir / d).st_mode & 0o777 == 0o700
    assert (store_dir / "lock").is_file()
    assert store.packages() == [] and store.is_btrfs == btrfs.is_btrfs(store_dir)
    assert Store.open(store_dir).root == store_dir  # opening again: no error, no change


def test_open_refusals(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        Store.open(tmp_path / "none")
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "x").write_text("")
    with pytest.raises(StoreError, match="not a usrview store"):
        Store.open(tmp_path / "notastore")
    with pytest.raises(StoreError, match="not empty"):
        Store.open(tmp_path / "notastore", create=True)
    Store.open(tmp_path / "s", create=True)
    (tmp_path / "s" / "format").write_text("usrview-store 7\n")
    with pytest.raises(StoreError, match="format version 7; this usrview reads version 1 only"):
        Store.open(tmp_path / "s")
    (tmp_path / "s" / "format").write_text("something else")
    with pytest.raises(StoreError, match="not a usrview store"):
        Store.open(tmp_path / "s", create=True)
    (tmp_path / "s" / "format").write_text(FORMAT_LINE)
    os.rmdir(tmp_path / "s" / "headers")
    with pytest.raises(StoreError, match="damaged: missing headers"):
        Store.open(tmp_path / "s")


def test_packages_get_has_delete(store_dir, rpm_packages, keyring):
    store = Store.open(store_dir, create=True)
    a = import_package(store, rpm_packages("a", "1", "1", FILES), keyring)
    b = import_package(store, rpm_packages("b", "2", "3", FILES), keyring)
    assert b.nevra == "b-2-3.noarch" and b.pkgid.startswith("b-2-3.noarch-")
    listed = store.packages()
    assert [p.pkgid for p in listed] == sorted([a.pkgid, b.pkgid])
    sp = store.get(a.pkgid)
    assert sp.nevra == "a-1-1.noarch" and sp.name == "a" and not sp.unsigned
    assert sp.header_sha256.startswith(a.pkgid.rsplit("-", 1)[1])
    assert pkgid_for(sp.package) == a.pkgid == Store.pkgid_for(sp.package)
    assert store.has(a.pkgid) and not store.has("nope") and not store.has("../x")
    with pytest.raises(StoreError, match="not in the store"):
        store.get("nope-1-1.noarch-0000000000000000")
    with pytest.raises(RuntimeError, match="needs Store.lock"):
        store.delete_package(a.pkgid)
    with store.lock():
        store.delete_package(a.pkgid)
    assert [p.pkgid for p in store.packages()] == [b.pkgid]
    assert not store.package_dir(a.pkgid).exists() and not store.header_path(a.pkgid).exists()
    assert os.listdir(store_dir / "tmp") == []
    # the digest index forgets it: a new import of the same bytes writes them again
    again = import_package(store, rpm_packages("a", "1", "1", FILES), keyring)
    assert again.pkgid == a.pkgid and not again.already_stored


def test_pkgid_refuses_names_that_are_not_file_names():
    main = hdrbuild.build_header([(Tag.NAME, TagType.STRING, "../../evil"), (Tag.VERSION, TagType.STRING, "1"),
                                  (Tag.RELEASE, TagType.STRING, "1"), (Tag.ARCH, TagType.STRING, "noarch"),
                                  (Tag.SOURCERPM, TagType.STRING, "x.src.rpm")])
    with pytest.raises(StoreError, match="cannot be stored"):
        pkgid_for(read_package(hdrbuild.build_package(main)))


def test_lock_cleans_leftovers(store_dir, rpm_packages, keyring):
    store = Store.open(store_dir, create=True)
    kept = import_package(store, rpm_packages("a", "1", "1", FILES), keyring)
    # what an interrupted import leaves: a tree in tmp/, a package without header,
    # an unsigned marker without header, half-written temp files
    tmpfd = os.open(store_dir / "tmp", os.O_RDONLY | os.O_DIRECTORY)
    pkgfd = os.open(store_dir / "packages", os.O_RDONLY | os.O_DIRECTORY)
    try:
        btrfs.create_tree(tmpfd, "import.1.x")
        (store_dir / "tmp/import.1.x/usr").mkdir()
        btrfs.create_tree(pkgfd, "orphan-1-1.noarch-0123456789abcdef")
        btrfs.set_readonly(pkgfd, "orphan-1-1.noarch-0123456789abcdef")
    finally:
        os.close(tmpfd)
        os.close(pkgfd)
    (store_dir / "unsigned" / "orphan-1-1.noarch-0123456789abcdef").write_text("")
    (store_dir / "headers" / ".x.rpm.usrview-tmp.1.ab").write_text("half")
    assert [p.pkgid for p in store.packages()] == [kept.pkgid]  # readers never see them
    with store.lock():
        pass
    assert os.listdir(store_dir / "tmp") == []
    assert os.listdir(store_dir / "packages") == [kept.pkgid]
    assert os.listdir(store_dir / "unsigned") == []
    assert os.listdir(store_dir / "headers") == [kept.pkgid + ".rpm"]


HOLD_LOCK = ("import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
             "print('held', flush=True); time.sleep(60)")


def test_lock_is_exclusive_between_processes(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    with subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "s" / "lock")],
            stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline() == "held\n"
            with pytest.raises(StoreError, match="locked by another command"), store.lock(timeout=0.5):
                pass
        finally:
            holder.kill()
    with store.lock():
        with store.lock():  # reentrant
            assert store.locked
        assert store.locked
    assert not store.locked


def test_atomic_write_and_symlink(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    target = store.root / "images" / "one.json"
    Store.atomic_write(target, b"{}")
    store.atomic_write(target, b'{"a": 1}', tmp_dir=store.root / "tmp")
    assert target.read_bytes() == b'{"a": 1}'
    Store.atomic_symlink("images/one.json", store.root / "current")
    Store.atomic_symlink("images/two.json", store.root / "current")
    assert os.readlink(store.root / "current") == "images/two.json"
    assert sorted(os.listdir(store.root / "images")) == ["one.json"]
    assert os.listdir(store.root / "tmp") == []


def test_writes_never_wait_for_the_kernels_entropy(tmp_path, monkeypatch):
    """The daemon writes the boot state in the initrd, before the kernel's random pool
    is seeded: the temp names ask getrandom(2) with GRND_INSECURE, never os.urandom (which
    waits for the pool, and has the kernel generate entropy meanwhile), and stay unique;
    a kernel without GRND_INSECURE (before 5.6) still gets unique names."""
    def no_urandom(n):
        raise AssertionError("os.urandom waits for the kernel's random pool")

    flags_seen = []
    real_getrandom = os.getrandom

    def getrandom(size, flags=0):
        flags_seen.append(flags)
        return real_getrandom(size, flags)

    monkeypatch.setattr(os, "urandom", no_urandom)
    monkeypatch.setattr(os, "getrandom", getrandom)
    store = Store.open(tmp_path / "s", create=True)
    for i in range(20):
        store.write_file(store.root / "images" / f"r{i}.json", b"{}")
        Store.atomic_symlink(f"images/r{i}.json", store.root / "current")
    assert flags_seen and all(f & atomic.GRND_INSECURE and not f & os.GRND_RANDOM for f in flags_seen)
    assert len({store.temp_name("import") for _ in range(2000)}) == 2000

    def old_kernel(size, flags=0):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "getrandom", old_kernel)
    store.write_file(store.root / "images" / "old.json", b"{}")
    assert (store.root / "images" / "old.json").read_bytes() == b"{}"
    assert os.listdir(store.root / "tmp") == []
