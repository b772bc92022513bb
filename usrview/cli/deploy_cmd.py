"""``usrview deploy``: record a directory of rpms as an image and make it current."""

from __future__ import annotations

import sys
from pathlib import Path

from usrview import images
from usrview.cli import pull_cmd
from usrview.cli._common import (
    Progress,
    add_allow_unsigned_option,
    add_keys_option,
    add_remote_options,
    add_store_option,
    open_store,
    print_findings,
    trusted_keys,
)
from usrview.errors import EXIT_OK
from usrview.images import bootstate

HELP = "record a directory of rpms (or a repository URL's image) as an image and make it current"
DESCRIPTION = """\
Read the packages of SOURCE (a directory of rpms, or of header-only rpms whose
packages are already stored), check the set as "usrview lint" does, import what
the store lacks (signatures checked as by "usrview import"), record the set as
a new image and make it current in one atomic switch; the old current image
becomes the previous one.  Lint errors (conflicting files, two versions of one
package) refuse the deploy before anything is imported: nothing is recorded and
the current image stays.  Deploying the current image's package set again
changes nothing.  The new image is on trial for the configured number of
boots ("tries", default 3): "usrview boot-complete" in a booted system marks it
good; after that many boots without it the initrd boots the last good image.
SOURCE may also be an http(s) URL of a repository made by "usrview publish":
then the image is pulled first, as "usrview pull" does.
Exit status: 0 deployed, 1 refused (lint errors, a package refused by the
import), 2 usage and operational errors."""


def register(sub, common) -> None:
    p = sub.add_parser("deploy", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    add_keys_option(p)
    add_allow_unsigned_option(p)
    add_remote_options(p)
    p.add_argument("source", metavar="SOURCE")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    if args.source.startswith(("http://", "https://")):
        args.url = args.source
        return pull_cmd.run(args, cfg)
    from usrview.view.compiled import compile_deployed  # the view room, only when deploying

    keyring = trusted_keys(args, cfg)
    store = open_store(args, cfg, create=True)
    progress = Progress(sys.stderr)
    try:
        result = images.deploy(store, Path(args.source), keyring, allow_unsigned=args.allow_unsigned,
                               progress=progress, tries=cfg.tries)
    except images.DeployRefused as e:
        print_findings(e.findings, sys.stderr)
        raise
    finally:
        progress.clear()
    print_findings(result.findings, sys.stderr)
    out = sys.stdout
    image = result.image
    compile_deployed(store, image, keyring)
    if result.already_current:
        out.write(f"image {image.id} ({len(image.packages)} packages) is current already; "
                  "nothing changed\n")
        return EXIT_OK
    if result.imported:
        out.write(f"imported {len(result.imported)} package(s)\n")
    unsigned = f", {len(image.unsigned)} UNSIGNED" if image.unsigned else ""
    out.write(f"deployed image {image.id} ({len(image.packages)} packages{unsigned}); "
              f"previous: {result.previous or '(none)'}\n")
    boot = bootstate.load(store).of(image.id)
    if boot.state == bootstate.TRIAL:
        out.write(f"image {image.id} is on trial for {boot.tries} boot(s) until "
                  "usrview boot-complete marks it good\n")
    return EXIT_OK
