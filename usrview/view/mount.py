"""Running the view: mount, serve until told to stop, unmount.

The lifecycle follows S3QL's ``mount.py``: an ``AsyncExitStack`` owns what
must be undone; SIGTERM and SIGINT call ``pyfuse3.terminate()``, after which
``pyfuse3.main()`` returns and the file system is unmounted
(``pyfuse3.close(unmount=True)``).  When serving ends with an exception the
mount is *not* unmounted (``close(unmount=False)``): for ``/usr``, the empty
mountpoint showing through is worse than an error, and the next
``usrview mount`` recovers the dead mount.  ``READY=1`` goes to
``$NOTIFY_SOCKET`` once the kernel mount exists, through a socket connected
before mounting (after switch-root the socket's path may not resolve from this
process's root); SIGUSR1 dumps every thread's stack (faulthandler), SIGUSR2
logs the requests answered so far by kind and the files the guard hashed.
Everything serving and stopping needs is imported at the top of the module:
nothing is imported once the view serves (docs/boot-core.md).
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import functools
import gc
import logging
import logging.handlers
import os
import resource
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Sequence

import pyfuse3
import trio

from usrview.config import DISPATCH_SPIN_US
from usrview.errors import EXIT_ERROR, EXIT_OK, OperationalError
from usrview.view.fs import ViewOperations, configure_dispatch, describe_dispatch, describe_kernel_cache
from usrview.view.guard import Guard
from usrview.view.profile import ServingProfile
from usrview.view.tree import Tree

log = logging.getLogger(__name__)

#: Mount options fit for /usr.  libfuse mounts nosuid,nodev by default; /usr
#: needs set-uid programs (sudo, passwd), so "suid" (allowed for root only).
BASE_OPTIONS = frozenset({"ro", "fsname=usrview", "subtype=usrview", "allow_other",
                          "default_permissions"})
#: Seconds fusermount3 may take to unmount a dead mount.
FUSERMOUNT_TIMEOUT = 30


def mount_options() -> set[str]:
    options = set(BASE_OPTIONS)
    if os.geteuid() == 0:
        options.add("suid")
    return options


class SystemdNotifier:
    """$NOTIFY_SOCKET (sd_notify), connected when made; sends nothing without one."""

    def __init__(self):
        self._sock: socket.socket | None = None
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def send(self, message: bytes) -> None:
        if self._sock is not None:
            self._sock.sendall(message)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def recover_mountpoint(mountpoint: str) -> None:
    """Make ``mountpoint`` usable: unmount what a dead daemon left there
    (statfs answers ENOTCONN), refuse a live mount.

    statfs, not stat: the kernel answers stat of a FUSE root from its attribute
    cache (CACHE_TIMEOUT) even after the daemon died, while statfs always asks
    the daemon, so only statfs tells a dead mount from a live one."""
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise OperationalError(f"mountpoint {mountpoint}: {e.strerror}") from None
        log.warning("%s: a dead usrview mount (transport endpoint not connected); unmounting it",
                    mountpoint)
        for args in (["-u"], ["-u", "-z"]):
            r = subprocess.run(["fusermount3", *args, mountpoint], capture_output=True,
                               timeout=FUSERMOUNT_TIMEOUT, stdin=subprocess.DEVNULL)
            if r.returncode == 0:
                return
        raise OperationalError(f"cannot unmount the dead mount on {mountpoint}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
    if os.path.ismount(mountpoint):
        raise OperationalError(f"{mountpoint} is already a mount point (unmount it first)")
    if not os.path.isdir(mountpoint):
        raise OperationalError(f"mountpoint {mountpoint} is not a directory")


def raise_fd_limit() -> None:
    """Use the hard limit on open files: every open file of the view holds a backing fd."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _stop_on_signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _log_requests(ops: ViewOperations, profile: ServingProfile | None = None, *,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGUSR2: log the requests answered so far (tests/bench_system.py counts them
    per workload), and the files the guard hashed (tests/bench_boot.py).  Asked
    for, so logged at the level shown by default: the initrd's daemon logs
    warnings only.  Started (the signal caught) before the mount is announced:
    SIGUSR2's default action ends the process."""
    with trio.open_signal_receiver(signal.SIGUSR2) as signals:
        task_status.started()
        async for _ in signals:
            log.warning("%s", ops.describe_requests())
            log.warning("%s", ops.guard.statistics())
            log.warning("%s", ops.describe_xattr_names())
            log.warning("%s", describe_dispatch())
            for line in profile.lines() if profile is not None else ():
                log.warning("%s", line)


async def serve(ops: ViewOperations, mountpoint: str, *, options: set[str] | None = None,
                on_ready: Callable[[], None] | None = None,
                tasks: Sequence[Callable[[], Awaitable[None]]] = (), profile: ServingProfile | None = None,
                spin_us: float = DISPATCH_SPIN_US) -> None:
    """Mount ``ops`` on ``mountpoint`` and serve until SIGTERM/SIGINT or an unmount;
    ``tasks`` run beside, from the mount on, and are cancelled at the unmount.
    ``profile``: profile this thread from READY on, logged with the requests.
    ``spin_us``: the busy-poll before the wait for a request sleeps (usrview.config.DISPATCH_SPIN_US)."""
    recover_mountpoint(mountpoint)
    raise_fd_limit()
    async with contextlib.AsyncExitStack() as stack:
        notifier = SystemdNotifier()
        stack.callback(notifier.close)
        log.info("kernel caching: %s", describe_kernel_cache(ops.kernel_cache))
        log.info("request dispatch: %s", configure_dispatch(spin_us))
        pyfuse3.init(ops, mountpoint, options if options is not None else mount_options())
        clean = False

        def close():
            pyfuse3.close(unmount=clean)
            ops.close_all()

        stack.callback(close)
        async with trio.open_nursery() as nursery:
            await nursery.start(_stop_on_signals)
            await nursery.start(_log_requests, ops, profile)
            for task in tasks:
                nursery.start_soon(task)
            if profile is not None:
                profile.enable()
            notifier.send(b"READY=1\nSTATUS=serving " + mountpoint.encode() + b"\n")
            if on_ready is not None:
                on_ready()
            log.info("serving %s", mountpoint)
            await pyfuse3.main()
            clean = True
            nursery.cancel_scope.cancel()
        notifier.send(b"STOPPING=1\n")


def serve_tree(tree: Tree, mountpoint: str, *, verify: str, kernel_cache: frozenset[str],
               on_ready: Callable[[], None] | None = None,
               prefetch: Callable[[Guard], Callable[[], Awaitable[None]]] | None = None,
               profile: ServingProfile | None = None, spin_us: float = DISPATCH_SPIN_US,
               tasks: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
    """Serve ``tree`` on ``mountpoint`` (blocks until unmounted): what ``usrview
    mount`` and the initrd's ``initrd-mount`` both run once the tree is built.
    ``prefetch``: None, or made with the guard the task that checks ahead
    (:class:`usrview.view.prefetch.Prefetch`'s ``run``).  ``tasks``: run beside
    from the mount on, as :func:`serve`'s."""
    guard = Guard(tree, verify)
    ops = ViewOperations(tree, guard, kernel_cache)
    # What was made until now (the modules, the tree) lives as long as the daemon:
    # frozen, the collector never walks it again; it collects from here on (usrview
    # mount and initrd-mount paused it from their start: usrview.cli.main).
    gc.freeze()
    gc.enable()
    run(ops, mountpoint, on_ready=on_ready, tasks=[*tasks, *([prefetch(guard)] if prefetch is not None else [])],
        profile=profile, spin_us=spin_us)


def run(ops: ViewOperations, mountpoint: str, *, on_ready: Callable[[], None] | None = None,
        tasks: Sequence[Callable[[], Awaitable[None]]] = (), profile: ServingProfile | None = None,
        spin_us: float = DISPATCH_SPIN_US) -> None:
    """Serve the view in this process (blocks until unmounted)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        trio.run(functools.partial(serve, ops, mountpoint, on_ready=on_ready, tasks=tasks, profile=profile,
                                   spin_us=spin_us))
    finally:
        faulthandler.unregister(signal.SIGUSR1)


def daemonize(serve, mountpoint: str) -> int:
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
        log_to_syslog()
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


def log_to_syslog() -> None:
    if not os.path.exists("/dev/log"):
        return
    handler = logging.handlers.SysLogHandler(address="/dev/log")
    handler.setFormatter(logging.Formatter("usrview[%(process)d]: %(levelname)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
