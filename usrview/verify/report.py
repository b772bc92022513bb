"""The outcome of a verify run: its findings, counters and exit code, and the
``--json`` output (one object per finding, then the summary)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field

from usrview.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK

#: Kinds of finding.  ``file``: an rpm -V line with flags; ``missing``; ``unowned``;
#: ``header``: a header file missing, altered or not trusted; ``unsigned``: a package
#: imported unsigned (flagged on every run); ``image``: the image record; ``legacy``: a
#: package only a looser signature policy than the run's accepts (keys bound by SHA-1,
#: imported under ``legacy``, verified under ``default``), its files checked all the same;
#: ``notdir``: a non-directory (a symlink too) where a package's tree needs a directory.
KINDS = ("file", "missing", "unowned", "header", "unsigned", "image", "legacy", "notdir")


@dataclass
class Finding:
    """One discrepancy.

    Attributes:
        kind: one of KINDS.
        package: the package id (empty for the image record).
        path: the file's install path; for header/unsigned/legacy findings the header
            file, for image findings the record.
        line: what ``usrview verify`` prints for it (rpm -V's line for files).
        flags: the ``SM5DLUGTP`` column (file findings only).
        marker: the attribute marker (file, missing findings).
        expected, actual: the digests (``algo:hex``) for a 5, else other
            expected/actual values when they are one-dimensional (link target,
            size, header verdict).
        message: one line for humans (non-file findings; details of file ones).
    """

    kind: str
    package: str
    path: str
    line: str
    flags: str = ""
    marker: str = ""
    expected: str = ""
    actual: str = ""
    message: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Stats:
    """Counters of one run."""

    packages: int = 0
    files: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    cache_hits: int = 0
    deduped_files: int = 0
    cached_packages: int = 0


@dataclass
class Report:
    """The outcome of a run.

    Attributes:
        image: the image id checked ("" when the record could not be read).
        findings: in output order: the image record's, then per package its
            header's, its files' in header order, its unowned paths sorted.
        stats: counters.
        duration: seconds.
        errors: operational problems that are not findings (exit 2).
        cache_written: whether the cache was updated.
        signature_policy: the signature policy of the run (verifier.policy).
        legacy_signature_policy: the image's packages the store records as
            accepted only by the legacy signature policy.
    """

    image: str = ""
    findings: list[Finding] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    duration: float = 0.0
    errors: list[str] = field(default_factory=list)
    cache_written: bool = False
    signature_policy: str = "default"
    legacy_signature_policy: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_ERROR
        return EXIT_FINDINGS if self.findings else EXIT_OK

    def by_kind(self) -> dict[str, int]:
        counts = Counter(f.kind for f in self.findings)
        return {k: counts.get(k, 0) for k in KINDS}

    def summary(self) -> dict:
        return {"summary": True, "image": self.image, "status": self.exit_code,
                "findings": len(self.findings), "by_kind": self.by_kind(),
                **dataclasses.asdict(self.stats), "duration": round(self.duration, 6),
                "errors": self.errors, "signature_policy": self.signature_policy,
                "legacy_signature_policy": self.legacy_signature_policy}



def write_json(report: Report, out) -> None:
    for f in report.findings:
        out.write(json.dumps(f.to_json()) + "\n")
    out.write(json.dumps(report.summary()) + "\n")
