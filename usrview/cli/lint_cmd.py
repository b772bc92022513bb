"""``usrview lint``: check a package set the way deploy does, without touching a store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from usrview.errors import EXIT_FINDINGS, EXIT_OK
from usrview.images.lint import has_errors, lint
from usrview.images.records import read_source

HELP = "check a directory of rpms as deploy would"
DESCRIPTION = """\
Check the packages of each SOURCE (a directory of rpms or header-only rpms, or
one such file) as one set: files outside /usr (warning: left out of the view),
packages with scriptlets (warning: never run), a path shipped by two packages
with different content, type, mode, owner, group, link target or capabilities
(error), a path beneath one shipped as a non-directory (error), two versions
of one package name (error).  Signatures are not checked here.
One line per finding: "SEVERITY: KIND: MESSAGE".
Exit status: 0 when there is no error, 1 when there are errors, 2 on usage
errors or unreadable files."""


def register(sub, common) -> None:
    p = sub.add_parser("lint", parents=[common], help=HELP, description=DESCRIPTION)
    p.add_argument("--json", action="store_true", help="one JSON object per finding, per line")
    p.add_argument("sources", nargs="+", type=Path, metavar="SOURCE")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    packages = {}
    for source in args.sources:
        for sp in read_source(source):
            packages.setdefault(sp.pkgid, sp.package)
    findings = lint(packages.values())
    out = sys.stdout
    for f in findings:
        out.write((json.dumps(f.to_json()) if args.json else f.format()) + "\n")
    out.flush()
    return EXIT_FINDINGS if has_errors(findings) else EXIT_OK
