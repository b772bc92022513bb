"""The repository layout and the image index: what ``publish`` writes and ``pull`` reads.

A repository is a plain directory that any web server or CDN serves as files
(docs/images.md, "Images from a server", is the reference)::

    REPO/usrview-repo                    "usrview-repo 1\\n"
    REPO/objects/sha256/AB/HEX.rpm       an rpm, named by the SHA-256 of its bytes (immutable)
    REPO/images/NAME/SERIAL.json         image index number SERIAL of the image NAME (immutable)
    REPO/images/NAME/SERIAL.json.sig     its detached OpenPGP signature (immutable)
    REPO/images/NAME/latest              "SERIAL\\n": the newest index (replaced by one rename)
    REPO/.lock, REPO/.tmp/               publish's lock and temp files (not served)

Every file but ``latest`` is immutable once written, so caches may keep it for
ever; ``latest`` is the one short-lived name, and it is not trusted: the index
it names is signed, and pull refuses a serial older than the last it accepted.

An image index (JSON)::

    {"format": 1, "name": NAME, "serial": N, "issued": ISO-8601 UTC, "expires": ISO-8601 UTC,
     "packages": [{"nevra", "header_sha256", "rpm_sha256", "size", "header_length", "path"}, ...]}

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
    header_length (bytes before the payload), path (relative to the repository root).
    """

    nevra: str
    header_sha256: str
    rpm_sha256: str
    size: int
    header_length: int
    path: str

    @property
    def pkgid(self) -> str:
        return make_pkgid(self.nevra, self.header_sha256)

    def to_json(self) -> dict:
        return {"nevra": self.nevra, "header_sha256": self.header_sha256, "rpm_sha256": self.rpm_sha256,
                "size": self.size, "header_length": self.header_length, "path": self.path}


@dataclass(frozen=True)
class ImageIndex:
    """An image index: attributes name, serial, issued, expires (aware datetimes), packages."""

    name: str
    serial: int
    issued: datetime
    expires: datetime
    packages: tuple[IndexEntry, ...]

    def to_json(self) -> dict:
        return {"format": INDEX_FORMAT, "name": self.name, "serial": self.serial,
                "issued": format_time(self.issued), "expires": format_time(self.expires),
                "packages": [p.to_json() for p in self.packages]}

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


def _entry(item) -> IndexEntry:
    if not isinstance(item, dict):
        raise IndexRefused("image index: a package is not an object")
    ints = {k: item.get(k) for k in ("size", "header_length")}
    strs = {k: item.get(k) for k in ("nevra", "header_sha256", "rpm_sha256", "path")}
    if (not all(type(v) is int for v in ints.values()) or not all(isinstance(v, str) for v in strs.values())
            or not 0 < ints["header_length"] <= ints["size"]):
        raise IndexRefused(f"image index: package {strs.get('nevra')!r} is malformed")
    entry = IndexEntry(strs["nevra"], strs["header_sha256"], strs["rpm_sha256"], ints["size"],
                       ints["header_length"], strs["path"])
    if not (_SHA256_RE.match(entry.header_sha256) and _SHA256_RE.match(entry.rpm_sha256)):
        raise IndexRefused(f"image index: package {entry.nevra!r} has a malformed SHA-256")
    if not _PATH_RE.match(entry.path) or ".." in entry.path.split("/"):
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
    return ImageIndex(name, serial, _time(doc.get("issued"), "issued"), _time(doc.get("expires"), "expires"),
                      entries)
