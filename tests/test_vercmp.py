"""rpm's version comparison: rpm's own test table, and rpm itself as the oracle.

The table holds the cases of rpm's tests/rpmvercmp.at (plain, tilde and caret
sorting).  The property tests send many generated pairs to ``rpm.vercmp`` in
rpm's embedded Lua in one ``rpm --eval`` run and compare every answer.
"""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.prereq import require_tools
from usrview.images.vercmp import EVR, evrcmp, parse_evr, rpmvercmp

# (a, b, rpmvercmp(a, b)) -- from rpm's tests/rpmvercmp.at.
RPM_CASES = [
    ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0", "1.0", 1),
    ("2.0.1", "2.0.1", 0), ("2.0", "2.0.1", -1), ("2.0.1", "2.0", 1),
    ("2.0.1a", "2.0.1a", 0), ("2.0.1a", "2.0.1", 1), ("2.0.1", "2.0.1a", -1),
    ("5.5p1", "5.5p1", 0), ("5.5p1", "5.5p2", -1), ("5.5p2", "5.5p1", 1),
    ("5.5p10", "5.5p10", 0), ("5.5p1", "5.5p10", -1), ("5.5p10", "5.5p1", 1),
    ("10xyz", "10.1xyz", -1), ("10.1xyz", "10xyz", 1),
    ("xyz10", "xyz10", 0), ("xyz10", "xyz10.1", -1), ("xyz10.1", "xyz10", 1),
    ("xyz.4", "xyz.4", 0), ("xyz.4", "8", -1), ("8", "xyz.4", 1),
    ("xyz.4", "2", -1), ("2", "xyz.4", 1),
    ("5.5p2", "5.6p1", -1), ("5.6p1", "5.5p2", 1),
    ("5.6p1", "6.5p1", -1), ("6.5p1", "5.6p1", 1),
    ("6.0.rc1", "6.0", 1), ("6.0", "6.0.rc1", -1),
    ("10b2", "10a1", 1), ("10a2", "10b2", -1),
    ("1.0aa", "1.0aa", 0), ("1.0a", "1.0aa", -1), ("1.0aa", "1.0a", 1),
    ("10.0001", "10.0001", 0), ("10.0001", "10.1", 0), ("10.1", "10.0001", 0),
    ("10.0001", "10.0039", -1), ("10.0039", "10.0001", 1),
    ("4.999.9", "5.0", -1), ("5.0", "4.999.9", 1),
    ("20101121", "20101121", 0), ("20101121", "20101122", -1), ("20101122", "20101121", 1),
    ("2_0", "2_0", 0), ("2.0", "2_0", 0), ("2_0", "2.0", 0),
    # RhBug:178798: separators are all equal
    ("a", "a", 0), ("a+", "a+", 0), ("a+", "a_", 0), ("a_", "a+", 0),
    ("+a", "+a", 0), ("+a", "_a", 0), ("_a", "+a", 0), ("+_", "+_", 0),
    ("_+", "+_", 0), ("_+", "_+", 0), ("+", "_", 0), ("_", "+", 0),
    # tilde
    ("1.0~rc1", "1.0~rc1", 0), ("1.0~rc1", "1.0", -1), ("1.0", "1.0~rc1", 1),
    ("1.0~rc1", "1.0~rc2", -1), ("1.0~rc2", "1.0~rc1", 1),
    ("1.0~rc1~git123", "1.0~rc1~git123", 0), ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0~rc1", "1.0~rc1~git123", 1),
    # caret
    ("1.0^", "1.0^", 0), ("1.0^", "1.0", 1), ("1.0", "1.0^", -1),
    ("1.0^git1", "1.0^git1", 0), ("1.0^git1", "1.0", 1), ("1.0", "1.0^git1", -1),
    ("1.0^git1", "1.0^git2", -1), ("1.0^git2", "1.0^git1", 1),
    ("1.0^git1", "1.01", -1), ("1.01", "1.0^git1", 1),
    ("1.0^20160101", "1.0^20160101", 0), ("1.0^20160101", "1.0.1", -1),
    ("1.0.1", "1.0^20160101", 1),
    ("1.0^20160101^git1", "1.0^20160101^git1", 0), ("1.0^20160102", "1.0^20160101^git1", 1),
    ("1.0^20160101^git1", "1.0^20160102", -1),
    # tilde and caret
    ("1.0~rc1^git1", "1.0~rc1^git1", 0), ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0~rc1", "1.0~rc1^git1", -1), ("1.0^git1~pre", "1.0^git1~pre", 0),
    ("1.0^git1", "1.0^git1~pre", 1), ("1.0^git1~pre", "1.0^git1", -1),
    # documented oddities (RhBug:811992, non-ASCII characters are separators)
    ("1b.fc17", "1b.fc17", 0), ("1b.fc17", "1.fc17", -1), ("1.fc17", "1b.fc17", 1),
    ("1g.fc17", "1g.fc17", 0), ("1g.fc17", "1.fc17", 1), ("1.fc17", "1g.fc17", -1),
    ("1.1.α", "1.1.α", 0), ("1.1.α", "1.1.β", 0), ("1.1.β", "1.1.α", 0),
    ("1.1.αα", "1.1.α", 0), ("1.1.α", "1.1.ββ", 0), ("1.1.ββ", "1.1.αα", 0),
]


@pytest.mark.parametrize(("a", "b", "expected"), RPM_CASES)
def test_rpmvercmp_table(a, b, expected):
    assert rpmvercmp(a, b) == expected


@pytest.mark.parametrize(("a", "b", "expected"), [
    (EVR(None, "1.0", "1"), EVR(0, "1.0", "1"), 0),  # a missing epoch is 0
    (EVR(1, "1.0", "1"), EVR(None, "2.0", "1"), 1),  # epoch first
    (EVR(None, "1.0", "2"), EVR(None, "1.0", "10"), -1),  # release last
    (EVR(2, "1.0", "1"), EVR(10, "0.1", "1"), -1),  # epochs are numbers
    (EVR(None, "1.0", "1.fc40"), EVR(None, "1.0", "1.fc40"), 0),
    (EVR(None, "1.0~rc1", "1"), EVR(None, "1.0", "0"), -1),
])
def test_evrcmp(a, b, expected):
    assert evrcmp(a, b) == expected
    assert evrcmp(b, a) == -expected


@pytest.mark.parametrize(("text", "evr"), [
    ("1.0-1", EVR(None, "1.0", "1")),
    ("3:1.0-1.fc40", EVR(3, "1.0", "1.fc40")),
    ("1.0", EVR(None, "1.0", "")),
    ("1.0-beta-2", EVR(None, "1.0-beta", "2")),
])
def test_parse_evr(text, evr):
    assert parse_evr(text) == evr
    if evr.release:
        assert str(evr) == text


# -- rpm as the oracle --------------------------------------------------------

def _lua_string(s: str) -> str:
    """A Lua string literal made only of decimal escapes: nothing rpm's macro
    expander or Lua's lexer could read differently."""
    return '"' + "".join(f"\\{b}" for b in s.encode()) + '"'


def rpm_vercmp_many(pairs: list[tuple[str, str]]) -> list[int]:
    """``rpm.vercmp(a, b)`` for every pair, in one rpm run."""
    calls = " ".join(f"io.write(rpm.vercmp({_lua_string(a)}, {_lua_string(b)}), ' ')"
                     for a, b in pairs)
    out = subprocess.run(["rpm", "--eval", f"%{{lua: {calls}}}"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    results = [int(x) for x in out.split()]
    assert len(results) == len(pairs), out
    return results


def test_oracle_agrees_with_rpm_table():
    """The oracle itself reproduces rpm's table (so a broken oracle cannot pass the
    property tests vacuously)."""
    require_tools("rpm")
    pairs = [(a, b) for a, b, _ in RPM_CASES]
    assert rpm_vercmp_many(pairs) == [expected for _, _, expected in RPM_CASES]


# Characters that matter to rpmvercmp, weighted towards short similar strings.
# '-' and ':' are left out: rpm.vercmp splits its arguments as EVRs.
_version_chars = st.sampled_from("0001123456789aabzAZ..._+~~^^é")
versions = st.text(_version_chars, min_size=0, max_size=10)
similar_pairs = versions.flatmap(
    lambda base: st.tuples(st.just(base), versions).map(lambda t: (t[0] + t[1][:2], t[0] + t[1][2:]))
)
version_pairs = st.one_of(st.tuples(versions, versions), similar_pairs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(version_pairs, min_size=1, max_size=300))
def test_rpmvercmp_matches_rpm(pairs):
    require_tools("rpm")
    # rpm's parser refuses an empty version; rpmvercmp itself is fine with it.
    pairs = [(a, b) for a, b in pairs if a and b]
    if not pairs:
        return
    expected = rpm_vercmp_many(pairs)
    mismatches = [(a, b, e, rpmvercmp(a, b)) for (a, b), e in zip(pairs, expected)
                  if rpmvercmp(a, b) != e]
    assert not mismatches, f"(a, b, rpm, ours): {mismatches[:5]}"


_epochs = st.one_of(st.none(), st.integers(0, 3), st.just(10))
_parts = st.text(st.sampled_from("0123456789ab._~^"), min_size=1, max_size=6)
evrs = st.builds(EVR, _epochs, _parts, _parts)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(evrs, evrs), min_size=1, max_size=200))
def test_evrcmp_matches_rpm(pairs):
    require_tools("rpm")
    expected = rpm_vercmp_many([(str(a), str(b)) for a, b in pairs])
    mismatches = [(str(a), str(b), e, evrcmp(a, b)) for (a, b), e in zip(pairs, expected)
                  if evrcmp(a, b) != e]
    assert not mismatches, f"(a, b, rpm, ours): {mismatches[:5]}"


def test_vercmp_is_antisymmetric_and_transitive_on_samples():
    samples = sorted({a for a, _, _ in RPM_CASES} | {b for _, b, _ in RPM_CASES})
    for a in samples:
        for b in samples:
            assert rpmvercmp(a, b) == -rpmvercmp(b, a)
