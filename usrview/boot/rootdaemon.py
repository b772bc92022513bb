"""The view's daemon as a root-storage daemon: what it does before READY so that it
never needs a file afterwards.

systemd's rules (docs/ROOT_STORAGE_DAEMONS.md in systemd's sources): a daemon that
serves the root file system -- here its ``/usr`` -- is started from the initrd,
never from what it serves, and outlives switch-root and the final kill spree
(``@`` as the first character of argv[0], which the unit's ``ExecStart=@…`` sets;
usrview reads neither ``sys.argv[0]`` nor ``sys.executable``).  After switch-root
the initrd's files are deleted and this process's root directory is still the
initrd's, now empty: a path it has not opened before then no longer leads
anywhere, and a file under the ``/usr`` it serves would be served by itself
(a deadlock).  So before READY (:func:`prepare`):

- every module that serving or stopping would import later is imported
  (:data:`PRELOAD`; the rest are imported at the top of the serving modules);
- the journal socket is connected (:meth:`usrview.journal.Journal.connect`);
  ``$NOTIFY_SOCKET`` (:class:`usrview.view.mount.SystemdNotifier`) and the
  package directories (:class:`usrview.view.guard.Guard`) are opened where they
  are made;
- source lines are never looked up again (:func:`seal_source_lookups`): a
  traceback or a warning would read the daemon's ``.py`` files;
- the working directory is ``/``.

The proof is tests/test_initrd_mount.py: with ``USRVIEW_TEST_AUDIT_LOG=FILE`` the
daemon installs, at READY, an audit hook (:func:`install_audit_recorder`) writing
every open, import, exec, spawn and connect it sees to FILE; the test serves,
reads, tampers, signals and unmounts, and finds nothing written.
"""

from __future__ import annotations

import importlib
import linecache
import logging
import os
import sys

from usrview.journal import JournalHandler

log = logging.getLogger(__name__)

#: Modules imported lazily by what runs after READY (found by the audit test):
#: imported before it.
PRELOAD: tuple[str, ...] = ()
#: Set to a file name, the daemon records after READY what it should never do.
AUDIT_ENV = "USRVIEW_TEST_AUDIT_LOG"
#: The audit events that touch a file or a program (docs.python.org's audit events table).
AUDITED_EVENTS = frozenset({
    "open", "import", "exec", "compile", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
    "os.fork", "os.forkpty", "subprocess.Popen", "ctypes.dlopen", "os.chdir", "os.listdir",
    "os.scandir", "os.walk", "glob.glob", "shutil.copyfile", "socket.connect", "socket.sendto",
    "socket.bind", "os.truncate", "os.rename", "os.remove", "os.mkdir", "os.symlink",
})
#: How much of one event's arguments the recorder writes.
AUDIT_LINE_MAX = 400


def preload(modules=PRELOAD) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            log.debug("preload: no module %s", name)


def connect_journal() -> None:
    """Connect the journal handlers' sockets now (see the module docstring)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, JournalHandler):
            handler.journal.connect()


def _no_checkcache(filename=None) -> None:
    return None


def _no_updatecache(filename, module_globals=None) -> list:
    return []


def seal_source_lookups() -> None:
    """From now on, tracebacks and warnings show no source lines.

    :mod:`linecache` stats and reads a module's source file to show a line of a
    traceback or a warning: for this daemon those files lie in the initrd (gone
    after switch-root) or under the ``/usr`` it serves (a deadlock).  Lines it
    already holds are still shown."""
    linecache.checkcache = _no_checkcache
    linecache.updatecache = _no_updatecache


def prepare() -> None:
    """Everything :mod:`usrview.boot.rootdaemon` says, before the view serves."""
    preload()
    connect_journal()
    seal_source_lookups()
    os.chdir("/")


def install_audit_recorder(path: str) -> None:
    """Write every audited event from now on to ``path``, one line each (tests),
    after the modules imported until now (``# module NAME FILE``).

    The file is opened here, and written with ``os.write``: the hook itself
    opens and imports nothing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.write(fd, b"# audit hook installed at READY\n")
    # what was imported until READY (the initrd must hold it)
    for name, module in sorted(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file:
            os.write(fd, f"# module {name} {file}\n".encode("utf-8", "backslashreplace"))

    def hook(event: str, args: tuple) -> None:
        if event in AUDITED_EVENTS:
            line = f"{event} {args!r}"[:AUDIT_LINE_MAX]
            os.write(fd, line.encode("utf-8", "backslashreplace") + b"\n")

    sys.addaudithook(hook)


def on_ready() -> None:
    """What runs once the view serves: the test-only audit recorder."""
    path = os.environ.get(AUDIT_ENV)
    if path:
        install_audit_recorder(path)
