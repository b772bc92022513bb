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

- ``conformance``: the external conformance corpus folder, ../shared/conformance or
  $USRVIEW_CONFORMANCE; every test that reads the corpus takes this fixture, so
  that where the corpus is absent it skips with one reason (prereq.CORPUS_ABSENT)
  and the run counts it: a line of the terminal summary -- or, where
  $USRVIEW_CORPUS_SUMMARY names a file, that file (``.ci/run`` prints it) -- says
  whether the corpus was found and how many of its tests ran.
- ``signed_samples``: the corpus' selfbuilt/signed/ packages, made here with
  rpmsign and gpg (tests/corpus.py), for the tests that need only their shape.
- ``gpg_key``: a throwaway RSA-3072 signing key for the session.
- ``rpm_packages``: build (and sign with ``gpg_key``) packages, each distinct
  package once per session -- see tests/rpmbuild.py.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re

import pytest

from tests import corpus, rpmbuild
from tests.prereq import CORPUS_ABSENT, PRIVILEGES, conformance_dir, conformance_path, require_tools

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
    """The external conformance corpus folder (skips when it is absent, see tests/prereq.py)."""
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


@pytest.fixture(scope="session")
def signed_samples(tmp_path_factory, rpm_packages) -> dict[str, corpus.SignedSample]:
    """The corpus' selfbuilt/signed/ packages, made here: name -> SignedSample (tests/corpus.py)."""
    require_tools("gpg", "gpgconf")
    return corpus.make_signed_samples(tmp_path_factory.mktemp("signed-samples"), rpm_packages)


@pytest.fixture
def gpg_tool():
    """gpg must be installed."""
    from tests.prereq import require_tools

    require_tools("gpg")


# -- how many corpus tests ran -------------------------------------------------

#: A file to write the corpus line to instead of the terminal summary (.ci/run).
CORPUS_SUMMARY_ENV = "USRVIEW_CORPUS_SUMMARY"


class _CorpusTally:
    """The outcome of every test that took the ``conformance`` fixture."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def record(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.outcomes:
            return
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif report.skipped and self.outcomes[report.nodeid] != "failed":
            self.outcomes[report.nodeid] = "skipped"
        elif report.when == "call" and report.passed and self.outcomes[report.nodeid] == "pending":
            self.outcomes[report.nodeid] = "passed"

    def line(self) -> str:
        count = {word: 0 for word in ("passed", "failed", "skipped", "pending")}
        for outcome in self.outcomes.values():
            count[outcome] += 1
        ran = count["passed"] + count["failed"]
        total = len(self.outcomes)
        path = conformance_path()
        where = f"found at {path}" if path is not None else "absent"
        line = (f"conformance corpus: {where}; {ran} of the {total} tests that read it ran "
                f"({count['passed']} passed, {count['failed']} failed), {count['skipped']} skipped")
        if path is None:
            line += " -- see README.md, 'The conformance corpus'"
        return line


_corpus_tally = _CorpusTally()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if "conformance" in getattr(item, "fixturenames", ()):
        _corpus_tally.outcomes[item.nodeid] = "pending"


#: Where the corpus skips are reported: one place, so that ``-rs`` folds them into one line.
_CORPUS_SKIP_AT = (inspect.getsourcefile(conformance_dir), inspect.getsourcelines(conformance_dir)[1])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if (report.skipped and isinstance(report.longrepr, tuple)
            and report.longrepr[2] == f"Skipped: {CORPUS_ABSENT}"):
        report.longrepr = (*_CORPUS_SKIP_AT, report.longrepr[2])
    return report


def pytest_runtest_logreport(report):
    _corpus_tally.record(report)


def pytest_terminal_summary(terminalreporter):
    if _corpus_tally.outcomes and not os.environ.get(CORPUS_SUMMARY_ENV):
        terminalreporter.write_line(_corpus_tally.line())


def pytest_sessionfinish(session):
    target = os.environ.get(CORPUS_SUMMARY_ENV)
    if target:
        with open(target, "w") as f:
            f.write(_corpus_tally.line() + "\n")


# -- btrfs and store directories (tests/btrfs_fixture.py) -------------------------

from tests.btrfs_fixture import btrfs_dir, store_dir  # noqa: F401  (fixtures)

# Whether a command runs "under systemd" (and logs to the journal) is for each
# test to decide: never inherit it from whatever runs the test suite.
for _var in ("INVOCATION_ID", "JOURNAL_STREAM"):
    os.environ.pop(_var, None)
