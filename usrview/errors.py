"""Errors that carry their exit code: what the user sees is one line, no traceback."""

#: Exit codes (DESIGN.md): 0 clean, 1 discrepancies found, 2 usage or operational error.
EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


class UsrviewError(Exception):
    """An error the CLI reports as one line and turns into ``exit_code``."""

    exit_code = EXIT_ERROR


class UsageError(UsrviewError):
    """The command line or the configuration is wrong."""


class OperationalError(UsrviewError):
    """Something the command needs is missing or broken (a file, a key, a mount)."""
