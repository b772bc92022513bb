"""The configuration file, ``/etc/usrview/usrview.toml``: defaults that CLI flags override.

Recognised keys (all optional)::

    keys = ["/etc/pki/rpm-gpg"]     # trusted OpenPGP certificates: files or directories
    store = "/var/lib/usrview"      # the store (used by later commands)
    tries = 3                       # boots a newly deployed image gets to reach boot-complete
                                    # before the initrd falls back to the last good image
    signature_policy = "default"    # or "legacy": also keys bound by SHA-1 self-signatures
                                    # (docs/signature-policy.md, "Named policies")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from usrview.errors import UsageError
from verifier import policy as policies

DEFAULT_CONFIG = Path("/etc/usrview/usrview.toml")
DEFAULT_KEYS = (Path("/etc/pki/rpm-gpg"),)
DEFAULT_STORE = Path("/var/lib/usrview")
#: Boots a newly deployed image is on trial for (docs/images.md, "Boot states").
DEFAULT_TRIES = 3
#: How long the patched pyfuse3's wait for the next request polls /dev/fuse
#: before it sleeps, at most, in microseconds (``usrview mount --spin-us``;
#: usrview.view.fs): a request sent from the other CPU then finds the daemon
#: awake (docs/view.md, "What a request costs"), at the cost of that CPU.  Only
#: within a burst (the last request came sooner than this after the answer
#: before it), for twice as long as the last one took to come: a request that
#: comes alone costs no spin.  A longer poll took CPU from the programs that
#: sent the requests (bench_system: 200 execs 1.16-1.21x native at 30 µs,
#: 1.26-1.35x at 400).
DISPATCH_SPIN_US = 30
#: The initrd's daemon polls up to this long for BOOT_SPIN_SECONDS after its
#: mount, then DISPATCH_SPIN_US (``initrd-mount --boot-spin``): while the booted
#: system starts, requests stream from PID 1 loading its units, 0.1-0.4 ms apart
#: under TCG (docs/boot.md, "Polling within a burst").
BOOT_SPIN_US = 400
BOOT_SPIN_SECONDS = 60
#: The most tries the setting accepts (a counter, not a duration).
MAX_TRIES = 100
#: Setting this variable to a path reads that file instead of DEFAULT_CONFIG.
CONFIG_ENV = "USRVIEW_CONFIG"


@dataclass(frozen=True)
class Config:
    """Attributes: keys (trusted certificate paths), store (the store's path),
    tries (boots a newly deployed image is on trial for), signature_policy (the
    :class:`verifier.policy.Policy` signatures are judged by)."""

    keys: tuple[Path, ...] = DEFAULT_KEYS
    store: Path = DEFAULT_STORE
    tries: int = DEFAULT_TRIES
    signature_policy: policies.Policy = policies.DEFAULT
    source: Path | None = field(default=None, compare=False)


def load(path: Path | None = None) -> Config:
    """Read the configuration; a missing default file means all defaults."""
    explicit = path is not None or CONFIG_ENV in os.environ
    path = path or Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"configuration file {path} does not exist") from None
        return Config()
    except OSError as e:
        raise UsageError(f"cannot read configuration {path}: {e}") from None
    import tomllib  # a parser imported only when there is a file to parse (most hosts have none)

    try:
        with f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read configuration {path}: {e}") from None
    unknown = set(data) - {"keys", "store", "tries", "signature_policy"}
    if unknown:
        raise UsageError(f"{path}: unknown setting(s): {', '.join(sorted(unknown))}")
    keys = data.get("keys", [str(p) for p in DEFAULT_KEYS])
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UsageError(f"{path}: 'keys' must be a path or a list of paths")
    store = data.get("store", str(DEFAULT_STORE))
    if not isinstance(store, str):
        raise UsageError(f"{path}: 'store' must be a path")
    tries = data.get("tries", DEFAULT_TRIES)
    if type(tries) is not int or not 1 <= tries <= MAX_TRIES:
        raise UsageError(f"{path}: 'tries' must be a whole number from 1 to {MAX_TRIES}")
    try:
        policy = policies.by_name(data.get("signature_policy", policies.DEFAULT.name))
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: 'signature_policy': {e}") from None
    return Config(keys=tuple(Path(k) for k in keys), store=Path(store), tries=tries,
                  signature_policy=policy, source=path)
