"""OpenPGP packets, public keys and signatures: what verifying RPM header
signatures needs, parsed by our own small table-driven code, with the
``cryptography`` package doing the mathematics.

Covered (RFC 4880, RFC 9580, draft-ietf-openpgp-pqc):

- ASCII armor (CRC24 checked when present, several blocks per input) and the
  binary packet stream: old and new packet headers, every length encoding,
  partial body lengths for the packet types that allow them.
- Public-key and public-subkey packets (the public part of secret-key packets
  too), versions 3 (RSA only), 4 and 6, with their fingerprints and key IDs.
- Signature packets, versions 3, 4 and 6, their subpackets, and the hash a
  signature covers (document, key, user-ID and binding signatures).
- Verification for RSA, DSA, ECDSA (P-256/P-384/P-521, brainpool), legacy
  EdDSA, Ed25519, Ed448 and the ML-DSA-65+Ed25519 / ML-DSA-87+Ed448
  composites.  ElGamal, ECDH, X25519 and X448 keys parse but cannot verify.

Nothing here decides whether a key is *trusted* (expiry, revocation, binding
signatures, hash policy): that is :mod:`verifier.keyring`.  Every malformed or
unsupported input raises :class:`~verifier.errors.PGPError`; parsing never
allocates more than its input's size.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from .errors import PGPError

__all__ = [
    "HASHES",
    "HashAlgo",
    "KeyFlag",
    "Packet",
    "PubkeyAlgo",
    "PublicKey",
    "RevocationReason",
    "SigType",
    "Signature",
    "Subpacket",
    "SubpacketType",
    "Tag",
    "crc24",
    "dearmor",
    "key_hash_prefix",
    "parse_packets",
    "parse_public_key",
    "parse_signature",
    "user_id_hash_prefix",
]


# --------------------------------------------------------------------------
# Numbers from the RFCs
# --------------------------------------------------------------------------

class Tag(enum.IntEnum):
    """Packet type IDs (RFC 9580 5)."""

    SIGNATURE = 2
    SECRET_KEY = 5
    PUBLIC_KEY = 6
    SECRET_SUBKEY = 7
    COMPRESSED_DATA = 8
    SYMMETRIC_DATA = 9
    MARKER = 10
    LITERAL_DATA = 11
    TRUST = 12
    USER_ID = 13
    PUBLIC_SUBKEY = 14
    USER_ATTRIBUTE = 17
    SEIPD = 18
    AEAD_DATA = 20
    PADDING = 21


#: Packet types that may use partial body lengths (RFC 9580 4.2.1.4).
PARTIAL_LENGTH_TAGS = frozenset({Tag.COMPRESSED_DATA, Tag.SYMMETRIC_DATA, Tag.LITERAL_DATA,
                                 Tag.SEIPD, Tag.AEAD_DATA})


class SigType(enum.IntEnum):
    """Signature type IDs (RFC 9580 5.2.1)."""

    BINARY = 0x00
    TEXT = 0x01
    STANDALONE = 0x02
    GENERIC_CERTIFICATION = 0x10
    PERSONA_CERTIFICATION = 0x11
    CASUAL_CERTIFICATION = 0x12
    POSITIVE_CERTIFICATION = 0x13
    SUBKEY_BINDING = 0x18
    PRIMARY_KEY_BINDING = 0x19
    DIRECT_KEY = 0x1F
    KEY_REVOCATION = 0x20
    SUBKEY_REVOCATION = 0x28
    CERTIFICATION_REVOCATION = 0x30
    TIMESTAMP = 0x40
    THIRD_PARTY_CONFIRMATION = 0x50


CERTIFICATION_TYPES = frozenset(range(SigType.GENERIC_CERTIFICATION,
                                      SigType.POSITIVE_CERTIFICATION + 1))


class SubpacketType(enum.IntEnum):
    """Signature subpacket type IDs (RFC 9580 5.2.3.7)."""

    CREATION_TIME = 2
    SIGNATURE_EXPIRATION = 3
    EXPORTABLE = 4
    TRUST_SIGNATURE = 5
    REGULAR_EXPRESSION = 6
    REVOCABLE = 7
    KEY_EXPIRATION = 9
    PREFERRED_SYMMETRIC = 11
    REVOCATION_KEY = 12
    ISSUER_KEY_ID = 16
    NOTATION = 20
    PREFERRED_HASH = 21
    PREFERRED_COMPRESSION = 22
    KEY_SERVER_PREFERENCES = 23
    PREFERRED_KEY_SERVER = 24
    PRIMARY_USER_ID = 25
    POLICY_URI = 26
    KEY_FLAGS = 27
    SIGNERS_USER_ID = 28
    REVOCATION_REASON = 29
    FEATURES = 30
    SIGNATURE_TARGET = 31
    EMBEDDED_SIGNATURE = 32
    ISSUER_FINGERPRINT = 33
    PREFERRED_AEAD = 34
    INTENDED_RECIPIENT = 35
    ATTESTED_CERTIFICATIONS = 37
    KEY_BLOCK = 38
    PREFERRED_AEAD_CIPHERSUITES = 39


#: Subpackets we understand well enough to accept when marked critical.  A
#: critical notation is never understood (we know no notations); a critical
#: signature target is refused as Sequoia's standard policy does.
UNDERSTOOD_SUBPACKETS = frozenset(SubpacketType) - {SubpacketType.NOTATION,
                                                    SubpacketType.SIGNATURE_TARGET}
SUBPACKET_CRITICAL = 0x80


class KeyFlag(enum.IntFlag):
    """First octet of the key-flags subpacket (RFC 9580 5.2.3.29)."""

    CERTIFY = 0x01
    SIGN = 0x02
    ENCRYPT_COMMUNICATIONS = 0x04
    ENCRYPT_STORAGE = 0x08
    SPLIT = 0x10
    AUTHENTICATE = 0x20
    GROUP = 0x80


class RevocationReason(enum.IntEnum):
    """Reason-for-revocation codes (RFC 9580 5.2.3.31)."""

    NO_REASON = 0
    SUPERSEDED = 1
    COMPROMISED = 2
    RETIRED = 3
    USER_ID_INVALID = 32


class PubkeyAlgo(enum.IntEnum):
    """Public-key algorithm IDs (RFC 9580 9.1, draft-ietf-openpgp-pqc)."""

    RSA = 1
    RSA_ENCRYPT = 2
    RSA_SIGN = 3
    ELGAMAL = 16
    DSA = 17
    ECDH = 18
    ECDSA = 19
    ELGAMAL_SIGN = 20
    EDDSA_LEGACY = 22
    X25519 = 25
    X448 = 26
    ED25519 = 27
    ED448 = 28
    MLDSA65_ED25519 = 30
    MLDSA87_ED448 = 31


# Key-packet framing when a key is hashed into a signature (RFC 9580 5.2.4).
KEY_HASH_TAG_V4 = 0x99
KEY_HASH_TAG_V6 = 0x9B
USER_ID_HASH_TAG = 0xB4
USER_ATTRIBUTE_HASH_TAG = 0xD1
# The final trailer of v4/v6 signatures: version, 0xFF, 4-byte length.
SIG_TRAILER_MARKER = 0xFF
# v3 signatures hash exactly the type and the creation time.
V3_SIG_HASHED_LENGTH = 5
KEY_ID_LENGTH = 8
# Embedded signatures (back-signatures) never nest deeper than this.
MAX_EMBEDDED_DEPTH = 1

ARMOR_CRC24_INIT = 0xB704CE
ARMOR_CRC24_POLY = 0x1864CFB


# --------------------------------------------------------------------------
# Hash algorithms
# --------------------------------------------------------------------------

def _hashlib_constructor(name: str) -> Callable[[], Any] | None:
    try:
        hashlib.new(name)
    except ValueError:
        return None
    return getattr(hashlib, name, None) or (lambda: hashlib.new(name))


@dataclass(frozen=True, slots=True)
class HashAlgo:
    """One OpenPGP hash algorithm.

    Attributes:
        id: the OpenPGP hash algorithm ID.
        name: the name rpm and gpg print (``SHA256``).
        digest_size: digest length in bytes.
        salt_size: salt length of v6 signatures with this hash (None: not for v6).
        new: a ``hashlib`` constructor, or None if this Python cannot compute it.
        crypto: the ``cryptography`` hash class (for RSA/DSA/ECDSA ``Prehashed``),
            or None if this ``cryptography`` lacks it.
    """

    id: int
    name: str
    digest_size: int
    salt_size: int | None
    new: Callable[[], Any] | None
    crypto: type[hashes.HashAlgorithm] | None

    @property
    def supported(self) -> bool:
        return self.new is not None and self.crypto is not None


#: Hash algorithms by OpenPGP ID (RFC 9580 9.5).  RIPEMD-160 depends on the
#: OpenSSL and ``cryptography`` builds (cryptography 50 dropped it): when
#: either lacks it, signatures using it cannot be checked.
HASHES: dict[int, HashAlgo] = {h.id: h for h in (
    HashAlgo(1, "MD5", 16, None, _hashlib_constructor("md5"), hashes.MD5),
    HashAlgo(2, "SHA1", 20, None, _hashlib_constructor("sha1"), hashes.SHA1),
    HashAlgo(3, "RIPEMD160", 20, None, _hashlib_constructor("ripemd160"), getattr(hashes, "RIPEMD160", None)),
    HashAlgo(8, "SHA256", 32, 16, _hashlib_constructor("sha256"), hashes.SHA256),
    HashAlgo(9, "SHA384", 48, 24, _hashlib_constructor("sha384"), hashes.SHA384),
    HashAlgo(10, "SHA512", 64, 32, _hashlib_constructor("sha512"), hashes.SHA512),
    HashAlgo(11, "SHA224", 28, 16, _hashlib_constructor("sha224"), hashes.SHA224),
    HashAlgo(12, "SHA3-256", 32, 16, _hashlib_constructor("sha3_256"), hashes.SHA3_256),
    HashAlgo(14, "SHA3-512", 64, 32, _hashlib_constructor("sha3_512"), hashes.SHA3_512),
)}


def hash_name(hash_id: int) -> str:
    h = HASHES.get(hash_id)
    return h.name if h else f"hash#{hash_id}"


# --------------------------------------------------------------------------
# A bounded reader
# --------------------------------------------------------------------------

class _Reader:
    """A cursor over bytes; every read past the end raises PGPError."""

    __slots__ = ("data", "pos", "end", "what")

    def __init__(self, data: bytes, what: str, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        self.what = what

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise PGPError(f"{self.what}: truncated (need {n} bytes, {self.end - self.pos} left)")
        start = self.pos
        self.pos += n
        return self.data[start:self.pos]

    def u8(self) -> int:
        if self.pos >= self.end:
            raise PGPError(f"{self.what}: truncated")
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def mpi(self) -> bytes:
        """A multiprecision integer's magnitude bytes (RFC 9580 3.2)."""
        bits = self.u16()
        return self.take((bits + 7) // 8)

    def rest(self) -> bytes:
        return self.take(self.end - self.pos)

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise PGPError(f"{self.what}: {self.end - self.pos} unexpected trailing bytes")


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


# --------------------------------------------------------------------------
# Armor
# --------------------------------------------------------------------------

def _crc24_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= ARMOR_CRC24_POLY
        table.append(crc & 0xFFFFFF)
    return tuple(table)


_CRC24_TABLE = _crc24_table()


def crc24(data: bytes) -> int:
    """The armor checksum of RFC 9580 6.1."""
    crc = ARMOR_CRC24_INIT
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ _CRC24_TABLE[((crc >> 16) ^ byte) & 0xFF]
    return crc


_ARMOR_BEGIN = re.compile(rb"^-----BEGIN PGP ([A-Z0-9 ,/]+)-----\s*$")
_ARMOR_END = re.compile(rb"^-----END PGP ([A-Z0-9 ,/]+)-----\s*$")
_ARMOR_HEADER = re.compile(rb"^[!-9;-~]+: ?.*$")  # "Key: value"
_ARMOR_CRC = re.compile(rb"^=([A-Za-z0-9+/]{4})$")


def is_armored(data: bytes) -> bool:
    """Whether ``data`` holds an ASCII-armored block."""
    return b"-----BEGIN PGP " in data


def dearmor(data: bytes) -> list[bytes]:
    """The binary contents of every ASCII-armored block in ``data``, in order.

    Text outside the blocks is ignored, armor headers (``Version:``,
    ``Comment:``…) are skipped, and the CRC24 line is checked when present.
    A cleartext-signed message is not supported.
    """
    blocks: list[bytes] = []
    lines = data.splitlines()
    i = 0
    while i < len(lines):
        begin = _ARMOR_BEGIN.match(lines[i].strip())
        i += 1
        if not begin:
            continue
        label = begin.group(1)
        if label == b"SIGNED MESSAGE":
            raise PGPError("cleartext-signed messages are not supported")
        # Armor headers run until the first empty line.  Some tools omit both
        # the headers and the empty line; base64 never contains ':'.
        while i < len(lines) and _ARMOR_HEADER.match(lines[i].strip()):
            i += 1
        body: list[bytes] = []
        checksum: bytes | None = None
        while True:
            if i >= len(lines):
                raise PGPError(f"armor: no END line for {label.decode()}")
            line = lines[i].strip()
            i += 1
            end = _ARMOR_END.match(line)
            if end:
                if end.group(1) != label:
                    raise PGPError("armor: END label does not match BEGIN")
                break
            crc = _ARMOR_CRC.match(line)
            if crc and checksum is None:
                checksum = crc.group(1)
                continue
            if checksum is not None and line:
                raise PGPError("armor: data after the checksum line")
            body.append(line)
        try:
            decoded = base64.b64decode(b"".join(body), validate=True)
        except (binascii.Error, ValueError) as e:
            raise PGPError(f"armor: bad base64: {e}") from None
        if checksum is not None:
            expected = _int(base64.b64decode(checksum))
            if crc24(decoded) != expected:
                raise PGPError("armor: CRC24 checksum mismatch")
        blocks.append(decoded)
    return blocks


# --------------------------------------------------------------------------
# Packets
# --------------------------------------------------------------------------

class Packet(NamedTuple):
    """One packet: its type ID and its body (partial bodies joined)."""

    tag: int
    body: bytes


# New-format length octets (RFC 9580 4.2.1).
_ONE_OCTET_MAX = 191
_TWO_OCTET_FIRST_MAX = 223
_FIVE_OCTET_MARK = 255
_OLD_LENGTH_SIZES = (1, 2, 4)  # old-format length types 0, 1, 2; 3 = indeterminate
_PACKET_HEADER_BIT = 0x80
_NEW_FORMAT_BIT = 0x40


def _new_length(r: _Reader) -> tuple[int, bool]:
    """A new-format body length; the flag says it is a partial length."""
    o1 = r.u8()
    if o1 <= _ONE_OCTET_MAX:
        return o1, False
    if o1 <= _TWO_OCTET_FIRST_MAX:
        return ((o1 - 192) << 8) + r.u8() + 192, False
    if o1 == _FIVE_OCTET_MARK:
        return r.u32(), False
    return 1 << (o1 & 0x1F), True


def parse_packets(data: bytes) -> list[Packet]:
    """Split a binary OpenPGP packet stream into packets."""
    r = _Reader(data, "packet")
    packets: list[Packet] = []
    while r.remaining():
        ctb = r.u8()
        if not ctb & _PACKET_HEADER_BIT:
            raise PGPError(f"packet: invalid header octet 0x{ctb:02x} at offset {r.pos - 1}")
        tag = ctb & 0x3F if ctb & _NEW_FORMAT_BIT else (ctb >> 2) & 0x0F
        if tag == 0:
            raise PGPError("packet: reserved packet type 0")
        if ctb & _NEW_FORMAT_BIT:
            length, partial = _new_length(r)
            if not partial:
                packets.append(Packet(tag, r.take(length)))
                continue
            if tag not in PARTIAL_LENGTH_TAGS:
                raise PGPError(f"packet: partial body length not allowed for packet type {tag}")
            parts = [r.take(length)]
            while partial:
                length, partial = _new_length(r)
                parts.append(r.take(length))
            packets.append(Packet(tag, b"".join(parts)))
        else:
            length_type = ctb & 0x03
            if length_type == 3:  # indeterminate: to the end of the input
                packets.append(Packet(tag, r.rest()))
            else:
                length = _int(r.take(_OLD_LENGTH_SIZES[length_type]))
                packets.append(Packet(tag, r.take(length)))
    return packets


# --------------------------------------------------------------------------
# Public-key algorithms: parsing, loading into cryptography, verifying
# --------------------------------------------------------------------------

class _Unusable(Exception):
    """A key that parses but cannot verify anything; the message says why."""


@dataclass(frozen=True, slots=True)
class _Curve:
    name: str
    make: Callable[[], ec.EllipticCurve] | None  # None: an Edwards/Montgomery curve


#: Elliptic curves by the OID bytes of RFC 9580 9.2 (plus the brainpool curves
#: and the short Ed25519/X25519 OIDs some implementations write).
CURVES: dict[bytes, _Curve] = {
    bytes.fromhex("2a8648ce3d030107"): _Curve("P-256", ec.SECP256R1),
    bytes.fromhex("2b81040022"): _Curve("P-384", ec.SECP384R1),
    bytes.fromhex("2b81040023"): _Curve("P-521", ec.SECP521R1),
    bytes.fromhex("2b2403030208010107"): _Curve("brainpoolP256r1", ec.BrainpoolP256R1),
    bytes.fromhex("2b240303020801010b"): _Curve("brainpoolP384r1", ec.BrainpoolP384R1),
    bytes.fromhex("2b240303020801010d"): _Curve("brainpoolP512r1", ec.BrainpoolP512R1),
    bytes.fromhex("2b06010401da470f01"): _Curve("Ed25519", None),
    bytes.fromhex("2b6570"): _Curve("Ed25519", None),
    bytes.fromhex("2b6571"): _Curve("Ed448", None),
    bytes.fromhex("2b060104019755010501"): _Curve("Curve25519", None),
    bytes.fromhex("2b656e"): _Curve("Curve25519", None),
    bytes.fromhex("2b656f"): _Curve("X448", None),
}
_EC_POINT_UNCOMPRESSED = 0x04
_EDDSA_POINT_PREFIX = 0x40     # legacy EdDSA: 0x40 || native point
_ED25519_SIZE = 32
_ED448_SIZE = 57
_X25519_SIZE = 32
_X448_SIZE = 56
_MLDSA65_PUBLIC_SIZE, _MLDSA65_SIG_SIZE = 1952, 3309
_MLDSA87_PUBLIC_SIZE, _MLDSA87_SIG_SIZE = 2592, 4627
#: The composites need a hash of at least 256 bits (draft-ietf-openpgp-pqc 5.2.2).
_COMPOSITE_MIN_DIGEST = 32


def _curve_name(oid: bytes) -> str:
    c = CURVES.get(oid)
    return c.name if c else f"OID {oid.hex()}"


def _read_oid(r: _Reader) -> bytes:
    n = r.u8()
    if n in (0, 0xFF):
        raise PGPError("key: reserved curve OID length")
    return r.take(n)


# Parsers of the algorithm-specific public key fields; each returns a tuple.
def _key_rsa(r: _Reader) -> tuple:
    return (r.mpi(), r.mpi())                      # n, e


def _key_dsa(r: _Reader) -> tuple:
    return (r.mpi(), r.mpi(), r.mpi(), r.mpi())    # p, q, g, y


def _key_elgamal(r: _Reader) -> tuple:
    return (r.mpi(), r.mpi(), r.mpi())             # p, g, y


def _key_ecc(r: _Reader) -> tuple:
    return (_read_oid(r), r.mpi())                 # curve OID, point


def _key_ecdh(r: _Reader) -> tuple:
    oid, point = _read_oid(r), r.mpi()
    kdf = r.take(r.u8())                           # KDF parameters
    return (oid, point, kdf)


def _fixed(*sizes: int) -> Callable[[_Reader], tuple]:
    def parse(r: _Reader) -> tuple:
        return tuple(r.take(n) for n in sizes)
    return parse


def _sig_mpis(count: int) -> Callable[[_Reader], tuple]:
    def parse(r: _Reader) -> tuple:
        return tuple(r.mpi() for _ in range(count))
    return parse


# Loaders: public parameters -> cryptography key object (raise _Unusable).
def _load_rsa(p: tuple) -> Any:
    return rsa.RSAPublicNumbers(_int(p[1]), _int(p[0])).public_key()


def _dsa_numbers() -> tuple:
    """cryptography's DSA number classes.  Its release 51 deprecates DSA (each name of
    the module warns when looked up); RPM still accepts DSA signatures of v4 keys, and
    so does this verifier where the policy lets it, so they are looked up once, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return dsa.DSAParameterNumbers, dsa.DSAPublicNumbers


_DSA_PARAMETER_NUMBERS, _DSA_PUBLIC_NUMBERS = _dsa_numbers()


def _load_dsa(p: tuple) -> Any:
    params = _DSA_PARAMETER_NUMBERS(_int(p[0]), _int(p[1]), _int(p[2]))
    return _DSA_PUBLIC_NUMBERS(_int(p[3]), params).public_key()


def _load_ecdsa(p: tuple) -> Any:
    curve = CURVES.get(p[0])
    if curve is None or curve.make is None:
        raise _Unusable(f"ECDSA on unsupported curve {_curve_name(p[0])}")
    if not p[1] or p[1][0] != _EC_POINT_UNCOMPRESSED:
        raise _Unusable("ECDSA point is not in uncompressed form")
    return ec.EllipticCurvePublicKey.from_encoded_point(curve.make(), p[1])


def _strip_eddsa_prefix(point: bytes, size: int) -> bytes:
    if len(point) == size + 1 and point[0] == _EDDSA_POINT_PREFIX:
        return point[1:]
    if len(point) == size:
        return point
    raise _Unusable("EdDSA point has the wrong size")


def _load_eddsa_legacy(p: tuple) -> Any:
    name = _curve_name(p[0])
    if name == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_strip_eddsa_prefix(p[1], _ED25519_SIZE))
    if name == "Ed448":
        return ed448.Ed448PublicKey.from_public_bytes(_strip_eddsa_prefix(p[1], _ED448_SIZE))
    raise _Unusable(f"EdDSA on unsupported curve {name}")


def _load_ed25519(p: tuple) -> Any:
    return ed25519.Ed25519PublicKey.from_public_bytes(p[0])


def _load_ed448(p: tuple) -> Any:
    return ed448.Ed448PublicKey.from_public_bytes(p[0])


def _load_mldsa65(p: tuple) -> Any:
    return (ed25519.Ed25519PublicKey.from_public_bytes(p[0]),
            mldsa.MLDSA65PublicKey.from_public_bytes(p[1]))


def _load_mldsa87(p: tuple) -> Any:
    return (ed448.Ed448PublicKey.from_public_bytes(p[0]),
            mldsa.MLDSA87PublicKey.from_public_bytes(p[1]))


# Verifiers: (key object, signature fields, hash, digest) -> None or raise
# InvalidSignature.
def _verify_rsa(key: Any, sig: tuple, h: HashAlgo, digest: bytes) -> None:
    size = (key.key_size + 7) // 8
    s = sig[0].lstrip(b"\0")
    if len(s) > size:
        raise InvalidSignature
    key.verify(s.rjust(size, b"\0"), digest, padding.PKCS1v15(), Prehashed(h.crypto()))


def _verify_dsa(key: Any, sig: tuple, h: HashAlgo, digest: bytes) -> None:
    # OpenSSL truncates the digest to the bit length of q (FIPS 186-4 4.6).
    key.verify(encode_dss_signature(_int(sig[0]), _int(sig[1])), digest, Prehashed(h.crypto()))


def _verify_ecdsa(key: Any, sig: tuple, h: HashAlgo, digest: bytes) -> None:
    key.verify(encode_dss_signature(_int(sig[0]), _int(sig[1])), digest,
               ec.ECDSA(Prehashed(h.crypto())))


def _pad(b: bytes, size: int) -> bytes:
    b = b.lstrip(b"\0")
    if len(b) > size:
        raise InvalidSignature
    return b.rjust(size, b"\0")


def _verify_eddsa_legacy(key: Any, sig: tuple, h: HashAlgo, digest: bytes) -> None:
    # Legacy EdDSA signs the digest; r and s are MPIs (leading zeros dropped).
    size = _ED448_SIZE if isinstance(key, ed448.Ed448PublicKey) else _ED25519_SIZE
    key.verify(_pad(sig[0], size) + _pad(sig[1], size), digest)


def _verify_eddsa(key: Any, sig: tuple, h: HashAlgo, digest: bytes) -> None:
    key.verify(sig[0], digest)


def _verify_composite(key: Any, sig: tuple, h: HashAlgo, digest: bytes) -> None:
    # draft-ietf-openpgp-pqc 5.2: both components sign the same data digest
    # (EdDSA and ML-DSA with an empty context); both must verify.
    if h.digest_size < _COMPOSITE_MIN_DIGEST:
        raise InvalidSignature
    eddsa_key, mldsa_key = key
    eddsa_key.verify(sig[0], digest)
    mldsa_key.verify(sig[1], digest)


@dataclass(frozen=True, slots=True)
class _Algo:
    """How to handle one public-key algorithm.

    ``load``/``parse_sig``/``verify`` are None for algorithms that cannot
    sign; ``unusable`` then says why.  ``v6_only`` algorithms must not appear
    in v3/v4 keys or signatures.
    """

    name: str
    parse_key: Callable[[_Reader], tuple]
    parse_sig: Callable[[_Reader], tuple] | None = None
    load: Callable[[tuple], Any] | None = None
    verify: Callable[[Any, tuple, HashAlgo, bytes], None] | None = None
    unusable: str | None = None
    v6_only: bool = False


_RSA = dict(parse_key=_key_rsa, parse_sig=_sig_mpis(1), load=_load_rsa, verify=_verify_rsa)

#: Public-key algorithms by ID.  Unknown IDs parse only where the key or
#: signature framing says how long their fields are (v6 keys, and any key or
#: signature packet's tail).
ALGORITHMS: dict[int, _Algo] = {
    PubkeyAlgo.RSA: _Algo("RSA", **_RSA),
    PubkeyAlgo.RSA_SIGN: _Algo("RSA", **_RSA),
    PubkeyAlgo.RSA_ENCRYPT: _Algo("RSA (encrypt-only)", _key_rsa,
                                  unusable="RSA encrypt-only keys cannot sign"),
    PubkeyAlgo.ELGAMAL: _Algo("ElGamal", _key_elgamal, unusable="ElGamal keys cannot sign"),
    PubkeyAlgo.ELGAMAL_SIGN: _Algo("ElGamal (sign)", _key_elgamal,
                                   unusable="ElGamal signatures are not supported"),
    PubkeyAlgo.DSA: _Algo("DSA", _key_dsa, _sig_mpis(2), _load_dsa, _verify_dsa),
    PubkeyAlgo.ECDH: _Algo("ECDH", _key_ecdh, unusable="ECDH keys cannot sign"),
    PubkeyAlgo.ECDSA: _Algo("ECDSA", _key_ecc, _sig_mpis(2), _load_ecdsa, _verify_ecdsa),
    PubkeyAlgo.EDDSA_LEGACY: _Algo("EdDSA", _key_ecc, _sig_mpis(2), _load_eddsa_legacy,
                                   _verify_eddsa_legacy),
    PubkeyAlgo.X25519: _Algo("X25519", _fixed(_X25519_SIZE), unusable="X25519 keys cannot sign"),
    PubkeyAlgo.X448: _Algo("X448", _fixed(_X448_SIZE), unusable="X448 keys cannot sign"),
    PubkeyAlgo.ED25519: _Algo("Ed25519", _fixed(_ED25519_SIZE), _fixed(2 * _ED25519_SIZE),
                              _load_ed25519, _verify_eddsa),
    PubkeyAlgo.ED448: _Algo("Ed448", _fixed(_ED448_SIZE), _fixed(2 * _ED448_SIZE),
                            _load_ed448, _verify_eddsa),
    PubkeyAlgo.MLDSA65_ED25519: _Algo(
        "ML-DSA-65+Ed25519", _fixed(_ED25519_SIZE, _MLDSA65_PUBLIC_SIZE),
        _fixed(2 * _ED25519_SIZE, _MLDSA65_SIG_SIZE), _load_mldsa65, _verify_composite,
        v6_only=True),
    PubkeyAlgo.MLDSA87_ED448: _Algo(
        "ML-DSA-87+Ed448", _fixed(_ED448_SIZE, _MLDSA87_PUBLIC_SIZE),
        _fixed(2 * _ED448_SIZE, _MLDSA87_SIG_SIZE), _load_mldsa87, _verify_composite,
        v6_only=True),
}


def algorithm_name(algo: int) -> str:
    a = ALGORITHMS.get(algo)
    return a.name if a else f"algorithm#{algo}"


# --------------------------------------------------------------------------
# Public keys
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, eq=False)
class PublicKey:
    """A primary key or subkey (public part).

    Attributes:
        version: key version (3, 4 or 6).
        algorithm: public-key algorithm ID.
        created: creation time, seconds since the epoch.
        body: the public-key packet body (the public part of a secret key),
            exactly as hashed into fingerprints and self-signatures.
        params: the algorithm-specific public fields.
        fingerprint: 16 (v3), 20 (v4) or 32 (v6) bytes.
        key_id: the 8-byte key ID.
        v3_expiration: for v3 keys, the expiration time from the key packet
            (None: never).
        curve: the curve name for ECC keys.
        bits: the key size (modulus/prime bits, or curve size).
        unusable: why this key cannot verify signatures, or None.
        subkey: whether it came from a subkey packet.
    """

    version: int
    algorithm: int
    created: int
    body: bytes
    params: tuple
    fingerprint: bytes
    key_id: bytes
    v3_expiration: int | None
    curve: str | None
    bits: int | None
    unusable: str | None
    subkey: bool
    _crypto: Any = field(repr=False, compare=False)

    @property
    def usable(self) -> bool:
        """Whether we can verify signatures made with this key."""
        return self.unusable is None

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    @property
    def algorithm_name(self) -> str:
        name = algorithm_name(self.algorithm)
        return f"{name} {self.curve}" if self.curve and self.curve not in name else name

    def hash_prefix(self, sig_version: int) -> bytes:
        """How this key is hashed into a signature of ``sig_version``."""
        return key_hash_prefix(self.body, sig_version)

    def verify_digest(self, sig: Signature, digest: bytes) -> bool:
        """Whether ``sig`` is this key's signature over ``digest``.

        ``digest`` is what :meth:`Signature.digest` returns for the signed
        material.  The left 16 bits are checked before the public-key
        operation.  False for a signature by another algorithm or a key/
        signature version mismatch; PGPError if this key cannot verify.
        """
        if self.unusable:
            raise PGPError(f"key {self.key_id_hex} cannot verify: {self.unusable}")
        if sig.pubkey_algo != self.algorithm or digest[:2] != sig.left16:
            return False
        # RFC 9580 5.2: v6 keys make only v6 signatures, and v6 signatures
        # come only from v6 keys.
        if (self.version == 6) != (sig.version == 6):
            return False
        algo = ALGORITHMS[self.algorithm]
        try:
            algo.verify(self._crypto, sig.material, HASHES[sig.hash_algo], digest)
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            return False
        return True

    def verify(self, sig: Signature, data: bytes) -> bool:
        """Whether ``sig`` is this key's signature over the document ``data``."""
        return self.verify_digest(sig, sig.digest(data))


def key_hash_prefix(key_body: bytes, sig_version: int) -> bytes:
    """The framing of a key packet body hashed into a signature (RFC 9580 5.2.4)."""
    if sig_version == 6:
        return bytes((KEY_HASH_TAG_V6,)) + len(key_body).to_bytes(4, "big") + key_body
    return bytes((KEY_HASH_TAG_V4,)) + len(key_body).to_bytes(2, "big") + key_body


def user_id_hash_prefix(value: bytes, sig_version: int, tag: int = Tag.USER_ID) -> bytes:
    """The framing of a user ID (or user attribute) hashed into a certification."""
    if sig_version == 3:
        return value
    marker = USER_ATTRIBUTE_HASH_TAG if tag == Tag.USER_ATTRIBUTE else USER_ID_HASH_TAG
    return bytes((marker,)) + len(value).to_bytes(4, "big") + value


_V3_KEY_ALGORITHMS = frozenset({PubkeyAlgo.RSA, PubkeyAlgo.RSA_ENCRYPT, PubkeyAlgo.RSA_SIGN})
_SECONDS_PER_DAY = 86400


def parse_public_key(body: bytes, tag: int = Tag.PUBLIC_KEY) -> PublicKey:
    """Parse a public-key, public-subkey, secret-key or secret-subkey packet body.

    For secret keys only the public part is kept.  An algorithm we cannot use
    still parses (``unusable`` says why) when the packet framing tells where
    its fields end.
    """
    if tag not in (Tag.PUBLIC_KEY, Tag.PUBLIC_SUBKEY, Tag.SECRET_KEY, Tag.SECRET_SUBKEY):
        raise PGPError(f"key: packet type {tag} is not a key")
    secret = tag in (Tag.SECRET_KEY, Tag.SECRET_SUBKEY)
    r = _Reader(body, "key")
    version = r.u8()
    created = r.u32()
    v3_expiration = None
    if version == 3:
        days = r.u16()
        v3_expiration = created + days * _SECONDS_PER_DAY if days else None
    elif version not in (4, 6):
        raise PGPError(f"key: unsupported key version {version}")
    algorithm = r.u8()
    algo = ALGORITHMS.get(algorithm)
    if version == 3 and algorithm not in _V3_KEY_ALGORITHMS:
        raise PGPError(f"key: v3 key with non-RSA algorithm {algorithm}")
    if algo is not None and algo.v6_only and version != 6:
        raise PGPError(f"key: {algo.name} requires a v6 key")

    if version == 6:
        material_length = r.u32()
        if material_length > r.remaining():
            raise PGPError("key: material length exceeds the packet")
        fields = _Reader(body, "key material", r.pos, r.pos + material_length)
        r.pos = fields.end
        if algo is not None:
            params = algo.parse_key(fields)
            fields.expect_end()
        else:
            params = (fields.rest(),)
    elif algo is not None:
        params = algo.parse_key(r)
    elif secret:
        raise PGPError(f"key: cannot delimit a secret key of unknown algorithm {algorithm}")
    else:
        params = (r.rest(),)
    public_end = r.pos
    if not secret:
        r.expect_end()
    public = body[:public_end] if secret else body

    if version == 3:
        n, e = params
        if len(n) < KEY_ID_LENGTH:
            raise PGPError("key: v3 RSA modulus too short")
        fingerprint = hashlib.md5(n + e).digest()
        key_id = n[-KEY_ID_LENGTH:]
    elif version == 4:
        fingerprint = hashlib.sha1(key_hash_prefix(public, 4)).digest()
        key_id = fingerprint[-KEY_ID_LENGTH:]
    else:
        fingerprint = hashlib.sha256(key_hash_prefix(public, 6)).digest()
        key_id = fingerprint[:KEY_ID_LENGTH]

    curve = _curve_name(params[0]) if algorithm in (
        PubkeyAlgo.ECDH, PubkeyAlgo.ECDSA, PubkeyAlgo.EDDSA_LEGACY) else None
    bits = _key_bits(algorithm, params)
    crypto = None
    if algo is None:
        unusable = f"unsupported public-key algorithm {algorithm}"
    elif algo.load is None:
        unusable = algo.unusable
    else:
        try:
            crypto = algo.load(params)
            unusable = None
        except _Unusable as e:
            unusable = str(e)
        except (ValueError, UnsupportedAlgorithm) as e:
            unusable = f"{algo.name} key rejected by the crypto backend: {e}"
    return PublicKey(version, algorithm, created, public, params, fingerprint, key_id,
                     v3_expiration, curve, bits, unusable,
                     tag in (Tag.PUBLIC_SUBKEY, Tag.SECRET_SUBKEY), crypto)


def _key_bits(algorithm: int, params: tuple) -> int | None:
    if algorithm in (PubkeyAlgo.RSA, PubkeyAlgo.RSA_ENCRYPT, PubkeyAlgo.RSA_SIGN,
                     PubkeyAlgo.DSA, PubkeyAlgo.ELGAMAL, PubkeyAlgo.ELGAMAL_SIGN):
        return _int(params[0]).bit_length()
    return None


# --------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Subpacket:
    """One signature subpacket.

    Attributes:
        type: the subpacket type ID (critical bit removed).
        critical: whether the critical bit was set.
        data: the subpacket body.
        hashed: whether it came from the hashed area.
    """

    type: int
    critical: bool
    data: bytes
    hashed: bool


def _parse_subpackets(data: bytes, hashed: bool) -> list[Subpacket]:
    r = _Reader(data, "subpacket")
    out = []
    while r.remaining():
        o1 = r.u8()
        if o1 <= _ONE_OCTET_MAX:
            length = o1
        elif o1 < _FIVE_OCTET_MARK:
            length = ((o1 - 192) << 8) + r.u8() + 192
        else:
            length = r.u32()
        if length == 0:
            raise PGPError("subpacket: zero length")
        body = r.take(length)
        out.append(Subpacket(body[0] & ~SUBPACKET_CRITICAL, bool(body[0] & SUBPACKET_CRITICAL),
                             body[1:], hashed))
    return out


@dataclass(frozen=True, slots=True)
class Signature:
    """A parsed signature packet.

    Attributes:
        version: 3, 4 or 6.
        sig_type: the signature type (:class:`SigType`).
        pubkey_algo: public-key algorithm ID of the signing key.
        hash_algo: hash algorithm ID.
        created: signature creation time (seconds since the epoch).
        left16: the first two bytes of the signed digest.
        salt: the v6 salt (empty before v6).
        material: the algorithm-specific signature fields (a tuple with
            the raw remainder when the algorithm is unknown).
        hashed: hashed subpackets; unhashed: unhashed subpackets.
        issuer_key_ids: issuer key IDs from subpackets (either area) or the v3
            header.
        issuer_fingerprints: issuer fingerprints from subpackets (either area).
        expiration: signature validity period in seconds (None: never).
        key_expiration: key validity period after key creation (None: never).
        key_flags: first key-flags octet, or None if absent.
        revocation_reason: (code, text) or None.
        primary_user_id: the primary-user-ID flag.
        embedded: embedded signatures that parsed (back-signatures).
        unknown_critical: types of critical hashed subpackets we do not
            understand; such a signature must be treated as invalid.
        hashed_tail: the bytes hashed after the signed material (v3: type and
            time; v4/v6: the hashed part of the packet and the trailer).
    """

    version: int
    sig_type: int
    pubkey_algo: int
    hash_algo: int
    created: int
    left16: bytes
    salt: bytes
    material: tuple
    hashed: tuple[Subpacket, ...]
    unhashed: tuple[Subpacket, ...]
    issuer_key_ids: tuple[bytes, ...]
    issuer_fingerprints: tuple[bytes, ...]
    expiration: int | None
    key_expiration: int | None
    key_flags: int | None
    revocation_reason: tuple[int, str] | None
    primary_user_id: bool
    embedded: tuple[Signature, ...]
    unknown_critical: tuple[int, ...]
    hashed_tail: bytes

    @property
    def hash(self) -> HashAlgo | None:
        return HASHES.get(self.hash_algo)

    @property
    def expires_at(self) -> int | None:
        return self.created + self.expiration if self.expiration else None

    def issuer_ids(self) -> set[bytes]:
        """Every key ID this signature names, including those implied by
        issuer fingerprints (low 64 bits for v4, high 64 bits for v6)."""
        ids = set(self.issuer_key_ids)
        for fp in self.issuer_fingerprints:
            ids.add(fp[:KEY_ID_LENGTH] if len(fp) == 32 else fp[-KEY_ID_LENGTH:])
        return ids

    def hasher(self) -> Any:
        """A fresh hash object for this signature (salted for v6)."""
        h = HASHES.get(self.hash_algo)
        if h is None or not h.supported:
            raise PGPError(f"signature: unsupported hash algorithm {hash_name(self.hash_algo)}")
        ctx = h.new()
        if self.salt:
            ctx.update(self.salt)
        return ctx

    def digest(self, *chunks: bytes) -> bytes:
        """The digest this signature signs, over ``chunks`` then the trailer.

        For a document signature pass the document; for key signatures pass
        :func:`key_hash_prefix` / :func:`user_id_hash_prefix` framings.
        """
        ctx = self.hasher()
        for chunk in chunks:
            ctx.update(chunk)
        ctx.update(self.hashed_tail)
        return ctx.digest()


# Per-type decoders of hashed subpackets into Signature fields.
_FOUR_BYTE = {SubpacketType.CREATION_TIME: "created",
              SubpacketType.SIGNATURE_EXPIRATION: "expiration",
              SubpacketType.KEY_EXPIRATION: "key_expiration"}
_V4_FINGERPRINT_SIZE = 20
_V6_FINGERPRINT_SIZE = 32
_FINGERPRINT_SIZES = {4: _V4_FINGERPRINT_SIZE, 6: _V6_FINGERPRINT_SIZE}


def parse_signature(body: bytes, _depth: int = 0) -> Signature:
    """Parse a signature packet body (v3, v4 or v6)."""
    r = _Reader(body, "signature")
    version = r.u8()
    hashed: list[Subpacket] = []
    unhashed: list[Subpacket] = []
    issuer_ids: list[bytes] = []
    salt = b""
    if version == 3:
        if r.u8() != V3_SIG_HASHED_LENGTH:
            raise PGPError("signature: v3 hashed length must be 5")
        sig_type = r.u8()
        created = r.u32()
        issuer_ids.append(r.take(KEY_ID_LENGTH))
        pubkey_algo, hash_algo = r.u8(), r.u8()
        hashed_tail = body[2:2 + V3_SIG_HASHED_LENGTH]
    elif version in (4, 6):
        sig_type, pubkey_algo, hash_algo = r.u8(), r.u8(), r.u8()
        area_len = r.u32 if version == 6 else r.u16
        hashed = _parse_subpackets(r.take(area_len()), hashed=True)
        hashed_end = r.pos
        unhashed = _parse_subpackets(r.take(area_len()), hashed=False)
        hashed_tail = (body[:hashed_end] + bytes((version, SIG_TRAILER_MARKER))
                       + hashed_end.to_bytes(4, "big"))
        created = 0
    else:
        raise PGPError(f"signature: unsupported version {version}")
    left16 = r.take(2)
    if version == 6:
        salt = r.take(r.u8())
        h = HASHES.get(hash_algo)
        if h is not None and h.salt_size is not None and len(salt) != h.salt_size:
            raise PGPError(f"signature: v6 salt of {len(salt)} bytes does not fit {h.name}")

    values: dict[str, Any] = {"created": None, "expiration": None, "key_expiration": None,
                              "key_flags": None, "revocation_reason": None}
    primary = False
    fingerprints: list[bytes] = []
    embedded: list[Signature] = []
    unknown_critical: list[int] = []
    for sp in hashed + unhashed:
        t = sp.type
        if sp.critical and sp.hashed and t not in UNDERSTOOD_SUBPACKETS:
            unknown_critical.append(t)
        if t == SubpacketType.ISSUER_KEY_ID:
            if len(sp.data) != KEY_ID_LENGTH:
                raise PGPError("signature: issuer key ID subpacket of the wrong size")
            issuer_ids.append(sp.data)
        elif t == SubpacketType.ISSUER_FINGERPRINT:
            if not sp.data or _FINGERPRINT_SIZES.get(sp.data[0]) != len(sp.data) - 1:
                raise PGPError("signature: malformed issuer fingerprint subpacket")
            fingerprints.append(sp.data[1:])
        elif t == SubpacketType.EMBEDDED_SIGNATURE:
            if _depth >= MAX_EMBEDDED_DEPTH:
                raise PGPError("signature: embedded signatures nested too deep")
            embedded.append(parse_signature(sp.data, _depth + 1))
        elif not sp.hashed:
            continue  # nothing else counts unless the signer hashed it
        elif t in _FOUR_BYTE:
            name = _FOUR_BYTE[t]
            if len(sp.data) != 4:
                raise PGPError(f"signature: {name} subpacket of the wrong size")
            if values[name] is not None:
                raise PGPError(f"signature: duplicate {name} subpacket")
            values[name] = _int(sp.data)
        elif t == SubpacketType.KEY_FLAGS:
            if values["key_flags"] is not None:
                raise PGPError("signature: duplicate key flags subpacket")
            values["key_flags"] = sp.data[0] if sp.data else 0
        elif t == SubpacketType.REVOCATION_REASON:
            if not sp.data:
                raise PGPError("signature: empty reason-for-revocation subpacket")
            values["revocation_reason"] = (sp.data[0],
                                           sp.data[1:].decode("utf-8", "replace"))
        elif t == SubpacketType.PRIMARY_USER_ID:
            primary = bool(sp.data and sp.data[0])

    if version != 3:
        created = values["created"]
        if created is None:
            raise PGPError("signature: no hashed creation time")
    if created == 0:
        raise PGPError("signature: creation time is zero")

    algo = ALGORITHMS.get(pubkey_algo)
    if algo is not None and algo.v6_only and version != 6:
        raise PGPError(f"signature: {algo.name} requires a v6 signature")
    if algo is not None and algo.parse_sig is not None:
        material = algo.parse_sig(r)
        r.expect_end()
    else:
        material = (r.rest(),)
    # Zero expiration subpackets mean "never" (RFC 9580 5.2.3.18, 5.2.3.13).
    return Signature(version, sig_type, pubkey_algo, hash_algo, created, left16, salt,
                     material, tuple(hashed), tuple(unhashed), tuple(issuer_ids),
                     tuple(fingerprints), values["expiration"] or None,
                     values["key_expiration"] or None, values["key_flags"],
                     values["revocation_reason"], primary, tuple(embedded),
                     tuple(unknown_critical), hashed_tail)
