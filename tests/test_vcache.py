"""The verified-results cache: a second run hashes nothing, and no change hides behind it.

Each kind of change is made after a run filled the cache; the next run must
report it exactly as a run without the cache (``full=True``) does.  Changes to
a regular file's bytes or metadata must also make that file be hashed again
(its identity changed), which proves the cache entry was not used.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests import test_verify as tv
from tests.prereq import require_privileged, require_tools
from tests.test_verify import MAIN_FILES, OTHER_FILES, World, _rpm_va  # noqa: F401 - shared world
from usrview.verify import vcache

DATA = "usr/share/tool/data"


@pytest.fixture
def world(tmp_path, rpm_packages, gpg_key):
    require_privileged("chown and security.capability")
    require_tools("rpm")
    return World(tmp_path, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)


def _same_size_bytes_same_mtime(d):
    p = d / DATA
    st = p.stat()
    p.write_bytes(b"Y" * st.st_size)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _size(d):
    with open(d / DATA, "ab") as f:
        f.write(b"z")


def _mode(d):
    os.chmod(d / DATA, 0o600)


def _owner(d):
    os.chown(d / DATA, 1, -1)


def _mtime(d):
    os.utime(d / DATA, (5, 5))


def _replace(d):
    """A new file with the old one's bytes, size and mtime, renamed over it: another inode."""
    p = d / DATA
    st = p.stat()
    tmp = d / "usr/share/tool/.new"
    tmp.write_bytes(b"Q" * st.st_size)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, p)


def _symlink(d):
    p = d / "usr/lib/libtool.so"
    p.unlink()
    p.symlink_to("libother.so")
    os.utime(p, (1_700_000_000, 1_700_000_000), follow_symlinks=False)


def _caps(d):
    require_tools("setcap")
    subprocess.run(["setcap", "cap_net_raw=ep", str(d / DATA)], check=True)


def _xattr_user(d):
    os.setxattr(d / DATA, "user.note", b"x")


CHANGES = {
    "bytes (same size and mtime)": (_same_size_bytes_same_mtime, "..5......    /usr/share/tool/data", True),
    "size": (_size, "S.5....T.    /usr/share/tool/data", True),
    "mode": (_mode, ".M.......    /usr/share/tool/data", True),
    "owner": (_owner, ".....U...    /usr/share/tool/data", True),
    "mtime": (_mtime, ".......T.    /usr/share/tool/data", True),
    "replaced file": (_replace, "..5......    /usr/share/tool/data", True),
    "symlink target": (_symlink, "....L....    /usr/lib/libtool.so", False),
    "capabilities": (_caps, "........P    /usr/share/tool/data", True),
}


def test_second_run_hashes_nothing(world):
    first = world.verify()
    assert first.findings == [] and first.stats.hashed_files > 0 and first.cache_written
    second = world.verify()
    assert second.findings == []
    assert second.stats.hashed_files == 0 and second.stats.hashed_bytes == 0
    assert second.stats.cache_hits == first.stats.hashed_files
    full = world.verify(full=True)
    assert full.stats.hashed_files == first.stats.hashed_files and full.stats.cache_hits == 0


@pytest.mark.parametrize("name", list(CHANGES))
def test_change_is_seen_through_the_cache(world, name):
    change, line, rehash = CHANGES[name]
    world.verify()
    change(world.pkgdir("tool"))
    cached = world.verify()
    assert [f.line for f in cached.findings] == [line]
    assert [f.line for f in world.verify(full=True).findings] == [line]
    if rehash:
        assert cached.stats.hashed_files == 1, "the changed file's cache entry must not be used"
    else:
        assert cached.stats.hashed_files == 0


def test_user_xattr_changes_identity(world):
    """An xattr that rpm does not check still changes ctime, so the file is hashed again."""
    world.verify()
    _xattr_user(world.pkgdir("tool"))
    r = world.verify()
    assert r.findings == [] and r.stats.hashed_files == 1


def test_cache_is_used(world):
    """A poisoned row (a wrong digest for the file's true identity) is believed by an
    incremental run -- proof that the cache is what spares the hashing -- and ignored by
    --full, which then rewrites the cache."""
    world.verify()
    path = vcache.cache_path(world.store)
    rows = vcache.load(path)
    assert rows
    st = (world.pkgdir("tool") / DATA).stat()
    key = vcache.identity(st, 8)
    assert key in rows
    pkgid = world.pkgids["tool"]
    digests = vcache.unpack_digests(vcache.load_digests(path, [pkgid])[pkgid])
    assert digests[key] == rows[key]
    digests[key] = "0" * 64
    row = vcache.load_packages(path)[pkgid]
    vcache.save(path, [(pkgid, *row, vcache.pack_digests(digests.items()))])
    assert [f.line for f in world.verify().findings] == ["..5......    /usr/share/tool/data"]
    assert world.verify(full=True).findings == []
    assert vcache.load(path)[key] != "0" * 64
    assert world.verify().findings == []


def test_unreadable_cache_is_ignored(world):
    world.verify()
    path = vcache.cache_path(world.store)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.unlink(f"{path}{suffix}")
    path.write_bytes(b"not a database" * 100)
    r = world.verify()
    assert r.findings == [] and r.stats.hashed_files > 0


# -- the package cache (btrfs: a package subvolume's generation) ----------------------

@pytest.fixture
def bworld(btrfs_dir, rpm_packages, gpg_key):
    require_privileged("chown and security.capability")
    require_tools("rpm", "btrfs")
    return World(btrfs_dir, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)


def _writable(d, writable=True):
    subprocess.run(["btrfs", "property", "set", "-ts", str(d), "ro", "false" if writable else "true"],
                   check=True, capture_output=True)


@pytest.mark.parametrize("name", ["bytes (same size and mtime)", "mode", "symlink target", "capabilities"])
def test_package_cache_sees_changes(bworld, name):
    change, line, _rehash = CHANGES[name]
    first = bworld.verify()
    assert first.findings == [] and first.stats.cached_packages == 0
    second = bworld.verify()
    assert second.findings == [] and second.stats.cached_packages == 1
    assert second.stats.hashed_files == 0 and second.stats.cache_hits == first.stats.hashed_files
    d = bworld.pkgdir("tool")
    _writable(d)
    change(d)
    _writable(d, False)   # as it was (on a writable subvolume reads change atime: no cache hits)
    changed = bworld.verify()
    assert changed.stats.cached_packages == 0
    assert [f.line for f in changed.findings] == [line]
    again = bworld.verify()   # the tampered outcome is remembered, and still reported
    assert again.stats.cached_packages == 1 and [f.line for f in again.findings] == [line]
    assert [f.line for f in bworld.verify(full=True).findings] == [line]


def test_package_cache_is_used_and_full_ignores_it(bworld):
    """A poisoned package row is believed by an incremental run (proof that it is what
    spares the work) and ignored by --full, which rewrites it."""
    d = bworld.pkgdir("tool")
    _writable(d)
    _mode(d)
    _writable(d, False)
    line = ".M.......    /usr/share/tool/data"
    assert [f.line for f in bworld.verify().findings] == [line]
    path = vcache.cache_path(bworld.store)
    rows = vcache.load_packages(path)
    (pkgid, (key, checked, outcome)), = rows.items()
    import json
    data = json.loads(outcome)
    data["findings"] = []
    blob = vcache.load_digests(path)[pkgid]
    vcache.save(path, [(pkgid, key, checked, json.dumps(data), blob)])
    assert bworld.verify().findings == []
    assert [f.line for f in bworld.verify(full=True).findings] == [line]
    assert [f.line for f in bworld.verify().findings] == [line]


def test_digest_blob_roundtrip_and_malformed_blob_is_empty():
    rows = {(45, 300, 7, 1_700_000_000_123456789, -5, 8): "ab" * 32,
            (45, 301, 0, 0, 0, 10): "cd" * 64, (1, 2, 3, 4, 5, 1): "ef" * 16}
    blob = vcache.pack_digests(rows.items())
    assert vcache.unpack_digests(blob) == rows
    assert vcache.unpack_digests(blob[:-1]) == {} and vcache.unpack_digests(b"") == {}


def test_package_cache_without_the_root_tree_search(bworld, monkeypatch):
    """Where btrfs's root tree cannot be searched (no CAP_SYS_ADMIN) each package
    subvolume is asked on its own: the package cache still works, and still sees a change."""
    from usrview.store import btrfs

    def denied(fd):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(btrfs, "child_subvolume_states", denied)
    assert bworld.verify().findings == []
    second = bworld.verify()
    assert second.stats.cached_packages == 1 and second.stats.hashed_files == 0
    d = bworld.pkgdir("tool")
    _writable(d)
    _mode(d)
    _writable(d, False)
    changed = bworld.verify()
    assert changed.stats.cached_packages == 0
    assert [f.line for f in changed.findings] == [".M.......    /usr/share/tool/data"]


# -- every kind of change the issue lists, behind both caches -------------------------

def _in_package(change):
    """A change to the files of package tool (its subvolume made writable for it on btrfs,
    read-only again after, as deploy leaves it)."""
    def apply(w, _tmp_path):
        d = w.pkgdir("tool")
        subvolume = w.store.is_btrfs
        if subvolume:
            _writable(d)
        try:
            change(d)
        finally:
            if subvolume:
                _writable(d, False)
    return apply


def _extra(d):
    (d / "usr/bin/backdoor").write_bytes(b"evil")


#: Each kind of tampering the issue lists: (change(world, tmp_path), the exact lines
#: expected, or the kind of every finding).
ISSUE_CHANGES = {
    "bytes": (_in_package(tv._bytes), ["..5......    /usr/share/tool/data"]),
    "size": (_in_package(tv._size), ["S.5....T.    /usr/bin/tool"]),
    "mode": (_in_package(tv._mode), [".M.......    /usr/bin/tool"]),
    "owner": (_in_package(tv._owner), [".....U...    /usr/share/tool/small"]),
    "group": (_in_package(tv._group), ["......G..    /usr/share/tool/small"]),
    "mtime": (_in_package(tv._mtime), [".......T.    /usr/share/tool/data"]),
    "symlink target": (_in_package(tv._link), ["....L....    /usr/lib/libtool.so"]),
    "capabilities": (_in_package(_caps), ["........P    /usr/share/tool/data"]),
    "deleted file": (_in_package(tv._deleted), ["missing   d /usr/share/doc/tool/README"]),
    "extra file": (_in_package(_extra), ["unowned     /usr/bin/backdoor"]),
    "header edited": (lambda w, _t: tv.edit_header(w), "header"),
    "header signed by an untrusted key": (lambda w, t: tv.resign_header(w, t, w.rpms[0]), "header"),
    "image record edited": (lambda w, _t: tv.edit_image(w), "image"),
}


@pytest.fixture(params=["plain", "btrfs"])
def world2(request, tmp_path, rpm_packages, gpg_key):
    """Two packages (tool and other) in a store on tmp_path's file system (the file
    cache only) or on btrfs (the package cache too)."""
    require_privileged("chown and security.capability")
    require_tools("rpm")
    where = tmp_path
    if request.param == "btrfs":
        require_tools("btrfs")
        where = request.getfixturevalue("btrfs_dir")
    rpms = [rpm_packages("tool", "1.0", "1", MAIN_FILES), rpm_packages("other", "2.0", "1", OTHER_FILES)]
    return World(where, rpms, gpg_key)


@pytest.mark.parametrize("name", list(ISSUE_CHANGES))
def test_every_change_is_seen_through_both_caches(world2, tmp_path, name):
    """Each kind of tampering the issue lists, made after runs that filled the caches: the
    next incremental run reports exactly what a --full run reports, and the tampered
    package is not taken from the package cache."""
    change, expected = ISSUE_CHANGES[name]
    btrfs = world2.store.is_btrfs
    assert world2.verify().findings == []
    warm = world2.verify()
    assert warm.findings == [] and warm.stats.hashed_files == 0
    assert warm.stats.cached_packages == (2 if btrfs else 0)
    change(world2, tmp_path)
    cached = world2.verify()
    full = world2.verify(full=True)
    lines = [f.line for f in cached.findings]
    assert lines == [f.line for f in full.findings] and cached.exit_code == full.exit_code == 1
    if isinstance(expected, list):
        assert lines == expected
        assert all(f.package == world2.pkgids["tool"] for f in cached.findings)
    else:
        assert lines and all(f.kind == expected for f in cached.findings), lines
    if btrfs and name != "image record edited":
        # the untouched package still comes from the package cache, the tampered one never
        assert cached.stats.cached_packages == 1
