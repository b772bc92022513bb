"""What an image record's id vouches for: its package list (the id's last 8 hex digits
are the package-set hash of the list it was recorded with).  Checked by the mount
(the view's loader refuses a record edited in place) and by verify's record check."""

from __future__ import annotations

from usrview.images.records import ID_HASH_DIGITS, Image, package_set_hash


def id_mismatch(image: Image) -> str | None:
    """Why ``image``'s id (its last 8 hex digits: the package-set hash) does not vouch for its
    package list, or None.  A record edited in place -- a package added, dropped or swapped
    for another version -- fails this; one rewritten and renamed consistently does not."""
    want = package_set_hash(image.packages)[:ID_HASH_DIGITS]
    if image.id.rsplit("-", 1)[-1] != want:
        return f"package list does not match the image id (hash {want}, id {image.id})"
    return None
