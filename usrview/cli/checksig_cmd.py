"""``usrview checksig``: the verdict on each package's header signature, like ``rpmkeys --checksig``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from usrview.cli._common import add_keys_option, trusted_keys
from usrview.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from verifier import sigcheck

HELP = "check the header signatures of rpm packages or header-only files"
DESCRIPTION = """\
Check each package's header signature against the trusted keys and print one
line per package: its verdict (GOOD, BAD, NOKEY, NOTTRUSTED, UNSIGNED or PARSE)
and the signing key's fingerprint.  Works on full rpms and on header-only files.
Exit status: 0 when every package is GOOD, 1 otherwise, 2 on usage errors or
when a file cannot be read."""


def register(sub, common) -> None:
    p = sub.add_parser("checksig", parents=[common], help=HELP, description=DESCRIPTION)
    add_keys_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object per package, per line")
    p.add_argument("packages", nargs="+", type=Path, metavar="PKG")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    keyring = trusted_keys(args, cfg)
    status = EXIT_OK
    out = sys.stdout
    for path in args.packages:
        try:
            result = sigcheck.check_file(path, keyring, payload=True)
        except OSError as e:
            print(f"usrview: error: {path}: {e.strerror or e}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        if args.json:
            out.write(json.dumps({"path": str(path), **result.to_json()}) + "\n")
        else:
            out.write(f"{path}: {result.format()}\n")
        if result.verdict != sigcheck.Verdict.GOOD and status == EXIT_OK:
            status = EXIT_FINDINGS
    out.flush()
    return status
