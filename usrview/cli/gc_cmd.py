"""``usrview gc``: delete old images and the packages no remaining image uses."""

from __future__ import annotations

import argparse
import sys

from usrview import images
from usrview.cli._common import add_store_option, open_store
from usrview.errors import EXIT_OK

HELP = "delete old images and unused packages"
DESCRIPTION = f"""\
Keep the newest N image records (--keep, default {images.DEFAULT_KEEP}), the current and the
previous image and every image a running view holds; delete the other records,
then every stored package (files and header) that no remaining image lists --
including packages imported but never deployed -- and pull's downloads kept to
resume an interrupted pull (unless a pull is running).
Exit status: 0, or 2 on errors."""


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def register(sub, common) -> None:
    p = sub.add_parser("gc", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    p.add_argument("--keep", type=_count, default=images.DEFAULT_KEEP, metavar="N",
                   help=f"newest images to keep besides current and previous (default {images.DEFAULT_KEEP})")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    from usrview.remote.downloads import clean_downloads, downloads_lock

    store = open_store(args, cfg)
    result = images.gc(store, keep=args.keep)
    out = sys.stdout
    if store.downloads_dir.is_dir():
        with downloads_lock(store, wait=False) as free:
            if free:
                cleaned = clean_downloads(store, everything=True)
                if cleaned.removed:
                    out.write(f"removed {len(cleaned.removed)} download(s) of interrupted pulls "
                              f"({cleaned.bytes} bytes)\n")
            else:
                out.write("kept the downloads: a pull is running\n")
    for image_id in result.in_use:
        out.write(f"kept image {image_id}: in use by a running view\n")
    for image_id in result.deleted_images:
        out.write(f"deleted image {image_id}\n")
    for pkgid in result.deleted_packages:
        out.write(f"deleted package {pkgid}\n")
    out.write(f"{len(result.deleted_images)} image(s) and {len(result.deleted_packages)} package(s) "
              f"deleted; {len(result.kept)} image(s) kept\n")
    return EXIT_OK
