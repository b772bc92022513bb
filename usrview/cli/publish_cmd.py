"""``usrview publish``: a directory of rpms as the next signed index of a named image in a repository."""

from __future__ import annotations

import sys
from pathlib import Path

from usrview.errors import EXIT_OK
from usrview.remote.index import DEFAULT_IMAGE
from usrview.remote.publish import DEFAULT_VALID_DAYS, publish

HELP = "publish a directory of rpms as a signed image index in a repository for pull"
DESCRIPTION = """\
Copy the rpms of IMAGE_DIR into the repository REPO_DIR (a directory any web
server can serve; made when absent) under names that are their SHA-256, and
write the next index of image NAME: each package's NEVRA, header SHA-256,
rpm SHA-256, size and header length, with a serial one above the last and a
validity period, signed by gpg with a detached signature.  Objects already in
the repository are not copied again; indexes are never rewritten, so the
repository keeps each image's history.  A reader never sees a half-published
index: objects first, then the index and signature, then "latest" by one
rename.  With --file-objects, every regular file of every package is also
written as an object named by its digest (compressed alone with zstd), and
the index says so: a pull then fetches only the files its store lacks.
Exit status: 0 published, 2 errors (lint errors in the set, gpg)."""


def register(sub, common) -> None:
    p = sub.add_parser("publish", parents=[common], help=HELP, description=DESCRIPTION)
    p.add_argument("--name", default=DEFAULT_IMAGE, help=f"the image's name (default {DEFAULT_IMAGE})")
    p.add_argument("--sign-with", metavar="KEYID", help="gpg's key to sign the index (default: gpg's default key)")
    p.add_argument("--gpg-home", type=Path, metavar="DIR", help="gpg's home directory (default: gpg's)")
    p.add_argument("--valid-days", type=int, default=DEFAULT_VALID_DAYS, metavar="N",
                   help=f"days the index is valid (default {DEFAULT_VALID_DAYS}); publish again before")
    p.add_argument("--file-objects", action="store_true",
                   help="also publish every file as an object named by its digest (file-level delta for pull)")
    p.add_argument("image_dir", type=Path, metavar="IMAGE_DIR")
    p.add_argument("repo", type=Path, metavar="REPO_DIR")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    result = publish(args.image_dir, args.repo, name=args.name, sign_with=args.sign_with,
                     gpg_home=args.gpg_home, valid_days=args.valid_days, file_objects=args.file_objects)
    index = result.index
    sys.stdout.write(f"published {index.name} serial {index.serial} ({len(index.packages)} packages, "
                     f"{len(result.added)} new, {len(result.reused)} already there) as {result.index_path}; "
                     f"valid until {index.to_json()['expires']}\n")
    if args.file_objects:
        sys.stdout.write(f"file objects: {result.file_objects_added} new "
                         f"({result.file_object_bytes_added} bytes)\n")
    return EXIT_OK
