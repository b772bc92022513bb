"""The pyfuse3 adapter: translates the view's :class:`~usrview.tree.Tree` into FUSE replies.

Everything the view shows comes from the tree; bytes come through the
:class:`~usrview.guard.Guard`.  This module only converts: nodes to
``EntryAttributes``, errors to ``FUSEError``.

- Read-only: every modifying request, and an open for writing, answers EROFS.
- Only ``FUSEError`` leaves a handler (pyfuse3 issue 93: anything else ends
  ``pyfuse3.main()`` and leaves a dead mount).  :func:`_handler` is the one
  boundary: OSError becomes its errno, anything else is logged and becomes EIO.
- The tree never changes while mounted: entries and attributes are cached by
  the kernel for :data:`CACHE_TIMEOUT` seconds and pages are kept across opens
  (``keep_cache``).  Inodes live as long as the tree, so ``forget`` has nothing
  to release and lookup counts need not be kept.
- readdir cookies are the tree's entry ids, stable across calls.
- Letting the kernel answer (docs/view.md): with a pyfuse3 that offers them
  (``pyfuse3.KERNEL_CACHE_FEATURES``, the patch in
  ``.ci/pyfuse3-kernel-cache.patch``) the kernel caches symlink targets, and
  OPEN and OPENDIR answer ENOSYS once, after which the kernel opens files and
  directories without asking, keeps pages and caches listings.  READ then
  carries the inode: a file is checked at its first READ instead of its
  OPEN, through the same guard, and its backing fd is kept (at most
  :data:`INODE_FDS`), checked by identity (one ``fstat``) at every READ.
  With a stock pyfuse3 nothing changes: every open asks, as before.
- READs answered in C: where the patched pyfuse3 offers it (``c_read`` in
  ``DISPATCH_FEATURES``) each kept fd is handed to it with the identity it was
  checked with, and a READ of that inode is answered there (an ``fstat`` for
  the identity, a ``pread``) without a handler and without the GIL; a fd whose
  identity changed, or an inode without one, still comes here.  The prefetch's
  threads hand over the fds of the files they checked ahead (:meth:`adopt`), so
  that even their first READ need not reach Python: those files' opens are
  noted for the prefetch's record when it is written (:meth:`collect_opens`).
  A compiled tree refused by its full check stops this at once (``on_fail``).
- GETXATTR of ``security.capability`` (the kernel asks at every exec and never
  caches the answer): a file without one is noted when its attributes are first
  built (a lookup, a listing) or its capability first asked, and the patched
  pyfuse3 (``c_no_capability``) answers ENODATA for it in C from then on; a
  refused compiled tree stops this too.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections import Counter, OrderedDict

import pyfuse3

from usrview.config import DISPATCH_SPIN_US
from usrview.view.guard import Guard
from usrview.view.tree import Node, Tree, digest_label
from verifier import filecaps

log = logging.getLogger(__name__)

#: Seconds the kernel may cache entries and attributes (S3QL and composefs use 3600).
CACHE_TIMEOUT = 3600.0
#: Block size reported by stat and statfs.
BLOCK_SIZE = 4096
#: Longest name statfs reports.
NAME_MAX = 255

#: The extended attribute the kernel reads file capabilities from.
XATTR_CAPS = os.fsencode(filecaps.XATTR_NAME)
XATTR_PACKAGE = b"user.rpm.package"
XATTR_DIGEST = b"user.rpm.digest"
#: The names the view has values for.
SERVED_XATTRS = frozenset({XATTR_CAPS, XATTR_PACKAGE, XATTR_DIGEST})
#: Other names of this namespace (security.selinux, security.ima: labels of security
#: modules the view does not keep) answer EOPNOTSUPP, as a kernel file system without
#: them does; ``ls -l`` (coreutils' getfilecon_cache) then stops asking for
#: security.selinux on the device after its first answer, where ENODATA cost a GETXATTR
#: per listed entry.  Other unknown names answer ENODATA.
XATTR_SECURITY_PREFIX = b"security."
#: POSIX ACL names answer EOPNOTSUPP too: the view has no ACLs (a package's header
#: carries none) and does not ask the kernel for ACL support (``enable_acl`` below), so
#: it says so as a file system mounted ``noacl`` does; ``ls -l`` (file_has_acl_cache)
#: then stops asking on the device after its first answer.
XATTR_ACL_PREFIX = b"system.posix_acl_"
#: The names answered EOPNOTSUPP.
UNSUPPORTED_XATTR_PREFIXES = (XATTR_SECURITY_PREFIX, XATTR_ACL_PREFIX)

#: The kernel caching the view uses where pyfuse3 offers it: symlink targets
#: cached; files and directories opened without OPEN/OPENDIR requests.
KERNEL_CACHE = frozenset({"cache_symlinks", "no_open", "no_opendir"})
#: EntryAttributes kept built (a daemon's memory should not grow with the paths walked).
ATTR_CACHE = 2048
#: Backing fds kept open, one per inode read lately, when files are opened
#: without OPEN (no RELEASE tells when a file is closed).
INODE_FDS = 512


def kernel_cache_features(mode: str = "auto") -> frozenset[str]:
    """What of :data:`KERNEL_CACHE` the installed pyfuse3 offers (``mode``
    "off": nothing, the behaviour of a stock pyfuse3)."""
    if mode == "off":
        return frozenset()
    return KERNEL_CACHE & getattr(pyfuse3, "KERNEL_CACHE_FEATURES", frozenset())


def dispatch_features() -> frozenset[str]:
    """How the installed pyfuse3's session loop differs from a stock one
    (``pyfuse3.DISPATCH_FEATURES`` of the patch; nothing for a stock pyfuse3)."""
    return getattr(pyfuse3, "DISPATCH_FEATURES", frozenset())


def describe_kernel_cache(features: frozenset[str]) -> str:
    """What ``usrview mount -v`` says of the kernel's caching and of the pyfuse3 that runs."""
    patched = bool(getattr(pyfuse3, "KERNEL_CACHE_FEATURES", None))
    which = (f"pyfuse3 {pyfuse3.__version__} {'with' if patched else 'without'} "
             ".ci/pyfuse3-kernel-cache.patch")
    if patched and not getattr(pyfuse3, "DISPATCH_FEATURES", None):
        which += " of before its request dispatch (run .ci/setup again)"
    if not features:
        return (f"none: every open, listing and readlink asks the daemon ({which}"
                f"{', --kernel-cache off' if patched else ''})")
    return ", ".join(sorted(features)) + f" (files checked at their first read; {which})"



def configure_dispatch(spin_us: float = DISPATCH_SPIN_US) -> str:
    """Set the patched pyfuse3's busy-poll; what ``usrview mount -v`` says of the dispatch."""
    features = dispatch_features()
    if "c_wait" not in features:
        return ("every request waited for through trio's event loop (pyfuse3 without the c_wait of "
                ".ci/pyfuse3-kernel-cache.patch)")
    pyfuse3.dispatch_spin = spin_us / 1e6
    burst = " within a burst of requests" if "burst_spin" in features else ""
    ioctls = ", ioctls answered there without the GIL" if "c_ioctl" in features else ""
    reads = "; READs of kept checked fds answered in C" if "c_read" in features else ""
    reads += ("; GETXATTRs of security.capability of files without one answered in C"
              if "c_no_capability" in features else "")
    return (f"the next request waited for in C while trio is idle ({pyfuse3.dispatch_wait * 1e3:g} ms "
            f"at most, polled {spin_us:g} µs before sleeping{burst}{ioctls}), handlers run inline{reads}")


def describe_dispatch() -> str:
    """How the session loop waited for requests so far (the SIGUSR2 log), where pyfuse3 counts it."""
    counts = pyfuse3.dispatch_statistics() if hasattr(pyfuse3, "dispatch_statistics") else {}
    if counts:  # and the busy-poll's length now, in µs
        counts = {**counts, "spin_us": round(pyfuse3.dispatch_spin * 1e6)}
    return "dispatch: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "not counted")


def set_spin(spin_us: float) -> bool:
    """Change the busy-poll while serving (the patched pyfuse3's set_spin); False
    where pyfuse3 cannot."""
    if "set_spin" not in dispatch_features():
        return False
    pyfuse3.set_dispatch_spin(spin_us / 1e6)
    return True


def _handler(fn):
    """The error boundary every handler goes through."""

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        self.requests[name] += 1
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _erofs(fn):
    """A modifying operation: always EROFS."""

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        self.requests[name] += 1
        raise pyfuse3.FUSEError(errno.EROFS)

    return wrapper


class ViewOperations(pyfuse3.Operations):
    """The request handlers.

    Attributes:
        tree: the immutable view.
        guard: opens and checks backing files.
        open_files: fh -> [backing fd or -1 until the first read, node].
        kernel_cache: what the kernel is asked to cache (:data:`KERNEL_CACHE`).
        inode_fds: with "no_open", inode -> (backing fd, identity it was
            checked with), most recently read last, at most :data:`INODE_FDS`.
        attr_cache: inode -> EntryAttributes, built once while kept (at most
            :data:`ATTR_CACHE`): the tree never changes while mounted, and lookup,
            getattr and readdir ask often.
        requests: handler name -> requests it answered (``usrview mount -v``
            logs them at SIGUSR2 and at the unmount: what still reaches the daemon;
            FORGET and FLUSH, which answer nothing, are not counted).
        xattr_names: extended attribute name -> GETXATTR requests for it (logged with them).
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    # No FUSE_CAP_POSIX_ACL: the kernel then checks permissions by the mode bits alone
    # and asks the daemon no ACL at a path walk.  With it, it would cache each inode's
    # answer (no ACL) but the root directory's: that inode is made at mount, before
    # FUSE_INIT's answer enables ACLs, and is marked never to cache them
    # (fuse_init_inode: ACL_DONT_CACHE), so every path walk through /usr by a user
    # other than root asked the daemon for the root's ACL (docs/view.md, "Execs and
    # set-id programs").  The view has no ACLs to serve.
    enable_acl = False

    def __init__(self, tree: Tree, guard: Guard, kernel_cache: frozenset[str] = frozenset()):
        super().__init__()
        self.tree = tree
        self.guard = guard
        self.kernel_cache = kernel_cache
        # read by pyfuse3 when the kernel connects (a stock pyfuse3 ignores it)
        self.enable_symlink_caching = "cache_symlinks" in kernel_cache
        self.open_files: dict[int, list] = {}
        self.inode_fds: OrderedDict[int, tuple[int, tuple]] = OrderedDict()
        # READs of the kept fds answered in C (the patched pyfuse3's c_read), and the
        # inodes adopted from the prefetch whose first open is not noted yet
        self.c_read = "no_open" in kernel_cache and "c_read" in dispatch_features()
        self._unnoted: set[int] = set()
        if self.c_read:
            pyfuse3.drop_read_fds()  # what an earlier mount of this process kept
            guard.adopt = self.adopt
            guard.collect_opens = self.collect_opens
            if hasattr(tree, "on_fail"):
                tree.on_fail.append(pyfuse3.drop_read_fds)
        # GETXATTRs of security.capability answered ENODATA in C (c_no_capability)
        self.c_no_capability = "c_no_capability" in dispatch_features()
        if self.c_no_capability:
            pyfuse3.forget_no_capability()
            if hasattr(tree, "on_fail"):
                tree.on_fail.append(pyfuse3.forget_no_capability)
        self._next_fh = 0
        self.attr_cache: OrderedDict[int, pyfuse3.EntryAttributes] = OrderedDict()
        self.requests: Counter[str] = Counter()
        self.xattr_names: Counter[bytes] = Counter()

    # -- helpers -----------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.tree.node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = self.attr_cache.get(node.inode)
        if attr is None:
            attr = self.attr_cache[node.inode] = self._build_attributes(node)
            if self.c_no_capability and node.caps is None:
                # the kernel learns of the file here: its exec's capability query is answered in C
                pyfuse3.cache_no_capability(node.inode)
            if len(self.attr_cache) > ATTR_CACHE:  # the oldest made goes: the kernel caches them too
                self.attr_cache.popitem(last=False)
        return attr

    @staticmethod
    def _build_attributes(node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.generation = 0
        attr.entry_timeout = CACHE_TIMEOUT
        attr.attr_timeout = CACHE_TIMEOUT
        attr.st_mode = node.mode
        attr.st_nlink = node.nlink
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        attr.st_rdev = node.rdev
        attr.st_size = node.size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (node.size + 511) // 512
        ns = node.mtime * 1_000_000_000
        attr.st_atime_ns = ns
        attr.st_mtime_ns = ns
        attr.st_ctime_ns = ns
        return attr

    def _xattrs(self, node: Node) -> dict[bytes, bytes]:
        values = {}
        if node.caps is not None:
            values[XATTR_CAPS] = node.caps
        package = self.tree.package_of(node)
        if package is not None:
            values[XATTR_PACKAGE] = package.encode()
        label = digest_label(node)
        if label:
            values[XATTR_DIGEST] = label.encode()
        return values

    # -- reading the tree --------------------------------------------------

    @_handler
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        node = self.tree.lookup(parent, os.fsdecode(name))
        if node is None:
            # A negative entry the kernel may cache as long as positive ones.
            attr = pyfuse3.EntryAttributes()
            attr.st_ino = 0
            attr.entry_timeout = CACHE_TIMEOUT
            return attr
        return self.attributes(node)

    async def forget(self, inode_list):
        # Inodes live as long as the tree: nothing to release.
        pass

    @_handler
    async def getattr(self, inode, ctx=None):
        return self.attributes(self._node(inode))

    @_handler
    async def readlink(self, inode, ctx=None):
        node = self._node(inode)
        if not node.is_symlink:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.relpath)

    @_handler
    async def opendir(self, inode, ctx=None):
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if "no_opendir" in self.kernel_cache:
            # The kernel opens directories without asking from now on, caches
            # their listings and hands readdir the inode.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return inode

    @_handler
    async def readdir(self, fh, start_id, token):
        # fh is the inode: opendir's answer, or under no_opendir pyfuse3's
        directory = self._node(fh)
        for name, node, entry_id in self.tree.entries_after(directory, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attributes(node), entry_id):
                break

    @_handler
    async def releasedir(self, fh):
        pass

    @_handler
    async def statfs(self, ctx=None):
        st = pyfuse3.StatvfsData()
        st.f_bsize = BLOCK_SIZE
        st.f_frsize = BLOCK_SIZE
        st.f_blocks = (self.tree.total_size + BLOCK_SIZE - 1) // BLOCK_SIZE
        st.f_bfree = 0
        st.f_bavail = 0
        st.f_files = self.tree.inode_count
        st.f_ffree = 0
        st.f_favail = 0
        st.f_namemax = NAME_MAX
        return st

    @_handler
    async def getxattr(self, inode, name, ctx=None):
        self.xattr_names[name] += 1
        if name == XATTR_CAPS:  # asked at every exec: answered without building the others
            caps = self._node(inode).caps
            if caps is None:
                if self.c_no_capability:  # the next ones in C
                    pyfuse3.cache_no_capability(inode)
                raise pyfuse3.FUSEError(errno.ENODATA)
            return caps
        if name not in SERVED_XATTRS:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP if name.startswith(UNSUPPORTED_XATTR_PREFIXES) else errno.ENODATA)
        value = self._xattrs(self._node(inode)).get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @_handler
    async def listxattr(self, inode, ctx=None):
        return list(self._xattrs(self._node(inode)))

    @_handler
    async def access(self, inode, mode, ctx=None):
        # default_permissions makes the kernel check permissions itself; only
        # write access is refused here, for callers that ask (access(2) W_OK).
        self._node(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    # -- file contents -----------------------------------------------------

    @_handler
    async def open(self, inode, flags, ctx=None):
        node = self._node(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not node.is_reg:
            raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EINVAL)
        if "no_open" in self.kernel_cache:
            # The kernel opens files without asking from now on (no OPEN, no
            # RELEASE, pages kept); read() gets the inode and checks.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        # A file whose backing file is unchanged since its check passed is opened
        # at its first read (most opens of a warm view read only the page cache).
        fd = -1 if self.guard.unchanged(node) else await self.guard.open(node)
        self._next_fh += 1
        self.open_files[self._next_fh] = [fd, node]
        return pyfuse3.FileInfo(fh=self._next_fh, keep_cache=True)

    @_handler
    async def read(self, fh, off, size):
        if "no_open" in self.kernel_cache:
            return await self._read_inode(fh, off, size)
        handle = self.open_files[fh]
        fd = handle[0]
        if fd < 0:
            fd = await self.guard.open(handle[1])
            if handle[0] < 0:
                handle[0] = fd
            else:  # another read of this handle opened it meanwhile
                os.close(fd)
                fd = handle[0]
        return os.pread(fd, size, off)

    async def _read_inode(self, inode: int, off: int, size: int) -> bytes:
        """A READ without an OPEN: the inode's checked backing fd, kept while
        its file keeps the identity it was checked with, else checked now."""
        kept = self.inode_fds.get(inode)
        if kept is not None and not self._refused() and self.guard.still_checked(*kept):
            self.inode_fds.move_to_end(inode)
            if inode in self._unnoted:
                self._note(inode)
            return os.pread(kept[0], size, off)
        node = self._node(inode)
        if not node.is_reg:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._unnoted.discard(inode)  # open_checked notes it
        fd, identity = await self.guard.open_checked(node)
        # A READ of the same inode may have kept a fd meanwhile (or found the
        # kept one changed): keep ours.  No await between a lookup and its pread,
        # so a fd closed here is never in use.
        self._keep(inode, fd, identity)
        return os.pread(fd, size, off)

    def _keep(self, inode: int, fd: int, identity: tuple) -> None:
        """Keep ``fd`` as ``inode``'s backing fd checked with ``identity`` (the one it
        had closed, the least recently read closed beyond :data:`INODE_FDS`), and
        have its READs answered in C where pyfuse3 can."""
        stale = self.inode_fds.pop(inode, None)
        if stale is not None:
            self._release(inode, stale[0])
        self.inode_fds[inode] = (fd, identity)
        if self.c_read:
            pyfuse3.keep_read_fd(inode, fd, *identity[:5])
        if len(self.inode_fds) > INODE_FDS:
            old, (old_fd, _) = self.inode_fds.popitem(last=False)
            self._release(old, old_fd)

    def _refused(self) -> bool:
        """Whether the tree was refused (a compiled tree failing its full check):
        then no kept fd is read any more."""
        return getattr(self.tree, "failed", None) is not None

    def _release(self, inode: int, fd: int) -> None:
        if self.c_read:
            pyfuse3.drop_read_fd(inode)  # returns once no READ in C uses it
        self._unnoted.discard(inode)
        os.close(fd)

    def adopt(self, node: Node, fd: int, identity: tuple) -> bool:
        """Keep a fd the prefetch checked ahead (:attr:`Guard.adopt`, in the event
        loop), unless the inode has one already, the tree was refused, or as many
        fds are kept as may be: one the view reads is never closed for one that
        may be read."""
        if node.inode in self.inode_fds or len(self.inode_fds) >= INODE_FDS or self._refused():
            return False
        self._keep(node.inode, fd, identity)
        self._unnoted.add(node.inode)
        return True

    def collect_opens(self) -> None:
        """Note the first open of each adopted file first read in C since the last
        call (:attr:`Guard.collect_opens`, before the prefetch writes its record)."""
        for inode in pyfuse3.served_read_fds():
            if inode in self._unnoted:
                self._note(inode)

    def _note(self, inode: int) -> None:
        self._unnoted.discard(inode)
        if self.guard.on_open is not None:
            try:
                node = self.tree.node(inode)
            except OSError:  # a compiled tree refused meanwhile
                return
            if node is not None:
                self.guard.on_open(node)

    @_handler
    async def release(self, fh):
        # .get: the first OPEN answered ENOSYS still gets a RELEASE (file handle 0)
        fd = self.open_files.pop(fh, (-1,))[0]
        if fd >= 0:
            os.close(fd)

    async def flush(self, fh):
        # Nothing to flush in a read-only view.  ENOSYS once makes the kernel
        # stop sending FLUSH on every close (fc->no_flush): a request fewer per file.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_handler
    async def fsync(self, fh, datasync):
        pass

    def describe_requests(self) -> str:
        return "requests: " + (", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())) or "none")

    def describe_xattr_names(self) -> str:
        return "getxattr by name: " + (", ".join(f"{os.fsdecode(k)} {v}" for k, v in
                                                 sorted(self.xattr_names.items())) or "none")

    def close_all(self) -> None:
        """Close the backing fds still open (after the mount ended)."""
        log.info("%s", self.describe_requests())
        log.info("%s", self.describe_xattr_names())
        log.info("%s", describe_dispatch())
        for fd, _ in self.open_files.values():
            if fd >= 0:
                os.close(fd)
        self.open_files.clear()
        if self.c_read:
            pyfuse3.drop_read_fds()
        if self.c_no_capability:
            pyfuse3.forget_no_capability()
        for fd, _ in self.inode_fds.values():
            os.close(fd)
        self.inode_fds.clear()
        self._unnoted.clear()
        self.guard.close()

    # -- everything that would modify the view ---------------------------

    @_erofs
    async def setattr(self, inode, attr, fields, fh, ctx): ...

    @_erofs
    async def mknod(self, parent_inode, name, mode, rdev, ctx): ...

    @_erofs
    async def mkdir(self, parent_inode, name, mode, ctx): ...

    @_erofs
    async def unlink(self, parent_inode, name, ctx): ...

    @_erofs
    async def rmdir(self, parent_inode, name, ctx): ...

    @_erofs
    async def symlink(self, parent_inode, name, target, ctx): ...

    @_erofs
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx): ...

    @_erofs
    async def link(self, inode, new_parent_inode, new_name, ctx): ...

    @_erofs
    async def create(self, parent_inode, name, mode, flags, ctx): ...

    @_erofs
    async def write(self, fh, off, buf): ...

    @_erofs
    async def setxattr(self, inode, name, value, ctx): ...

    @_erofs
    async def removexattr(self, inode, name, ctx): ...
