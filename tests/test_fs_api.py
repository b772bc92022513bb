"""The FUSE handlers (usrview.view.fs) and the guard, called directly with pytest-trio: no mount."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat

import pyfuse3
import pytest
import trio

from tests.prereq import require
from tests.rpmbuild import STAGED_MTIME, FileSpec
from tests.viewstore import deploy_store
from usrview.cli._common import load_keyring
from usrview.view import compiled, ctree
from usrview.view import fs as fs_module
from usrview.view import guard as guard_module
from usrview.view.fs import CACHE_TIMEOUT, ViewOperations
from usrview.view.guard import INTEGRITY_MESSAGE_ID, READAHEAD_START, Guard
from usrview.view.loader import build_view
from usrview.view.tree import ROOT_INODE, SYSIMAGE_DIR
from verifier.filecaps import parse_text

TOOL = b"#!/bin/sh\necho hello from the view\n"
BIG = bytes(range(256)) * 4096 * 3  # 3 MiB: hashed in several chunks

FILES = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/tool", content=TOOL, mode=0o755),
    FileSpec("/usr/bin/capped", content=b"caps\n", mode=0o755, directives="%caps(cap_net_raw=ep)"),
    FileSpec("/usr/share/api/big", content=BIG),
    FileSpec("/usr/share/api/link", kind="symlink", target="big"),
    FileSpec("/usr/share/api/h1", content=b"linked\n"),
    FileSpec("/usr/share/api/h2", kind="hardlink", target="/usr/share/api/h1"),
    FileSpec("/etc/api.conf", content=b"conf\n", directives="%config"),
] + [FileSpec(f"/usr/share/many/f{i:03d}", content=b"%d\n" % i) for i in range(40)]


class DeployedStore(tuple):
    """(store, image), and how the view's tree is made: composed from the headers in
    memory (build_view) or mapped from the compiled tree (usrview.view.ctree)."""

    tree_kind = "composed"


@pytest.fixture(params=["composed", "compiled"])
def store(rpm_packages, gpg_key, tmp_path, request):
    rpm = rpm_packages("api", files=FILES)
    deployed = DeployedStore(deploy_store(tmp_path / "store", [rpm], gpg_key))
    deployed.tree_kind = request.param
    return deployed


def make_ops(store, gpg_key, mode="enforce", kernel_cache=frozenset()):
    st, image = store
    keyring = load_keyring([gpg_key.public_path])
    if getattr(store, "tree_kind", "composed") == "compiled":
        compiled.compile_image(st, image, keyring)
        tree = ctree.open_view(st, image, keyring)
        assert not tree.proven  # mapped, checked as it serves
    else:
        _, tree = build_view(st, image, keyring)
    return ViewOperations(tree, Guard(tree, mode), kernel_cache)


async def lookup_path(ops, path):
    inode = ROOT_INODE
    for part in path.split("/"):
        attr = await ops.lookup(inode, part.encode(), None)
        assert attr.st_ino, f"{part} of {path} not found"
        inode = attr.st_ino
    return await ops.getattr(inode, None)


async def read_all(ops, inode, chunk=128 << 10):
    info = await ops.open(inode, os.O_RDONLY, None)
    assert info.keep_cache
    try:
        data, off = b"", 0
        while True:
            piece = await ops.read(info.fh, off, chunk)
            if not piece:
                return data
            data += piece
            off += len(piece)
    finally:
        await ops.release(info.fh)


def count_opens(monkeypatch, guard, method: str) -> list[int]:
    """The inodes ``guard.<method>(node)`` is called for, from now on."""
    calls = []
    real = getattr(guard, method)

    async def counting(node):
        calls.append(node.inode)
        return await real(node)

    monkeypatch.setattr(guard, method, counting)
    return calls


def backing(store, rel):
    st, image = store
    (pkgid,) = image.packages
    return st.package_dir(pkgid) / rel


async def test_lookup_getattr(store, gpg_key):
    ops = make_ops(store, gpg_key)
    attr = await lookup_path(ops, "bin/tool")
    assert attr.st_mode == stat.S_IFREG | 0o755
    assert attr.st_size == len(TOOL)
    assert attr.st_mtime_ns == STAGED_MTIME * 10**9
    assert (attr.st_uid, attr.st_gid) == (0, 0)
    assert attr.entry_timeout == attr.attr_timeout == CACHE_TIMEOUT
    missing = await ops.lookup(ROOT_INODE, b"nope", None)
    assert missing.st_ino == 0
    # /etc is not part of the view: the root is /usr.
    assert (await ops.lookup(ROOT_INODE, b"etc", None)).st_ino == 0
    assert (await ops.lookup(ROOT_INODE, b"..", None)).st_ino == ROOT_INODE
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(10**9, None)
    assert e.value.errno == errno.ENOENT


async def test_hardlinks_and_symlinks(store, gpg_key):
    ops = make_ops(store, gpg_key)
    h1, h2 = await lookup_path(ops, "share/api/h1"), await lookup_path(ops, "share/api/h2")
    assert h1.st_ino == h2.st_ino and h1.st_nlink == 2
    link = await lookup_path(ops, "share/api/link")
    assert stat.S_ISLNK(link.st_mode)
    assert await ops.readlink(link.st_ino, None) == b"big"
    assert await read_all(ops, (await lookup_path(ops, "share/api/big")).st_ino) == BIG


async def test_readdir_cookies_are_stable(store, gpg_key, monkeypatch):
    ops = make_ops(store, gpg_key)
    replies = []

    def reply(token, name, attr, next_id):
        if len(token) >= token.limit:
            return False
        token.append((name, attr.st_ino, next_id))
        replies.append(next_id)
        return True

    class Token(list):
        limit = 7

    monkeypatch.setattr(fs_module.pyfuse3, "readdir_reply", reply)
    inode = (await lookup_path(ops, "share/many")).st_ino
    fh = await ops.opendir(inode, None)
    seen, start = [], 0
    while True:
        token = Token()
        await ops.readdir(fh, start, token)
        if not token:
            break
        seen += token
        start = token[-1][2]
    await ops.releasedir(fh)
    assert [n for n, _, _ in seen] == [b"f%03d" % i for i in range(40)]
    # Resuming from a cookie a second time gives the same entries (ids, not positions).
    token = Token()
    await ops.readdir(fh, seen[9][2], token)
    assert token == seen[10:17]


async def test_sysimage_header_files(store, gpg_key):
    st, image = store
    ops = make_ops(store, gpg_key)
    (pkgid,) = image.packages
    attr = await lookup_path(ops, f"{SYSIMAGE_DIR}/{pkgid}.rpm")
    data = st.header_path(pkgid).read_bytes()
    assert attr.st_mode == stat.S_IFREG | 0o644 and attr.st_size == len(data)
    assert await read_all(ops, attr.st_ino) == data


async def test_xattrs(store, gpg_key):
    ops = make_ops(store, gpg_key)
    capped = await lookup_path(ops, "bin/capped")
    assert await ops.getxattr(capped.st_ino, b"security.capability", None) == \
        parse_text("cap_net_raw=ep").to_xattr()
    tool = await lookup_path(ops, "bin/tool")
    assert await ops.getxattr(tool.st_ino, b"user.rpm.package", None) == b"api-1.0-1.noarch"
    assert await ops.getxattr(tool.st_ino, b"user.rpm.digest", None) == \
        b"sha256:" + hashlib.sha256(TOOL).hexdigest().encode()
    assert set(await ops.listxattr(tool.st_ino, None)) == {b"user.rpm.package", b"user.rpm.digest"}
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getxattr(tool.st_ino, b"security.capability", None)
    assert e.value.errno == errno.ENODATA
    # other names: EOPNOTSUPP for security labels and ACLs, which the view keeps none of
    # (ls -l then stops asking), ENODATA elsewhere
    for name, err in ((b"security.selinux", errno.EOPNOTSUPP), (b"user.other", errno.ENODATA),
                      (b"system.posix_acl_access", errno.EOPNOTSUPP),
                      (b"system.posix_acl_default", errno.EOPNOTSUPP), (b"trusted.x", errno.ENODATA)):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getxattr(capped.st_ino, name, None)
        assert e.value.errno == err, name


async def test_everything_modifying_is_erofs(store, gpg_key):
    ops = make_ops(store, gpg_key)
    tool = (await lookup_path(ops, "bin/tool")).st_ino
    calls = [
        ops.setattr(tool, None, None, None, None), ops.mknod(ROOT_INODE, b"n", 0o644, 0, None),
        ops.mkdir(ROOT_INODE, b"d", 0o755, None), ops.unlink(ROOT_INODE, b"bin", None),
        ops.rmdir(ROOT_INODE, b"bin", None), ops.symlink(ROOT_INODE, b"s", b"t", None),
        ops.rename(ROOT_INODE, b"bin", ROOT_INODE, b"b2", 0, None), ops.link(tool, ROOT_INODE, b"l", None),
        ops.create(ROOT_INODE, b"c", 0o644, os.O_WRONLY, None), ops.write(0, 0, b"x"),
        ops.setxattr(tool, b"user.x", b"1", None), ops.removexattr(tool, b"user.rpm.package", None),
        ops.open(tool, os.O_WRONLY, None), ops.open(tool, os.O_RDWR, None),
        ops.open(tool, os.O_RDONLY | os.O_TRUNC, None), ops.access(tool, os.W_OK, None),
    ]
    for call in calls:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == errno.EROFS, call
    assert await ops.access(tool, os.R_OK | os.X_OK, None)


async def test_statfs(store, gpg_key):
    ops = make_ops(store, gpg_key)
    st = await ops.statfs(None)
    assert st.f_files == ops.tree.inode_count > 40
    assert st.f_blocks * st.f_frsize >= len(BIG) + len(TOOL)
    assert st.f_bfree == st.f_bavail == 0


async def test_tampered_file_is_eio_under_enforce(store, gpg_key, expect_logs, caplog):
    ops = make_ops(store, gpg_key, "enforce")
    tool = (await lookup_path(ops, "bin/tool")).st_ino
    assert await read_all(ops, tool) == TOOL
    path = backing(store, "usr/bin/tool")
    with open(path, "r+b") as f:  # same size, different bytes
        f.write(b"#!/bin/sh\necho evil from the view\n"[:len(TOOL)])
    with expect_logs(r"integrity violation: /usr/bin/tool of api-1\.0-1\.noarch", level=logging.ERROR):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(tool, os.O_RDONLY, None)
    assert e.value.errno == errno.EIO
    (record,) = [r for r in caplog.records if getattr(r, "MESSAGE_ID", None) == INTEGRITY_MESSAGE_ID]
    assert record.PATH == "/usr/bin/tool" and record.PACKAGE == "api-1.0-1.noarch"
    assert record.EXPECTED == "sha256:" + hashlib.sha256(TOOL).hexdigest()
    assert record.ACTUAL == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert not ops.open_files


async def test_tampered_file_is_served_under_warn(store, gpg_key, expect_logs):
    ops = make_ops(store, gpg_key, "warn")
    path = backing(store, "usr/bin/tool")
    evil = TOOL.replace(b"hello", b"HELLO")  # same size: only the digest tells
    path.write_bytes(evil)
    tool = (await lookup_path(ops, "bin/tool")).st_ino
    with expect_logs(r"integrity violation \(served, verify=warn\): /usr/bin/tool", level=logging.WARNING):
        assert await read_all(ops, tool) == evil


async def test_wrong_size_and_symlink_in_store_are_eio(store, gpg_key, expect_logs):
    ops = make_ops(store, gpg_key)
    tool = (await lookup_path(ops, "bin/tool")).st_ino
    path = backing(store, "usr/bin/tool")
    path.write_bytes(TOOL + b"more")
    with expect_logs(r"/usr/bin/tool.*size", level=logging.ERROR):
        with pytest.raises(pyfuse3.FUSEError):
            await ops.open(tool, os.O_RDONLY, None)
    # A symlink planted where the file was is never followed.
    path.unlink()
    (path.parent / "real").write_bytes(TOOL)
    path.symlink_to("real")
    with expect_logs(r"/usr/bin/tool.*cannot be opened", level=logging.ERROR):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(tool, os.O_RDONLY, None)
    assert e.value.errno == errno.EIO


async def test_store_metadata_changes_nothing(store, gpg_key):
    ops = make_ops(store, gpg_key)
    before = await lookup_path(ops, "bin/tool")
    path = backing(store, "usr/bin/tool")
    os.chmod(path, 0o6777)
    os.chown(path, 1234, 5678)
    (path.parent / "planted").write_bytes(b"not in any header\n")
    after = await lookup_path(ops, "bin/tool")
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    bin_ = (await lookup_path(ops, "bin")).st_ino
    assert (await ops.lookup(bin_, b"planted", None)).st_ino == 0
    # The bytes still match: the file is served.
    assert await read_all(ops, after.st_ino) == TOOL


async def test_concurrent_first_opens_hash_once(store, gpg_key):
    ops = make_ops(store, gpg_key)
    big = (await lookup_path(ops, "share/api/big")).st_ino
    fhs = []

    async def opener():
        fhs.append((await ops.open(big, os.O_RDONLY, None)).fh)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(opener)
    assert len(fhs) == 8
    assert ops.guard.hashed == 1
    for fh in fhs:
        await ops.release(fh)
    await read_all(ops, big)
    assert ops.guard.hashed == 1  # cached per backing-file identity
    # A change of the file (new ctime) is hashed again.
    os.utime(backing(store, "usr/share/api/big"))
    await read_all(ops, big)
    assert ops.guard.hashed == 2


async def test_unexpected_exception_becomes_eio(store, gpg_key, expect_logs, monkeypatch):
    ops = make_ops(store, gpg_key)

    def broken(node):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(ops, "attributes", broken)
    with expect_logs(r"internal error in getattr", level=logging.ERROR):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getattr(ROOT_INODE, None)
    assert e.value.errno == errno.EIO


async def test_read_ahead_follows_sequential_opens_and_never_serves_unchecked(store, gpg_key, expect_logs):
    ops = make_ops(store, gpg_key)
    guard = ops.guard
    many = [(await lookup_path(ops, f"share/many/f{i:03d}")).st_ino for i in range(40)]
    assert many == list(range(many[0], many[0] + 40))  # name order is inode order
    assert await read_all(ops, many[0]) == b"0\n"
    assert guard.read_ahead == READAHEAD_START  # the next files' backing files, not more
    # Opens that keep landing on what was read ahead double the window.
    for i in range(1, 4):
        assert await read_all(ops, many[i]) == b"%d\n" % i
    # the fourth open (f003) has a window of 8 x START files: f001 .. f(3 + 8 x START)
    assert guard.read_ahead == 3 + 8 * READAHEAD_START < 40
    # A file read ahead and then changed in the store is still refused on its open.
    victim = backing(store, "usr/share/many/f010")
    victim.write_bytes(b"X\n")
    with expect_logs(r"integrity violation: /usr/share/many/f010", level=logging.ERROR):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(many[10], os.O_RDONLY, None)
    assert e.value.errno == errno.EIO
    ahead = guard.read_ahead
    # An open elsewhere starts a small window again: nothing new past the old one.
    await read_all(ops, (await lookup_path(ops, "bin/tool")).st_ino)
    assert guard.read_ahead <= ahead + READAHEAD_START


async def test_no_read_ahead_when_not_verifying(store, gpg_key):
    ops = make_ops(store, gpg_key, "off")
    for i in range(5):
        await read_all(ops, (await lookup_path(ops, f"share/many/f{i:03d}")).st_ino)
    assert ops.guard.read_ahead == 0 and ops.guard.hashed == 0


def test_hash_cached_hands_over_where_the_page_cache_ends(tmp_path, monkeypatch):
    data = os.urandom(3 * guard_module.HASH_CHUNK + 12345)
    path = tmp_path / "f"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        path.read_bytes()  # all of it in the page cache
        assert guard_module.hash_cached(fd, "sha256") == (want, None, len(data))
        # The disk would be needed from the second chunk on: hashing carries on from there.
        real = os.preadv
        calls = []

        def preadv(fd_, bufs, off, flags=0):
            calls.append((off, flags))
            if flags & os.RWF_NOWAIT and off >= guard_module.HASH_CHUNK:
                raise BlockingIOError(errno.EAGAIN, "would block")
            return real(fd_, bufs, off, flags)

        monkeypatch.setattr(guard_module.os, "preadv", preadv)
        digest, h, off = guard_module.hash_cached(fd, "sha256")
        assert digest is None and off == guard_module.HASH_CHUNK
        assert guard_module.hash_fd(fd, "sha256", h=h, offset=off)[0] == want
        assert calls[0] == (0, os.RWF_NOWAIT) and calls[-1] == (len(data), 0)
        assert guard_module.hash_fd(fd, "sha256")[0] == want
    finally:
        os.close(fd)


async def test_unchanged_file_is_opened_at_its_first_read_and_checked_again(store, gpg_key, expect_logs,
                                                                             monkeypatch):
    ops = make_ops(store, gpg_key)
    tool = (await lookup_path(ops, "bin/tool")).st_ino
    assert await read_all(ops, tool) == TOOL
    opened = count_opens(monkeypatch, ops.guard, "open")
    # Unchanged since its check passed: the open costs one lstat, the read opens it.
    info = await ops.open(tool, os.O_RDONLY, None)
    assert opened == []
    assert await ops.read(info.fh, 0, 4096) == TOOL
    assert opened == [tool]
    await ops.release(info.fh)
    # Changed between the open and the first read: the read is refused.
    info = await ops.open(tool, os.O_RDONLY, None)
    assert len(opened) == 1
    with open(backing(store, "usr/bin/tool"), "r+b") as f:  # noqa: ASYNC230 - the test's own file
        f.write(TOOL.replace(b"hello", b"HELLO"))
    with expect_logs(r"integrity violation: /usr/bin/tool", level=logging.ERROR), \
            pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(info.fh, 0, 4096)
    assert e.value.errno == errno.EIO
    await ops.release(info.fh)
    # And a later open checks it at once.
    with expect_logs(r"integrity violation: /usr/bin/tool", level=logging.ERROR), \
            pytest.raises(pyfuse3.FUSEError):
        await ops.open(tool, os.O_RDONLY, None)
    assert not ops.open_files


async def test_page_cached_small_files_are_hashed_in_the_event_loop(store, gpg_key, monkeypatch):
    ops = make_ops(store, gpg_key)
    to_thread = []
    real = trio.to_thread.run_sync

    async def counting(*args, **kwargs):
        to_thread.append(args[0].__name__)
        return await real(*args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    tool = (await lookup_path(ops, "bin/tool")).st_ino
    backing(store, "usr/bin/tool").read_bytes()  # in the page cache
    assert await read_all(ops, tool) == TOOL
    assert (ops.guard.hashed, ops.guard.hashed_inline, to_thread) == (1, 1, [])
    # A file over INLINE_HASH_MAX goes to a thread.
    big = (await lookup_path(ops, "share/api/big")).st_ino
    assert await read_all(ops, big) == BIG
    assert (ops.guard.hashed, ops.guard.hashed_inline, to_thread) == (2, 1, ["_hash_rest"])


def test_read_ahead_thread_asks_the_kernel_for_the_backing_files(store, gpg_key, monkeypatch):
    ops = make_ops(store, gpg_key)
    asked = []
    real = os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        asked.append((os.readlink(f"/proc/self/fd/{fd}"), advice))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(guard_module.os, "posix_fadvise", fadvise)
    first = ops.tree.resolve("share/many/f000")
    ops.guard._read_ahead(first)
    ops.guard.close()  # joins the thread: everything submitted was asked for
    want = [(str(backing(store, f"usr/share/many/f{i:03d}")), os.POSIX_FADV_WILLNEED)
            for i in range(1, 1 + READAHEAD_START)]
    assert asked == want


# -- letting the kernel answer: no OPEN, the check at the first READ ----------

def test_kernel_cache_features_are_what_pyfuse3_offers(monkeypatch):
    assert fs_module.kernel_cache_features("off") == frozenset()
    monkeypatch.delattr(pyfuse3, "KERNEL_CACHE_FEATURES", raising=False)
    assert fs_module.kernel_cache_features() == frozenset()  # a stock pyfuse3
    assert "pyfuse3" in fs_module.describe_kernel_cache(frozenset())
    monkeypatch.setattr(pyfuse3, "KERNEL_CACHE_FEATURES", frozenset({"no_open", "other"}), raising=False)
    assert fs_module.kernel_cache_features() == {"no_open"}
    assert fs_module.kernel_cache_features("off") == frozenset()


async def test_no_open_answers_enosys_and_reads_by_inode(store, gpg_key, expect_logs, monkeypatch):
    ops = make_ops(store, gpg_key, kernel_cache=fs_module.KERNEL_CACHE)
    assert ops.enable_symlink_caching
    tool = (await lookup_path(ops, "bin/tool")).st_ino
    for call in (ops.open(tool, os.O_RDONLY, None), ops.opendir(ROOT_INODE, None)):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == errno.ENOSYS
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.open(tool, os.O_WRONLY, None)
    assert e.value.errno == errno.EROFS
    # Under no_open pyfuse3 hands read() the inode; nothing was checked before.
    assert ops.guard.hashed == 0
    assert await ops.read(tool, 0, 4096) == TOOL
    assert ops.guard.hashed == 1
    await ops.release(0)  # the RELEASE of the first file opened without OPEN
    checked = count_opens(monkeypatch, ops.guard, "open_checked")
    assert await ops.read(tool, 5, 10) == TOOL[5:15]
    assert checked == []  # the kept fd, same identity: one fstat
    # Changed after its check (the kernel dropped its pages, READ comes again): refused.
    with open(backing(store, "usr/bin/tool"), "r+b") as f:  # noqa: ASYNC230 - the test's own file
        f.write(TOOL.replace(b"hello", b"HELLO"))
    for _ in range(2):
        with expect_logs(r"integrity violation: /usr/bin/tool", level=logging.ERROR), \
                pytest.raises(pyfuse3.FUSEError) as e:
            await ops.read(tool, 0, 4096)
        assert e.value.errno == errno.EIO
    assert checked == [tool, tool]
    ops.close_all()
    assert not ops.inode_fds


async def test_no_open_first_reads_of_a_tampered_file_are_all_eio(store, gpg_key, expect_logs):
    ops = make_ops(store, gpg_key, kernel_cache=fs_module.KERNEL_CACHE)
    big = (await lookup_path(ops, "share/api/big")).st_ino
    with open(backing(store, "usr/share/api/big"), "r+b") as f:  # noqa: ASYNC230 - the test's own file
        f.seek(len(BIG) - 1)  # the last byte: reads of the first bytes are refused too
        f.write(b"\x00" if BIG[-1] else b"\x01")
    errors = []

    async def reader(off):
        try:
            await ops.read(big, off, 4096)
        except pyfuse3.FUSEError as e:
            errors.append(e.errno)

    with expect_logs(r"integrity violation: /usr/share/api/big", level=logging.ERROR, count=8):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(reader, i * 4096)
    assert errors == [errno.EIO] * 8
    assert ops.guard.hashed == 1  # hashed once, refused to every reader
    assert not ops.inode_fds


async def test_no_open_keeps_a_bounded_number_of_backing_fds(store, gpg_key, monkeypatch):
    monkeypatch.setattr(fs_module, "INODE_FDS", 4)
    ops = make_ops(store, gpg_key, kernel_cache=fs_module.KERNEL_CACHE)
    many = [(await lookup_path(ops, f"share/many/f{i:03d}")).st_ino for i in range(10)]
    for i, inode in enumerate(many):
        assert await ops.read(inode, 0, 100) == b"%d\n" % i
    assert list(ops.inode_fds) == many[-4:]
    # An fd let go is opened and checked again (by identity: the digest is cached).
    assert await ops.read(many[0], 0, 100) == b"0\n"
    assert list(ops.inode_fds) == many[-3:] + many[:1]
    ops.close_all()


# -- READs answered in C (the patched pyfuse3's c_read) ----------------------------

def require_c_read() -> None:
    require("c_read" in getattr(pyfuse3, "DISPATCH_FEATURES", ()), "pyfuse3 without c_read (run .ci/setup)")


async def test_kept_fds_answer_reads_in_c_as_long_as_python_keeps_them(store, gpg_key, monkeypatch):
    require_c_read()
    monkeypatch.setattr(fs_module, "INODE_FDS", 4)
    ops = make_ops(store, gpg_key, kernel_cache=fs_module.KERNEL_CACHE)
    assert ops.c_read
    many = [(await lookup_path(ops, f"share/many/f{i:03d}")).st_ino for i in range(6)]
    for inode in many:
        await ops.read(inode, 0, 100)
    # the C side holds what Python holds, no more: a fd Python let go is never read in C
    assert pyfuse3.kept_read_fds() == len(ops.inode_fds) == 4
    ops.close_all()
    assert pyfuse3.kept_read_fds() == 0


@pytest.mark.parametrize("store", ["compiled"], indirect=True)  # only a compiled tree is refused after its mount
async def test_a_refused_compiled_tree_stops_reads_from_kept_fds(store, gpg_key, expect_logs):
    require_c_read()
    ops = make_ops(store, gpg_key, kernel_cache=fs_module.KERNEL_CACHE)
    tool = (await lookup_path(ops, "bin/tool")).st_ino
    assert await ops.read(tool, 0, 4096) == TOOL
    assert pyfuse3.kept_read_fds() == 1
    with expect_logs("compiled tree refused", level=logging.ERROR):
        ops.tree.fail("the full check found a difference (test)")
    assert pyfuse3.kept_read_fds() == 0  # at once, from the failing thread
    # and the capability answers in C are forgotten with them
    assert {pyfuse3.drop_read_fds, pyfuse3.forget_no_capability} <= set(ops.tree.on_fail)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(tool, 0, 4096)
    assert e.value.errno == errno.EIO
    ops.close_all()


async def test_a_file_checked_ahead_is_adopted_and_noted_at_its_first_read(store, gpg_key):
    require_c_read()
    ops = make_ops(store, gpg_key, kernel_cache=fs_module.KERNEL_CACHE)
    opened = []
    ops.guard.on_open = lambda node: opened.append(node.path)
    node = ops.tree.resolve("bin/tool")
    fd = os.open(backing(store, "usr/bin/tool"), os.O_RDONLY | os.O_CLOEXEC)
    key = Guard.identity(os.fstat(fd), node)
    ops.guard.checked_ahead(node, key, hashlib.sha256(TOOL).hexdigest(), fd)
    assert ops.inode_fds[node.inode][0] == fd and pyfuse3.kept_read_fds() == 1
    assert opened == []  # checked ahead is not opened: noted at the first read
    assert await ops.read(node.inode, 0, 4096) == TOOL
    assert await ops.read(node.inode, 0, 4096) == TOOL
    assert opened == ["bin/tool"] and ops.guard.hashed == 0
    # a digest that differs is not adopted: its fd is closed
    other = ops.tree.resolve("share/many/f001")
    fd2 = os.open(backing(store, "usr/share/many/f001"), os.O_RDONLY | os.O_CLOEXEC)
    ops.guard.checked_ahead(other, Guard.identity(os.fstat(fd2), other), "0" * 64, fd2)
    assert other.inode not in ops.inode_fds
    with pytest.raises(OSError):
        os.fstat(fd2)
    # never at the cost of a fd the view keeps: with as many kept as may be, none is adopted
    ops.inode_fds.update((-i, ops.inode_fds[node.inode]) for i in range(1, fs_module.INODE_FDS))
    other = ops.tree.resolve("share/many/f002")
    fd3 = os.open(backing(store, "usr/share/many/f002"), os.O_RDONLY | os.O_CLOEXEC)
    ops.guard.checked_ahead(other, Guard.identity(os.fstat(fd3), other), hashlib.sha256(b"2\n").hexdigest(), fd3)
    assert other.inode not in ops.inode_fds and len(ops.inode_fds) == fs_module.INODE_FDS
    with pytest.raises(OSError):
        os.fstat(fd3)
    for i in range(1, fs_module.INODE_FDS):
        del ops.inode_fds[-i]
    ops.close_all()
    assert pyfuse3.kept_read_fds() == 0
