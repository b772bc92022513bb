"""Shared test machinery: prerequisites, the log check, signing keys and packages.

- Prerequisites (tests/prereq.py): ``require(...)`` skips a test whose machine
  lacks something -- or fails it under ``USRVIEW_REQUIRE_PRIVILEGED=1`` (CI).
  ``@pytest.mark.privileged`` (or ``privileged("fuse", "btrfs")``) declares root
  and more, with the same skip-or-fail rule.  A plain ``pytest.skip`` stays a
  skip: use it only for a case that does not apply, never for a missing tool.
- The log check (after S3QL's pytest_checklogs): a WARNING or ERROR log record
  emitted while a test runs fails that test, unless the test expected it with
  ``expect_logs``::

      def test_x(expect_logs):
          with expect_logs(r"skipped 1 key", level=logging.WARNING):
              ...

- ``conformance``: the corpus folder, ../shared/conformance or $USRVIEW_CONFORMANCE.
- ``gpg_key``: a throwaway RSA-3072 signing key for the session.
- ``rpm_packages``: build (and sign with ``gpg_key``) packages, each distinct
  package once per session -- see tests/rpmbuild.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

import pytest

from tests import rpmbuild
from tests.prereq import PRIVILEGES, conformance_dir, require_tools

# -- prerequisites -----------------------------------------------------------


def _check_privileges(item: pytest.Item) -> None:
    marker = item.get_closest_marker("privileged")
    if marker is not None:
        needs = marker.args or ("root",)
        for need in needs:
            if need not in PRIVILEGES:
                raise ValueError(f"unknown privilege {need!r} (known: {', '.join(PRIVILEGES)})")
            PRIVILEGES[need]()


# -- the log check ----------------------------------------------------------

class _LogCheck(logging.Handler):
    """Collects WARNING and worse records; some are marked expected by expect_logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.unexpected: list[logging.LogRecord] = []
        self.expectations: list[_Expectation] = []

    def emit(self, record: logging.LogRecord) -> None:
        for exp in reversed(self.expectations):
            if exp.matches(record):
                exp.seen += 1
                return
        self.unexpected.append(record)


class _Expectation:
    def __init__(self, pattern: str, level: int) -> None:
        self.pattern = re.compile(pattern)
        self.level = level
        self.seen = 0

    def matches(self, record: logging.LogRecord) -> bool:
        return record.levelno == self.level and bool(self.pattern.search(record.getMessage()))


_log_check_key = pytest.StashKey[_LogCheck]()


def _run_with_log_check(item: pytest.Item, phase: str):
    check = item.stash.setdefault(_log_check_key, _LogCheck())
    root = logging.getLogger()
    root.addHandler(check)
    try:
        result = yield
    except BaseException:
        check.unexpected.clear()  # the phase failed anyway; pytest shows its captured log
        raise
    finally:
        root.removeHandler(check)
    if check.unexpected:
        records, check.unexpected = check.unexpected, []
        lines = "\n".join(f"  {r.levelname} {r.name}: {r.getMessage()}" for r in records)
        pytest.fail(f"unexpected log records during {phase}:\n{lines}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _check_privileges(item)
    return (yield from _run_with_log_check(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _run_with_log_check(item, "the test"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _run_with_log_check(item, "teardown"))


@pytest.fixture
def expect_logs(request):
    """``with expect_logs(pattern, level=logging.WARNING, count=1):`` marks log records
    matching ``pattern`` (re.search on the message) as expected inside the block, and
    fails unless ``count`` of them came (``count=None``: at least one)."""

    @contextlib.contextmanager
    def expect(pattern: str, *, level: int = logging.WARNING, count: int | None = 1):
        check = request.node.stash.setdefault(_log_check_key, _LogCheck())
        exp = _Expectation(pattern, level)
        check.expectations.append(exp)
        try:
            yield exp
        finally:
            check.expectations.remove(exp)
        if count is None:
            assert exp.seen >= 1, f"expected a {logging.getLevelName(level)} log record matching {pattern!r}"
        else:
            assert exp.seen == count, (f"expected {count} {logging.getLevelName(level)} log records "
                                       f"matching {pattern!r}, got {exp.seen}")

    return expect


# -- corpus, keys and packages --------------------------------------------------

@pytest.fixture(scope="session")
def conformance():
    """The conformance corpus folder (skips, or fails under CI, when it is absent)."""
    return conformance_dir()


@pytest.fixture(scope="session")
def gpg_key(tmp_path_factory) -> rpmbuild.GpgKey:
    """A passphrase-less RSA-3072 signing key in a throwaway GNUPGHOME."""
    require_tools("gpg", "gpgconf")
    key = rpmbuild.make_gpg_key(tmp_path_factory.mktemp("gpg"))
    yield key
    rpmbuild.stop_gpg_agent(key)


@pytest.fixture(scope="session")
def rpm_packages(tmp_path_factory, gpg_key) -> rpmbuild.PackageCache:
    """``rpm_packages(name, version, release, files, signed=True, digest_algo=8, ...)``
    builds a package signed with ``gpg_key`` (each distinct one once per session)."""
    require_tools("rpmbuild", "rpmsign", "rpm")
    return rpmbuild.PackageCache(tmp_path_factory.mktemp("rpms"), gpg_key)


@pytest.fixture
def corpus():
    """The conformance corpus folder (skips, or fails under CI, when absent)."""
    from tests.prereq import conformance_dir

    return conformance_dir()


@pytest.fixture
def gpg_tool():
    """gpg must be installed."""
    from tests.prereq import require_tools

    require_tools("gpg")


# -- btrfs and store directories (tests/btrfs_fixture.py) -------------------------

from tests.btrfs_fixture import btrfs_dir, store_dir  # noqa: F401  (fixtures)

# Whether a command runs "under systemd" (and logs to the journal) is for each
# test to decide: never inherit it from whatever runs the test suite.
for _var in ("INVOCATION_ID", "JOURNAL_STREAM"):
    os.environ.pop(_var, None)
