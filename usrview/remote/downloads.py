"""Pull's ``STORE/downloads/``: its lock, and the removal of what it no longer needs.

What lies there (:mod:`usrview.remote.pull`, :mod:`usrview.remote.delta`)::

    downloads/RPM_SHA256.part     an rpm being fetched (kept to resume), or a package's
                                  header alone (the file-level delta)
    downloads/RPM_SHA256.rpm      an rpm fetched whole and verified, not imported yet
    downloads/files/ALGO-HEX      a file fetched as a file object and verified
    downloads/files/.ALGO-HEX.tmp a file object being fetched

One pull at a time downloads into a store: it holds ``flock`` on the directory.
Nothing there is ever a package; a download is only kept for the next pull to
resume.  When it is no longer needed it goes (:func:`clean_downloads`):

- at the end of a successful pull: whatever this pull imported; the downloads of
  packages that are in the store now (a pull of another image stored them, or an
  ``import``); the file objects (the pull that fetched them is done, and a later
  one fetches what it needs); and anything not touched for :data:`STALE_SECONDS`
  (a pull abandoned long ago);
- in ``usrview gc``: everything, unless a pull is downloading right then (an
  abandoned pull started again fetches everything afresh).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from usrview.errors import OperationalError
from usrview.store import Store, StoreError, pkgid_for
from verifier.errors import HeaderError
from verifier.header import read_package_file

log = logging.getLogger(__name__)

#: A download not touched for this long belongs to an abandoned pull.
STALE_SECONDS = 7 * 24 * 3600
DOWNLOAD_SUFFIXES = (".part", ".rpm")
FILES_DIR = "files"


@contextlib.contextmanager
def downloads_lock(store: Store, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of ``STORE/downloads/`` (made when absent).  With ``wait`` False
    and another pull holding it, yield False instead of raising OperationalError."""
    try:
        store.downloads_dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(store.downloads_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OperationalError(f"cannot use {store.downloads_dir}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait:
                raise OperationalError(f"another pull is downloading into the store {store.root}") from None
            yield False
            return
        yield True
    finally:
        os.close(fd)


@dataclass
class CleanResult:
    """What :func:`clean_downloads` removed: names below ``downloads/``, and their bytes."""

    removed: list[str] = field(default_factory=list)
    bytes: int = 0


def clean_downloads(store: Store, *, everything: bool = False, now: float | None = None) -> CleanResult:
    """Remove the downloads no pull needs any more (see the module); the caller holds
    :func:`downloads_lock`."""
    result = CleanResult()
    top = store.downloads_dir
    now = time.time() if now is None else now
    try:
        names = sorted(os.listdir(top))
    except FileNotFoundError:
        return result
    for name in names:
        path = top / name
        st = os.lstat(path)
        if name == FILES_DIR and stat.S_ISDIR(st.st_mode):
            size = sum(os.lstat(path / n).st_size for n in os.listdir(path))
            shutil.rmtree(path)
        elif not stat.S_ISREG(st.st_mode):
            continue  # nothing pull makes: left alone
        elif everything or now - st.st_mtime > STALE_SECONDS or _stored(store, path):
            size = st.st_size
            os.unlink(path)
        else:
            continue
        result.removed.append(name)
        result.bytes += size
    if result.removed:
        log.info("removed %d download(s) no pull needs (%d bytes)", len(result.removed), result.bytes)
    return result


def _stored(store: Store, path) -> bool:
    """Whether the download at ``path`` is of a package the store holds."""
    if not path.name.endswith(DOWNLOAD_SUFFIXES):
        return False
    try:
        return store.has(pkgid_for(read_package_file(path, strict=False)))
    except (OSError, HeaderError, StoreError):
        return False  # a header not complete yet: an interrupted download, kept to resume
