"""The header-only file as the store keeps it and the view serves it
(``/usr/lib/sysimage/packages/NEVRA.rpm``): exactly the signed parts and what rpm
derives from them -- the lead rpm writes for the header, the signature header and
its zero padding, the main header, and nothing after it (docs/store-format.md,
"Header files").  Any other byte would be served with no signature covering it.
"""

from __future__ import annotations

import struct

from .header import (
    ENTRY_SIZE,
    HEADER_INTRO,
    LEAD_MAGIC,
    LEAD_SIGNATURE_TYPE,
    LEAD_SIZE,
    MAIN_MAX_DATA,
    MAIN_MAX_ENTRIES,
    SIG_MAX_DATA,
    SIG_MAX_ENTRIES,
    Package,
)

#: The largest header-only file rpm can load (rpm's hdrblobRead limits, verifier.header):
#: a lead, the largest signature header and its padding, the largest main header.
HEADER_FILE_MAX = (LEAD_SIZE + HEADER_INTRO.size + SIG_MAX_ENTRIES * ENTRY_SIZE + SIG_MAX_DATA + 7
                   + HEADER_INTRO.size + MAIN_MAX_ENTRIES * ENTRY_SIZE + MAIN_MAX_DATA)
#: The lead's name field (NUL-terminated) and its reserved tail.
LEAD_NAME_SIZE = 66
LEAD_RESERVED_SIZE = 16
#: Where the lead keeps the build host's architecture and OS numbers.
_ARCHNUM = slice(8, 10)
_OSNUM = slice(76, 78)


def nevr(pkg: Package) -> str:
    """``name-[epoch:]version-release``: what rpm writes into the lead."""
    return pkg.nevra.rsplit(".", 1)[0]


def canonical_lead(pkg: Package) -> bytes:
    """The lead rpm writes for ``pkg``'s header (rpmLeadFromHeader): its magic, version
    3.0 (4.0 kept for an rpm 6 package), the package type (source or binary), the NEVR
    truncated to 65 bytes and NUL-padded, signature type 5, zero reserved bytes.  The
    architecture and OS numbers are the build host's in rpm, not the header's: they
    are kept from the package's own lead."""
    data = pkg.header.data
    name = nevr(pkg).encode("utf-8", "surrogateescape")[:LEAD_NAME_SIZE - 1]
    return b"".join((LEAD_MAGIC, bytes((pkg.lead.major, 0)), struct.pack(">H", int(pkg.is_source)),
                     data[_ARCHNUM], name.ljust(LEAD_NAME_SIZE, b"\0"), data[_OSNUM],
                     struct.pack(">H", LEAD_SIGNATURE_TYPE), bytes(LEAD_RESERVED_SIZE)))


def canonical_header_only(pkg: Package) -> bytes:
    """The header-only file the store keeps for ``pkg``: :func:`canonical_lead`, the
    signature header, its zero padding, the main header."""
    return canonical_lead(pkg) + pkg.header.data[LEAD_SIZE:pkg.header.end]


def header_file_error(pkg: Package) -> str | None:
    """Why the header-only file ``pkg`` was parsed from is not
    :func:`canonical_header_only` -- bytes after the main header, or another lead --
    or None.  (``pkg`` must come from the whole file: ``has_payload`` then says
    whether bytes follow the header.)"""
    if pkg.has_payload:
        extra = len(pkg.header.data) - pkg.header.end
        return f"{extra} byte(s) after the header" if extra > 0 else "bytes after the header"
    if pkg.header.data[:LEAD_SIZE] != canonical_lead(pkg):
        return "the lead does not match the header"
    return None
