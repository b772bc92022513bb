"""What a test needs from the machine, and what happens when it is missing.

A test that needs root, FUSE, btrfs, rpm's tools or the conformance corpus says
so with :func:`require` (or the ``privileged`` marker, see conftest.py).  On a
developer's machine a missing prerequisite skips the test with the reason; with
``USRVIEW_REQUIRE_PRIVILEGED=1`` (CI, ``.ci/run``) it fails it instead, so a
CI run can never pass by skipping what it was meant to test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: Set to "1" where every prerequisite must be present (CI).
REQUIRE_ENV = "USRVIEW_REQUIRE_PRIVILEGED"
#: Overrides where the conformance corpus is.
CONFORMANCE_ENV = "USRVIEW_CONFORMANCE"


def strict() -> bool:
    """True when a missing prerequisite must fail the test rather than skip it."""
    return os.environ.get(REQUIRE_ENV) == "1"


def require(condition: object, reason: str) -> None:
    """Skip the test unless ``condition`` holds -- or fail it under REQUIRE_ENV=1."""
    if condition:
        return
    if strict():
        pytest.fail(f"prerequisite missing under {REQUIRE_ENV}=1: {reason}", pytrace=False)
    pytest.skip(reason)


def require_privileged(reason: str) -> None:
    """The test needs to run as root (``reason`` says for what)."""
    require(os.geteuid() == 0, f"needs root: {reason}")


def require_tools(*names: str) -> None:
    """The test needs these programs on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    require(not missing, f"missing tools: {', '.join(missing)}")


def require_fuse() -> None:
    require_privileged("mounts a FUSE file system")
    require(os.path.exists("/dev/fuse"), "/dev/fuse is absent")
    require_tools("fusermount3")


def require_btrfs() -> None:
    require_privileged("makes and mounts a btrfs file system on a loop device")
    require_tools("mkfs.btrfs", "losetup")
    require(os.path.exists("/dev/loop-control"), "no loop devices (/dev/loop-control is absent)")


def conformance_path() -> Path | None:
    """Where the conformance corpus is (``../shared/conformance`` beside the
    repository, or $USRVIEW_CONFORMANCE), or None when it is absent."""
    env = os.environ.get(CONFORMANCE_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "conformance"
    return path if (path / "MANIFEST.tsv").is_file() else None


def conformance_dir() -> Path:
    """The conformance corpus; skips (fails under REQUIRE_ENV=1) when it is absent."""
    path = conformance_path()
    require(path is not None, "the conformance corpus (../shared/conformance or "
            f"${CONFORMANCE_ENV}) is absent")
    return path


#: Checks for the names a ``privileged`` marker may carry.
PRIVILEGES = {
    "root": lambda: require_privileged("marked privileged"),
    "fuse": require_fuse,
    "btrfs": require_btrfs,
}
