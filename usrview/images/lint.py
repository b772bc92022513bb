"""Checks of a package set before it becomes an image: what the view will show, leave out or refuse.

Pure logic over :class:`verifier.header.Package` objects; no I/O.  :func:`lint`
returns :class:`LintFinding` objects; any finding of severity ERROR refuses a deploy.

The rules (docs/images.md has the reasoning):

- ``outside-usr`` (warning): a package ships files outside ``/usr``; they are left
  out of the view.  One finding per package, naming the top directories (``/etc``,
  ``/var``, ``/bin`` ...).  ``/usr`` itself and ``%ghost`` entries are not counted.
- ``scriptlets`` (warning): a package carries scriptlets (``%post`` ...); none runs.
- ``conflict`` (error): two packages ship one path under ``/usr`` differently, by
  the rule :mod:`usrview.images.conflicts` keeps (rpm 4.18's, measured: file type,
  permission bits but between symlinks, owner, group, digest and its algorithm,
  symlink target, device number; and file capabilities).  Directories that agree
  merge; ``%ghost`` entries never conflict (they have no bytes and are not shown),
  except ``%ghost`` symlinks with a target under ``/usr``, which the view shows
  (the ``alternatives`` names): those are compared as symlinks.
- ``not-a-directory`` (error): a package ships a path beneath one that another
  package (or the same one) ships as something other than a directory.
- ``duplicate-name`` (error): two versions (EVRs) of one package name, or two
  different builds (header SHA-256) of one NEVRA.  One name in several
  architectures at one EVR is allowed, as rpm's multilib does.
- ``source-package`` (error): a source rpm cannot be part of an image.
"""

from __future__ import annotations

import enum
import stat
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from usrview.images.conflicts import describe, differences, type_name
from usrview.images.vercmp import package_evr
from verifier.header import Package

#: The one tree the view shows.
USR = "/usr"


class Severity(enum.IntEnum):
    """How bad a finding is: only ERROR refuses a deploy."""

    INFO = 0
    WARNING = 1
    ERROR = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class LintFinding:
    """One result of :func:`lint`.

    Attributes:
        kind: the rule ("conflict", "outside-usr", "scriptlets", "not-a-directory",
            "duplicate-name", "source-package").
        severity: :class:`Severity`.
        message: one line for a human.
        packages: NEVRAs of the packages involved.
        paths: the paths involved (may be empty).
    """

    kind: str
    severity: Severity
    message: str
    packages: tuple[str, ...] = ()
    paths: tuple[str, ...] = field(default=())

    def format(self) -> str:
        return f"{self.severity}: {self.kind}: {self.message}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "severity": str(self.severity), "message": self.message,
                "packages": list(self.packages), "paths": list(self.paths)}


def is_under_usr(path: str) -> bool:
    """True for ``/usr`` and anything beneath it: what the view shows."""
    return path == USR or path.startswith(USR + "/")


def has_errors(findings: Iterable[LintFinding]) -> bool:
    return any(f.severity >= Severity.ERROR for f in findings)


def _top_dir(path: str) -> str:
    head = path.lstrip("/").split("/", 1)[0]
    return "/" + head


def _check_names(packages: list[Package]) -> list[LintFinding]:
    findings = []
    by_name: dict[str, list[Package]] = defaultdict(list)
    for pkg in packages:
        by_name[pkg.name].append(pkg)
    for name, pkgs in sorted(by_name.items()):
        if len(pkgs) < 2:
            continue
        evrs = {package_evr(p) for p in pkgs}
        nevras = {}
        for p in pkgs:
            nevras.setdefault(p.nevra, set()).add(p.header_sha256)
        rebuilt = sorted(n for n, shas in nevras.items() if len(shas) > 1)
        listed = tuple(sorted(p.nevra for p in pkgs))
        if len(evrs) > 1:
            findings.append(LintFinding(
                "duplicate-name", Severity.ERROR,
                f"package {name} appears in {len(evrs)} versions: {', '.join(sorted(set(listed)))}",
                packages=listed))
        elif rebuilt:
            findings.append(LintFinding(
                "duplicate-name", Severity.ERROR,
                f"two different builds of {', '.join(rebuilt)} (different headers)",
                packages=tuple(rebuilt)))
    return findings


def lint(packages: Iterable[Package]) -> list[LintFinding]:
    """Check a package set; the findings come errors first, then in package order.

    The same package given twice (equal header SHA-256) counts once.
    """
    unique: dict[str, Package] = {}
    for pkg in packages:
        unique.setdefault(pkg.header_sha256, pkg)
    pkgs = sorted(unique.values(), key=lambda p: (p.name, p.nevra, p.header_sha256))

    findings: list[LintFinding] = []
    findings += _check_names(pkgs)

    # path -> [(package, entry)] of everything the view would show
    shipped: dict[str, list[tuple[Package, object]]] = defaultdict(list)
    for pkg in pkgs:
        if pkg.is_source:
            findings.append(LintFinding("source-package", Severity.ERROR,
                                    f"{pkg.nevra} is a source package", packages=(pkg.nevra,)))
            continue
        outside: list[str] = []
        for entry in pkg.files:
            if entry.is_ghost and not (entry.is_ghost_symlink and is_under_usr(entry.path)):
                continue  # no bytes, not in the view (a ghost symlink under /usr is)
            if not is_under_usr(entry.path):
                outside.append(entry.path)
                continue
            shipped[entry.path].append((pkg, entry))
        if outside:
            tops = sorted({_top_dir(p) for p in outside})
            findings.append(LintFinding(
                "outside-usr", Severity.WARNING,
                f"{pkg.nevra}: {len(outside)} file(s) outside /usr, left out of the view: "
                f"{', '.join(tops)}",
                packages=(pkg.nevra,), paths=tuple(outside)))
        if pkg.scriptlets:
            findings.append(LintFinding(
                "scriptlets", Severity.WARNING,
                f"{pkg.nevra} carries {', '.join(pkg.scriptlets)} (scriptlets never run)",
                packages=(pkg.nevra,)))

    findings += _check_conflicts(shipped)
    findings += _check_parents(shipped)
    findings.sort(key=lambda f: -f.severity)  # stable: package order within a severity
    return findings


def _check_conflicts(shipped: dict[str, list]) -> list[LintFinding]:
    findings = []
    for path in sorted(shipped):
        owners = shipped[path]
        if len(owners) < 2:
            continue
        first_pkg, first_entry = owners[0]
        reported: set[str] = set()
        for pkg, entry in owners[1:]:
            found = differences(first_entry, entry)
            if not found or pkg.nevra in reported:
                continue
            reported.add(pkg.nevra)
            findings.append(LintFinding(
                "conflict", Severity.ERROR,
                f"{path}: {first_pkg.nevra} and {pkg.nevra} differ ({describe(found)})",
                packages=(first_pkg.nevra, pkg.nevra), paths=(path,)))
    return findings


def _check_parents(shipped: dict[str, list]) -> list[LintFinding]:
    """A path beneath something shipped as a non-directory cannot exist in the view."""
    findings = []
    non_dirs = {path: owners for path, owners in shipped.items()
                if not stat.S_ISDIR(owners[0][1].mode)}
    if not non_dirs:
        return findings
    seen: set[str] = set()
    for path in sorted(shipped):
        parent = path
        while True:
            parent = parent.rpartition("/")[0]
            if not parent or parent in seen:
                break
            if parent in non_dirs:
                seen.add(parent)
                blocker = non_dirs[parent][0][0]
                child_pkg = shipped[path][0][0]
                findings.append(LintFinding(
                    "not-a-directory", Severity.ERROR,
                    f"{path} ({child_pkg.nevra}) lies beneath {parent}, which "
                    f"{blocker.nevra} ships as a {type_name(stat.S_IFMT(non_dirs[parent][0][1].mode))}",
                    packages=tuple(dict.fromkeys((blocker.nevra, child_pkg.nevra))),
                    paths=(parent, path)))
                break
    return findings
