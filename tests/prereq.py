"""What a test needs from the machine, and what happens when it is missing.

A test that needs root, FUSE, btrfs or rpm's tools says so with :func:`require`
(or the ``privileged`` marker, see conftest.py).  On a developer's machine a
missing prerequisite skips the test with the reason; with
``USRVIEW_REQUIRE_PRIVILEGED=1`` (CI, ``.ci/run``) it fails it instead, so a
CI run can never pass by skipping what it was meant to test.

The external conformance corpus is different: it is test data kept outside the
repository, and a clone on its own does not have it.  Where it is absent the
tests that read it skip with :data:`CORPUS_ABSENT`, under CI too; ``.ci/run``
then says so in its last line (conftest.py counts those tests).  Only a corpus
asked for with ``$USRVIEW_CONFORMANCE`` and not found there is a missing
prerequisite.
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


#: Where the conformance corpus is looked for without $USRVIEW_CONFORMANCE: beside the repository.
DEFAULT_CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance"


def conformance_path() -> Path | None:
    """Where the conformance corpus is (``../shared/conformance`` beside the
    repository, or $USRVIEW_CONFORMANCE), or None when it is absent."""
    env = os.environ.get(CONFORMANCE_ENV)
    path = Path(env) if env else DEFAULT_CONFORMANCE
    return path if (path / "MANIFEST.tsv").is_file() else None


#: Why a test that reads the external conformance corpus skipped: the one reason
#: all of them give, saying where the corpus comes from and how to point at it.
CORPUS_ABSENT = (
    "the external conformance corpus is absent: test data kept outside this repository "
    "(rpm's, rpm-rs' and go-rpmutils' test packages and keys with their expected verdicts, "
    "see README.md, 'The conformance corpus'); put it beside the clone as ../shared/conformance "
    f"or set {CONFORMANCE_ENV} to the folder holding its MANIFEST.tsv")


def conformance_dir() -> Path:
    """The conformance corpus.  Absent: skips the test with :data:`CORPUS_ABSENT`,
    also under REQUIRE_ENV=1; but where $USRVIEW_CONFORMANCE names a folder without
    a MANIFEST.tsv, that is a missing prerequisite (fails under REQUIRE_ENV=1)."""
    path = conformance_path()
    if path is None:
        asked = os.environ.get(CONFORMANCE_ENV)
        require(not asked, f"${CONFORMANCE_ENV}={asked} holds no MANIFEST.tsv")
        pytest.skip(CORPUS_ABSENT)
    return path


#: Checks for the names a ``privileged`` marker may carry.
PRIVILEGES = {
    "root": lambda: require_privileged("marked privileged"),
    "fuse": require_fuse,
    "btrfs": require_btrfs,
}
