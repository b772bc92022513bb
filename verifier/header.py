"""Reading RPM packages and header-only files from bytes.

An RPM file is a 96-byte *lead*, a *signature header* padded to 8 bytes, the
*main header* and, in a full package, the compressed payload.  A header-only
file (the format of ``/usr/lib/sysimage/packages/*.rpm``) stops after the main
header.  Both headers share one format::

    magic 8E AD E8 01, 4 reserved bytes
    il  (int32)  number of index entries
    dl  (int32)  size of the data store
    il x (tag int32, type uint32, offset int32, count uint32)
    dl bytes of data

Signatures and header digests cover the main header's *immutable region*: the
magic, then ``(ril, rdl)``, the region's ``ril`` index entries and its first
``rdl`` data bytes (:attr:`Header.region_bytes`).  In a package file the region
must span the whole header, as rpm requires.

Every check rpm makes when it loads a header is made here, the same way
(``hdrblobRead``/``hdrblobVerifyRegion``/``hdrblobVerifyInfo``): entry types,
alignment, ranges, string termination, overlap, the region trailer, and the
type of known tags.  Anything wrong raises :class:`HeaderError`.  Sizes are
checked against the input before anything is allocated.
"""

from __future__ import annotations

import hashlib
import stat
import struct
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

from .errors import HeaderError
from .files import DEFAULT_DIGEST_ALGO, FileEntry, FileFlag, VerifyFlag
from .tags import (
    SCRIPTLET_PROG_TAGS,
    SCRIPTLET_TAGS,
    STRING_TYPES,
    TAG_TYPES,
    TYPE_SIZES,
    SigTag,
    Tag,
    TagType,
)

LEAD_MAGIC = b"\xed\xab\xee\xdb"
LEAD_SIZE = 96
HEADER_MAGIC = b"\x8e\xad\xe8\x01"
HEADER_INTRO = struct.Struct(">4s4xii")  # magic, reserved, il, dl
ENTRY = struct.Struct(">iIiI")  # tag, type, offset, count
ENTRY_SIZE = ENTRY.size
REGION_TRAILER_SIZE = 16
#: RPMSIGTYPE_HEADERSIG: the only signature type rpm has written since 1998.
LEAD_SIGNATURE_TYPE = 5

#: rpm's limits (header_internal.h, hdrblobRead): at most 0xffff index entries
#: and 256 MiB of data in a main header; 32 entries and 64 MiB in a signature
#: header.
MAIN_MAX_ENTRIES = 0xFFFF
MAIN_MAX_DATA = 0x0FFFFFFF
SIG_MAX_ENTRIES = 32
SIG_MAX_DATA = 64 * 1024 * 1024
#: hdrchkCount: a count with any of these bits set is absurd.
COUNT_LIMIT_MASK = 0xFF000000
#: The lowest tag a data entry may carry (HEADER_I18NTABLE).
MIN_DATA_TAG = Tag.HEADERI18NTABLE
_GHOST = int(FileFlag.GHOST)

# The entry check runs for every entry of every header: it works on plain
# ints, indexed by the raw type number (enum hashing is slow).
_TAG_TYPES = tuple(TagType)
_MIN_TYPE, _MAX_TYPE = TagType.CHAR.value, TagType.I18NSTRING.value
_SIZES = tuple(TYPE_SIZES.get(t, 0) for t in TagType)
_STRINGISH = tuple(t in STRING_TYPES for t in TagType)
_STRING = TagType.STRING.value
_WANT_TYPE = {int(tag): int(typ) for tag, typ in TAG_TYPES.items()}
_S_IFMT, _S_IFREG, _S_IFLNK = 0o170000, stat.S_IFREG, stat.S_IFLNK
_INT_FORMATS = {TagType.INT8: "B", TagType.CHAR: "B", TagType.INT16: "H",
                TagType.INT32: "I", TagType.INT64: "Q"}


class Entry(NamedTuple):
    """One index entry, checked: ``offset`` and ``end`` lie within the data."""

    tag: int
    type: TagType
    offset: int
    count: int
    end: int


class Header:
    """A parsed, checked header.

    Attributes:
        data: the bytes the header was read from (shared, not copied).
        start: offset of the header's magic in ``data``.
        end: offset just after the header's data store.
        il, dl: number of index entries and size of the data store.
        entries: tag -> :class:`Entry`.
        region_tag: the immutable region's tag (62 or 63), or 0 for a legacy
            header without a region.
        import_error: why rpm would refuse to import this header although
            its layout is sound (its data store has gaps), or None.
        ril, rdl: entries and data bytes covered by the region.
    """

    __slots__ = ("data", "start", "end", "il", "dl", "entries", "region_tag",
                 "ril", "rdl", "_store", "import_error")

    def __init__(self, data: bytes, start: int, *, region_tag: int,
                 exact_region: bool = True, max_entries: int = MAIN_MAX_ENTRIES,
                 max_data: int = MAIN_MAX_DATA, what: str = "header") -> None:
        self.data = data
        self.start = start
        if len(data) - start < HEADER_INTRO.size:
            raise HeaderError(f"{what}: truncated ({len(data) - start} bytes, need {HEADER_INTRO.size})")
        magic, il, dl = HEADER_INTRO.unpack_from(data, start)
        if magic != HEADER_MAGIC:
            raise HeaderError(f"{what}: bad magic {magic.hex()}")
        if not 1 <= il <= max_entries:
            raise HeaderError(f"{what}: number of tags {il} out of range")
        if not 0 <= dl <= max_data:
            raise HeaderError(f"{what}: data size {dl} out of range")
        index_start = start + HEADER_INTRO.size
        store = index_start + il * ENTRY_SIZE
        self.end = store + dl
        if self.end > len(data):
            raise HeaderError(f"{what}: truncated (needs {self.end - start} bytes, "
                              f"{len(data) - start} present)")
        self.il = il
        self.dl = dl
        self._store = store
        self.import_error: str | None = None
        raw = list(ENTRY.iter_unpack(memoryview(data)[index_start:store]))
        self.region_tag = 0
        self.ril, self.rdl = il, dl
        first = raw[0]
        if first[0] in (Tag.HEADERIMAGE, Tag.HEADERSIGNATURES, Tag.HEADERIMMUTABLE):
            self._check_region(first, region_tag, exact_region, what)
            body = raw[1:]
        else:
            body = raw
        self.entries = self._check_entries(body, what)

    def _check_region(self, first: tuple, region_tag: int, exact: bool, what: str) -> None:
        tag, typ, offset, count = first
        if tag != region_tag and not (region_tag == Tag.HEADERSIGNATURES and tag == Tag.HEADERIMAGE):
            raise HeaderError(f"{what}: unexpected region tag {tag}")
        if typ != TagType.BIN or count != REGION_TRAILER_SIZE:
            raise HeaderError(f"{what}: invalid region tag (type {typ}, count {count})")
        if offset < 0 or offset + REGION_TRAILER_SIZE > self.dl:
            raise HeaderError(f"{what}: invalid region offset {offset}")
        ttag, ttype, toffset, tcount = ENTRY.unpack_from(self.data, self._store + offset)
        if region_tag == Tag.HEADERSIGNATURES and ttag == Tag.HEADERIMAGE:
            ttag = Tag.HEADERSIGNATURES  # some old packages have this, rpm fixes it up
        if ttag != region_tag or ttype != TagType.BIN or tcount != REGION_TRAILER_SIZE:
            raise HeaderError(f"{what}: invalid region trailer")
        region_index = -toffset
        rdl = offset + REGION_TRAILER_SIZE
        if region_index <= 0 or region_index % ENTRY_SIZE:
            raise HeaderError(f"{what}: invalid region size")
        ril = region_index // ENTRY_SIZE
        if ril > self.il or rdl > self.dl:
            raise HeaderError(f"{what}: invalid region size (ril {ril} il {self.il} "
                              f"rdl {rdl} dl {self.dl})")
        if exact and (ril != self.il or rdl != self.dl):
            raise HeaderError(f"{what}: region size BAD (ril {ril} il {self.il} "
                              f"rdl {rdl} dl {self.dl})")
        self.region_tag = region_tag
        self.ril, self.rdl = ril, rdl

    def _check_entries(self, raw: list[tuple], what: str) -> dict[int, Entry]:
        data, store, dl = self.data, self._store, self.dl
        typecheck = self.region_tag in (Tag.HEADERIMMUTABLE, Tag.HEADERIMAGE)
        entries: dict[int, Entry] = {}
        prev_end = 0
        packed = 0  # the data size if entries are packed in index order
        trailer = self.rdl - REGION_TRAILER_SIZE if self.region_tag else None
        first = 1 if self.region_tag else 0
        n = len(raw)
        rdl = self.rdl
        sizes, stringish, tag_types, want_type = _SIZES, _STRINGISH, _TAG_TYPES, _WANT_TYPE
        new_entry = tuple.__new__

        def fail(i: int, tag: int, message: str):
            raise HeaderError(f"{what}: tag[{i + first}] ({tag}): {message}")

        for i, (tag, typ, offset, count) in enumerate(raw):
            if offset < prev_end:
                fail(i, tag, "data overlaps the previous entry")
            if tag < MIN_DATA_TAG:
                fail(i, tag, "invalid tag number")
            if not _MIN_TYPE <= typ <= _MAX_TYPE:
                fail(i, tag, f"invalid type {typ}")
            if count == 0 or count & COUNT_LIMIT_MASK:
                fail(i, tag, f"invalid count {count}")
            size = sizes[typ]
            if size and offset % size:
                fail(i, tag, f"misaligned offset {offset}")
            if not 0 <= offset < dl:
                fail(i, tag, f"offset {offset} out of range")
            if size:
                end = offset + count * size
                if end > dl:
                    fail(i, tag, "data runs past the data store")
            else:
                if typ == _STRING and count != 1:
                    fail(i, tag, f"string with count {count}")
                # Entries may not overlap, so the strings must end before the
                # next entry's data: search only up to there (linear overall).
                limit = dl
                if i + 1 < n and offset < raw[i + 1][2] < dl:
                    limit = raw[i + 1][2]
                # end: just past the count-th NUL.  Found without copying the
                # data when the count-th NUL is the first or the last one there.
                begin, stop = store + offset, store + limit
                if count == 1:
                    nul = data.find(b"\0", begin, stop)
                    if nul < 0:
                        fail(i, tag, "unterminated string")
                    end = nul + 1 - store
                else:
                    nuls = data.count(b"\0", begin, stop)
                    if nuls < count:
                        fail(i, tag, "unterminated string")
                    if nuls == count:
                        end = data.rfind(b"\0", begin, stop) + 1 - store
                    else:
                        parts = data[begin:stop].split(b"\0", count)
                        end = limit - len(parts[count])
            if trailer is not None and end > trailer and offset < rdl:
                fail(i, tag, "data overlaps the region trailer")
            if typecheck:
                want = want_type.get(tag)
                if want is not None and want != typ and not (stringish[want] and stringish[typ]):
                    fail(i, tag, f"type {_TAG_TYPES[typ].name} where "
                                 f"{_TAG_TYPES[want].name} belongs")
            if tag in entries:
                fail(i, tag, "duplicate tag")
            entries[tag] = new_entry(Entry, (tag, tag_types[typ], offset, count, end))
            prev_end = end
            if size and size > 1:
                packed += -packed % size
            packed += end - offset
        # rpm's headerImport: in a header with a region, the entries' data
        # (plus the region trailer) must fill the data store exactly.
        # rpm makes this check when it imports a header, after it has checked
        # the signature: keep it apart, so that a damaged signed header is
        # reported BAD as rpm reports it.
        if self.region_tag and packed + REGION_TRAILER_SIZE != dl:
            self.import_error = (f"{what}: data store size {dl} does not match "
                                 f"its entries ({packed + REGION_TRAILER_SIZE})")
        return entries

    # -- access -----------------------------------------------------------

    def __contains__(self, tag: int) -> bool:
        return tag in self.entries

    def raw(self, tag: int) -> bytes | None:
        """The data bytes of a tag, or None when absent."""
        e = self.entries.get(tag)
        if e is None:
            return None
        return self.data[self._store + e.offset:self._store + e.end]

    def strings(self, tag: int) -> list[str] | None:
        """A string-class tag as a list (one element for STRING)."""
        e = self.entries.get(tag)
        if e is None:
            return None
        if e.type not in STRING_TYPES:
            raise HeaderError(f"tag {tag}: {e.type.name} is not a string")
        raw = self.data[self._store + e.offset:self._store + e.end - 1]
        # Decode once, then split: NUL is never part of a multi-byte UTF-8
        # sequence, so this equals decoding each string on its own.
        return raw.decode("utf-8", "surrogateescape").split("\0")

    def string(self, tag: int, default: str | None = None) -> str | None:
        """A string tag's value (the first, untranslated one for I18NSTRING)."""
        values = self.strings(tag)
        return default if values is None else values[0]

    def ints(self, tag: int) -> tuple[int, ...] | None:
        """An integer tag's values (unsigned), or None when absent."""
        e = self.entries.get(tag)
        if e is None:
            return None
        fmt = _INT_FORMATS.get(e.type)
        if fmt is None:
            raise HeaderError(f"tag {tag}: {e.type.name} is not an integer")
        return struct.unpack_from(f">{e.count}{fmt}", self.data, self._store + e.offset)

    def int(self, tag: int, default: int | None = None) -> int | None:
        values = self.ints(tag)
        return default if values is None else values[0]

    @property
    def bytes(self) -> bytes:
        """The header exactly as stored, magic to the end of its data."""
        return self.data[self.start:self.end]

    @property
    def region_bytes(self) -> bytes:
        """The bytes that header signatures and header digests cover."""
        if self.ril == self.il and self.rdl == self.dl:
            return self.bytes
        index_start = self.start + HEADER_INTRO.size
        return b"".join((
            self.data[self.start:self.start + 8],
            struct.pack(">ii", self.ril, self.rdl),
            self.data[index_start:index_start + self.ril * ENTRY_SIZE],
            self.data[self._store:self._store + self.rdl],
        ))


@dataclass(frozen=True, slots=True)
class Lead:
    """The 96-byte lead.  Only its magic and signature type matter to rpm."""

    major: int
    minor: int
    type: int
    name: str


@dataclass(slots=True)
class Package:
    """A package or header-only file, parsed.

    Attributes:
        lead: the lead.
        signature: the signature header.
        header: the main header.
        payload_offset: where the payload starts (the file size for a
            header-only file).
        has_payload: whether bytes follow the main header.
    """

    lead: Lead
    signature: Header
    header: Header
    payload_offset: int
    has_payload: bool
    _files: list[FileEntry] | None = field(default=None, repr=False)
    _sha256: str | None = field(default=None, repr=False, compare=False)

    # -- identity ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self.header.string(Tag.NAME) or ""

    @property
    def version(self) -> str:
        return self.header.string(Tag.VERSION) or ""

    @property
    def release(self) -> str:
        return self.header.string(Tag.RELEASE) or ""

    @property
    def epoch(self) -> int | None:
        return self.header.int(Tag.EPOCH)

    @property
    def arch(self) -> str:
        """The architecture; ``src`` for a source package, as rpm names it."""
        if Tag.SOURCERPM not in self.header.entries:
            return "src"
        return self.header.string(Tag.ARCH) or ""

    @property
    def is_source(self) -> bool:
        return Tag.SOURCERPM not in self.header.entries

    @property
    def nevra(self) -> str:
        """``name-[epoch:]version-release.arch``."""
        epoch = self.epoch
        evr = f"{epoch}:" if epoch is not None else ""
        return f"{self.name}-{evr}{self.version}-{self.release}.{self.arch}"

    @property
    def nvra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"

    @property
    def rpm_format(self) -> int:
        """The package format: 6 when RPMTAG_RPMFORMAT says so, else 4 (3 without a region)."""
        fmt = self.header.int(Tag.RPMFORMAT)
        if fmt is not None:
            return fmt
        return 4 if self.header.region_tag else 3

    @property
    def header_sha256(self) -> str:
        """SHA-256 of the signed header region: with the NEVRA, the package's identity.
        Computed once: the header digest check and the package's id both need it."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.header.region_bytes).hexdigest()
        return self._sha256

    # -- payload and scriptlets -------------------------------------------

    @property
    def payload_format(self) -> str:
        return self.header.string(Tag.PAYLOADFORMAT, "cpio") or "cpio"

    @property
    def payload_compressor(self) -> str:
        return self.header.string(Tag.PAYLOADCOMPRESSOR, "gzip") or "gzip"

    @property
    def scriptlets(self) -> list[str]:
        """The scriptlets the package carries, by spec name (``%post`` ...)."""
        found = []
        for tag, name in SCRIPTLET_TAGS.items():
            if tag in self.header.entries and name not in found:
                found.append(name)
        for tag, name in SCRIPTLET_PROG_TAGS.items():
            if tag in self.header.entries and name not in found:
                found.append(name)
        return found

    # -- files ------------------------------------------------------------

    @property
    def files(self) -> list[FileEntry]:
        if self._files is None:
            self._files = file_entries(self.header)
        return self._files

    def read_files(self) -> list[FileEntry]:
        """The file list, as :attr:`files`, but parsed without keeping it in
        the package (unless it is there already): for a caller that reads it
        once and lets it go."""
        if self._files is not None:
            return self._files
        return file_entries(self.header)

    def hardlink_groups(self, files: list[FileEntry] | None = None) -> dict[int, tuple[int, ...]]:
        """File index -> its hardlink group (indexes in header order), as rpm builds them.

        rpm (``rpmfilesBuildNLink``) links regular, non-ghost files with equal
        (FILEDEVICES, FILEINODES) and a non-zero inode, and none at all when either
        tag is absent.  Files in no group are absent from the result.  ``files``:
        this package's file list when the caller holds it (see :meth:`read_files`).
        """
        if Tag.FILEINODES not in self.header or Tag.FILEDEVICES not in self.header:
            return {}
        files = self.files if files is None else files
        if len({(f.device, f.inode) for f in files}) == len(files):
            return {}  # most packages: no two files share a pair, no group to make
        sets: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(files):
            if f.inode != 0 and stat.S_ISREG(f.mode) and not int(f.flags) & _GHOST:
                sets.setdefault((f.device, f.inode), []).append(i)
        groups = [tuple(members) for members in sets.values() if len(members) > 1]
        return {i: group for group in groups for i in group}

    def header_only(self) -> bytes:
        """The lead, signature header and main header: a header-only rpm."""
        return self.header.data[:self.header.end]


def read_lead(data: bytes) -> Lead:
    if len(data) < LEAD_SIZE:
        raise HeaderError(f"lead: truncated ({len(data)} bytes, need {LEAD_SIZE})")
    if data[:4] != LEAD_MAGIC:
        raise HeaderError("lead: not an rpm package (bad magic)")
    major, minor, typ = data[4], data[5], struct.unpack_from(">H", data, 6)[0]
    if major not in (3, 4):
        raise HeaderError(f"lead: unsupported version {major}.{minor}")
    sigtype = struct.unpack_from(">H", data, 78)[0]
    if sigtype != LEAD_SIGNATURE_TYPE:
        raise HeaderError(f"lead: unsupported signature type {sigtype}")
    name = data[10:76].split(b"\0", 1)[0].decode("utf-8", "replace")
    return Lead(major, minor, typ, name)


def read_package(data: bytes, *, strict: bool = True) -> Package:
    """Parse a full package or a header-only file held in ``data``.

    Raises HeaderError when anything is malformed or truncated.  The payload
    itself is not read.  With ``strict=False`` the checks rpm makes only after
    signature verification (``Header.import_error``) are left to the caller.
    """
    lead = read_lead(data)
    sig = Header(data, LEAD_SIZE, region_tag=Tag.HEADERSIGNATURES, exact_region=False,
                 max_entries=SIG_MAX_ENTRIES, max_data=SIG_MAX_DATA, what="signature header")
    main_start = sig.end + (-(sig.end - LEAD_SIZE) % 8)
    if main_start > len(data):
        raise HeaderError("signature header: truncated padding")
    if any(data[sig.end:main_start]):
        raise HeaderError("signature header: padding is not zero")
    header = Header(data, main_start, region_tag=Tag.HEADERIMMUTABLE, exact_region=True,
                    what="header")
    if strict:
        for h in (sig, header):
            if h.import_error:
                raise HeaderError(h.import_error)
    return Package(lead, sig, header, header.end, header.end < len(data))


def read_package_file(path, *, strict: bool = True, max_header_bytes: int = 64 * 1024 * 1024 + 0x10000000) -> Package:
    """Read a package's lead and headers from a file, without its payload.

    Reads only as much as the headers need (their sizes are checked against
    rpm's limits before anything is allocated).
    """
    with open(path, "rb") as f:
        head = f.read(LEAD_SIZE + HEADER_INTRO.size)
        read_lead(head)
        sig_len = _header_length(head, LEAD_SIZE, SIG_MAX_ENTRIES, SIG_MAX_DATA, "signature header")
        sig_len += -sig_len % 8
        buf = bytearray(head)
        buf += f.read(LEAD_SIZE + sig_len + HEADER_INTRO.size - len(buf))
        main_len = _header_length(bytes(buf), LEAD_SIZE + sig_len, MAIN_MAX_ENTRIES,
                                  MAIN_MAX_DATA, "header")
        want = LEAD_SIZE + sig_len + main_len
        if want > max_header_bytes:
            raise HeaderError(f"header: {want} bytes is more than allowed")
        buf += f.read(want - len(buf))
        has_payload = bool(f.read(1))
    pkg = read_package(bytes(buf), strict=strict)
    pkg.has_payload = has_payload
    return pkg


def _header_length(data: bytes, start: int, max_il: int, max_dl: int, what: str) -> int:
    if len(data) < start + HEADER_INTRO.size:
        raise HeaderError(f"{what}: truncated")
    magic, il, dl = HEADER_INTRO.unpack_from(data, start)
    if magic != HEADER_MAGIC:
        raise HeaderError(f"{what}: bad magic {magic.hex()}")
    if not 1 <= il <= max_il:
        raise HeaderError(f"{what}: number of tags {il} out of range")
    if not 0 <= dl <= max_dl:
        raise HeaderError(f"{what}: data size {dl} out of range")
    return HEADER_INTRO.size + il * ENTRY_SIZE + dl


# -- the file list ----------------------------------------------------------

def _array(header: Header, tag: int, n: int, getter, default, required: bool = False):
    values = getter(tag)
    if values is None:
        if required:
            raise HeaderError(f"header: tag {Tag(tag).name} missing")
        return [default] * n
    if len(values) != n:
        raise HeaderError(f"header: tag {Tag(tag).name} has {len(values)} entries "
                          f"for {n} files")
    return values


def file_paths(header: Header) -> list[str]:
    """The install paths, from BASENAMES/DIRNAMES/DIRINDEXES or OLDFILENAMES."""
    basenames = header.strings(Tag.BASENAMES)
    if basenames is None:
        old = header.strings(Tag.OLDFILENAMES)
        return old or []
    dirnames = header.strings(Tag.DIRNAMES)
    if dirnames is None:
        raise HeaderError("header: BASENAMES without DIRNAMES")
    indexes = _array(header, Tag.DIRINDEXES, len(basenames), header.ints, 0, required=True)
    ndirs = len(dirnames)
    if indexes and max(indexes) >= ndirs:
        idx = next(i for i in indexes if i >= ndirs)
        raise HeaderError(f"header: directory index {idx} out of range ({ndirs} directories)")
    return [dirnames[idx] + base for base, idx in zip(basenames, indexes)]


_VERIFY_ALL = int(VerifyFlag.ALL)


def _flag_objects(values, flag_type, mask: int = -1) -> list:
    """``values`` as ``flag_type`` members: each distinct value is built once
    (flag words repeat across files, and IntFlag construction is slow)."""
    made = {v: flag_type(v & mask) for v in set(values)}
    return list(map(made.__getitem__, values))


def _shared(values: list[str]) -> list[str]:
    """``values`` with equal strings made one object (owner names repeat for
    every file: one "root", not thousands)."""
    seen: dict[str, str] = {}
    return [seen.setdefault(v, v) for v in values]


def file_entries(header: Header) -> list[FileEntry]:
    """Every file the header lists, in header order.

    Raises HeaderError when a per-file array has the wrong number of entries.
    """
    paths = file_paths(header)
    n = len(paths)
    if n == 0:
        return []
    ints, strs = header.ints, header.strings
    long_sizes = header.ints(Tag.LONGFILESIZES)
    if long_sizes is not None:
        sizes = _array(header, Tag.LONGFILESIZES, n, ints, 0)
    else:
        sizes = _array(header, Tag.FILESIZES, n, ints, 0)
    modes = _array(header, Tag.FILEMODES, n, ints, 0, required=True)
    rdevs = _array(header, Tag.FILERDEVS, n, ints, 0)
    mtimes = _array(header, Tag.FILEMTIMES, n, ints, 0)
    digests = _array(header, Tag.FILEDIGESTS, n, strs, "")
    linktos = _array(header, Tag.FILELINKTOS, n, strs, "")
    flags = _array(header, Tag.FILEFLAGS, n, ints, 0)
    users = _shared(_array(header, Tag.FILEUSERNAME, n, strs, "root"))
    groups = _shared(_array(header, Tag.FILEGROUPNAME, n, strs, "root"))
    vflags = _array(header, Tag.FILEVERIFYFLAGS, n, ints, int(VerifyFlag.ALL))
    devices = _array(header, Tag.FILEDEVICES, n, ints, 1)
    inodes = header.ints(Tag.FILEINODES)
    inodes = range(1, n + 1) if inodes is None else _array(header, Tag.FILEINODES, n, ints, 0)
    langs = _array(header, Tag.FILELANGS, n, strs, "")
    caps = _array(header, Tag.FILECAPS, n, strs, "")
    colors = _array(header, Tag.FILECOLORS, n, ints, 0)
    algo = header.int(Tag.FILEDIGESTALGO, DEFAULT_DIGEST_ALGO)
    # Column by column, then one tuple per file (the per-file loop is what
    # costs at mount time: tens of thousands of files).
    types = [m & _S_IFMT for m in modes]
    digests = [d.lower() if t == _S_IFREG else "" for d, t in zip(digests, types)]
    linktos = [target if t == _S_IFLNK else "" for target, t in zip(linktos, types)]
    make = tuple.__new__
    return [make(FileEntry, row) for row in zip(
        paths, sizes, modes, rdevs, mtimes, digests, repeat(algo, n), linktos,
        _flag_objects(flags, FileFlag), users, groups, _flag_objects(vflags, VerifyFlag, _VERIFY_ALL),
        devices, inodes, langs, caps, colors)]


def sig_digests(sig: Header) -> dict[str, str]:
    """The header digests the signature header carries: hashlib name -> hex."""
    out = {}
    for tag, name in ((SigTag.SHA1, "sha1"), (SigTag.SHA256, "sha256"),
                      (SigTag.SHA3_256, "sha3_256")):
        e = sig.entries.get(tag)
        if e is None:
            continue
        if e.type != TagType.STRING:
            raise HeaderError(f"signature header: {SigTag(tag).name} digest has type {e.type.name}")
        out[name] = sig.string(tag).lower()
    return out
