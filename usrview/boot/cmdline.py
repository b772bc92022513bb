"""The kernel command line's ``usrview.*`` words (docs/boot-core.md).

::

    usrview.store=PATH    the store, a path within the root file system (default /var/lib/usrview)
    usrview.image=REF     current (default) | previous | an image id or a unique prefix of one
    usrview.verify=MODE   enforce (default) | warn | off
    usrview.kernel_cache=MODE  auto (default) | off: let the kernel cache opens,
                          listings and symlinks where pyfuse3 offers it (usrview mount --kernel-cache)
    usrview.rollback      the manual rollback word: the same as usrview.image=previous
    usrview.profile       diagnostics: profile the serving thread's CPU (docs/boot.md); off by default
    usrview.full_check_delay=SECONDS  when the compiled tree's full check starts after the
                          mount (default 30: after the boot's busiest seconds; 0 at once)

Words are split as systemd splits the command line: at white space outside
double or single quotes, the quotes removed (``usrview.store="/srv/my store"``).
A word given twice counts the last time, as the kernel's and systemd's own do.
Other words are not usrview's and are ignored.

Parsing never fails: a wrong value keeps the default and adds one line to
:attr:`BootParams.problems`, which the initrd prints on the console -- a typo
at the boot prompt must not stop the boot.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

#: The prefix of usrview's words.
PREFIX = "usrview."
DEFAULT_STORE = "/var/lib/usrview"
CURRENT = "current"
PREVIOUS = "previous"
#: usrview.verify's values, the default first (usrview.view.guard.VerifyMode's).
VERIFY_MODES = ("enforce", "warn", "off")
#: usrview.kernel_cache's values, the default first (usrview mount --kernel-cache's;
#: at boot "auto": the requests saved are boot time, docs/boot.md).
KERNEL_CACHE_MODES = ("auto", "off")
#: The manual rollback word, and the values that switch it on and off.
ROLLBACK = "rollback"
_YES = frozenset({"", "1", "yes", "y", "true", "on"})
_NO = frozenset({"0", "no", "n", "false", "off"})
#: The diagnostic word: profile the serving thread (usrview.view.profile).
PROFILE = "profile"
#: usrview.full_check_delay's default and largest value, in seconds: the full check of
#: the compiled tree (usrview.view.fullcheck) waits so long after the mount, so that its
#: CPU does not compete with the boot's (everything served is checked at its package's
#: first use meanwhile: docs/trust-chain.md).
FULL_CHECK_DELAY = 30.0
MAX_FULL_CHECK_DELAY = 3600.0
_KEYS = ("store", "image", "verify", "kernel_cache", ROLLBACK, PROFILE, "full_check_delay")
#: Longest image reference accepted (an id is 24 characters).
MAX_REF = 64


@dataclass(frozen=True)
class BootParams:
    """What the command line asks of this boot.

    Attributes:
        store: the store's path within the root file system (absolute, normalized).
        image: ``current``, ``previous``, or an image id or prefix.
        verify: enforce, warn or off.
        explicit: True when the image was chosen by hand (``usrview.image=`` other
            than ``current``, or the rollback word): boot counting does not apply.
        problems: one line per wrong value (the default was kept).
        kernel_cache: auto or off.
        profile: whether the serving thread's CPU is profiled (``usrview.profile``).
        full_check_delay: seconds between the mount and the full check's start.
    """

    store: str = DEFAULT_STORE
    image: str = CURRENT
    verify: str = VERIFY_MODES[0]
    explicit: bool = False
    problems: tuple[str, ...] = ()
    kernel_cache: str = KERNEL_CACHE_MODES[0]
    profile: bool = False
    full_check_delay: float = FULL_CHECK_DELAY


def split_words(text: str) -> list[str]:
    """The command line's words: split at white space outside quotes, quotes removed."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    in_word = False
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                word.append(ch)
        elif ch in "\"'":
            quote, in_word = ch, True
        elif ch.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
    if in_word:
        words.append("".join(word))
    return words


def usrview_words(text: str) -> dict[str, str | None]:
    """``usrview.KEY[=VALUE]`` words as KEY -> VALUE (None for a bare word), the last one winning."""
    found: dict[str, str | None] = {}
    for word in split_words(text):
        if not word.startswith(PREFIX):
            continue
        key, eq, value = word[len(PREFIX):].partition("=")
        found.pop(key, None)  # the last occurrence decides, and its place in the order
        found[key] = value if eq else None
    return found


def _one_of(word: str, value: str, modes: tuple[str, ...], default_is: str, problems: list[str]) -> str:
    """``value`` if it is one of ``modes``, else the first of them (and a line in ``problems``)."""
    if value in modes:
        return value
    problems.append(f"{word}: not one of {', '.join(modes)}; {default_is} {modes[0]}")
    return modes[0]


def parse(text: str) -> BootParams:
    """The boot parameters of a command line (``/proc/cmdline``'s text)."""
    problems: list[str] = []
    store, image, verify, explicit = DEFAULT_STORE, CURRENT, VERIFY_MODES[0], False
    kernel_cache = KERNEL_CACHE_MODES[0]
    rollback = profile = False
    full_check_delay = FULL_CHECK_DELAY
    for key, value in usrview_words(text).items():
        word = f"{PREFIX}{key}" + ("" if value is None else f"={value}")
        if key not in _KEYS:
            problems.append(f"unknown word {word} ignored (usrview knows "
                            + ", ".join(PREFIX + k for k in _KEYS) + ")")
        elif key in (ROLLBACK, PROFILE):
            if (value or "").lower() in _YES:
                rollback, profile = rollback or key == ROLLBACK, profile or key == PROFILE
            elif (value or "").lower() not in _NO:
                problems.append(f"{word}: not yes or no; " + ("no rollback" if key == ROLLBACK else "not profiled"))
        elif not value:
            problems.append(f"{word}: no value; default kept")
        elif key == "store":
            if not value.startswith("/") or "\0" in value:
                problems.append(f"{word}: not an absolute path; the store is {DEFAULT_STORE}")
            else:
                store = posixpath.normpath(value)
                store = "/" + store.lstrip("/")  # normpath keeps a leading "//"
        elif key == "image":
            if "/" in value or len(value) > MAX_REF or not value.isprintable():
                problems.append(f"{word}: not an image id; booting the {CURRENT} image")
            else:
                image, explicit = value, value != CURRENT
        elif key == "verify":
            verify = _one_of(word, value, VERIFY_MODES, "verifying with", problems)
        elif key == "kernel_cache":
            kernel_cache = _one_of(word, value, KERNEL_CACHE_MODES, "kernel caching", problems)
        elif key == "full_check_delay":
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not 0 <= seconds <= MAX_FULL_CHECK_DELAY:  # also NaN
                problems.append(f"{word}: not a number of seconds from 0 to {MAX_FULL_CHECK_DELAY:g}; "
                                f"the full check starts {FULL_CHECK_DELAY:g} s after the mount")
            else:
                full_check_delay = seconds
    if rollback:
        if explicit and image != PREVIOUS:
            problems.append(f"{PREFIX}{ROLLBACK} overrides {PREFIX}image={image}")
        image, explicit = PREVIOUS, True
    return BootParams(store, image, verify, explicit, tuple(problems), kernel_cache, profile, full_check_delay)
