"""``usrview verify``: check an image against its signed headers, with rpm -V's lines."""

from __future__ import annotations

import os
import sys

from usrview import images, verify
from usrview.cli._common import add_keys_option, add_store_option, open_store, trusted_keys
from usrview.errors import UsageError

HELP = "check the image's files and headers against the signed headers (rpm -V lines)"
DESCRIPTION = """\
Check every header file of the image (its signature must be GOOD with the
trusted keys), every file each header lists (rpm -V's checks and line format),
files in the package directories that no header lists ("unowned" lines) and the
image record itself.  Lines are printed exactly as rpm -Va prints them, with no
package prefix; header, unsigned and image findings follow their own
one-line formats (docs/verify.md).  Results for unchanged files are taken from
the cache in the store unless --full is given.
Exit status: 0 clean, 1 discrepancies found, 2 usage or operational error."""


def register(sub, common) -> None:
    p = sub.add_parser("verify", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    p.add_argument("--image", default=images.CURRENT, metavar="ID",
                   help="the image to check: current (default), previous, an id or a prefix of one")
    add_keys_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object per finding, then a summary object")
    p.add_argument("--jobs", type=int, metavar="N", default=None,
                   help=f"worker processes (default: the number of CPUs, {os.cpu_count()})")
    p.add_argument("--full", action="store_true", help="ignore the cache of verified results: hash everything")
    p.add_argument("targets", nargs="*", metavar="PATH|PACKAGE",
                   help="only these files (install paths, e.g. /usr/bin/foo) or packages (name, NEVRA, id)")
    p.set_defaults(func=run)


class Progress:
    """One line on a terminal, rewritten in place; nothing when stderr is not a terminal."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.shown = False

    def __call__(self, done: int, total: int, stats: verify.Stats) -> None:
        if not self.enabled:
            return
        self.stream.write(f"\rverify: {done}/{total} packages, {stats.files} files, "
                          f"{stats.hashed_bytes / 1e6:.0f} MB hashed\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def run(args, cfg) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    store = open_store(args, cfg)
    keyring = trusted_keys(args, cfg)
    progress = Progress()
    try:
        report = verify.run(store, keyring, image_ref=args.image, filters=args.targets, jobs=args.jobs,
                            full=args.full, progress=progress)
    finally:
        progress.close()
    if not args.targets and report.image:
        _check_compiled_tree(store, keyring, report)
    out = sys.stdout
    if args.json:
        verify.write_json(report, out)
    else:
        for f in report.findings:
            out.write(f.line + "\n")
    out.flush()
    for e in report.errors:
        print(f"usrview: error: {e}", file=sys.stderr)
    return report.exit_code


def _check_compiled_tree(store, keyring, report) -> None:
    """The image's compiled tree against its headers: a finding when they differ
    (the view room checks it; the verify room may not import it)."""
    from usrview.view import compiled
    from usrview.view.ctree import compiled_mismatch

    image = images.resolve(store, report.image)
    reason = compiled_mismatch(store, image, keyring)
    if reason is not None:
        report.findings.append(verify.image_finding(compiled.tree_path(store, image.id),
                                                    f"compiled tree does not match the headers: {reason}"))
