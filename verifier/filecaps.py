"""File capabilities: the text form RPMTAG_FILECAPS carries and the
``security.capability`` extended attribute the kernel keeps.

rpm -V compares the two with libcap (``cap_from_text`` on the header's text,
``cap_get_file`` on the file, then ``cap_compare``), which looks only at the
effective, permitted and inheritable sets -- not at the namespace root id of a
version-3 attribute.  This module does the same in Python, without libcap:
:func:`parse_text` follows libcap's ``cap_from_text`` grammar,
:func:`parse_xattr` its ``cap_get_file`` decoding, and :meth:`CapSets.to_xattr`
gives the attribute bytes a file with those capabilities carries (which the
view will serve).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: Capability names in number order (linux/capability.h; libcap 2.66 knows 0..40).
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)
_NUMBER_OF = {f"cap_{name}": number for number, name in enumerate(CAP_NAMES)}

#: Capability numbers fit in two 32-bit words (VFS_CAP_U32 = 2; libcap __CAP_MAXBITS).
CAP_MAXBITS = 64

XATTR_NAME = "security.capability"
# struct vfs_cap_data / vfs_ns_cap_data (linux/capability.h): a little-endian
# magic_etc word, then (permitted, inheritable) pairs, then for v3 the root uid.
VFS_CAP_REVISION_MASK = 0xFF000000
VFS_CAP_REVISION_1 = 0x01000000
VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_REVISION_3 = 0x03000000
VFS_CAP_FLAGS_EFFECTIVE = 0x000001
_XATTR_LAYOUT = {  # revision -> (number of u32 pairs, total size in bytes)
    VFS_CAP_REVISION_1: (1, 12),
    VFS_CAP_REVISION_2: (2, 20),
    VFS_CAP_REVISION_3: (2, 24),
}


def kernel_cap_count() -> int:
    """How many capabilities the running kernel knows: what "all" means to libcap."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return min(int(f.read()) + 1, CAP_MAXBITS)
    except (OSError, ValueError):
        return len(CAP_NAMES)


@dataclass(frozen=True, slots=True)
class CapSets:
    """A file's capability sets as bit masks (bit n = capability number n).

    Attributes:
        effective, permitted, inheritable: the three sets.
    """

    effective: int = 0
    permitted: int = 0
    inheritable: int = 0

    def to_xattr(self) -> bytes:
        """The version-2 ``security.capability`` value for these sets.

        A file's effective set is one flag in the attribute: set when any
        capability is effective (as libcap's ``cap_set_file`` writes it).
        """
        magic = VFS_CAP_REVISION_2 | (VFS_CAP_FLAGS_EFFECTIVE if self.effective else 0)
        words = []
        for i in range(2):
            words += [(self.permitted >> (32 * i)) & 0xFFFFFFFF, (self.inheritable >> (32 * i)) & 0xFFFFFFFF]
        return struct.pack("<5I", magic, *words)


def parse_xattr(value: bytes) -> CapSets | None:
    """Decode a ``security.capability`` value as libcap's ``cap_get_file`` does.

    Returns None for what libcap rejects: an unknown revision or a size that
    does not match it exactly.
    """
    if len(value) < 4:
        return None
    (magic,) = struct.unpack_from("<I", value)
    layout = _XATTR_LAYOUT.get(magic & VFS_CAP_REVISION_MASK)
    if layout is None or len(value) != layout[1]:
        return None
    pairs, _ = layout
    permitted = inheritable = 0
    for i in range(pairs):
        p, inh = struct.unpack_from("<2I", value, 4 + 8 * i)
        permitted |= p << (32 * i)
        inheritable |= inh << (32 * i)
    effective = (permitted | inheritable) if magic & VFS_CAP_FLAGS_EFFECTIVE else 0
    return CapSets(effective, permitted, inheritable)


# libcap parses with the C locale's ctype: ASCII only.
_SPACE = frozenset(" \t\n\v\f\r")
_DIGIT = frozenset("0123456789")
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALNUM = _ALPHA | _DIGIT
_OCTAL = frozenset("01234567")
_HEX = _DIGIT | frozenset("abcdefABCDEF")


def _strtoul(text: str, pos: int) -> tuple[int, int]:
    """C's ``strtoul(text + pos, &end, 0)`` on a string starting with a digit."""
    if text.startswith(("0x", "0X"), pos) and pos + 2 < len(text) and text[pos + 2] in _HEX:
        end = pos + 2
        while end < len(text) and text[end] in _HEX:
            end += 1
        return int(text[pos + 2:end], 16), end
    digits, base = (_OCTAL, 8) if text[pos] == "0" else (_DIGIT, 10)
    end = pos
    while end < len(text) and text[end] in digits:
        end += 1
    return int(text[pos:end], base), end


def _cap_number(text: str, pos: int) -> tuple[int, int] | None:
    """The capability named or numbered at ``pos``, and where its name ends."""
    if text[pos] in _DIGIT:
        number, end = _strtoul(text, pos)
        return (number, end) if number < CAP_MAXBITS else None
    end = pos
    while end < len(text) and (text[end] in _ALPHA or text[end] == "_"):
        end += 1
    number = _NUMBER_OF.get(text[pos:end].lower())
    if number is None or (end < len(text) and text[end] in _DIGIT):
        return None
    return number, end


def parse_text(text: str, *, cap_count: int | None = None) -> CapSets | None:
    """Parse a capability text such as ``cap_net_raw=ep`` like libcap's ``cap_from_text``.

    Clauses are separated by white space; each is a comma-separated list of
    names (case-insensitive), numbers or ``all`` -- or nothing, meaning all --
    followed by operator/flag pairs: ``=`` clears the listed capabilities in
    all three sets and raises them in the flagged ones, ``+`` raises, ``-``
    lowers.  ``all`` covers the capabilities the running kernel knows
    (``cap_count``).  Returns None for text libcap rejects.
    """
    if cap_count is None:
        cap_count = kernel_cap_count()
    everything = (1 << cap_count) - 1
    sets = {"e": 0, "i": 0, "p": 0}
    pos, n = 0, len(text)

    def is_word_char(i: int) -> bool:
        return i < n and (text[i] in _ALNUM or text[i] == "_")

    while True:
        while pos < n and text[pos] in _SPACE:
            pos += 1
        if pos == n:
            return CapSets(sets["e"], sets["p"], sets["i"])
        listed = False
        mask = 0
        if is_word_char(pos):
            while True:
                if text[pos:pos + 3].lower() == "all" and not is_word_char(pos + 3):
                    mask = everything
                    pos += 3
                else:
                    found = _cap_number(text, pos)
                    if found is None:
                        return None
                    number, pos = found
                    mask |= 1 << number
                if pos >= n or text[pos] != ",":
                    break
                pos += 1
                if not is_word_char(pos):
                    return None
            listed = True
        elif pos < n and text[pos] in "+-":
            return None  # + and - need a list of capabilities
        else:
            mask = everything
        if pos >= n:
            return None
        op = text[pos]
        pos += 1
        if op == "=" and pos < n and text[pos] in "+-":
            if not listed:
                return None
            op = "=+" if text[pos] == "+" else "=-"
            pos += 1
        elif op not in "+-=":
            return None
        flags = ""
        while True:
            if pos < n and text[pos] not in _SPACE:
                if text[pos] not in "eip":
                    return None
                flags += text[pos]
                pos += 1
            elif op != "=":
                return None  # only "=" may stand without flags
            if op in ("=", "=+", "=-"):
                for key in sets:
                    sets[key] &= ~mask
            if op in ("=", "=+", "+"):
                for key in set(flags):
                    sets[key] |= mask
            elif op in ("=-", "-"):
                for key in set(flags):
                    sets[key] &= ~mask
            if pos < n and text[pos] in "+-":
                if not listed:
                    return None
                flags = ""
                op = text[pos]
                pos += 1
                if not (pos < n and text[pos] in _ALPHA):
                    return None
            if pos >= n or text[pos] in _SPACE:
                break


def caps_differ(expected_text: str, actual_xattr: bytes | None, *, cap_count: int | None = None) -> bool:
    """rpm -V's P test: does a file whose attribute is ``actual_xattr`` (None: no
    attribute) differ from the header's ``expected_text`` ("" meaning none)?

    As rpm: an unparsable side counts as absent, and two absent sides agree.
    """
    expected = parse_text(expected_text, cap_count=cap_count) if expected_text else None
    actual = parse_xattr(actual_xattr) if actual_xattr is not None else None
    if expected is None and actual is None:
        return False
    return expected != actual
