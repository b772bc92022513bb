"""``usrview diff A B``: the packages added, removed, upgraded, downgraded or rebuilt from A to B."""

from __future__ import annotations

import json
import sys

from usrview import images
from usrview.cli._common import add_store_option, open_store
from usrview.errors import EXIT_OK
from usrview.images.diff import diff

HELP = "compare two images"
DESCRIPTION = """\
Compare image A with image B (ids, unique id prefixes, "current" or "previous")
by package name, with rpm's version comparison: one line per change,
"added NEVRA", "removed NEVRA", "upgraded NAME OLD-EVR -> NEW-EVR",
"downgraded ...", "rebuilt NEVRA" (same EVR, different header).
Exit status: 0, or 2 when an image or the store cannot be read."""


def register(sub, common) -> None:
    p = sub.add_parser("diff", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    store = open_store(args, cfg)
    a, b = images.resolve(store, args.a), images.resolve(store, args.b)
    d = diff(store, a, b)
    out = sys.stdout
    if args.json:
        out.write(json.dumps(d.to_json(), indent=1) + "\n")
        return EXIT_OK
    for c in d.upgraded:
        out.write(f"upgraded    {c.name} {c.old_evr} -> {c.new_evr}\n")
    for c in d.downgraded:
        out.write(f"downgraded  {c.name} {c.old_evr} -> {c.new_evr}\n")
    for c in d.added:
        out.write(f"added       {c.new}\n")
    for c in d.removed:
        out.write(f"removed     {c.old}\n")
    for c in d.rebuilt:
        out.write(f"rebuilt     {c.new}\n")
    return EXIT_OK
