"""Streaming reader of RPM payloads: cpio and the header's file list, over the
decompressed stream of :mod:`usrview.store.decompress`.

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

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from typing import BinaryIO, Self

from usrview.store.decompress import CHUNK_SIZE, PayloadError, open_stream
from verifier.files import FileEntry, FileFlag, digest_name
from verifier.header import Package, read_package_file
from verifier.tags import Tag

#: rpm's CPIO_NAMESIZE_MAX: the longest name, its terminating NUL included.
MAX_NAME_SIZE = 4096
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
        stream, self.compressor = open_stream(fileobj, package)
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
