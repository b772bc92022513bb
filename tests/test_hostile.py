"""Hostile and broken packages, signed by the test key: each refused, the store unchanged.

Two kinds of input, both real signed rpms that ``rpmkeys`` would call good:

- rpmbuild packages whose payload was replaced by a hand-made cpio (the header
  signature covers the header only, so it stays GOOD): names that climb out,
  absolute names, duplicates, extra members, wrong bytes, truncation, a
  missing file;
- synthetic headers (tests/hdrbuild.py) listing hostile *paths* -- ``..``,
  relative, not normalized, a symlink with a file beneath it, a path twice --
  assembled as lead + signature header + header + payload and signed with
  ``rpmsign --addsign``.

After each refusal: exit code 1, one line on stderr, no traceback, and the
store's listing (modes, owners, sizes, mtimes, hashes) is what it was.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hdrbuild, rpmbuild
from tests.btrfs_fixture import tree_listing
from tests.rpmbuild import FileSpec
from verifier import sigcheck
from verifier.header import read_package_file
from verifier.keyring import Keyring
from verifier.tags import SigTag, Tag, TagType

MODES = {"file": 0o100644, "dir": 0o40755, "symlink": 0o120777}
SHA256_ALGO = 8
PAYLOAD_DIGEST_ALGO = 8


# -- cpio and package assembly ----------------------------------------------------------

def newc(name: str, data: bytes = b"", mode: int = 0o100644, size: int | None = None) -> bytes:
    """One cpio "newc" member, padded as rpm writes it."""
    raw = name.encode() + b"\0"
    fields = (0, mode, 0, 0, 1, 0, len(data) if size is None else size, 0, 0, 0, 0, len(raw), 0)
    head = b"070701" + b"".join(b"%08x" % v for v in fields) + raw
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def cpio(*members: bytes, trailer: bool = True) -> bytes:
    return b"".join(members) + (newc("TRAILER!!!", mode=0) if trailer else b"")


def replace_payload(src: Path, dest: Path, payload: bytes) -> Path:
    """``src`` with its payload replaced (gzip-compressed, as rpmbuild's default declares)."""
    pkg = read_package_file(src)
    data = src.read_bytes()
    dest.write_bytes(data[:pkg.payload_offset] + gzip.compress(payload, mtime=0))
    return dest


def synthetic_rpm(dest: Path, files: list[tuple], payload_members: bytes, key) -> Path:
    """A signed package whose header lists ``files`` -- (path, kind, data, target) -- as given.

    The header is written by tests/hdrbuild.py (rpmbuild refuses such paths), the
    signature by ``rpmsign --addsign``.
    """
    dirs: list[str] = []
    basenames, dirindexes = [], []
    for path, *_ in files:
        d, _, b = path.rpartition("/")
        d += "/"
        if d not in dirs:
            dirs.append(d)
        basenames.append(b)
        dirindexes.append(dirs.index(d))
    payload = gzip.compress(cpio(payload_members), mtime=0)
    entries = [
        (Tag.NAME, TagType.STRING, "hostile"),
        (Tag.VERSION, TagType.STRING, "1"),
        (Tag.RELEASE, TagType.STRING, "1"),
        (Tag.ARCH, TagType.STRING, "noarch"),
        (Tag.OS, TagType.STRING, "linux"),
        (Tag.SOURCERPM, TagType.STRING, "hostile-1-1.src.rpm"),
        (Tag.BASENAMES, TagType.STRING_ARRAY, basenames),
        (Tag.DIRNAMES, TagType.STRING_ARRAY, dirs),
        (Tag.DIRINDEXES, TagType.INT32, dirindexes),
        (Tag.FILESIZES, TagType.INT32, [len(data) if kind == "file" else len(target.encode())
                                        if kind == "symlink" else 4096 for _, kind, data, target in files]),
        (Tag.FILEMODES, TagType.INT16, [MODES[kind] for _, kind, _, _ in files]),
        (Tag.FILEMTIMES, TagType.INT32, [rpmbuild.STAGED_MTIME] * len(files)),
        (Tag.FILEDIGESTS, TagType.STRING_ARRAY, [hashlib.sha256(data).hexdigest() if kind == "file" else ""
                                                  for _, kind, data, _ in files]),
        (Tag.FILEDIGESTALGO, TagType.INT32, [SHA256_ALGO]),
        (Tag.FILELINKTOS, TagType.STRING_ARRAY, [target for *_, target in files]),
        (Tag.FILEFLAGS, TagType.INT32, [0] * len(files)),
        (Tag.FILEUSERNAME, TagType.STRING_ARRAY, ["root"] * len(files)),
        (Tag.FILEGROUPNAME, TagType.STRING_ARRAY, ["root"] * len(files)),
        (Tag.FILEINODES, TagType.INT32, list(range(1, len(files) + 1))),
        (Tag.FILEDEVICES, TagType.INT32, [1] * len(files)),
        (Tag.PAYLOADFORMAT, TagType.STRING, "cpio"),
        (Tag.PAYLOADCOMPRESSOR, TagType.STRING, "gzip"),
        (Tag.PAYLOADDIGEST, TagType.STRING_ARRAY, [hashlib.sha256(payload).hexdigest()]),
        (Tag.PAYLOADDIGESTALGO, TagType.INT32, [PAYLOAD_DIGEST_ALGO]),
    ]
    main = hdrbuild.build_header(entries)
    sig = [(SigTag.SIZE, TagType.INT32, [len(main) + len(payload)]),
           (SigTag.SHA256, TagType.STRING, hashlib.sha256(main).hexdigest()),
           (SigTag.SHA1, TagType.STRING, hashlib.sha1(main).hexdigest())]
    dest.write_bytes(hdrbuild.build_package(main, sig, payload))
    rpmbuild.sign_rpm(dest, key)
    return dest


# -- fixtures ---------------------------------------------------------------------------

BASE_FILES = [
    FileSpec("/usr/bin/tool", content=b"#!/bin/sh\necho tool\n" * 300, mode=0o755),
    FileSpec("/usr/share/doc/tool/README", content=b"readme\n"),
    FileSpec("/usr/share/doc/tool", kind="dir"),
]


@pytest.fixture
def base_rpm(rpm_packages) -> Path:
    return rpm_packages("tool", "1.0", "1", BASE_FILES)


@pytest.fixture
def env(store_dir, gpg_key, rpm_packages, tmp_path):
    """A store holding one package, and a function running ``usrview import`` on it."""
    store_dir.parent.mkdir(parents=True, exist_ok=True)
    other = rpm_packages("other", "2.0", "1", [FileSpec("/usr/lib/other/data", content=os.urandom(20000))])

    def run(*pkgs: Path, extra=()) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "usrview.cli", "import", "--store", str(store_dir),
             "--keys", str(gpg_key.public_path), *extra, *map(str, pkgs)],
            capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "USRVIEW_CONFIG": "/dev/null"})

    r = run(other)
    assert r.returncode == 0, r.stderr
    return run


def assert_refused(env, store_dir: Path, pkg: Path, *words: str) -> str:
    before = tree_listing(store_dir)
    r = env(pkg)
    err = r.stderr.strip()
    assert r.returncode == 1, (r.returncode, r.stdout, err)
    assert r.stdout == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"usrview: error: {pkg}: "), err
    for word in words:
        assert word in err, (word, err)
    assert tree_listing(store_dir) == before
    assert os.listdir(store_dir / "tmp") == []
    return err


def keyring(gpg_key) -> Keyring:
    return Keyring.load([gpg_key.public_path])


# -- payload-only changes to a signed rpmbuild package -----------------------------------

TOOL = BASE_FILES[0].content
README = BASE_FILES[1].content


def good_members() -> list[bytes]:
    return [newc("./usr/bin/tool", TOOL, 0o100755), newc("./usr/share/doc/tool/README", README),
            newc("./usr/share/doc/tool", mode=0o40755)]


@pytest.mark.parametrize("case, members, words", [
    ("traversal", [*good_members(), newc("../../etc/evil", b"x")], ["../../etc/evil", "not in the header"]),
    ("absolute", [newc("/etc/passwd", b"root::0:0::/:/bin/sh\n"), *good_members()],
     ["/etc/passwd", "not in the header"]),
    ("dotdot-inside", [newc("./usr/bin/../../../tmp/x", b"x"), *good_members()], ["not in the header"]),
    ("duplicate", [*good_members(), newc("./usr/share/doc/tool/README", README)], ["twice"]),
    ("wrong-bytes", [newc("./usr/bin/tool", TOOL[:-1] + b"X", 0o100755), *good_members()[1:]],
     ["/usr/bin/tool", "digest"]),
    ("wrong-size", [newc("./usr/bin/tool", TOOL + b"more", 0o100755), *good_members()[1:]],
     ["/usr/bin/tool"]),
    ("missing-file", good_members()[:2], ["lacks /usr/share/doc/tool"]),
])
def test_hostile_payload_refused(env, store_dir, base_rpm, tmp_path, case, members, words, gpg_key):
    pkg = replace_payload(base_rpm, tmp_path / f"{case}.rpm", cpio(*members))
    assert sigcheck.check_file(pkg, keyring(gpg_key)).good  # the payload is not signed
    assert_refused(env, store_dir, pkg, *words)


def test_truncated_payload_refused(env, store_dir, base_rpm, tmp_path):
    pkg = read_package_file(base_rpm)
    data = base_rpm.read_bytes()
    whole = data[pkg.payload_offset:]
    for cut in (len(whole) // 2, len(whole) - 9, 10):
        bad = tmp_path / f"cut{cut}.rpm"
        bad.write_bytes(data[:pkg.payload_offset + cut])
        assert_refused(env, store_dir, bad, "truncated")


def test_truncated_cpio_refused(env, store_dir, base_rpm, tmp_path):
    members = good_members()
    raw = cpio(*members)
    pkg = replace_payload(base_rpm, tmp_path / "short.rpm", raw[:len(members[0]) - 100])
    assert_refused(env, store_dir, pkg, "truncated")


def test_the_untouched_package_imports(env, store_dir, base_rpm, tmp_path):
    # The hand-made cpio is right when nothing is wrong with it: the refusals above are
    # for what each case changed, not for how the tests write cpio.
    pkg = replace_payload(base_rpm, tmp_path / "same.rpm", cpio(*good_members()))
    r = env(pkg)
    assert r.returncode == 0, r.stderr
    assert "imported tool-1.0-1.noarch (3 files, 0 reflinked)" in r.stdout


# -- hostile header paths (synthetic headers, signed) ------------------------------------

def F(path, kind="file", data=b"", target=""):
    return (path, kind, data, target)


HEADER_CASES = {
    "dotdot": ([F("/usr/bin/ok", data=b"ok"), F("/usr/../../etc/x", data=b"evil")],
               [newc("./usr/bin/ok", b"ok"), newc("./usr/../../etc/x", b"evil")], "not normalized"),
    "relative": ([F("etc/x", data=b"evil")], [newc("etc/x", b"evil")], "not absolute"),
    "empty-component": ([F("/usr//x", data=b"evil")], [newc(".//usr//x", b"evil")], "not normalized"),
    "dot-component": ([F("/usr/./x", data=b"evil")], [newc("./usr/./x", b"evil")], "not normalized"),
    "symlink-then-file": (
        [F("/usr/lib/d", "symlink", target="/etc"), F("/usr/lib/d/cron.daily", data=b"evil")],
        [newc("./usr/lib/d", b"/etc", 0o120777), newc("./usr/lib/d/cron.daily", b"evil")],
        "beneath /usr/lib/d"),
    "listed-twice": ([F("/usr/bin/x", data=b"one"), F("/usr/bin/x", data=b"two")],
                     [newc("./usr/bin/x", b"one")], "twice"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_hostile_header_refused(env, store_dir, tmp_path, gpg_key, case):
    files, members, word = HEADER_CASES[case]
    pkg = synthetic_rpm(tmp_path / f"{case}.rpm", files, b"".join(members), gpg_key)
    assert sigcheck.check_file(pkg, keyring(gpg_key)).good
    assert_refused(env, store_dir, pkg, word)
    assert not (store_dir.parent / "etc").exists()


def test_symlink_walk_refuses_without_the_header_check(store_dir, tmp_path, gpg_key, monkeypatch):
    """Defence in depth: with the header check switched off, the O_NOFOLLOW walk alone
    stops a file beneath a symlink from landing outside the package."""
    from usrview.store import Store, importer

    outside = tmp_path / "outside"
    outside.mkdir()
    files = [F("/usr/lib/d", "symlink", target=str(outside)), F("/usr/lib/d/planted", data=b"evil")]
    members = [newc("./usr/lib/d", str(outside).encode(), 0o120777), newc("./usr/lib/d/planted", b"evil")]
    pkg = synthetic_rpm(tmp_path / "walk.rpm", files, b"".join(members), gpg_key)
    store = Store.open(store_dir, create=True)
    monkeypatch.setattr(importer, "check_file_list", lambda package: None)
    with pytest.raises(importer.PackageRefused, match="not a directory"):
        importer.import_package(store, pkg, keyring(gpg_key))
    assert os.listdir(outside) == []
    assert store.packages() == [] and os.listdir(store_dir / "tmp") == []


def test_synthetic_builder_makes_importable_packages(env, store_dir, tmp_path, gpg_key):
    files = [F("/usr/lib/x/data", data=b"data"), F("/usr/lib/x/link", "symlink", target="data")]
    members = [newc("./usr/lib/x/data", b"data"), newc("./usr/lib/x/link", b"data", 0o120777)]
    pkg = synthetic_rpm(tmp_path / "fine.rpm", files, b"".join(members), gpg_key)
    r = env(pkg)
    assert r.returncode == 0, r.stderr
    [stored] = [p for p in (store_dir / "packages").iterdir() if p.name.startswith("hostile-")]
    assert (stored / "usr/lib/x/data").read_bytes() == b"data"
    assert os.readlink(stored / "usr/lib/x/link") == "data"


# -- signatures ----------------------------------------------------------------------------

def test_untrusted_and_unsigned_refused(env, store_dir, rpm_packages, tmp_path, gpg_key):
    unsigned = rpm_packages("plain", "1", "1", BASE_FILES, signed=False)
    err = assert_refused(env, store_dir, unsigned, "UNSIGNED", "--allow-unsigned")
    assert "signature check" in err
    other_key = rpmbuild.make_gpg_key(tmp_path / "otherkey")
    try:
        foreign = tmp_path / "foreign.rpm"
        foreign.write_bytes(unsigned.read_bytes())
        rpmbuild.sign_rpm(foreign, other_key)
    finally:
        rpmbuild.stop_gpg_agent(other_key)
    assert_refused(env, store_dir, foreign, "NOKEY")
    corrupt = tmp_path / "corrupt.rpm"
    data = bytearray(rpm_packages("tool", "1.0", "1", BASE_FILES).read_bytes())
    pkg = read_package_file(rpm_packages("tool", "1.0", "1", BASE_FILES))
    where = data.find(b"tool", pkg.header.start + 16)  # a byte inside the signed header
    data[where] ^= 0x20
    corrupt.write_bytes(bytes(data))
    assert_refused(env, store_dir, corrupt, "BAD")

