"""``usrview rollback``: make the previous image current again (and the current one previous)."""

from __future__ import annotations

import sys

from usrview import images
from usrview.cli._common import add_store_option, open_store
from usrview.errors import EXIT_OK

HELP = "switch back to the previous image"
DESCRIPTION = """\
Swap the current and the previous image in one atomic switch of "current";
a second rollback undoes the first.  An image that is not good is put on trial
again (the configured tries).  For one boot only, the kernel command line word
usrview.rollback boots the previous image without changing anything here.
Exit status: 0, or 2 when there is no previous image or the store is damaged."""


def register(sub, common) -> None:
    p = sub.add_parser("rollback", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    store = open_store(args, cfg)
    current, previous = images.rollback(store, tries=cfg.tries)
    sys.stdout.write(f"current image: {current}; previous: {previous or '(none)'}\n")
    return EXIT_OK
