"""The compiled tree (usrview.view.compiled, usrview.view.ctree): the same view as the
tree composed from the headers, deterministic bytes, and every tampered part refused."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.rpmbuild import FileSpec
from tests.test_view_lifecycle import (
    Daemon,
    flip_signed_byte,
    mount_args,
    mountpoint,  # noqa: F401 -- a fixture
    start,
)
from tests.viewstore import deploy_store
from usrview import images
from usrview.cli._common import load_keyring
from usrview.errors import OperationalError
from usrview.store import Store
from usrview.view import compiled, ctree, fullcheck, loader
from usrview.view.compiled import ENTRY, HEAD, PKG, RECORD
from usrview.view.loader import build_view, load_headers
from usrview.view.tree import digest_label

OWN = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/tool", content=b"#!/bin/sh\necho tool\n", mode=0o755),
    FileSpec("/usr/bin/suid", content=b"#!/bin/sh\nid\n", mode=0o4755),
    FileSpec("/usr/bin/capped", content=b"caps\n", mode=0o755, directives="%caps(cap_net_raw=ep)"),
    FileSpec("/usr/lib/private", kind="dir", mode=0o700),
    FileSpec("/usr/lib/private/secret", content=b"s\n", mode=0o600),
    FileSpec("/usr/share/t/link", kind="symlink", target="../../bin/tool"),
    FileSpec("/usr/share/t/h1", content=b"linked\n"),
    FileSpec("/usr/share/t/h2", kind="hardlink", target="/usr/share/t/h1"),
    FileSpec("/usr/share/t/ghost", directives="%ghost"),
    FileSpec("/etc/t.conf", content=b"conf\n", directives="%config"),
]
OTHER = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/other", content=b"other\n", mode=0o755),
    FileSpec("/usr/share/o/a", content=b"a\n"),
]


@pytest.fixture
def world(rpm_packages, gpg_key, tmp_path):
    rpms = [rpm_packages("ct-own", files=OWN), rpm_packages("ct-other", files=OTHER)]
    store, image = deploy_store(tmp_path / "store", rpms, gpg_key)
    keyring = load_keyring([gpg_key.public_path])
    return store, image, keyring


def attributes(tree, node):
    return (node.inode, node.mode, node.uid, node.gid, node.size, node.mtime, node.nlink, node.rdev,
            tree.package_of(node), node.relpath, node.digest, node.algo, node.caps, node.path,
            node.parent if node.is_dir else None, digest_label(node))


def listing(tree):
    return [(path, *attributes(tree, node)) for path, node in tree.walk()]


def test_compiled_tree_serves_what_the_headers_compose(world):
    store, image, keyring = world
    _, built = build_view(store, image, keyring)
    served = ctree.open_view(store, image, keyring)
    assert compiled.tree_path(store, image.id).exists()  # deploy compiled it? or the first mount did
    assert listing(served) == listing(built)
    assert served.inode_count == built.inode_count and served.total_size == built.total_size
    assert len(served.nodes) == len(built.nodes)
    assert [served.node(i) is None for i in range(1, len(built.nodes))] == \
        [built.node(i) is None for i in range(1, len(built.nodes))]
    assert served.resolve("bin/suid").mode & stat.S_ISUID
    assert served.resolve("bin/nothing") is None
    assert served.lookup(served.resolve("share/t"), "..").path == "share"


def test_compiling_is_deterministic(world, rpm_packages, gpg_key, tmp_path):
    store, image, keyring = world
    first = compiled.compile_image(store, image, keyring)
    assert compiled.compile_image(store, image, keyring) == first
    assert compiled.tree_path(store, image.id).read_bytes() == first
    # another store, the packages deployed in the other order: the same bytes
    rpms = [rpm_packages("ct-other", files=OTHER), rpm_packages("ct-own", files=OWN)]
    other, other_image = deploy_store(tmp_path / "store2", rpms, gpg_key)
    assert other_image.packages == image.packages
    for pkgid in other_image.packages:  # written at another time (a deploy that crossed a second)
        os.utime(other.header_path(pkgid), (1, 1))
    assert compiled.compile_image(other, other_image, keyring) == first
    assert first.startswith(compiled.MAGIC)


def test_a_missing_tree_is_compiled_at_mount_and_stored(world):
    store, image, keyring = world
    path = compiled.tree_path(store, image.id)
    path.unlink(missing_ok=True)
    tree = ctree.open_view(store, image, keyring)
    assert tree.proven and path.exists()
    assert ctree.open_view(store, image, keyring).proven is False  # mapped, to be checked


# -- tampering ---------------------------------------------------------------------

def _fields(data: bytes):
    return HEAD.unpack_from(data, 0)


def _record_at(data: bytes, pkg: int, rel: str) -> int:
    """Offset of the record of ``rel`` in package ``pkg``'s block."""
    _, block_off, block_len, _, _, _ = PKG.unpack_from(data, HEAD.size + pkg * PKG.size)
    count, ndirs = compiled.BLOCK_HEAD.unpack_from(data, block_off)
    for i in range(count):
        if compiled.read_record(data, block_off, block_len, i)[0] == rel:
            (off,) = compiled.U32.unpack_from(data, block_off + 8 + 4 * (ndirs + 1 + i))
            return block_off + off
    raise KeyError(rel)


def _entry_at(tree, path: str) -> int:
    node = tree.resolve(path)
    return _fields(bytes(tree.buf[:HEAD.size]))[6] + (node.inode - 1) * ENTRY.size


def _pkg_index(image, name: str) -> int:
    return next(i for i, p in enumerate(image.packages) if p.startswith(name + "-"))


def _rewrite(store, image, data: bytes) -> None:
    path = compiled.tree_path(store, image.id)
    path.write_bytes(data)


def _tampered(world, change):
    """The stored compiled tree changed by ``change(bytearray, tree)``; the tree opened again."""
    store, image, keyring = world
    compiled.compile_image(store, image, keyring)
    clean = ctree.open_view(store, image, keyring)
    data = bytearray(compiled.tree_path(store, image.id).read_bytes())
    change(data, clean)
    _rewrite(store, image, bytes(data))
    return ctree.open_view(store, image, keyring)


def _refused(tree, path: str, expect_logs) -> None:
    with expect_logs("compiled tree refused", level=logging.ERROR), pytest.raises(OSError) as e:
        tree.resolve(path)
    assert e.value.errno == errno.EIO
    assert tree.failed
    with pytest.raises(OSError):
        tree.node(1)  # everything refused from then on


def _set_field(data, at, fmt, index, value):
    values = list(RECORD.unpack_from(data, at)) if fmt is RECORD else list(ENTRY.unpack_from(data, at))
    values[index] = value
    fmt.pack_into(data, at, *values)


@pytest.mark.parametrize("what", ["mode-setuid", "mtime", "owner", "size"])
def test_a_changed_attribute_is_refused_before_it_is_served(world, what, expect_logs):
    store, image, keyring = world
    pkg = _pkg_index(image, "ct-own")

    def change(data, tree):
        at = _record_at(bytes(data), pkg, "bin/tool")
        if what == "mode-setuid":
            _set_field(data, at, RECORD, 0, RECORD.unpack_from(data, at)[0] | stat.S_ISUID)
        elif what == "mtime":
            _set_field(data, at, RECORD, 2, 12345)
        elif what == "size":
            _set_field(data, at, RECORD, 1, 7)
        else:  # user name "root" -> "daem" is as long as it is: only the name changes
            lengths = RECORD.unpack_from(data, at)[7:]
            user_at = at + RECORD.size + lengths[0]
            data[user_at:user_at + lengths[1]] = b"x" * lengths[1]

    tree = _tampered(world, change)
    _refused(tree, "bin/tool", expect_logs)
    assert "does not match its signed header" in tree.failed


def test_a_changed_link_target_or_digest_is_refused(world, expect_logs):
    store, image, keyring = world
    pkg = _pkg_index(image, "ct-own")

    def target(data, tree):
        at = _record_at(bytes(data), pkg, "share/t/link")
        lengths = RECORD.unpack_from(data, at)[7:]
        t_at = at + RECORD.size + sum(lengths[:3])
        data[t_at] = ord("X")

    _refused(_tampered(world, target), "share/t/link", expect_logs)

    def digest(data, tree):
        at = _record_at(bytes(data), pkg, "bin/tool")
        lengths = RECORD.unpack_from(data, at)[7:]
        d_at = at + RECORD.size + sum(lengths[:4])
        data[d_at] = ord("0") if data[d_at] != ord("0") else ord("1")

    _refused(_tampered(world, digest), "bin/tool", expect_logs)


def test_a_name_pointing_at_another_record_is_refused(world, expect_logs):
    store, image, keyring = world
    pkg = _pkg_index(image, "ct-own")

    def point(data, tree):
        suid_rec = [i for i in range(100) if _rec_path(bytes(data), pkg, i) == "bin/suid"][0]
        _set_field(data, _entry_at(tree, "bin/tool"), ENTRY, 7, suid_rec)

    tree = _tampered(world, point)
    _refused(tree, "bin/tool", expect_logs)
    assert "names the record of /usr/bin/suid" in tree.failed


@pytest.mark.parametrize("name", ["bin/tool", "share/t/h2"])
def test_a_name_made_a_hardlink_of_another_inode_is_refused(world, name, expect_logs):
    """An entry's inode pointed at the set-uid program: a plain file, and a hardlink
    group's second name, shown as another name of bin/suid."""
    def link(data, tree):
        _set_field(data, _entry_at(tree, name), ENTRY, 0, tree.resolve("bin/suid").inode)

    tree = _tampered(world, link)
    directory = tree.resolve(name.rpartition("/")[0])
    with expect_logs("compiled tree refused", level=logging.ERROR), pytest.raises(OSError) as e:
        tree.lookup(directory, name.rpartition("/")[2])
    assert e.value.errno == errno.EIO and "hardlink" in tree.failed


def test_a_directory_listing_another_directorys_entries_is_refused(world, expect_logs):
    """share/o's children range pointed at share/t's: their records match their own
    paths (share/t/...), but they are not share/o's entries.  (A range before the
    directory's own id is refused as out of bounds.)"""
    def borrow(data, tree):
        other = tree.resolve("share/t")
        at = _entry_at(tree, "share/o")
        _set_field(data, at, ENTRY, 8, other.ids[0])
        _set_field(data, at, ENTRY, 9, len(other.ids))

    tree = _tampered(world, borrow)
    with expect_logs("compiled tree refused", level=logging.ERROR), pytest.raises(OSError):
        list(tree.entries_after(tree.resolve("share/o"), 0))
    assert "not its directory" in tree.failed


def _rec_path(data: bytes, pkg: int, index: int) -> str | None:
    _, block_off, block_len, _, _, _ = PKG.unpack_from(data, HEAD.size + pkg * PKG.size)
    try:
        return compiled.read_record(data, block_off, block_len, index)[0]
    except compiled.CompiledTreeError:
        return None


def test_an_implicit_directory_owned_by_a_package_is_caught_by_the_full_check(world, expect_logs):
    """Marking lib/private (0700) implicit would show it 0755: the per-package checks
    cannot see it (no record is served); the full check does."""
    store, image, keyring = world

    def implicit(data, tree):
        _set_field(data, _entry_at(tree, "lib/private"), ENTRY, 4, compiled.KIND_IMPLICIT)

    tree = _tampered(world, implicit)
    assert ctree.full_check(store, image, keyring, tree.buf).startswith("differs from what the headers")
    thread = ctree.start_full_check(tree, store, image, keyring)
    with expect_logs("full check of the compiled tree", level=logging.ERROR):
        thread.join(60)
    assert tree.failed and "full check" in tree.failed
    with pytest.raises(OSError) as e:
        tree.resolve("lib/private")
    assert e.value.errno == errno.EIO


def test_an_entry_removed_is_caught_by_the_full_check(world, expect_logs):
    """The absence the issue names: bin/tool renamed out of reach (lookup answers
    ENOENT until the full check, started right after the mount, ends)."""
    store, image, keyring = world

    def hide(data, tree):
        at = _entry_at(tree, "bin/tool")
        e = ENTRY.unpack_from(data, at)
        names_off = _fields(bytes(data))[7]
        data[names_off + e[2]] = ord("~")  # "~ool" sorts last: still a sorted directory

    tree = _tampered(world, hide)
    assert tree.proven is False
    thread = ctree.start_full_check(tree, store, image, keyring)
    with expect_logs("full check of the compiled tree", level=logging.ERROR):
        thread.join(60)
    assert "full check" in (tree.failed or "")


def test_a_clean_tree_passes_the_full_check(world):
    store, image, keyring = world
    tree = _tampered(world, lambda data, tree: None)
    assert ctree.full_check(store, image, keyring, tree.buf) is None
    ctree.start_full_check(tree, store, image, keyring).join(60)
    assert tree.proven and tree.failed is None
    assert tree.resolve("bin/tool") is not None


def test_the_full_check_runs_at_its_own_niceness_not_the_daemons(world, monkeypatch, expect_logs):
    """The initrd's daemon serves at nice -10: the check's child takes the niceness
    it is given, absolute (it once added 10 to the daemon's and competed with the
    boot at nice 0).  The child reports its niceness as its verdict here."""
    store, image, keyring = world
    tree = _tampered(world, lambda data, tree: None)
    monkeypatch.setattr(fullcheck, "_full_check", lambda *a: (f"nice {os.getpriority(os.PRIO_PROCESS, 0)}", []))
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, -5)  # this thread, whose niceness the fork inherits
    try:
        failures = []
        thread = ctree.start_full_check(tree, store, image, keyring, nice=19, on_failure=failures.append)
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)
    with expect_logs("full check of the compiled tree", level=logging.ERROR):
        thread.join(60)
    assert failures and failures[0].endswith(": nice 19"), failures


@pytest.mark.parametrize("what", ["magic", "version", "truncated", "package-size", "package-order"])
def test_a_damaged_file_or_package_table_is_not_served(world, what, expect_logs):
    """Found at mount: the tree is composed from the headers instead (an ERROR says
    why; a file of another version is compiled again), nothing of the file served."""
    store, image, keyring = world

    def change(data, tree):
        if what == "magic":
            data[0] ^= 0xFF
        elif what == "version":
            data[8] = 99
        elif what == "truncated":
            del data[len(data) - 10:]
        elif what == "package-size":  # a header file's size
            _set_pkg_field(data, 0, 3, PKG.unpack_from(data, HEAD.size)[3] + 1)
        else:
            first = bytes(data[HEAD.size:HEAD.size + PKG.size])
            data[HEAD.size:HEAD.size + PKG.size] = data[HEAD.size + PKG.size:HEAD.size + 2 * PKG.size]
            data[HEAD.size + PKG.size:HEAD.size + 2 * PKG.size] = first

    with expect_logs("compiling it from the headers", level=logging.ERROR, count=0 if what == "version" else 1):
        tree = _tampered(world, change)
    assert tree.proven  # composed from the headers, not the file
    _, built = build_view(*world)
    assert listing(tree) == listing(built)


def _set_pkg_field(data, pkg: int, index: int, value) -> None:
    values = list(PKG.unpack_from(data, HEAD.size + pkg * PKG.size))
    values[index] = value
    PKG.pack_into(data, HEAD.size + pkg * PKG.size, *values)


def test_a_changed_package_digest_is_refused_at_the_packages_first_use(world, expect_logs):
    """The package table's SHA-256 of a header file, changed: the mount cannot see it
    (it reads no header), the package's check before its first use does."""
    store, image, keyring = world
    pkg = _pkg_index(image, "ct-own")

    def change(data, tree):
        data[HEAD.size + pkg * PKG.size] ^= 1

    tree = _tampered(world, change)
    assert not tree.proven
    _refused(tree, "bin/tool", expect_logs)
    assert "is not the one the compiled tree was made from" in tree.failed


def test_a_header_changed_after_the_mount_refuses_its_package(world, expect_logs):
    store, image, keyring = world
    tree = _tampered(world, lambda data, tree: None)
    pkgid = next(p for p in image.packages if p.startswith("ct-own-"))
    header = store.header_path(pkgid)
    header.chmod(0o644)
    header.write_bytes(header.read_bytes() + b"\0")
    _refused(tree, "bin/tool", expect_logs)
    assert f"header not trusted: {pkgid}: header file: 1 byte(s) after the header" in tree.failed


def test_a_tampered_header_is_never_served_and_is_reported(world, expect_logs):
    """Issue 14: the mount checks no header's signature (it costs the same whatever the
    image's size); each is checked before its package's first use, and all of them by the
    full check right after the mount.  A header whose signed bytes were changed offline
    (same size): the mount goes ahead (its package is not the root's), the first request
    touching the package answers EIO and an ERROR names it and its verdict; everything
    answers EIO from then on.  The full check finds it too, on a tree whose requests never
    touched the package: that tree fails the same way, with the same report."""
    store, image, keyring = world
    compiled.compile_image(store, image, keyring)
    pkgid = next(p for p in image.packages if p.startswith("ct-own-"))
    flip_signed_byte(store, pkgid, "tool")
    tree = ctree.open_view(store, image, keyring)  # no signature checked but the root's package's
    assert not tree.proven and tree.failed is None
    other = ctree.open_view(store, image, keyring)
    assert other.resolve("bin/other") is not None  # ct-other's, checked and served
    _refused(tree, "bin/tool", expect_logs)
    assert f"header not trusted: {pkgid}: BAD" in tree.failed
    for what in (lambda: tree.resolve("bin/other"), lambda: tree.node(1)):
        with pytest.raises(OSError) as e:
            what()
        assert e.value.errno == errno.EIO
    # the background check: every header's signature, whether a request touched it or not
    assert f"{pkgid}: BAD" in ctree.full_check(store, image, keyring, other.buf)
    with expect_logs("compiled tree refused, every request answers EIO: .*full check.*"
                     f"{re.escape(pkgid)}: BAD", level=logging.ERROR):
        ctree.start_full_check(other, store, image, keyring).join(60)
    assert other.failed and not other.proven
    with pytest.raises(OSError):
        other.resolve("bin/other")


def test_a_listing_checks_every_package_it_shows_before_it_answers(world, expect_logs):
    """A readdir whose entries come from several packages checks each of them (signature
    and block) before it answers; one bad header among them, and the listing answers EIO."""
    store, image, keyring = world
    compiled.compile_image(store, image, keyring)
    own, other = _pkg_index(image, "ct-own"), _pkg_index(image, "ct-other")
    tree = ctree.open_view(store, image, keyring)
    assert list(tree.checked) == [0, 0]  # /usr is no package's: nothing checked at mount
    names = [name for name, _, _ in tree.entries_after(tree.resolve("bin"), 0)]
    assert names == ["capped", "other", "suid", "tool"] and tree.checked[own] and tree.checked[other]
    flip_signed_byte(store, image.packages[own], "tool")
    tree = ctree.open_view(store, image, keyring)
    with expect_logs("compiled tree refused", level=logging.ERROR), pytest.raises(OSError) as e:
        list(tree.entries_after(tree.resolve("bin"), 0))
    assert e.value.errno == errno.EIO and "BAD" in tree.failed


def test_a_tampered_header_of_the_roots_package_refuses_the_mount(rpm_packages, gpg_key, tmp_path):
    """The root's package is checked by the mount itself: refused in one line, as every
    bad header was before issue 14."""
    rpms = [rpm_packages("ct-root", files=[FileSpec("/usr", kind="dir"), *OWN])]
    store, image = deploy_store(tmp_path / "store", rpms, gpg_key)
    keyring = load_keyring([gpg_key.public_path])
    compiled.compile_image(store, image, keyring)
    (pkgid,) = image.packages
    flip_signed_byte(store, pkgid, "tool")
    with pytest.raises(OperationalError, match=f"refusing to mount image {image.id}: header not trusted: "
                       f"{re.escape(pkgid)}: BAD"):
        ctree.open_view(store, image, keyring)


# -- the commands --------------------------------------------------------------------

def test_deploy_compiles_verify_reports_a_mismatch_gc_deletes(rpm_packages, gpg_key, tmp_path):
    from tests.test_images import usrview

    source = tmp_path / "source"
    source.mkdir()
    for rpm in (rpm_packages("ct-own", files=OWN), rpm_packages("ct-other", files=OTHER)):
        shutil.copy2(rpm, source)
    store_dir, keys = tmp_path / "store", gpg_key.public_path
    usrview("deploy", "--store", store_dir, "--keys", keys, source)
    store = Store.open(store_dir)
    image = images.resolve(store, images.CURRENT)
    path = compiled.tree_path(store, image.id)
    assert path.read_bytes() == compiled.compile_loaded(load_headers(store, image, load_keyring([keys])))
    assert usrview("verify", "--store", store_dir, "--keys", keys).stdout == ""

    data = bytearray(path.read_bytes())
    at = _record_at(bytes(data), _pkg_index(image, "ct-own"), "bin/tool")
    _set_field(data, at, RECORD, 0, RECORD.unpack_from(data, at)[0] | stat.S_ISUID)
    path.write_bytes(bytes(data))
    r = usrview("verify", "--store", store_dir, "--keys", keys, check=1)
    assert r.stdout == (f"image     {path.name}: compiled tree does not match the headers: differs from what "
                        f"the headers compile to at byte {at + 1} (block of package {_pkg_index(image, 'ct-own')})\n")

    # two newer images: gc --keep 0 deletes the first, its compiled tree with it
    names = sorted(p.name for p in source.iterdir())
    for keep in names:
        for name in names:
            if name != keep:
                (source / name).rename(tmp_path / name)
        usrview("deploy", "--store", store_dir, "--keys", keys, source)
        for name in names:
            if name != keep:
                (tmp_path / name).rename(source / name)
    assert path.exists()
    assert "deleted" in usrview("gc", "--store", store_dir, "--keep", "0").stdout
    assert not path.exists() and not images.image_path(store, image.id).exists()
    assert len(list((store_dir / "images").glob("*.tree"))) == 2


# -- a real mount ----------------------------------------------------------------------

def test_a_real_mount_serves_the_compiled_tree_and_refuses_a_tampered_one(world, gpg_key, mountpoint,  # noqa: F811
                                                                          tmp_path):
    store, image, keyring = world
    mnt, daemons = mountpoint
    compiled.compile_image(store, image, keyring)
    d = start(store, gpg_key, mnt, daemons, tmp_path / "clean.log", "-v")
    assert (mnt / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert os.stat(mnt / "bin/suid").st_mode & stat.S_ISUID
    assert os.readlink(mnt / "share/t/link") == "../../bin/tool"
    assert os.stat(mnt / "share/t/h1").st_ino == os.stat(mnt / "share/t/h2").st_ino
    deadline = time.monotonic() + 60
    while "checked against the headers" not in d.log():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    assert d.stop() == 0

    # the set-uid bit added to bin/tool's record: never served, the view answers EIO
    path = compiled.tree_path(store, image.id)
    data = bytearray(path.read_bytes())
    at = _record_at(bytes(data), _pkg_index(image, "ct-own"), "bin/tool")
    _set_field(data, at, RECORD, 0, RECORD.unpack_from(data, at)[0] | stat.S_ISUID)
    path.write_bytes(bytes(data))
    # (not start(): its wait stats the root, which answers EIO once the full check failed)
    d = Daemon(mount_args(store, gpg_key, mnt, "--foreground"), tmp_path / "tampered.log")
    daemons.append(d)
    deadline = time.monotonic() + 60
    while f" {mnt} " not in Path("/proc/self/mountinfo").read_text():
        assert d.proc.poll() is None and time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    with pytest.raises(OSError) as e:
        os.stat(mnt / "bin/tool")
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        os.listdir(mnt)  # everything, from then on
    assert e.value.errno == errno.EIO
    assert d.stop() == 0
    # whichever saw it first: the package's check before serving it, or the full check
    assert re.search(r"compiled tree refused, every request answers EIO: (the block of ct-own|.*full check)",
                     d.log()), d.log()


def test_headers_checked_in_several_processes_agree_and_refuse_alike(world, monkeypatch, tmp_path):
    """A mount of a compiled tree checks the headers in as many processes as there are
    CPUs (forked); the verdicts are the same, and a bad header in a child's slice
    refuses the mount with the same one line."""
    store, image, keyring = world
    monkeypatch.setattr(loader, "PARALLEL_MIN", 1)
    serial = load_headers(store, image, keyring, keep_packages=False)
    parallel = load_headers(store, image, keyring, keep_packages=False, jobs=2)
    assert parallel.sources == serial.sources and parallel.header_digests == serial.header_digests
    last = image.packages[-1]  # in the second slice, checked by the child
    header = store.header_path(last)
    header.chmod(0o644)
    data = bytearray(header.read_bytes())
    data[-5] ^= 0xFF
    header.write_bytes(bytes(data))
    with pytest.raises(OperationalError, match=f"refusing to mount image {image.id}: 1 header.*{last}"):
        load_headers(store, image, keyring, keep_packages=False, jobs=2)
    with pytest.raises(OperationalError, match=f"{last}"):
        ctree.open_view(store, image, keyring)


def test_unknown_owners_lose_set_id_and_are_named_once(rpm_packages, gpg_key, tmp_path, expect_logs):
    """As the composed tree: an owner this system does not know becomes root without the
    set-uid bit; the compiled tree names such owners as it meets them, once each."""
    files = [FileSpec("/usr/bin/ghostly", content=b"#!/bin/sh\n", mode=0o4755, user="nosuchuser-ct"),
             FileSpec("/usr/bin/also", content=b"#!/bin/sh\n", mode=0o755, user="nosuchuser-ct")]
    with expect_logs("unknown owners made root"):  # the importer's
        store, image = deploy_store(tmp_path / "store", [rpm_packages("ct-unknown", files=files)], gpg_key)
    keyring = load_keyring([gpg_key.public_path])
    compiled.compile_image(store, image, keyring)
    tree = ctree.open_view(store, image, keyring)
    with expect_logs("owner names unknown to this system.*nosuchuser-ct", count=1):
        ghostly = tree.resolve("bin/ghostly")
        tree.resolve("bin/also")
    assert (ghostly.uid, ghostly.mode & stat.S_ISUID) == (0, 0)
    assert tree.unknown_owners == {"nosuchuser-ct"}


def test_a_package_without_its_directory_is_named_and_gets_no_backing(world, expect_logs):
    """The mapped tree finds the packages' directories by one listing of packages/: a
    package whose directory is gone (a file in its place) is named once and gets no
    backing directory (its files answer EIO, docs/view.md); the others keep theirs."""
    store, image, keyring = world
    ctree.open_view(store, image, keyring).close()  # the compiled tree, stored
    own = next(p for p in image.packages if p.startswith("ct-own"))
    shutil.move(store.package_dir(own), store.root / "moved-away")
    store.package_dir(own).write_bytes(b"not a directory")
    with expect_logs(rf"packages without files in the store \(their files answer EIO\): {re.escape(own)}$",
                     level=logging.WARNING):
        tree = ctree.open_view(store, image, keyring)
    try:
        own_index = image.packages.index(own)
        assert tree.backing_dirs[own_index] is None
        assert all(d is not None and d.is_dir() for i, d in enumerate(tree.backing_dirs) if i != own_index)
        assert tree.resolve("bin/tool") is not None and tree.resolve("bin/other") is not None
    finally:
        tree.close()
