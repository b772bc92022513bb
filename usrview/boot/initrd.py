"""``usrview initrd-mount``'s work: pick the image, count the boot, serve it on SYSROOT/usr.

Run by a ``Type=notify`` unit in the initrd once the root file system is mounted
on SYSROOT (docs/boot-core.md):

1. Read the kernel command line (:mod:`usrview.boot.cmdline`); each wrong value is
   one line on the console and its default is used.  With ``wait``, wait until
   SYSROOT is a mount point: the unit starts before ``sysroot.mount`` so that
   Python's start and the imports overlap the initrd's wait for the root device.
2. Open the store (``usrview.store=``, within SYSROOT; if it is not a store, the
   default one) and the trusted keys (``--keys``, else SYSROOT/etc/pki/rpm-gpg),
   judged under ``--signature-policy``, else the ``signature_policy`` of
   SYSROOT/etc/usrview/usrview.toml (a file that cannot be read is a console
   line, and the default policy), else the default policy.
3. Under the store lock: plan the boot (:func:`usrview.boot.select.plan`), mark
   an image whose tries ran out bad, and spend a try of the image on trial that
   is about to be served -- written before anything is mounted, so a boot that
   dies later counts.  A store that cannot be written (a read-only root) turns
   counting off for this boot, with a line on the console; the boot goes on.
4. Load the candidates in order until one loads (the compiled tree mapped and
   its package table checked against the record and the header files, the
   root's package's signature checked: :func:`usrview.view.ctree.open_view`,
   nothing written; the other headers' signatures are checked at their
   packages' first use and by the full check, whose failure is EIO, no fallback).
   Record which image this boot serves, and a fallback event when it is not
   the one asked for.
5. Read the prefetch's record and open the store's directories it is written
   beneath (:func:`checking_ahead`); start the compiled tree's full check in a
   child confined to the store's fd (a failure: a console line, and EIO).
   Make the daemon independent of every file (:mod:`usrview.boot.rootdaemon`),
   mount the view on SYSROOT/usr (as ``usrview mount`` serves a tree:
   :func:`usrview.view.mount.serve_tree`, the kernel caching
   ``usrview.kernel_cache=`` says) and send READY=1.  Then one console line
   says where the time to READY went (:class:`Stages`).

Exit status 2 only when nothing can be served: no store, no keys, no image
that loads, or the mount itself fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from usrview import config, images
from usrview.boot import cmdline, codecache, rootdaemon, rootwatch
from usrview.boot.rootwatch import SERVING_NICE, is_mount_point, mounted_device, wait_until_mounted
from usrview.boot.select import Candidate, Plan, plan
from usrview.errors import EXIT_ERROR, EXIT_OK, OperationalError, UsrviewError
from usrview.images import bootstate
from usrview.store import Store
from verifier import policy as policies
from verifier.fileio import OwnerIds
from verifier.keyring import Keyring

log = logging.getLogger(__name__)

#: The kernel log: what the console shows while booting.
KMSG = "/dev/kmsg"
#: Tests: a file to write instead of /dev/kmsg.
KMSG_ENV = "USRVIEW_KMSG"
#: The kernel log's message priorities (syslog's).
KERN_ERR, KERN_WARNING, KERN_NOTICE = 3, 4, 5
#: The kernel takes at most this many bytes per record.
KMSG_MAX = 900
#: Trusted keys within SYSROOT when --keys is not given.
DEFAULT_KEYS = "etc/pki/rpm-gpg"
#: The configuration within SYSROOT, for its signature policy.
DEFAULT_CONFIG = "etc/usrview/usrview.toml"
#: Seconds to wait for the store lock at boot (nothing else should hold it).
BOOT_LOCK_TIMEOUT = 10.0
#: KiB the kernel may read ahead per READ of the view's files at boot
#: (:func:`usrview.view.mount.set_read_ahead`; a READ carries at most 1 MiB).
READ_AHEAD_KIB = 1024
#: Seconds after READY until this boot's opens are first recorded, and between
#: two records when more files were opened (a system may be powered off without
#: the daemon's unmount, whose save would come last): the boot's own files, soon;
#: a record that cannot be written yet (a root still read-only) is tried again.
FIRST_SAVE, SAVE_PERIOD = 15.0, 30.0
#: The FUSE device the mount opens; tests name another path to wait for in FUSE_DEVICE_ENV.
FUSE_DEVICE, FUSE_DEVICE_ENV = "/dev/fuse", "USRVIEW_FUSE_DEVICE"
#: Seconds to wait for the FUSE device once the root is mounted (then the mount says why it
#: cannot), and between two looks.
FUSE_WAIT, FUSE_POLL = 30.0, 0.02
#: What ``initrd-mount`` imports beyond ``usrview.cli.main`` and its command's
#: module, for the initrd's runtime (systemd/dracut/90usrview/usrview-runtime.py
#: takes what importing these imports, tests/test_initrd_mount.py checks that a
#: daemon imports nothing else): the serving modules, imported when serving
#: starts, and the standard-library modules imported by functions on paths a
#: boot need not take (a configuration to read, glibc's malloc_trim).
RUNTIME_IMPORTS = ("usrview.cli.initrd_mount_cmd", "usrview.view.fs", "usrview.view.loader",
                   "usrview.view.mount", "usrview.view.ctree", "usrview.view.prefetch", "tomllib", "ctypes")


def process_start() -> float | None:
    """When this process started, in seconds since the kernel started (the clock
    of time.monotonic, the console's and systemd's); None if unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, field 22 of stat
    except (OSError, ValueError, IndexError):
        return None


class Stages:
    """Where the daemon's time to READY goes: (stage, monotonic time it ended)
    in order, the first the process's start.  Attributes: marks."""

    def __init__(self):
        start = process_start()
        self.marks: list[tuple[str, float]] = [("start", start)] if start is not None else []
        self.mark("interpreter and command line")

    def mark(self, stage: str) -> None:
        self.marks.append((stage, time.monotonic()))

    def line(self) -> str:
        """``ready 23.08 s after the kernel started (process started 13.47, CPU 5.10 s):
        STAGE 1.20 s, …`` (CPU: the daemon's own, its children's not counted)."""
        if not self.marks:
            return "ready"
        parts = [f"{stage} {end - before:.2f} s"
                 for (_, before), (stage, end) in zip(self.marks, self.marks[1:])]
        times = os.times()
        return (f"ready {self.marks[-1][1]:.2f} s after the kernel started (process started "
                f"{self.marks[0][1]:.2f}, CPU {times.user + times.system:.2f} s): " + ", ".join(parts))


def wait_for_mount(path: Path, console: "Console") -> None:
    """Return once ``path`` is a mount point (:func:`usrview.boot.rootwatch.wait_until_mounted`).
    The unit's start timeout ends a wait that never ends."""
    if is_mount_point(path):
        return
    console.say(f"waiting for the root file system on {path}", KERN_NOTICE)
    wait_until_mounted(path)


def wait_for_fuse(console: "Console") -> bool:
    """Return once the FUSE device exists, or after :data:`FUSE_WAIT` seconds;
    whether it was missing at first.

    The unit starts before ``systemd-modules-load.service`` loads the ``fuse``
    module (dracut's module lists it in modules-load.d): Python's start and the
    imports need no FUSE, only the mount does, and by then the module is loaded.
    If the device is missing when the mount is near, the module is loaded here
    too (``modprobe``, from the initrd)."""
    path = os.environ.get(FUSE_DEVICE_ENV, FUSE_DEVICE)
    if os.path.exists(path):
        return False
    console.say(f"waiting for {path}", KERN_NOTICE)
    deadline = time.monotonic() + FUSE_WAIT
    try:
        subprocess.run(["modprobe", "-q", "fuse"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=FUSE_WAIT, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        console.say(f"modprobe fuse: {getattr(e, 'strerror', None) or e}", KERN_NOTICE)
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(FUSE_POLL)
    return True


class Console:
    """Messages for the boot console: one line each on stderr and in the kernel log.

    Attributes: lines (the messages said, for tests), kmsg_fd (None when the
    kernel log is not writable)."""

    def __init__(self, kmsg: str | None = None):
        self.lines: list[str] = []
        path = kmsg or os.environ.get(KMSG_ENV) or KMSG
        try:
            self.kmsg_fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError:
            self.kmsg_fd = None

    def say(self, message: str, priority: int = KERN_WARNING) -> None:
        self.lines.append(message)
        line = f"usrview: {message}"
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if self.kmsg_fd is not None:
            try:
                os.write(self.kmsg_fd, f"<{priority}>{line}"[:KMSG_MAX].encode("utf-8", "replace") + b"\n")
            except OSError:
                pass  # the console line on stderr is written already

    def close(self) -> None:
        if self.kmsg_fd is not None:
            os.close(self.kmsg_fd)
            self.kmsg_fd = None


def read_cmdline(path: Path, console: Console) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        console.say(f"cannot read the kernel command line {path}: {e.strerror or e}; using the defaults")
        return ""


def within(sysroot: Path, path: str) -> Path:
    return sysroot / path.lstrip("/")


def open_store(sysroot: Path, params: cmdline.BootParams, console: Console) -> Store | None:
    try:
        return Store.open(within(sysroot, params.store))
    except UsrviewError as e:
        if params.store == cmdline.DEFAULT_STORE:
            console.say(f"{e}; nothing to serve", KERN_ERR)
            return None
        console.say(f"usrview.store={params.store}: {e}; trying {cmdline.DEFAULT_STORE}")
    try:
        return Store.open(within(sysroot, cmdline.DEFAULT_STORE))
    except UsrviewError as e:
        console.say(f"{e}; nothing to serve", KERN_ERR)
        return None


def signature_policy(sysroot: Path, console: Console) -> policies.Policy:
    """The policy SYSROOT's configuration names; the default when it names none or
    cannot be read (then with a console line)."""
    path = sysroot / DEFAULT_CONFIG
    if not path.exists():
        return policies.DEFAULT
    try:
        return config.load(path).signature_policy
    except UsrviewError as e:
        console.say(f"{e}; signature policy {policies.DEFAULT.name}")
        return policies.DEFAULT


def load_keys(paths: list[Path], console: Console, policy: policies.Policy = policies.DEFAULT
              ) -> Keyring | None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        console.say(f"no trusted keys: {', '.join(missing)} missing; nothing can be served", KERN_ERR)
        return None
    keyring = Keyring.load(paths, policy=policy)
    for warning in keyring.warnings:
        console.say(warning)
    return keyring


def recorded_images(store: Store, console: Console) -> list[images.Image]:
    """The images that can be read, newest first; one console line per damaged record."""
    found = []
    for image_id in images.image_ids(store):
        try:
            found.append(images.load_image(store, image_id))
        except UsrviewError as e:
            console.say(str(e))
    return sorted(found, key=lambda im: im.sort_key, reverse=True)


def make_plan(store: Store, params: cmdline.BootParams, ids: list[str], state: bootstate.BootState) -> Plan:
    requested_id, not_found = None, ""
    try:
        requested_id = images.resolve(store, params.image).id
    except UsrviewError as e:
        not_found = str(e)
    pointers = {}
    for name in (images.CURRENT, images.PREVIOUS):
        try:
            pointers[name] = images.pointer(store, name)
        except UsrviewError:
            pointers[name] = None
    return plan(state, ids, requested=params.image, requested_id=requested_id, explicit=params.explicit,
                not_found=not_found, current=pointers[images.CURRENT], previous=pointers[images.PREVIOUS])


def count_boot(store: Store, params: cmdline.BootParams, ids: list[str], console: Console) -> tuple[Plan, bool]:
    """Plan the boot and spend the try, under the store lock; (plan, whether the
    boot state can be written)."""
    try:
        with store.lock(timeout=BOOT_LOCK_TIMEOUT):
            state = bootstate.load(store)
            if state.problem:
                console.say(state.problem)
            boot_plan = make_plan(store, params, ids, state)
            first = boot_plan.candidates[0] if boot_plan.candidates else None
            if boot_plan.mark_bad:
                state.mark_bad(*boot_plan.mark_bad)
            if first is not None and first.spend_try:
                left = state.spend_try(first.image)
                console.say(f"image {first.image} is on trial: {left} more boot(s) after this one "
                            "unless usrview boot-complete marks it good", KERN_NOTICE)
            if boot_plan.mark_bad or (first is not None and first.spend_try):
                bootstate.save(store, state)
            return boot_plan, True
    except (UsrviewError, OSError) as e:
        console.say(f"boot counting is off for this boot, the store cannot be written: "
                    f"{getattr(e, 'strerror', None) or e}")
        return make_plan(store, params, ids, bootstate.load(store)), False


def record_boot(store: Store, boot_plan: Plan, chosen: Candidate, reason: str) -> None:
    with store.lock(timeout=BOOT_LOCK_TIMEOUT):
        state = bootstate.load(store)
        fallback = bool(reason) or chosen.image != boot_plan.requested
        boot = bootstate.boot_id()
        state.record_boot(chosen.image, boot, fallback=fallback)
        if fallback:
            state.add_event(boot, boot_plan.requested, chosen.image, reason or "fallback")
        bootstate.save(store, state)


def root_owners(sysroot: Path) -> tuple[OwnerIds, OwnerIds]:
    """The (users, groups) tables of the root file system's own ``/etc``: the
    initrd's ``/etc/passwd`` knows only root, and the view must show the owners
    the booted system knows (a set-gid ``shadow`` program stays ``shadow``)."""
    return OwnerIds.from_file(sysroot / "etc/passwd"), OwnerIds.from_file(sysroot / "etc/group")


def choose_and_load(store: Store, params: cmdline.BootParams, keyring: Keyring, console: Console,
                    serving: contextlib.ExitStack, owners: tuple[OwnerIds, OwnerIds] | None = None,
                    stages: Stages | None = None):
    """Steps 3 and 4: the image this boot serves, loaded; (its Image record, its tree),
    or None when no image loads.  Its in-use lock joins ``serving``; ``stages``
    marks the plan, the headers and the tree."""
    from usrview.view.ctree import open_view  # the tree needs the view room

    ids = [im.id for im in recorded_images(store, console)]
    if not ids:
        console.say(f"the store {store.root} has no image; nothing to serve", KERN_ERR)
        return None
    boot_plan, writable = count_boot(store, params, ids, console)
    if stages:
        stages.mark("records and plan")
    failures: list[str] = []
    for candidate in boot_plan.candidates:
        with contextlib.ExitStack() as attempt:
            try:
                image = attempt.enter_context(images.hold_image(store, candidate.image))
                # The compiled tree, mapped (each header's signature checked at its
                # package's first use and by the full check; all of them now when
                # the tree must be composed because the store has none or it does
                # not fit them): written only by deploy and usrview mount.
                tree = open_view(store, image, keyring, owners=owners, write=False)
                if stages:  # a mapped tree's headers are checked at first use and in the background
                    stages.mark(f"headers ({len(image.packages) if tree.proven else sum(tree.checked)} "
                                f"signatures) and {'tree composed' if tree.proven else 'compiled tree'}")
            except (UsrviewError, OSError) as e:
                failures.append(f"image {candidate.image} cannot be served: {e}")
                console.say(failures[-1], KERN_ERR)
                continue
            attempt.callback(tree.close)
            serving.enter_context(attempt.pop_all())  # the in-use lock and the tree, for the mount's life
            break
    else:
        console.say("no image can be served", KERN_ERR)
        return None
    reason = "; ".join(filter(None, [candidate.reason, *failures]))
    if reason:
        console.say(f"booting image {candidate.image} instead of {boot_plan.requested}: {reason}", KERN_ERR)
    if writable:
        try:
            record_boot(store, boot_plan, candidate, reason)
        except (UsrviewError, OSError) as e:
            console.say(f"cannot record this boot's image: {getattr(e, 'strerror', None) or e}")
    return image, tree


def checking_ahead(store: Store, image_id: str, tree, params: cmdline.BootParams, console: Console,
                   serving: contextlib.ExitStack, sysroot: Path, warm: bool = False):
    """The prefetch (:mod:`usrview.view.prefetch`) of this boot, for ``serve_tree``
    (None with ``usrview.verify=off``: nothing to check), and how many files the
    record names: the files the last boot of the image opened, checked ahead, and
    with ``warm`` read through the mount on SYSROOT/usr from the mount on
    (:mod:`usrview.view.warm`, beneath a fd of SYSROOT opened now); this boot's
    opens recorded beneath the store's ``cache/`` and ``tmp/`` opened now."""
    from usrview.view.prefetch import Prefetch, RecordDirs, load_record, remove_stale_records
    from usrview.view.warm import Warm

    if params.verify == "off":
        return None, 0
    previous = load_record(store, image_id)
    with contextlib.suppress(OSError):  # a read-only root: the records stay
        remove_stale_records(store)
    try:
        dirs = RecordDirs(store)
    except OSError as e:
        console.say(f"the files this boot opens are not recorded: {store.root}: {e.strerror or e}", KERN_NOTICE)
        dirs = None
    else:
        serving.callback(dirs.close)

    def report(summary: str) -> None:
        console.say(summary, KERN_NOTICE)

    warming = None
    if previous and warm:
        try:
            warming = Warm(os.open(sysroot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "usr", report=report)
        except OSError as e:
            console.say(f"the recorded files are not read ahead through the mount: {sysroot}: {e.strerror or e}",
                        KERN_NOTICE)
        else:
            serving.callback(warming.close)

    def make(guard):
        return Prefetch(tree, guard, store, image_id, previous, record_dirs=dirs, first_save=FIRST_SAVE,
                        save_period=SAVE_PERIOD, report=report, warm=warming).run
    return make, len(previous)


def raise_read_ahead(mountpoint: Path, kib: int, console: Console) -> None:
    """Let the kernel read ``kib`` KiB ahead per READ of the view's files (its
    device's ``read_ahead_kb``, 128 for a FUSE mount; a READ carries at most 1 MiB):
    fewer, larger READs of the files the boot reads in full or maps (programs'
    libraries), each a round trip into the daemon, whose bytes the guard checks
    whole at the first read anyway.  Called before serving: the sysfs file and
    the mount's root (``O_PATH``: no request) are opened now, by path; a thread
    writes the value once the kernel's INIT is answered (it sets the read-ahead
    too), which a STATFS of the root waits for."""
    try:
        # not realpath: that would look up the view's root, which this thread serves
        device = mounted_device(os.fsencode(os.path.normpath(mountpoint)))
        if device is None:
            raise FileNotFoundError(f"{mountpoint} is not in the mount table")
        sysfs = os.open(f"/sys/class/bdi/{device}/read_ahead_kb", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        console.say(f"{mountpoint}: the kernel's read-ahead is left as it is: {e.strerror or e}", KERN_NOTICE)
        return
    try:
        root = os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        os.close(sysfs)
        raise

    def write() -> None:
        try:
            os.fstatvfs(root)
            os.write(sysfs, b"%d\n" % kib)
        except OSError as e:
            console.say(f"{mountpoint}: the kernel's read-ahead is left as it is: {e.strerror or e}", KERN_NOTICE)
        finally:
            os.close(root)
            os.close(sysfs)

    threading.Thread(target=write, name="usrview-read-ahead", daemon=True).start()


def initrd_mount(sysroot: Path, cmdline_path: Path, keys: list[Path] | None, console: Console,
                 policy: policies.Policy | None = None, *, wait: bool = False,
                 stages: Stages | None = None, read_ahead: int = READ_AHEAD_KIB, warm: bool = False,
                 boot_spin: float = config.BOOT_SPIN_SECONDS) -> int:
    """Serve this boot's image on SYSROOT/usr until unmounted, judging signatures
    under ``policy`` (None: SYSROOT's configuration's); with ``wait``, once
    SYSROOT is mounted.  For ``boot_spin`` seconds from the mount the wait for a
    request polls up to config.BOOT_SPIN_US within a burst, then
    config.DISPATCH_SPIN_US.  The exit status."""
    stages = stages or Stages()
    # Serving needs trio and pyfuse3 (imported here, not for every command line).
    from usrview.view.ctree import start_full_check
    from usrview.view.fs import kernel_cache_features, set_spin
    from usrview.view.loader import release_free_memory
    from usrview.view.mount import serve_tree
    from usrview.view.profile import ServingProfile

    if codecache.active is not None or codecache.refused:  # python -m usrview.cli started it
        stages.mark(f"serving modules ({codecache.summary(codecache.stop())})")
    else:
        stages.mark("serving modules")
    sysroot = sysroot.absolute()
    params = cmdline.parse(read_cmdline(cmdline_path, console))
    for problem in params.problems:
        console.say(problem)
    if wait:
        wait_for_mount(sysroot, console)
    # The watch python -m usrview.cli started (USRVIEW_ROOT_WATCH) ends before any other
    # thread starts or the daemon forks; it raised this thread's priority at the root's
    # mount, while the imports above ran if they still did then (the stage says by how much).
    raised = rootwatch.stop()
    if wait:
        late = stages.marks[-1][1] - raised if raised is not None else 0.0
        stages.mark(f"waiting for {sysroot}" + (f" (mounted {late:.2f} s before)" if late > 0 else ""))
        with contextlib.suppress(OSError):  # not allowed: served at the priority it has
            os.setpriority(os.PRIO_PROCESS, 0, SERVING_NICE)  # this thread, and those it starts
    store = open_store(sysroot, params, console)
    if store is not None and policy is None:
        policy = signature_policy(sysroot, console)
    keyring = load_keys(keys or [sysroot / DEFAULT_KEYS], console, policy) if store else None
    if store is None or keyring is None:
        return EXIT_ERROR
    stages.mark("store and keys")
    with contextlib.ExitStack() as serving:
        chosen = choose_and_load(store, params, keyring, console, serving, root_owners(sysroot), stages)
        if chosen is None:
            return EXIT_ERROR
        image, tree = chosen
        image_id = image.id
        release_free_memory()
        ahead, recorded = checking_ahead(store, image_id, tree, params, console, serving, sysroot, warm)
        stages.mark(f"prefetch record ({recorded} files)")
        mountpoint = sysroot / "usr"
        with contextlib.suppress(OSError):  # then mounting says why
            mountpoint.mkdir(mode=0o755)
        kernel_cache = kernel_cache_features(params.kernel_cache)
        console.say(f"serving image {image_id} on {mountpoint} (verify={params.verify}, kernel cache "
                    f"{', '.join(sorted(kernel_cache)) or 'off'})", KERN_NOTICE)
        if not tree.proven:
            # In the daemon, before any thread (it forks): the child reads the
            # headers beneath the store's fd, past switch-root.
            def check_failed(reason: str) -> None:
                console.say(f"{reason}; every file of {mountpoint} answers EIO from now on", KERN_ERR)

            check = start_full_check(tree, store, image, keyring, confined=True, on_failure=check_failed,
                                     on_proven=lambda line: console.say(line, KERN_NOTICE),
                                     delay=params.full_check_delay)
            if check is not None:
                serving.callback(check.stop)  # unmounted: the child, waiting or reading, ends with the daemon
        if wait_for_fuse(console):
            stages.mark("waiting for the FUSE device")
        rootdaemon.prepare()

        def on_ready() -> None:
            stages.mark("mount")
            if read_ahead:
                raise_read_ahead(mountpoint, read_ahead, console)
            console.say(stages.line(), KERN_NOTICE)
            rootdaemon.on_ready()

        async def end_boot_spin() -> None:
            import trio

            await trio.sleep(boot_spin)
            if set_spin(config.DISPATCH_SPIN_US):
                log.info("the boot's busy-poll of up to %g µs ended: %g µs from now on", config.BOOT_SPIN_US,
                         config.DISPATCH_SPIN_US)

        try:
            serve_tree(tree, os.fspath(mountpoint), verify=params.verify, kernel_cache=kernel_cache,
                       on_ready=on_ready, prefetch=ahead, profile=ServingProfile() if params.profile else None,
                       spin_us=config.BOOT_SPIN_US, tasks=[end_boot_spin])
        except UsrviewError as e:
            console.say(f"cannot serve {mountpoint}: {e}", KERN_ERR)
            return EXIT_ERROR
    return EXIT_OK


def boot_complete(store: Store) -> tuple[str, str]:
    """Mark the image this boot serves good; (its id, its state before)."""
    with store.lock():
        state = bootstate.load(store)
        boot = state.boot
        if boot is None:
            raise OperationalError(f"{store.boot_state_path} records no boot: this /usr was not mounted "
                               "by usrview initrd-mount")
        this_boot = bootstate.boot_id()
        if boot.boot_id and this_boot and boot.boot_id != this_boot:
            raise OperationalError(f"the latest boot recorded ({boot.at}, image {boot.image}) is not this "
                               "one: this /usr was not mounted by usrview initrd-mount")
        if boot.image not in images.image_ids(store):
            raise OperationalError(f"image {boot.image} of this boot no longer exists")
        before = state.of(boot.image).state
        state.mark_good(boot.image)
        bootstate.save(store, state)
    return boot.image, before
