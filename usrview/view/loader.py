"""The image loader: an image's header files read, their signatures checked,
and the view's tree composed from them (:mod:`usrview.view.tree`).

A header the trust gate (:func:`usrview.store.trust.header_trust`) refuses
refuses the mount: one that is not GOOD, except a package that the image record
lists as unsigned (deploy's explicit opt-in) and the store marks as imported
unsigned, whose header is UNSIGNED (and passes rpm's import check): it is
served, with a warning naming it.  GOOD is judged under the keyring's
signature policy: under ``default``, a header only ``legacy`` accepts refuses
the mount, its line naming ``--signature-policy legacy``; under ``legacy`` it is
served, with a warning naming it.  A record whose id does not vouch for its
package list (:func:`usrview.images.recordcheck.id_mismatch`: edited in place to
add, drop or downgrade a package) refuses the mount too.

:func:`load_headers` checks every header at once (a tree compiled at mount, the
full check, verify); a mount of a compiled tree checks each with
:func:`check_header` at its package's first use instead (:mod:`usrview.view.ctree`),
where a refusal makes the view answer EIO rather than refuse the mount.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field

from usrview import images
from usrview.errors import OperationalError
from usrview.store import LEGACY_POLICY, PKGID_HASH_DIGITS, Store
from usrview.store.trust import header_trust
from usrview.view.tree import PackageSource, Tree, build_tree
from verifier import sigcheck
from verifier.fileio import OwnerIds
from verifier.header import Package

log = logging.getLogger(__name__)

#: Fewest packages whose headers :func:`load_headers` checks in several processes
#: (below it a fork costs more than it saves).
PARALLEL_MIN = 128


@dataclass
class LoadedImage:
    """Attributes: image (the record), sources (PackageSource, image order),
    header_digests (pkgid -> SHA-256 of the header file), unsigned (pkgids served unsigned),
    legacy (pkgids only the legacy signature policy accepts)."""

    image: images.Image
    sources: list[PackageSource]
    header_digests: dict[str, str]
    unsigned: list[str]
    legacy: list[str] = field(default_factory=list)


def load_headers(store: Store, image: images.Image, keyring, *, keep_packages: bool = True,
                 jobs: int = 1) -> LoadedImage:
    """Read an image's header files, checking every signature.  Without
    ``keep_packages`` the sources' ``package`` is None: each parsed header is
    dropped once checked (a mount of a compiled tree needs none of them), and
    ``jobs`` processes may share the checks (forked: call it before any thread).

    Raises OperationalError when the record's id does not match its package list,
    a header is missing, or the trust gate refuses it
    (:func:`usrview.store.trust.header_trust`; an UNSIGNED header is allowed for a
    package both the record and the store record as imported unsigned), or it is
    not the header its package id names.
    """
    mismatch = images.id_mismatch(image)
    if mismatch:
        raise OperationalError(f"refusing to mount image {image.id}: its record was changed: {mismatch}")
    loaded = LoadedImage(image, [], {}, [])
    refused = []
    if jobs > 1 and not keep_packages and len(image.packages) >= PARALLEL_MIN:
        checked = _check_in_processes(store, image, keyring, jobs)
    else:
        checked = _check_headers(store, image, keyring, image.packages, keep_packages)
    for refusal, unsigned, legacy, source, digest in checked:
        if refusal is not None:
            refused.append(refusal)
            continue
        if unsigned:
            loaded.unsigned.append(source.pkgid)
        if legacy:
            loaded.legacy.append(source.pkgid)
        loaded.sources.append(source)
        loaded.header_digests[source.pkgid] = digest
    if refused:
        # One line (a user error is one clear line), however many were refused.
        raise OperationalError(f"refusing to mount image {image.id}: {len(refused)} header(s) not "
                               f"trusted: " + "; ".join(refused))
    if loaded.unsigned:
        log.warning("image %s serves UNSIGNED packages (imported with --allow-unsigned): %s",
                    image.id, ", ".join(loaded.unsigned))
    if loaded.legacy:
        log.warning("image %s serves packages only the legacy signature policy accepts (keys bound "
                    "by SHA-1): %s", image.id, ", ".join(loaded.legacy))
    missing = [s.pkgid for s in loaded.sources if s.package_dir is None]
    if missing:
        log.warning("packages without files in the store (their files answer EIO): %s", ", ".join(missing))
    return loaded


@dataclass
class HeaderVerdict:
    """What the trust gate says of one header file's bytes.  Attributes: refusal
    (why it may not be used, or None), unsigned (served unsigned), legacy (only the
    legacy signature policy accepts it), package (the parsed header, None when refused)."""

    refusal: str | None
    unsigned: bool = False
    legacy: bool = False
    package: Package | None = None


def check_header(pkgid: str, data: bytes, keyring, unsigned_allowed: bool) -> HeaderVerdict:
    """The trust gate (:func:`usrview.store.trust.header_trust`) on the bytes of
    package ``pkgid``'s header file, and that they are the header its id names.
    ``unsigned_allowed``: the image record lists the package as unsigned and the
    store marks it imported unsigned (deploy's opt-in).  What a mount checks of
    every header: all of them before it serves a composed tree, each before the
    first use of its package for a compiled one (:mod:`usrview.view.ctree`)."""
    result = sigcheck.check_bytes(data, keyring)
    trust = header_trust(result, unsigned_allowed=unsigned_allowed and result.verdict is sigcheck.Verdict.UNSIGNED,
                         stored=True)
    if not trust.usable:
        return HeaderVerdict(f"{pkgid}: {trust.reason}")
    # The package check_bytes parsed (parsing is most of a header's cost:
    # do it once; the gate made the import check a strict parse adds).
    package = result.package
    expected_id = f"{package.nevra}-{package.header_sha256[:PKGID_HASH_DIGITS]}"
    if expected_id != pkgid:
        return HeaderVerdict(f"{pkgid}: the header is that of {expected_id}")
    return HeaderVerdict(None, trust.unsigned, result.policy == LEGACY_POLICY, package)


def unsigned_allowed(store: Store, image: images.Image) -> frozenset[str]:
    """The packages of ``image`` that may be served UNSIGNED: those the record lists
    as unsigned (deploy --allow-unsigned) and the store marks as imported unsigned."""
    return frozenset(p for p in image.unsigned if store.unsigned_path(p).exists())


def _check_headers(store: Store, image: images.Image, keyring, pkgids, keep_packages: bool) -> list[tuple]:
    """Per package: (why it is refused or None, served unsigned, legacy only,
    its PackageSource, the SHA-256 of its header file)."""
    allowed = unsigned_allowed(store, image)
    checked = []
    for pkgid in pkgids:
        header_path = store.header_path(pkgid)
        try:
            data = store.read_header(pkgid)
        except OSError as e:
            raise OperationalError(f"image {image.id}: package {pkgid}: {e.strerror or e}") from None
        verdict = check_header(pkgid, data, keyring, pkgid in allowed)
        if verdict.refusal is not None:
            checked.append((verdict.refusal, False, False, None, ""))
            continue
        package_dir = store.package_dir(pkgid)
        source = PackageSource(pkgid, verdict.package if keep_packages else None,
                               package_dir if package_dir.is_dir() else None, header_path)
        checked.append((None, verdict.unsigned, verdict.legacy, source, hashlib.sha256(data).hexdigest()))
    return checked


def _check_in_processes(store: Store, image: images.Image, keyring, jobs: int) -> list[tuple]:
    """:func:`_check_headers` of the image's packages in ``jobs`` slices, all but the
    first in forked processes that send their verdicts back (pickled) and exit."""
    pkgids = image.packages
    slices = [pkgids[i * len(pkgids) // jobs:(i + 1) * len(pkgids) // jobs] for i in range(jobs)]
    children = []
    try:
        for part in slices[1:]:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: check, answer, exit without the parent's cleanups
                try:
                    os.close(r)
                    answer = ("ok", _check_headers(store, image, keyring, part, False))
                except OperationalError as e:
                    answer = ("error", str(e))
                except BaseException as e:  # noqa: BLE001 -- the parent raises it
                    answer = ("error", f"image {image.id}: checking headers: {e}")
                try:
                    with os.fdopen(w, "wb") as f:
                        f.write(pickle.dumps(answer))
                finally:
                    os._exit(0)
            os.close(w)
            children.append((pid, r))
        checked = _check_headers(store, image, keyring, slices[0], False)
    finally:
        answers = []
        for pid, r in children:
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            answers.append(pickle.loads(data) if data else ("error", f"image {image.id}: a header check died"))
    for kind, value in answers:
        if kind != "ok":
            raise OperationalError(value)
        checked += value
    return checked


def build_view(store: Store, image: images.Image, keyring, *,
               owners: tuple[OwnerIds, OwnerIds] | None = None,
               progress: Callable[[str], None] | None = None) -> tuple[LoadedImage, Tree]:
    """The image's headers loaded (:func:`load_headers`) and its tree built, owner
    names resolved in ``owners`` (users, groups), by default this system's.
    ``progress`` is told when each step ends ("headers", "tree"): the boot's
    console line says where its time went."""
    # Loading makes several objects per file and frees few until the tree is
    # built: the collector's passes over them would find nothing to collect
    # (about a tenth of the build's time).  Cycles made meanwhile are
    # collected once it runs again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        loaded = load_headers(store, image, keyring)
        if progress:
            progress(f"headers ({len(loaded.sources)} signatures checked)")
        tree = build_tree(loaded.sources, header_digests=loaded.header_digests, owners=owners)
        if progress:
            progress(f"tree ({tree.inode_count} inodes)")
        return loaded, tree
    finally:
        if collecting:
            gc.enable()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim).

    Header files are read into C-heap buffers, and glibc keeps freed heap
    memory for later: after the tree is built, the parsed headers are garbage,
    and a daemon serving for months should not hold their pages.  Nothing
    happens on a C library without malloc_trim.  The function is looked up at
    the first call, and kept: later calls (a served compiled tree's package
    checks) load nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes

        _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
    if _malloc_trim:
        _malloc_trim(0)


#: glibc's malloc_trim once looked up (False: the C library has none).
_malloc_trim = None
