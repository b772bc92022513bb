"""Real mounts of ``usrview mount --foreground`` in a subprocess, compared with rpm's own install."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prereq import require_fuse
from tests.rpmbuild import STAGED_MTIME, FileSpec, rpm_root_install
from tests.viewstore import deploy_store
from usrview.view.tree import SYSIMAGE_DIR
from verifier.filecaps import parse_xattr

MOUNT_TIMEOUT = 30
REPO = Path(__file__).resolve().parents[1]

PKG_A = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/hello", content=b"#!/bin/sh\necho hello\n", mode=0o755),
    FileSpec("/usr/bin/suid", content=b"suid\n", mode=0o4755),
    FileSpec("/usr/bin/capped", content=b"caps\n", mode=0o755, directives="%caps(cap_net_raw,cap_net_admin=ep)"),
    FileSpec("/usr/lib/a", kind="dir", mode=0o750, group="daemon", mtime=STAGED_MTIME - 7),
    FileSpec("/usr/lib/a/data", content=b"a data\n" * 1000, user="daemon", group="daemon", mode=0o640,
             mtime=STAGED_MTIME + 3),
    FileSpec("/usr/lib/a/link", kind="symlink", target="data"),
    FileSpec("/usr/lib/a/abs-link", kind="symlink", target="/usr/bin/hello"),
    FileSpec("/usr/lib/a/h1", content=b"hard\n"),
    FileSpec("/usr/lib/a/h2", kind="hardlink", target="/usr/lib/a/h1"),
    FileSpec("/usr/lib/a/ghost", directives="%ghost", staged=False),
    FileSpec("/usr/share/empty.d", kind="dir"),
    FileSpec("/etc/a.conf", content=b"conf\n", directives="%config(noreplace)"),
]
PKG_B = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/b-tool", content=b"\x7fELF-ish\0\1\2" * 50, mode=0o755),
    FileSpec("/usr/share/doc/b/README", content=b"readme of b\n", directives="%doc"),
    FileSpec("/usr/share/zero", content=b""),
]


def wait_for_mount(proc: subprocess.Popen, mountpoint: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"usrview mount exited {proc.returncode} before mounting:\n{out}")
        time.sleep(0.05)
    pytest.fail("the view did not mount in time")


def unmount(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint) or _dead_mount(mountpoint):
        r = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def _dead_mount(mountpoint: Path) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


class View:
    """A running ``usrview mount --foreground``: process, mountpoint, its log file."""

    def __init__(self, proc, mountpoint, log_path):
        self.proc, self.mountpoint, self.log_path = proc, mountpoint, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def built(rpm_packages, gpg_key, tmp_path):
    rpms = [rpm_packages("mnt-a", files=PKG_A), rpm_packages("mnt-b", files=PKG_B)]
    store, image = deploy_store(tmp_path / "store", rpms, gpg_key)
    return rpms, store, image


@pytest.fixture
def view(built, gpg_key, tmp_path):
    require_fuse()
    _, store, _ = built
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log_path = tmp_path / "mount.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "usrview.cli", "-v", "mount", "--foreground", "--store", str(store.root),
             "--keys", str(gpg_key.public_path), str(mountpoint)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "USRVIEW_CONFIG": "/dev/null"})
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                pytest.fail(f"usrview mount exited {proc.returncode}:\n{log_path.read_text()}")
            assert time.monotonic() < deadline, "the view did not mount in time"
            time.sleep(0.05)
        yield View(proc, mountpoint, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=MOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        unmount(mountpoint)


def _snapshot(root: Path, skip: str | None = None) -> dict[str, tuple]:
    """path -> comparable attributes of everything below root (lstat, never following)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if skip and rel_dir == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if skip and rel == skip:
                continue
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            attrs = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                attrs.update(size=st.st_size, mtime=int(st.st_mtime), nlink=st.st_nlink,
                             bytes=path.read_bytes(), caps=_caps(path))
            elif stat.S_ISLNK(st.st_mode):
                attrs.update(size=st.st_size, mtime=int(st.st_mtime), target=os.readlink(path))
            out[rel] = (fmt, attrs)
    return out


def _caps(path: Path):
    try:
        return parse_xattr(os.getxattr(path, "security.capability"))
    except OSError as e:
        assert e.errno == errno.ENODATA, e
        return None


def test_view_equals_rpm_install(view, built, tmp_path):
    rpms, store, image = built
    root = tmp_path / "rpmroot"
    rpm_root_install(root, rpms)
    expected = _snapshot(root / "usr")
    # lib/sysimage exists only for the header files (no package here owns it).
    actual = _snapshot(view.mountpoint, skip="lib/sysimage")
    assert sorted(actual) == sorted(expected)
    for path in expected:
        assert actual[path] == expected[path], path
    # Directories: rpm leaves the time of installation (its files were written
    # after it set the header's mtime); the view shows the header's mtime.
    assert int(os.stat(view.mountpoint / "lib/a").st_mtime) == STAGED_MTIME - 7
    # The header files.
    listed = sorted(os.listdir(view.mountpoint / SYSIMAGE_DIR))
    assert listed == sorted(f"{p}.rpm" for p in image.packages)
    for name in listed:
        assert (view.mountpoint / SYSIMAGE_DIR / name).read_bytes() == \
            store.header_path(name[:-4]).read_bytes()
    # A program of the view runs (suid/exec allowed by the mount options).
    out = subprocess.run([str(view.mountpoint / "bin/hello")], capture_output=True, check=True)
    assert out.stdout == b"hello\n"
    opts = {line.split()[1]: line.split()[3] for line in Path("/proc/self/mounts").read_text().splitlines()}
    options = opts[str(view.mountpoint)].split(",")
    assert "ro" in options and "nosuid" not in options
    with pytest.raises(OSError) as e:
        (view.mountpoint / "bin/new").write_bytes(b"x")
    assert e.value.errno == errno.EROFS


def test_tamper_gives_eio_and_sigterm_unmounts(view, built):
    _, store, image = built
    pkgid = next(p for p in image.packages if p.startswith("mnt-b"))
    backing = store.package_dir(pkgid) / "usr/share/doc/b/README"
    data = backing.read_bytes()
    backing.write_bytes(data.upper())  # same size, other bytes
    with pytest.raises(OSError) as e:
        (view.mountpoint / "share/doc/b/README").read_bytes()
    assert e.value.errno == errno.EIO
    # Other files are still served: the mount survives.
    assert (view.mountpoint / "share/zero").read_bytes() == b""
    view.proc.send_signal(signal.SIGTERM)
    assert view.proc.wait(timeout=MOUNT_TIMEOUT) == 0
    assert not os.path.ismount(view.mountpoint)
    log = view.log()
    assert "integrity violation: /usr/share/doc/b/README of mnt-b-1.0-1.noarch" in log
    assert "Traceback" not in log


def test_verify_modes_of_the_command_line_are_the_guards():
    from usrview.cli.mount_cmd import VERIFY_MODES
    from usrview.view.guard import VerifyMode

    assert VERIFY_MODES == tuple(m.value for m in VerifyMode)
    assert VERIFY_MODES[0] == VerifyMode.ENFORCE.value


def test_parsing_a_command_line_imports_neither_trio_nor_pyfuse3():
    # `usrview verify` and friends start faster without the FUSE machinery.
    code = ("import sys; from usrview.cli import main as cli; cli.build_parser().parse_args(['verify']); "
            "print(sorted(m for m in ('trio', 'pyfuse3', 'usrview.store.importer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
