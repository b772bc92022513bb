"""When two packages' entries for one path conflict: the one rule, used by lint
(before a deploy) and by the view's tree (at mount).

It is rpm 4.18's (``rpmfilesCompare``, applied to two packages installed in one
transaction), measured by installing pairs of rpmbuild packages with
``rpm -i --root`` (tests/test_conflicts.py keeps the cases and runs rpm as the
oracle):

- a different file type conflicts, and then nothing else is compared;
- different permission bits conflict, except between two symlinks;
- a different owner or group conflicts, for every type (directories too);
- regular files: a different digest, or digest algorithm, conflicts;
- symlinks: a different target conflicts;
- device nodes: a different device number conflicts;
- mtime, size, file flags (``%config``, ``%doc`` ...), verify flags, language
  and color do not matter; ``%ghost`` entries never conflict (callers leave them
  out: they have no bytes and the view does not show them).  The view does show
  a ``%ghost`` symlink whose signed header gives its target (the alternatives
  names), and lint and the tree compare such a link as the symlink it shows:
  stricter than rpm, for the same reason as capabilities below.

So directories merge only when mode, owner and group agree.

One addition to rpm's rule: different file capabilities conflict.  rpm 4.18
installs both and the package installed last wins; an image is a set of
packages, with no install order to pick a winner, and the view serves one set
of capabilities.  (Nor are ELF colors used to prefer one of two multilib files.)
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from verifier.files import FileEntry

#: The attributes the rule compares, in the order differences are reported.
ATTRIBUTES = ("type", "mode", "owner", "group", "digest", "link target", "device number", "capabilities")

_TYPE_NAMES = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
               stat.S_IFCHR: "char device", stat.S_IFBLK: "block device",
               stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


class Shipped(NamedTuple):
    """What a package ships at a path, as far as the rule compares it: what a
    caller keeps per path instead of the whole FileEntry (the tree does, so that
    a package's file list can go once it is composed)."""

    mode: int
    user: str
    group: str
    digest_algo: int
    digest: str
    linkto: str
    rdev: int
    caps: str

    @classmethod
    def of(cls, entry: FileEntry) -> Shipped:
        return cls(entry.mode, entry.user, entry.group, entry.digest_algo, entry.digest, entry.linkto,
                   entry.rdev, entry.caps)


class Difference(NamedTuple):
    """One attribute (of :data:`ATTRIBUTES`) in which two entries differ, with
    the first entry's value and the second's."""

    attribute: str
    first: object
    second: object


def differences(a: Shipped | FileEntry, b: Shipped | FileEntry) -> list[Difference]:
    """How two packages' entries for one path differ; empty when they may share it
    (see the module docstring).  A type difference is the only one reported."""
    kind = stat.S_IFMT(a.mode)
    if kind != stat.S_IFMT(b.mode):
        return [Difference("type", kind, stat.S_IFMT(b.mode))]
    found = []
    if kind != stat.S_IFLNK and stat.S_IMODE(a.mode) != stat.S_IMODE(b.mode):
        found.append(Difference("mode", stat.S_IMODE(a.mode), stat.S_IMODE(b.mode)))
    if a.user != b.user:
        found.append(Difference("owner", a.user, b.user))
    if a.group != b.group:
        found.append(Difference("group", a.group, b.group))
    if kind == stat.S_IFREG and (a.digest_algo != b.digest_algo or a.digest.lower() != b.digest.lower()):
        found.append(Difference("digest", (a.digest_algo, a.digest), (b.digest_algo, b.digest)))
    if kind == stat.S_IFLNK and a.linkto != b.linkto:
        found.append(Difference("link target", a.linkto, b.linkto))
    if kind in (stat.S_IFCHR, stat.S_IFBLK) and a.rdev != b.rdev:
        found.append(Difference("device number", a.rdev, b.rdev))
    if a.caps != b.caps:
        found.append(Difference("capabilities", a.caps, b.caps))
    return found


def type_name(kind: int) -> str:
    """``file``, ``directory``, ``symlink`` ... for a file type (``stat.S_IFMT`` bits)."""
    return _TYPE_NAMES.get(kind, f"type {kind:o}")


def _value(attribute: str, value: object) -> str:
    if attribute == "type":
        return type_name(value)
    if attribute == "mode":
        return f"{value:04o}"
    if attribute == "digest":
        _algo, digest = value
        return f"{digest[:16]}…" if digest else "(none)"
    if attribute == "device number":
        return f"{os.major(value)}:{os.minor(value)}"
    return repr(value) if value != "" else "(none)"


def describe(found: list[Difference]) -> str:
    """``mode 0755 vs 0700; owner 'root' vs 'bin'``: the differences for a message."""
    return "; ".join(f"{d.attribute} {_value(d.attribute, d.first)} vs {_value(d.attribute, d.second)}"
                     for d in found)
