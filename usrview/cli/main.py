"""The ``usrview`` command: one ``main()``, one module per subcommand.

Each subcommand module exposes ``register(subparsers, common)`` which adds its
parser and sets ``func`` to a function taking the parsed arguments and the
configuration and returning an exit code.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from pathlib import Path

from usrview import __version__, config, journal
from usrview.errors import EXIT_ERROR, UsrviewError

log = logging.getLogger(__name__)

#: Subcommand modules (in usrview.cli) and the commands each registers, in the
#: order ``usrview --help`` lists them.  A command line naming a command imports
#: only its module: ``initrd-mount`` starts in the initrd, where every module
#: imported costs boot time, and ``verify`` need not import the FUSE machinery.
COMMANDS = (("checksig_cmd", ("checksig",)), ("import_cmd", ("import",)), ("lint_cmd", ("lint",)),
            ("deploy_cmd", ("deploy",)), ("publish_cmd", ("publish",)), ("pull_cmd", ("pull",)),
            ("status_cmd", ("status",)), ("diff_cmd", ("diff",)), ("rollback_cmd", ("rollback",)),
            ("gc_cmd", ("gc",)), ("mount_cmd", ("mount", "umount")), ("verify_cmd", ("verify",)),
            ("monitor_cmd", ("monitor",)), ("initrd_mount_cmd", ("initrd-mount",)),
            ("boot_complete_cmd", ("boot-complete",)))
#: Options of the top-level parser that take a value (the next word is not a command).
_VALUE_OPTIONS = ("--config",)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with our code 2 and one line."""

    def error(self, message):  # noqa: D401 - argparse's name
        self.print_usage(sys.stderr)
        print(f"usrview: error: {message}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def command_of(argv: list[str]) -> str | None:
    """The command a command line names, when it names one (its first word that
    is neither an option nor an option's value); None otherwise."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUE_OPTIONS:
            skip = True
        elif word == "--" or not word.startswith("-"):
            break
    else:
        return None
    names = {name for _, names in COMMANDS for name in names}
    return word if word in names else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone (only its module imported)."""
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
    for module, names in COMMANDS:
        if command is None or command in names:
            importlib.import_module(f"usrview.cli.{module}").register(sub, common)
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
    argv = sys.argv[1:] if argv is None else argv
    # What the imports make lives as long as the process: the cyclic collector's
    # passes over it would find nothing (8 % of a mount's instructions, docs/view.md).  Paused
    # until the command line is parsed; a command that serves (``serves``) keeps
    # it paused over its own imports until it serves (usrview.view.mount.serve_tree).
    gc.disable()
    try:
        parser = build_parser(command_of(argv))
        args = parser.parse_args(argv)
        if not getattr(args, "serves", False):
            gc.enable()
        setup_logging(getattr(args, "verbose", 0))
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
    finally:
        gc.enable()


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
