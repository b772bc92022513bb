"""Importing real signed rpms, with ``rpm --root R -i`` of the same rpm as the oracle.

For every file a header lists (ghosts and device nodes aside), the package's
directory in the store must hold what rpm itself installs: type, mode, owner,
group, size, mtime, link target, bytes, hardlinks.  Both on a real btrfs and on
a plain directory (``store_dir`` fixture).  Dedupe between two versions of a
package is measured with ``btrfs filesystem du``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import rpmbuild
from tests.btrfs_fixture import disk_usage_exclusive
from tests.corpus import manifest
from tests.rpmbuild import FileSpec
from usrview.store import Store, btrfs
from usrview.store.importer import PackageRefused, import_package
from verifier.header import read_package_file
from verifier.keyring import Keyring

MiB = 1 << 20

RICH_FILES = [
    FileSpec("/usr/bin/tool", content=b"\x7fELF" + os.urandom(30000), mode=0o755),
    FileSpec("/usr/bin/su-tool", content=b"\x7fELF setuid" * 500, mode=0o4755),
    FileSpec("/usr/bin/sg-tool", content=b"\x7fELF setgid" * 500, mode=0o2711, group="bin"),
    FileSpec("/usr/lib/tool", kind="dir", mode=0o750, user="daemon", group="daemon"),
    FileSpec("/usr/lib/tool/data", content=os.urandom(100000), user="daemon", group="daemon"),
    FileSpec("/usr/lib/tool/data.link", kind="hardlink", target="/usr/lib/tool/data", user="daemon",
             group="daemon"),
    FileSpec("/usr/lib/tool/data.link2", kind="hardlink", target="/usr/lib/tool/data", user="daemon",
             group="daemon"),
    FileSpec("/usr/lib/tool/empty"),
    FileSpec("/usr/lib/tool/rel-link", kind="symlink", target="data"),
    FileSpec("/usr/lib/tool/abs-link", kind="symlink", target="/etc/tool.conf"),
    FileSpec("/usr/lib/tool/dangling", kind="symlink", target="../../nowhere/at/all"),
    FileSpec("/usr/share/doc/tool/README", content=b"read me\n", directives="%doc", mtime=1_600_000_000),
    FileSpec("/usr/share/tool/private", kind="dir", mode=0o700),
    FileSpec("/usr/share/tool/private/key", content=b"secret", mode=0o400),
    FileSpec("/etc/tool.conf", content=b"setting = 1\n", directives="%config(noreplace)"),
    FileSpec("/var/lib/tool", kind="dir", mode=0o710, user="bin", group="bin"),
    FileSpec("/var/log/tool.log", directives="%ghost", staged=False),
    FileSpec("/usr/lib/tool/ping", content=b"cap" * 100, directives="%caps(cap_net_raw=ep)"),
    FileSpec("/dev/tool0", kind="device", device=("c", 10, 200)),
]


def keyring_for(*keys: Path) -> Keyring:
    return Keyring.load(list(keys))


def lstat_view(path: Path) -> dict:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    out = {"type": kind, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
           "mtime": int(st.st_mtime)}
    if kind == stat.S_IFLNK:
        out["target"] = os.readlink(path)
        out.pop("mode")  # symlink modes mean nothing on Linux
    elif kind == stat.S_IFREG:
        out["size"] = st.st_size
        out["nlink"] = st.st_nlink
        out["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def compare_with_rpm(pkg_path: Path, store_pkg_dir: Path, rpm_root: Path) -> int:
    """Assert every header-listed non-ghost, non-special file agrees; return how many were compared."""
    pkg = read_package_file(pkg_path)
    compared = 0
    for entry in pkg.files:
        kind = stat.S_IFMT(entry.mode)
        if entry.is_ghost or kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            continue
        rel = entry.path.lstrip("/")
        ours, rpms = lstat_view(store_pkg_dir / rel), lstat_view(rpm_root / rel)
        if kind == stat.S_IFDIR:
            # rpm sets a directory's mtime before it fills it (so it ends up "now", and
            # rpm -V does not check it); the store sets the header's, after.
            assert ours.pop("mtime") == entry.mtime, entry.path
            rpms.pop("mtime")
        assert ours == rpms, (entry.path, ours, rpms)
        compared += 1
    for entry in pkg.files:  # nothing of what the store does not create is there
        if entry.is_ghost or stat.S_IFMT(entry.mode) in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
            assert not os.path.lexists(store_pkg_dir / entry.path.lstrip("/")), entry.path
    return compared


@pytest.fixture
def keyring(gpg_key) -> Keyring:
    return keyring_for(gpg_key.public_path)


def test_rich_package_matches_rpm_install(store_dir, rpm_packages, keyring, tmp_path):
    pkg = rpm_packages("rich", "1.0", "1", RICH_FILES)
    store = Store.open(store_dir, create=True)
    result = import_package(store, pkg, keyring)
    assert not result.already_stored and not result.unsigned
    assert result.specials == ["/dev/tool0"]
    header = read_package_file(pkg)
    assert result.pkgid == f"rich-1.0-1.noarch-{header.header_sha256[:16]}"
    # header-listed entries the store makes: all but the ghost and the device node
    assert result.files == len(RICH_FILES) - 2
    root = tmp_path / "rpmroot"
    rpmbuild.rpm_root_install(root, [pkg])
    compared = compare_with_rpm(pkg, store.package_dir(result.pkgid), root)
    assert compared == len(RICH_FILES) - 2
    # setuid survived the chown; the header file is the package's headers, byte-exact
    assert os.lstat(store.package_dir(result.pkgid) / "usr/bin/su-tool").st_mode & stat.S_ISUID
    assert store.header_path(result.pkgid).read_bytes() == pkg.read_bytes()[:header.payload_offset]
    assert store.package_dir(result.pkgid).stat().st_mode & 0o777 == 0o755
    assert os.stat(store_dir).st_mode & 0o777 == 0o700


def test_package_is_readonly_subvolume_on_btrfs(btrfs_dir, rpm_packages, keyring):
    pkg = rpm_packages("rich", "1.0", "1", RICH_FILES)
    store = Store.open(btrfs_dir / "store", create=True)
    result = import_package(store, pkg, keyring)
    pdir = store.package_dir(result.pkgid)
    assert btrfs.is_subvolume(pdir)
    fd = os.open(pdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert btrfs.get_readonly(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        (pdir / "usr/new").write_bytes(b"x")
    assert e.value.errno == 30  # EROFS


@pytest.mark.parametrize("compress", rpmbuild.COMPRESSORS)
def test_compressors(store_dir, rpm_packages, keyring, tmp_path, compress):
    files = [FileSpec("/usr/share/c/a", content=os.urandom(5000)),
             FileSpec("/usr/share/c/b", content=b"b" * 70000)]
    pkg = rpm_packages("comp", "1", compress.split(".")[1], files, compress=compress)
    store = Store.open(store_dir, create=True)
    result = import_package(store, pkg, keyring)
    root = tmp_path / "rpmroot"
    rpmbuild.rpm_root_install(root, [pkg])
    assert compare_with_rpm(pkg, store.package_dir(result.pkgid), root) == 2


#: Corpus packages rpm 4.18 cannot install, hence compared with their header only.
RPM418_CANNOT_INSTALL_REASON = "rpm 4.18 refuses it"


def _good_corpus_packages(root: Path) -> list[tuple[str, tuple[str, ...]]]:
    seen, out = set(), []
    for case in manifest(root):
        if case.expected == "GOOD" and case.file not in seen:
            seen.add(case.file)
            if read_package_file(root / case.file).has_payload:
                out.append((case.file, case.keys))
    return out


def test_corpus_packages_match_rpm(conformance, tmp_path):
    """Every GOOD corpus package with a payload imports and matches rpm's install of it."""
    store = Store.open(tmp_path / "store", create=True)
    cases = _good_corpus_packages(conformance)
    assert len(cases) >= 20
    by_rpm = 0
    for i, (file, keys) in enumerate(cases):
        pkg = conformance / file
        result = import_package(store, pkg, keyring_for(*(conformance / k for k in keys)))
        pdir = store.package_dir(result.pkgid)
        root = tmp_path / f"root{i}"
        r = subprocess.run([*rpmbuild.rpm_root_cmd(root), "--initdb"], capture_output=True, check=False)
        (root / "etc").mkdir(parents=True, exist_ok=True)
        try:
            rpmbuild.rpm_root_install(root, [pkg])
        except RuntimeError:
            # rpm 4.18 reads neither v6 packages nor some signatures: the header is the oracle
            _compare_with_header(pkg, pdir)
            continue
        assert r.returncode == 0
        compare_with_rpm(pkg, pdir, root)
        by_rpm += 1
    assert by_rpm >= 10, by_rpm


def _compare_with_header(pkg_path: Path, pdir: Path) -> None:
    from verifier.files import digest_name

    for entry in read_package_file(pkg_path).files:
        p = pdir / entry.path.lstrip("/")
        kind = stat.S_IFMT(entry.mode)
        if entry.is_ghost or kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            continue
        st = os.lstat(p)
        assert stat.S_IFMT(st.st_mode) == kind and int(st.st_mtime) == entry.mtime, entry.path
        if kind == stat.S_IFREG:
            assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(entry.mode)
            assert hashlib.new(digest_name(entry.digest_algo), p.read_bytes()).hexdigest() == entry.digest
        elif kind == stat.S_IFLNK:
            assert os.readlink(p) == entry.linkto


def test_already_stored_is_a_noop(store_dir, rpm_packages, keyring):
    pkg = rpm_packages("rich", "1.0", "1", RICH_FILES)
    store = Store.open(store_dir, create=True)
    first = import_package(store, pkg, keyring)
    mtime = store.header_path(first.pkgid).stat().st_mtime_ns
    again = import_package(store, pkg, keyring)
    assert again.already_stored and again.pkgid == first.pkgid and again.files == 0
    assert store.header_path(first.pkgid).stat().st_mtime_ns == mtime
    assert [p.pkgid for p in store.packages()] == [first.pkgid]


def test_unsigned_only_with_opt_in(store_dir, rpm_packages, keyring):
    pkg = rpm_packages("nosig", "1", "1", [FileSpec("/usr/share/nosig", content=b"x")], signed=False)
    store = Store.open(store_dir, create=True)
    with pytest.raises(PackageRefused, match="UNSIGNED"):
        import_package(store, pkg, keyring)
    assert store.packages() == []
    result = import_package(store, pkg, keyring, allow_unsigned=True)
    assert result.unsigned
    assert store.unsigned_path(result.pkgid).exists()
    [sp] = store.packages()
    assert sp.unsigned and store.get(result.pkgid).unsigned
    assert import_package(store, pkg, keyring, allow_unsigned=True).unsigned


def test_unknown_owner_becomes_root_with_one_warning(store_dir, rpm_packages, keyring, expect_logs):
    files = [FileSpec("/usr/share/o/a", content=b"a", user="nosuchuser-usrview", group="nosuchgroup-usrview"),
             FileSpec("/usr/share/o/b", content=b"b", user="nosuchuser-usrview")]
    pkg = rpm_packages("owners", "1", "1", files)
    store = Store.open(store_dir, create=True)
    with expect_logs(r"unknown owners made root: user nosuchuser-usrview, group nosuchgroup-usrview"):
        result = import_package(store, pkg, keyring)
    st = os.lstat(store.package_dir(result.pkgid) / "usr/share/o/a")
    assert (st.st_uid, st.st_gid) == (0, 0)


def _dedupe_files(changed: bytes) -> list[FileSpec]:
    rng = hashlib.sha256(b"dedupe")
    files = []
    for i in range(5):
        rng.update(b"%d" % i)
        seed = rng.digest()
        data = b"".join(hashlib.sha256(seed + b"%d" % j).digest() for j in range(4 * MiB // 32))
        files.append(FileSpec(f"/usr/lib/big/part{i}", content=data))
    files.append(FileSpec("/usr/lib/big/changing", content=changed))
    return files


def test_dedupe_measured_on_btrfs(btrfs_dir, rpm_packages, keyring):
    """v2 shares 20 MiB with v1 and changes 4 MiB: btrfs counts about 4 MiB exclusive to it."""
    v1 = rpm_packages("big", "1", "1", _dedupe_files(b"1" * (4 * MiB)), compress="w0.ufdio")
    v2 = rpm_packages("big", "2", "1", _dedupe_files(b"2" * (4 * MiB)), compress="w0.ufdio")
    store = Store.open(btrfs_dir / "store", create=True)
    r1 = import_package(store, v1, keyring)
    assert r1.reflinked == 0
    store2 = Store.open(btrfs_dir / "store")  # a new process's view: index from the headers
    r2 = import_package(store2, v2, keyring)
    assert r2.reflinked == 5 and r2.bytes_reflinked == 20 * MiB and r2.bytes_written == 4 * MiB
    subprocess.run(["sync"], check=True)
    total1, excl1, _ = disk_usage_exclusive(store.package_dir(r1.pkgid))
    total2, excl2, _ = disk_usage_exclusive(store.package_dir(r2.pkgid))
    assert total1 == total2 == 24 * MiB
    # v2's own bytes: the changed file only (4 MiB), not 24 MiB
    assert 4 * MiB <= excl2 <= 4 * MiB + 256 * 1024, excl2
    assert excl1 <= 4 * MiB + 256 * 1024, excl1
    _, _, shared = disk_usage_exclusive(store.root / "packages")
    assert 20 * MiB <= shared <= 21 * MiB, shared


def test_no_reflinks_on_a_plain_directory(tmp_path, rpm_packages, keyring):
    if btrfs.is_btrfs(tmp_path):
        pytest.skip("tmp_path is on btrfs")
    v1 = rpm_packages("small", "1", "1", [FileSpec("/usr/lib/s/a", content=b"a" * 50000)])
    v2 = rpm_packages("small", "2", "1", [FileSpec("/usr/lib/s/a", content=b"a" * 50000)])
    store = Store.open(tmp_path / "store", create=True)
    import_package(store, v1, keyring)
    r2 = import_package(store, v2, keyring)
    assert r2.reflinked == 0 and r2.bytes_written == 50000 and store.reflinks is False


def test_reflinks_within_one_package_and_from_a_stored_one(btrfs_dir, rpm_packages, keyring):
    data = os.urandom(64 * 1024)
    same = [FileSpec("/usr/lib/t/one", content=data), FileSpec("/usr/lib/t/two", content=data)]
    store = Store.open(btrfs_dir / "store", create=True)
    r = import_package(store, rpm_packages("twins", "1", "1", same), keyring)
    assert r.reflinked == 1  # two has one's bytes (not a hardlink: its own inode)
    pdir = store.package_dir(r.pkgid)
    assert os.stat(pdir / "usr/lib/t/one").st_ino != os.stat(pdir / "usr/lib/t/two").st_ino
    assert (pdir / "usr/lib/t/two").read_bytes() == data


def test_corrupt_stored_source_is_not_reused(btrfs_dir, rpm_packages, keyring, expect_logs):
    data = os.urandom(64 * 1024)
    store = Store.open(btrfs_dir / "store", create=True)
    r1 = import_package(store, rpm_packages("src", "1", "1", [FileSpec("/usr/lib/x/f", content=data)]), keyring)
    # damage the stored copy behind the store's back
    pdir = store.package_dir(r1.pkgid)
    fd = os.open(pdir, os.O_RDONLY | os.O_DIRECTORY)
    btrfs.set_subvolume_readonly(fd, False)
    os.close(fd)
    with open(pdir / "usr/lib/x/f", "r+b") as f:
        f.write(b"XXXX")
    store = Store.open(btrfs_dir / "store")
    with expect_logs(r"does not match its header; not reusing it"):
        r2 = import_package(store, rpm_packages("dst", "1", "1", [FileSpec("/usr/lib/y/f", content=data)]),
                            keyring)
    assert r2.reflinked == 0
    assert (store.package_dir(r2.pkgid) / "usr/lib/y/f").read_bytes() == data


# -- the command ------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usrview.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "USRVIEW_CONFIG": "/dev/null"})


def test_cli_lines_and_exit_codes(tmp_path, rpm_packages, gpg_key):
    good = rpm_packages("rich", "1.0", "1", RICH_FILES)
    unsigned = rpm_packages("nosig", "1", "1", [FileSpec("/usr/share/nosig", content=b"x")], signed=False)
    store = tmp_path / "store"
    keys = ("--store", str(store), "--keys", str(gpg_key.public_path))
    r = run_cli("import", *keys, str(good))
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == f"{good}: imported rich-1.0-1.noarch ({len(RICH_FILES) - 2} files, 0 reflinked)\n"
    r = run_cli("import", *keys, str(good), str(unsigned))
    assert r.returncode == 1
    assert r.stdout == f"{good}: rich-1.0-1.noarch already stored\n"
    assert r.stderr.startswith(f"usrview: error: {unsigned}: signature check: UNSIGNED")
    assert len(r.stderr.splitlines()) == 1
    r = run_cli("import", *keys, "--allow-unsigned", str(unsigned))
    assert r.returncode == 0 and r.stdout.endswith("(1 files, 0 reflinked) [UNSIGNED]\n")
    r = run_cli("import", *keys, str(tmp_path / "missing.rpm"), str(good))
    assert r.returncode == 2
    assert r.stderr == f"usrview: error: {tmp_path / 'missing.rpm'}: cannot read {tmp_path / 'missing.rpm'}: " \
                       f"No such file or directory\n"
    assert r.stdout.endswith("already stored\n")


def test_cli_store_from_config(tmp_path, rpm_packages, gpg_key):
    good = rpm_packages("rich", "1.0", "1", RICH_FILES)
    cfg = tmp_path / "usrview.toml"
    cfg.write_text(f'store = "{tmp_path / "cfgstore"}"\nkeys = ["{gpg_key.public_path}"]\n')
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "import", "--config", str(cfg), str(good)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert len(Store.open(tmp_path / "cfgstore").packages()) == 1


def test_cli_refuses_a_store_of_another_version(tmp_path, rpm_packages, gpg_key):
    store = tmp_path / "store"
    Store.open(store, create=True)
    (store / "format").write_text("usrview-store 2\n")
    r = run_cli("import", "--store", str(store), "--keys", str(gpg_key.public_path),
                str(rpm_packages("rich", "1.0", "1", RICH_FILES)))
    assert r.returncode == 2
    assert r.stderr == f"usrview: error: {store} is a store of format version 2; this usrview reads " \
                       f"version 1 only\n"
