"""``usrview import``: add rpm packages to the store, checked against their signed headers."""

from __future__ import annotations

import sys
from pathlib import Path

from usrview.cli._common import (
    Progress,
    add_allow_unsigned_option,
    add_keys_option,
    add_store_option,
    open_store,
    trusted_keys,
)
from usrview.errors import EXIT_OK, UsrviewError

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
    add_store_option(p)
    add_keys_option(p)
    add_allow_unsigned_option(p)
    p.add_argument("packages", nargs="+", type=Path, metavar="PKG.rpm")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    from usrview.store.importer import (
        import_packages,  # the payload machinery: only when importing
    )

    keyring = trusted_keys(args, cfg)
    store = open_store(args, cfg, create=True)
    progress = Progress(sys.stderr)
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
            if result.legacy:
                unsigned += " [legacy signature policy]"
            if result.already_stored:
                out.write(f"{path}: {result.nevra} already stored{unsigned}\n")
            else:
                out.write(f"{path}: imported {result.nevra} ({result.files} files, "
                          f"{result.reflinked} reflinked){unsigned}\n")
            out.flush()
    return status
