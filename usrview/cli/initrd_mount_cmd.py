"""``usrview initrd-mount``: in the initrd, serve this boot's image on SYSROOT/usr
(:mod:`usrview.boot.initrd`; docs/boot-core.md)."""

from __future__ import annotations

from pathlib import Path

from usrview import config
from usrview.boot import cmdline
from usrview.boot.initrd import DEFAULT_CONFIG, DEFAULT_KEYS, READ_AHEAD_KIB, Console, Stages, initrd_mount
from usrview.cli._common import add_signature_policy_option
from usrview.errors import UsageError
from verifier import policy as policies

HELP = "in the initrd: pick this boot's image (boot counting) and serve it on SYSROOT/usr"
DESCRIPTION = f"""\
Run by a Type=notify unit in the initrd, once the root file system is mounted on
SYSROOT.  The kernel command line chooses: usrview.store=PATH (within SYSROOT,
default {cmdline.DEFAULT_STORE}), usrview.image=current|previous|ID (default
current), usrview.verify=enforce|warn|off (default enforce), and the manual
rollback word usrview.rollback (the same as usrview.image=previous), and
usrview.kernel_cache=auto|off (default auto: as usrview mount --kernel-cache).  An image on
trial spends one of its tries before it is mounted; one with none left is bad
and the last good image is served instead, the event recorded in the store.
A wrong value is one line on the console (stderr and /dev/kmsg) and the boot
goes on with the default, or with the last good image.  The view is mounted in
the foreground and READY=1 sent on $NOTIFY_SOCKET.  The signature policy is
--signature-policy, else SYSROOT/{DEFAULT_CONFIG}'s signature_policy, else default.
Exit status: 0 after the view was unmounted, 2 when no image can be served."""


def register(sub, common) -> None:
    p = sub.add_parser("initrd-mount", parents=[common], help=HELP, description=DESCRIPTION)
    p.add_argument("--sysroot", type=Path, default=Path("/sysroot"), metavar="DIR",
                   help="where the root file system is mounted (default /sysroot)")
    p.add_argument("--cmdline", type=Path, default=Path("/proc/cmdline"), metavar="FILE",
                   help="the kernel command line (default /proc/cmdline)")
    p.add_argument("--keys", action="extend", nargs="+", type=Path, metavar="DIR",
                   help=f"trusted certificates: files or directories (default SYSROOT/{DEFAULT_KEYS})")
    p.add_argument("--wait-for-sysroot", action="store_true",
                   help="start at once, then wait until SYSROOT is a mount point (the initrd's unit "
                        "starts before the root file system is mounted)")
    p.add_argument("--read-ahead", type=int, default=READ_AHEAD_KIB, metavar="KIB",
                   help=f"KiB the kernel may read ahead per READ of a file of the view (default "
                        f"{READ_AHEAD_KIB}; 0 leaves the kernel's)")
    p.add_argument("--warm", choices=("on", "off"), default="off",
                   help="read the files the last boot opened through the mount from the mount on "
                        "(default off: under qemu's TCG it cost more than it saved, docs/boot.md)")
    p.add_argument("--boot-spin", type=float, default=config.BOOT_SPIN_SECONDS, metavar="SECONDS",
                   help=f"for this long after the mount, poll up to {config.BOOT_SPIN_US:g} µs for the next "
                        f"request within a burst (the booted system's start), then {config.DISPATCH_SPIN_US:g} µs "
                        f"(default {config.BOOT_SPIN_SECONDS:g})")
    add_signature_policy_option(p)
    p.set_defaults(func=run, needs_config=False, serves=True)


def run(args, cfg) -> int:
    stages = Stages()  # the interpreter's start and the command line ended here
    policy = policies.by_name(args.signature_policy) if args.signature_policy else None
    if args.read_ahead < 0:
        raise UsageError(f"--read-ahead {args.read_ahead}: not a number of KiB")
    if not 0 <= args.boot_spin <= 86400:
        raise UsageError(f"--boot-spin {args.boot_spin:g}: not a number of seconds from 0 to 86400")
    return initrd_mount(args.sysroot, args.cmdline, args.keys, Console(), policy, wait=args.wait_for_sysroot,
                        stages=stages, read_ahead=args.read_ahead, warm=args.warm == "on", boot_spin=args.boot_spin)
