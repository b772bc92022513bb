"""The images' boot states: ``STORE/boot.json`` (docs/images.md, "Boot states").

::

    {"format": 1,
     "images": {"ID": {"state": "trial", "tries": 2, "since": "ISO-8601 UTC"},
                "ID": {"state": "good", "since": "…"},
                "ID": {"state": "bad", "since": "…", "why": "…"}},
     "last_good": "ID" | null,          the image boot-complete marked good last
     "boot": {"image": "ID", "boot_id": "…", "at": "…", "fallback": false} | null,
                                        the image the latest initrd-mount serves
     "events": [{"seq": 1, "at": "…", "boot_id": "…", "requested": "ID or REF",
                 "booted": "ID", "reason": "…"}],   the newest MAX_EVENTS fallbacks
     "reported": 0}                     the last event seq the monitor reported

- A newly deployed image is **on trial** (``trial``) with ``tries`` boots left;
  each boot the initrd serves it from its own choice spends one before mounting.
- ``usrview boot-complete`` (the booted system reached boot-complete.target)
  marks the image of this boot **good**.
- An image on trial with no tries left, chosen again, is **bad**: the initrd
  serves the last good image instead and records an event.
- An image the file does not name is good: it was recorded before boot states
  existed, or its entry was lost -- either way the safe reading is the one that
  boots it.

The file is replaced whole (:meth:`usrview.store.Store.atomic_write`) under the
store lock; readers take no lock.  A file that cannot be parsed reads as empty
(every image good) with a :attr:`BootState.problem`, and the next write replaces it.
Entries of images that no longer exist are ignored, and dropped by ``gc``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from usrview.config import DEFAULT_TRIES
from usrview.errors import OperationalError
from usrview.store.store import JSON_FILE_MAX, Store, read_store_file

STATE_FORMAT = 1
GOOD, TRIAL, BAD = "good", "trial", "bad"
STATES = (GOOD, TRIAL, BAD)
#: Fallback events kept (the newest).
MAX_EVENTS = 16
#: The kernel's id of the running boot, the same in the initrd and the booted system.
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

__all__ = ["BAD", "DEFAULT_TRIES", "GOOD", "STATES", "TRIAL", "BootRecord", "BootState", "Event",
           "ImageBoot", "boot_id", "load", "now", "save", "try_image"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def boot_id(path: str = BOOT_ID_PATH) -> str:
    """The running boot's id ("" when the kernel does not tell)."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass
class ImageBoot:
    """One image's boot state.

    Attributes: state (good, trial or bad), tries (boots left on trial; None
    unless on trial), since (when it entered the state), why (for bad: the reason).
    """

    state: str = GOOD
    tries: int | None = None
    since: str = ""
    why: str = ""

    def to_json(self) -> dict:
        out: dict = {"state": self.state}
        if self.state == TRIAL:
            out["tries"] = self.tries
        if self.since:
            out["since"] = self.since
        if self.why:
            out["why"] = self.why
        return out

    @classmethod
    def from_json(cls, data) -> ImageBoot:
        state, tries = data["state"], data.get("tries")
        if state not in STATES or (state == TRIAL and (type(tries) is not int or tries < 0)):
            raise ValueError(f"bad image entry {data!r}")
        return cls(state, tries if state == TRIAL else None, str(data.get("since", "")),
                   str(data.get("why", "")))


@dataclass
class BootRecord:
    """The image a boot serves. Attributes: image, boot_id, at, fallback (not the one asked for)."""

    image: str
    boot_id: str
    at: str
    fallback: bool = False

    def to_json(self) -> dict:
        return {"image": self.image, "boot_id": self.boot_id, "at": self.at, "fallback": self.fallback}


@dataclass
class Event:
    """A fallback: a boot that served another image than the one asked for.

    Attributes: seq (rises by one per event), at, boot_id, requested (the id, or
    the reference when it named no image), booted (the id served), reason.
    """

    seq: int
    at: str
    boot_id: str
    requested: str
    booted: str
    reason: str

    def to_json(self) -> dict:
        return {"seq": self.seq, "at": self.at, "boot_id": self.boot_id, "requested": self.requested,
                "booted": self.booted, "reason": self.reason}

    def line(self) -> str:
        return f"{self.at}: booted {self.booted} instead of {self.requested}: {self.reason}"


@dataclass
class BootState:
    """The parsed ``boot.json`` (see the module docstring for the fields).

    Attributes: images, last_good, boot, events, reported, problem (why the
    file read as empty, or "").
    """

    images: dict[str, ImageBoot] = field(default_factory=dict)
    last_good: str | None = None
    boot: BootRecord | None = None
    events: list[Event] = field(default_factory=list)
    reported: int = 0
    problem: str = ""

    def of(self, image_id: str) -> ImageBoot:
        """``image_id``'s state (good when the file does not name it)."""
        return self.images.get(image_id) or ImageBoot()

    # -- changes (the caller holds the store lock and saves) ------------------------

    def put_on_trial(self, image_id: str, tries: int = DEFAULT_TRIES) -> None:
        self.images[image_id] = ImageBoot(TRIAL, tries, now())

    def mark_good(self, image_id: str) -> None:
        if self.of(image_id).state != GOOD or image_id not in self.images:
            self.images[image_id] = ImageBoot(GOOD, None, now())
        self.last_good = image_id

    def mark_bad(self, image_id: str, why: str) -> None:
        self.images[image_id] = ImageBoot(BAD, None, now(), why)
        if self.last_good == image_id:
            self.last_good = None

    def spend_try(self, image_id: str) -> int:
        """One boot of an image on trial: its tries less one; returns what is left."""
        entry = self.images[image_id]
        entry.tries = max(0, (entry.tries or 0) - 1)
        return entry.tries

    def record_boot(self, image_id: str, boot: str, *, fallback: bool) -> None:
        self.boot = BootRecord(image_id, boot, now(), fallback)

    def add_event(self, boot: str, requested: str, booted: str, reason: str) -> Event:
        seq = max((e.seq for e in self.events), default=self.reported) + 1
        event = Event(seq, now(), boot, requested, booted, reason)
        self.events = [*self.events, event][-MAX_EVENTS:]
        return event

    def prune(self, existing: set[str]) -> None:
        """Forget the entries of images that no longer exist."""
        self.images = {i: e for i, e in self.images.items() if i in existing}
        if self.last_good not in existing:
            self.last_good = None

    def status_json(self) -> dict:
        """What ``usrview status --json`` adds at its top level."""
        event = self.last_event
        return {"last_good": self.last_good, "booted": self.boot.to_json() if self.boot else None,
                "last_fallback": event.to_json() if event else None,
                "boot_state_problem": self.problem or None}

    @property
    def last_event(self) -> Event | None:
        return self.events[-1] if self.events else None

    def unreported(self) -> list[Event]:
        return [e for e in self.events if e.seq > self.reported]

    # -- the file -------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"format": STATE_FORMAT,
                "images": {i: e.to_json() for i, e in sorted(self.images.items())},
                "last_good": self.last_good,
                "boot": self.boot.to_json() if self.boot else None,
                "events": [e.to_json() for e in self.events],
                "reported": self.reported}

    @classmethod
    def from_json(cls, data) -> BootState:
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None!r}, "
                             f"expected {STATE_FORMAT}")
        images = {str(i): ImageBoot.from_json(e) for i, e in data.get("images", {}).items()}
        boot = data.get("boot")
        events = [Event(int(e["seq"]), str(e["at"]), str(e["boot_id"]), str(e["requested"]),
                        str(e["booted"]), str(e["reason"])) for e in data.get("events", [])]
        last_good = data.get("last_good")
        return cls(images, last_good if isinstance(last_good, str) else None,
                   BootRecord(str(boot["image"]), str(boot["boot_id"]), str(boot["at"]),
                              bool(boot.get("fallback", False))) if boot else None,
                   events, int(data.get("reported", 0)))


def load(store: Store) -> BootState:
    """The store's boot state; empty when there is none, or when it cannot be parsed
    (then with ``problem`` saying why: reading never stops a boot)."""
    path = store.boot_state_path
    try:
        data = read_store_file(path, JSON_FILE_MAX)
    except FileNotFoundError:
        return BootState()
    except OSError as e:
        return BootState(problem=f"cannot read {path}: {e.strerror or e}")
    try:
        return BootState.from_json(json.loads(data))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        return BootState(problem=f"{path} is corrupt ({e}); every image counts as good")


def try_image(store: Store, image_id: str, tries: int = DEFAULT_TRIES) -> None:
    """Put ``image_id`` on trial unless the file knows it good (deploy and rollback,
    under the store lock, before ``current`` names it)."""
    state = load(store)
    entry = state.images.get(image_id)
    if entry is None or entry.state != GOOD:
        state.put_on_trial(image_id, tries)
        save(store, state)


def save(store: Store, state: BootState) -> None:
    """Replace ``boot.json`` (temp file, fsync, rename): the caller holds the store lock."""
    if not store.locked:
        raise RuntimeError("saving the boot state needs Store.lock()")
    data = (json.dumps(state.to_json(), indent=1) + "\n").encode()
    try:
        store.write_file(store.boot_state_path, data, mode=0o600)
    except OSError as e:
        raise OperationalError(f"cannot write {store.boot_state_path}: {e.strerror or e}") from None
