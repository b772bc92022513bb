"""``usrview verify``: tamper scenarios, each reported exactly, and rpm -Va as the oracle.

The same packages are deployed into a store (a plain directory under tmp_path,
so its package directories are writable) and installed with ``rpm --root R -i``;
each scenario applies the same change to both trees and requires our file lines
to equal ``rpm -Va``'s.  Scenarios rpm has no counterpart for (an unowned file,
header files, the image record) are checked against the exact expected output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import rpmbuild
from tests.prereq import require_privileged, require_tools
from tests.rpmbuild import FileSpec
from tests.viewstore import deploy_store
from usrview import images, verify
from usrview.cli._common import load_keyring
from usrview.errors import OperationalError
from usrview.verify import check, unowned, workers
from verifier.fileio import HASH_CHUNK, hash_fd
from verifier.header import read_package_file

MAIN_FILES = [
    FileSpec("/usr/bin/tool", content=b"#!/bin/sh\necho tool\n" * 400, mode=0o755),
    FileSpec("/usr/share/tool", kind="dir"),
    FileSpec("/usr/share/tool/data", content=bytes(range(256)) * 64),
    FileSpec("/usr/share/tool/small", content=b"small\n"),
    FileSpec("/usr/lib/libtool.so", kind="symlink", target="libtool.so.1"),
    FileSpec("/usr/lib/libtool.so.1", content=b"\x7fELF" + b"\0" * 5000),
    FileSpec("/usr/share/doc/tool/README", content=b"read me\n", directives="%doc"),
    FileSpec("/etc/tool.conf", content=b"setting = 1\n", directives="%config(noreplace)"),
]
CAPS_FILES = [FileSpec("/usr/bin/pinger", content=b"\x7fELF pinger" * 100, mode=0o755,
                       directives="%caps(cap_net_raw=ep)")]
OTHER_FILES = [FileSpec("/usr/share/other/file", content=b"other\n")]


def _rpm_va(root: Path) -> list[str]:
    r = subprocess.run([*rpmbuild.rpm_root_cmd(root), "-Va", "--nodeps", "--noscripts"],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    assert not r.stderr.strip(), r.stderr
    return r.stdout.decode("utf-8", "surrogateescape").splitlines()


class World:
    """A store and an rpm root holding the same packages."""

    def __init__(self, tmp_path: Path, rpms: list[Path], key):
        self.rpms = rpms
        self.store, self.image = deploy_store(tmp_path / "store", rpms, key)
        self.keyring = load_keyring([key.public_path])
        self.key = key
        self.rpm_root = tmp_path / "rpmroot"
        rpmbuild.rpm_root_install(self.rpm_root, rpms)
        self.pkgids = {p.rsplit("-", 4)[0]: p for p in self.image.packages}

    def pkgdir(self, name: str) -> Path:
        return self.store.package_dir(self.pkgids[name])

    def both(self, name: str):
        """The trees to tamper with: the package's store directory and the rpm root."""
        return (self.pkgdir(name), self.rpm_root)

    def verify(self, **kw) -> verify.Report:
        kw.setdefault("jobs", 2)
        return verify.run(self.store, self.keyring, **kw)

    def file_lines(self, report) -> list[str]:
        return [f.line for f in report.findings if f.kind in ("file", "missing")]


@pytest.fixture
def world(tmp_path, rpm_packages, gpg_key):
    require_privileged("owners, modes and capabilities as rpm -i makes them")
    require_tools("rpm")
    rpms = [rpm_packages("tool", "1.0", "1", MAIN_FILES), rpm_packages("other", "2.0", "1", OTHER_FILES)]
    return World(tmp_path, rpms, gpg_key)


def test_clean_store_is_clean_and_equals_rpm(world):
    report = world.verify()
    assert report.findings == [] and report.exit_code == 0
    assert _rpm_va(world.rpm_root) == []
    assert report.stats.files == len(MAIN_FILES) + len(OTHER_FILES)


def _bytes(root):
    p = root / "usr/share/tool/data"
    st = p.stat()
    p.write_bytes(b"X" * st.st_size)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _size(root):
    with open(root / "usr/bin/tool", "ab") as f:
        f.write(b"# more\n")


def _mode(root):
    os.chmod(root / "usr/bin/tool", 0o4755)


def _owner(root):
    os.chown(root / "usr/share/tool/small", 1, -1)


def _group(root):
    os.chown(root / "usr/share/tool/small", -1, 1)


def _mtime(root):
    os.utime(root / "usr/share/tool/data", (1, 1))


def _link(root):
    p = root / "usr/lib/libtool.so"
    p.unlink()
    p.symlink_to("/tmp/evil.so")
    os.utime(p, (1_700_000_000, 1_700_000_000), follow_symlinks=False)


def _deleted(root):
    (root / "usr/share/doc/tool/README").unlink()


def _config(root):
    (root / "etc/tool.conf").write_text("setting = 2\n")


def _dir_mode(root):
    os.chmod(root / "usr/share/tool", 0o777)


def _replaced_by_dir(root):
    p = root / "usr/share/tool/small"
    p.unlink()
    p.mkdir()


TAMPER = {
    "bytes": (_bytes, ["..5......    /usr/share/tool/data"]),
    "size": (_size, ["S.5....T.    /usr/bin/tool"]),
    "mode": (_mode, [".M.......    /usr/bin/tool"]),
    "owner": (_owner, [".....U...    /usr/share/tool/small"]),
    "group": (_group, ["......G..    /usr/share/tool/small"]),
    "mtime": (_mtime, [".......T.    /usr/share/tool/data"]),
    "symlink target": (_link, ["....L....    /usr/lib/libtool.so"]),
    "deleted": (_deleted, ["missing   d /usr/share/doc/tool/README"]),
    "config": (_config, ["..5....T.  c /etc/tool.conf"]),
    "directory mode": (_dir_mode, [".M.......    /usr/share/tool"]),
    "replaced by a directory": (_replaced_by_dir, [".M...U...    /usr/share/tool/small"]),
}


@pytest.mark.parametrize("name", list(TAMPER))
def test_tamper_equals_rpm_va(world, name):
    tamper, expected = TAMPER[name]
    for root in world.both("tool"):
        tamper(root)
    report = world.verify()
    ours = world.file_lines(report)
    theirs = _rpm_va(world.rpm_root)
    assert ours == theirs
    if name == "replaced by a directory":  # mtime of a fresh dir: whatever rpm says is what we say
        assert len(ours) == 1 and ours[0].endswith("/usr/share/tool/small")
    else:
        assert ours == expected
    assert report.exit_code == 1
    assert all(f.package == world.pkgids["tool"] for f in report.findings)
    # --full (no cache) says the same
    assert world.file_lines(world.verify(full=True)) == ours


def test_bytes_finding_has_digests(world):
    _bytes(world.pkgdir("tool"))
    (f,) = world.verify().findings
    assert f.expected.startswith("sha256:") and f.actual.startswith("sha256:") and f.expected != f.actual
    assert f.flags == "..5......" and f.marker == " "


def test_capabilities(tmp_path, rpm_packages, gpg_key):
    """A capability set changed on the stored file shows P, as rpm -Va shows it."""
    require_privileged("security.capability needs CAP_SETFCAP")
    rpm = rpm_packages("caps", "1.0", "1", CAPS_FILES)
    w = World(tmp_path, [rpm], gpg_key)
    for root in w.both("caps"):
        subprocess.run(["setcap", "cap_sys_admin=ep", str(root / "usr/bin/pinger")], check=True)
    ours = w.file_lines(w.verify())
    assert ours == _rpm_va(w.rpm_root) == ["........P    /usr/bin/pinger"]


def test_capabilities_clean_after_import(tmp_path, rpm_packages, gpg_key):
    require_privileged("security.capability")
    w = World(tmp_path, [rpm_packages("caps", "1.0", "1", CAPS_FILES)], gpg_key)
    assert _rpm_va(w.rpm_root) == []
    assert w.verify().findings == []


def test_extra_file_is_unowned(world):
    d = world.pkgdir("tool")
    (d / "usr/bin/backdoor").write_bytes(b"evil")
    (d / "usr/share/evil").mkdir()
    (d / "usr/share/evil/inside").write_bytes(b"evil")
    report = world.verify()
    assert [(f.kind, f.line) for f in report.findings] == [
        ("unowned", "unowned     /usr/bin/backdoor"),
        ("unowned", "unowned     /usr/share/evil"),
    ]
    assert report.exit_code == 1


def edit_header(world: World, name: str = "tool") -> None:
    """Flip a byte of a string inside package ``name``'s stored main header (its name)."""
    hp = world.store.header_path(world.pkgids[name])
    data = bytearray(hp.read_bytes())
    pkg = read_package_file(hp)
    i = bytes(data).rindex(pkg.name.encode(), 0, pkg.payload_offset)
    data[i] ^= 0x20
    hp.write_bytes(bytes(data))


def resign_header(world: World, tmp_path: Path, rpm: Path, name: str = "tool") -> None:
    """Replace package ``name``'s stored header with the same package's (``rpm``) re-signed
    by a new key the keyring does not hold."""
    require_tools("rpmsign")
    other_key = rpmbuild.make_gpg_key(tmp_path / "gpg-untrusted")
    try:
        copy = tmp_path / "resigned.rpm"
        shutil.copy2(rpm, copy)
        subprocess.run(["rpmsign", "--delsign", str(copy)], check=True, capture_output=True)
        rpmbuild.sign_rpm(copy, other_key)
    finally:
        rpmbuild.stop_gpg_agent(other_key)
    pkg = read_package_file(copy)
    world.store.header_path(world.pkgids[name]).write_bytes(copy.read_bytes()[:pkg.payload_offset])


def test_header_edited(world):
    edit_header(world)
    report = world.verify()
    kinds = [(f.kind, f.package) for f in report.findings]
    assert kinds and all(k == ("header", world.pkgids["tool"]) for k in kinds)
    assert report.findings[0].actual == "BAD"
    assert report.exit_code == 1


def test_header_missing(world):
    world.store.header_path(world.pkgids["other"]).unlink()
    report = world.verify()
    lines = [f.line for f in report.findings]
    assert f"image     {world.image.id}.json: names {world.pkgids['other']}, which is not in the store" in lines


def test_header_signed_by_untrusted_key(world, tmp_path):
    """The same header, re-signed with a key the keyring does not hold: NOKEY, files not checked."""
    resign_header(world, tmp_path, world.rpms[0])   # the tool package deployed (built once)
    _bytes(world.pkgdir("tool"))  # not reported: an untrusted header says nothing about files
    report = world.verify()
    assert [(f.kind, f.actual) for f in report.findings] == [("header", "NOKEY")]
    assert report.findings[0].line.startswith(f"header    {world.pkgids['tool']}: NOKEY")


def edit_image(world: World) -> None:
    """Drop package other from the image record (its id no longer matches its list)."""
    path = images.image_path(world.store, world.image.id)
    data = json.loads(path.read_text())
    data["packages"] = [world.pkgids["tool"]]
    path.write_text(json.dumps(data))


def test_image_record_edited(world):
    edit_image(world)
    path = images.image_path(world.store, world.image.id)
    report = world.verify()
    assert [f.kind for f in report.findings] == ["image"]
    assert "package list does not match the image id" in report.findings[0].line
    path.write_text("{not json")
    report = world.verify()
    assert [f.kind for f in report.findings] == ["image"] and report.exit_code == 1


def test_unsigned_marker_disagrees(world):
    (world.store.root / "unsigned" / world.pkgids["other"]).touch()
    report = world.verify()
    assert [f.kind for f in report.findings] == ["image"]
    assert "recorded signed, the store says unsigned" in report.findings[0].line


def test_filters(world):
    _size(world.pkgdir("tool"))
    _deleted(world.pkgdir("tool"))
    assert world.file_lines(world.verify(filters=["/usr/bin/tool"])) == ["S.5....T.    /usr/bin/tool"]
    assert world.file_lines(world.verify(filters=["/usr/share/doc"])) == [
        "missing   d /usr/share/doc/tool/README"]
    assert world.verify(filters=["other"]).findings == []
    assert len(world.verify(filters=["tool-1.0-1.noarch"]).findings) == 2
    r = world.verify(filters=["nosuch"])
    assert r.exit_code == 2 and r.errors == ["package nosuch is not in image " + world.image.id]
    r = world.verify(filters=["/usr/bin/nosuch"])
    assert r.exit_code == 2


def test_jobs_one_equals_jobs_two(world):
    _size(world.pkgdir("tool"))
    _owner(world.pkgdir("tool"))
    assert world.file_lines(world.verify(jobs=1, full=True)) == world.file_lines(world.verify(jobs=2, full=True))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "usrview.cli", "verify", *args], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], env=env, timeout=300)


def test_cli_text_json_exit_codes(world):
    base = ["--store", str(world.store.root), "--keys", str(world.key.public_path)]
    r = _cli(*base)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    _mode(world.pkgdir("tool"))
    r = _cli(*base)
    assert (r.returncode, r.stdout) == (1, ".M.......    /usr/bin/tool\n")
    assert r.stderr == ""  # no progress line when stderr is not a terminal
    r = _cli(*base, "--json")
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert objs[0]["kind"] == "file" and objs[0]["path"] == "/usr/bin/tool" and objs[0]["flags"] == ".M......."
    assert objs[-1]["summary"] is True and objs[-1]["findings"] == 1 and objs[-1]["status"] == 1
    r = _cli("--store", str(world.store.root / "nope"), "--keys", str(world.key.public_path))
    assert r.returncode == 2 and r.stderr.startswith("usrview: error:")


# -- how it is fast: each shortcut is checked against the slow way -----------------------

DUP_CONTENT = bytes(range(256)) * 512   # 128 KiB: above DEDUPE_MIN_SIZE, reflinked by deploy
DUP_FILES = [FileSpec("/usr/share/dup/a", content=DUP_CONTENT)]
DUP2_FILES = [FileSpec("/usr/share/dup2/b", content=DUP_CONTENT)]


@pytest.fixture
def bworld(btrfs_dir, rpm_packages, gpg_key):
    """Three packages on btrfs (read-only subvolumes, as deploy makes them); two hold the
    same 128 KiB file, which deploy reflinks."""
    require_privileged("owners, modes and capabilities as rpm -i makes them")
    require_tools("rpm", "btrfs")
    rpms = [rpm_packages("tool", "1.0", "1", MAIN_FILES), rpm_packages("dup", "1.0", "1", DUP_FILES),
            rpm_packages("dupe", "1.0", "1", DUP2_FILES)]
    return World(btrfs_dir, rpms, gpg_key)


def _writable(d, writable=True):
    subprocess.run(["btrfs", "property", "set", "-ts", str(d), "ro", "false" if writable else "true"],
                   check=True, capture_output=True)


def test_reflinked_file_of_two_packages_is_hashed_once(bworld):
    """The same extents in two packages' subvolumes (each with its own st_dev): one hash."""
    full = bworld.verify(full=True)
    assert full.findings == [] and full.stats.deduped_files == 1
    single = bworld.verify(full=True, filters=["dup"])
    assert full.stats.hashed_files == len(MAIN_FILES) - 2 + 1 and single.stats.hashed_files == 1
    d = bworld.pkgdir("dupe")
    _writable(d)
    with open(d / "usr/share/dup2/b", "r+b") as f:   # one copy changed in place: its own extent now
        f.write(b"X")
    _writable(d, False)
    for r in (bworld.verify(full=True), bworld.verify(full=True, jobs=1)):
        assert [f.line for f in r.findings] == ["..5....T.    /usr/share/dup2/b"]
        assert r.stats.deduped_files == 0


def test_unowned_on_btrfs_equals_a_full_listing(bworld):
    """The directory-size shortcut (btrfs) finds exactly what listing every directory
    finds, also when a listed name is renamed to a shorter one and an unlisted one of the
    same total length is added (the size is then as expected)."""
    d = bworld.pkgdir("tool")
    _writable(d)
    (d / "usr/share/tool/small").rename(d / "usr/share/tool/smal")   # 1 byte shorter
    (d / "usr/share/tool/x").write_bytes(b"")                       # 1 byte name more
    (d / "usr/share/evil").mkdir()
    (d / "usr/share/evil/inside").write_bytes(b"evil")
    _writable(d, False)
    report = bworld.verify(full=True)
    assert [f.line for f in report.findings] == [
        "missing     /usr/share/tool/small",
        "unowned     /usr/share/evil",
        "unowned     /usr/share/tool/smal",
        "unowned     /usr/share/tool/x",
    ]
    pkgid = bworld.pkgids["tool"]
    pkg = read_package_file(bworld.store.header_path(pkgid))
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        lstats = {}
        for e in pkg.files:
            try:
                lstats[e.path] = os.stat(e.path.lstrip("/"), dir_fd=fd, follow_symlinks=False)
            except OSError:
                lstats[e.path] = None
        listed = unowned.unowned_paths(fd, pkg.files, lstats, btrfs=False)
        assert unowned.unowned_paths(fd, pkg.files, lstats, btrfs=True) == listed == [
            "/usr/share/evil", "/usr/share/tool/smal", "/usr/share/tool/x"]
        assert unowned.unowned_paths(fd, pkg.files, {}, btrfs=True) == listed   # lstat done there
    finally:
        os.close(fd)


def test_unowned_shortcut_reads_no_directory_of_a_clean_package(bworld, monkeypatch):
    listed = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda d: listed.append(d) or real(d))
    assert bworld.verify(full=True, jobs=1).findings == []
    assert [d for d in listed if isinstance(d, int)] == []   # package directories, by fd


def test_cold_files_are_read_ahead(world, monkeypatch):
    """A file whose pages are not cached starts the read-ahead of the package's other
    files; the results are those of a warm run."""
    started = []

    class Recorder(check.Prefetcher):
        def start(self):
            started.append(list(self.relpaths))
            super().start()

    monkeypatch.setattr(check, "Prefetcher", Recorder)
    _bytes(world.pkgdir("tool"))
    warm = [f.line for f in world.verify(full=True, jobs=1).findings]
    assert started == []
    fd = os.open(world.pkgdir("tool") / "usr/bin/tool", os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # clean pages: dropped
    os.close(fd)
    assert [f.line for f in world.verify(full=True, jobs=1).findings] == warm == [
        "..5......    /usr/share/tool/data"]
    assert started and "usr/share/tool/data" in started[0] and "usr/bin/tool" not in started[0]


def test_prefetcher_opens_only_regular_files(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    os.mkfifo(tmp_path / "fifo")          # an open without O_NONBLOCK would wait forever
    (tmp_path / "link").symlink_to("f")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        p = check.Prefetcher(fd, ["fifo", "link", "f", "nosuch"])
        p.start()
        p.join(10)
        assert not p.is_alive()
    finally:
        os.close(fd)


def test_hash_fd_reads_to_the_end_whatever_size_it_is_told(tmp_path):
    import hashlib
    data = os.urandom(3 * HASH_CHUNK + 5)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        for size in (None, len(data), 10, len(data) + 10, HASH_CHUNK):
            assert hash_fd(fd, "sha256", size=size) == (hashlib.sha256(data).hexdigest(), len(data))
        cold = []
        os.fsync(fd)   # clean pages, which DONTNEED drops
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert hash_fd(fd, "sha256", on_cold=lambda: cold.append(1))[0] == hashlib.sha256(data).hexdigest()
        assert cold == [1]
    finally:
        os.close(fd)


def test_split_balances_by_size():
    bins = workers.split_by_size([(100, "a"), (60, "b"), (50, "c"), (10, "d"), (0, "e")], 2)
    assert bins == [["a", "d", "e"], ["b", "c"]]   # 110 bytes each
    assert workers.split_by_size([(1, "x")], 3) == [["x"], [], []]


def test_worker_errors_are_raised_not_hung(world, monkeypatch):
    real = check.check_package

    def failing(ctx, pkgid, unsigned):
        if pkgid.startswith("other"):
            raise ValueError("boom")
        return real(ctx, pkgid, unsigned)

    monkeypatch.setattr(check, "check_package", failing)
    with pytest.raises(RuntimeError, match="ValueError: boom"):
        world.verify(jobs=2, full=True)

    def dying(ctx, pkgid, unsigned):
        os._exit(3)

    monkeypatch.setattr(check, "check_package", dying)
    with pytest.raises(OperationalError, match="died"):
        world.verify(jobs=2, full=True)
