"""Writing RPM headers from tag lists, for crafting well-formed and broken inputs in tests.

Only tests use this: the product never writes headers, it keeps the
distribution's bytes exactly.
"""

from __future__ import annotations

import struct

from verifier.header import HEADER_MAGIC, LEAD_MAGIC
from verifier.tags import TYPE_SIZES, Tag, TagType


def encode(typ: TagType, value) -> tuple[bytes, int]:
    """Data bytes and count for a value of the given type."""
    if typ == TagType.STRING:
        return value.encode() + b"\0", 1
    if typ in (TagType.STRING_ARRAY, TagType.I18NSTRING):
        return b"".join(v.encode() + b"\0" for v in value), len(value)
    if typ == TagType.BIN:
        return bytes(value), len(value)
    fmt = {TagType.CHAR: "B", TagType.INT8: "B", TagType.INT16: "H",
           TagType.INT32: "I", TagType.INT64: "Q"}[typ]
    return struct.pack(f">{len(value)}{fmt}", *value), len(value)


def build_header(entries: list[tuple[int, TagType, object]], *, region_tag: int | None = Tag.HEADERIMMUTABLE) -> bytes:
    """A header with the given (tag, type, value) entries, sorted by tag, with an
    immutable region covering all of them unless ``region_tag`` is None."""
    index = []
    store = bytearray()
    for tag, typ, value in sorted(entries, key=lambda e: e[0]):
        data, count = encode(typ, value)
        align = TYPE_SIZES.get(typ, 1)
        store += b"\0" * (-len(store) % align)
        index.append(struct.pack(">iIiI", tag, typ, len(store), count))
        store += data
    if region_tag is not None:
        il = len(index) + 1
        trailer = struct.pack(">iIiI", region_tag, TagType.BIN, -il * 16, 16)
        index.insert(0, struct.pack(">iIiI", region_tag, TagType.BIN, len(store), 16))
        store += trailer
    return HEADER_MAGIC + b"\0" * 4 + struct.pack(">ii", len(index), len(store)) + b"".join(index) + bytes(store)


def build_lead(name: str = "test") -> bytes:
    lead = bytearray(96)
    lead[0:4] = LEAD_MAGIC
    lead[4], lead[5] = 3, 0
    lead[10:10 + len(name)] = name.encode()
    lead[78:80] = struct.pack(">H", 5)
    return bytes(lead)


def build_package(main: bytes, sig_entries=None, payload: bytes = b"") -> bytes:
    sig = build_header(sig_entries or [(1000, TagType.INT32, [len(main)])], region_tag=Tag.HEADERSIGNATURES)
    sig += b"\0" * (-len(sig) % 8)
    return build_lead() + sig + main + payload
