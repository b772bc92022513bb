"""Serving a compiled tree (:mod:`usrview.view.compiled`): the file mapped, each
node decoded when asked for, every attribute checked against the signed headers
before it is served (docs/trust-chain.md "The compiled tree").

:func:`open_view` is what a mount calls:

1. The image record's id is checked against its package list, the compiled
   file mapped, its magic, version and bounds checked, and its package table
   against the record (package ids in image order) and the store (each header
   file there, of the size the table says).  No header is read: a mount costs
   the same whatever the image's size.  A file that is missing or of another
   version is compiled again from the headers -- every signature checked first
   (:func:`usrview.view.loader.load_headers`) -- and written to the store (when
   it can be; else it is served from memory); one that does not match is
   reported (ERROR) and compiled again from the headers instead: nothing of it
   is served.
2. :class:`CompiledTree` serves the mapped file.  Before anything of package P
   is served (an attribute, a link target, a digest, its header file), P's
   header file is read, passes the trust gate (its signature checked,
   :func:`usrview.view.loader.check_header`), must be the one the package
   table names (SHA-256, size), and P's block is made again from it and
   compared byte for byte, once per mount.  The root's package is checked by
   :func:`open_view` itself: a header refused then refuses the mount.  Every
   record names its own path: an entry whose path is not its record's is
   refused.
3. What a per-package check cannot prove is *absence* (an entry left out of
   the entry table answers ENOENT) and what only the merged tree knows (link
   counts, an implicit directory's or a header file's mtime, which package owns a shared
   directory).  :func:`start_full_check` proves the whole file, and checks
   every header's signature, right after the mount: a child process compiles
   the image again from the headers and compares the bytes.  A mismatch, a
   header the trust gate refuses, or any failure of that check, makes every
   request answer EIO from then on, with an ERROR record.

Any inconsistency found while serving (a header refused, a block that does not
match, a record out of bounds, an entry naming another path) does the same: the tree is
*failed* and every request answers EIO.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import logging
import mmap
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from usrview import images
from usrview.errors import OperationalError
from usrview.journal import INTEGRITY_MESSAGE_ID
from usrview.store import Store
from usrview.store.store import HEADER_SUFFIX, HEADERS_DIR, PACKAGES_DIR, read_store_file
from usrview.view import compiled
from usrview.view.compiled import ENTRY, HEAD, KIND_HEADER, KIND_IMPLICIT, KIND_RECORD, PKG, CompiledTreeError
from usrview.view.fullcheck import difference, full_check, start_full_check  # noqa: F401 -- what a mount calls
from usrview.view.loader import (
    HeaderVerdict,
    check_header,
    load_headers,
    release_free_memory,
    unsigned_allowed,
)
from usrview.view.tree import (
    HEADER_FILE_MODE,
    IMPLICIT_DIR_MODE,
    ROOT_INODE,
    SHA256_ALGO,
    SYSIMAGE_DIR,
    Node,
    OwnerResolver,
    Tree,
    TreeError,
    node_of,
)
from verifier.errors import HeaderError
from verifier.fileio import OwnerIds
from verifier.headerfile import HEADER_FILE_MAX

log = logging.getLogger(__name__)

#: Nodes kept decoded (the kernel caches attributes; this spares re-decoding bursts).
NODE_CACHE = 2048
#: Directories whose view path is kept (a path is made from its parents' otherwise).
DIR_PATHS = 2048
#: Nodes decoded between two releases of the mapped file's pages from the daemon's
#: memory (they stay in the page cache: a later use maps them again, without I/O).
RELEASE_EVERY = 8192
#: Package checks between two returns of the C heap's free pages to the system.
TRIM_EVERY = 32
_DECODE_ERRORS = (struct.error, IndexError, ValueError, UnicodeError, CompiledTreeError)


class _Nodes:
    """``tree.nodes`` of a compiled tree: indexed by entry id, decoded on demand."""

    def __init__(self, tree: CompiledTree):
        self._tree = tree

    def __len__(self) -> int:
        return self._tree.entry_count + 1

    def __getitem__(self, inode: int) -> Node | None:
        return self._tree.node(inode)


class CompiledTree(Tree):
    """A view served from a compiled tree; the API of :class:`usrview.view.tree.Tree`.

    Attributes (besides Tree's): buf (the mapped file), entry_count, failed (why
    the tree refuses everything, or None), proven (the full check passed, or the
    bytes were compiled by this process), checked (per package: its header passed
    the trust gate and its block matched it), header_dir_fd (an O_PATH fd of the
    store's headers directory), legacy (packages found so far that only the legacy
    signature policy accepts), reporting (whether :meth:`fail` logs).
    """

    __slots__ = ("buf", "entry_count", "failed", "proven", "checked", "header_dir_fd", "reporting", "on_fail", "_pkg",
                 "_resolve", "_cache", "_dir_paths", "_entries_off", "_names_off", "_inodes", "_lock", "_nodes",
                 "_checks", "_trust", "legacy", "_decodes")

    def __init__(self, buf, pkgids: list[str], backing_dirs: list[Path | None], header_dir_fd: int, *,
                 owners: tuple[OwnerIds, OwnerIds] | None = None, proven: bool = False,
                 trust: Callable[[str, bytes], HeaderVerdict] | None = None):
        (_, _, npkgs, self.entry_count, self._inodes, total, self._entries_off, self._names_off,
         _, _) = HEAD.unpack_from(buf, 0)
        users, groups = owners or (OwnerIds.users(), OwnerIds.groups())
        # Tree's own attributes, but nodes (a property here)
        self.packages = [p.rsplit("-", 1)[0] for p in pkgids]
        self.pkgids, self.backing_dirs, self.total_size = pkgids, backing_dirs, total
        self.unknown_owners: frozenset[str] = frozenset()
        self.buf = buf
        self._pkg = [PKG.unpack_from(buf, HEAD.size + i * PKG.size) for i in range(npkgs)]
        self._resolve = OwnerResolver(users, groups)
        self.failed: str | None = None
        self.proven = proven
        self.checked = bytearray([1 if proven else 0] * npkgs)
        self.header_dir_fd = header_dir_fd
        self._cache: OrderedDict[int, Node] = OrderedDict()  # first in, first out
        self._dir_paths: dict[int, str] = {}  # directory's entry id -> its path, oldest first
        self._decodes = 0
        self._lock = threading.Lock()
        self._nodes = _Nodes(self)
        self._checks = 0
        # the trust gate a header passes before its package's first use (None: proven already)
        self._trust = trust
        self.legacy: list[str] = []  # packages only the legacy signature policy accepts, as found
        self.reporting = True  # fail() logs (open_view turns it off while it can still refuse the mount)
        #: Called (from the failing thread) once, when the tree is refused: what serves
        #: bytes without asking the tree (usrview.view.fs's READs answered in C) stops.
        self.on_fail: list[Callable[[], None]] = []

    @property
    def nodes(self):
        return self._nodes

    def close(self) -> None:
        """Unmap the file and close the headers' directory fd (the store can then be
        unmounted); the tree serves nothing after."""
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        if self.header_dir_fd >= 0:
            os.close(self.header_dir_fd)
            self.header_dir_fd = -1

    @property
    def inode_count(self) -> int:
        return self._inodes

    # -- failing -------------------------------------------------------------

    def fail(self, reason: str) -> None:
        """Refuse everything from now on (EIO), after an ERROR record saying why."""
        if self.failed is None:
            self.failed = reason
            for stop in self.on_fail:
                stop()
            if self.reporting:
                log.error("compiled tree refused, every request answers EIO: %s", reason,
                          extra={"MESSAGE_ID": INTEGRITY_MESSAGE_ID})
        self._cache.clear()

    def _refuse(self, reason: str):
        self.fail(reason)
        return OSError(errno.EIO, reason)

    # -- decoding ------------------------------------------------------------

    def _entry(self, eid: int) -> tuple:
        return ENTRY.unpack_from(self.buf, self._entries_off + (eid - 1) * ENTRY.size)

    def _name(self, e: tuple) -> str:
        at = self._names_off + e[2]
        return compiled._dec(self.buf[at:at + e[3]])

    def _path(self, eid: int, e: tuple) -> str:
        """Entry ``eid``'s view path, from its name and its parents' (directories' paths kept)."""
        paths = self._dir_paths
        path = "" if eid == ROOT_INODE else paths.get(eid)
        if path is not None:
            return path
        chain = [self._name(e)]
        while (path := "" if e[1] == ROOT_INODE else paths.get(e[1])) is None:
            e = self._entry(e[1])
            chain.append(self._name(e))
            if len(chain) > self.entry_count:
                raise CompiledTreeError("a cycle of parent directories")
        for name in reversed(chain):
            path = f"{path}/{name}" if path else name
        return path

    def _record(self, pkg: int, rec: int):
        _, block_off, block_len, _, _, _ = self._pkg[pkg]
        return compiled.read_record(self.buf, block_off, block_len, rec)

    def check_package(self, pkg: int) -> None:
        """Before package ``pkg``'s first use: its header file passes the trust gate
        (signature, import check, the header its id names), is the one the package
        table names (SHA-256, size), and makes the block the file holds (once; not at
        all once the full check proved the whole file and every header)."""
        if self.checked[pkg] or self.proven:
            return
        with self._lock:
            if self.checked[pkg] or self.proven:
                return
            digest, block_off, block_len, size, _, _ = self._pkg[pkg]
            pkgid = self.pkgids[pkg]
            try:
                # by name beneath the fd (after switch-root the initrd's daemon opens nothing by path)
                data = read_store_file(pkgid + HEADER_SUFFIX, HEADER_FILE_MAX, dir_fd=self.header_dir_fd)
            except OSError as e:
                raise self._refuse(f"header of {pkgid} cannot be read: {e.strerror}") from None
            verdict = self._trust(pkgid, data)
            if verdict.refusal is not None:
                raise self._refuse(f"header not trusted: {verdict.refusal}")
            if verdict.legacy:
                self.legacy.append(pkgid)
                if len(self.legacy) == 1:  # the full check names them all when it ends
                    log.warning("package %s is served under the legacy signature policy only (keys bound "
                                "by SHA-1)", pkgid)
            if len(data) != size or hashlib.sha256(data).digest() != digest:
                raise self._refuse(f"header of {pkgid} is not the one the compiled tree was made from")
            try:
                block = compiled.package_block(verdict.package)[0]
            except (TreeError, HeaderError) as e:  # signed, but not a view (compiling it fails alike)
                raise self._refuse(f"{pkgid}: {e}") from None
            if self.buf[block_off:block_off + block_len] != block:
                raise self._refuse(f"the block of {pkgid} does not match its signed header")
            self.checked[pkg] = 1
            self._checks += 1
            if self._checks % TRIM_EVERY == 0 or self._checks == len(self._pkg):
                # a header's file list is garbage once compared: give its pages back
                release_free_memory()

    def node(self, inode: int) -> Node | None:
        """The node with this inode number (None for none, and for the ids of a
        hardlink group's further names), checked; OSError(EIO) when refused."""
        if self.failed is not None:
            raise OSError(errno.EIO, self.failed)
        node = self._cache.get(inode)
        if node is not None:
            return node
        if not 0 < inode <= self.entry_count:
            return None
        try:
            e = self._entry(inode)
        except _DECODE_ERRORS as err:
            raise self._refuse(f"entry {inode}: {err}") from None
        return self._node_of_entry(inode, e) if e[0] == inode else None

    def _node_of_entry(self, eid: int, e: tuple) -> Node:
        try:
            node = self._decode(eid, e)
        except _DECODE_ERRORS as err:
            raise self._refuse(f"entry {eid}: {err}") from None
        cache = self._cache
        cache[eid] = node
        if len(cache) > NODE_CACHE:  # the oldest decoded goes
            cache.popitem(last=False)
        self._decodes += 1
        if self._decodes % RELEASE_EVERY == 0:
            self.release_pages()
        return node

    def release_pages(self) -> None:
        """Drop the mapped file's pages from this process's memory: the kernel keeps
        them in its page cache (clean, shared, reclaimable) and maps them again at
        the next use without reading the disk.  Without it a daemon that served a
        walk of everything keeps the whole file resident (about 170 bytes a path)
        though the kernel answers those requests from its own caches from then on."""
        if isinstance(self.buf, mmap.mmap) and not self.buf.closed:
            self.buf.madvise(mmap.MADV_DONTNEED)

    def _decode(self, eid: int, e: tuple) -> Node:
        inode, parent, _, _, kind, _, pkg, rec, first, count, nlink, mtime = e
        path = self._path(eid, e)
        if kind == KIND_RECORD:
            self.check_package(pkg)
            rel, entry, _ = self._record(pkg, rec)
            if rel != path:
                raise CompiledTreeError(f"/usr/{path} names the record of /usr/{rel} ({self.pkgids[pkg]})")
            node = node_of(entry, pkg, rel, self._resolve, self.packages[pkg])
            unknown = self._resolve.users.unknown | self._resolve.groups.unknown
            if len(unknown) != len(self.unknown_owners):
                # as the composed tree warns of them all at once, here as they come
                log.warning("owner names unknown to this system, shown as root (0) without "
                            "set-uid/set-gid: %s", ", ".join(sorted(unknown - self.unknown_owners)))
                self.unknown_owners = frozenset(unknown)
        elif kind == KIND_HEADER:
            self.check_package(pkg)
            digest, _, _, size, _, _ = self._pkg[pkg]
            name = self.pkgids[pkg] + HEADER_SUFFIX
            if path != f"{SYSIMAGE_DIR}/{name}":
                raise CompiledTreeError(f"/usr/{path} names the header file {name}")
            node = Node()
            node.mode, node.size, node.relpath = HEADER_FILE_MODE, size, name
            node.mtime = mtime  # its package's build time (checked with the whole file by the full check)
            node.backing, node.digest, node.algo = len(self._pkg), digest.hex(), SHA256_ALGO
        elif kind == KIND_IMPLICIT:
            node = Node()
            node.mode, node.mtime = IMPLICIT_DIR_MODE, mtime
        else:
            raise CompiledTreeError(f"kind {kind}")
        node.inode, node.nlink, node.path = inode, nlink, path
        if node.is_dir:
            if first + count - 1 > self.entry_count or (count and first <= eid):
                raise CompiledTreeError(f"/usr/{path}: children out of bounds")
            node.parent, node.ids = parent, range(first, first + count)
            paths = self._dir_paths
            paths[eid] = path
            if len(paths) > DIR_PATHS:  # the oldest goes
                paths.pop(next(iter(paths)), None)  # (another thread may have taken it)
        return node

    def _named(self, eid: int, directory: Node) -> tuple[str, Node]:
        """(name, node) of entry ``eid`` of ``directory``: refused unless the entry
        names that directory as its parent (whose path its record's must extend); a
        further name of a hardlink group is checked to be one (its own record: same
        package, same group)."""
        e = self._entry(eid)
        if e[1] != directory.inode:
            raise self._refuse(f"entry {eid} listed in /usr/{directory.path}, not its directory")
        name = self._name(e)
        if e[0] == eid:
            node = self._cache.get(eid)
            return name, node if node is not None else self._node_of_entry(eid, e)
        inode = e[0]
        try:
            target = self._entry(inode)
            if e[4] != KIND_RECORD or target[4] != KIND_RECORD or target[6] != e[6] or target[0] != inode:
                raise CompiledTreeError(f"entry {eid} is no hardlink of entry {inode}")
            self.check_package(e[6])
            rel, _, group = self._record(e[6], e[7])
            other = self._record(target[6], target[7])[2]
            if rel != self._path(eid, e) or not group or group != other:
                raise CompiledTreeError(f"/usr/{rel}: no hardlink of entry {inode}")
        except _DECODE_ERRORS as err:
            raise self._refuse(f"entry {eid}: {err}") from None
        return name, self.node(inode)

    # -- the Tree API --------------------------------------------------------

    def lookup(self, directory: Node, name: str) -> Node | None:
        if self.failed is not None:
            raise OSError(errno.EIO, self.failed)
        if name == ".":
            return directory
        if name == "..":
            return self.node(directory.parent)
        ids = directory.ids
        try:
            i = bisect.bisect_left(ids, name, key=lambda eid: self._name(self._entry(eid)))
            if i < len(ids) and self._name(self._entry(ids[i])) == name:
                return self._named(ids[i], directory)[1]
        except _DECODE_ERRORS as err:
            raise self._refuse(f"directory /usr/{directory.path}: {err}") from None
        return None

    def entries_after(self, directory: Node, entry_id: int):
        ids = directory.ids
        for eid in ids[bisect.bisect_right(ids, entry_id):]:
            if self.failed is not None:
                raise OSError(errno.EIO, self.failed)
            name, node = self._named(eid, directory)
            yield name, node, eid


# -- opening --------------------------------------------------------------------

def _layout_problem(buf) -> str | None:
    """What makes ``buf`` unreadable as a compiled tree of this version, or None."""
    if len(buf) < HEAD.size:
        return "truncated"
    magic, version, npkgs, nentries, _, _, entries_off, names_off, blocks_off, size = HEAD.unpack_from(buf, 0)
    if magic != compiled.MAGIC:
        return "not a compiled tree (bad magic)"
    if version != compiled.VERSION:
        return f"format version {version}, this usrview reads {compiled.VERSION}"
    if size != len(buf):
        return f"truncated or extended: {len(buf)} bytes, the file says {size}"
    if not (HEAD.size + npkgs * PKG.size == entries_off and entries_off + nentries * ENTRY.size == names_off
            <= blocks_off <= size) or nentries < 1:
        return "inconsistent offsets"
    return None


def _table_mismatch(buf, pkgids, header_size: Callable[[str], int], digests: dict[str, str] | None) -> str | None:
    """Why the mapped file does not fit the image's package list (``pkgids``) and its
    header files (``header_size``: a header file's size, OSError when it has none;
    ``digests``: their SHA-256 when already read), or None."""
    problem = _layout_problem(buf)
    if problem is not None:
        return problem
    head = HEAD.unpack_from(buf, 0)
    npkgs, names_off, blocks_off, size = head[2], head[7], head[8], head[9]
    if npkgs != len(pkgids):
        return f"{npkgs} packages, the image has {len(pkgids)}"
    at = blocks_off
    for i, expected in enumerate(pkgids):
        digest, block_off, block_len, hsize, p_at, p_len = PKG.unpack_from(buf, HEAD.size + i * PKG.size)
        start = names_off + p_at
        pkgid = os.fsdecode(buf[start:start + p_len]) if start + p_len <= blocks_off else ""
        if pkgid != expected:
            return f"package {i} is {pkgid!r}, the image's is {expected}"
        if digests is not None and digest.hex() != digests[pkgid]:
            return f"{pkgid}: header SHA-256 differs from the header file's"
        if block_off != at or block_off + block_len > size:
            return f"{pkgid}: block out of place"
        at += block_len
        try:
            if hsize != header_size(pkgid):
                return f"{pkgid}: header size differs"
        except OSError as e:
            return f"{pkgid}: header file: {e.strerror or e}"
    return None if at == size else "bytes after the last block"


def _map(path: Path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_size == 0:
            return b""
        return mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def open_view(store: Store, image, keyring, *, owners: tuple[OwnerIds, OwnerIds] | None = None,
              write: bool = True) -> CompiledTree:
    """The image's compiled tree, ready to serve (see the module docstring): its
    headers' signatures checked at their packages' first use, or all of them now
    when the tree must be compiled (OperationalError as :func:`load_headers`).
    ``write``: store a (re)compiled tree in the store (errors are logged)."""
    mismatch = images.id_mismatch(image)
    if mismatch:
        raise OperationalError(f"refusing to mount image {image.id}: its record was changed: {mismatch}")
    path = compiled.tree_path(store, image.id)
    header_dir = store.root / HEADERS_DIR
    header_dir_fd = os.open(header_dir, os.O_PATH | os.O_CLOEXEC)
    try:
        try:
            buf = _map(path)
            reason = _layout_problem(buf)
        except FileNotFoundError:
            buf, reason = None, "missing"
        except (OSError, ValueError) as e:
            buf, reason = None, f"cannot be read: {e}"
        if reason is None:
            reason = _table_mismatch(buf, image.packages, lambda pkgid: os.stat(
                pkgid + HEADER_SUFFIX, dir_fd=header_dir_fd, follow_symlinks=False).st_size, None)
        if reason is None:
            tree = _lazy_tree(store, image, keyring, buf, header_dir_fd, owners)
        else:
            tree = _compiled_now(store, image, keyring, path, reason, header_dir_fd, owners, write)
    except BaseException:
        os.close(header_dir_fd)
        raise
    return tree


def _lazy_tree(store: Store, image, keyring, buf, header_dir_fd: int,
               owners: tuple[OwnerIds, OwnerIds] | None) -> CompiledTree:
    """The mapped tree, each header checked at its package's first use (the root's now:
    a header it refuses refuses the mount)."""
    allowed = unsigned_allowed(store, image)
    if allowed:
        log.warning("image %s serves UNSIGNED packages (imported with --allow-unsigned): %s",
                    image.id, ", ".join(sorted(allowed)))
    # one listing of packages/, not a stat per package (a few hundredths of a second of
    # an emulated CPU before READY at boot); a symlink counts as what it points at
    try:
        with os.scandir(store.root / PACKAGES_DIR) as entries:
            present = {e.name for e in entries if e.is_dir()}
    except FileNotFoundError:
        present = set()
    backing: list[Path | None] = [store.package_dir(pkgid) if pkgid in present else None
                                  for pkgid in image.packages]
    missing = [p for p, d in zip(image.packages, backing) if d is None]
    if missing:
        log.warning("packages without files in the store (their files answer EIO): %s", ", ".join(missing))
    backing.append(store.root / HEADERS_DIR)

    def trust(pkgid: str, data: bytes) -> HeaderVerdict:
        return check_header(pkgid, data, keyring, pkgid in allowed)

    tree = CompiledTree(buf, list(image.packages), backing, header_dir_fd, owners=owners, trust=trust)
    if tree.entry_count:
        tree.reporting = False  # a refusal now refuses the mount, in one line
        try:
            tree.node(ROOT_INODE)  # its package (if any) checked before the kernel asks
        except OSError:
            reason = tree.failed
            tree.header_dir_fd = -1  # closed by the caller
            tree.close()
            raise OperationalError(f"refusing to mount image {image.id}: {reason}") from None
        tree.reporting = True
    return tree


def _compiled_now(store: Store, image, keyring, path: Path, reason: str, header_dir_fd: int,
                  owners: tuple[OwnerIds, OwnerIds] | None, write: bool) -> CompiledTree:
    """The tree compiled from the headers, every signature checked first: the
    stored file is ``reason`` (missing, another version, or not this image's)."""
    stale = reason == "missing" or reason.startswith("format version")
    (log.info if stale else log.error)("image %s: compiled tree %s: %s; compiling it from the headers",
                                       image.id, path, reason)
    t0 = time.monotonic()
    loaded = load_headers(store, image, keyring)
    buf = compiled.compile_loaded(loaded)
    log.info("image %s: compiled in %.2f s", image.id, time.monotonic() - t0)
    if write and stale:
        try:
            store.write_file(path, buf)
        except OSError as e:
            log.warning("image %s: compiled tree not stored: %s", image.id, e.strerror or e)
    backing: list[Path | None] = [s.package_dir for s in loaded.sources]
    backing.append(store.root / HEADERS_DIR)
    return CompiledTree(buf, list(image.packages), backing, header_dir_fd, owners=owners, proven=True)


def compiled_mismatch(store: Store, image, keyring) -> str | None:
    """``usrview verify``'s check of the image's compiled tree against its headers:
    why it does not match, or None -- also when the store has none, or one of
    another format version (the next mount compiles it), and when the headers
    themselves are refused (verify reports them as header findings)."""
    try:
        buf = _map(compiled.tree_path(store, image.id))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"cannot be read: {e}"
    try:
        loaded = load_headers(store, image, keyring)
    except OperationalError:
        return None
    reason = _table_mismatch(buf, image.packages, lambda pkgid: store.header_path(pkgid).stat().st_size,
                             loaded.header_digests)
    if reason is not None:
        return None if reason.startswith("format version") else reason
    return difference(compiled.compile_loaded(loaded), buf)
