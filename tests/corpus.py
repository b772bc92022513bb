"""The conformance corpus in ../shared/conformance: where it is, what MANIFEST.tsv says."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tests.prereq import conformance_dir, require  # noqa: F401  (re-exported)


def corpus_dir() -> Path:
    """The corpus folder; skips the test (fails it under CI) when absent."""
    return conformance_dir()


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

