"""Streaming reader of RPM payloads: decompression, cpio, and the header's file list.

An RPM payload is a cpio archive, compressed as the header's PAYLOADCOMPRESSOR
says.  :func:`read_payload` walks it member by member in bounded memory,
whatever the file sizes, and ties every member to the header entry it stands
for: the importer gets the header's :class:`~verifier.files.FileEntry` (the
signed, trusted path and metadata), never the name the archive carries.

Formats, as rpm reads them (``lib/cpio.cc``, ``lib/rpmfi.cc``, ``rpmio/rpmio.cc``):

- Compression: gzip (concatenated members), bzip2, xz (concatenated streams),
  lzma (``FORMAT_ALONE``), zstd (concatenated and skippable frames), none.
  rpmbuild writes no PAYLOADCOMPRESSOR for ``w*.ufdio`` and rpm then reads the
  payload as "gzip", which zlib passes through transparently when it is not
  gzip; so an absent tag or "gzip" accepts a plain cpio payload too (the corpus
  holds one such package, ``hello-reconstructed-uc``).  Every other
  disagreement between the tag and the payload's magic bytes is refused.
- cpio "newc" (magic ``070701``; ``070702`` too, its checksum ignored as rpm
  does): a 110-byte header of hex fields, the name (``./usr/bin/foo``), data.
  A name is matched against the header's file list as rpm does: one leading
  ``./`` and then one ``/`` are dropped and the rest compared with the path
  without its leading ``/`` (source packages carry bare names).
- rpm's *stripped* cpio (magic ``07070X``): an 8-hex-digit index into the
  header's file list and nothing else; the data size comes from the header.
  rpm writes it when the header has LONGFILESIZES (rpm 6 packages, files of
  4 GiB or more).  The archive still ends with a newc ``TRAILER!!!`` member.
- Every header and every member's data start on a 4-byte boundary.
- What a member carries (rpm's ``iterReadArchiveNext``): a regular file its
  bytes, except in a hardlink group, where only the group's *last* member in
  header order carries them and the others are empty; a symlink its target;
  anything else nothing.  ``%ghost`` files are not in payloads; an old one that
  is (rpm < 4.11 wrote some) is skipped, as rpm skips it.

The reader is stricter than rpm where rpm trusts what it reads: every hex
field must be 8 hex digits, the newc size must equal what the header implies,
padding must be zero, a symlink's target must equal the header's, a member may
appear once, every non-ghost file of the header must appear, members of a
hardlink group must agree in size and digest, and nothing but zero bytes may
follow the trailer or the last compressed frame.  Any of that, a truncated
stream or a decompressor error raises :class:`PayloadError`, with one line
saying what is wrong.  I/O errors of the underlying file propagate as OSError.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import re
import stat
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Self

import zstandard

from usrview.errors import UsrviewError
from verifier.files import FileEntry, FileFlag, digest_name
from verifier.header import Package, read_package_file
from verifier.tags import Tag

#: Size of the reads the reader makes and of the chunks it hands out.
CHUNK_SIZE = 1 << 20
#: Compressed input is read in smaller pieces: zlib copies its unconsumed input
#: on every call.
INPUT_CHUNK_SIZE = 256 << 10
#: rpm's CPIO_NAMESIZE_MAX: the longest name, its terminating NUL included.
MAX_NAME_SIZE = 4096
#: Memory an xz or lzma decoder may use (xz -9 needs 65 MiB); a hostile
#: dictionary size is refused rather than allocated.
LZMA_MEMLIMIT = 512 << 20
#: Largest zstd window accepted: libzstd's default limit (ZSTD_WINDOWLOG_LIMIT_DEFAULT).
ZSTD_MAX_WINDOW = 1 << 27

#: FileFlag.GHOST as a plain int (IntFlag's & costs a microsecond per call).
_GHOST = int(FileFlag.GHOST)

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"
STRIPPED_MAGIC = b"07070X"
TRAILER_NAME = b"TRAILER!!!"
#: A newc header after its magic: 13 fields of 8 hex digits.
NEWC_FIELDS_SIZE = 104
#: Zero bytes accepted after the cpio trailer: rpm pads to 4 bytes, GNU cpio to
#: 512; more would only let a small compressed payload cost much decompression.
MAX_TRAILER_PADDING = 64 << 10
#: A stripped header whose index is all ones ends the archive (rpm: fx == -1).
STRIPPED_END_INDEX = 0xFFFFFFFF
#: Field positions in a newc header, counted after the magic.
_FILESIZE = slice(48, 56)
_NAMESIZE = slice(88, 96)
_HEX_FIELDS = re.compile(rb"[0-9A-Fa-f]*")
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CPIO_MAGIC_PREFIX = b"07070"
#: zstd skippable frames: magic 0x184D2A50..0x184D2A5F, little-endian.
ZSTD_SKIPPABLE_MASK = 0xFFFFFFF0
ZSTD_SKIPPABLE_MAGIC = 0x184D2A50
#: lzma_alone's first byte packs lc/lp/pb: (pb * 5 + lp) * 9 + lc < 9 * 5 * 5.
LZMA_MAX_PROPS = 225

#: PAYLOADCOMPRESSOR values rpm understands (rpmio's findIOT: the name or the
#: io name), mapped to the format; None means plain ("ufdio").
COMPRESSORS: dict[str, str | None] = {
    "gzip": "gzip", "gzdio": "gzip",
    "bzip2": "bzip2", "bzdio": "bzip2",
    "xz": "xz", "xzdio": "xz",
    "lzma": "lzma", "lzdio": "lzma",
    "zstd": "zstd", "zstdio": "zstd",
    "ufdio": None, "fdio": None,
}


class PayloadError(UsrviewError):
    """A payload is malformed, truncated, or disagrees with its signed header."""


# -- compressed streams --------------------------------------------------------
#
# Each stream answers read(n) with 1..n decompressed bytes, or b"" once the
# payload has ended cleanly; it raises PayloadError on anything else.

class _Input:
    """The compressed bytes: what was read to detect the format, then the file."""

    def __init__(self, f: BinaryIO, prefix: bytes):
        self._f = f
        self._prefix = prefix

    def read(self, n: int = INPUT_CHUNK_SIZE) -> bytes:
        """Up to n bytes; b"" at the end of the file."""
        if self._prefix:
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return self._f.read(n)


class _PlainStream:
    """An uncompressed payload."""

    def __init__(self, inp: _Input):
        self._inp = inp

    def read(self, n: int) -> bytes:
        return self._inp.read(n)


class _ZlibAdapter:
    """zlib's decompressobj with the bz2/lzma interface (needs_input, max_length)."""

    def __init__(self):
        self._d = zlib.decompressobj(wbits=31)  # gzip framing only, as gzread
        self._tail = b""
        self.needs_input = True

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(self._tail + data if self._tail else data, max_length)
        self._tail = self._d.unconsumed_tail
        # With the output full, zlib may hold more: ask again before feeding.
        self.needs_input = not self._tail and len(out) < max_length
        return out

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data


_STDLIB = {
    "gzip": (GZIP_MAGIC, _ZlibAdapter, (zlib.error,)),
    "bzip2": (BZIP2_MAGIC, bz2.BZ2Decompressor, (OSError, EOFError, ValueError)),
    "xz": (XZ_MAGIC, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT),
           (lzma.LZMAError, EOFError)),
    "lzma": (None, lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=LZMA_MEMLIMIT),
             (lzma.LZMAError, EOFError)),
}


class _StdlibStream:
    """gzip, bzip2, xz or lzma through the standard library, one member after another.

    A member that ends is followed by another of the same format, by zero
    bytes (xz stream padding, tape padding), or by the end of the file.
    """

    def __init__(self, inp: _Input, fmt: str):
        self._inp = inp
        self._fmt = fmt
        self._magic, self._factory, self._errors = _STDLIB[fmt]
        self._dec = self._factory()
        self._pending = b""
        self._done = False

    def read(self, n: int) -> bytes:
        stalls = 0
        while not self._done:
            dec = self._dec
            if dec.eof:
                self._next_member(dec.unused_data + self._pending)
                continue
            data = b""
            if dec.needs_input:
                data, self._pending = self._pending or self._inp.read(), b""
                if not data:
                    raise PayloadError(f"{self._fmt} payload is truncated")
            try:
                out = dec.decompress(data, n)
            except self._errors as e:
                raise PayloadError(f"{self._fmt} payload is corrupt: {e}") from None
            if out:
                return out
            if not data:
                # No input given and no output: a decoder that neither wants
                # input nor yields output would spin forever.
                stalls += 1
                if stalls > 2:
                    raise PayloadError(f"{self._fmt} decoder made no progress")
        return b""

    def _next_member(self, rest: bytes) -> None:
        while True:
            rest = rest.lstrip(b"\0")
            if rest:
                break
            rest = self._inp.read()
            if not rest:
                self._done = True
                return
        if self._magic is None or not rest.startswith(self._magic[:len(rest)]):
            raise PayloadError(f"trailing data after the {self._fmt} payload")
        self._dec = self._factory()
        self._pending = rest


class _ZstdStream:
    """zstd frames, decoded block by block so that no call yields more than a block.

    ``ZstdDecompressionObj.decompress`` returns all the output of its input at
    once, and a few input bytes can stand for 128 KiB of output: feeding it one
    block at a time (found by reading the frame and block headers, RFC 8878)
    bounds memory, and tells where frames end, hence truncation and trailing
    garbage, which ``stream_reader`` does not report.
    """

    _FCS_SIZES = (0, 2, 4, 8)
    _DID_SIZES = (0, 1, 2, 4)

    def __init__(self, inp: _Input):
        self._inp = inp
        self._buf = b""
        self._pos = 0
        self._dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self._dobj = None
        self._checksum = False
        self._frames = 0
        self._done = False

    def _fill(self, n: int) -> bool:
        """Make n bytes available at _pos; False at the end of the input."""
        while len(self._buf) - self._pos < n:
            data = self._inp.read(max(INPUT_CHUNK_SIZE, n))
            if not data:
                return False
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
        return True

    def _take(self, n: int, what: str) -> memoryview:
        if not self._fill(n):
            raise PayloadError(f"zstd payload is truncated (in a {what})")
        view = memoryview(self._buf)[self._pos:self._pos + n]
        self._pos += n
        return view

    def _skip(self, n: int) -> None:
        while n:
            if not self._fill(1):
                raise PayloadError("zstd payload is truncated (in a skippable frame)")
            step = min(n, len(self._buf) - self._pos)
            self._pos += step
            n -= step

    def _decode(self, data) -> bytes:
        try:
            return self._dobj.decompress(data)
        except zstandard.ZstdError as e:
            raise PayloadError(f"zstd payload is corrupt: {e}") from None

    def read(self, n: int) -> bytes:
        """The output of the next block(s): at most 128 KiB, which may exceed n."""
        while not self._done:
            if self._dobj is None:
                self._frame_header()
                continue
            if not self._fill(3):
                raise PayloadError("zstd payload is truncated (in a block header)")
            head = int.from_bytes(self._buf[self._pos:self._pos + 3], "little")
            last, btype, bsize = head & 1, (head >> 1) & 3, head >> 3
            if btype == 3:
                raise PayloadError("zstd payload is corrupt: reserved block type")
            out = self._decode(self._take(3 + (1 if btype == 1 else bsize), "block"))
            if last:
                if self._checksum:
                    out += self._decode(self._take(4, "frame checksum"))
                if not self._dobj.eof:
                    raise PayloadError("zstd payload is corrupt: frame does not end after its last block")
                self._dobj = None
                self._frames += 1
            if out:
                return out
        return b""

    def _frame_header(self) -> None:
        # Zero bytes may pad the end of the payload (or lie between frames).
        while True:
            if not self._fill(1):
                if not self._frames:
                    raise PayloadError("zstd payload has no frame")
                self._done = True
                return
            rest = self._buf[self._pos:].lstrip(b"\0")
            self._pos = len(self._buf) - len(rest)
            if rest:
                break
        self._fill(4)
        magic = self._buf[self._pos:self._pos + 4]
        if len(magic) == 4 and int.from_bytes(magic, "little") & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE_MAGIC:
            self._take(4, "skippable frame")
            self._skip(int.from_bytes(self._take(4, "skippable frame"), "little"))
            return
        if magic != ZSTD_MAGIC:
            if len(magic) < 4 and ZSTD_MAGIC.startswith(magic):
                raise PayloadError("zstd payload is truncated (in a frame magic)")
            raise PayloadError("trailing data after the zstd payload" if self._frames else
                               "zstd payload is corrupt: bad frame magic")
        if not self._fill(5):
            raise PayloadError("zstd payload is truncated (in a frame header)")
        fhd = self._buf[self._pos + 4]
        single = (fhd >> 5) & 1
        size = (5 + (0 if single else 1) + self._DID_SIZES[fhd & 3]
                + (self._FCS_SIZES[fhd >> 6] or single))
        self._checksum = bool(fhd & 4)
        self._dobj = self._dctx.decompressobj()
        self._decode(self._take(size, "frame header"))


def detect_format(head: bytes) -> str | None:
    """The payload format that magic bytes show: gzip, bzip2, xz, zstd, cpio, lzma, or None.

    lzma has no magic: it is only ever a guess from a plausible properties byte.
    """
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(BZIP2_MAGIC) and head[3:4].isdigit() and head[3:4] != b"0":
        return "bzip2"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(ZSTD_MAGIC) or (
            len(head) >= 4 and int.from_bytes(head[:4], "little") & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE_MAGIC):
        return "zstd"
    if head.startswith(CPIO_MAGIC_PREFIX):
        return "cpio"
    if head and head[0] < LZMA_MAX_PROPS:
        return "lzma"
    return None


def _open_stream(f: BinaryIO, package: Package):
    """The decompressed payload of ``f``, as the header says and the bytes agree."""
    fmt = package.header.string(Tag.PAYLOADFORMAT, "cpio")
    if fmt != "cpio":
        raise PayloadError(f"unsupported payload format {fmt!r}")
    tag = package.header.string(Tag.PAYLOADCOMPRESSOR)
    if tag is None:
        declared: str | None = "gzip"  # rpm's default, which reads plain payloads too
    elif tag in COMPRESSORS:
        declared = COMPRESSORS[tag]
    else:
        raise PayloadError(f"unknown payload compressor {tag!r}")
    head = f.read(CHUNK_SIZE)
    while 0 < len(head) < 8:  # a raw file may return short reads
        more = f.read(CHUNK_SIZE)
        if not more:
            break
        head += more
    if not head:
        raise PayloadError("the package has no payload")
    actual = detect_format(head[:8])
    wanted = declared or "cpio"
    ok = actual == wanted or (wanted == "gzip" and actual == "cpio")
    if wanted == "lzma":
        ok = actual == "lzma"
    if not ok:
        what = "unrecognised data" if actual is None else f"{actual} data"
        raise PayloadError(f"payload is {what} but the header says {tag or 'gzip (default)'}")
    inp = _Input(f, head)
    if actual == "cpio":
        return _PlainStream(inp), "none"
    if actual == "zstd":
        return _ZstdStream(inp), "zstd"
    return _StdlibStream(inp, actual), actual


# -- the cpio layer -----------------------------------------------------------

class _Archive:
    """The decompressed bytes with a small look-ahead buffer and the offset read."""

    def __init__(self, stream):
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self.offset = 0

    def exact(self, n: int, what: str) -> bytes:
        """n bytes, or PayloadError when the payload ends before."""
        avail = len(self._buf) - self._pos
        while avail < n:
            data = self._stream.read(CHUNK_SIZE)
            if not data:
                raise PayloadError(f"payload is truncated (in {what} at offset {self.offset + avail})")
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
            avail = len(self._buf)
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        self.offset += n
        return out

    def some(self, n: int) -> bytes:
        """1..n bytes, or b"" at the end of the payload."""
        if self._pos >= len(self._buf):
            out = self._stream.read(n)
            if len(out) <= n:
                self.offset += len(out)
                return out
            self._buf, self._pos = out, 0  # a zstd block overshot n: keep the rest
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        self.offset += len(out)
        return out

    def skip(self, n: int, what: str) -> None:
        while n:
            data = self.some(min(n, CHUNK_SIZE))
            if not data:
                raise PayloadError(f"payload is truncated (in {what} at offset {self.offset})")
            n -= len(data)

    def pad(self, what: str) -> None:
        """Skip to the next 4-byte boundary over zero bytes."""
        n = -self.offset % 4
        if n and self.exact(n, what) != b"\0" * n:
            raise PayloadError(f"non-zero padding after {what} at offset {self.offset - n}")


def _hex(field: bytes, what: str, offset: int) -> int:
    if not _HEX8.fullmatch(field):
        raise PayloadError(f"bad hex field in {what} at offset {offset}: {field!r}")
    return int(field, 16)


def hardlink_groups(package: Package) -> dict[int, tuple[int, ...]]:
    """File index -> its hardlink group (indexes in header order), as rpm builds them.

    rpm (``rpmfilesBuildNLink``) links regular, non-ghost files with equal
    (FILEDEVICES, FILEINODES) and a non-zero inode, and none at all when either
    tag is absent.  Files in no group are absent from the result.
    """
    header = package.header
    if Tag.FILEINODES not in header or Tag.FILEDEVICES not in header:
        return {}
    sets: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(package.files):
        if f.inode != 0 and stat.S_ISREG(f.mode) and not int(f.flags) & _GHOST:
            sets.setdefault((f.device, f.inode), []).append(i)
    groups = {}
    for members in sets.values():
        if len(members) > 1:
            group = tuple(members)
            for i in group:
                groups[i] = group
    return groups


class Member:
    """One payload member: a file of the header and the bytes the payload holds for it.

    Attributes:
        index: the file's index in ``package.files``.
        entry: the header's FileEntry: path, type, mode, size, digest ... (trusted).
        name: the name the archive carries (newc), or None (stripped format); for
            messages only.
        size: how many data bytes the payload holds for this member: a regular
            file's size, 0 for a hardlink that does not carry the group's bytes,
            the target's length for a symlink, 0 for anything else.
        hardlinks: the file's hardlink group (indexes, header order), or ().
        has_content: True for a regular file whose bytes are here: one outside
            any group, or its group's last member.  Write the bytes once, with
            this member, and link the group's other paths to it.
        remaining: data bytes not read yet (nor skipped by moving to the next
            member: reading a member left behind raises ValueError).
    """

    __slots__ = (
        "_reader",
        "_target",
        "entry",
        "hardlinks",
        "has_content",
        "index",
        "name",
        "remaining",
        "size",
    )

    def __init__(self, reader: PayloadReader, index: int, entry: FileEntry, name: str | None,
                 size: int, hardlinks: tuple[int, ...], target: bytes | None = None):
        self._reader = reader
        self.index = index
        self.entry = entry
        self.name = name
        self.size = size
        self.hardlinks = hardlinks
        self.has_content = stat.S_ISREG(entry.mode) and (not hardlinks or hardlinks[-1] == index)
        self._target = target
        self.remaining = 0 if target is not None else size

    @property
    def path(self) -> str:
        """The header's path of the file (trusted), not the archive's name."""
        return self.entry.path

    def __repr__(self) -> str:
        return f"<Member {self.index} {self.entry.path!r} size={self.size}>"

    def _check_current(self) -> None:
        if self._reader._member is not self:
            raise ValueError("payload member read after the reader moved past it")

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes of data (all that is left when n < 0); b"" at its end.

        Fewer than n bytes only at the end of the member.
        """
        if self._target is not None:
            data = self._target if n < 0 else self._target[:n]
            self._target = self._target[len(data):]
            return data
        n = self.remaining if n < 0 else min(n, self.remaining)
        if n:
            self._check_current()
        parts = []
        while n:
            data = self._reader._data(self, n)
            parts.append(data)
            n -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def chunks(self, chunk_size: int = CHUNK_SIZE, *, verify: bool = False) -> Iterator[bytes]:
        """The data in pieces of at most ``chunk_size`` bytes.

        With ``verify``, a member that has content is hashed as it goes and
        PayloadError is raised after its last piece when the bytes do not match
        the header's digest (see :class:`DigestCheck`).
        """
        check = DigestCheck(self.entry) if verify and self.has_content else None
        if self._target is not None:
            data = self.read()
            if data:
                yield data
            return
        while self.remaining:
            self._check_current()
            data = self._reader._data(self, min(chunk_size, self.remaining))
            if check is not None:
                check.update(data)
            yield data
        if check is not None:
            check.verify()


class DigestCheck:
    """Hashes a regular file's bytes with the header's algorithm and compares.

    As rpm (``rpmfiArchiveReadToFilePsm``): a file whose header has no digest
    fails; an empty file whose MD5 digest is all zeros (old packages) passes.
    """

    def __init__(self, entry: FileEntry):
        self.entry = entry
        name = digest_name(entry.digest_algo)
        if name is None:
            raise PayloadError(f"{entry.path}: unsupported file digest algorithm {entry.digest_algo}")
        self._hash = hashlib.new(name)
        self._size = 0

    def update(self, data) -> None:
        self._hash.update(data)
        self._size += len(data)

    def verify(self) -> None:
        entry = self.entry
        want = entry.digest
        got = self._hash.hexdigest()
        if got == want:
            return
        if self._size == 0 and entry.digest_algo == 1 and want and not want.strip("0"):
            return
        if not want:
            raise PayloadError(f"{entry.path}: the header has no digest for this file")
        raise PayloadError(f"{entry.path}: {self._hash.name} digest of the payload's bytes is "
                           f"{got}, the header says {want}")


class PayloadReader:
    """Iterates over the members of a package's payload, in payload order.

    Members must be consumed in order: moving to the next one skips what is
    left of the current one.  Iteration ends after the trailer, once the rest
    of the payload has been checked (zero bytes only) and every non-ghost file
    of the header was found; otherwise it raises PayloadError.

    Attributes:
        package: the package whose header describes the payload.
        compressor: the compression found: gzip, bzip2, xz, lzma, zstd or none.
    """

    def __init__(self, fileobj: BinaryIO, package: Package, *, close_file: bool = False):
        self.package = package
        self._file = fileobj if close_file else None
        self._files = package.files
        self._member: Member | None = None
        self._error: PayloadError | None = None
        self._ended = False
        self._seen = bytearray(len(self._files))
        self._groups = hardlink_groups(package)
        self._check_groups()
        rel: dict[str, int] = {}
        for i, f in enumerate(self._files):
            rel.setdefault(f.path.removeprefix("/"), i)
        self._by_name = rel
        stream, self.compressor = _open_stream(fileobj, package)
        self._archive = _Archive(stream)

    def _check_groups(self) -> None:
        files = self._files
        for index, group in self._groups.items():
            first = files[group[0]]
            f = files[index]
            if (f.size, f.digest, f.digest_algo) != (first.size, first.digest, first.digest_algo):
                raise PayloadError(f"hardlinked files {first.path} and {f.path} differ in "
                                   f"size or digest in the header")

    # -- iteration

    def __iter__(self) -> PayloadReader:
        return self

    def __next__(self) -> Member:
        if self._error is not None:
            raise self._error
        if self._ended:
            raise StopIteration
        try:
            member = self._next()
        except PayloadError as e:
            self._error = e
            self.close()
            raise
        if member is None:
            self._ended = True
            self.close()
            raise StopIteration
        return member

    def close(self) -> None:
        self._member = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- parsing

    def _data(self, member: Member, n: int) -> bytes:
        try:
            data = self._archive.some(n)
            if not data:
                raise PayloadError(f"payload is truncated (in the data of {member.path})")
        except PayloadError as e:
            self._error = e
            self.close()
            raise
        member.remaining -= len(data)
        return data

    def _next(self) -> Member | None:
        arc = self._archive
        prev = self._member
        if prev is not None:
            self._member = None
            if prev.remaining:  # left as it is: a late read raises ValueError
                arc.skip(prev.remaining, f"the data of {prev.path}")
            arc.pad(f"the data of {prev.path}")
        while True:
            start = arc.offset
            magic = arc.exact(6, "a cpio header")
            if magic == STRIPPED_MAGIC:
                index = _hex(arc.exact(8, "a cpio header"), "a stripped cpio header", start)
                arc.pad("a stripped cpio header")
                if index == STRIPPED_END_INDEX:
                    self._finish()
                    return None
                if index >= len(self._files):
                    raise PayloadError(f"file index {index} at offset {start} is out of range "
                                       f"(the header lists {len(self._files)} files)")
                name, cpio_size = None, None
            elif magic in (NEWC_MAGIC, CRC_MAGIC):
                fields = arc.exact(NEWC_FIELDS_SIZE, "a cpio header")
                if not _HEX_FIELDS.fullmatch(fields):
                    raise PayloadError(f"bad hex field in the cpio header at offset {start}")
                cpio_size = int(fields[_FILESIZE], 16)
                namesize = int(fields[_NAMESIZE], 16)
                if not 2 <= namesize <= MAX_NAME_SIZE:
                    raise PayloadError(f"bad name size {namesize} in the cpio header at offset {start}")
                raw = arc.exact(namesize, "a cpio name")
                if raw[-1] != 0 or 0 in raw[:-1]:
                    raise PayloadError(f"cpio name at offset {start} is not one NUL-terminated string")
                arc.pad("a cpio name")
                raw = raw[:-1]
                if raw == TRAILER_NAME:
                    if cpio_size:
                        raise PayloadError("the cpio trailer has data")
                    self._finish()
                    return None
                name = raw.decode("utf-8", "surrogateescape")
                rel = name.removeprefix("./")
                rel = rel.removeprefix("/")
                index = self._by_name.get(rel)
                if index is None:
                    raise PayloadError(f"payload member {name!r} is not in the header's file list")
            else:
                raise PayloadError(f"bad cpio magic {magic!r} at offset {start}")

            entry = self._files[index]
            where = entry.path
            if self._seen[index]:
                raise PayloadError(f"{where} appears twice in the payload")
            self._seen[index] = 1
            if int(entry.flags) & _GHOST:
                # rpm < 4.11 put some %ghost files in payloads; rpm skips them
                if cpio_size:
                    arc.skip(cpio_size, f"the data of {where}")
                    arc.pad(f"the data of {where}")
                continue
            group = self._groups.get(index, ())
            mode = entry.mode
            target = None
            if stat.S_ISREG(mode):
                size = entry.size if not group or group[-1] == index else 0
            elif stat.S_ISLNK(mode):
                target = entry.linkto.encode("utf-8", "surrogateescape")
                size = entry.size
                if size != len(target):
                    raise PayloadError(f"{where}: the header's size {size} is not the length "
                                       f"of its symlink target ({len(target)})")
            else:
                size = 0
            if cpio_size is not None and cpio_size != size:
                raise PayloadError(f"{where}: the payload holds {cpio_size} bytes, "
                                   f"the header implies {size}")
            if target is not None:
                data = arc.exact(size, f"the symlink target of {where}") if size else b""
                if data != target:
                    raise PayloadError(f"{where}: symlink target in the payload {data!r} differs "
                                       f"from the header's {entry.linkto!r}")
                member = Member(self, index, entry, name, size, group, target=data)
            else:
                member = Member(self, index, entry, name, size, group)
            self._member = member
            return member

    def _finish(self) -> None:
        """After the trailer: only zeros may follow, and every file must have been seen."""
        arc = self._archive
        end = arc.offset
        while True:
            data = arc.some(CHUNK_SIZE)
            if not data:
                break
            if data.count(0) != len(data):
                raise PayloadError(f"data after the cpio trailer (at offset {arc.offset - len(data)})")
            if arc.offset - end > MAX_TRAILER_PADDING:
                raise PayloadError(f"more than {MAX_TRAILER_PADDING} bytes of padding after the cpio trailer")
        missing = [f.path for i, f in enumerate(self._files) if not self._seen[i] and not int(f.flags) & _GHOST]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise PayloadError(f"the payload lacks {missing[0]}{more}")


def read_payload(fileobj: BinaryIO, package: Package) -> PayloadReader:
    """Members of the payload read from ``fileobj``, which is at the payload's start.

    ``package`` is the package's parsed header (:func:`verifier.header.read_package_file`);
    the payload is read to the end of ``fileobj``.  The file is not closed.
    """
    return PayloadReader(fileobj, package)


def open_payload(path: str | os.PathLike, package: Package | None = None) -> PayloadReader:
    """Members of the payload of the package file at ``path``.

    ``package`` defaults to the file's own header.  The reader owns the file
    and closes it at the end of the iteration, on an error, or on ``close()``
    (also a context manager).
    """
    if package is None:
        package = read_package_file(path)
    f = open(path, "rb")  # noqa: SIM115 -- the reader owns it and closes it
    try:
        f.seek(package.payload_offset)
        return PayloadReader(f, package, close_file=True)
    except BaseException:
        f.close()
        raise
