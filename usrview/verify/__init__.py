"""The verify room: bulk verification of a store (:func:`run`), the results
cache, and the monitor service built on them.  The run's public names are
re-exported here."""

from usrview.verify.runner import (
    HASH_CHUNK,
    KINDS,
    Finding,
    Report,
    Stats,
    TokenBucket,
    check_image,
    hash_fd,
    keyring_fingerprint,
    run,
    write_json,
)

__all__ = ["HASH_CHUNK", "KINDS", "Finding", "Report", "Stats", "TokenBucket", "check_image", "hash_fd",
           "keyring_fingerprint", "run", "write_json"]
