"""What one verify run shares with every package check: the run context, made by
:func:`usrview.verify.run` and handed to each forked worker process as its
target's argument (inherited at fork, never pickled), and the token bucket that
limits the run's reads (the monitor's ``--io-limit``).  Nothing here is a
module global: two runs in one process share nothing."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from usrview.store.store import Store
from verifier.fileio import HASH_CHUNK, OwnerIds
from verifier.keyring import Keyring

#: The token bucket's default burst is at least this (and so more than one read).
BUCKET_MIN_BURST = 1 << 20


class TokenBucket:
    """At most ``rate`` bytes per second on average, bursts up to ``burst`` bytes.

    The bucket starts with :data:`BUCKET_MIN_BURST` bytes, not a full burst: a run
    reads at most that plus ``rate`` bytes a second from its start (a full bucket at
    the start let a 4 s run at 100 MB/s read 116 MB/s on average)."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic, sleep=time.sleep):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, BUCKET_MIN_BURST))
        self.tokens = min(self.burst, BUCKET_MIN_BURST)
        self.clock, self.sleep = clock, sleep
        self.last = clock()

    def take(self, n: int) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)


@dataclass
class RunContext:
    """What checking the packages of one run needs.

    Attributes:
        store: the store checked.
        keyring: the trusted keys.
        digests: pkgid -> the cache's digest blob of that package (vcache).
        path_filters: the install paths to check (empty: every file).
        io_rate: bytes per second each process may read for hashing (None: no limit).
        users, groups: owner name -> id, each name looked up once in this run.
        buf: the buffer hashing reads into, one per process (a worker writes its own
            copy): not 256 KiB allocated and zeroed per package.  HASH_CHUNK bytes: it
            stays in a core's L2 cache between the copy out of the page cache and the
            hash (1 MiB was no faster).
        bucket: this process's limit of ``io_rate`` (see :meth:`limit_reads`), else None.
    """

    store: Store
    keyring: Keyring
    digests: dict[str, bytes]
    path_filters: tuple[str, ...]
    io_rate: float | None
    users: OwnerIds
    groups: OwnerIds
    buf: bytearray = field(default_factory=lambda: bytearray(HASH_CHUNK))
    bucket: TokenBucket | None = None

    def limit_reads(self) -> None:
        """Give this process its own token bucket of ``io_rate`` (called by the one
        process that checks packages: each worker after its fork, or the run itself)."""
        self.bucket = TokenBucket(self.io_rate) if self.io_rate else None
