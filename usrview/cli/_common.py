"""What the commands share: the ``--store``, ``--keys`` and ``--signature-policy``
options, loading the trusted keys, opening the store, printing findings, and the
progress line."""

from __future__ import annotations

import sys
from pathlib import Path

from usrview.errors import OperationalError
from usrview.store import Store
from verifier import policy as policies
from verifier.keyring import Keyring

STORE_HELP = "the store (default from the configuration, else /var/lib/usrview)"
KEYS_HELP = ("trusted certificates: a file or a directory (repeatable; "
             "default from the configuration, else /etc/pki/rpm-gpg)")


def add_store_option(p) -> None:
    p.add_argument("--store", type=Path, metavar="DIR", help=STORE_HELP)


def add_keys_option(p) -> None:
    """``--keys``, and ``--signature-policy`` beside it: whoever trusts keys judges signatures."""
    p.add_argument("--keys", action="append", type=Path, metavar="PATH", help=KEYS_HELP)
    add_signature_policy_option(p)


def add_signature_policy_option(p) -> None:
    p.add_argument(policies.OPTION, dest="signature_policy", choices=policies.names(),
                   help="which keys are acceptable: 'legacy' also accepts keys bound by SHA-1 "
                        "self-signatures, as older distributions' keys are (default from the "
                        "configuration, else 'default'; docs/signature-policy.md)")


def signature_policy(args, cfg) -> policies.Policy:
    """``--signature-policy``, else the configuration's."""
    name = getattr(args, "signature_policy", None)
    return policies.by_name(name) if name else cfg.signature_policy


def add_allow_unsigned_option(p) -> None:
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept packages without a header signature (recorded as unsigned)")


def add_remote_options(p) -> None:
    """pull's options, which ``deploy URL`` takes too."""
    from usrview.remote.index import DEFAULT_IMAGE, DEFAULT_JOBS, DEFAULT_RETRIES, DEFAULT_TIMEOUT

    p.add_argument("--image", default=DEFAULT_IMAGE, metavar="NAME",
                   help=f"the image's name in the repository (default {DEFAULT_IMAGE})")
    p.add_argument("--mirror", action="append", metavar="URL",
                   help="a mirror of the repository's packages, tried in order before URL (repeatable); "
                        "the index always comes from URL")
    p.add_argument("--ca-file", type=Path, metavar="FILE", help="also trust this CA for HTTPS")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS, metavar="N",
                   help=f"packages fetched at a time (default {DEFAULT_JOBS})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"give up on a connection silent this long (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                   help=f"retries per request, with backoff (default {DEFAULT_RETRIES})")


def open_store(args, cfg, *, create: bool = False) -> Store:
    return Store.open(args.store or cfg.store, create=create)


def load_keyring(paths, policy: policies.Policy = policies.DEFAULT) -> Keyring:
    """The trusted keys, for verdicts under ``policy``; each path must exist.
    Skipped keys are logged."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise OperationalError(f"no such key file or directory: {', '.join(missing)}")
    return Keyring.load(paths, policy=policy)


def trusted_keys(args, cfg) -> Keyring:
    """``--keys`` (else the configuration's) under ``--signature-policy`` (else the
    configuration's), each skipped key a warning on stderr."""
    keyring = load_keyring(args.keys or cfg.keys, signature_policy(args, cfg))
    for warning in keyring.warnings:
        print(f"usrview: warning: {warning}", file=sys.stderr)
    return keyring


def print_findings(findings, stream) -> None:
    for f in findings:
        stream.write(f.format() + "\n")
    stream.flush()


class Progress:
    """``LABEL: done/total files`` rewritten in place on a terminal; nothing elsewhere."""

    def __init__(self, stream):
        self.stream = stream
        self.enabled = stream.isatty()
        self.label = ""
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        percent = done * 100 // max(total, 1)
        if self.enabled and percent != self._last:
            self._last = percent
            self.stream.write(f"\r\033[K{self.label}: {done}/{total} files")
            self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self._last != -1:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self._last = -1
