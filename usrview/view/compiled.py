"""The compiled tree: an image's view composed once, at deploy, and written to
the store as one compact file that a mount maps (:mod:`usrview.view.ctree`)
instead of parsing every header and composing the tree again.

The file (``STORE/images/ID.tree``, docs/store-format.md "Compiled trees") is
deterministic: the same headers in the same image order give the same bytes.
It holds

- a *package table*: each package's id, the SHA-256 and size of its header
  file, and where its block lies;
- one *block* per package: that package's entries as the view shows them
  (:func:`usrview.view.tree.view_entries`), each a record of attributes taken
  from the header alone (mode, size, mtime, device, owner *names*, digest,
  link target, capabilities, hardlink group), with its own path below
  ``/usr``.  :func:`package_block` makes a block from a header; a mount makes
  it again from the signed header and compares bytes before it serves
  anything of the package (docs/trust-chain.md);
- the *entry table*: one fixed-size entry per name, in the tree's entry-id
  order (:mod:`usrview.view.tree`: depth first, name order; a directory's
  entries have consecutive ids), each naming its inode, parent, name, and the
  record (package, index) or the image header file it shows, or marking an
  implicit directory; plus what only the merged tree knows: link counts, and
  an implicit directory's mtime;
- the *names*: entry names and package ids.

Owner names stay names: they resolve when the tree is served, in the
serving system's user database, as :func:`usrview.view.tree.build_tree` does.
"""

from __future__ import annotations

import logging
import struct

from usrview import images
from usrview.errors import OperationalError, UsrviewError
from usrview.store import Store
from usrview.view.loader import load_headers
from usrview.view.tree import NO_PACKAGE, PackageSource, Tree, TreeError, build_tree, view_entries
from verifier.filecaps import parse_text
from verifier.fileio import OwnerIds
from verifier.files import FileEntry, FileFlag, VerifyFlag

log = logging.getLogger(__name__)

#: The first bytes of a compiled tree.
MAGIC = b"USRVTREE"
#: The format version this usrview writes and reads.
VERSION = 2  # 2: a header file's entry holds its package's build time (1: 0, the store file's)
#: magic, version, packages, entries, inodes, total size, then the offsets of
#: the entry table, the names and the blocks, and the file's size.
HEAD = struct.Struct("<8sIIIIQQQQQ")
#: header SHA-256, block offset, block length, header file size, package id (names offset, length).
PKG = struct.Struct("<32sQIIII")
#: inode, parent, name (names offset, length), kind, 0, package, record, first child, children,
#: link count, mtime.
ENTRY = struct.Struct("<IIIHBBIIIIII")
#: mode, size, mtime, device, hardlink group (0: none), digest algorithm, the index of its
#: directory's path in the block's table, then the lengths of its name, user, group, link
#: target, digest (its bytes) and capabilities, which follow in that order.
RECORD = struct.Struct("<IQIIIBIHHHHHH")
#: A block's record count and directory count.
BLOCK_HEAD = struct.Struct("<II")
#: Where a directory's path starts and ends in its block.
U32_PAIR = struct.Struct("<II")
#: Set in a record's digest algorithm when the digest is kept as text (it is not hex).
DIGEST_TEXT = 0x80
#: An offset in a block's table (from the block's start).
U32 = struct.Struct("<I")

#: Entry kinds: a directory no package owns; a package's record; an image header file.
KIND_IMPLICIT, KIND_RECORD, KIND_HEADER = 0, 1, 2
#: The package/record field of an entry that has none.
NONE = 0xFFFFFFFF


class CompiledTreeError(OperationalError):
    """A compiled tree that cannot be read: wrong magic or version, truncated, inconsistent."""


def tree_path(store: Store, image_id: str):
    """``STORE/images/ID.tree`` (gc deletes it with its image)."""
    return images.tree_path(store, image_id)


# -- records --------------------------------------------------------------------

def _enc(text: str) -> bytes:
    """A name or path as the file holds it: UTF-8, undecodable bytes kept (surrogateescape),
    whatever the host's locale."""
    return text.encode("utf-8", "surrogateescape")


def _dec(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


_NO_FLAGS, _NO_VERIFY = FileFlag(0), VerifyFlag(0)


def _digest_field(digest: str) -> bytes | None:
    """A header's hex digest as the record holds it: its bytes (half the size), or
    None when the text is not hex (then the text is kept, with :data:`DIGEST_TEXT`)."""
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        return None
    return raw if raw.hex() == digest.lower() else None


def package_block(package) -> tuple[bytes, dict[str, int]]:
    """The block of one package, a function of its header alone, and each of its
    paths (below /usr) -> its record's index.  Raises TreeError for capabilities
    that cannot be parsed (as the tree builder does)."""
    records: list[bytes] = []
    index: dict[str, int] = {}
    owners: dict[str, bytes] = {}
    dirs: dict[str, int] = {}  # directory path -> its index in the block's table
    pack = RECORD.pack
    for rel, entry, group in view_entries(package):
        caps = entry.caps
        if caps and parse_text(caps) is None:
            raise TreeError(f"{package.nevra}: {entry.path}: capabilities {caps!r} cannot be parsed")
        directory, _, name = rel.rpartition("/")
        d_index = dirs.get(directory)
        if d_index is None:
            d_index = dirs[directory] = len(dirs)
        n = _enc(name)
        u = owners.get(entry.user)
        if u is None:
            u = owners[entry.user] = _enc(entry.user)
        g = owners.get(entry.group)
        if g is None:
            g = owners[entry.group] = _enc(entry.group)
        link = _enc(entry.linkto) if entry.linkto else b""
        d, algo = _digest_field(entry.digest), entry.digest_algo
        if d is None:  # not hex: kept as text, flagged
            d, algo = _enc(entry.digest), algo | DIGEST_TEXT
        c = _enc(caps) if caps else b""
        index.setdefault(rel, len(records))
        records.append(b"".join((pack(entry.mode & 0xFFFFFFFF, entry.size, entry.mtime & 0xFFFFFFFF,
                                      entry.rdev & 0xFFFFFFFF, group[0] + 1 if group else 0, algo, d_index,
                                      len(n), len(u), len(g), len(link), len(d), len(c)), n, u, g, link, d, c)))
    names = [_enc(path) for path in dirs]  # in index order (dicts keep it)
    offsets = []
    offset = 8 + 4 * (len(records) + len(names) + 1)
    for raw in names:
        offsets.append(offset)
        offset += len(raw)
    offsets.append(offset)  # the end of the last directory's path
    for r in records:
        offsets.append(offset)
        offset += len(r)
    table = struct.pack(f"<II{len(offsets)}I", len(records), len(names), *offsets)
    return b"".join((table, *names, *records)), index


def read_record(buf, block_off: int, block_len: int, index: int) -> tuple[str, FileEntry, int]:
    """(path below /usr, the entry, hardlink group or 0) of record ``index`` of the
    block at ``block_off`` in ``buf``.  Raises CompiledTreeError when it lies outside."""
    count, ndirs = BLOCK_HEAD.unpack_from(buf, block_off)
    table = block_off + 8
    if index >= count or 8 + 4 * (count + ndirs + 1) > block_len:
        raise CompiledTreeError(f"record {index} outside its block")
    (offset,) = U32.unpack_from(buf, table + 4 * (ndirs + 1 + index))
    if offset + RECORD.size > block_len:
        raise CompiledTreeError(f"record {index} outside its block")
    at = block_off + offset + RECORD.size
    mode, size, mtime, rdev, group, algo, d_index, ln, lu, lg, ll, ld, lc = RECORD.unpack_from(buf, at - RECORD.size)
    if d_index >= ndirs:
        raise CompiledTreeError(f"record {index}: directory {d_index} outside its block")
    d_start, d_end = U32_PAIR.unpack_from(buf, table + 4 * d_index)
    u, g, link, d = at + ln, at + ln + lu, at + ln + lu + lg, at + ln + lu + lg + ll
    c = d + ld
    if c + lc - block_off > block_len or not d_start <= d_end <= block_len:
        raise CompiledTreeError(f"record {index} outside its block")
    raw = buf[at:c + lc]
    directory = _dec(buf[block_off + d_start:block_off + d_end])
    name = _dec(raw[:ln])
    rel = f"{directory}/{name}" if directory else name
    digest = raw[d - at:c - at]
    if algo & DIGEST_TEXT:
        digest, algo = _dec(digest), algo & ~DIGEST_TEXT
    else:
        digest = digest.hex()
    entry = FileEntry("/usr/" + rel if rel else "/usr", size, mode, rdev, mtime, digest, algo,
                      _dec(raw[link - at:d - at]), _NO_FLAGS, _dec(raw[u - at:g - at]), _dec(raw[g - at:link - at]),
                      _NO_VERIFY, 0, 0, "", _dec(raw[c - at:]))
    return rel, entry, group


# -- the file -------------------------------------------------------------------

def encode(sources: list[PackageSource], header_digests: dict[str, str], tree: Tree) -> bytes:
    """The compiled tree of ``tree`` (:func:`usrview.view.tree.build_tree` of ``sources``)."""
    npkgs = len(sources)
    blocks, indexes = [], []
    for s in sources:
        block, index = package_block(s.package)
        blocks.append(block)
        indexes.append(index)
    pkg_of_header = {s.header_path.name: i for i, s in enumerate(sources)}
    names = bytearray()
    name_at: dict[bytes, int] = {}

    def name_ref(text: str) -> tuple[int, int]:
        raw = _enc(text)
        at = name_at.get(raw)
        if at is None:
            at = name_at[raw] = len(names)
            names.extend(raw)
        return at, len(raw)

    nodes = tree.nodes
    entries: list[bytes | None] = [None] * len(nodes)

    def entry(eid: int, inode: int, parent: int, name: str, path: str) -> bytes:
        node = nodes[inode]
        kind, pkg, rec, mtime = KIND_IMPLICIT, NONE, NONE, 0
        if node.pkg != NO_PACKAGE:
            kind, pkg, rec = KIND_RECORD, node.pkg, indexes[node.pkg][path]
        elif node.backing >= npkgs:
            kind, pkg, mtime = KIND_HEADER, pkg_of_header[node.relpath], node.mtime
        else:
            mtime = node.mtime
        first, count = 0, 0
        if node.names is not None:
            count = len(node.ids)
            first = node.ids[0] if count else 0
            if node.ids != list(range(first, first + count)):
                raise TreeError(f"/usr/{path}: entry ids not consecutive")
        n_at, n_len = name_ref(name)
        return ENTRY.pack(inode, parent, n_at, n_len, kind, 0, pkg, rec, first, count, node.nlink, mtime)

    entries[1] = entry(1, 1, 1, "", "")
    for node in nodes:
        if node is None or node.names is None:
            continue
        base = node.path
        for name, eid, inode in zip(node.names, node.ids, node.children):
            entries[eid] = entry(eid, inode, node.inode, name, f"{base}/{name}" if base else name)
    pkg_names = [name_ref(s.pkgid) for s in sources]

    entries_off = HEAD.size + PKG.size * npkgs
    entry_bytes = b"".join(e if e is not None else bytes(ENTRY.size) for e in entries[1:])
    names_off = entries_off + len(entry_bytes)
    blocks_off = names_off + len(names)
    table = bytearray()
    at = blocks_off
    for s, block, (p_at, p_len) in zip(sources, blocks, pkg_names):
        size = s.header_path.stat().st_size
        table += PKG.pack(bytes.fromhex(header_digests[s.pkgid]), at, len(block), size, p_at, p_len)
        at += len(block)
    head = HEAD.pack(MAGIC, VERSION, npkgs, len(nodes) - 1, tree.inode_count, tree.total_size,
                     entries_off, names_off, blocks_off, at)
    return b"".join([head, bytes(table), entry_bytes, bytes(names), *blocks])


def compile_loaded(loaded) -> bytes:
    """The compiled tree of an image whose headers are loaded
    (:func:`usrview.view.loader.load_headers`).  Owner names are not resolved
    here (they stay names in the file): no warning about unknown ones."""
    owners = (OwnerIds(lambda name: 0), OwnerIds(lambda name: 0))
    tree = build_tree(loaded.sources, header_digests=loaded.header_digests, owners=owners)
    return encode(loaded.sources, loaded.header_digests, tree)


def compile_image(store: Store, image, keyring) -> bytes:
    """Compile ``image`` from its (signature-checked) header files and write it to the
    store atomically (``STORE/images/ID.tree``); the bytes written."""
    data = compile_loaded(load_headers(store, image, keyring))
    try:
        store.write_file(tree_path(store, image.id), data)
    except OSError as e:
        raise OperationalError(f"cannot write the compiled tree of image {image.id}: {e.strerror or e}") from None
    log.info("image %s: compiled tree written (%d bytes)", image.id, len(data))
    return data


def compile_deployed(store: Store, image, keyring) -> None:
    """What ``deploy`` and ``pull`` do once an image is recorded: compile its tree
    unless the store has it.  A failure is a warning: the first mount compiles it."""
    if tree_path(store, image.id).exists():
        return
    try:
        compile_image(store, image, keyring)
    except UsrviewError as e:
        log.warning("image %s: tree not compiled (the first mount compiles it): %s", image.id, e)
