"""What changed between two images: packages added, removed, upgraded,
downgraded or rebuilt, matched by name (and architecture), ordered by rpm's
version comparison (``usrview diff``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from usrview.images.records import Image
from usrview.images.vercmp import EVR, evrcmp, package_evr
from usrview.store import Store


@dataclass(frozen=True)
class Change:
    """One package's change between two images.

    Attributes: name, old and new NEVRA ("" when absent), old and new EVR text.
    """

    name: str
    old: str = ""
    new: str = ""
    old_evr: str = ""
    new_evr: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "from": self.old or None, "to": self.new or None}


@dataclass
class ImageDiff:
    """What changed from image ``a`` to image ``b``.

    Attributes: a, b (ids), added, removed, upgraded, downgraded, rebuilt (lists
    of Change, by name), unchanged (a count).
    """

    a: str
    b: str
    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)
    upgraded: list[Change] = field(default_factory=list)
    downgraded: list[Change] = field(default_factory=list)
    rebuilt: list[Change] = field(default_factory=list)
    unchanged: int = 0

    KINDS = ("added", "removed", "upgraded", "downgraded", "rebuilt")

    def to_json(self) -> dict:
        out: dict = {"a": self.a, "b": self.b}
        for kind in self.KINDS:
            out[kind] = [c.to_json() for c in getattr(self, kind)]
        out["unchanged"] = self.unchanged
        return out


@dataclass(frozen=True)
class _Info:
    pkgid: str
    name: str
    arch: str
    nevra: str
    evr: EVR
    header_sha256: str


def _info(store: Store, pkgid: str) -> _Info:
    pkg = store.get(pkgid).package
    return _Info(pkgid, pkg.name, pkg.arch, pkg.nevra, package_evr(pkg), pkg.header_sha256)


def diff_packages(a: list[_Info], b: list[_Info], a_id: str = "", b_id: str = "") -> ImageDiff:
    """Compare two package sets by name (and by architecture where one name has several)."""
    result = ImageDiff(a_id, b_id)
    by_name_a: dict[str, list[_Info]] = defaultdict(list)
    by_name_b: dict[str, list[_Info]] = defaultdict(list)
    for i in a:
        by_name_a[i.name].append(i)
    for i in b:
        by_name_b[i.name].append(i)
    for name in sorted(by_name_a.keys() | by_name_b.keys()):
        olds, news = by_name_a.get(name, []), by_name_b.get(name, [])
        if len(olds) == 1 and len(news) == 1:
            pairs = [(olds[0], news[0])]
        else:
            old_by_arch = {i.arch: i for i in olds}
            new_by_arch = {i.arch: i for i in news}
            pairs = [(old_by_arch.get(arch), new_by_arch.get(arch))
                     for arch in sorted(old_by_arch.keys() | new_by_arch.keys())]
        for old, new in pairs:
            if old is None:
                result.added.append(Change(name, new=new.nevra, new_evr=str(new.evr)))
            elif new is None:
                result.removed.append(Change(name, old=old.nevra, old_evr=str(old.evr)))
            else:
                change = Change(name, old.nevra, new.nevra, str(old.evr), str(new.evr))
                order = evrcmp(old.evr, new.evr)
                if order < 0:
                    result.upgraded.append(change)
                elif order > 0:
                    result.downgraded.append(change)
                elif old.header_sha256 != new.header_sha256 or old.arch != new.arch:
                    result.rebuilt.append(change)
                else:
                    result.unchanged += 1
    return result


def diff(store: Store, a: Image, b: Image) -> ImageDiff:
    """What changes from image ``a`` to image ``b``."""
    return diff_packages([_info(store, p) for p in a.packages], [_info(store, p) for p in b.packages],
                         a.id, b.id)
