"""Capability texts and attributes against libcap itself (through ctypes).

libcap is what rpm -V uses to compare %caps with a file; it is the oracle here:
its ``cap_from_text`` for the text form and ``cap_get_file``/``setcap`` for the
``security.capability`` attribute.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.prereq import require, require_tools
from verifier.filecaps import (
    CAP_NAMES,
    XATTR_NAME,
    CapSets,
    caps_differ,
    parse_text,
    parse_xattr,
)

CAP_EFFECTIVE, CAP_PERMITTED, CAP_INHERITABLE = 0, 1, 2


class LibCap:
    """The few libcap calls the tests need."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("cap")
        require(name, "libcap is not installed")
        self.lib = ctypes.CDLL(name, use_errno=True)
        self.lib.cap_from_text.restype = ctypes.c_void_p
        self.lib.cap_from_text.argtypes = [ctypes.c_char_p]
        self.lib.cap_get_file.restype = ctypes.c_void_p
        self.lib.cap_get_file.argtypes = [ctypes.c_char_p]
        self.lib.cap_get_flag.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                          ctypes.POINTER(ctypes.c_int)]
        self.lib.cap_free.argtypes = [ctypes.c_void_p]
        self.lib.cap_max_bits.restype = ctypes.c_int

    def max_bits(self) -> int:
        return self.lib.cap_max_bits()

    def _sets(self, cap) -> CapSets | None:
        if not cap:
            return None
        try:
            sets = []
            for flag in (CAP_EFFECTIVE, CAP_PERMITTED, CAP_INHERITABLE):
                mask = 0
                for bit in range(64):
                    value = ctypes.c_int()
                    assert self.lib.cap_get_flag(cap, bit, flag, ctypes.byref(value)) == 0
                    mask |= (value.value != 0) << bit
                sets.append(mask)
            return CapSets(*sets)
        finally:
            self.lib.cap_free(cap)

    def from_text(self, text: str) -> CapSets | None:
        return self._sets(self.lib.cap_from_text(text.encode()))

    def get_file(self, path) -> CapSets | None:
        return self._sets(self.lib.cap_get_file(os.fsencode(path)))


@pytest.fixture(scope="module")
def libcap() -> LibCap:
    return LibCap()


EXAMPLES = [
    "cap_net_raw=ep", "cap_net_raw+ep", "CAP_NET_RAW=EP", "cap_net_raw=pe", "cap_net_raw=p",
    "cap_net_raw=eip", "cap_net_bind_service,cap_net_admin+eip", "cap_net_admin,cap_net_bind_service=ep",
    "=ep", "all=ep", "all+ep cap_sys_admin-e", "= cap_chown+ep", "cap_chown=ep cap_chown-e",
    "cap_chown=+ep", "cap_chown=-ep", "cap_chown+e-p", "cap_chown+e+p", "13=ep", "0x0d=ep", "015=ep",
    "63=p", "64=p", "08=ep", "0x=ep", "cap_chown,=ep", "cap_chown", "cap_chown=", "=", "", "  ",
    "+ep", "-ep", "cap_nosuch=ep", "cap_chown=x", "cap_chown=e p", "cap_chown2=ep", "all,cap_chown=i",
    "cap_chown=ep\tcap_kill=i", "cap_checkpoint_restore=ep", "cap_chown+e+", "cap_chown+e-1",
    "cap_chown=+", "cap_chown=ep,", "allx=ep", "cap_chown=ep=", "cap_chown=e=p",
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_parse_text_equals_libcap(libcap, text):
    assert parse_text(text, cap_count=libcap.max_bits()) == libcap.from_text(text)


def test_examples_include_both_outcomes(libcap):
    """The example list must exercise rejection as well as acceptance."""
    outcomes = {libcap.from_text(t) is None for t in EXAMPLES}
    assert outcomes == {True, False}


_names = st.sampled_from([f"cap_{n}" for n in CAP_NAMES] + ["all", "ALL", "Cap_Chown", "cap_nosuch",
                                                              "1", "40", "63", "64", "0x1f", "017", "08", ""])
_ops = st.sampled_from(["=", "+", "-", "=+", "=-", ""])
_flags = st.text(alphabet="eipx", max_size=3)
_clause = st.builds(lambda names, actions: ",".join(names) + "".join(o + f for o, f in actions),
                    st.lists(_names, max_size=3), st.lists(st.tuples(_ops, _flags), min_size=0, max_size=3))
_texts = st.one_of(
    st.builds(lambda cl, sep: sep.join(cl), st.lists(_clause, max_size=3), st.sampled_from([" ", "\t", "  "])),
    st.text(alphabet="cap_netrawlsdmin0x13=+-eip, \t", max_size=24),
)


@settings(max_examples=3000, deadline=None)
@given(_texts)
def test_parse_text_equals_libcap_generated(libcap, text):
    assert parse_text(text, cap_count=libcap.max_bits()) == libcap.from_text(text)


@pytest.mark.privileged
@pytest.mark.parametrize("text", ["cap_net_raw=ep", "cap_net_raw=p", "cap_net_raw=eip",
                                  "cap_net_admin,cap_net_bind_service+ep", "cap_chown=i",
                                  "cap_chown=ei", "=ep", "cap_checkpoint_restore,cap_chown=ep"])
def test_xattr_written_by_setcap(libcap, tmp_path, text):
    """What setcap writes decodes to what the text says, and back."""
    require_tools("setcap")
    f = tmp_path / "f"
    f.write_bytes(b"")
    subprocess.run(["setcap", text, str(f)], check=True, capture_output=True)
    raw = os.getxattr(f, XATTR_NAME)
    expected = parse_text(text, cap_count=libcap.max_bits())
    assert libcap.get_file(f) == expected
    assert parse_xattr(raw) == expected
    assert not caps_differ(text, raw, cap_count=libcap.max_bits())
    g = tmp_path / "g"
    g.write_bytes(b"")
    os.setxattr(g, XATTR_NAME, parse_xattr(raw).to_xattr())
    assert libcap.get_file(g) == libcap.get_file(f)


@pytest.mark.parametrize("raw, expected", [
    (bytes.fromhex("0100000200200000000000000000000000000000"), CapSets(1 << 13, 1 << 13, 0)),
    (bytes.fromhex("0000000200200000000000000000000000000000"), CapSets(0, 1 << 13, 0)),
    (bytes.fromhex("0100000200000000010000000000000000000000"), CapSets(1, 0, 1)),  # effective = P|I
    (bytes.fromhex("010000010020000000000000"), CapSets(1 << 13, 1 << 13, 0)),  # revision 1
    (bytes.fromhex("01000003" "00200000" + "00" * 16), CapSets(1 << 13, 1 << 13, 0)),  # revision 3
    (bytes.fromhex("0100000200200000"), None),  # short
    (bytes.fromhex("010000020020000000000000000000000000000000"), None),  # long
    (bytes.fromhex("0100000400200000000000000000000000000000"), None),  # unknown revision
    (b"", None),
])
def test_parse_xattr(raw, expected):
    assert parse_xattr(raw) == expected


def test_caps_differ_rules():
    raw = CapSets(1 << 13, 1 << 13, 0).to_xattr()
    assert not caps_differ("cap_net_raw=ep", raw)
    assert caps_differ("cap_net_raw=p", raw)
    assert caps_differ("", raw)                   # the file has some, the header none
    assert caps_differ("cap_net_raw=ep", None)    # and the other way round
    assert not caps_differ("", None)
    assert not caps_differ("not a cap text", None)  # both unusable: rpm sees two NULLs
    assert caps_differ("not a cap text", raw)
    # An attribute with empty sets still differs from no attribute (libcap: NULL vs a cap_t).
    assert caps_differ("", CapSets().to_xattr())
