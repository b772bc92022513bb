"""Reflink dedupe: files whose extents are shared are hashed once per group.

A worker does not hash a file of at least :data:`DEDUPE_MIN_SIZE` bytes whose
extents are all shared (:mod:`usrview.store.fiemap`): it defers it
(:class:`Deferred`).  Once every package is done, the parent groups the deferred
files by file system and physical extents (:func:`resolve_deferred`), the workers
hash one file of each group (:func:`hash_group`), and its digest is every
member's -- unless the representative changed while it was read, then every
member is hashed on its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from usrview.verify import vcache
from usrview.verify.context import RunContext
from usrview.verify.report import Stats
from verifier.fileio import FILE_READ_FLAGS, hash_fd
from verifier.files import VerifyFlag

if TYPE_CHECKING:
    from usrview.verify.check import PackageOutcome

#: Smaller files are hashed without asking FIEMAP whether their extents are shared:
#: the ioctl costs about 15 us a file here, what hashing 30 KiB costs; from 64 KiB
#: on, hashing costs three times the ioctl or more (docs/verify.md).
DEDUPE_MIN_SIZE = 64 << 10


@dataclass
class Deferred:
    """A file whose digest the parent decides (its extents are shared).

    Attributes:
        index: the entry's index in the header.
        relpath: its path in the package directory.
        ident: its identity (vcache.identity) when it was checked.
        extkey: (file system, extents key, algo): equal for files holding the same bytes.
        algo: the hashlib name of its digest algorithm.
        want: the header's digest.
    """

    index: int
    relpath: str
    ident: tuple
    extkey: tuple
    algo: str
    want: str


def hash_group(ctx: RunContext, pkgid: str, relpath: str, ident: tuple, algo: str):
    """Hash one representative of a group of extent-sharing files.
    Returns (digest or None, bytes read, identity unchanged)."""
    try:
        dfd = ctx.store.open_package_dir(pkgid)
    except OSError:
        return None, 0, False
    try:
        fd = os.open(relpath, FILE_READ_FLAGS, dir_fd=dfd)
    except OSError:
        return None, 0, False
    finally:
        os.close(dfd)
    try:
        if vcache.identity(os.fstat(fd), ident[5]) != ident:
            return None, 0, False
        digest, n = hash_fd(fd, algo, throttle=ctx.bucket)
        return digest, n, vcache.identity(os.fstat(fd), ident[5]) == ident
    except OSError:
        return None, 0, False
    finally:
        os.close(fd)


def resolve_deferred(ctx: RunContext, outcomes: list[PackageOutcome], stats: Stats, hash_groups) -> None:
    """Hash one file per group of extent-sharing files (``hash_groups``: a list of
    (size, (key, hash_group arguments after the context)) -> [(key, result)]); give its
    digest to the group."""
    groups: dict[tuple, list[tuple[PackageOutcome, Deferred]]] = defaultdict(list)
    for out in outcomes:
        for d in out.deferred:
            groups[d.extkey].append((out, d))
    if not groups:
        return
    jobs = []
    for key, members in groups.items():
        out, d = members[0]
        jobs.append((d.ident[2], (key, (out.pkgid, d.relpath, d.ident, d.algo))))
    results = dict(hash_groups(jobs))
    records: dict[str, list] = defaultdict(list)
    for key, members in groups.items():
        digest, n, stable = results[key]
        stats.hashed_files += 1
        stats.hashed_bytes += n
        if digest is None or not stable:
            # the representative changed under us: hash every member on its own
            found = [hash_group(ctx, o.pkgid, d.relpath, d.ident, d.algo) for o, d in members]
            stats.hashed_files += len(members)
            stats.hashed_bytes += sum(r[1] for r in found)
        else:
            found = [(digest, 0, True)] * len(members)
            stats.deduped_files += len(members) - 1
        for (out, d), (dig, _n, ok) in zip(members, found):
            res, expected, actual = out.results[d.index]
            if dig is None:
                res = dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST,
                                          unknown=res.unknown | VerifyFlag.FILEDIGEST)
                mine = "?"
            else:
                if ok:
                    records[out.pkgid].append((d.index, d.ident, dig))
                mine = ""
                if dig != d.want:
                    res = dataclasses.replace(res, differs=res.differs | VerifyFlag.FILEDIGEST)
                    mine = f"{d.algo}:{dig}"
            out.results[d.index] = (res, expected, " ".join(x for x in (mine, actual) if x))
    for out in outcomes:
        if out.pkgid in records:   # in header order: the same blob as last time, unless a file changed
            out.digests += vcache.pack_digests(r[1:] for r in sorted(records[out.pkgid]))

