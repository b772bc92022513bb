"""rpm's version comparison: ``rpmvercmp`` on one version or release string, and EVR order.

A version string is compared segment by segment.  A segment is a maximal run of ASCII
digits or of ASCII letters; every other character (``.``, ``_``, ``+``, any non-ASCII
character ...) only separates segments, and separators never compare with each other
(``2.0`` equals ``2_0``).  Numeric segments compare as numbers (leading zeros dropped),
alphabetic ones by byte order, and a numeric segment is newer than an alphabetic one.
``~`` sorts before everything, even the end of the string (``1.0~rc1 < 1.0``); ``^``
sorts after the end of the string but before anything else (``1.0 < 1.0^git1 < 1.0.1``).
When all segments agree, the string with something left over is newer.

This follows rpm 4.18's ``rpmvercmp()`` (rpmio/rpmvercmp.c) and ``rpmverCmp()``
(a missing epoch is 0), and is tested against ``rpm.vercmp`` in rpm's own Lua.
"""

from __future__ import annotations

import string
from typing import NamedTuple

_DIGITS = frozenset(string.digits)
_ALPHA = frozenset(string.ascii_letters)
_ALNUM = _DIGITS | _ALPHA
#: Characters that are neither separators nor segment characters.
_SPECIAL = frozenset("~^")


def _skip_separators(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] not in _ALNUM and s[i] not in _SPECIAL:
        i += 1
    return i


def _run_end(s: str, i: int, chars: frozenset) -> int:
    n = len(s)
    while i < n and s[i] in chars:
        i += 1
    return i


def rpmvercmp(a: str, b: str) -> int:
    """Compare two version (or release) strings as rpm does: -1, 0 or 1."""
    if a == b:
        return 0
    i = j = 0
    na, nb = len(a), len(b)
    while i < na or j < nb:
        i = _skip_separators(a, i)
        j = _skip_separators(b, j)
        ca = a[i] if i < na else ""
        cb = b[j] if j < nb else ""

        # Tilde sorts before everything else, the end of the string included.
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i += 1
            j += 1
            continue

        # Caret: like tilde, except that the end of the other string (the base
        # version) sorts before it.
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i += 1
            j += 1
            continue

        if not (ca and cb):
            break

        # The first segment's type decides how both are read.
        is_num = ca in _DIGITS
        chars = _DIGITS if is_num else _ALPHA
        ea = _run_end(a, i, chars)
        eb = _run_end(b, j, chars)
        if eb == j:
            # Segments of different types: numeric is newer than alphabetic.
            return 1 if is_num else -1
        sa, sb = a[i:ea], b[j:eb]
        if is_num:
            sa = sa.lstrip("0")
            sb = sb.lstrip("0")
            if len(sa) != len(sb):
                return 1 if len(sa) > len(sb) else -1
        if sa != sb:
            return 1 if sa > sb else -1
        i, j = ea, eb

    rest_a, rest_b = i < na, j < nb
    if not rest_a and not rest_b:
        return 0
    return -1 if not rest_a else 1


class EVR(NamedTuple):
    """Epoch, version and release of a package; ``epoch`` None means no epoch (0)."""

    epoch: int | None
    version: str
    release: str

    def __str__(self) -> str:
        prefix = f"{self.epoch}:" if self.epoch is not None else ""
        return f"{prefix}{self.version}-{self.release}"


def evrcmp(a: EVR, b: EVR) -> int:
    """Compare two EVRs as rpm orders packages: epoch (missing = 0), then version, then release."""
    ea, eb = a.epoch or 0, b.epoch or 0
    if ea != eb:
        return 1 if ea > eb else -1
    return rpmvercmp(a.version, b.version) or rpmvercmp(a.release, b.release)


def parse_evr(text: str) -> EVR:
    """``[E:]V[-R]`` as rpm splits it: the epoch before the first ``:`` when it is all
    digits, the release after the last ``-`` ("" when there is none)."""
    epoch = None
    head, sep, rest = text.partition(":")
    if sep and head.isdigit() and head.isascii():
        epoch, text = int(head), rest
    version, sep, release = text.rpartition("-")
    if not sep:
        version, release = release, ""
    return EVR(epoch, version, release)


def package_evr(package) -> EVR:
    """The EVR of a :class:`verifier.header.Package`."""
    return EVR(package.epoch, package.version, package.release)
