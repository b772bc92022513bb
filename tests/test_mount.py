"""Real mounts of ``usrview mount --foreground`` in a subprocess, compared with rpm's own install."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.prereq import require, require_fuse
from tests.rpmbuild import STAGED_MTIME, FileSpec, rpm_root_install
from tests.viewstore import deploy_store
from usrview.view.fs import describe_kernel_cache, kernel_cache_features
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
#: More than the guard hashes in the event loop: hashed in a thread, so that
#: concurrent first reads arrive while its check runs.
BIG = bytes(range(251)) * 8192
#: A real program (an ELF executable) to run from the view.
TRUE_ELF = Path("/usr/bin/true").read_bytes()
PKG_B = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/b-tool", content=b"\x7fELF-ish\0\1\2" * 50, mode=0o755),
    FileSpec("/usr/lib/b/big", content=BIG),
    FileSpec("/usr/bin/true", content=TRUE_ELF, mode=0o755),
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
    """A running ``usrview mount --foreground``: process, mountpoint, its log file,
    and whether files are opened without OPEN (checked at their first READ)."""

    def __init__(self, proc, mountpoint, log_path, no_open=False):
        self.proc, self.mountpoint, self.log_path = proc, mountpoint, log_path
        self.no_open = no_open

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def built(rpm_packages, gpg_key, tmp_path):
    rpms = [rpm_packages("mnt-a", files=PKG_A), rpm_packages("mnt-b", files=PKG_B)]
    store, image = deploy_store(tmp_path / "store", rpms, gpg_key)
    return rpms, store, image


#: ``--kernel-cache``: with the pyfuse3 patch (.ci/setup installs it) "auto"
#: lets the kernel cache and open without asking; "off" is a stock pyfuse3's behaviour.
KERNEL_CACHE_PARAMS = [pytest.param("auto", id="kernel-cache"), pytest.param("off", id="stock")]


@contextlib.contextmanager
def running_view(store, key_path: Path, mountpoint: Path, log_path: Path, *args: str):
    """``usrview -v mount --foreground ARGS`` serving ``store`` on ``mountpoint`` (its
    output in ``log_path``): the process, mounted; on the way out SIGTERM, unmount."""
    require_fuse()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "usrview.cli", "-v", "mount", "--foreground", "--store", str(store.root),
             "--keys", str(key_path), *args, str(mountpoint)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "USRVIEW_CONFIG": "/dev/null"})
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                pytest.fail(f"usrview mount exited {proc.returncode}:\n{log_path.read_text()}")
            assert time.monotonic() < deadline, "the view did not mount in time"
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=MOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        unmount(mountpoint)


@pytest.fixture(params=KERNEL_CACHE_PARAMS)
def view(built, gpg_key, tmp_path, request):
    _, store, _ = built
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log_path = tmp_path / "mount.log"
    with running_view(store, gpg_key.public_path, mountpoint, log_path, "--kernel-cache", request.param) as proc:
        import pyfuse3

        no_open = request.param == "auto" and "no_open" in kernel_cache_features()
        expected = (describe_kernel_cache(kernel_cache_features(request.param)))
        assert f"kernel caching: {expected}" in log_path.read_text()  # what `mount -v` says runs
        assert no_open or request.param == "off" or not hasattr(pyfuse3, "KERNEL_CACHE_FEATURES")
        yield View(proc, mountpoint, log_path, no_open)


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
    subprocess.run([str(view.mountpoint / "bin/true")], check=True)
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


# -- no unverified byte is ever served: with files opened without OPEN (the
# check at the first READ) as with a stock pyfuse3 (the check at OPEN) ----------

def _tamper(store, image, pkg: str, rel: str, offset: int = 0) -> bytes:
    """Flip one byte of a package's backing file (same size); the original bytes."""
    pkgid = next(p for p in image.packages if p.startswith(pkg))
    path = store.package_dir(pkgid) / rel
    data = path.read_bytes()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([data[offset] ^ 0x20]))
    return data


#: A child that maps a file of the view and prints its first bytes (it dies of
#: SIGBUS when the kernel's READ is refused; an open refused prints EIO).
MMAP_CHILD = '''
import mmap, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except OSError as e:
    print(os.strerror(e.errno)); sys.exit(0)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
print(m[:16])
'''


def test_tampered_file_is_never_served_read_mmap_exec(view, built):
    _, store, image = built
    _tamper(store, image, "mnt-a", "usr/bin/hello", offset=15)  # "echo hello" -> "echo Hello"
    _tamper(store, image, "mnt-a", "usr/lib/a/data")
    _tamper(store, image, "mnt-b", "usr/lib/b/big", offset=len(BIG) - 1)  # its last byte
    _tamper(store, image, "mnt-b", "usr/bin/true", offset=len(TRUE_ELF) // 2)
    # exec of a program and of a script: the kernel reads the first page -- refused.
    for program in ("bin/true", "bin/hello"):
        with pytest.raises(OSError) as e:
            subprocess.run([str(view.mountpoint / program)], capture_output=True, check=False)
        assert e.value.errno == errno.EIO, program
    # mmap: the page fault's READ is refused (SIGBUS), or the open is.
    r = subprocess.run([sys.executable, "-c", MMAP_CHILD, str(view.mountpoint / "lib/a/data")],
                       capture_output=True, text=True, check=False)
    if view.no_open:
        assert r.returncode == -signal.SIGBUS, r
    else:
        assert (r.returncode, r.stdout.strip()) == (0, os.strerror(errno.EIO)), r
    # read of the first bytes of a file whose last byte changed.
    with pytest.raises(OSError) as e, open(view.mountpoint / "lib/b/big", "rb") as f:
        f.read(16)
    assert e.value.errno == errno.EIO
    # Untouched files are served, and the refusals were logged, not crashed on.
    assert (view.mountpoint / "bin/b-tool").read_bytes() == b"\x7fELF-ish\0\1\2" * 50
    log = view.log()
    for path in ("/usr/bin/true", "/usr/bin/hello", "/usr/lib/a/data", "/usr/lib/b/big"):
        assert f"integrity violation: {path} of " in log
    assert "Traceback" not in log and "internal error" not in log


def test_concurrent_first_reads_of_a_tampered_file_all_get_eio(view, built):
    _, store, image = built
    _tamper(store, image, "mnt-b", "usr/lib/b/big", offset=len(BIG) // 2)
    path = view.mountpoint / "lib/b/big"
    start = threading.Barrier(8)
    results = []

    def reader(offset):
        start.wait()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                results.append(f.read(4096))
        except OSError as e:
            results.append(e.errno)

    # Processes too: each its own open, all at once.
    code = ("import os, sys\ntry:\n    print(len(open(sys.argv[1], 'rb').read(4096)))\n"
            "except OSError as e:\n    print(e.errno)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    threads = [threading.Thread(target=reader, args=(i * 65536,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outs = [p.communicate()[0].strip() for p in procs]
    assert results == [errno.EIO] * 8
    assert outs == [str(errno.EIO)] * 4


def test_file_changed_after_it_was_served_is_checked_again(view, built):
    _, store, image = built
    path = view.mountpoint / "lib/a/data"
    assert path.read_bytes() == b"a data\n" * 1000  # checked and served (pages cached)
    _tamper(store, image, "mnt-a", "usr/lib/a/data")
    refused_at = "open"
    with pytest.raises(OSError) as e:
        # Opened without OPEN, the kernel drops the view file's pages: its next
        # READ reaches the daemon.  (A stock pyfuse3's OPEN checks, and refuses.)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            refused_at = "read"
            os.pread(fd, 16, 0)
        finally:
            os.close(fd)
    assert e.value.errno == errno.EIO
    assert refused_at == ("read" if view.no_open else "open")
    assert "integrity violation: /usr/lib/a/data of " in view.log()


def test_file_changed_after_it_was_served_is_refused_once_caches_are_dropped(view, built):
    # What docs/demo.sh does: a file read through the view (its checked pages
    # cached), then changed in the store; after `echo 3 > drop_caches` the next
    # read reaches the view, which checks again and refuses.
    _, store, image = built
    path = view.mountpoint / "share/doc/b/README"
    assert path.read_bytes() == b"readme of b\n"
    _tamper(store, image, "mnt-b", "usr/share/doc/b/README")
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    with pytest.raises(OSError) as e:
        path.read_bytes()
    assert e.value.errno == errno.EIO
    assert "integrity violation: /usr/share/doc/b/README of " in view.log()


def _requests(view, head: str = "requests: ") -> dict[str, int]:
    """The requests the daemon answered so far (it logs them at SIGUSR2); with
    ``head`` "getxattr by name: ", its GETXATTR by name."""
    before = view.log().count(head)
    view.proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while (log := view.log()).count(head) == before:
        assert time.monotonic() < deadline, f"no {head!r} line after SIGUSR2"
        time.sleep(0.02)
    line = log[log.rindex(head) + len(head):].split("\n", 1)[0]
    return {k: int(v) for k, v in (item.rsplit(" ", 1) for item in line.split(", ") if item != "none")}


def test_the_view_has_no_acls_and_says_so_as_a_noacl_mount_does(view):
    # The view asks the kernel for no ACL support (a package's header carries no ACL):
    # an ACL query answers EOPNOTSUPP, as on a file system mounted noacl, and the
    # permission checks go by the mode bits alone.
    for path in (view.mountpoint / p for p in ("bin/hello", "lib/a/data", "share/zero", "lib/a", "")):
        for name in ("system.posix_acl_access", "system.posix_acl_default"):
            with pytest.raises(OSError) as e:
                os.getxattr(path, name)
            assert e.value.errno == errno.EOPNOTSUPP, (path, name)


def test_another_user_walking_through_the_view_asks_the_daemon_nothing(view):
    # A user other than a directory's owner walking through it made the kernel check the
    # directory's ACL when the view enabled ACLs, and the root directory's never stayed
    # cached (its inode is made at mount, before FUSE_INIT: docs/view.md, "Execs and
    # set-id programs"): one GETXATTR at every path walk through /usr by such a user.
    # Without ACLs the kernel checks the mode bits it holds and asks nothing; they are
    # still enforced (lib/a is 0750 root:daemon).
    fd = os.open(view.mountpoint, os.O_PATH | os.O_DIRECTORY)
    code = (f"import os\n"
            f"for p in ('lib/b/big', 'share/doc/b/README', 'bin/hello', 'lib'):\n"
            f"    os.stat(p, dir_fd={fd})\n"
            f"try:\n"
            f"    os.stat('lib/a/data', dir_fd={fd})\n"
            f"except PermissionError:\n"
            f"    print('refused')\n")
    try:
        subprocess.run(["/usr/bin/python3", "-c", code], pass_fds=(fd,), user=65534, group=65534,
                       extra_groups=[], capture_output=True, text=True, check=True)  # entries looked up
        before = _requests(view)
        for _ in range(3):
            r = subprocess.run(["/usr/bin/python3", "-c", code], pass_fds=(fd,), user=65534, group=65534,
                               extra_groups=[], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            assert r.stdout == "refused\n"
        after = _requests(view)
    finally:
        os.close(fd)
    assert after.get("getxattr", 0) == before.get("getxattr", 0), (before, after)


def test_ls_l_asks_the_security_label_and_the_acl_once(view):
    # ls -l asks each entry's security.selinux (a machine without SELinux passes the
    # query to the file system) and its ACL; the view answers both EOPNOTSUPP, and
    # coreutils then stops asking on that device: two GETXATTR a listing, not two an entry.
    lib = view.mountpoint / "lib"
    entries = len(os.listdir(lib))
    assert entries >= 3
    with pytest.raises(OSError) as e:
        os.getxattr(lib / "a", "security.selinux")
    assert e.value.errno == errno.EOPNOTSUPP
    subprocess.run(["ls", "-l", str(lib)], check=True, capture_output=True)  # entries cached
    before = _requests(view, "getxattr by name: ")
    subprocess.run(["ls", "-l", str(lib)], check=True, capture_output=True)
    after = _requests(view, "getxattr by name: ")
    asked = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
    # its security label and its ACL once each (EOPNOTSUPP: coreutils caches that per
    # device), then nothing more for any entry
    assert asked.get("security.selinux", 0) <= 1 and asked.get("system.posix_acl_access", 0) <= 1, asked
    assert sum(asked.values()) <= 2, asked


def test_an_exec_s_capability_query_of_a_file_without_one_is_answered_in_c(view):
    # The kernel asks security.capability at every exec (and never caches the answer):
    # a file without one, noted when its lookup built its attributes, is answered
    # ENODATA by the patched pyfuse3 (c_no_capability) without a handler, its first
    # query too; a file that has capabilities is always answered by the handler, with them.
    import pyfuse3

    require("c_no_capability" in getattr(pyfuse3, "DISPATCH_FEATURES", ()), "pyfuse3 without c_no_capability (run .ci/setup)")
    true, capped = view.mountpoint / "bin/true", view.mountpoint / "bin/capped"
    before, names_before = _requests(view, "dispatch: "), _requests(view, "getxattr by name: ")
    for _ in range(5):
        with pytest.raises(OSError) as e:
            os.getxattr(true, "security.capability")
        assert e.value.errno == errno.ENODATA
        subprocess.run([true], check=True)
    for _ in range(3):
        assert parse_xattr(os.getxattr(capped, "security.capability")).permitted
    after, names_after = _requests(view, "dispatch: "), _requests(view, "getxattr by name: ")
    handled = names_after.get("security.capability", 0) - names_before.get("security.capability", 0)
    in_c = after["c_no_capability"] - before.get("c_no_capability", 0)
    # true: 5 queries and 5 execs, all in C; capped: 3 queries, all by the handler, each
    # two requests (the kernel's cap_inode_getsecurity asks the size, then the value)
    assert (handled, in_c) == (2 * 3, 5 + 5), (names_before, names_after, before, after)
