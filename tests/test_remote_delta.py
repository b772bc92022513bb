"""The file-level delta (issue 12 section 3): publish --file-objects, pull only the files the
store lacks, through nginx and the fault proxy; the package stored as an import of its rpm
stores it; wrong objects, kill -9, hostile names; the downloads' clean-up; pull's progress line.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from tests.btrfs_fixture import btrfs_dir  # noqa: F401 - a fixture
from tests.remote_servers import Rule, fault_proxy, nginx, port_of
from tests.rpmbuild import FileSpec
from tests.test_images import usrview
from tests.test_remote import big, do_publish, object_of, pull, snapshot
from usrview.faults import KILL_AT_ENV
from usrview.remote.downloads import STALE_SECONDS, clean_downloads, downloads_lock
from usrview.remote.index import (
    FILE_OBJECTS_DIR,
    IndexRefused,
    file_object_name,
    head_delta_name,
    head_object_name,
    index_path,
    parse_index,
)
from usrview.store import Store
from usrview.store.assemble import local_object_name
from verifier.header import read_package_file

REPO = Path(__file__).resolve().parents[1]


def dapp(version: str, changed: dict[str, bytes] | None = None) -> list[FileSpec]:
    """A package of every kind of entry: big files, a hard link, a symlink, a directory,
    an empty file, capabilities, set-uid, another owner."""
    contents = {"/usr/bin/dapp": big(11), "/usr/lib/dapp/a.so": big(12), "/usr/lib/dapp/b.so": big(13),
                "/usr/lib/dapp/c.dat": big(14, 100_000)} | (changed or {})
    return [FileSpec("/usr/bin/dapp", content=contents["/usr/bin/dapp"], mode=0o755),
            FileSpec("/usr/lib/dapp", "dir"),
            FileSpec("/usr/lib/dapp/a.so", content=contents["/usr/lib/dapp/a.so"], mode=0o755),
            FileSpec("/usr/lib/dapp/hard.so", "hardlink", target="/usr/lib/dapp/a.so", mode=0o755),
            FileSpec("/usr/lib/dapp/b.so", content=contents["/usr/lib/dapp/b.so"]),
            FileSpec("/usr/lib/dapp/c.dat", content=contents["/usr/lib/dapp/c.dat"]),
            FileSpec("/usr/bin/dapp-link", "symlink", target="dapp"),
            FileSpec("/usr/share/dapp", "dir", mode=0o750, user="daemon", group="bin"),
            FileSpec("/usr/share/dapp/README", content=f"dapp {version}\n".encode(), user="daemon", group="bin"),
            FileSpec("/usr/share/dapp/empty", content=b""),
            FileSpec("/usr/sbin/dapp-ping", content=big(15, 6000), mode=0o755, directives="%caps(cap_net_raw=ep)"),
            FileSpec("/usr/bin/dapp-suid", content=b"#!/bin/sh\nid\n", mode=0o4755)]


#: The files dapp 2.0 changes: two objects to fetch.
CHANGED = {"/usr/lib/dapp/b.so": big(23), "/usr/lib/dapp/c.dat": big(24, 100_000)}


@pytest.fixture(scope="module")
def drpms(rpm_packages):
    return {"v1": rpm_packages("dapp", "1.0", "1", dapp("1.0")),
            "v2": rpm_packages("dapp", "2.0", "1", dapp("2.0", CHANGED)),
            "md5": rpm_packages("dapp", "3.0", "1", dapp("3.0", CHANGED), digest_algo=1)}


def image_dir(tmp_path: Path, name: str, *rpms: Path) -> Path:
    d = tmp_path / "images" / name
    d.mkdir(parents=True)
    for rpm in rpms:
        os.link(rpm, d / rpm.name)
    return d


@pytest.fixture
def origin(tmp_path, drpms, gpg_key):
    """nginx serving a repository whose image ``stable`` is dapp 1.0, with file objects."""
    repo = tmp_path / "repo"
    do_publish(image_dir(tmp_path, "v1", drpms["v1"]), repo, gpg_key, "--file-objects")
    with nginx(tmp_path / "nginx", root=repo) as server:
        server.repo = repo
        yield server


def publish_v2(tmp_path, origin, drpms, gpg_key, which: str = "v2") -> None:
    r = do_publish(image_dir(tmp_path, which, drpms[which]), origin.repo, gpg_key, "--file-objects")
    assert "file objects:" in r.stdout


def changed_objects(origin) -> dict[str, Path]:
    """URL path -> file of the objects of dapp 2.0's changed files."""
    package = read_package_file(origin.repo / object_of(origin.repo, "dapp", 2).path)
    out = {}
    for f in package.files:
        if f.path in CHANGED:
            rel = f"{FILE_OBJECTS_DIR}/{file_object_name(f.digest_algo, f.digest)}"
            out[f"/{rel}"] = origin.repo / rel
    return out


# -- publish --------------------------------------------------------------------------------------

def test_publish_writes_each_file_once_as_a_compressed_object(tmp_path, origin, drpms, gpg_key):
    index = parse_index((origin.repo / index_path("stable", 1)).read_bytes())
    assert index.file_objects == FILE_OBJECTS_DIR
    package = read_package_file(drpms["v1"])
    objects = sorted((origin.repo / FILE_OBJECTS_DIR / "sha256").rglob("*.zst"))
    regular = {(f.digest_algo, f.digest) for f in package.files if f.digest and f.size}
    assert len(objects) == len(regular)  # the hard link's once, the empty file's none
    entry = object_of(origin.repo, "dapp")
    head = zstandard.ZstdDecompressor().decompress(
        (origin.repo / FILE_OBJECTS_DIR / head_object_name(entry.rpm_sha256)).read_bytes())
    assert head == drpms["v1"].read_bytes()[:entry.header_length]  # the rpm's header, compressed
    for f in package.files:
        if f.digest and f.size and f.path != "/usr/lib/dapp/hard.so":
            data = (origin.repo / FILE_OBJECTS_DIR / file_object_name(f.digest_algo, f.digest)).read_bytes()
            assert zstandard.ZstdDecompressor().decompress(data) == dict(
                (s.path, s.content) for s in dapp("1.0"))[f.path]
    r = do_publish(image_dir(tmp_path, "v2", drpms["v2"]), origin.repo, gpg_key, "--file-objects")
    assert "file objects: 3 new" in r.stdout, r.stdout  # b.so, c.dat and the README
    # a package whose digests are MD5 has no objects: pull fetches it whole
    r = do_publish(image_dir(tmp_path, "md5", drpms["md5"]), origin.repo, gpg_key, "--file-objects")
    assert "file objects: 0 new" in r.stdout, r.stdout


# -- pull ---------------------------------------------------------------------------------------

def test_second_image_fetches_only_the_missing_files(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    first = json.loads(pull(store, origin.url, gpg_key, "--json").stdout)
    assert first["assembled"] == [] and len(first["fetched"]) == 1  # all new: the rpm is cheaper
    publish_v2(tmp_path, origin, drpms, gpg_key)
    before = len(origin.requests())
    summary = json.loads(pull(store, origin.url, gpg_key, "--json").stdout)
    entry = object_of(origin.repo, "dapp", 2)
    assert summary["assembled"] == [entry.nevra] and summary["fetched"] == [entry.nevra]
    assert summary["file_objects"] == 3 and summary["fallbacks"] == []  # b.so, c.dat, README
    served = [r for r in origin.requests()[before:] if r[1].startswith("/objects/")]
    assert not [r for r in served if r[1] == f"/{entry.path}"]  # nothing of the rpm itself
    old = object_of(origin.repo, "dapp", 1)
    assert summary["head_deltas"] == [entry.nevra]  # the header as a delta from dapp 1.0's
    head = f"/{FILE_OBJECTS_DIR}/{head_delta_name(old.header_sha256, entry.rpm_sha256)}"
    objects = {r[1]: int(r[3]) for r in served if r[1].startswith(f"/{FILE_OBJECTS_DIR}/")}
    assert len(objects) == 4 and set(changed_objects(origin)) | {head} < set(objects), objects  # + README
    for path, sent in objects.items():
        assert sent == (origin.repo / path[1:]).stat().st_size
    assert objects[head] < entry.header_length
    assert summary["bytes_fetched"] == sum(objects.values()) < entry.size // 2
    assert not (store / "downloads" / "files").exists() and not list((store / "downloads").iterdir())
    assert usrview("verify", "--store", store, "--keys", gpg_key.public_path).returncode == 0


def listing(root: Path, listed: set[str]) -> dict[str, tuple]:
    """Everything of a package tree: type, mode, owner, size, mtime, content, xattrs, and
    which paths share an inode (hard links).  The mtime of a directory the header does not
    list (``listed``: its paths) is when the import made it: left out."""
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            content = (os.readlink(p) if os.path.islink(p) else
                       Path(p).read_bytes() if os.path.isfile(p) else None)
            xattrs = {} if os.path.islink(p) else {
                n: os.getxattr(p, n, follow_symlinks=False) for n in os.listxattr(p, follow_symlinks=False)}
            first = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else rel
            mtime = st.st_mtime_ns if "/" + rel in listed else None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, mtime, content, xattrs, st.st_nlink, first)
    return out


def test_assembled_package_is_stored_as_an_import_of_its_rpm(tmp_path, btrfs_dir, origin, drpms, gpg_key):  # noqa: F811
    pulled, imported = btrfs_dir / "pulled", btrfs_dir / "imported"
    pull(pulled, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    assert json.loads(pull(pulled, origin.url, gpg_key, "--json").stdout)["assembled"]
    usrview("deploy", "--store", imported, "--keys", gpg_key.public_path, image_dir(tmp_path, "d", drpms["v2"]))
    pkgid = next(p for p in os.listdir(imported / "packages"))
    assert pkgid in os.listdir(pulled / "packages")
    listed = {f.path for f in read_package_file(drpms["v2"]).files}
    tree = listing(pulled / "packages" / pkgid, listed)
    assert tree == listing(imported / "packages" / pkgid, listed)
    assert sum(t[4] is not None for t in tree.values()) == len(listed)
    assert tree["usr/sbin/dapp-ping"][6] and tree["usr/lib/dapp/hard.so"][8] == tree["usr/lib/dapp/a.so"][8]
    assert tree["usr/bin/dapp-suid"][0] & 0o4000
    assert (pulled / "headers" / f"{pkgid}.rpm").read_bytes() == (imported / "headers" / f"{pkgid}.rpm").read_bytes()
    for marker in ("unsigned", "legacy"):
        assert (pulled / marker / pkgid).exists() == (imported / marker / pkgid).exists()
    for store in (pulled, imported):  # the same verdict from verify, file by file
        r = usrview("verify", "--store", store, "--keys", gpg_key.public_path, "--full", "--json", check=None)
        assert r.returncode == 0, r.stdout + r.stderr
    # and the reused files share their extents with the stored dapp 1.0 (reflinked, not copied)
    r = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", str(pulled / "packages")],
                       capture_output=True, text=True, check=True)
    total, exclusive, shared = map(int, r.stdout.splitlines()[-1].split()[:3])
    assert shared >= 600_000, r.stdout


def test_wrong_object_is_refused_and_the_rpm_fetched_instead(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    path = next(iter(changed_objects(origin).values()))
    path.write_bytes(zstandard.ZstdCompressor().compress(big(99, 300_000)))  # valid zstd, wrong bytes
    before = snapshot(store)
    r = pull(store, origin.url, gpg_key, "--json")
    summary = json.loads(r.stdout)
    assert summary["fallbacks"] == summary["fetched"] and summary["assembled"] == []
    warnings = [line for line in r.stderr.splitlines() if "fetching the whole rpm" in line]
    assert len(warnings) == 1 and "do not match the header's digest" in warnings[0], r.stderr
    assert snapshot(store) != before
    assert usrview("verify", "--store", store, "--keys", gpg_key.public_path).returncode == 0


def test_wrong_bytes_everywhere_leave_the_store_unchanged(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    before = snapshot(store)
    rules = [Rule("/objects/files/", "corrupt", 100), Rule(".rpm", "corrupt", 100, after=1)]
    with fault_proxy(port_of(origin.url), rules) as proxy:  # the header right, then nothing right
        r = pull(store, proxy.url, gpg_key, check=2)
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and "fetching the whole rpm" in lines[0] and "dapp-2.0" in lines[1], r.stderr
    assert snapshot(store) == before


def test_mirror_serving_wrong_objects_fails_over_to_the_origin(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    with fault_proxy(port_of(origin.url), [Rule("/objects/files/", "corrupt", 100)]) as bad:
        r = pull(store, origin.url, gpg_key, "--mirror", bad.url, "--json")
    summary = json.loads(r.stdout)
    assert summary["assembled"] and summary["fallbacks"] == []
    assert "trying the next source" in r.stderr
    assert len([p for p, _, f in bad.seen if f == "corrupt" and "/heads/" not in p]) == 3


def test_kill_9_mid_delta_then_resume(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    before = snapshot(store)
    objects = list(changed_objects(origin))  # in the order pull fetches them: b.so, c.dat
    env = dict(os.environ, USRVIEW_CONFIG="/dev/null", PYTHONPATH=str(REPO))
    with fault_proxy(port_of(origin.url), [Rule(objects[1], "stall")]) as proxy:
        proc = subprocess.Popen([sys.executable, "-m", "usrview.cli", "pull", "--store", store, "--keys",
                                 gpg_key.public_path, "--jobs", "1", proxy.url], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not any(f == "stall" for _, _, f in proxy.seen) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert any(f == "stall" for _, _, f in proxy.seen)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert snapshot(store) == before
    first = read_package_file(origin.repo / object_of(origin.repo, "dapp", 2).path).files
    b_so = next(f for f in first if f.path == "/usr/lib/dapp/b.so")
    assert local_object_name(b_so.digest_algo, b_so.digest) in os.listdir(store / "downloads" / "files")
    with fault_proxy(port_of(origin.url)) as proxy:
        summary = json.loads(pull(store, proxy.url, gpg_key, "--json").stdout)
    assert summary["assembled"]
    fetched = [p for p, _, _ in proxy.seen if "/objects/" in p]
    assert objects[1] in fetched and objects[0] not in fetched  # the object fetched before stays
    assert not [p for p, _, _ in proxy.seen if p.endswith(".rpm") or "/heads/" in p]  # the header too


def test_kill_9_while_importing_an_assembled_package(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    before = snapshot(store)
    env = dict(os.environ, USRVIEW_CONFIG="/dev/null", PYTHONPATH=str(REPO), **{KILL_AT_ENV: "synced"})
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "pull", "--store", store, "--keys",
                        gpg_key.public_path, origin.url], env=env, cwd=REPO, capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL
    assert snapshot(store) == before
    n = len(origin.requests())
    summary = json.loads(pull(store, origin.url, gpg_key, "--json").stdout)
    assert summary["assembled"] and summary["file_objects"] == 0  # all there from the killed pull
    assert not [r for r in origin.requests()[n:] if r[1].startswith("/objects/")]


# -- header deltas --------------------------------------------------------------------------------

def head_requests(origin, since: int) -> tuple[list, list]:
    """The header deltas and the whole compressed headers served since request ``since``."""
    served = [r for r in origin.requests()[since:] if f"/{FILE_OBJECTS_DIR}/heads/" in r[1]]
    return [r for r in served if "/heads/deltas/" in r[1]], [r for r in served if "/heads/deltas/" not in r[1]]


def test_header_delta_from_the_stored_version(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    old, new = object_of(origin.repo, "dapp", 1), object_of(origin.repo, "dapp", 2)
    assert new.head_deltas == (old.header_sha256,)
    delta = origin.repo / FILE_OBJECTS_DIR / head_delta_name(old.header_sha256, new.rpm_sha256)
    whole = origin.repo / FILE_OBJECTS_DIR / head_object_name(new.rpm_sha256)
    assert delta.stat().st_size * 2 < whole.stat().st_size  # most of the header is the old one's
    n = len(origin.requests())
    summary = json.loads(pull(store, origin.url, gpg_key, "--json").stdout)
    assert summary["head_deltas"] == [new.nevra] and summary["assembled"] == [new.nevra]
    deltas, wholes = head_requests(origin, n)
    assert [(r[1], r[2]) for r in deltas] == [(f"/{delta.relative_to(origin.repo)}", "200")] and wholes == []
    assert usrview("verify", "--store", store, "--keys", gpg_key.public_path).returncode == 0


def test_header_delta_giving_another_header_is_refused(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    old, new = object_of(origin.repo, "dapp", 1), object_of(origin.repo, "dapp", 2)
    delta = origin.repo / FILE_OBJECTS_DIR / head_delta_name(old.header_sha256, new.rpm_sha256)
    v1_head = drpms["v1"].read_bytes()[:old.header_length]  # valid zstd, a header, of the wrong length
    delta.write_bytes(zstandard.ZstdCompressor().compress(v1_head + bytes(new.header_length - old.header_length)))
    n = len(origin.requests())
    r = pull(store, origin.url, gpg_key, "--json")
    summary = json.loads(r.stdout)
    assert summary["head_deltas"] == [] and summary["assembled"] == [new.nevra]
    assert "header delta refused" in r.stderr and "does not match the index" in r.stderr, r.stderr
    deltas, wholes = head_requests(origin, n)
    assert len(deltas) == 1 and len(wholes) == 1
    assert usrview("verify", "--store", store, "--keys", gpg_key.public_path).returncode == 0


def test_store_without_the_old_version_fetches_the_whole_header(tmp_path, origin, drpms, gpg_key):
    publish_v2(tmp_path, origin, drpms, gpg_key)
    n = len(origin.requests())
    summary = json.loads(pull(tmp_path / "store", origin.url, gpg_key, "--json").stdout)
    assert summary["head_deltas"] == []
    deltas, wholes = head_requests(origin, n)
    assert deltas == [] and len(wholes) == 1


@pytest.mark.parametrize("deltas", [["../../../etc/passwd"], ["A" * 64], ["a" * 63], "a" * 64, [7], None])
def test_hostile_header_delta_names_are_refused(deltas):
    package = {"nevra": "dapp-2.0-1.x86_64", "header_sha256": "a" * 64, "rpm_sha256": "b" * 64, "size": 100,
               "header_length": 50, "path": "objects/sha256/bb/x.rpm", "head_deltas": deltas}
    doc = {"format": 1, "name": "stable", "serial": 1, "issued": "2026-01-01T00:00:00Z",
           "expires": "2026-02-01T00:00:00Z", "packages": [package]}
    with pytest.raises(IndexRefused, match="head_deltas"):
        parse_index(json.dumps(doc).encode())
    with pytest.raises(ValueError):
        head_delta_name("../" + "a" * 61, "b" * 64)


# -- hostile names -------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["../outside", "/etc", "objects/../../x", "a//b", "", 7])
def test_file_objects_directory_outside_the_repository_is_refused(where):
    doc = {"format": 1, "name": "stable", "serial": 1, "issued": "2026-01-01T00:00:00Z",
           "expires": "2026-02-01T00:00:00Z", "packages": [], "file_objects": where}
    with pytest.raises(IndexRefused, match="file_objects"):
        parse_index(json.dumps(doc).encode())


@pytest.mark.parametrize("algo, digest", [(8, "../../../etc/passwd"), (8, "A" * 64), (8, "a" * 63),
                                          (1, "a" * 32), (2, "a" * 40), (8, "a" * 63 + "/"), (99, "a" * 64)])
def test_digests_that_cannot_name_an_object(algo, digest):
    assert file_object_name(algo, digest) is None
    if "/" in digest or "." in digest or digest != digest.lower():
        assert local_object_name(algo, digest) is None


def test_package_with_md5_digests_is_fetched_whole(tmp_path, origin, drpms, gpg_key):
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key, "md5")
    summary = json.loads(pull(store, origin.url, gpg_key, "--json").stdout)
    assert summary["assembled"] == [] and len(summary["fetched"]) == 1 and summary["file_objects"] == 0


# -- the downloads ---------------------------------------------------------------------------------

def test_stale_downloads_go_and_those_to_resume_stay(tmp_path, drpms, gpg_key):
    store_dir = tmp_path / "store"
    usrview("import", "--store", store_dir, "--keys", gpg_key.public_path, drpms["v1"])
    store = Store.open(store_dir)
    with downloads_lock(store):
        d = store.downloads_dir
        (d / "a.rpm").write_bytes(drpms["v1"].read_bytes())            # stored now
        (d / "b.part").write_bytes(drpms["v2"].read_bytes()[:5000])     # to resume
        (d / "c.part").write_bytes(drpms["v2"].read_bytes()[:100])      # abandoned long ago
        old = time.time() - STALE_SECONDS - 60
        os.utime(d / "c.part", (old, old))
        (d / "files").mkdir()
        (d / "files" / ("sha256-" + "a" * 64)).write_bytes(b"x")
        result = clean_downloads(store)
        assert sorted(result.removed) == ["a.rpm", "c.part", "files"]
        assert os.listdir(d) == ["b.part"]
    r = usrview("gc", "--store", store_dir)
    assert "removed 1 download(s)" in r.stdout and not os.listdir(store.downloads_dir)
    with downloads_lock(store):  # a pull running: gc leaves its downloads
        (store.downloads_dir / "b.part").write_bytes(b"partial")
        assert "kept the downloads: a pull is running" in usrview("gc", "--store", store_dir).stdout
        assert os.listdir(store.downloads_dir) == ["b.part"]


# -- progress and summary ---------------------------------------------------------------------------

def _run_on_terminal(args: list) -> tuple[int, str, str]:
    """The CLI with its stderr on a pseudo-terminal: (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    env = dict(os.environ, USRVIEW_CONFIG="/dev/null", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "usrview.cli", *map(str, args)], env=env, cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            shown += data
        out = proc.stdout.read().decode()
        return proc.wait(timeout=120), out, shown.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_progress_on_a_terminal_and_silence_elsewhere(tmp_path, origin, gpg_key):
    args = ["pull", "--store", tmp_path / "s1", "--keys", gpg_key.public_path, "--json", origin.url]
    rc, out, shown = _run_on_terminal(args)
    assert rc == 0, shown
    assert "pull: 1/1 packages, " in shown and " MB/s, " in shown and " s left" in shown, shown
    assert shown.rstrip().endswith("\x1b[K")  # the line is cleared at the end
    summary = json.loads(out)
    for field in ("name", "serial", "expires", "packages", "fetched", "resumed", "already_stored",
                  "bytes_fetched", "assembled", "file_objects", "fallbacks", "image", "previous",
                  "already_current", "imported"):
        assert field in summary, field
    r = pull(tmp_path / "s2", origin.url, gpg_key, "--json")  # stderr a pipe: nothing of it
    assert "pull:" not in r.stderr and "\r" not in r.stderr
