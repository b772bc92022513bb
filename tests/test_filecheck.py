"""The file check against rpm -V itself.

Signed packages built by rpmbuild (tests/rpmbuild.py) are installed with
``rpm --root R -i``; each row of TAMPERINGS then changes R in one way, and for
every package our :func:`verifier.filecheck.check_file` lines must equal
``rpm --root R -V`` exactly.  Each row also states the lines rpm is expected to
print, so a tampering that silently did nothing (or an rpm that changed its
mind) fails the test instead of comparing two empty outputs.

The file entries come from our header parser (verifier.header) and, as a
second source independent of it, from ``rpm -qp --queryformat``.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.prereq import require_privileged, require_tools
from tests.rpmbuild import (
    FileSpec,
    read_id_map,
    rpm_file_entries,
    rpm_root_install,
    rpm_verify,
)
from verifier.filecheck import DIGEST_CHUNK, FileResult, attribute_marker, check_file
from verifier.files import FileEntry, FileFlag, VerifyFlag

NOBODY, NOGROUP = "nobody", "nogroup"

#: 2.5 MiB of fixed pseudo-random bytes: hashing must go past one read chunk.
BIG = random.Random(20240501).randbytes(DIGEST_CHUNK * 5 // 2)

MAIN_FILES = [
    FileSpec("/etc/vf", kind="dir"),
    FileSpec("/etc/vf/vf.conf", content=b"answer = 42\n", directives="%config(noreplace)"),
    FileSpec("/etc/vf/optional.conf", content=b"optional\n", directives="%config(missingok)"),
    FileSpec("/usr/bin/vf-suid", content=b"#!/bin/sh\necho suid\n", mode=0o4755),
    FileSpec("/usr/bin/vf-caps", content=b"#!/bin/sh\necho ping\n", mode=0o755,
             directives="%caps(cap_net_raw=ep)"),
    FileSpec("/usr/bin/vf-caps2", content=b"#!/bin/sh\necho bind\n", mode=0o755,
             directives="%caps(cap_net_bind_service,cap_net_admin+eip)"),
    FileSpec("/usr/share/vf", kind="dir"),
    FileSpec("/usr/share/vf/data", content=b"hello world\n"),
    FileSpec("/usr/share/vf/empty"),
    FileSpec("/usr/share/vf/big", content=BIG),
    FileSpec("/usr/share/vf/abs-link", kind="symlink", target="/usr/share/vf/data"),
    FileSpec("/usr/share/vf/rel-link", kind="symlink", target="data"),
    FileSpec("/usr/share/vf/dangling", kind="symlink", target="../nowhere/at all"),
    FileSpec("/usr/share/vf/hl-a", content=b"three names, one inode\n"),
    FileSpec("/usr/share/vf/hl-b", kind="hardlink", target="/usr/share/vf/hl-a"),
    FileSpec("/usr/share/vf/hl-c", kind="hardlink", target="/usr/share/vf/hl-a"),
    FileSpec("/usr/share/vf/emptydir", kind="dir"),
    FileSpec("/usr/share/vf/private", kind="dir", mode=0o700),
    FileSpec("/usr/share/vf/nobody", content=b"owned by nobody\n", user=NOBODY, group=NOGROUP),
    FileSpec("/usr/share/vf/unknown-owner", content=b"whose?\n", mode=0o6755, user="vf-nosuchuser",
             group="vf-nosuchgroup"),
    FileSpec("/usr/share/vf/nover", content=b"may change\n", directives="%verify(not md5 size mtime)"),
    FileSpec("/usr/share/vf/ghost", mode=0o644, directives="%ghost", staged=False),
    FileSpec("/usr/share/vf/ghost-link", kind="symlink", target="data", directives="%ghost"),
    FileSpec("/usr/share/vf/with space é", content=b"unicode and a space\n"),
    FileSpec("/usr/share/vf/null", kind="device", device=("c", 1, 3), mode=0o666),
    FileSpec("/usr/share/vf/readme", content=b"read me\n", directives="%readme"),
    FileSpec("/usr/share/vf/artifact", content=b"build artifact\n", directives="%artifact"),
    FileSpec("/usr/share/doc/vf-main", kind="dir"),
    FileSpec("/usr/share/doc/vf-main/README", content=b"documentation\n", directives="%doc"),
    FileSpec("/usr/share/doc/vf-main/example.conf", content=b"x = 1\n", directives="%doc %config"),
    FileSpec("/usr/share/licenses/vf-main", kind="dir"),
    FileSpec("/usr/share/licenses/vf-main/COPYING", content=b"license text\n", directives="%license"),
]


def digest_files(tag: str) -> list[FileSpec]:
    return [
        FileSpec(f"/usr/share/vf-{tag}", kind="dir"),
        FileSpec(f"/usr/share/vf-{tag}/data", content=f"digested with {tag}\n".encode()),
        FileSpec(f"/usr/share/vf-{tag}/empty"),
        FileSpec(f"/usr/share/vf-{tag}/link", kind="symlink", target="data"),
    ]


#: name -> (files, build options).  The digest packages cover every algorithm rpm
#: 4.18 can write, and several payload compressors.
PACKAGES = {
    "vf-main": (MAIN_FILES, {"digest_algo": 8}),
    "vf-md5": (digest_files("md5"), {"digest_algo": 1, "compress": "w6.xzdio"}),
    "vf-sha1": (digest_files("sha1"), {"digest_algo": 2, "compress": "w19.zstdio"}),
    "vf-sha224": (digest_files("sha224"), {"digest_algo": 11, "compress": "w9.bzdio"}),
    "vf-sha384": (digest_files("sha384"), {"digest_algo": 9, "compress": "w0.ufdio"}),
    "vf-sha512": (digest_files("sha512"), {"digest_algo": 10}),
}


# -- tamperings ----------------------------------------------------------------

def at(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def keep_mtime(p: Path, change: Callable[[], None]) -> None:
    st = os.lstat(p)
    change()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def flip_byte(p: Path, offset: int) -> None:
    with open(p, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x20]))


def setcap(p: Path, text: str | None) -> None:
    cmd = ["setcap", "-r", str(p)] if text is None else ["setcap", text, str(p)]
    subprocess.run(cmd, check=True, capture_output=True)


def replace_with(p: Path, make: Callable[[Path], None]) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()
    make(p)


def mkdev(p: Path, kind: int, major: int, minor: int, mode: int = 0o666) -> None:
    os.mknod(p, kind | mode, os.makedev(major, minor))
    os.chmod(p, mode)


def uid(name: str) -> int:
    import pwd
    return pwd.getpwnam(name).pw_uid


def gid(name: str) -> int:
    import grp
    return grp.getgrnam(name).gr_gid


@dataclass(frozen=True)
class Tampering:
    """One way of changing an installed root, and the lines rpm -V then prints
    (for all PACKAGES, in order)."""

    id: str
    apply: Callable[[Path], None]
    expected: tuple[str, ...]


def T(id: str, apply: Callable[[Path], None], *expected: str) -> Tampering:
    return Tampering(id, apply, expected)


D = "/usr/share/vf/data"


def _symlink_to_dir_owned_by(owner_of_link: str, owner_of_dir: str):
    def apply(r: Path) -> None:
        target = at(r, "/usr/share/vf-elsewhere")
        target.mkdir(mode=0o755)
        os.chown(target, uid(owner_of_dir), 0)
        os.utime(target, (1, 1))
        link = at(r, "/usr/share/vf/emptydir")
        replace_with(link, lambda p: p.symlink_to("../vf-elsewhere"))
        os.chown(link, uid(owner_of_link), 0, follow_symlinks=False)
    return apply


def append(p: Path, data: bytes) -> None:
    with open(p, "ab") as f:
        f.write(data)


def _write_through_hardlink(r: Path) -> None:
    append(at(r, "/usr/share/vf/hl-b"), b"more\n")


def _replace_dir_by_file(r: Path) -> None:
    replace_with(at(r, "/usr/share/vf/emptydir"), lambda p: p.write_bytes(b"now a file\n"))


def _replace_symlink_by_file(r: Path) -> None:
    # Same size as the link target "data" (4 bytes): S stays clean, 5 cannot.
    link = at(r, "/usr/share/vf/rel-link")
    replace_with(link, lambda p: p.write_bytes(b"data"))
    os.utime(link, (1_700_000_000, 1_700_000_000))


def _create_ghost(content: bytes, mode: int):
    def apply(r: Path) -> None:
        p = at(r, "/usr/share/vf/ghost")
        p.write_bytes(content)
        os.chmod(p, mode)
    return apply


def _ghost_as_dir(r: Path) -> None:
    p = at(r, "/usr/share/vf/ghost")
    p.mkdir()
    os.chmod(p, 0o644)


TAMPERINGS = [
    T("untouched", lambda r: None),
    # content
    T("bytes-same-size", lambda r: keep_mtime(at(r, D), lambda: flip_byte(at(r, D), 0)),
      "..5......    /usr/share/vf/data"),
    T("bytes-and-mtime", lambda r: flip_byte(at(r, D), 3), "..5....T.    /usr/share/vf/data"),
    T("size", lambda r: at(r, D).write_bytes(b"hello world, longer\n"), "S.5....T.    /usr/share/vf/data"),
    T("big-past-first-chunk", lambda r: keep_mtime(at(r, "/usr/share/vf/big"),
                                                   lambda: flip_byte(at(r, "/usr/share/vf/big"), len(BIG) - 7)),
      "..5......    /usr/share/vf/big"),
    T("big-truncated", lambda r: keep_mtime(at(r, "/usr/share/vf/big"),
                                            lambda: os.truncate(at(r, "/usr/share/vf/big"), DIGEST_CHUNK)),
      "S.5......    /usr/share/vf/big"),
    T("empty-file-written", lambda r: at(r, "/usr/share/vf/empty").write_bytes(b"\0"),
      "S.5....T.    /usr/share/vf/empty"),
    T("hardlink-written", _write_through_hardlink,
      "S.5....T.    /usr/share/vf/hl-a", "S.5....T.    /usr/share/vf/hl-b", "S.5....T.    /usr/share/vf/hl-c"),
    T("md5-package", lambda r: keep_mtime(at(r, "/usr/share/vf-md5/data"),
                                          lambda: flip_byte(at(r, "/usr/share/vf-md5/data"), 1)),
      "..5......    /usr/share/vf-md5/data"),
    T("every-digest-algorithm", lambda r: [at(r, f"/usr/share/vf-{t}/empty").write_bytes(b"x")
                                           for t in ("md5", "sha1", "sha224", "sha384", "sha512")],
      *(f"S.5....T.    /usr/share/vf-{t}/empty" for t in ("md5", "sha1", "sha224", "sha384", "sha512"))),
    # metadata
    T("mode", lambda r: os.chmod(at(r, D), 0o600), ".M.......    /usr/share/vf/data"),
    T("setuid-dropped", lambda r: os.chmod(at(r, "/usr/bin/vf-suid"), 0o755), ".M.......    /usr/bin/vf-suid"),
    T("dir-mode", lambda r: os.chmod(at(r, "/usr/share/vf/private"), 0o755), ".M.......    /usr/share/vf/private"),
    T("owner", lambda r: os.chown(at(r, D), uid(NOBODY), -1), ".....U...    /usr/share/vf/data"),
    T("owner-without-name", lambda r: os.chown(at(r, D), 4242, -1), ".....U...    /usr/share/vf/data"),
    T("group", lambda r: os.chown(at(r, D), -1, gid(NOGROUP)), "......G..    /usr/share/vf/data"),
    T("nobody-to-root", lambda r: os.chown(at(r, "/usr/share/vf/nobody"), 0, 0),
      ".....UG..    /usr/share/vf/nobody"),
    T("mtime", lambda r: os.utime(at(r, D), (1_600_000_000, 1_600_000_000)), ".......T.    /usr/share/vf/data"),
    T("dir-mtime", lambda r: os.utime(at(r, "/usr/share/vf/emptydir"), (1, 1))),
    T("symlink-owner", lambda r: os.chown(at(r, "/usr/share/vf/abs-link"), uid(NOBODY), -1,
                                          follow_symlinks=False),
      ".....U...    /usr/share/vf/abs-link"),
    # an owner name that does not exist: rpm -i made the file root's and dropped set-uid/gid
    T("unknown-owner-setuid-restored", lambda r: os.chmod(at(r, "/usr/share/vf/unknown-owner"), 0o6755),
      ".M.......    /usr/share/vf/unknown-owner"),
    # symlinks
    T("abs-symlink-target", lambda r: replace_with(at(r, "/usr/share/vf/abs-link"),
                                                   lambda p: p.symlink_to("/usr/share/vf/empty")),
      "....L....    /usr/share/vf/abs-link"),
    T("rel-symlink-target", lambda r: replace_with(at(r, "/usr/share/vf/rel-link"),
                                                   lambda p: p.symlink_to("./data")),
      "....L....    /usr/share/vf/rel-link"),
    T("dangling-symlink-fixed", lambda r: replace_with(at(r, "/usr/share/vf/dangling"),
                                                       lambda p: p.symlink_to("data")),
      "....L....    /usr/share/vf/dangling"),
    # capabilities
    T("caps-removed", lambda r: setcap(at(r, "/usr/bin/vf-caps"), None), "........P    /usr/bin/vf-caps"),
    T("caps-changed", lambda r: setcap(at(r, "/usr/bin/vf-caps"), "cap_net_admin=ep"),
      "........P    /usr/bin/vf-caps"),
    T("caps-same-sets-other-text", lambda r: setcap(at(r, "/usr/bin/vf-caps"), "cap_net_raw+pe")),
    T("caps-not-effective", lambda r: setcap(at(r, "/usr/bin/vf-caps"), "cap_net_raw=p"),
      "........P    /usr/bin/vf-caps"),
    T("caps-inheritable-added", lambda r: setcap(at(r, "/usr/bin/vf-caps"), "cap_net_raw=eip"),
      "........P    /usr/bin/vf-caps"),
    T("caps-two-reordered", lambda r: setcap(at(r, "/usr/bin/vf-caps2"),
                                             "cap_net_admin,cap_net_bind_service=pie")),
    T("caps-one-of-two-dropped", lambda r: setcap(at(r, "/usr/bin/vf-caps2"), "cap_net_bind_service=eip"),
      "........P    /usr/bin/vf-caps2"),
    T("caps-added", lambda r: setcap(at(r, D), "cap_net_raw=ep"), "........P    /usr/share/vf/data"),
    # capabilities are compared for regular files only
    T("caps-file-to-symlink", lambda r: replace_with(at(r, "/usr/bin/vf-caps"), lambda p: p.symlink_to("vf-suid")),
      "....L....    /usr/bin/vf-caps"),
    T("caps-file-to-dir", lambda r: replace_with(at(r, "/usr/bin/vf-caps"), lambda p: p.mkdir(mode=0o755)),
      ".M.......    /usr/bin/vf-caps"),
    # the kernel drops file capabilities when the owner changes
    T("caps-file-chowned", lambda r: os.chown(at(r, "/usr/bin/vf-caps"), uid(NOBODY), -1),
      ".....U..P    /usr/bin/vf-caps"),
    # ... and when it is written to
    T("caps-file-written", lambda r: append(at(r, "/usr/bin/vf-caps"), b"#\n"),
      "S.5....TP    /usr/bin/vf-caps"),
    # deletion and replacement
    T("deleted", lambda r: at(r, D).unlink(), "missing     /usr/share/vf/data"),
    T("deleted-unicode", lambda r: at(r, "/usr/share/vf/with space é").unlink(),
      "missing     /usr/share/vf/with space é"),
    T("deleted-symlink", lambda r: at(r, "/usr/share/vf/rel-link").unlink(), "missing     /usr/share/vf/rel-link"),
    T("deleted-config", lambda r: at(r, "/etc/vf/vf.conf").unlink(), "missing   c /etc/vf/vf.conf"),
    T("deleted-missingok", lambda r: at(r, "/etc/vf/optional.conf").unlink()),
    T("deleted-device", lambda r: at(r, "/usr/share/vf/null").unlink(), "missing     /usr/share/vf/null"),
    T("deleted-parent-dir", lambda r: shutil.rmtree(at(r, "/usr/share/doc/vf-main")),
      "missing     /usr/share/doc/vf-main",
      "missing   d /usr/share/doc/vf-main/README",
      "missing   d /usr/share/doc/vf-main/example.conf"),
    T("parent-dir-is-a-file", lambda r: replace_with(at(r, "/usr/share/licenses/vf-main"),
                                                     lambda p: p.write_bytes(b"")),
      ".M5....T.    /usr/share/licenses/vf-main",
      "missing   l /usr/share/licenses/vf-main/COPYING (Not a directory)"),
    T("file-to-symlink", lambda r: replace_with(at(r, D), lambda p: p.symlink_to("empty")),
      "....L....    /usr/share/vf/data"),
    T("file-to-dir", lambda r: replace_with(at(r, D), lambda p: p.mkdir(mode=0o755)),
      ".M.......    /usr/share/vf/data"),
    T("file-to-fifo", lambda r: replace_with(at(r, D), lambda p: os.mkfifo(p, 0o644)),
      ".M.......    /usr/share/vf/data"),
    T("file-to-chardev", lambda r: replace_with(at(r, D), lambda p: mkdev(p, stat.S_IFCHR, 1, 3, 0o644)),
      ".M.D.....    /usr/share/vf/data"),
    T("dir-to-file", _replace_dir_by_file, "SM5....T.    /usr/share/vf/emptydir"),
    T("symlink-to-file", _replace_symlink_by_file, ".M5......    /usr/share/vf/rel-link"),
    # a directory replaced by a symlink to one: followed when root owns the link
    T("dir-to-symlink-to-dir", _symlink_to_dir_owned_by("root", "root")),
    T("dir-to-symlink-to-foreign-dir", _symlink_to_dir_owned_by("root", NOBODY),
      ".....U...    /usr/share/vf/emptydir"),
    T("dir-to-foreign-symlink", _symlink_to_dir_owned_by(NOBODY, "root"),
      "....LU...    /usr/share/vf/emptydir"),
    # devices
    T("device-numbers", lambda r: replace_with(at(r, "/usr/share/vf/null"),
                                               lambda p: mkdev(p, stat.S_IFCHR, 1, 5)),
      "...D.....    /usr/share/vf/null"),
    # rpm compares only the low 16 bits of device numbers: minor 259 = 256 + 3 passes for 3
    T("device-minor-beyond-16-bits", lambda r: replace_with(at(r, "/usr/share/vf/null"),
                                                            lambda p: mkdev(p, stat.S_IFCHR, 1, 259))),
    T("device-to-block", lambda r: replace_with(at(r, "/usr/share/vf/null"),
                                                lambda p: mkdev(p, stat.S_IFBLK, 1, 3)),
      ".M.D.....    /usr/share/vf/null"),
    # now a regular file: its (empty) digest and its mtime are compared too
    T("device-to-file", lambda r: replace_with(at(r, "/usr/share/vf/null"), lambda p: p.write_bytes(b"")),
      ".M5D...T.    /usr/share/vf/null"),
    # attribute markers
    T("config-changed", lambda r: at(r, "/etc/vf/vf.conf").write_bytes(b"answer = 43\n"),
      "..5....T.  c /etc/vf/vf.conf"),
    T("missingok-config-changed", lambda r: at(r, "/etc/vf/optional.conf").write_bytes(b"changed\n"),
      "S.5....T.  c /etc/vf/optional.conf"),
    T("doc-changed", lambda r: at(r, "/usr/share/doc/vf-main/README").write_bytes(b"edited\n"),
      "S.5....T.  d /usr/share/doc/vf-main/README"),
    T("doc-config-changed", lambda r: os.chmod(at(r, "/usr/share/doc/vf-main/example.conf"), 0o600),
      ".M.......  d /usr/share/doc/vf-main/example.conf"),
    T("license-changed", lambda r: os.chmod(at(r, "/usr/share/licenses/vf-main/COPYING"), 0o600),
      ".M.......  l /usr/share/licenses/vf-main/COPYING"),
    T("readme-changed", lambda r: os.chmod(at(r, "/usr/share/vf/readme"), 0o600),
      ".M.......  r /usr/share/vf/readme"),
    T("artifact-changed", lambda r: os.chmod(at(r, "/usr/share/vf/artifact"), 0o600),
      ".M.......  a /usr/share/vf/artifact"),
    # %ghost: not installed, so missing is fine; content is never compared, mode is
    T("ghost-created", _create_ghost(b"runtime state\n", 0o644)),
    T("ghost-created-other-mode", _create_ghost(b"", 0o600), ".M.......  g /usr/share/vf/ghost"),
    T("ghost-created-as-dir", _ghost_as_dir),
    T("ghost-created-foreign", lambda r: (_create_ghost(b"", 0o644)(r),
                                          os.chown(at(r, "/usr/share/vf/ghost"), uid(NOBODY), -1)),
      ".....U...  g /usr/share/vf/ghost"),
    T("ghost-link-retargeted", lambda r: at(r, "/usr/share/vf/ghost-link").symlink_to("elsewhere")),
    # %verify(not md5 size mtime)
    T("noverify-content", lambda r: at(r, "/usr/share/vf/nover").write_bytes(b"changed, and longer\n")),
    T("noverify-mode", lambda r: os.chmod(at(r, "/usr/share/vf/nover"), 0o600), ".M.......    /usr/share/vf/nover"),
]


# -- fixtures and the comparison ---------------------------------------------

@pytest.fixture(scope="module")
def packages(rpm_packages) -> dict[str, Path]:
    require_privileged("rpm -i into a scratch root sets owners, device nodes and capabilities")
    require_tools("setcap", "getcap")
    return {name: rpm_packages(name, "1.0", "1", files, **opts) for name, (files, opts) in PACKAGES.items()}


def header_entries(pkg: Path) -> list[FileEntry]:
    from verifier.header import read_package_file
    return read_package_file(pkg).files


ENTRY_SOURCES = {"header": header_entries, "rpm-qf": rpm_file_entries}


@pytest.fixture(scope="module", params=sorted(ENTRY_SOURCES))
def entries(request, packages) -> dict[str, list[FileEntry]]:
    return {name: ENTRY_SOURCES[request.param](path) for name, path in packages.items()}


@pytest.fixture
def root(tmp_path, packages) -> Path:
    r = tmp_path / "root"
    rpm_root_install(r, packages.values())
    return r


def our_results(root: Path, files: list[FileEntry]) -> list[FileResult]:
    users = read_id_map(root / "etc" / "passwd")
    groups = read_id_map(root / "etc" / "group")
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return [check_file(dir_fd, e.path.lstrip("/"), e, users=users, groups=groups) for e in files]
    finally:
        os.close(dir_fd)


@pytest.mark.privileged
@pytest.mark.parametrize("tampering", TAMPERINGS, ids=lambda t: t.id)
def test_rpm_verify_lines(tampering: Tampering, root: Path, entries: dict[str, list[FileEntry]]):
    tampering.apply(root)
    rpm_lines = []
    for name, files in entries.items():
        status, theirs = rpm_verify(root, name)
        rpm_lines += theirs
        results = our_results(root, files)
        ours = [r.format() for r in results if not r.clean]
        assert ours == theirs, f"package {name}"
        assert status == (0 if all(r.clean for r in results) else 1), f"rpm -V {name} exit status"
    assert rpm_lines == list(tampering.expected), "rpm -V did not print what the table expects"


@pytest.mark.privileged
def test_table_covers_every_file(packages, entries):
    """Every file of the main package is touched by some row, or deliberately by none."""
    touched = {line.split(" /", 1)[1].split(" (")[0] for t in TAMPERINGS for line in t.expected}
    never = {"etc/vf", "usr/share/vf", "usr/share/vf/ghost-link"}  # only clean rows touch the last
    missing = [e.path for e in entries["vf-main"] if e.path[1:] not in touched | never]
    assert not missing


@pytest.mark.privileged
def test_verbose_lines_for_clean_files(root, entries):
    """rpm -Vv prints a line for every file; ours (format() of a clean result) must match."""
    from tests.rpmbuild import rpm_root_cmd
    for name, files in entries.items():
        out = subprocess.run([*rpm_root_cmd(root), "-Vv", "--nodeps", "--noscripts", name],
                             capture_output=True, check=True).stdout.decode().splitlines()
        assert [r.format() for r in our_results(root, files)] == out


# -- cases rpm cannot show as root -------------------------------------------

def _entry(path="/f", *, mode=0o100644, digest="", algo=8, size=0, flags=FileFlag(0),
           vflags=VerifyFlag.ALL, linkto="", user="root", group="root", mtime=0, caps="") -> FileEntry:
    return FileEntry(path=path, size=size, mode=mode, rdev=0, mtime=mtime, digest=digest, digest_algo=algo,
                     linkto=linkto, flags=flags, user=user, group=group, verify_flags=vflags, device=1,
                     inode=1, lang="", caps=caps)


@pytest.fixture
def fd(tmp_path):
    """A directory fd on tmp_path, the dir_fd check_file opens files relative to."""
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    yield d
    os.close(d)


def _regular(tmp_path, content=b"abc") -> FileEntry:
    """Write tmp_path/f and return the entry that describes it exactly."""
    import hashlib
    p = tmp_path / "f"
    p.write_bytes(content)
    st = p.stat()
    return _entry(mode=st.st_mode, digest=hashlib.sha256(content).hexdigest(), size=len(content),
                  mtime=int(st.st_mtime), user=_name(st.st_uid), group=_group(st.st_gid))


def _name(u):
    import pwd
    return pwd.getpwuid(u).pw_name


def _group(g):
    import grp
    return grp.getgrgid(g).gr_name


def test_clean_regular_file(tmp_path, fd):
    e = _regular(tmp_path)
    r = check_file(fd, "f", e)
    assert r.clean and r.format() == ".........    /f"


def test_unreadable_file_gives_question_mark(tmp_path, fd, monkeypatch):
    """rpm shows ? in the digest column when the file cannot be read (as non-root)."""
    e = _regular(tmp_path)
    import verifier.filecheck as fc

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(fc.os, "open", refuse)
    r = check_file(fd, "f", e)
    assert r.format() == "..?......    /f" and not r.clean


def test_unsupported_digest_algorithm_gives_question_mark(tmp_path, fd):
    e = _regular(tmp_path)
    r = check_file(fd, "f", _replace(e, digest_algo=99))
    assert r.format() == "..?......    /f"


def test_readlink_failure_gives_question_mark(tmp_path, fd, monkeypatch):
    (tmp_path / "l").symlink_to("t")
    st = os.lstat(tmp_path / "l")
    e = _entry("/l", mode=st.st_mode, linkto="t", size=1, user=_name(st.st_uid), group=_group(st.st_gid))
    assert check_file(fd, "l", e).clean
    import verifier.filecheck as fc

    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(fc.os, "readlink", fail)
    assert check_file(fd, "l", e).format() == "....?....    /l"


def test_nofiledigest_and_omit(tmp_path, fd):
    e = _regular(tmp_path)
    (tmp_path / "f").write_bytes(b"xyz")  # same size, new bytes and mtime
    os.utime(tmp_path / "f", (e.mtime, e.mtime))
    assert check_file(fd, "f", e).format() == "..5......    /f"
    assert check_file(fd, "f", e, check_digest=False).clean
    os.utime(tmp_path / "f", (1, 1))
    assert check_file(fd, "f", e, check_digest=False, omit=VerifyFlag.MTIME).clean


def test_never_follows_a_final_symlink(tmp_path, fd):
    """A regular file replaced by a symlink to a matching file is still a symlink."""
    e = _regular(tmp_path)
    os.rename(tmp_path / "f", tmp_path / "real")
    (tmp_path / "f").symlink_to("real")
    assert check_file(fd, "f", e).format() == "....L....    /f"


def test_digest_reads_in_bounded_chunks(tmp_path, fd, monkeypatch):
    """No read asks for more than DIGEST_CHUNK bytes, whatever the file size."""
    import verifier.filecheck as fc
    e = _regular(tmp_path, b"x" * (3 * DIGEST_CHUNK + 5))
    sizes = []
    real = fc.os.preadv

    def spy(f, bufs, *args):
        sizes.append(sum(len(b) for b in bufs))
        return real(f, bufs, *args)
    monkeypatch.setattr(fc.os, "preadv", spy)
    assert check_file(fd, "f", e).clean
    assert len(sizes) == 4 + 1 and max(sizes) == DIGEST_CHUNK


def test_attribute_marker_order():
    """rpm takes the first letter of its flag string: d c s m n g l r a."""
    assert attribute_marker(FileFlag.CONFIG | FileFlag.DOC) == "d"
    assert attribute_marker(FileFlag.CONFIG | FileFlag.NOREPLACE) == "c"
    assert attribute_marker(FileFlag.MISSINGOK) == "m"
    assert attribute_marker(FileFlag.NOREPLACE | FileFlag.GHOST) == "n"
    assert attribute_marker(FileFlag.GHOST | FileFlag.LICENSE) == "g"
    assert attribute_marker(FileFlag(0)) == " "


def test_missing_lines():
    r = FileResult("/etc/x", "c", missing=True)
    assert r.format() == "missing   c /etc/x" and not r.clean
    r = FileResult("/etc/x", " ", missing=True, error="Not a directory")
    assert r.format() == "missing     /etc/x (Not a directory)"
    assert FileResult("/g", "g", missing=True, quiet_missing=True).clean


def _replace(e, **kw):
    return e._replace(**kw)


# -- rules rpmbuild's headers never exercise (rpm's code is the reference) -----

def test_ghost_content_and_link_never_compared(tmp_path, fd):
    """rpmbuild writes %verify(not md5 size link mtime) for ghosts; rpm drops those
    checks for any %ghost anyway, whatever the header's verify flags say."""
    (tmp_path / "l").symlink_to("elsewhere")
    (tmp_path / "f").write_bytes(b"state")
    for name, mode in (("l", 0o120777), ("f", 0o100644)):
        e = _entry(f"/{name}", mode=mode, linkto="target", digest="00" * 32, size=99, mtime=1,
                   flags=FileFlag.GHOST, user=_name(os.getuid()), group=_group(os.getgid()))
        assert check_file(fd, name, e).clean, name


def test_size_of_a_directory_entry_is_zero(tmp_path, fd):
    """The header's size counts only for regular files and symlinks: a directory
    entry (whatever FILESIZES says) replaced by a file of that size differs in S."""
    e = _regular(tmp_path, b"x" * 4096)
    r = check_file(fd, "f", _replace(e, mode=0o040644, size=4096, digest=""))
    assert r.format() == "SM5......    /f"


def test_root_is_uid_0_without_lookup(tmp_path, fd):
    """rpm maps the names root/root to 0 without asking the user database."""
    require_privileged("a root-owned file")
    e = _regular(tmp_path)
    os.chmod(tmp_path / "f", 0o6755)  # set-id bits stay expected: root resolves
    e = _replace(e, mode=0o106755)
    assert check_file(fd, "f", e, users={}, groups={}).clean
    os.chown(tmp_path / "f", 4242, 4243)
    os.chmod(tmp_path / "f", 0o6755)  # chown cleared them
    assert check_file(fd, "f", e, users={}, groups={}).format() == ".....UG..    /f"


def test_unresolvable_owner_expects_root_without_setid(tmp_path, fd):
    e = _regular(tmp_path)
    os.chmod(tmp_path / "f", 0o6755)
    e = _replace(e, mode=0o106755, user="nosuch", group="nosuch")
    assert check_file(fd, "f", e, users={}, groups={}).format() == (
        ".M.......    /f" if os.getuid() == 0 else ".M...UG..    /f")
    os.chmod(tmp_path / "f", 0o755)
    assert check_file(fd, "f", e, users={}, groups={}).format() == (
        ".........    /f" if os.getuid() == 0 else ".....UG..    /f")


# -- metadata_matches: the bulk shortcut never hides what check_file would see -----------

def _stat(mode, uid, gid, size, mtime_s, rdev=0) -> os.stat_result:
    """An lstat result with these fields (the others zero)."""
    return os.stat_result((mode, 1, 1, 1, uid, gid, size, 0, mtime_s, 0,
                           0.0, float(mtime_s), 0.0, 0, mtime_s * 1_000_000_000 + 7, 0, 4096, 8, rdev))


def test_metadata_matches_implies_check_file_clean():
    """Randomised: whenever metadata_matches says yes, check_file (digest and caps left
    out: the caller checks those) finds nothing, whatever the flags; and the shortcut
    does answer yes for a file as the header describes it (it is not vacuous)."""
    from verifier.filecheck import expected_ids_and_mode, metadata_matches

    rng = random.Random(5)
    users, groups = {"root": 0, "adm": 4, "nobody": 65534}, {"root": 0, "adm": 4}
    types = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFIFO)
    hits = 0
    for _ in range(20000):
        etype = rng.choice(types)
        e = _entry(mode=etype | rng.choice((0o644, 0o755, 0o4755, 0o2711, 0o1777)),
                   size=rng.choice((0, 5, 4096)), mtime=rng.choice((0, 1_700_000_000)),
                   user=rng.choice(("root", "adm", "nosuch")), group=rng.choice(("root", "adm", "nosuch")),
                   flags=FileFlag(rng.choice((0, FileFlag.GHOST, FileFlag.CONFIG, FileFlag.MISSINGOK))),
                   vflags=VerifyFlag(rng.randrange(0x200)), linkto="t" if etype == stat.S_IFLNK else "")
        uid, gid, mode = expected_ids_and_mode(e, users, groups)
        # lstat results near the header's: each field equal or off by a little
        st = _stat(rng.choice((mode, mode ^ 0o100, (mode & 0o7777) | rng.choice(types))),
                   rng.choice((uid, uid + 1)), rng.choice((gid, gid + 1)),
                   rng.choice((e.size, e.size + 1)), rng.choice((e.mtime, e.mtime + 1)))
        if metadata_matches(e, st, uid, gid, mode):
            hits += 1
            r = check_file(-1, "f", e, check_digest=False, omit=VerifyFlag.CAPS, st=st, users=users, groups=groups)
            assert r.clean, (e, st, r.format())
    assert hits > 300


def test_metadata_matches_refuses_symlinks_and_changed_fields():
    from verifier.filecheck import metadata_matches

    e = _entry(mode=0o100644, size=5, mtime=100)
    assert metadata_matches(e, _stat(0o100644, 0, 0, 5, 100), 0, 0, 0o100644)
    assert not metadata_matches(e, _stat(0o100644, 0, 0, 6, 100), 0, 0, 0o100644)
    assert not metadata_matches(e, _stat(0o100644, 0, 0, 5, 101), 0, 0, 0o100644)
    assert not metadata_matches(e, _stat(0o100600, 0, 0, 5, 100), 0, 0, 0o100644)
    link = _entry(mode=0o120777, size=1, linkto="x")
    assert not metadata_matches(link, _stat(0o120777, 0, 0, 1, 0), 0, 0, 0o120777)
    d = _entry(mode=0o40755, size=0)
    assert metadata_matches(d, _stat(0o40755, 0, 0, 4096, 5), 0, 0, 0o40755)  # no S or T for a directory
