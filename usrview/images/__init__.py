"""The images room: recorded images (sets of packages), deploy, rollback, diff
and gc (:mod:`usrview.images.records`), the lint of a package set and rpm's
version comparison.  The records' public names are re-exported here; the
difference of two images is :mod:`usrview.images.diff`'s, not re-exported (a
mount imports this package, and needs neither it nor the version comparison)."""

from usrview.images.recordcheck import id_mismatch
from usrview.images.records import *  # noqa: F403 - the room's public face
from usrview.images.records import __all__ as _records_all

__all__ = [*_records_all, "id_mismatch"]
