"""``usrview pull``: an image from a repository URL into the store, deployed (also ``deploy URL``)."""

from __future__ import annotations

import json
import sys
import time

from usrview.cli._common import (
    add_allow_unsigned_option,
    add_keys_option,
    add_remote_options,
    add_store_option,
    open_store,
    print_findings,
    trusted_keys,
)
from usrview.errors import EXIT_OK

HELP = "fetch an image from a repository URL (made by publish), import what is missing, deploy it"
DESCRIPTION = """\
Fetch the index of image NAME from the repository at URL (always from URL,
never from a mirror) and check it: its detached signature GOOD with a trusted
key, not expired, its serial not older than the last one this store accepted.
Then fetch each package the store lacks -- its header first (a Range request),
whose signature is checked before a byte of its payload is fetched -- from the
mirrors in order and then URL, failing over on errors and on bytes that do not
match the index -- or, where the repository has file objects (publish
--file-objects), only the files the store lacks -- import them (every file
checked) as they arrive, and deploy the image as "usrview deploy" does.  An interrupted pull leaves the store's packages and
images as they were, and the next one resumes the downloads.  Exit status:
0 deployed, 1 refused (index or package signature, replayed or expired index,
lint errors), 2 operational errors (network, disk)."""


def register(sub, common) -> None:
    p = sub.add_parser("pull", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    add_keys_option(p)
    add_allow_unsigned_option(p)
    add_remote_options(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("url", metavar="URL")
    p.set_defaults(func=run)


class PullProgress:
    """``pull: 3/10 packages, 12.0/40.0 MB, 5.1 MB/s, 6 s left`` on a terminal; nothing elsewhere."""

    def __init__(self, stream):
        self.stream = stream
        self.enabled = stream.isatty()
        self.start = time.monotonic()
        self._shown = 0.0

    def __call__(self, done: int, total: int, done_bytes: int, total_bytes: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._shown < 0.2 and done < total):
            return
        self._shown = now
        rate = done_bytes / max(now - self.start, 1e-3)
        left = (total_bytes - done_bytes) / rate if rate else 0
        self.stream.write(f"\r\033[Kpull: {done}/{total} packages, {done_bytes / 1e6:.1f}/"
                          f"{total_bytes / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s, {left:.0f} s left")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def run(args, cfg) -> int:
    from usrview.remote.pull import pull  # HTTP is imported only by the commands that use it
    from usrview.view.compiled import compile_deployed

    keyring = trusted_keys(args, cfg)
    store = open_store(args, cfg, create=True)
    progress = PullProgress(sys.stderr)
    try:
        result = pull(store, args.url, keyring, name=args.image, mirrors=args.mirror or (),
                      ca_file=args.ca_file, timeout=args.timeout, retries=args.retries, jobs=args.jobs,
                      allow_unsigned=args.allow_unsigned, progress=progress, tries=cfg.tries)
    finally:
        progress.clear()
    deployed = result.deploy
    if deployed is not None:
        compile_deployed(store, deployed.image, keyring)
    if getattr(args, "json", False):
        json.dump(result.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    print_findings(deployed.findings, sys.stderr)
    out = sys.stdout
    index = result.index
    out.write(f"index {index.name} serial {index.serial}: {len(index.packages)} packages, "
              f"{result.stored} stored already, {len(result.fetched)} fetched "
              f"({result.bytes_fetched} bytes"
              + (f"; {len(result.assembled)} file by file" if result.assembled else "")
              + (f"; {len(result.head_deltas)} headers as deltas" if result.head_deltas else "") + ")\n")
    image = deployed.image
    if deployed.already_current:
        out.write(f"image {image.id} is current already; nothing changed\n")
    else:
        out.write(f"deployed image {image.id} ({len(image.packages)} packages); "
                  f"previous: {deployed.previous or '(none)'}\n")
    return EXIT_OK
