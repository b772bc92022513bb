"""The view's model: one immutable tree composed from an image's verified headers.

:func:`build_tree` takes the image's packages (their parsed, signature-checked
headers, their store directories and their header files) and composes the
``/usr`` the view shows.  Nothing here touches FUSE or reads a package's files:
every attribute comes from the headers (``docs/view.md`` lists the rules).

- Only paths under ``/usr`` appear, with ``/usr`` stripped: the tree's root *is*
  ``/usr``.  Files elsewhere and ``%ghost`` entries are left out, but a ``%ghost``
  symlink with a target (an ``alternatives`` name, docs/images.md) is shown.
- A path shipped by several packages must agree by the one conflict rule
  (:mod:`usrview.images.conflicts`, rpm's: type, mode but between symlinks,
  owner, group, digest, link target, device number; capabilities) or
  :class:`TreeConflict` names both packages.  Directories that agree merge (the
  first package in image order gives a directory its mtime).
- Directories that no package owns appear 0755 root:root with the newest mtime
  of their children (0 when empty).
- ``lib/sysimage/packages/PKGID.rpm`` are the image's header files: regular
  files, 0644 root:root, backed by the store's ``headers/`` directory.
- Hardlinks: one inode per hardlink group (:meth:`verifier.header.Package.hardlink_groups`),
  with the group's size as link count.
- Inode numbers and directory entry ids are assigned by a depth-first walk in
  name order, so the same image always gets the same numbers; the root is
  ``pyfuse3.ROOT_INODE`` (1).  An entry id identifies a name in a directory
  (the readdir cookie); it equals the inode number except for the second and
  further names of a hardlink group.
- Owner names resolve through the host's user database (pwd/grp) once each.
  A name that does not resolve becomes 0, as ``rpm -i`` does, and loses its
  set-uid/set-gid bit (a setuid file meant for an unknown user must not become
  setuid root); all such names are logged in one warning.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from usrview.errors import UsrviewError
from usrview.images.conflicts import Shipped, describe, differences
from verifier.filecaps import parse_text
from verifier.filecheck import expected_ids_and_mode
from verifier.fileio import OwnerIds
from verifier.files import FileEntry, FileFlag, digest_name
from verifier.header import Package
from verifier.tags import Tag

log = logging.getLogger(__name__)

#: pyfuse3.ROOT_INODE, without importing pyfuse3 into the model.
ROOT_INODE = 1
#: Where the image's header files appear, relative to the view's root (/usr).
SYSIMAGE_DIR = "lib/sysimage/packages"
#: Mode of the header files there.
HEADER_FILE_MODE = stat.S_IFREG | 0o644
#: Mode of a directory no package owns.
IMPLICIT_DIR_MODE = stat.S_IFDIR | 0o755
#: OpenPGP id of SHA-256, the digest recorded for header files.
SHA256_ALGO = 8
#: The prefix every shown path has in the headers.
USR = "/usr"
#: A package's file's path relative to its package directory, before the view path.
_USR_PREFIX = "usr/"
#: Marks a node that belongs to no package (implicit directories, header files).
NO_PACKAGE = -1
_GHOST = int(FileFlag.GHOST)
_S_IFMT, _S_IFREG, _S_IFLNK, _S_IFDIR = 0o170000, stat.S_IFREG, stat.S_IFLNK, stat.S_IFDIR
#: Path components a header may not use.
_UNSAFE_NAMES = frozenset({"", ".", ".."})


class TreeError(UsrviewError):
    """The image cannot be composed into a view."""


class TreeConflict(TreeError):
    """Two packages ship one path differently."""


@dataclass(frozen=True)
class PackageSource:
    """One package of the image, as the tree builder needs it.

    Attributes:
        pkgid: the store's package id (``NEVRA-H``).
        package: the parsed main header (its signature already checked).
        package_dir: the package's directory in the store (its files at their
            install paths), or None when its bytes are not available.
        header_path: the header-only rpm, shown in ``lib/sysimage/packages``.
    """

    pkgid: str
    package: Package
    package_dir: Path | None
    header_path: Path


class Node:
    """One inode of the view.

    Attributes:
        inode: the inode number.
        mode: full st_mode (type and permission bits).
        uid, gid: resolved owner ids.
        size: st_size (file bytes, link target length, 0 for directories).
        mtime: seconds since the epoch.
        nlink: link count.
        rdev: device number of a device node.
        pkg: index into ``Tree.packages`` of the owning package, or NO_PACKAGE.
        backing: index into ``Tree.backing_dirs`` of the directory holding the
            bytes (regular files only), or -1.
        relpath: the bytes' path relative to that directory ("usr/bin/ls"),
            or the symlink target for a symlink, or "" otherwise.
        digest, algo: expected hex digest and its OpenPGP hash id ("" / 0: none).
        caps: ``security.capability`` value, or None.
        parent: parent directory's inode (directories only; the root's is itself).
        names, ids: a directory's entries: sorted names and, in parallel, entry
            ids; ``children`` the entries' inodes.  None for non-directories.
        path: the view path ("bin/ls"; "" for the root), for messages.
    """

    __slots__ = ("inode", "mode", "uid", "gid", "size", "mtime", "nlink", "rdev", "pkg", "backing",
                 "relpath", "digest", "algo", "caps", "parent", "names", "ids", "children", "_path")

    def __init__(self):
        self.inode = 0
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.size = 0
        self.mtime = 0
        self.nlink = 1
        self.rdev = 0
        self.pkg = NO_PACKAGE
        self.backing = -1
        self.relpath = ""
        self.digest = ""
        self.algo = 0
        self.caps = None
        self.parent = 0
        self.names = None
        self.ids = None
        self.children = None
        self._path = ""

    @property
    def path(self) -> str:
        # A package's regular file has its view path in its relpath already
        # ("usr/" + path): None here stands for that, one string less per file.
        path = self._path
        return self.relpath[len(_USR_PREFIX):] if path is None else path

    @path.setter
    def path(self, value: str) -> None:
        self._path = value

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def __repr__(self) -> str:
        return f"<Node {self.inode} {self.path!r} {stat.filemode(self.mode)}>"


class Tree:
    """The composed view: immutable once built.

    Attributes:
        nodes: inode number -> Node (index 0 is None).
        packages: NEVRAs, indexed by ``Node.pkg``.
        pkgids: the store ids, parallel to ``packages``.
        backing_dirs: directories holding bytes, indexed by ``Node.backing``
            (None: a package whose bytes are absent).
        total_size: bytes of all regular files (each inode once).
        unknown_owners: names that did not resolve (mapped to 0).
    """

    __slots__ = ("nodes", "packages", "pkgids", "backing_dirs", "total_size", "unknown_owners")

    def __init__(self, nodes, packages, pkgids, backing_dirs, total_size, unknown_owners):
        self.nodes: list[Node | None] = nodes
        self.packages: list[str] = packages
        self.pkgids: list[str] = pkgids
        self.backing_dirs: list[Path | None] = backing_dirs
        self.total_size: int = total_size
        self.unknown_owners: frozenset[str] = unknown_owners

    @property
    def root(self) -> Node:
        return self.nodes[ROOT_INODE]

    @property
    def inode_count(self) -> int:
        """How many inodes the view has (names of one hardlink group count once)."""
        return sum(1 for n in self.nodes if n is not None)

    def close(self) -> None:
        """Release what the tree holds of the store (nothing, built in memory)."""

    def node(self, inode: int) -> Node | None:
        """The node with this inode number, or None."""
        if 0 < inode < len(self.nodes):
            return self.nodes[inode]
        return None

    def lookup(self, directory: Node, name: str) -> Node | None:
        """The entry ``name`` of ``directory`` ("." and ".." included), or None."""
        if name == ".":
            return directory
        if name == "..":
            return self.nodes[directory.parent]
        names = directory.names
        i = bisect.bisect_left(names, name)
        if i < len(names) and names[i] == name:
            return self.nodes[directory.children[i]]
        return None

    def entries_after(self, directory: Node, entry_id: int):
        """(name, node, entry id) of ``directory``'s entries whose id is greater
        than ``entry_id`` (0: all), in name order: ids increase with names."""
        ids = directory.ids
        for i in range(bisect.bisect_right(ids, entry_id), len(ids)):
            yield directory.names[i], self.nodes[directory.children[i]], ids[i]

    def resolve(self, path: str) -> Node | None:
        """The node at a view path ("bin/ls", "" or "/" for the root), without
        following symlinks; for tests and tools."""
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not node.is_dir:
                return None
            node = self.lookup(node, part)
            if node is None:
                return None
        return node

    def package_of(self, node: Node) -> str | None:
        return self.packages[node.pkg] if node.pkg != NO_PACKAGE else None

    def walk(self):
        """(view path, node) for every name, depth first in name order."""
        stack = [("", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.is_dir:
                for name, child, _ in reversed(list(self.entries_after(node, 0))):
                    stack.append((f"{path}/{name}" if path else name, child))


# -- building ------------------------------------------------------------------

class _Draft:
    """A path while the tree is being composed (the builder's scratch record)."""

    __slots__ = ("node", "entry", "owner", "children", "group", "creator")

    def __init__(self, node: Node, entry: Shipped | None, owner: int, is_dir: bool,
                 creator: int = NO_PACKAGE):
        self.node = node
        self.creator = creator      # the package whose file made an implicit directory
        self.entry = entry          # what the first package ships (None: implicit/synthetic)
        self.owner = owner          # package index of that entry
        self.children: dict[str, _Draft] | None = {} if is_dir else None
        self.group = None           # (package index, hardlink group) for grouped files


def _add_usr(root: _Draft, entry: FileEntry, pkg_index: int, packages, make_node) -> None:
    """A package's entry for /usr itself: the first one owns the root, the others must agree."""
    if not stat.S_ISDIR(entry.mode):
        raise TreeConflict(f"{packages[pkg_index]} ships {USR} as a non-directory")
    if root.entry is None:
        _own_dir(root, make_node(entry, pkg_index, ""), entry, pkg_index)
    else:
        _check_shared(root, entry, pkg_index, packages)


def _check_shared(existing: _Draft, entry: FileEntry, pkg_index: int, packages) -> None:
    """A second package's entry for a path a package owns: TreeConflict unless
    the conflict rule lets them share it (:mod:`usrview.images.conflicts`)."""
    found = differences(existing.entry, entry)
    if found:
        raise TreeConflict(f"{entry.path}: packages {packages[existing.owner]} and "
                           f"{packages[pkg_index]} ship it differently ({describe(found)})")


def _check_components(rel: str, pkg: str, path: str) -> list[str]:
    parts = rel.split("/") if rel else []
    for part in parts:
        if part in ("", ".", "..") or "\0" in part:
            raise TreeError(f"{pkg}: unsafe file path {path!r} in the header")
    return parts


class OwnerResolver:
    """(user, group, mode) -> (uid, gid, mode) of an entry, resolved in (users, groups)
    tables: a handful of combinations cover an image, each is resolved once."""

    def __init__(self, users: OwnerIds, groups: OwnerIds):
        self.users, self.groups = users, groups
        self._ids: dict[tuple[str, str, int], tuple[int, int, int]] = {}

    def __call__(self, entry: FileEntry) -> tuple[int, int, int]:
        key = (entry.user, entry.group, entry.mode)
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = expected_ids_and_mode(entry, self.users, self.groups)
        return ids


def node_of(entry: FileEntry, pkg_index: int, rel: str, resolve: OwnerResolver, nevra: str) -> Node:
    """The node of a package's entry (``rel``: its path below /usr), every
    attribute taken from the entry; ``nevra`` names the package in errors."""
    node = Node()
    node.uid, node.gid, mode = resolve(entry)
    node.mode = mode
    node.mtime = entry.mtime
    node.pkg = pkg_index
    node.rdev = entry.rdev
    fmt = mode & _S_IFMT
    if fmt == _S_IFREG:
        node.size = entry.size
        node.backing = pkg_index
        node.relpath = "usr/" + rel
        digest = entry.digest
        # file_entries lowercases digests already: share that string.
        node.digest = digest if digest.islower() or not digest else digest.lower()
        node.algo = entry.digest_algo
    elif fmt == _S_IFLNK:
        node.relpath = entry.linkto
        node.size = len(os.fsencode(entry.linkto))
    if entry.caps:
        caps = parse_text(entry.caps)
        if caps is None:
            raise TreeError(f"{nevra}: {entry.path}: capabilities {entry.caps!r} cannot be parsed")
        node.caps = caps.to_xattr()
    return node


def view_entries(package: Package):
    """(path relative to /usr, entry, hardlink group or None) of each of ``package``'s
    entries the view shows, in header order: "" is /usr itself.  Files elsewhere and
    %ghost entries (but a %ghost symlink with a target) are left out."""
    prefix = USR + "/"
    # Not package.files: that caches the list in the package, and the
    # list is not needed once this package is composed.
    files = package.read_files()
    groups_of = package.hardlink_groups(files)
    for i, entry in enumerate(files):
        path = entry.path
        if not path.startswith(prefix):
            if path == USR and not int(entry.flags) & _GHOST:
                yield "", entry, None
            continue
        if int(entry.flags) & _GHOST and not entry.is_ghost_symlink:
            continue
        yield path[len(prefix):].rstrip("/"), entry, groups_of.get(i) if groups_of else None


def build_tree(sources: Sequence[PackageSource] | Iterable[PackageSource], *,
               header_digests: dict[str, str] | None = None,
               owners: tuple[OwnerIds, OwnerIds] | None = None) -> Tree:
    """Compose the view of an image (packages in image order; the first to ship a
    path gives it its mtime).  ``header_digests`` maps a pkgid to the SHA-256 of
    its header file when the caller already has it; otherwise the file is hashed.
    ``owners``: the (users, groups) tables owner names resolve in; this system's
    databases by default.

    Raises TreeConflict or TreeError.
    """
    sources = list(sources)
    users, groups = owners or (OwnerIds.users(), OwnerIds.groups())
    packages = [sys.intern(s.package.nevra) for s in sources]
    pkgids = [s.pkgid for s in sources]
    backing_dirs: list[Path | None] = [s.package_dir for s in sources]
    seen_ids: dict[str, int] = {}
    for i, s in enumerate(sources):
        if s.pkgid in seen_ids:
            raise TreeError(f"package {s.pkgid} is listed twice in the image")
        seen_ids[s.pkgid] = i

    root_node = Node()
    root_node.mode = IMPLICIT_DIR_MODE
    root = _Draft(root_node, None, NO_PACKAGE, True)
    # View path of a directory -> its draft.  A draft that is a directory
    # stays one (nothing replaces a draft, and a package's directory entry only
    # takes an implicit directory over), so a path found here needs none of
    # dir_for's checks again: most files share their parent with the previous one.
    dirs: dict[str, _Draft] = {"": root}

    def dir_for(parts: list[str], pkg_index: int, path: str) -> _Draft:
        draft = root
        for depth, part in enumerate(parts):
            child = draft.children.get(part)
            if child is None:
                node = Node()
                node.mode = IMPLICIT_DIR_MODE
                child = _Draft(node, None, NO_PACKAGE, True, pkg_index)
                draft.children[sys.intern(part)] = child
            elif child.children is None:
                other = packages[child.owner] if child.owner != NO_PACKAGE else "usrview"
                raise TreeConflict(f"{USR}/{'/'.join(parts[:depth + 1])} is a directory in "
                                   f"{packages[pkg_index] if pkg_index >= 0 else 'usrview'} "
                                   f"(holding {path}) but not in {other}")
            draft = child
        return draft

    resolve = OwnerResolver(users, groups)

    def make_node(entry: FileEntry, pkg_index: int, rel: str) -> Node:
        return node_of(entry, pkg_index, rel, resolve, packages[pkg_index])

    def add(rel: str, entry: FileEntry, pkg_index: int, group=None) -> None:
        dirpath, _, name = rel.rpartition("/")
        if name in _UNSAFE_NAMES or "\0" in name:
            raise TreeError(f"{packages[pkg_index]}: unsafe file path {entry.path!r} in the header")
        parent = dirs.get(dirpath)
        if parent is None:
            parent = dirs[dirpath] = dir_for(_check_components(dirpath, packages[pkg_index], entry.path),
                                             pkg_index, entry.path)
        existing = parent.children.get(name)
        if existing is None:
            node = make_node(entry, pkg_index, rel)
            draft = _Draft(node, Shipped.of(entry), pkg_index, entry.mode & _S_IFMT == _S_IFDIR)
            draft.group = group
            parent.children[sys.intern(name)] = draft
            return
        if existing.entry is None:
            # An implicit directory (created as a parent) or a synthetic entry.
            if stat.S_ISDIR(entry.mode) and existing.node.is_dir and existing.owner == NO_PACKAGE:
                _own_dir(existing, make_node(entry, pkg_index, rel), entry, pkg_index)
                return
            first = "usrview" if existing.owner == NO_PACKAGE else packages[existing.owner]
            if existing.node.is_dir and existing.creator != NO_PACKAGE:
                first = f"{packages[existing.creator]} (which puts files below it)"
            raise TreeConflict(f"{entry.path}: {packages[pkg_index]} ships it as "
                               f"{stat.filemode(entry.mode)} but it is a directory of {first}")
        _check_shared(existing, entry, pkg_index, packages)

    for pkg_index, source in enumerate(sources):
        for rel, entry, group in view_entries(source.package):
            if not rel:  # /usr itself
                _add_usr(root, entry, pkg_index, packages, make_node)
            else:
                add(rel, entry, pkg_index, (pkg_index, group) if group else None)

    # The image's header files.
    headers_dir_index = None
    header_digests = header_digests or {}
    sysimage_parts = SYSIMAGE_DIR.split("/")
    for pkg_index, source in enumerate(sources):
        hp = source.header_path
        st = os.stat(hp)
        if headers_dir_index is None or backing_dirs[headers_dir_index] != hp.parent:
            if hp.parent in backing_dirs[len(sources):]:
                headers_dir_index = backing_dirs.index(hp.parent, len(sources))
            else:
                backing_dirs.append(hp.parent)
                headers_dir_index = len(backing_dirs) - 1
        digest = header_digests.get(source.pkgid)
        if digest is None:
            with open(hp, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        node = Node()
        node.mode = HEADER_FILE_MODE
        node.size = st.st_size
        # the build time its signed header names, not the store file's (written at
        # import): the same headers make the same tree in any store
        node.mtime = source.package.header.int(Tag.BUILDTIME) or 0
        node.backing = headers_dir_index
        node.relpath = hp.name
        node.digest = digest
        node.algo = SHA256_ALGO
        parent = dirs.get(SYSIMAGE_DIR)
        if parent is None:
            parent = dirs[SYSIMAGE_DIR] = dir_for(sysimage_parts, NO_PACKAGE,
                                                  f"{USR}/{SYSIMAGE_DIR}/{source.pkgid}.rpm")
        name = f"{source.pkgid}.rpm"
        if name in parent.children:
            raise TreeConflict(f"{USR}/{SYSIMAGE_DIR}/{name} is shipped by "
                               f"{packages[parent.children[name].owner]}, but the view shows "
                               "the image's header files there")
        parent.children[name] = _Draft(node, None, NO_PACKAGE, False)

    return _number(root, packages, pkgids, backing_dirs, users, groups)


def _own_dir(draft: _Draft, node: Node, entry: FileEntry, pkg_index: int) -> None:
    draft.node.mode, draft.node.uid, draft.node.gid = node.mode, node.uid, node.gid
    draft.node.mtime, draft.node.pkg, draft.node.caps = node.mtime, node.pkg, node.caps
    draft.entry, draft.owner = Shipped.of(entry), pkg_index


def _number(root: _Draft, packages, pkgids, backing_dirs, users: OwnerIds, groups: OwnerIds) -> Tree:
    """Assign inode numbers and entry ids depth first in name order; finish the nodes."""
    nodes: list[Node | None] = [None]
    group_inodes: dict[tuple, Node] = {}
    total = 0
    counter = ROOT_INODE
    root.node.inode = ROOT_INODE
    root.node.parent = ROOT_INODE
    nodes.append(root.node)
    # Iterative DFS: (draft, path); a directory's entries get ids as it is
    # expanded, in name order, and the subtrees are numbered before the next
    # sibling, so ids rise with names within every directory.
    order: list[_Draft] = []

    def visit(draft: _Draft, path: str) -> None:
        nonlocal counter, total
        stack = [(draft, path)]
        while stack:
            d, p = stack.pop()
            order.append(d)
            node = d.node
            node.path = p
            if d.children is None:
                continue
            names = sorted(d.children)
            node.names = names
            node.ids = []
            node.children = []
            pending = []
            for name in names:
                child = d.children[name]
                counter += 1
                entry_id = counter
                cnode = child.node
                if child.group is not None:
                    shared = group_inodes.get(child.group)
                    if shared is None:
                        cnode.inode = entry_id
                        cnode.nlink = 1
                        group_inodes[child.group] = cnode
                        nodes.append(cnode)
                        total += cnode.size
                    else:
                        # Another name of the group: it is the same inode.
                        nodes.append(None)
                        cnode = shared
                        cnode.nlink += 1
                else:
                    cnode.inode = entry_id
                    nodes.append(cnode)
                    if cnode.mode & _S_IFMT == _S_IFREG:
                        total += cnode.size
                if child.children is not None:
                    cnode.parent = node.inode
                node.ids.append(entry_id)
                node.children.append(cnode.inode)
                cpath = f"{p}/{name}" if p else name
                if child.children is not None:
                    pending.append((child, cpath))
                elif cnode is child.node:
                    if (cnode.pkg != NO_PACKAGE and cnode.mode & _S_IFMT == _S_IFREG
                            and cnode.relpath == _USR_PREFIX + cpath):
                        cnode._path = None
                    else:
                        cnode._path = cpath
            # Depth first: numbering of the subdirectories happens after all of
            # this directory's entries have their ids (ids stay increasing in
            # name order within the directory, which is all readdir needs).
            stack.extend(reversed(pending))

    visit(root, "")
    # nodes is indexed by entry id; ids of extra hardlink names hold None.
    # Implicit directories: newest child mtime; link counts of directories.
    for d in reversed(order):
        node = d.node
        if d.children is None:
            continue
        subdirs = 0
        newest = 0
        for child_inode in node.children:
            child = nodes[child_inode]
            if child.names is not None:
                subdirs += 1
            newest = max(newest, child.mtime)
        node.nlink = 2 + subdirs
        if d.entry is None:
            node.mtime = newest
    unknown = frozenset(users.unknown | groups.unknown)
    if unknown:
        log.warning("owner names unknown to this system, shown as root (0) without "
                    "set-uid/set-gid: %s", ", ".join(sorted(unknown)))
    return Tree(nodes, packages, pkgids, backing_dirs, total, unknown)


def digest_label(node: Node) -> str:
    """"algo:hex" for ``user.rpm.digest``, "" when the node has no digest."""
    if not node.digest:
        return ""
    return f"{digest_name(node.algo) or node.algo}:{node.digest}"
