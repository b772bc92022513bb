"""The package cache: a package whose subvolume, header file, keyring and owner
names are unchanged since a run that checked it completely has the same
findings; they are taken from the cache without touching its files
(docs/verify.md, "The package cache", says why that is sound).

The subvolumes' generations come from one search of btrfs's root tree
(:func:`usrview.store.btrfs.child_subvolume_states`) after a syncfs
(:class:`Commit`) that runs while the image and the cache rows are read
(:func:`package_rows`); :func:`cached_packages` then decides which rows hold.
The rows themselves live in the verified-results cache (:mod:`usrview.verify.vcache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from usrview.store import btrfs
from usrview.store.store import Store
from usrview.verify import vcache
from usrview.verify.report import Finding, Stats
from verifier.fileio import OwnerIds
from verifier.files import FileEntry
from verifier.keyring import Keyring

if TYPE_CHECKING:
    from usrview.verify.check import PackageOutcome

#: A cached package outcome older than this is checked again (signatures against
#: keys that may have expired meanwhile; the digests still come from the file cache).
PACKAGE_RECHECK_SECONDS = 3600
#: Bumped when what a package row means changes.
_PACKAGE_KEY_VERSION = "p3"   # p3: directories walked without following symlinks


def _syncfs(fd: int) -> bool:
    """Commit the file system's pending changes (a btrfs subvolume's generation is
    updated at commit): True when that worked."""
    try:
        btrfs.syncfs(fd)
    except OSError:
        return False
    return True


def _subvolume_states(pfd: int, pkgids: Sequence[str]) -> dict[str, str]:
    """pkgid -> ``uuid:treeid:generation`` of each package subvolume in the packages
    directory ``pfd`` (absent: not a subvolume): from one search of btrfs's root
    tree where that is allowed (root), else one ioctl per package."""
    try:
        return btrfs.child_subvolume_states(pfd)
    except OSError:   # EPERM without CAP_SYS_ADMIN; ENOTTY off btrfs
        pass
    out = {}
    for p in pkgids:
        state = btrfs.subvolume_state(p, pfd)
        if state is not None:
            out[p] = state
    return out


def keyring_fingerprint(keyring: Keyring) -> str:
    """A hash that changes when the trusted keys, their subkeys or revocations do."""
    h = hashlib.sha256(keyring.policy.name.encode())  # the verdicts follow the policy
    parts = []
    for cert in keyring.certificates:
        sigs = sorted(str(getattr(r, "created", r)) for r in cert.revocations)
        subs = sorted((sub.key.fingerprint_hex, len(sub.bindings),
                       tuple(sorted(str(getattr(r, "created", r)) for r in sub.revocations)))
                      for sub in cert.subkeys)
        parts.append(repr((cert.primary.fingerprint_hex, sigs, len(cert.direct_sigs), subs,
                           sorted(cert.rejected_hashes), len(cert.user_ids))))
    for part in sorted(parts):
        h.update(part.encode())
    return h.hexdigest()


def _package_key(state: str | None, header: tuple | None, unsigned: bool, keyring_fp: str) -> str | None:
    """The package cache's key of a package: its subvolume's state, its header file's
    identity, the keyring and whether it was imported unsigned."""
    if state is None or header is None:
        return None
    return f"{_PACKAGE_KEY_VERSION} {state} {header} {keyring_fp} {unsigned}"


def names_used(entries: list[FileEntry], users: OwnerIds, groups: OwnerIds) -> dict[str, int | None]:
    """The owner names other than root that ``entries`` use (``u:NAME``, ``g:NAME``) ->
    the ids they resolve to in this run: a cached outcome holds while they do."""
    out = {}
    for e in entries:
        if e.user != "root":
            out["u:" + e.user] = users.get(e.user)
        if e.group != "root":
            out["g:" + e.group] = groups.get(e.group)
    return out


def _names_unchanged(names: dict, users: OwnerIds, groups: OwnerIds) -> bool:
    return all((users if k[0] == "u" else groups).get(k[2:]) == v for k, v in names.items())


def cacheable(out: PackageOutcome) -> bool:
    """Only outcomes of the files themselves are remembered, not passing trouble
    (a file or header that could not be read)."""
    if any(r[0].unknown or r[0].error for r in out.results.values()):
        return False
    return not any("unreadable" in f.message or "package directory" in f.message for f in out.header)


def outcome_json(out: PackageOutcome, findings: list[Finding]) -> str:
    """A package row's outcome: the package's findings and counters."""
    return json.dumps({"findings": [f.to_json() for f in findings], "names": out.names,
                       "files": out.stats.files, "digests": out.digest_files})


class Commit(threading.Thread):
    """Commits pending changes so that subvolume generations are current (see
    _subvolume_states), in the background while the run reads the image; ``ok``:
    whether that worked (else the package cache is not used)."""

    def __init__(self, store: Store):
        super().__init__(name="verify-syncfs", daemon=True)
        self.store = store
        self.ok = False
        self.start()

    def run(self) -> None:
        try:
            fd = self.store.open_packages_dir()
        except OSError:
            return
        try:
            self.ok = _syncfs(fd)
        finally:
            os.close(fd)

    def wait(self) -> bool:
        self.join()
        return self.ok


def package_rows(store: Store, pkgids: list[str], rows: dict) -> dict[str, tuple]:
    """pkgid -> (header file identity or None, parsed cache row or None): the part of
    the package cache's check that does not need the file system committed."""
    now = time.time()
    out: dict[str, tuple] = {}
    header_stats = store.header_stats(pkgids)
    for p in pkgids:
        st = header_stats.get(p)
        # the identity (vcache.identity) without the algorithm
        header = None if st is None else vcache.identity(st, 0)[:5]
        row = rows.get(p)
        data = None
        if header is not None and row is not None and 0 <= now - row[1] < PACKAGE_RECHECK_SECONDS:
            try:
                data = (row[0], json.loads(row[2]))
            except ValueError:
                data = None
        out[p] = (header, data)
    return out


def cached_packages(store: Store, keyring: Keyring, pkgids: list[str], unsigned: set[str], rows: dict,
                    users: OwnerIds, groups: OwnerIds, pkg_keys: dict[str, str],
                    cached_findings: dict[str, list[Finding]], stats: Stats) -> None:
    """Fill ``pkg_keys`` (every package's cache key) and ``cached_findings`` (the packages
    whose row in ``rows``, as package_rows gives them, is valid: the package cache).
    ``users``, ``groups``: the run's owner tables.  Called once the file system is
    committed (subvolume generations are current)."""
    kfp = keyring_fingerprint(keyring)
    try:
        pfd = store.open_packages_dir()
    except OSError:
        return
    try:
        states = _subvolume_states(pfd, pkgids)
    finally:
        os.close(pfd)
    for p in pkgids:
        header, row = rows.get(p, (None, None))
        key = _package_key(states.get(p), header, p in unsigned, kfp)
        if key is None:
            continue
        pkg_keys[p] = key
        if row is None or row[0] != key:
            continue
        data = row[1]
        try:
            if not _names_unchanged(data["names"], users, groups):
                continue
            cached_findings[p] = [Finding(**f) for f in data["findings"]]
            stats.files += data["files"]
            stats.cache_hits += data["digests"]
            stats.cached_packages += 1
        except (KeyError, TypeError, AttributeError):
            continue
