"""The decompressed stream of an RPM payload, as the header's
PAYLOADCOMPRESSOR says and the payload's magic bytes agree: gzip (concatenated
members), bzip2, xz (concatenated streams), lzma (``FORMAT_ALONE``), zstd
(concatenated and skippable frames) or none, each read in bounded memory
(:mod:`usrview.store.payload` documents the formats as rpm reads them).

Each stream answers read(n) with 1..n decompressed bytes, or b"" once the
payload has ended cleanly; it raises :class:`PayloadError` on anything else.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import BinaryIO

import zstandard

from usrview.errors import UsrviewError
from verifier.header import Package
from verifier.tags import Tag

#: Size of the reads the reader makes and of the chunks it hands out.
CHUNK_SIZE = 1 << 20
#: Compressed input is read in smaller pieces: zlib copies its unconsumed input
#: on every call.
INPUT_CHUNK_SIZE = 256 << 10
#: Memory an xz or lzma decoder may use (xz -9 needs 65 MiB); a hostile
#: dictionary size is refused rather than allocated.
LZMA_MEMLIMIT = 512 << 20
#: Largest zstd window accepted: libzstd's default limit (ZSTD_WINDOWLOG_LIMIT_DEFAULT).
ZSTD_MAX_WINDOW = 1 << 27

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


def open_stream(f: BinaryIO, package: Package):
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
