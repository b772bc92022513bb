"""The verify room: bulk verification of a store (:func:`run`; its modules are
listed in :mod:`usrview.verify.runner`'s docstring), the results cache
(:mod:`.vcache`), and the monitor service built on them (:mod:`.monitor`).  The
run's public names are re-exported here."""

from usrview.verify.context import TokenBucket
from usrview.verify.image_check import check_image, image_finding
from usrview.verify.pkgcache import keyring_fingerprint
from usrview.verify.report import KINDS, Finding, Report, Stats, write_json
from usrview.verify.runner import run

__all__ = ["KINDS", "Finding", "Report", "Stats", "TokenBucket", "check_image", "image_finding",
           "keyring_fingerprint", "run",
           "write_json"]
