"""The repository layout and the image index: what ``publish`` writes and ``pull`` reads.

A repository is a plain directory that any web server or CDN serves as files
(docs/images.md, "Images from a server", is the reference)::

    REPO/usrview-repo                    "usrview-repo 1\\n"
    REPO/objects/sha256/AB/HEX.rpm       an rpm, named by the SHA-256 of its bytes (immutable)
    REPO/objects/files/ALGO/AB/HEX.zst   with ``publish --file-objects``: a regular file of a
                                         package, named by its digest (ALGO: the header's digest
                                         algorithm, sha256 or stronger), compressed alone with
                                         zstd (immutable)
    REPO/objects/files/heads/AB/HEX.zst  with ``publish --file-objects``: the bytes before the
                                         payload of the rpm whose SHA-256 is HEX (lead, signature
                                         header, header), compressed with zstd (immutable)
    REPO/objects/files/heads/deltas/AB/OLD-HEX.zst
                                         with ``publish --file-objects``, for a package whose
                                         name an earlier index of the image had at another
                                         version: the same bytes as ``heads/AB/HEX.zst``,
                                         compressed with zstd using as a dictionary the header
                                         the store keeps of that version (OLD: its header
                                         SHA-256) (immutable)
    REPO/objects/heads/AB/HEX.zst        the heads of an index's packages (the bytes before each
                                         rpm's payload, in the index's order, concatenated and
                                         compressed with zstd as one frame), named by the SHA-256
                                         of the compressed bytes (immutable)
    REPO/images/NAME/SERIAL.json         image index number SERIAL of the image NAME (immutable)
    REPO/images/NAME/SERIAL.json.sig     its detached OpenPGP signature (immutable)
    REPO/images/NAME/latest              "SERIAL\\n": the newest index (replaced by one rename)
    REPO/.lock, REPO/.tmp/               publish's lock and temp files (not served)

Every file but ``latest`` is immutable once written, so caches may keep it for
ever; ``latest`` is the one short-lived name, and it is not trusted: the index
it names is signed, and pull refuses a serial older than the last it accepted.

An image index (JSON)::

    {"format": 1, "name": NAME, "serial": N, "issued": ISO-8601 UTC, "expires": ISO-8601 UTC,
     "packages": [{"nevra", "header_sha256", "rpm_sha256", "size", "header_length", "path",
                   "head_sha256", "head_deltas": [OLD, ...]}, ...],
     "file_objects": "objects/files",
     "heads": {"path": "objects/heads/AB/HEX.zst", "sha256": HEX, "size": N}}

``head_sha256`` is the SHA-256 of the package's *head*: its bytes before the
payload (lead, signature header, main header), the bytes a store keeps of it.
Pull checks every head against it before it uses one, wherever the head came
from (a Range request, ``heads/``, a header delta, the packed heads): a source
cannot substitute another signature header, even one validly signed by another
trusted key.  Indexes written before it was added lack it; they are still read,
and pull then fetches every package of theirs as its whole rpm (whose SHA-256
pins the head), never file by file.

``heads`` (optional) names the packed heads object: what pull fetches, in one
request, instead of one request per head when the store lacks many of the
image's packages.  Its SHA-256 and size are the compressed object's; an index
with ``heads`` gives every package a ``head_sha256``.

``file_objects`` (optional) says that the repository holds every regular file of
every package of the index as a file object, and under which directory (relative
to the root): pull may then fetch a package's files one by one, only those the
store lacks (:mod:`usrview.remote.delta`), instead of its rpm.

``head_deltas`` (optional) lists the header SHA-256s of the earlier versions of
the package the repository has a header delta from (``heads/deltas/``): a store
holding one of them fetches the delta, decompresses it against the header it
keeps, and uses the result only when it is the index's header (else it fetches the
whole compressed header).

``header_length`` is the number of bytes before the payload (lead, signature
header, main header): what a Range request fetches to check a package's
signature before a byte of its payload.  ``path`` is relative to the
repository's root.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from usrview.errors import EXIT_FINDINGS, OperationalError, UsrviewError
from usrview.store import StoreError, make_pkgid

#: The repository's marker file and its one line.
REPO_MARKER = "usrview-repo"
REPO_FORMAT_LINE = "usrview-repo 1\n"
OBJECTS_DIR = "objects/sha256"
FILE_OBJECTS_DIR = "objects/files"
FILE_OBJECT_SUFFIX = ".zst"
HEADS_DIR = "heads"
#: Where publish writes an index's packed heads (one object per distinct set of heads).
PACKED_HEADS_DIR = "objects/heads"
DELTAS_DIR = "deltas"
#: The file digests file objects are named by: SHA-256 and stronger (a weaker one,
#: MD5 or SHA-1, does not bind a name to its bytes; such packages come whole).
FILE_OBJECT_ALGOS = {8: "sha256", 9: "sha384", 10: "sha512"}
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
IMAGES_DIR = "images"
LATEST = "latest"
INDEX_SUFFIX = ".json"
SIGNATURE_SUFFIX = ".sig"
RPM_SUFFIX = ".rpm"
LOCK_FILE = ".lock"
TMP_DIR = ".tmp"
#: The version of the index format; an index of another version is refused.
INDEX_FORMAT = 1
#: The largest index, signature and ``latest`` file pull reads (bytes).
MAX_INDEX_BYTES = 64 << 20
MAX_SIGNATURE_BYTES = 64 << 10
MAX_LATEST_BYTES = 64

#: What pull does unless told otherwise (here, so the command line need not import HTTP).
DEFAULT_IMAGE = "stable"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
#: Packages fetched at a time.
DEFAULT_JOBS = 4

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_PATH_RE = re.compile(r"^[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*$")


class IndexRefused(UsrviewError):
    """An image index that may not be used: bad signature, expired, replayed, malformed."""

    exit_code = EXIT_FINDINGS


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise OperationalError(f"image name {name!r}: use letters, digits, '.', '_' and '-' "
                               "(64 at most, not starting with a punctuation mark)")
    return name


def object_path(rpm_sha256: str) -> str:
    return f"{OBJECTS_DIR}/{rpm_sha256[:2]}/{rpm_sha256}{RPM_SUFFIX}"


def file_object_name(algo: int, digest: str) -> str | None:
    """``ALGO/AB/HEX.zst``: the file object of a file with this digest, below the
    index's ``file_objects`` directory; None when the digest names no file object
    (a weak algorithm, or not lowercase hex of the algorithm's length)."""
    name = FILE_OBJECT_ALGOS.get(algo)
    if name is None or len(digest) != _HEX_LENGTHS[name] or not _HEX_RE.match(digest):
        return None
    return f"{name}/{digest[:2]}/{digest}{FILE_OBJECT_SUFFIX}"


def head_object_name(rpm_sha256: str) -> str:
    """``heads/AB/HEX.zst``: the compressed header of the rpm ``rpm_sha256``, below the
    index's ``file_objects`` directory."""
    return f"{HEADS_DIR}/{rpm_sha256[:2]}/{rpm_sha256}{FILE_OBJECT_SUFFIX}"


def head_delta_name(old_header_sha256: str, rpm_sha256: str) -> str:
    """``heads/deltas/AB/OLD-HEX.zst``: the header of the rpm ``rpm_sha256`` compressed against
    the stored header (:func:`verifier.headerfile.canonical_header_only`) of the package whose
    header SHA-256 is ``old_header_sha256``, below the index's ``file_objects`` directory."""
    if not (_SHA256_RE.match(old_header_sha256) and _SHA256_RE.match(rpm_sha256)):
        raise ValueError("a header delta is named by two SHA-256s")
    return f"{HEADS_DIR}/{DELTAS_DIR}/{rpm_sha256[:2]}/{old_header_sha256}-{rpm_sha256}{FILE_OBJECT_SUFFIX}"


def index_path(name: str, serial: int) -> str:
    return f"{IMAGES_DIR}/{name}/{serial}{INDEX_SUFFIX}"


def latest_path(name: str) -> str:
    return f"{IMAGES_DIR}/{name}/{LATEST}"


def parse_latest(data: bytes) -> int:
    text = data.decode("ascii", "replace").strip()
    if not text.isdigit() or len(text) > 18:
        raise IndexRefused(f"the repository's {LATEST} file is not a serial number: {text[:20]!r}")
    return int(text)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class IndexEntry:
    """One package of an image index.

    Attributes: nevra, header_sha256 (of the signed header region, as the store
    names packages), rpm_sha256 (of the whole file), size (of the whole file),
    header_length (bytes before the payload), path (relative to the repository root),
    head_deltas (header SHA-256s of earlier versions the repository has a header delta from),
    head_sha256 (of the bytes before the payload; None in an index written before it was added).
    """

    nevra: str
    header_sha256: str
    rpm_sha256: str
    size: int
    header_length: int
    path: str
    head_deltas: tuple[str, ...] = ()
    head_sha256: str | None = None

    @property
    def pkgid(self) -> str:
        return make_pkgid(self.nevra, self.header_sha256)

    def to_json(self) -> dict:
        doc = {"nevra": self.nevra, "header_sha256": self.header_sha256, "rpm_sha256": self.rpm_sha256,
               "size": self.size, "header_length": self.header_length, "path": self.path}
        if self.head_deltas:
            doc["head_deltas"] = list(self.head_deltas)
        if self.head_sha256 is not None:
            doc["head_sha256"] = self.head_sha256
        return doc


@dataclass(frozen=True)
class PackedHeads:
    """The packed heads object of an index: path (relative to the root), sha256 and
    size (of its compressed bytes)."""

    path: str
    sha256: str
    size: int

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def packed_heads_path(sha256: str) -> str:
    return f"{PACKED_HEADS_DIR}/{sha256[:2]}/{sha256}{FILE_OBJECT_SUFFIX}"


@dataclass(frozen=True)
class ImageIndex:
    """An image index: attributes name, serial, issued, expires (aware datetimes), packages,
    file_objects (the directory of the file objects, relative to the root; None: none),
    heads (the packed heads object; None: none)."""

    name: str
    serial: int
    issued: datetime
    expires: datetime
    packages: tuple[IndexEntry, ...]
    file_objects: str | None = None
    heads: PackedHeads | None = None

    def to_json(self) -> dict:
        doc = {"format": INDEX_FORMAT, "name": self.name, "serial": self.serial,
               "issued": format_time(self.issued), "expires": format_time(self.expires),
               "packages": [p.to_json() for p in self.packages]}
        if self.file_objects is not None:
            doc["file_objects"] = self.file_objects
        if self.heads is not None:
            doc["heads"] = self.heads.to_json()
        return doc

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode()


def _time(value, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise IndexRefused(f"image index: {what} is not an ISO 8601 time with a zone: {value!r}")
    return when


def _relative_path(path: str) -> bool:
    """Whether ``path`` names something inside the repository (no ``..``, not absolute)."""
    return bool(_PATH_RE.match(path)) and ".." not in path.split("/")


def _entry(item) -> IndexEntry:
    if not isinstance(item, dict):
        raise IndexRefused("image index: a package is not an object")
    ints = {k: item.get(k) for k in ("size", "header_length")}
    strs = {k: item.get(k) for k in ("nevra", "header_sha256", "rpm_sha256", "path")}
    if (not all(type(v) is int for v in ints.values()) or not all(isinstance(v, str) for v in strs.values())
            or not 0 < ints["header_length"] <= ints["size"]):
        raise IndexRefused(f"image index: package {strs.get('nevra')!r} is malformed")
    deltas = item.get("head_deltas", [])
    if not isinstance(deltas, list) or not all(isinstance(d, str) and _SHA256_RE.match(d) for d in deltas):
        raise IndexRefused(f"image index: package {strs.get('nevra')!r} has malformed head_deltas")
    head = item.get("head_sha256")
    entry = IndexEntry(strs["nevra"], strs["header_sha256"], strs["rpm_sha256"], ints["size"],
                       ints["header_length"], strs["path"], tuple(deltas), head)
    if not (_SHA256_RE.match(entry.header_sha256) and _SHA256_RE.match(entry.rpm_sha256)
            and (head is None or (isinstance(head, str) and _SHA256_RE.match(head)))):
        raise IndexRefused(f"image index: package {entry.nevra!r} has a malformed SHA-256")
    if not _relative_path(entry.path):
        raise IndexRefused(f"image index: package {entry.nevra!r} has a path outside the repository: "
                           f"{entry.path!r}")
    try:
        entry.pkgid  # noqa: B018 - checks the NEVRA can name a stored package
    except StoreError as e:
        raise IndexRefused(f"image index: {e}") from None
    return entry


def parse_index(data: bytes) -> ImageIndex:
    """The index in ``data``; IndexRefused when it is not one this usrview reads."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexRefused(f"image index is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise IndexRefused(f"image index has format {fmt!r}; this usrview reads format {INDEX_FORMAT}")
    name, serial, packages = doc.get("name"), doc.get("serial"), doc.get("packages")
    if not isinstance(name, str) or type(serial) is not int or serial < 1 or not isinstance(packages, list):
        raise IndexRefused("image index: name, serial or packages malformed")
    entries = tuple(_entry(p) for p in packages)
    if len({e.pkgid for e in entries}) != len(entries):
        raise IndexRefused("image index lists a package twice")
    file_objects = doc.get("file_objects")
    if file_objects is not None and not (isinstance(file_objects, str) and _relative_path(file_objects)):
        raise IndexRefused(f"image index: file_objects is not a directory inside the repository: "
                           f"{str(file_objects)[:80]!r}")
    return ImageIndex(name, serial, _time(doc.get("issued"), "issued"), _time(doc.get("expires"), "expires"),
                      entries, file_objects, _packed_heads(doc.get("heads"), entries))


def _packed_heads(item, entries: tuple[IndexEntry, ...]) -> PackedHeads | None:
    if item is None:
        return None
    if not isinstance(item, dict):
        raise IndexRefused("image index: heads is not an object")
    heads = PackedHeads(item.get("path"), item.get("sha256"), item.get("size"))
    if (not isinstance(heads.path, str) or not _relative_path(heads.path) or not isinstance(heads.sha256, str)
            or not _SHA256_RE.match(heads.sha256) or type(heads.size) is not int or heads.size < 1):
        raise IndexRefused(f"image index: heads is malformed: {str(item)[:80]!r}")
    if any(e.head_sha256 is None for e in entries):
        raise IndexRefused("image index: packed heads, but a package without head_sha256")
    return heads
