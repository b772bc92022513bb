"""``usrview import``: add rpm packages to the store, checked against their signed headers."""

from __future__ import annotations

import sys
from pathlib import Path

from .checksig_cmd import load_keyring
from .errors import EXIT_OK, UsrviewError
from .store import Store

HELP = "add rpm packages to the store"
DESCRIPTION = """\
Check each package's header signature against the trusted keys, then stream its
payload into the store, each file checked against the header's digest and
reflinked where the store already holds the same bytes.  One line per package:
"imported NEVRA (N files, M reflinked)", "already stored", or the reason it was
refused.  Unsigned packages are refused unless --allow-unsigned is given; they
stay marked as unsigned.  The store is created when absent.
Exit status: 0 when every package is stored, 1 when a package was refused (bad
signature, a payload that disagrees with its header, hostile file names), 2 on
usage and operational errors (unreadable file, store problem, disk full)."""


def register(sub, common) -> None:
    p = sub.add_parser("import", parents=[common], help=HELP, description=DESCRIPTION)
    p.add_argument("--store", type=Path, metavar="DIR",
                   help="the store (default from the configuration, else /var/lib/usrview)")
    p.add_argument("--keys", action="append", type=Path, metavar="PATH",
                   help="trusted certificates: a file or a directory (repeatable; "
                        "default from the configuration, else /etc/pki/rpm-gpg)")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept packages without a header signature (recorded as unsigned)")
    p.add_argument("packages", nargs="+", type=Path, metavar="PKG.rpm")
    p.set_defaults(func=run)


class _Progress:
    """``NEVRA: done/total files`` rewritten in place on a terminal; nothing elsewhere."""

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


def run(args, cfg) -> int:
    from .importer import import_packages  # the payload machinery: only when importing

    keyring = load_keyring(args.keys or cfg.keys)
    for warning in keyring.warnings:
        print(f"usrview: warning: {warning}", file=sys.stderr)
    store = Store.open(args.store or cfg.store, create=True)
    progress = _Progress(sys.stderr)
    status = EXIT_OK
    out = sys.stdout
    def started(path) -> None:
        progress.clear()
        progress.label = Path(path).name

    with store.lock():
        # one call for all: packages are committed in batches (one syncfs per
        # batch, see usrview.importer._Batch); each line is printed once its
        # package is durably stored
        for path, outcome in import_packages(store, args.packages, keyring,
                                             allow_unsigned=args.allow_unsigned,
                                             progress=progress, started=started):
            progress.clear()
            if isinstance(outcome, UsrviewError):
                print(f"usrview: error: {path}: {outcome}", file=sys.stderr)
                status = max(status, outcome.exit_code)  # refused: 1, operational: 2
                continue
            result = outcome
            unsigned = " [UNSIGNED]" if result.unsigned else ""
            if result.already_stored:
                out.write(f"{path}: {result.nevra} already stored{unsigned}\n")
            else:
                out.write(f"{path}: imported {result.nevra} ({result.files} files, "
                          f"{result.reflinked} reflinked){unsigned}\n")
            out.flush()
    return status
