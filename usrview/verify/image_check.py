"""The check of an image record: it must parse, its id's package-set hash must
match its package list, every package it names must be stored, and its
``unsigned`` list must agree with the store's markers of packages imported
unsigned."""

from __future__ import annotations

from pathlib import Path

from usrview import images
from usrview.errors import OperationalError
from usrview.store.store import IMAGES_DIR, Store
from usrview.verify.report import Finding


def image_finding(path, message: str) -> Finding:
    """A finding about an image's own files (its record, its compiled tree)."""
    return Finding("image", "", str(path), f"image     {Path(path).name}: {message}", message=message)


def check_image(store: Store, ref: str) -> tuple[images.Image | None, list[Finding], list[str]]:
    """Read and check the image record ``ref``: (image or None when unreadable, findings,
    the image's packages that are in the store)."""
    findings: list[Finding] = []

    def bad(path, message) -> None:
        findings.append(image_finding(path, message))

    try:
        image = images.resolve(store, ref)
    except OperationalError as e:
        text = str(e)
        if "no image" in text or "has no" in text or "ambiguous" in text:
            raise
        bad(store.root / (ref if ref in (images.CURRENT, images.PREVIOUS) else f"{IMAGES_DIR}/{ref}"), text)
        return None, findings, []
    path = images.image_path(store, image.id)
    mismatch = images.id_mismatch(image)
    if mismatch:
        bad(path, mismatch)
    try:
        markers = store.unsigned_pkgids()
    except OSError:
        markers = set()
    in_store = store.stored(image.packages)
    stored = set(in_store)
    for pkgid in image.packages:
        if pkgid not in stored:
            bad(path, f"names {pkgid}, which is not in the store")
        elif (pkgid in image.unsigned) != (pkgid in markers):
            bad(path, f"{pkgid}: recorded {'unsigned' if pkgid in image.unsigned else 'signed'}, "
                      f"the store says {'unsigned' if pkgid in markers else 'signed'}")
    return image, findings, in_store
