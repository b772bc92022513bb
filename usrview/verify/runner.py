"""Bulk verification of an image: the engine behind ``usrview verify`` and the monitor.

What is checked (docs/verify.md is the reference):

1. The image record (``images/ID.json`` through ``current`` or ``--image``):
   it must parse, its id's package-set hash must match its package list, every
   package it names must be stored, and its ``unsigned`` list must agree with
   the store's ``unsigned/`` markers.
2. Each package's header file: its signature must be GOOD with the trusted
   keys (UNSIGNED only for a package recorded as imported unsigned, and then it
   is still reported, kind ``unsigned``), and the SHA-256 of its header region
   must match the package id.  A header that fails is reported and its files
   are not checked: an untrusted header says nothing about them.
3. Every file each header lists, against the package directory, with rpm -V's
   rules (:func:`verifier.filecheck.check_file`), producing rpm -V's line.
   Device nodes and FIFOs are not stored (the importer leaves them in the
   header only), so they are not looked for.
4. Everything in a package directory that its header does not list (and that is
   not a parent directory of a listed path): an ``unowned`` line.

How it is fast (docs/verify.md, "How it is fast", has the measurements):

- ``jobs`` forked worker processes (default one per CPU; FACTS.md: two
  processes hash at twice the speed of one, threads do not) take packages from
  a shared counter, largest header first, so they finish together.  A worker
  checks a package's signature, the metadata of its files and, unless a file's
  extents are shared, its digest; it sends back only findings, counters and
  the package's digests as one packed blob -- never the file list.  No pool is
  started when at most one package is left to check.
- Per regular file: lstat, open, fstat, flistxattr and fgetxattr when it names
  the capabilities (P), reads into one buffer per process, close.  A file whose
  type, mode, owner, group, size and mtime all equal the header's needs none of
  rpm -V's case analysis
  (:func:`verifier.filecheck.metadata_matches`); any other file goes through
  :func:`verifier.filecheck.check_file`.
- Unowned entries: a walk of the real directories on the file loop's lstat
  results; on btrfs a directory whose size is that of the names expected in it
  (all found) holds nothing else and is not read
  (:func:`usrview.verify.unowned.unowned_paths`).
- A cold page cache: a package's first read that would wait (RWF_NOWAIT) starts
  a read-ahead thread (:class:`usrview.verify.check.Prefetcher`) for the
  package's following files.
- The verified-results cache (:mod:`usrview.verify.vcache`, rows per package): a
  file whose identity (device, inode, size, mtime, ctime) and algorithm are
  known is not read.
- The package cache (btrfs): a package whose subvolume generation, header file
  identity, keyring fingerprint and owner-name resolutions are those of a
  complete check less than an hour ago gets that check's findings without any
  file being looked at (docs/verify.md says why that is sound).  The subvolumes'
  generations come from one search of btrfs's root tree
  (:func:`usrview.store.btrfs.child_subvolume_states`) after a syncfs that runs
  while the image and the cache rows are read.
- Reflink dedupe: a file of at least DEDUPE_MIN_SIZE bytes whose extents are
  all shared (:mod:`usrview.store.fiemap`) is not hashed by the worker; once every
  package is done, the parent groups such files by file system and physical
  extents and the workers hash one file of each group.  Hard links (same
  inode) are hashed once too.

The run's modules, in this package: :mod:`.report` (findings, counters, the JSON
output), :mod:`.image_check` (1), :mod:`.check` (2 and 3: the check of one
package, as a worker runs it), :mod:`.unowned` (4), :mod:`.workers` (the pool),
:mod:`.dedupe` (reflink dedupe), :mod:`.pkgcache` (the package cache) and
:mod:`.context` (what a run hands its workers: they are forked with it as their
argument, so nothing large is pickled on the way in and nothing lives in a
module global).  This module keeps :func:`run`, which ties them together.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence

from usrview import images
from usrview.store.store import Store
from usrview.verify import check, vcache
from usrview.verify.context import RunContext
from usrview.verify.dedupe import hash_group, resolve_deferred
from usrview.verify.image_check import check_image
from usrview.verify.pkgcache import Commit, cacheable, cached_packages, outcome_json, package_rows
from usrview.verify.report import Finding, Report, Stats
from usrview.verify.workers import Workers, split_by_size
from verifier.fileio import OwnerIds
from verifier.keyring import Keyring

log = logging.getLogger(__name__)


def _matches_package(pkgid: str, word: str) -> bool:
    nevra = pkgid.rsplit("-", 1)[0]
    name, version, release = nevra.rsplit("-", 2)
    nvra = f"{name}-{version.split(':', 1)[-1]}-{release}"  # name-E:V-R.A -> name-V-R.A
    return word in (pkgid, nevra, name, nvra)


def run(store: Store, keyring: Keyring, *, image_ref: str = images.CURRENT, filters: Sequence[str] = (),
        jobs: int | None = None, full: bool = False, io_limit: float | None = None,
        progress: Callable[[int, int, Stats], None] | None = None, use_cache: bool = True) -> Report:
    """Verify image ``image_ref`` of ``store``; see the module docstring.

    ``filters``: install paths (``/usr/bin/foo``: that file or what lies below)
    or packages (name, NEVRA, NVRA or package id).  ``full``: ignore the cache
    (and rewrite it from this run).  ``io_limit``: bytes per second read for
    hashing, shared by the workers.  Raises OperationalError when the image
    cannot be named at all.
    """
    t0 = time.monotonic()
    report = Report(signature_policy=keyring.policy.name)
    path_filters = tuple(f.rstrip("/") or "/" for f in filters if f.startswith("/"))
    # the package cache: only for whole packages, and never for --full
    commit = Commit(store) if use_cache and not path_filters else None
    pkg_keys: dict[str, str] = {}
    cached_findings: dict[str, list[Finding]] = {}
    try:
        image, image_findings, pkgids = check_image(store, image_ref)
        report.findings.extend(image_findings)
        if image is None:
            report.duration = time.monotonic() - t0
            return report
        report.image = image.id
        pkg_filters = [f for f in filters if not f.startswith("/")]
        if pkg_filters:
            chosen = []
            for word in pkg_filters:
                hits = [p for p in pkgids if _matches_package(p, word)]
                if not hits:
                    report.errors.append(f"package {word} is not in image {image.id}")
                chosen.extend(h for h in hits if h not in chosen)
            pkgids = chosen
            report.findings = [f for f in report.findings if not f.package or f.package in pkgids]
        cache_file = vcache.cache_path(store)
        users, groups = OwnerIds.users(), OwnerIds.groups()
        unsigned = set(image.unsigned)
        report.legacy_signature_policy = sorted(set(pkgids) & store.legacy_pkgids())
        stats = report.stats
        stats.packages = len(pkgids)
        # while the commit runs: what the package cache needs that does not depend on it
        pkg_rows = package_rows(store, pkgids, {} if full else vcache.load_packages(cache_file)) \
            if commit is not None else None
    finally:
        packages_ok = commit is not None and commit.wait()
    if packages_ok and pkg_rows is not None:
        cached_packages(store, keyring, pkgids, unsigned, pkg_rows, users, groups, pkg_keys, cached_findings,
                        stats)
    todo = [p for p in pkgids if p not in cached_findings]
    digests = vcache.load_digests(cache_file, todo) if use_cache and not full and todo else {}
    # largest packages first (by header size: about their number of files), so that
    # the workers finish together
    sizes = {}
    for p in todo:
        try:
            sizes[p] = os.stat(store.header_path(p)).st_size
        except OSError:
            sizes[p] = 0
    tasks = [(p, p in unsigned) for p in sorted(todo, key=lambda p: -sizes[p])]
    n = min(max(1, jobs or os.cpu_count() or 1), len(tasks))
    ctx = RunContext(store, keyring, digests, path_filters, io_limit / max(n, 1) if io_limit else None,
                     users, groups)
    done_before = len(cached_findings)
    files_before = stats.files

    def tick(packages: int, files: int, hashed: int) -> None:
        progress(done_before + packages, len(pkgids),
                 dataclasses.replace(stats, files=files_before + files, hashed_bytes=hashed))

    if n <= 1:
        ctx.limit_reads()
        outcomes = []
        for task in tasks:
            outcomes.append(check.check_package(ctx, *task))
            if progress:
                tick(len(outcomes), sum(o.stats.files for o in outcomes),
                     sum(o.stats.hashed_bytes for o in outcomes))
        resolve_deferred(ctx, outcomes, stats,
                         lambda jobs: [(key, hash_group(ctx, *args)) for _size, (key, args) in jobs])
    else:
        with Workers(n, ctx, tasks) as workers:
            outcomes = workers.packages(tick if progress else None)
            resolve_deferred(ctx, outcomes, stats, lambda jobs: workers.hash_groups(split_by_size(jobs, n)))
    by_id = {out.pkgid: out for out in outcomes}
    for out in outcomes:
        for k in ("files", "hashed_files", "hashed_bytes", "cache_hits", "deduped_files"):
            setattr(stats, k, getattr(stats, k) + getattr(out.stats, k))
    matched = set().union(*(o.matched for o in outcomes))
    for f in path_filters:
        if f not in matched:
            report.errors.append(f"file {f} is not owned by any package of image {image.id}")
    rows = []
    checked = time.time()
    for pkgid in pkgids:
        if pkgid in cached_findings:
            report.findings.extend(cached_findings[pkgid])
            continue
        out = by_id[pkgid]
        findings = check.package_findings(out)
        report.findings.extend(findings)
        key = pkg_keys.get(pkgid, "") if cacheable(out) else ""
        rows.append((pkgid, key, checked, outcome_json(out, findings) if key else "", out.digests))
    if use_cache and not path_filters:
        # only whole packages are written: a row holds all of a package's digests
        report.cache_written = vcache.save(cache_file, rows, replace=full and not filters)
    report.duration = time.monotonic() - t0
    return report
