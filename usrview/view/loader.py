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
"""

from __future__ import annotations

import gc
import hashlib
import logging
from dataclasses import dataclass, field

from usrview import images
from usrview.errors import OperationalError
from usrview.store import LEGACY_POLICY, PKGID_HASH_DIGITS, Store
from usrview.store.trust import header_trust
from usrview.view.tree import PackageSource, Tree, build_tree
from verifier import sigcheck
from verifier.fileio import OwnerIds

log = logging.getLogger(__name__)


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


def load_headers(store: Store, image: images.Image, keyring, *, keep_packages: bool = True) -> LoadedImage:
    """Read an image's header files, checking every signature.  Without
    ``keep_packages`` the sources' ``package`` is None: each parsed header is
    dropped once checked (a mount of a compiled tree needs none of them).

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
    recorded_unsigned = set(image.unsigned)
    for pkgid in image.packages:
        header_path = store.header_path(pkgid)
        try:
            data = store.read_header(pkgid)
        except OSError as e:
            raise OperationalError(f"image {image.id}: package {pkgid}: {e.strerror or e}") from None
        result = sigcheck.check_bytes(data, keyring)
        # unsigned only by the record's own opt-in (deploy --allow-unsigned), and the store's marker
        trust = header_trust(result, unsigned_allowed=result.verdict is sigcheck.Verdict.UNSIGNED
                             and pkgid in recorded_unsigned and store.unsigned_path(pkgid).exists(),
                             stored=True)
        if not trust.usable:
            refused.append(f"{pkgid}: {trust.reason}")
            continue
        if trust.unsigned:
            loaded.unsigned.append(pkgid)
        if result.policy == LEGACY_POLICY:
            loaded.legacy.append(pkgid)
        # The package check_bytes parsed (parsing is most of a header's cost:
        # do it once; the gate made the import check a strict parse adds).
        package = result.package
        expected_id = f"{package.nevra}-{package.header_sha256[:PKGID_HASH_DIGITS]}"
        if expected_id != pkgid:
            refused.append(f"{pkgid}: the header is that of {expected_id}")
            continue
        package_dir = store.package_dir(pkgid)
        loaded.sources.append(PackageSource(pkgid, package if keep_packages else None,
                                            package_dir if package_dir.is_dir() else None, header_path))
        loaded.header_digests[pkgid] = hashlib.sha256(data).hexdigest()
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


def build_view(store: Store, image: images.Image, keyring, *,
               owners: tuple[OwnerIds, OwnerIds] | None = None) -> tuple[LoadedImage, Tree]:
    """The image's headers loaded (:func:`load_headers`) and its tree built, owner
    names resolved in ``owners`` (users, groups), by default this system's."""
    # Loading makes several objects per file and frees few until the tree is
    # built: the collector's passes over them would find nothing to collect
    # (about a tenth of the build's time).  Cycles made meanwhile are
    # collected once it runs again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        loaded = load_headers(store, image, keyring)
        return loaded, build_tree(loaded.sources, header_digests=loaded.header_digests, owners=owners)
    finally:
        if collecting:
            gc.enable()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim).

    Header files are read into C-heap buffers, and glibc keeps freed heap
    memory for later: after the tree is built, the parsed headers are garbage,
    and a daemon serving for months should not hold their pages.  Nothing
    happens on a C library without malloc_trim."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return
    trim(0)
