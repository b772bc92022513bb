"""The rooms of docs/architecture.md, held: which room may import which, and
no module grows past the size of one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: room -> the rooms it may import (docs/architecture.md).  "shared" is
#: usrview/errors.py, config.py, journal.py, faults.py and __init__.py.
ALLOWED = {
    "verifier": {"verifier"},
    "shared": {"verifier", "shared"},
    "store": {"verifier", "shared", "store"},
    "images": {"verifier", "shared", "store", "images"},
    "view": {"verifier", "shared", "store", "images", "view"},
    "verify": {"verifier", "shared", "store", "images", "verify"},
    "boot": {"verifier", "shared", "store", "images", "view", "verify", "boot"},
    "remote": {"verifier", "shared", "store", "images", "remote"},
    "cli": {"verifier", "shared", "store", "images", "view", "verify", "boot", "remote", "cli"},
}
#: Lines a module may have; one over it says why it is one job.
MAX_LINES = 650
ONE_JOB = {
    # The OpenPGP packet grammar and its key and signature algorithms: one table-driven parser.
    "verifier/openpgp.py",
    # The keyring and its verdicts: key loading, binding signatures, revocation, expiry.
    "verifier/keyring.py",
}


def _room(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "verifier":
        return "verifier"
    return rel.parts[1] if len(rel.parts) > 2 else "shared"


def _module_room(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "verifier":
        return "verifier"
    if parts[0] != "usrview":
        return None
    if len(parts) == 1 or parts[1] in ("errors", "config", "journal", "faults") or parts[1].startswith("__"):
        return "shared"
    return parts[1]


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "usrview":  # from usrview import images, verify ...
                for alias in node.names:
                    yield node.lineno, f"usrview.{alias.name}"
            else:
                yield node.lineno, module


SOURCES = sorted([*ROOT.glob("usrview/**/*.py"), *ROOT.glob("verifier/**/*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_rooms(path):
    room = _room(path)
    wrong = [f"line {line}: {name}" for line, name in _imports(path)
             if (target := _module_room(name)) is not None and target not in ALLOWED[room]]
    assert not wrong, f"{room} may import only {sorted(ALLOWED[room])}: " + "; ".join(wrong)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_one_job(path):
    rel = str(path.relative_to(ROOT))
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES or rel in ONE_JOB, f"{rel}: {lines} lines; split it by job or say why it is one"


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The room check itself: verifier importing usrview is caught."""
    assert _module_room("usrview.store.store") == "store"
    assert _module_room("usrview.errors") == "shared"
    assert "store" not in ALLOWED["verifier"]
    assert _module_room("os") is None
