"""The store room: packages at their install paths, their signed headers, the
importer that fills it, the payload reader, and the btrfs and FIEMAP helpers.

The store owns its layout (:mod:`usrview.store.store`): no other room spells a
store path.  Its public names are re-exported here."""

from usrview.store.store import (
    FORMAT_LINE,
    LAYOUT_DIRS,
    LEGACY_POLICY,
    PKGID_HASH_DIGITS,
    Store,
    StoredPackage,
    StoreError,
    is_enospc,
    make_pkgid,
    pkgid_for,
)

__all__ = ["FORMAT_LINE", "LAYOUT_DIRS", "LEGACY_POLICY", "PKGID_HASH_DIGITS", "Store", "StoreError",
           "StoredPackage", "is_enospc", "make_pkgid", "pkgid_for"]
