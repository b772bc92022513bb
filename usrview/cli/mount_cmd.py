"""``usrview mount`` and ``usrview umount``: serve an image of the store as a read-only /usr.

``mount`` loads the image (``current`` unless ``--image ID``), maps the
image's compiled tree (:mod:`usrview.view.ctree`; compiled now, every header's
signature checked first, when the store has none) and serves it
(:mod:`usrview.view.mount`), checking each package's header signature and its
part of the tree before its first use, and everything in a child process right
after the mount.  A header that is not GOOD makes the view answer EIO (it
refuses the mount when the mount itself checks it: the root's package, or a
tree compiled at mount), except a package the store records as imported
unsigned (``STORE/unsigned/PKGID``) whose header is UNSIGNED: it is served,
with a warning naming it.

Without ``--foreground`` the command detaches (double fork) and returns once
the view is mounted, with status 0 after printing the daemon's pid
(``usrview: serving MOUNTPOINT (pid N)``), or 2 if mounting failed.  systemd runs it
with ``--foreground`` (``Type=notify``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
from pathlib import Path

from usrview import images
from usrview.cli._common import add_keys_option, add_store_option, load_keyring, open_store, signature_policy
from usrview.config import DISPATCH_SPIN_US
from usrview.errors import EXIT_OK, OperationalError
from usrview.view.loader import release_free_memory

log = logging.getLogger(__name__)

#: --verify's values (usrview.guard.VerifyMode's, the default first), named here
#: so that parsing a command line does not import the guard (and trio).
VERIFY_MODES = ("enforce", "warn", "off")
#: --kernel-cache's values (usrview.view.fs.kernel_cache_features's), the default first.
#: "auto": what the view keeps is that no byte which does not match its signed
#: digest is ever served; a store file changed after its checked pages were
#: cached is served those cached (checked) bytes until the kernel drops them,
#: and refused at the next READ that reaches the view (docs/view.md).
KERNEL_CACHE_MODES = ("auto", "off")
#: --prefetch's values, the default first (usrview.view.prefetch).
PREFETCH_MODES = ("on", "off")


def spin_us(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"not a number of microseconds from 0 to 1000000: {text!r}")
    return value

MOUNT_HELP = "serve an image as a read-only /usr (FUSE)"
UMOUNT_HELP = "unmount a view"
MOUNT_DESCRIPTION = """\
Mount the view of an image of the store on MOUNTPOINT: a read-only file system
whose every file, directory and attribute comes from the image's signed
headers and whose bytes are checked against the headers' digests before they
are served (--verify: enforce refuses a file that does not match with EIO,
warn serves it and logs, off does not check).  Every header's signature is
checked against the trusted keys before anything of its package is served, and
all of them right after the mount; one that is not GOOD makes every request
answer EIO (or refuses the mount, when found before it)."""

def register(sub, common) -> None:
    p = sub.add_parser("mount", parents=[common], help=MOUNT_HELP, description=MOUNT_DESCRIPTION)
    add_store_option(p)
    p.add_argument("--image", metavar="ID", help="the image to serve: an id, a unique prefix, "
                   "'current' (the default) or 'previous'")
    add_keys_option(p)
    p.add_argument("--verify", choices=VERIFY_MODES, default=VERIFY_MODES[0],
                   help="check file digests on open (default enforce)")
    p.add_argument("--kernel-cache", choices=KERNEL_CACHE_MODES, default=KERNEL_CACHE_MODES[0],
                   help="let the kernel cache symlinks, listings and opens where pyfuse3 "
                   "offers it (auto, the default), or ask the daemon every time (off)")
    p.add_argument("--prefetch", choices=PREFETCH_MODES, default=PREFETCH_MODES[0],
                   help="record the files this mount opens, and check the last mount's ahead, "
                   "in the background, right after mounting (on, the default; docs/view.md)")
    p.add_argument("--spin-us", type=spin_us, default=DISPATCH_SPIN_US, metavar="MICROSECONDS",
                   help="after answering a request within a burst of them, poll for the next one this long "
                   f"before sleeping, where pyfuse3 has the c_wait dispatch (default {DISPATCH_SPIN_US}; 0: sleep at "
                   "once): a request from another CPU then costs less, for up to that much CPU per burst")
    p.add_argument("--foreground", action="store_true",
                   help="do not detach (systemd's Type=notify service uses this)")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.set_defaults(func=run_mount, serves=True)

    u = sub.add_parser("umount", parents=[common], help=UMOUNT_HELP,
                       description="Unmount a view (fusermount3 -u).")
    u.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    u.set_defaults(func=run_umount)


def run_mount(args, cfg) -> int:
    # Serving needs trio and pyfuse3: imported here, not when the command line
    # is parsed for every other command.
    from usrview.view.ctree import open_view, start_full_check
    from usrview.view.fs import kernel_cache_features
    from usrview.view.mount import daemonize, serve_tree
    from usrview.view.prefetch import Prefetch, load_record, remove_stale_records

    keyring = load_keyring(args.keys or cfg.keys, signature_policy(args, cfg))
    for warning in keyring.warnings:
        log.warning("%s", warning)
    store = open_store(args, cfg)
    image_id = images.resolve(store, args.image or images.CURRENT).id
    mountpoint = os.fspath(args.mountpoint.absolute())
    # The in-use lock is held for the life of the mount (the daemon inherits
    # it): gc keeps the image and its packages meanwhile.
    with images.hold_image(store, image_id) as image:
        # The compiled tree, mapped (compiled now if the store has none); the
        # headers' signatures checked at their packages' first use and by the
        # full check (all of them now when the tree is compiled now).
        tree = open_view(store, image, keyring)
        log.info("image %s: %d packages, %d inodes", image.id, len(tree.pkgids), tree.inode_count)
        # The parsed headers are garbage now: give their pages back.
        release_free_memory()

        previous = load_record(store, image.id) if args.prefetch == "on" else []
        if args.prefetch == "on":
            remove_stale_records(store)

        def serve(on_ready=None):
            # In the daemon, before any thread: the full check forks.
            start_full_check(tree, store, image, keyring)

            def checking_ahead(guard):
                prefetch = Prefetch(tree, guard, store, image.id, previous)
                log.info("prefetch: %s", prefetch.describe())
                return prefetch.run

            ahead = None
            if args.prefetch == "off":
                log.info("prefetch: off (--prefetch off)")
            elif args.verify == "off":
                log.info("prefetch: off (--verify off: nothing to check)")
            else:
                ahead = checking_ahead
            serve_tree(tree, mountpoint, verify=args.verify, kernel_cache=kernel_cache_features(args.kernel_cache),
                       on_ready=on_ready, prefetch=ahead, spin_us=args.spin_us)

        if args.foreground:
            serve()
            return EXIT_OK
        return daemonize(serve, mountpoint)


def run_umount(args, cfg) -> int:
    r = subprocess.run(["fusermount3", "-u", os.fspath(args.mountpoint)], capture_output=True,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise OperationalError(f"cannot unmount {args.mountpoint}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
    return EXIT_OK
