"""The verified-results cache: the digest a file had, keyed by the file's identity.

``STORE/cache/verify.sqlite`` holds one row per hashed file::

    (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, algo) -> hex digest

A later run that finds a file with the same identity takes the digest from
here instead of reading the file.  The row records what the file's bytes
hashed to, not whether they matched: a tampered file stays reported for as long
as it stays as it is.

Why no change can hide behind a row (docs/verify.md has the whole argument):
every way of changing a file's bytes, size, mode, owner, xattrs or link --
write, truncate, chmod, chown, setxattr, rename over it, replacing it --
either changes its ctime (which the kernel sets to the current time and no
system call lets a process set) or gives the path another inode.  Only someone
who can set the system clock back, or write the block device or the cache
itself -- root, who can also rewrite this file -- can make a changed file look
unchanged; ``usrview verify --full`` and the monitor's full checks ignore the
cache for that reason.

The cache is read whole at the start of a run (one dict) and written in one
transaction at its end.  It is a hint, never a source of truth: a cache that
cannot be read is ignored (and rebuilt), and one that cannot be written (a
non-root user running verify) just costs time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_DIR = "cache"
CACHE_FILE = "verify.sqlite"
#: Bumped whenever the meaning of a row changes; other versions are discarded.
SCHEMA_VERSION = 2
CACHE_DIR_MODE = 0o700

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, algo)
Identity = tuple[int, int, int, int, int, int]


def identity(st: os.stat_result, algo: int) -> Identity:
    """The cache key of a file as ``st`` describes it, for digest algorithm ``algo``."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, algo)


def cache_path(store_root: str | os.PathLike) -> Path:
    return Path(store_root) / CACHE_DIR / CACHE_FILE


_SCHEMA = """
CREATE TABLE IF NOT EXISTS digests (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, algo INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (dev, ino, size, mtime_ns, ctime_ns, algo)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packages (
    pkgid TEXT PRIMARY KEY NOT NULL,
    key TEXT NOT NULL,
    checked REAL NOT NULL,
    outcome TEXT NOT NULL
)
"""


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    return con


def _read(path: str | os.PathLike, query: str) -> list[tuple] | None:
    """The rows ``query`` selects from the cache at ``path``; None when the cache is
    absent, unreadable or of another schema version (it is then ignored)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            if con.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                return None
            return con.execute(query).fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        log.info("ignoring the verify cache %s: %s", path, e)
        return None


def load(path: str | os.PathLike) -> dict[Identity, str]:
    """Every row of the cache at ``path``; empty when it is absent or unreadable."""
    rows = _read(path, "SELECT dev, ino, size, mtime_ns, ctime_ns, algo, digest FROM digests")
    return {tuple(r[:6]): r[6] for r in rows or ()}


def load_packages(path: str | os.PathLike) -> dict[str, tuple[str, float, str]]:
    """The package-outcome rows: pkgid -> (key, time checked, outcome JSON); empty when
    the cache is absent or unreadable.  See :mod:`usrview.verify` (package cache)."""
    rows = _read(path, "SELECT pkgid, key, checked, outcome FROM packages")
    return {r[0]: (r[1], r[2], r[3]) for r in rows or ()}


def save(path: str | os.PathLike, rows: Iterable[tuple[Identity, str]], *, replace: bool = False,
         packages: Iterable[tuple[str, str, float, str]] = (), forget: Iterable[str] = ()) -> bool:
    """Add ``rows`` to the cache (``replace``: they become its whole content), and the
    package-outcome rows ``packages`` (pkgid, key, checked, outcome JSON); drop the
    package rows of ``forget`` (with ``replace``: every package row not in ``packages``).

    Returns False, after an INFO record, when the cache cannot be written.
    """
    path = Path(path)
    rows = list(rows)
    packages = list(packages)
    forget = list(forget)
    if not rows and not replace and not packages and not forget:
        return True
    try:
        path.parent.mkdir(mode=CACHE_DIR_MODE, exist_ok=True)
        con = _connect(path)
    except (OSError, sqlite3.Error) as e:
        log.info("cannot write the verify cache %s: %s", path, e)
        return False
    try:
        with contextlib.closing(con):
            version = con.execute("PRAGMA user_version").fetchone()[0]
            con.execute("BEGIN IMMEDIATE")
            if version != SCHEMA_VERSION:
                con.execute("DROP TABLE IF EXISTS digests")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if version != SCHEMA_VERSION:
                con.execute("DROP TABLE IF EXISTS packages")
            for statement in _SCHEMA.split(";"):
                con.execute(statement)
            if replace:
                con.execute("DELETE FROM digests")
                con.execute("DELETE FROM packages")
            con.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (key + (digest,) for key, digest in rows))
            con.executemany("DELETE FROM packages WHERE pkgid = ?", ((p,) for p in forget))
            con.executemany("INSERT OR REPLACE INTO packages VALUES (?, ?, ?, ?)", packages)
            con.execute("COMMIT")
        return True
    except sqlite3.Error as e:
        log.info("cannot write the verify cache %s: %s", path, e)
        return False


def clear(path: str | os.PathLike) -> None:
    """Remove the cache (and its WAL files)."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
