"""The ``usrview`` command: one ``main()``, one module per subcommand.

Each subcommand module exposes ``register(subparsers, common)`` which adds its
parser and sets ``func`` to a function taking the parsed arguments and the
configuration and returning an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from usrview import __version__, config, journal
from usrview.cli import (
    boot_complete_cmd,
    checksig_cmd,
    deploy_cmd,
    diff_cmd,
    gc_cmd,
    import_cmd,
    initrd_mount_cmd,
    lint_cmd,
    monitor_cmd,
    mount_cmd,
    publish_cmd,
    pull_cmd,
    rollback_cmd,
    status_cmd,
    verify_cmd,
)
from usrview.errors import EXIT_ERROR, UsrviewError

log = logging.getLogger(__name__)

#: Subcommand modules, in the order ``usrview --help`` lists them.
COMMANDS = (checksig_cmd, import_cmd, lint_cmd, deploy_cmd, publish_cmd, pull_cmd, status_cmd, diff_cmd, rollback_cmd, gc_cmd,
            mount_cmd, verify_cmd, monitor_cmd, initrd_mount_cmd, boot_complete_cmd)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with our code 2 and one line."""

    def error(self, message):  # noqa: D401 - argparse's name
        self.print_usage(sys.stderr)
        print(f"usrview: error: {message}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    # Shared options are accepted before and after the subcommand; SUPPRESS
    # keeps the subcommand's parser from resetting a value given before it.
    common = _Parser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help=f"configuration file (default {config.DEFAULT_CONFIG})")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (repeat for debug)")
    parser = _Parser(prog="usrview", parents=[common],
                     description="A read-only /usr composed from signed RPM packages, "
                                 "checked against their signed headers.")
    parser.add_argument("--version", action="version", version=f"usrview {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub, common)
    return parser


def setup_logging(verbose: int) -> None:
    """Log to stderr; under systemd, to the journal with structured fields
    (so the view's and the monitor's integrity records share one format)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if journal.under_systemd():
        handler: logging.Handler = journal.JournalHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("usrview: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0))
    try:
        # initrd-mount ignores the configuration: a file it cannot read must not stop a boot.
        cfg = config.load(getattr(args, "config", None)) if getattr(args, "needs_config", True) \
            else config.Config()
        return args.func(args, cfg)
    except UsrviewError as e:
        print(f"usrview: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("usrview: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
