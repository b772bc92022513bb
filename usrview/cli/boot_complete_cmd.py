"""``usrview boot-complete``: the booted system is healthy: mark this boot's image good."""

from __future__ import annotations

import sys

from usrview.boot.initrd import boot_complete
from usrview.cli._common import add_store_option, open_store
from usrview.errors import EXIT_OK

HELP = "mark the image this boot serves good (run by a unit wanted by boot-complete.target)"
DESCRIPTION = """\
Mark the image that usrview initrd-mount serves in this boot good: it is no
longer on trial, and it becomes the last good image, the one the initrd falls
back to.  Run by a unit wanted by boot-complete.target (systemd's automatic boot
assessment) once the booted system is healthy.
Exit status: 0, or 2 when this boot's /usr was not mounted by usrview
initrd-mount or the store cannot be written."""


def register(sub, common) -> None:
    p = sub.add_parser("boot-complete", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    store = open_store(args, cfg)
    image, before = boot_complete(store)
    note = "" if before == "good" else f" (was {'on trial' if before == 'trial' else before})"
    sys.stdout.write(f"image {image} is good{note}\n")
    return EXIT_OK
