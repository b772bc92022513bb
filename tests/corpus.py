"""The external conformance corpus (../shared/conformance): what MANIFEST.tsv says.

A test that reads the corpus takes the ``conformance`` fixture (conftest.py),
which skips the test where the corpus is absent; tests parametrized over its
files get their parameters from :func:`corpus_params`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pytest

from tests.prereq import conformance_path


@dataclass(frozen=True)
class Case:
    """One MANIFEST row: a file checked against some trusted keys."""

    file: str
    sha256: str
    case_id: str
    keys: tuple[str, ...]
    expected: str
    rpm418: str

    @property
    def is_package_case(self) -> bool:
        return self.expected not in ("key", "header-only rpm", "-")


def manifest(root: Path) -> list[Case]:
    rows = []
    with open(root / "MANIFEST.tsv", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for row in reader:
            if not row or row[0].startswith("#"):
                continue
            file, sha, _prov, case_id, keys, expected = row[:6]
            rpm418 = row[8] if len(row) > 8 else ""
            rows.append(Case(file, sha, case_id,
                             tuple(k for k in keys.split(",") if k and k != "-"),
                             expected, rpm418))
    return rows


def package_files(root: Path) -> list[str]:
    """Every rpm (full or header-only) the manifest lists, once."""
    seen = []
    for case in manifest(root):
        if case.expected == "key" or case.file in seen:
            continue
        if (root / case.file).is_file():
            seen.append(case.file)
    return seen


def corpus_params(values: Iterable, ids=None, *, argnames: int = 1) -> list:
    """Parameters read from the corpus when tests are collected.  Where the corpus
    is absent: one placeholder (id ``corpus-absent``, every argument None), so the
    test is still collected and skips through the ``conformance`` fixture -- with
    the corpus' reason, not pytest's "got empty parameter set"."""
    if conformance_path() is None:
        return [pytest.param(*([None] * argnames), id="corpus-absent")]
    return [pytest.param(*(v if argnames > 1 else (v,)), id=None if ids is None else ids(v))
            for v in values]
