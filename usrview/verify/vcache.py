"""The verified-results cache: per package, the digests its files had and its last outcome.

``STORE/cache/verify.sqlite`` holds two rows per package checked completely::

    packages: pkgid -> (key, checked, outcome)
    digests:  pkgid -> blob

The blob is a packed array of records, one per file hashed (or taken from this
cache) in that check::

    (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, algo) -> digest

A later run that finds a file with the same identity takes the digest from
here instead of reading the file.  A record holds what the file's bytes hashed
to, not whether they matched: a tampered file stays reported for as long as it
stays as it is.  ``key``, ``checked`` and ``outcome`` are the package cache
(:mod:`usrview.verify`): the findings of the package's last complete check and
what they depend on; an empty key never matches.

Why no change can hide behind a record (docs/verify.md has the whole argument):
every way of changing a file's bytes, size, mode, owner, xattrs or link --
write, truncate, chmod, chown, setxattr, rename over it, replacing it --
either changes its ctime (which the kernel sets to the current time and no
system call lets a process set) or gives the path another inode.  Only someone
who can set the system clock back, or write the block device or the cache
itself -- root, who can also rewrite this file -- can make a changed file look
unchanged; ``usrview verify --full`` and the monitor's full checks ignore the
cache for that reason.

Rows per package, not per file: a run reads the rows it needs in one query and
writes a few hundred small rows in one transaction (18,000 file rows took 80 ms
to write and 50 ms to read); a digest blob is written only when it changed.
Commits do not wait for the disk (``synchronous=NORMAL``): a crash may lose the
last run's rows, never corrupt the others.  The cache is a hint, never a
source of truth: a cache that cannot be read is ignored (and rebuilt), a blob
that is malformed counts as empty, and a cache that cannot be written (a
non-root user running verify) just costs time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

from usrview.store.store import Store

log = logging.getLogger(__name__)

CACHE_FILE = "verify.sqlite"
#: Bumped whenever the meaning of a row changes; other versions are discarded.
SCHEMA_VERSION = 3
CACHE_DIR_MODE = 0o700

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, algo)
Identity = tuple[int, int, int, int, int, int]

#: One digest record: the identity, the digest's length in bytes, the digest
#: (room for SHA-512).
_RECORD = struct.Struct("<QQQqqBB64s")


def identity(st: os.stat_result, algo: int) -> Identity:
    """The cache key of a file as ``st`` describes it, for digest algorithm ``algo``."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, algo)


def cache_path(store: Store) -> Path:
    return store.cache_path(CACHE_FILE)


def pack_digests(rows: Iterable[tuple[Identity, str]]) -> bytes:
    """The ``digests`` blob of (identity, hex digest) pairs."""
    pack = _RECORD.pack
    out = []
    for ident, digest in rows:
        raw = bytes.fromhex(digest)
        out.append(pack(*ident, len(raw), raw))
    return b"".join(out)


def unpack_digests(blob: bytes) -> dict[Identity, str]:
    """identity -> hex digest, from a ``digests`` blob; empty when it is malformed."""
    if len(blob) % _RECORD.size:
        return {}
    try:
        return {r[:6]: r[7][:r[6]].hex() for r in _RECORD.iter_unpack(blob)}
    except struct.error:
        return {}


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS packages (
        pkgid TEXT PRIMARY KEY NOT NULL,
        key TEXT NOT NULL,
        checked REAL NOT NULL,
        outcome TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS digests (
        pkgid TEXT PRIMARY KEY NOT NULL,
        blob BLOB NOT NULL
    )""",
)


def _regular_file(path: Path) -> bool:
    """Whether the cache at ``path`` is a regular file (lstat: not a symlink, not a FIFO
    whose reads would block sqlite): anything else is ignored, as an absent cache."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read(path: str | os.PathLike, query: str) -> list[tuple] | None:
    """The rows ``query`` selects from the cache at ``path``; None when the cache is
    absent, unreadable or of another schema version (it is then ignored)."""
    path = Path(path)
    if not _regular_file(path):
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


def load_packages(path: str | os.PathLike) -> dict[str, tuple[str, float, str]]:
    """The package-outcome rows: pkgid -> (key, time checked, outcome JSON); empty when
    the cache is absent or unreadable.  See :mod:`usrview.verify` (package cache)."""
    rows = _read(path, "SELECT pkgid, key, checked, outcome FROM packages")
    return {r[0]: (r[1], r[2], r[3]) for r in rows or ()}


def load_digests(path: str | os.PathLike, pkgids: Iterable[str] | None = None) -> dict[str, bytes]:
    """pkgid -> ``digests`` blob (see :func:`unpack_digests`) of ``pkgids`` (None: every
    package); empty when the cache is absent or unreadable."""
    wanted = None if pkgids is None else set(pkgids)
    if wanted is not None and not wanted:
        return {}
    rows = _read(path, "SELECT pkgid, blob FROM digests")
    return {r[0]: bytes(r[1]) for r in rows or () if wanted is None or r[0] in wanted}


def load(path: str | os.PathLike) -> dict[Identity, str]:
    """Every digest record of the cache at ``path``, of all packages."""
    out: dict[Identity, str] = {}
    for blob in load_digests(path).values():
        out.update(unpack_digests(blob))
    return out


def save(path: str | os.PathLike, packages: Iterable[tuple[str, str, float, str, bytes]], *,
         replace: bool = False) -> bool:
    """Write the rows ``packages`` (pkgid, key, checked, outcome JSON, digests blob), each
    replacing the package's rows; ``replace``: they become the cache's whole content.

    Returns False, after an INFO record, when the cache cannot be written.
    """
    path = Path(path)
    packages = list(packages)
    if not packages and not replace:
        return True
    try:
        path.parent.mkdir(mode=CACHE_DIR_MODE, exist_ok=True)
        if os.path.lexists(path) and not _regular_file(path):
            raise OSError(errno.EINVAL, "not a regular file")
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
    except (OSError, sqlite3.Error) as e:
        log.info("cannot write the verify cache %s: %s", path, e)
        return False
    try:
        with contextlib.closing(con):
            version = con.execute("PRAGMA user_version").fetchone()[0]
            con.execute("BEGIN IMMEDIATE")
            if version != SCHEMA_VERSION:
                for table in ("digests", "packages"):
                    con.execute(f"DROP TABLE IF EXISTS {table}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                con.execute(statement)
            old = dict(con.execute("SELECT pkgid, blob FROM digests"))
            if replace:
                con.execute("DELETE FROM packages")
                keep = {p[0] for p in packages}
                con.executemany("DELETE FROM digests WHERE pkgid = ?", ((p,) for p in old if p not in keep))
            con.executemany("INSERT OR REPLACE INTO packages VALUES (?, ?, ?, ?)", (p[:4] for p in packages))
            con.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?)",
                            ((p[0], p[4]) for p in packages if old.get(p[0]) != p[4]))
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
