"""Serving a compiled tree (:mod:`usrview.view.compiled`): the file mapped, each
node decoded when asked for, every attribute checked against the signed headers
before it is served (docs/trust-chain.md "The compiled tree").

:func:`open_view` is what a mount calls:

1. Every header of the image is read and its signature checked
   (:func:`usrview.view.loader.load_headers`: a header that is not trusted
   refuses the mount, as ever); file lists are not parsed.
2. The compiled file is mapped; its magic, version and bounds, and its package
   table (package ids in image order, each header file's SHA-256 and size)
   are checked against the image and the headers just checked.  A file that is
   missing or of another version is compiled again from those headers and
   written to the store (when it can be; else it is served from memory); one
   that does not match is reported (ERROR) and the tree is composed from the
   headers instead: nothing of it is served.
3. :class:`CompiledTree` serves the mapped file.  Before anything of package P
   is served (an attribute, a link target, a digest, its header file), P's
   block is made again from P's header -- read again, its SHA-256 compared with
   the one whose signature was checked -- and compared byte for byte, once per
   mount.  Every record names its own path: an entry whose path is not its
   record's is refused.
4. What a per-package check cannot prove is *absence* (an entry left out of
   the entry table answers ENOENT) and what only the merged tree knows (link
   counts, an implicit directory's mtime, which package owns a shared
   directory).  :func:`start_full_check` proves the whole file right after the
   mount: a child process compiles the image again from the headers and
   compares the bytes.  A mismatch, or any failure of that check, makes every
   request answer EIO from then on, with an ERROR record.

Any inconsistency found while serving (a block that does not match, a record
out of bounds, an entry naming another path) does the same: the tree is
*failed* and every request answers EIO.
"""

from __future__ import annotations

import bisect
import contextlib
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

from usrview.errors import OperationalError
from usrview.journal import INTEGRITY_MESSAGE_ID
from usrview.store import Store
from usrview.store.store import HEADER_SUFFIX, HEADERS_DIR, read_store_file
from usrview.view import compiled
from usrview.view.compiled import ENTRY, HEAD, KIND_HEADER, KIND_IMPLICIT, KIND_RECORD, PKG, CompiledTreeError
from usrview.view.loader import LoadedImage, load_headers, release_free_memory
from usrview.view.tree import (
    HEADER_FILE_MODE,
    IMPLICIT_DIR_MODE,
    ROOT_INODE,
    SHA256_ALGO,
    SYSIMAGE_DIR,
    Node,
    OwnerResolver,
    Tree,
    node_of,
)
from verifier.fileio import OwnerIds
from verifier.header import read_package
from verifier.headerfile import HEADER_FILE_MAX

log = logging.getLogger(__name__)

#: Nodes kept decoded (the kernel caches attributes; this spares re-decoding bursts).
NODE_CACHE = 4096
#: Package checks between two returns of the C heap's free pages to the system.
TRIM_EVERY = 32
#: Niceness of the full check's process (absolute, not added to the daemon's own:
#: the initrd's daemon serves at -10): serving comes first.
CHECK_NICENESS = 10
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
    bytes were compiled by this process), checked (per package: its block matched
    its header), header_dir_fd (an O_PATH fd of the store's headers directory).
    """

    __slots__ = ("buf", "entry_count", "failed", "proven", "checked", "header_dir_fd", "_pkg", "_resolve",
                 "_cache", "_dir_paths", "_entries_off", "_names_off", "_inodes", "_lock", "_nodes", "_checks")

    def __init__(self, buf, pkgids: list[str], backing_dirs: list[Path | None], header_dir_fd: int, *,
                 owners: tuple[OwnerIds, OwnerIds] | None = None, proven: bool = False):
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
        self._dir_paths: dict[int, str] = {ROOT_INODE: ""}
        self._lock = threading.Lock()
        self._nodes = _Nodes(self)
        self._checks = 0

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
        path = self._dir_paths.get(eid)
        if path is not None:
            return path
        chain = [self._name(e)]
        while (path := self._dir_paths.get(e[1])) is None:
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
        """Make package ``pkg``'s block again from its header and compare (once; not
        at all once the full check proved the whole file)."""
        if self.checked[pkg] or self.proven:
            return
        with self._lock:
            if self.checked[pkg]:
                return
            digest, block_off, block_len, _, _, _ = self._pkg[pkg]
            pkgid = self.pkgids[pkg]
            try:
                # by name beneath the fd (after switch-root the initrd's daemon opens nothing by path)
                data = read_store_file(pkgid + HEADER_SUFFIX, HEADER_FILE_MAX, dir_fd=self.header_dir_fd)
            except OSError as e:
                raise self._refuse(f"header of {pkgid} cannot be read: {e.strerror}") from None
            if hashlib.sha256(data).digest() != digest:
                raise self._refuse(f"header of {pkgid} changed since its signature was checked")
            block = compiled.package_block(read_package(data, strict=False))[0]
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
        return node

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
            node.mtime = int(os.stat(name, dir_fd=self.header_dir_fd, follow_symlinks=False).st_mtime)
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
            self._dir_paths[eid] = path
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


def _table_mismatch(buf, loaded: LoadedImage) -> str | None:
    """Why the mapped file does not fit the image and its checked headers, or None."""
    problem = _layout_problem(buf)
    if problem is not None:
        return problem
    head = HEAD.unpack_from(buf, 0)
    npkgs, names_off, blocks_off, size = head[2], head[7], head[8], head[9]
    if npkgs != len(loaded.sources):
        return f"{npkgs} packages, the image has {len(loaded.sources)}"
    at = blocks_off
    for i, source in enumerate(loaded.sources):
        digest, block_off, block_len, hsize, p_at, p_len = PKG.unpack_from(buf, HEAD.size + i * PKG.size)
        start = names_off + p_at
        pkgid = os.fsdecode(buf[start:start + p_len]) if start + p_len <= blocks_off else ""
        if pkgid != source.pkgid:
            return f"package {i} is {pkgid!r}, the image's is {source.pkgid}"
        if digest.hex() != loaded.header_digests[source.pkgid]:
            return f"{pkgid}: header SHA-256 differs from the header file's"
        if block_off != at or block_off + block_len > size:
            return f"{pkgid}: block out of place"
        at += block_len
        if hsize != source.header_path.stat().st_size:
            return f"{pkgid}: header size differs"
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
    """The image's compiled tree, ready to serve (see the module docstring); the
    headers' signatures checked first (OperationalError as :func:`load_headers`).
    ``write``: store a (re)compiled tree in the store (errors are logged)."""
    path = compiled.tree_path(store, image.id)
    try:
        buf = _map(path)
        reason = _layout_problem(buf)
    except FileNotFoundError:
        buf, reason = None, "missing"
    except (OSError, ValueError) as e:
        buf, reason = None, f"cannot be read: {e}"
    # The parsed headers are kept only when the tree is to be compiled from them
    # (a mapped tree needs none: each is dropped once checked, the heap stays small).
    loaded = load_headers(store, image, keyring, keep_packages=reason is not None, jobs=os.cpu_count() or 1)
    if reason is None:
        reason = _table_mismatch(buf, loaded)
    proven = False
    if reason is not None:
        stale = reason == "missing" or reason.startswith("format version")
        (log.info if stale else log.error)("image %s: compiled tree %s: %s; compiling it from the headers",
                                           image.id, path, reason)
        t0 = time.monotonic()
        if loaded.sources and loaded.sources[0].package is None:  # found only now: read them again
            loaded = load_headers(store, image, keyring)
        buf, proven = compiled.compile_loaded(loaded), True
        log.info("image %s: compiled in %.2f s", image.id, time.monotonic() - t0)
        if write and stale:
            try:
                store.write_file(path, buf)
            except OSError as e:
                log.warning("image %s: compiled tree not stored: %s", image.id, e.strerror or e)
    backing: list[Path | None] = [s.package_dir for s in loaded.sources]
    backing.append(store.root / HEADERS_DIR)
    header_dir = store.root / HEADERS_DIR
    tree = CompiledTree(buf, list(image.packages), backing, os.open(header_dir, os.O_PATH | os.O_CLOEXEC),
                        owners=owners, proven=proven)
    if tree.entry_count and not proven:
        tree.node(ROOT_INODE)  # its package (if any) checked before the kernel asks
    return tree


def full_check(store: Store, image, keyring, buf) -> str | None:
    """Compile ``image`` again from its headers and compare with ``buf``: None when
    equal, else where they differ (the check a mount starts)."""
    try:
        return difference(compiled.compile_loaded(load_headers(store, image, keyring)), buf)
    except OperationalError as e:
        return str(e)


def difference(data: bytes, buf) -> str | None:
    """Where ``buf`` differs from ``data``, what the headers compile to; None when equal."""
    with memoryview(buf) as view:
        if view == data:
            return None
    if len(data) != len(buf):
        return f"{len(buf)} bytes, the headers compile to {len(data)}"
    at = next(i for i in range(len(data)) if data[i] != buf[i])
    return f"differs from what the headers compile to at byte {at} ({part_at(data, at)})"


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
    reason = _table_mismatch(buf, loaded)
    if reason is not None:
        return None if reason.startswith("format version") else reason
    return difference(compiled.compile_loaded(loaded), buf)


def part_at(data: bytes, at: int) -> str:
    """Which part of a compiled tree (as the headers compile it) holds byte ``at``."""
    _, _, npkgs, _, _, _, entries_off, names_off, blocks_off, _ = HEAD.unpack_from(data, 0)
    if at < HEAD.size:
        return "file head"
    if at < entries_off:
        return f"package table, package {(at - HEAD.size) // PKG.size}"
    if at < names_off:
        return f"entry {(at - entries_off) // ENTRY.size + 1}"
    if at < blocks_off:
        return "names"
    for i in range(npkgs):
        _, block_off, block_len, _, _, _ = PKG.unpack_from(data, HEAD.size + i * PKG.size)
        if block_off <= at < block_off + block_len:
            return f"block of package {i}"
    return "end"


def start_full_check(tree: CompiledTree, store: Store, image, keyring, *, confined: bool = False,
                     on_failure: Callable[[str], None] | None = None,
                     nice: int = CHECK_NICENESS,
                     on_proven: Callable[[str], None] | None = None) -> threading.Thread | None:
    """Start the full check of ``tree`` in a child process (forked: call it before
    any thread or the FUSE session starts); a thread waits for its verdict and
    fails the tree on a mismatch, then calls ``on_failure`` with why.  None when
    the tree needs no check.

    ``confined`` (the initrd's daemon, whose paths lead nowhere after switch-root):
    the child changes its root to the store's directory, through a directory fd
    opened here, before it reads anything, so that it reads the store by paths
    within that fd whenever it runs; its modules are imported already (the
    mount checked the headers' signatures with them).

    ``nice``: the child's niceness, absolute (never below the daemon's own: a
    daemon serving at a raised priority does not hand it to the check).
    ``on_proven`` is called with a line saying how long the check took when it passed."""
    if tree.proven:
        return None
    root_fd = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if confined else None
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: check, answer, exit without running the parent's cleanups
        status = 0
        try:
            os.close(r)
            with contextlib.suppress(OSError):  # not allowed: checked at the daemon's priority
                os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
            if root_fd is not None:
                os.fchdir(root_fd)
                os.chroot(".")
                store = Store(Path("/"))
            # the mount logged the headers' warnings (unsigned, legacy) already
            logging.getLogger(load_headers.__module__).setLevel(logging.ERROR)
            reason = full_check(store, image, keyring, tree.buf)
            os.write(w, b"ok" if reason is None else os.fsencode(reason)[:4000])
        except BaseException as e:  # noqa: BLE001 -- reported to the parent, which fails closed
            os.write(w, os.fsencode(f"the check failed: {e}")[:4000])
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    if root_fd is not None:
        os.close(root_fd)
    log.info("image %s: full check of the compiled tree started (process %d)", image.id, pid)

    def wait() -> None:
        with os.fdopen(r, "rb") as f:
            answer = f.read()
        os.waitpid(pid, 0)
        if answer == b"ok":
            tree.proven = True
            done = f"image {image.id}: compiled tree checked against the headers in {time.monotonic() - t0:.2f} s"
            log.info("%s", done)
            if on_proven is not None:
                on_proven(f"{done} ({time.monotonic():.2f} s after the kernel started)")
        else:
            reason = f"image {image.id}: the full check of the compiled tree: {os.fsdecode(answer) or 'no answer'}"
            tree.fail(reason)
            if on_failure is not None:
                on_failure(reason)

    thread = threading.Thread(target=wait, name="usrview-tree-check", daemon=True)
    thread.start()
    return thread
