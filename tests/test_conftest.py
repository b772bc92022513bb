"""The test machinery itself: under CI a missing prerequisite fails instead of
skipping, and unexpected warnings fail a test.  Each case runs a small test file in a pytest subprocess
that loads our conftest as a plugin."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.prereq import CORPUS_ABSENT

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

INNER = textwrap.dedent('''
    import logging
    import pytest
    from tests.prereq import require

    log = logging.getLogger("inner")

    def test_require_missing():
        require(False, "the moon is absent")

    def test_plain_skip():
        pytest.skip("not today")

    def test_passes():
        pass

    def test_unexpected_warning():
        log.warning("something odd")

    def test_expected_warning(expect_logs):
        with expect_logs("something odd"):
            log.warning("something odd happened")

    def test_expected_warning_missing(expect_logs):
        with expect_logs("never logged"):
            pass

    def test_info_is_fine():
        log.info("routine")

    def test_error_in_teardown(request):
        request.addfinalizer(lambda: log.error("teardown trouble"))

    @pytest.mark.privileged("no-such-privilege")
    def test_bad_privilege():
        pass
''')


def run_inner(pytester: pytest.Pytester, strict: bool) -> dict[str, str]:
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]\n')
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\nmarkers =\n    privileged: x\n")
    with pytest.MonkeyPatch.context() as mp:
        if strict:
            mp.setenv("USRVIEW_REQUIRE_PRIVILEGED", "1")
        else:
            mp.delenv("USRVIEW_REQUIRE_PRIVILEGED", raising=False)
        mp.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        mp.delenv("USRVIEW_CORPUS_SUMMARY", raising=False)
        result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    seen: dict[str, set[str]] = {}
    for line in result.outlines:  # "test_inner.py::test_x PASSED [ 10%]"
        if line.startswith("test_inner.py::"):
            name, word = line.split("::", 1)[1].split()[:2]
            seen.setdefault(name, set()).add(word)
    return {name: "ERROR" if "ERROR" in words else words.pop() for name, words in seen.items()}


def test_outside_ci_missing_prerequisites_skip(pytester):
    out = run_inner(pytester, strict=False)
    assert out["test_require_missing"] == "SKIPPED"
    assert out["test_plain_skip"] == "SKIPPED"
    assert out["test_passes"] == "PASSED"
    assert out["test_info_is_fine"] == "PASSED"
    assert out["test_expected_warning"] == "PASSED"
    assert out["test_unexpected_warning"] == "FAILED"
    assert out["test_expected_warning_missing"] == "FAILED"
    assert out["test_error_in_teardown"] == "ERROR"
    assert out["test_bad_privilege"] == "ERROR"


def test_under_ci_missing_prerequisites_fail(pytester):
    out = run_inner(pytester, strict=True)
    assert out["test_require_missing"] == "FAILED"
    assert out["test_plain_skip"] == "SKIPPED"  # a case that does not apply
    assert out["test_passes"] == "PASSED"


def test_conformance_fixture_honours_the_environment(pytester, tmp_path):
    """USRVIEW_CONFORMANCE points the corpus elsewhere; without a MANIFEST.tsv there,
    the fixture fails under CI (a corpus asked for must be there)."""
    (tmp_path / "corpus").mkdir()
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]\n')
    pytester.makepyfile(test_c="def test_c(conformance):\n    assert conformance.name == 'corpus'\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        mp.setenv("USRVIEW_CONFORMANCE", str(tmp_path / "corpus"))
        mp.setenv("USRVIEW_REQUIRE_PRIVILEGED", "1")
        mp.delenv("USRVIEW_CORPUS_SUMMARY", raising=False)
        assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret != 0
        (tmp_path / "corpus" / "MANIFEST.tsv").write_text("")
        assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0


CORPUS_TESTS = textwrap.dedent('''
    import pytest
    from tests.corpus import corpus_params

    def test_reads_it(conformance):
        pass

    def test_reads_it_too(conformance):
        pass

    @pytest.mark.parametrize("x", corpus_params([1, 2, 3]))
    def test_parametrized(conformance, x):
        pass

    def test_other():
        pass
''')


@pytest.mark.parametrize("absent", [False, True])
def test_corpus_absent_skips_with_one_reason_and_is_counted(pytester, tmp_path, absent):
    """An absent corpus is not a missing prerequisite, even under CI: its tests skip
    with one reason, shown once, and the summary file says how many of them ran."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "MANIFEST.tsv").write_text("")
    conftest = 'pytest_plugins = ["tests.conftest"]\n'
    if absent:  # nothing beside the repository either
        conftest += f'import tests.prereq\ntests.prereq.DEFAULT_CONFORMANCE = tests.prereq.Path("{tmp_path}/none")\n'
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_c=CORPUS_TESTS)
    summary = tmp_path / "summary"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        if absent:
            mp.delenv("USRVIEW_CONFORMANCE", raising=False)
        else:
            mp.setenv("USRVIEW_CONFORMANCE", str(corpus))
        mp.setenv("USRVIEW_REQUIRE_PRIVILEGED", "1")
        mp.setenv("USRVIEW_CORPUS_SUMMARY", str(summary))
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    line = summary.read_text()
    if absent:
        result.assert_outcomes(passed=1, skipped=3)  # the parameters read from the corpus: one placeholder
        skips = [out for out in result.outlines if out.startswith("SKIPPED")]
        assert len(skips) == 1 and skips[0].startswith("SKIPPED [3] ")
        assert skips[0].endswith(CORPUS_ABSENT)
        assert line.startswith("conformance corpus: absent; 0 of the 3 tests that read it ran")
    else:
        result.assert_outcomes(passed=6)
        assert line.startswith(f"conformance corpus: found at {corpus}; 5 of the 5 tests that read it ran "
                               "(5 passed, 0 failed), 0 skipped")
