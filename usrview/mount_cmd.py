"""``usrview mount`` and ``usrview umount``: serve an image of the store as a read-only /usr.

``mount`` loads the image (``current`` unless ``--image ID``), checks every
header file's signature against the trusted keys, composes the tree
(:mod:`usrview.tree`) and serves it (:mod:`usrview.mount`).  A header that is
not GOOD refuses the mount, except a package the store records as imported
unsigned (``STORE/unsigned/PKGID``) whose header is UNSIGNED: it is served,
with a warning naming it.

Without ``--foreground`` the command detaches (double fork) and returns once
the view is mounted, with status 0 after printing the daemon's pid
(``usrview: serving MOUNTPOINT (pid N)``), or 2 if mounting failed.  systemd runs it
with ``--foreground`` (``Type=notify``).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from verifier import sigcheck

from . import images
from .checksig_cmd import load_keyring
from .errors import EXIT_ERROR, EXIT_OK, OperationalError
from .store import PKGID_HASH_DIGITS, Store
from .tree import PackageSource, Tree, build_tree

log = logging.getLogger(__name__)

#: --verify's values (usrview.guard.VerifyMode's, the default first), named here
#: so that parsing a command line does not import the guard (and trio).
VERIFY_MODES = ("enforce", "warn", "off")

MOUNT_HELP = "serve an image as a read-only /usr (FUSE)"
UMOUNT_HELP = "unmount a view"
MOUNT_DESCRIPTION = """\
Mount the view of an image of the store on MOUNTPOINT: a read-only file system
whose every file, directory and attribute comes from the image's signed
headers and whose bytes are checked against the headers' digests before they
are served (--verify: enforce refuses a file that does not match with EIO,
warn serves it and logs, off does not check).  Every header's signature is
checked against the trusted keys first; one that is not GOOD refuses the mount."""

def register(sub, common) -> None:
    p = sub.add_parser("mount", parents=[common], help=MOUNT_HELP, description=MOUNT_DESCRIPTION)
    p.add_argument("--store", type=Path, metavar="DIR", help="the store (default from the configuration)")
    p.add_argument("--image", metavar="ID", help="the image to serve: an id, a unique prefix, "
                   "'current' (the default) or 'previous'")
    p.add_argument("--keys", action="append", type=Path, metavar="PATH",
                   help="trusted certificates: a file or a directory (repeatable)")
    p.add_argument("--verify", choices=VERIFY_MODES, default=VERIFY_MODES[0],
                   help="check file digests on open (default enforce)")
    p.add_argument("--foreground", action="store_true",
                   help="do not detach (systemd's Type=notify service uses this)")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.set_defaults(func=run_mount)

    u = sub.add_parser("umount", parents=[common], help=UMOUNT_HELP,
                       description="Unmount a view (fusermount3 -u).")
    u.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    u.set_defaults(func=run_umount)


@dataclass
class LoadedImage:
    """Attributes: image (the record), sources (PackageSource, image order),
    header_digests (pkgid -> SHA-256 of the header file), unsigned (pkgids served unsigned)."""

    image: images.Image
    sources: list[PackageSource]
    header_digests: dict[str, str]
    unsigned: list[str]


def load_image(store: Store, image: images.Image, keyring) -> LoadedImage:
    """Read an image's header files, checking every signature.

    Raises OperationalError when a header is missing, or not GOOD (and not an
    UNSIGNED header of a package the store records as imported unsigned), or
    not the header its package id names.
    """
    loaded = LoadedImage(image, [], {}, [])
    refused = []
    for pkgid in image.packages:
        header_path = store.header_path(pkgid)
        try:
            data = header_path.read_bytes()
        except OSError as e:
            raise OperationalError(f"image {image.id}: package {pkgid}: {e.strerror or e}") from None
        result = sigcheck.check_bytes(data, keyring)
        if result.verdict is not sigcheck.Verdict.GOOD:
            if result.verdict is sigcheck.Verdict.UNSIGNED and store.unsigned_path(pkgid).exists():
                loaded.unsigned.append(pkgid)
            else:
                refused.append(f"{pkgid}: {result.format()}")
                continue
        # The package check_bytes parsed (parsing is most of a header's cost:
        # do it once).  It was parsed leniently; what a strict parse adds is
        # the import check, which GOOD already includes but UNSIGNED does not.
        package = result.package
        import_error = package.signature.import_error or package.header.import_error
        if import_error:
            refused.append(f"{pkgid}: {import_error}")
            continue
        expected_id = f"{package.nevra}-{package.header_sha256[:PKGID_HASH_DIGITS]}"
        if expected_id != pkgid:
            refused.append(f"{pkgid}: the header is that of {expected_id}")
            continue
        package_dir = store.package_dir(pkgid)
        loaded.sources.append(PackageSource(pkgid, package, package_dir if package_dir.is_dir() else None,
                                            header_path))
        loaded.header_digests[pkgid] = hashlib.sha256(data).hexdigest()
    if refused:
        # One line (a user error is one clear line), however many were refused.
        raise OperationalError(f"refusing to mount image {image.id}: {len(refused)} header(s) not "
                               f"trusted: " + "; ".join(refused))
    if loaded.unsigned:
        log.warning("image %s serves UNSIGNED packages (imported with --allow-unsigned): %s",
                    image.id, ", ".join(loaded.unsigned))
    missing = [s.pkgid for s in loaded.sources if s.package_dir is None]
    if missing:
        log.warning("packages without files in the store (their files answer EIO): %s", ", ".join(missing))
    return loaded


def build_view(store: Store, image: images.Image, keyring) -> tuple[LoadedImage, Tree]:
    # Loading makes several objects per file and frees few until the tree is
    # built: the collector's passes over them would find nothing to collect
    # (about a tenth of the build's time).  Cycles made meanwhile are
    # collected once it runs again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        loaded = load_image(store, image, keyring)
        return loaded, build_tree(loaded.sources, header_digests=loaded.header_digests)
    finally:
        if collecting:
            gc.enable()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim).

    Header files are read into C-heap buffers, and glibc keeps freed heap
    memory for later: after the tree is built, the parsed headers are garbage,
    and a daemon serving for months should not hold their pages.  Nothing
    happens on a C library without malloc_trim."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return
    trim(0)


def run_mount(args, cfg) -> int:
    # Serving needs trio and pyfuse3: imported here, not when the command line
    # is parsed for every other command.
    from .fs import ViewOperations
    from .guard import Guard
    from .mount import run

    keyring = load_keyring(args.keys or cfg.keys)
    for warning in keyring.warnings:
        log.warning("%s", warning)
    store = Store.open(args.store or cfg.store)
    image_id = images.resolve(store, args.image or images.CURRENT).id
    mountpoint = os.fspath(args.mountpoint.absolute())
    # The in-use lock is held for the life of the mount (the daemon inherits
    # it): gc keeps the image and its packages meanwhile.
    with images.hold_image(store, image_id) as image:
        loaded, tree = build_view(store, image, keyring)
        log.info("image %s: %d packages, %d inodes", image.id, len(loaded.sources), tree.inode_count)
        # The parsed headers are not needed once the tree exists: do not keep
        # them alive in this frame for the life of the mount.
        del loaded
        release_free_memory()

        def serve(on_ready=None):
            ops = ViewOperations(tree, Guard(tree, args.verify))
            run(ops, mountpoint, on_ready=on_ready)

        if args.foreground:
            serve()
            return EXIT_OK
        return _daemonize(serve, mountpoint)


def _daemonize(serve, mountpoint: str) -> int:
    """Double fork; the parent returns once the grandchild mounted (0, after
    printing the daemon's pid) or failed (2)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            ready = r.read()
        os.waitpid(pid, 0)
        if not ready.startswith(b"1 "):
            return EXIT_ERROR
        # The daemon's pid, for scripts (kill -TERM PID unmounts too).
        print(f"usrview: serving {mountpoint} (pid {int(ready[2:])})", flush=True)
        return EXIT_OK
    # child
    os.close(rfd)
    os.setsid()
    if os.fork():
        os._exit(0)
    # grandchild: the daemon
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)

    def on_ready():
        os.write(wfd, b"1 %d" % os.getpid())
        os.close(wfd)
        # Detached: log to syslog/journald from now on, not to a terminal.
        _log_to_syslog()
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)

    status = EXIT_ERROR
    try:
        serve(on_ready)
        status = EXIT_OK
    except Exception as e:
        log.error("usrview mount: %s", e)
    finally:
        # A forked daemon must never return into the parent's code path.
        os._exit(status)


def _log_to_syslog() -> None:
    import logging.handlers

    if not os.path.exists("/dev/log"):
        return
    handler = logging.handlers.SysLogHandler(address="/dev/log")
    handler.setFormatter(logging.Formatter("usrview[%(process)d]: %(levelname)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]


def run_umount(args, cfg) -> int:
    r = subprocess.run(["fusermount3", "-u", os.fspath(args.mountpoint)], capture_output=True,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise OperationalError(f"cannot unmount {args.mountpoint}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
    return EXIT_OK
