"""Crash-test kill hooks: the process SIGKILLs itself at a named point, so that
tests can show what a crash there leaves behind (tests/test_crash.py,
tests/test_images.py).  Test-only; read from the environment.

``USRVIEW_TEST_KILL_AT=STAGE`` kills at the stage named (the importer's
:data:`usrview.store.importer.KILL_STAGES`, the image records'
:data:`usrview.images.records.KILL_STAGES`).  ``USRVIEW_TEST_KILL_AFTER_FILES=N``
kills after the importer made N entries in package trees, counted across packages.
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "USRVIEW_TEST_KILL_AT"
KILL_AFTER_FILES_ENV = "USRVIEW_TEST_KILL_AFTER_FILES"

_files_made = 0                     # entries made, counted across packages
_kill_after_files: int | None = None  # KILL_AFTER_FILES_ENV, read by arm_file_count


def kill_at(stage: str) -> None:
    """SIGKILL this process when KILL_AT_ENV names ``stage``."""
    if os.environ.get(KILL_AT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def arm_file_count() -> None:
    """Read KILL_AFTER_FILES_ENV (once per import: per file, os.environ costs 10 us)."""
    global _kill_after_files
    limit = os.environ.get(KILL_AFTER_FILES_ENV)
    _kill_after_files = int(limit) if limit else None


def count_file() -> None:
    """One more entry made: SIGKILL this process when that makes KILL_AFTER_FILES_ENV's count."""
    global _files_made
    _files_made += 1
    if _kill_after_files is not None and _files_made >= _kill_after_files:
        os.kill(os.getpid(), signal.SIGKILL)
