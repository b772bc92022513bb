"""Images: recorded package sets, the ``current`` and ``previous`` pointers, deploy, rollback, gc
(the difference of two images: :mod:`usrview.images.diff`).

Layout in the store (docs/images.md is the reference)::

    STORE/images/ID.json    {"format": 1, "id": ID, "created": ISO-8601 UTC,
                             "packages": [sorted pkgids], "unsigned": [sorted pkgids]}
    STORE/images/ID.lock    held with a shared flock() by every running view of image ID
    STORE/current           symlink -> images/ID.json
    STORE/previous          symlink -> images/ID.json
    STORE/boot.json         each image's boot state: on trial, good, bad (usrview/images/bootstate.py)

An image id is ``YYYYMMDD-HHMMSS-XXXXXXXX``: its UTC creation time and the first 8 hex
digits of the SHA-256 of its sorted package ids (one per line).  Ids sort by creation
time to the second; within one second, by ``created`` (microseconds) -- the order
:func:`list_images` uses.

Every change happens under the store's exclusive lock (:meth:`Store.lock`); readers
take no lock and see each change as one ``rename(2)``.  A deploy writes the image
record, then puts the new image on trial (``boot.json``), then points ``previous`` at
the old current image, then ``current`` at the new one: an interruption leaves either
the old state (perhaps with an unreferenced record, removed by ``gc``) or the new one,
and never a current image that boot counting does not know as on trial.

The in-use protocol (for views, issue 4): a process serving image ID opens
``images/ID.lock`` (creating it, mode 0600), takes ``flock(LOCK_SH)`` and only then
checks that ``images/ID.json`` still exists (:func:`hold_image` does all this).
``gc`` deletes an image only while it holds ``flock(LOCK_EX | LOCK_NB)`` on that
lock file, removing the record before the lock file: a view either holds its lock
before gc tries (gc keeps the image and its packages) or finds the record gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from usrview import faults
from usrview.config import DEFAULT_TRIES
from usrview.errors import EXIT_FINDINGS, OperationalError, UsrviewError
from usrview.images import bootstate
from usrview.store.store import IMAGES_DIR, JSON_FILE_MAX, Store, StoreError, pkgid_for, read_store_file
from usrview.store.trust import stored_policy_refusal
from verifier.errors import HeaderError
from verifier.header import Package, read_package_file

if TYPE_CHECKING:
    from usrview.images.lint import LintFinding

log = logging.getLogger(__name__)

#: The version of the image record format; records of another version are refused.
IMAGE_FORMAT = 1
IMAGE_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
#: The image's compiled tree (usrview/view/compiled.py), beside its record.
TREE_SUFFIX = ".tree"
CURRENT = "current"
PREVIOUS = "previous"
#: Images ``gc`` keeps besides current and previous: the newest ones.
DEFAULT_KEEP = 3
#: Hex digits of the package-set hash in an image id.
ID_HASH_DIGITS = 8
ID_TIME_FORMAT = "%Y%m%d-%H%M%S"
ID_RE = re.compile(rf"^\d{{8}}-\d{{6}}-[0-9a-f]{{{ID_HASH_DIGITS}}}$")
#: What SOURCE directories are read for.
RPM_SUFFIX = ".rpm"
#: For crash tests: ``USRVIEW_TEST_KILL_AT=STAGE`` (:mod:`usrview.faults`) SIGKILLs a
#: deploy or rollback at one of these points.
KILL_STAGES = ("deploy-recorded", "deploy-previous", "rollback-current")


class DeployRefused(UsrviewError):
    """The package set has lint errors: nothing was recorded or switched.

    Attributes: findings (all of them, errors first).
    """

    exit_code = EXIT_FINDINGS

    def __init__(self, message: str, findings: list[LintFinding]):
        super().__init__(message)
        self.findings = findings


@dataclass(frozen=True)
class Image:
    """A recorded image.

    Attributes:
        id: its id (``YYYYMMDD-HHMMSS-XXXXXXXX``).
        created: creation time, ISO 8601 in UTC with microseconds.
        packages: the package ids, sorted.
        unsigned: the ids of the packages imported unsigned, sorted.
    """

    id: str
    created: str
    packages: tuple[str, ...]
    unsigned: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"format": IMAGE_FORMAT, "id": self.id, "created": self.created,
                "packages": list(self.packages), "unsigned": list(self.unsigned)}

    @property
    def sort_key(self) -> tuple[str, str]:
        return (self.created, self.id)


def package_set_hash(pkgids) -> str:
    return hashlib.sha256("".join(f"{p}\n" for p in sorted(pkgids)).encode()).hexdigest()


def make_image_id(pkgids, when: datetime) -> str:
    return f"{when.astimezone(UTC).strftime(ID_TIME_FORMAT)}-{package_set_hash(pkgids)[:ID_HASH_DIGITS]}"


# -- reading -------------------------------------------------------------------------

def image_path(store: Store, image_id: str) -> Path:
    return store.root / IMAGES_DIR / (image_id + IMAGE_SUFFIX)


def lock_path(store: Store, image_id: str) -> Path:
    return store.root / IMAGES_DIR / (image_id + LOCK_SUFFIX)


def tree_path(store: Store, image_id: str) -> Path:
    return store.root / IMAGES_DIR / (image_id + TREE_SUFFIX)


def _link_target(image_id: str) -> str:
    return f"{IMAGES_DIR}/{image_id}{IMAGE_SUFFIX}"


def load_image(store: Store, image_id: str) -> Image:
    """The image record ``image_id``; OperationalError when absent or malformed."""
    path = image_path(store, image_id)
    try:
        data = json.loads(read_store_file(path, JSON_FILE_MAX))
    except FileNotFoundError:
        raise OperationalError(f"no image {image_id} in the store {store.root}") from None
    except OSError as e:
        raise OperationalError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise OperationalError(f"image record {path} is corrupt: {e}") from None
    if not isinstance(data, dict) or data.get("format") != IMAGE_FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise OperationalError(f"image record {path} has format {fmt!r}; this usrview reads "
                               f"format {IMAGE_FORMAT} only")
    packages, unsigned = data.get("packages"), data.get("unsigned", [])
    if (data.get("id") != image_id or not isinstance(data.get("created"), str)
            or not isinstance(packages, list) or not isinstance(unsigned, list)
            or not all(isinstance(p, str) for p in packages + unsigned) or not set(unsigned) <= set(packages)):
        raise OperationalError(f"image record {path} is corrupt")
    return Image(image_id, data["created"], tuple(sorted(packages)), tuple(sorted(unsigned)))


def image_ids(store: Store) -> list[str]:
    try:
        names = os.listdir(store.root / IMAGES_DIR)
    except OSError as e:
        raise OperationalError(f"cannot list {store.root / IMAGES_DIR}: {e.strerror or e}") from None
    return sorted(n[:-len(IMAGE_SUFFIX)] for n in names
                  if n.endswith(IMAGE_SUFFIX) and ID_RE.match(n[:-len(IMAGE_SUFFIX)]))


def list_images(store: Store) -> list[Image]:
    """Every recorded image, oldest first."""
    return sorted((load_image(store, i) for i in image_ids(store)), key=lambda im: im.sort_key)


def pointer(store: Store, name: str) -> str | None:
    """The id ``current`` or ``previous`` points at; None when the link is absent."""
    link = store.root / name
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OperationalError(f"cannot read {link}: {e.strerror or e}") from None
    head, _, file = target.partition("/")
    image_id = file[:-len(IMAGE_SUFFIX)] if file.endswith(IMAGE_SUFFIX) else ""
    if head != IMAGES_DIR or not ID_RE.match(image_id):
        raise OperationalError(f"store {store.root} is damaged: {name} points at {target!r}")
    return image_id


def resolve(store: Store, ref: str) -> Image:
    """An image by reference: ``current``, ``previous``, an id, or a unique prefix of one."""
    if ref in (CURRENT, PREVIOUS):
        image_id = pointer(store, ref)
        if image_id is None:
            raise OperationalError(f"the store {store.root} has no {ref} image")
        return load_image(store, image_id)
    ids = image_ids(store)
    if ref in ids:
        return load_image(store, ref)
    matches = [i for i in ids if i.startswith(ref)] if ref else []
    if len(matches) == 1:
        return load_image(store, matches[0])
    if not matches:
        raise OperationalError(f"no image {ref!r} in the store {store.root}")
    raise OperationalError(f"image {ref!r} is ambiguous: {', '.join(matches)}")


# -- the in-use protocol ----------------------------------------------------------------

def image_in_use(store: Store, image_id: str) -> bool:
    """True when a running view holds image ``image_id`` (its lock file is flock()ed)."""
    try:
        fd = os.open(lock_path(store, image_id), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # nobody holds a lock on a path that does not exist
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def hold_image(store: Store, image_id: str) -> Iterator[Image]:
    """Mark image ``image_id`` in use while the block runs (what a view does while it
    serves the image): gc keeps it and its packages.  OperationalError when the image
    does not exist (or was just deleted).  On a read-only file system (the root
    as the initrd may mount it) an existing lock file is opened read-only: flock
    needs no write access, and deploy makes the lock file with the record."""
    path = lock_path(store, image_id)
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise OperationalError(f"cannot open {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # Only now is the answer stable: gc removes a record only under LOCK_EX.
        image = load_image(store, image_id)
        yield image
    finally:
        os.close(fd)


@contextlib.contextmanager
def _try_lock_for_deletion(store: Store, image_id: str) -> Iterator[bool]:
    """Yield True while holding image ``image_id``'s lock exclusively, False when in use."""
    path = lock_path(store, image_id)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# -- source directories --------------------------------------------------------------

@dataclass(frozen=True)
class SourcePackage:
    """One rpm or header-only rpm of a SOURCE directory.

    Attributes: path, package (its parsed headers), pkgid.
    """

    path: Path
    package: Package
    pkgid: str

    @property
    def header_only(self) -> bool:
        return not self.package.has_payload


def source_files(source: Path) -> list[Path]:
    """The ``*.rpm`` files SOURCE names: a directory's (not recursive), or the file itself."""
    if source.is_dir():
        try:
            files = sorted(p for p in source.iterdir() if p.name.endswith(RPM_SUFFIX) and p.is_file())
        except OSError as e:
            raise OperationalError(f"cannot list {source}: {e.strerror or e}") from None
        if not files:
            raise OperationalError(f"{source}: no *{RPM_SUFFIX} files")
        return files
    if source.is_file():
        return [source]
    raise OperationalError(f"{source}: no such file or directory")


def read_source(source: Path) -> list[SourcePackage]:
    """The packages of SOURCE, each once (a full rpm preferred to a header-only one)."""
    by_id: dict[str, SourcePackage] = {}
    for path in source_files(source):
        try:
            package = read_package_file(path)
        except HeaderError as e:
            raise OperationalError(f"{path}: not a readable rpm: {e}") from None
        except OSError as e:
            raise OperationalError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            pkgid = pkgid_for(package)
        except StoreError as e:
            raise OperationalError(f"{path}: {e}") from None
        sp = SourcePackage(path, package, pkgid)
        old = by_id.get(pkgid)
        if old is None or (old.header_only and not sp.header_only):
            by_id[pkgid] = sp
    return sorted(by_id.values(), key=lambda s: s.pkgid)


# -- deploy and rollback ----------------------------------------------------------------

@dataclass
class DeployResult:
    """What :func:`deploy` did.

    Attributes:
        image: the image now current.
        previous: the id ``previous`` now points at (None for a first deploy).
        findings: lint findings (warnings and infos: errors refuse the deploy).
        imported: pkgids imported by this deploy.
        already_current: True when the package set was the current image's: nothing changed.
    """

    image: Image
    previous: str | None
    findings: list[LintFinding] = field(default_factory=list)
    imported: list[str] = field(default_factory=list)
    already_current: bool = False


def deploy(store: Store, source: Path, keyring, *, allow_unsigned: bool = False,
           now: datetime | None = None, progress=None, tries: int = DEFAULT_TRIES) -> DeployResult:
    """Record SOURCE's package set as an image and make it current.

    SOURCE is a directory of rpms and/or header-only rpms whose packages are
    stored.  The headers are read and linted first: lint errors raise
    DeployRefused before anything is imported.  Then missing packages are
    imported (:func:`usrview.importer.import_packages`, which checks signatures;
    a refused package raises PackageRefused -- packages imported before it stay
    in the store, unreferenced, until ``gc``), the image is recorded, and
    ``previous``/``current`` are switched.  The new image is on trial for
    ``tries`` boots (:mod:`usrview.images.bootstate`) before it becomes current.
    """
    with store.lock():
        return deploy_sources(store, read_source(source), keyring, allow_unsigned=allow_unsigned,
                              now=now, progress=progress, tries=tries)


def deploy_sources(store: Store, sources: list[SourcePackage], keyring, *, allow_unsigned: bool = False,
                   now: datetime | None = None, progress=None, tries: int = DEFAULT_TRIES,
                   fetch=None) -> DeployResult:
    """:func:`deploy` of packages already read (a SOURCE directory's, or pull's).  ``fetch(s)``
    (pull's), when given, is called for each source not stored, in order, right before it is
    imported, and returns what to import (its bytes may still arrive as the others import)."""
    from usrview.images.lint import has_errors, lint  # deploy's alone: a mount needs no lint
    from usrview.store.importer import import_packages  # the importer needs the payload machinery

    with store.lock():
        missing = [s for s in sources if s.header_only and not store.has(s.pkgid) and fetch is None]
        if missing:
            listed = ", ".join(f"{s.path.name} ({s.package.nevra})" for s in missing)
            raise OperationalError(f"header-only rpm(s) whose package is not in the store: {listed}; "
                                   "give the full rpm(s)")
        if not allow_unsigned:
            unsigned = [s for s in sources if s.header_only and store.has(s.pkgid) and store.get(s.pkgid).unsigned]
            if unsigned:
                raise OperationalError(
                    "stored unsigned: " + ", ".join(s.package.nevra for s in unsigned)
                    + " (--allow-unsigned deploys them)")
        findings = lint(s.package for s in sources)
        if has_errors(findings):
            n = sum(1 for f in findings if f.severity.name == "ERROR")
            raise DeployRefused(f"deploy refused: {n} error(s) in the package set; "
                                "nothing recorded, current image unchanged", findings)

        imported = []
        to_import = [s for s in sources if not ((s.header_only and fetch is None) or store.has(s.pkgid))]

        def started(path) -> None:
            if progress is not None:
                progress.label = Path(path).name

        # One import of all missing packages: committed in batches (one syncfs each).
        paths = (s.path if fetch is None else fetch(s) for s in to_import)
        for s, (path, outcome) in zip(to_import, import_packages(store, paths, keyring, allow_unsigned=allow_unsigned,
                                                                 progress=progress, started=started), strict=True):
            if isinstance(outcome, UsrviewError):
                raise outcome
            if outcome.pkgid != s.pkgid:  # the importer names packages the same way
                raise OperationalError(f"{path}: stored as {outcome.pkgid}, expected {s.pkgid}")
            if not outcome.already_stored:
                imported.append(outcome.pkgid)

        pkgids = tuple(sorted(s.pkgid for s in sources))
        unsigned_ids = tuple(p for p in pkgids if store.get(p).unsigned)
        if unsigned_ids and not allow_unsigned:  # stored unsigned, given as a full rpm
            raise OperationalError("stored unsigned: " + ", ".join(unsigned_ids)
                                   + " (--allow-unsigned deploys them)")
        if refusal := stored_policy_refusal(store, pkgids, keyring.policy):  # header-only: not re-checked
            raise OperationalError(refusal)
        old_current = pointer(store, CURRENT)
        old_previous = pointer(store, PREVIOUS)
        if old_current is not None:
            current = load_image(store, old_current)
            if current.packages == pkgids:
                return DeployResult(current, old_previous, findings, imported, already_current=True)

        when = now or datetime.now(UTC)
        image_id = make_image_id(pkgids, when)
        if image_path(store, image_id).exists():
            image = load_image(store, image_id)  # the same set, deployed within the same second
        else:
            image = Image(image_id, when.astimezone(UTC).isoformat(timespec="microseconds"),
                          pkgids, unsigned_ids)
            _write_image(store, image)
            faults.kill_at("deploy-recorded")
        _make_lock_file(store, image.id)
        bootstate.try_image(store, image.id, tries)
        if old_current is not None and old_current != image.id:
            _point(store, PREVIOUS, old_current)
            faults.kill_at("deploy-previous")
        _point(store, CURRENT, image.id)
        log.info("deployed image %s (%d packages)", image.id, len(pkgids))
        return DeployResult(image, old_current if old_current != image.id else old_previous,
                            findings, imported)


def _write_image(store: Store, image: Image) -> None:
    data = (json.dumps(image.to_json(), indent=1) + "\n").encode()
    try:
        store.write_file(image_path(store, image.id), data)
    except OSError as e:
        raise OperationalError(f"cannot record image {image.id}: {e.strerror or e}") from None


def _point(store: Store, name: str, image_id: str) -> None:
    try:
        store.point_symlink(_link_target(image_id), store.root / name)
    except OSError as e:
        raise OperationalError(f"cannot switch {name} to {image_id}: {e.strerror or e}") from None


def _make_lock_file(store: Store, image_id: str) -> None:
    """The image's in-use lock file, made with its record: a view started from a
    read-only root can then still hold it (:func:`hold_image`)."""
    try:
        os.close(os.open(lock_path(store, image_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600))
    except OSError as e:
        raise OperationalError(f"cannot make {lock_path(store, image_id)}: {e.strerror or e}") from None


def _check_packages(store: Store, image: Image) -> None:
    gone = [p for p in image.packages if not store.has(p)]
    if gone:
        raise OperationalError(f"image {image.id} lacks {len(gone)} stored package(s): "
                               f"{', '.join(gone[:3])}{' …' if len(gone) > 3 else ''}")


def rollback(store: Store, *, tries: int = DEFAULT_TRIES) -> tuple[str, str]:
    """Swap ``current`` and ``previous``; return (new current, new previous).

    The previous image, unless it is good, is put on trial again (``tries``
    boots) first: rolling back by hand is a request to boot it.  ``current`` is
    switched next (the one atomic step that matters); an interruption before
    ``previous`` follows leaves both pointing at the new current image.
    """
    with store.lock():
        cur, prev = pointer(store, CURRENT), pointer(store, PREVIOUS)
        if prev is None or prev == cur:
            raise OperationalError("no previous image to roll back to")
        _check_packages(store, load_image(store, prev))
        bootstate.try_image(store, prev, tries)
        _point(store, CURRENT, prev)
        faults.kill_at("rollback-current")
        if cur is not None:
            _point(store, PREVIOUS, cur)
        log.info("rolled back to %s", prev)
        return prev, cur


# -- gc ------------------------------------------------------------------------------------

@dataclass
class GcResult:
    """What :func:`gc` did.

    Attributes: deleted_images, deleted_packages (ids), in_use (ids of images kept
    because a view holds them), kept (ids of the images kept).
    """

    deleted_images: list[str] = field(default_factory=list)
    deleted_packages: list[str] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def gc(store: Store, keep: int = DEFAULT_KEEP) -> GcResult:
    """Delete image records beyond the newest ``keep`` (never current, previous, the
    last good image, the image this boot serves, or one in use), then every stored
    package that no remaining image lists, then the deleted images' boot states."""
    if keep < 0:
        raise OperationalError("--keep must be 0 or more")
    result = GcResult()
    with store.lock():
        images = list_images(store)
        state = bootstate.load(store)
        # The last good image is what the initrd falls back to: never delete it.
        protected = {pointer(store, CURRENT), pointer(store, PREVIOUS), state.last_good,
                     state.boot.image if state.boot else None} - {None}
        newest = {im.id for im in images[len(images) - keep:]} if keep else set()
        kept: list[Image] = []
        for image in images:
            if image.id in protected or image.id in newest:
                kept.append(image)
                continue
            with _try_lock_for_deletion(store, image.id) as free:
                if not free:
                    result.in_use.append(image.id)
                    kept.append(image)
                    continue
                # record first, lock file second: see the module docstring; then the compiled tree
                os.unlink(image_path(store, image.id))
                Store.fsync_dir(store.root / IMAGES_DIR)
                for leftover in (lock_path(store, image.id), tree_path(store, image.id)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(leftover)
            result.deleted_images.append(image.id)
            log.info("deleted image %s", image.id)
        _remove_stale_locks(store, {im.id for im in kept})
        used = {p for im in kept for p in im.packages}
        unused = [p for p in store.pkgids() if p not in used]
        _delete_packages(store, unused)
        result.deleted_packages = unused
        result.kept = [im.id for im in kept]
        if set(state.images) - set(result.kept):
            state.prune(set(result.kept))
            bootstate.save(store, state)
    return result


def _delete_packages(store: Store, pkgids: list[str]) -> None:
    """Delete stored packages (under the lock): headers first, then the trees.

    A thin adapter: ``Store.delete_package`` renames the package tree into
    ``tmp/`` before deleting it, which btrfs refuses for a read-only subvolume
    (EROFS: its ``..`` entry would change).  Removing the header makes the
    package vanish (the store's rule: a package exists exactly when its header
    does); ``Store.cleanup`` then deletes the header-less trees as it does after
    an interruption.
    """
    if not pkgids:
        return
    try:
        for pkgid in pkgids:
            os.unlink(store.header_path(pkgid))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(store.unsigned_path(pkgid))
            log.info("deleted %s", pkgid)
        Store.fsync_dir(store.header_path(pkgids[0]).parent)
    except OSError as e:
        raise OperationalError(f"cannot delete packages: {e.strerror or e}") from None
    store.cleanup()


def _remove_stale_locks(store: Store, live: set[str]) -> None:
    """Lock files of images that no longer exist (left by views of deleted images)."""
    for name in os.listdir(store.root / IMAGES_DIR):
        if not name.endswith(LOCK_SUFFIX) or name[:-len(LOCK_SUFFIX)] in live:
            continue
        image_id = name[:-len(LOCK_SUFFIX)]
        if image_path(store, image_id).exists():
            continue
        with _try_lock_for_deletion(store, image_id) as free:
            if free:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path(store, image_id))


def status(store: Store) -> dict:
    """The images, newest first, with the current/previous/in-use/legacy marks and
    boot states, as JSON-able data."""
    cur, prev = pointer(store, CURRENT), pointer(store, PREVIOUS)
    state = bootstate.load(store)
    legacy = store.legacy_pkgids()
    images = []
    for image in reversed(list_images(store)):
        boot = state.of(image.id)
        images.append({
            "id": image.id,
            "created": image.created,
            "packages": len(image.packages),
            "current": image.id == cur,
            "previous": image.id == prev,
            "in_use": image_in_use(store, image.id),
            "unsigned": [_nevra_of(p) for p in image.unsigned],
            "legacy_signature_policy": [_nevra_of(p) for p in image.packages if p in legacy],
            "boot": boot.state,
            "tries": boot.tries,
        })
    return {"store": str(store.root), "current": cur, "previous": prev, "images": images,
            **state.status_json()}


def _nevra_of(pkgid: str) -> str:
    return pkgid.rsplit("-", 1)[0]


__all__ = [
    "CURRENT", "DEFAULT_KEEP", "ID_HASH_DIGITS", "ID_RE", "IMAGE_FORMAT", "PREVIOUS", "TREE_SUFFIX", "DeployRefused",
    "DeployResult", "GcResult", "Image", "SourcePackage", "deploy", "deploy_sources", "gc", "hold_image",
    "image_ids", "image_in_use", "image_path", "list_images", "load_image", "lock_path", "make_image_id",
    "package_set_hash", "pointer", "read_source", "resolve", "rollback", "status", "tree_path"
]
