"""Tests of verifier.openpgp: armor, packet framing, keys, signatures.

Oracles nobody here wrote: gpg (``--dearmor``, ``--show-keys``,
``--list-packets``), the RFC 9580 length examples, the fingerprints rpm's own
test suite prints for v6 keys, and the issuer fingerprints that the signing
implementations (Sequoia, rpm-rs) wrote into their self-signatures.
Verification and trust are tested in test_keyring.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.corpus import corpus_params
from tests.prereq import conformance_path
from verifier import openpgp as pgp
from verifier.errors import PGPError

_CORPUS = conformance_path()
CONFORMANCE = _CORPUS or Path("/nonexistent/conformance")
needs_corpus = pytest.mark.usefixtures("conformance")
needs_gpg = pytest.mark.usefixtures("gpg_tool")


def corpus_key_files() -> list[Path]:
    """Every certificate file of the corpus (the brief's find, plus binary .pgp)."""
    if not CONFORMANCE.is_dir():
        return []
    return sorted(p for p in CONFORMANCE.rglob("*")
                  if p.suffix in (".asc", ".pub", ".gpg", ".pgp") and p.is_file())


def read_packets(path: Path) -> list[pgp.Packet]:
    data = path.read_bytes()
    blocks = pgp.dearmor(data) if pgp.is_armored(data) else [data]
    return [p for b in blocks for p in pgp.parse_packets(b)]


def gpg(tmp_path: Path, *args: str, input: bytes | None = None) -> bytes:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700, exist_ok=True)
    # --no-autostart: none of these needs a gpg-agent left running.
    proc = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", "--no-autostart",
                           *args],
                          input=input, capture_output=True, check=False)
    return proc.stdout


def new_packet(tag: int, body: bytes) -> bytes:
    """A new-format packet with a five-octet length."""
    return bytes((0xC0 | tag, 0xFF)) + len(body).to_bytes(4, "big") + body


# --------------------------------------------------------------------------
# Armor
# --------------------------------------------------------------------------

@needs_corpus
@needs_gpg
@pytest.mark.parametrize("path", corpus_params([p for p in corpus_key_files() if p.suffix != ".pgp"],
                                               ids=lambda p: str(p.relative_to(CONFORMANCE))))
def test_dearmor_matches_gpg(path: Path, tmp_path: Path) -> None:
    blocks = pgp.dearmor(path.read_bytes())
    assert len(blocks) == 1
    assert blocks[0] == gpg(tmp_path, "--dearmor", input=path.read_bytes())


@needs_corpus
def test_armored_and_binary_corpus_files_agree() -> None:
    keys = CONFORMANCE / "rpm-tests" / "keys"
    assert pgp.dearmor((keys / "rpm.org-rsa-2048-test.pub").read_bytes()) == [
        (keys / "rpm.org-rsa-2048-test.pgp").read_bytes()]


ARMOR = b"""-----BEGIN PGP PUBLIC KEY BLOCK-----
Version: test 1.0
Comment: a comment: with colons

AQIDBAUGBwg=
=%s
-----END PGP PUBLIC KEY BLOCK-----
"""
PAYLOAD = bytes(range(1, 9))


def armored(payload_crc: int | None = None, **replace: bytes) -> bytes:
    crc = pgp.crc24(PAYLOAD) if payload_crc is None else payload_crc
    text = ARMOR % base64.b64encode(crc.to_bytes(3, "big"))
    for old, new in replace.items():
        text = text.replace(old.encode(), new)
    return text


def test_crc24() -> None:
    # RFC 9580 6.1 gives the initial value; gpg's checksums on every armored
    # corpus file (test_dearmor_matches_gpg) check the polynomial.
    assert pgp.crc24(b"") == 0xB704CE
    assert pgp.crc24(b"a") != pgp.crc24(b"b")


def test_dearmor_headers_and_checksum() -> None:
    assert pgp.dearmor(armored()) == [PAYLOAD]


def test_dearmor_without_checksum_or_headers() -> None:
    text = b"-----BEGIN PGP SIGNATURE-----\n\nAQIDBAUGBwg=\n-----END PGP SIGNATURE-----\n"
    assert pgp.dearmor(text) == [PAYLOAD]
    text = b"-----BEGIN PGP SIGNATURE-----\nAQIDBAUGBwg=\n-----END PGP SIGNATURE-----\n"
    assert pgp.dearmor(text) == [PAYLOAD]


def test_dearmor_crlf_and_several_blocks_with_text_around() -> None:
    one = armored().replace(b"\n", b"\r\n")
    two = armored().replace(b"PUBLIC KEY BLOCK", b"SIGNATURE")
    assert pgp.dearmor(b"junk before\n" + one + b"\nsome text\n" + two + b"trailer") == [
        PAYLOAD, PAYLOAD]


@pytest.mark.parametrize("text, message", [
    (armored(payload_crc=0x123456), "CRC24"),
    (armored().replace(b"-----END PGP PUBLIC KEY BLOCK-----\n", b""), "no END"),
    (armored().replace(b"END PGP PUBLIC KEY BLOCK", b"END PGP SIGNATURE"), "does not match"),
    (armored().replace(b"AQIDBAUGBwg=", b"AQID*AUGBwg="), "base64"),
    (armored().replace(b"AQIDBAUGBwg=", b"AQIDBAUGBwg"), "base64"),
    (b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nhi\n", "cleartext"),
])
def test_dearmor_rejects(text: bytes, message: str) -> None:
    with pytest.raises(PGPError, match=message):
        pgp.dearmor(text)


# --------------------------------------------------------------------------
# Packet framing
# --------------------------------------------------------------------------

# RFC 9580 4.2.1.5 examples and the old-format length types of 4.2.2.
FRAMINGS = [
    ("new 1-octet", b"\xcb\x64", 100),
    ("new 2-octet", b"\xcb\xc5\xfb", 1723),
    ("new 5-octet", b"\xcb\xff\x00\x01\x86\xa0", 100000),
    ("old 1-octet", b"\xac\x64", 100),
    ("old 2-octet", b"\xad\x06\xbb", 1723),
    ("old 4-octet", b"\xae\x00\x01\x86\xa0", 100000),
]


@pytest.mark.parametrize("name, header, length", FRAMINGS, ids=[f[0] for f in FRAMINGS])
def test_packet_lengths(name: str, header: bytes, length: int) -> None:
    body = bytes(i % 251 for i in range(length))
    (packet,) = pgp.parse_packets(header + body)
    assert packet == pgp.Packet(pgp.Tag.LITERAL_DATA, body)
    with pytest.raises(PGPError):
        pgp.parse_packets(header + body[:-1])


def test_old_format_indeterminate_length_runs_to_the_end() -> None:
    assert pgp.parse_packets(b"\xaf" + b"xyz") == [pgp.Packet(pgp.Tag.LITERAL_DATA, b"xyz")]


def test_partial_body_lengths_rfc_example() -> None:
    # RFC 9580 4.2.1.5: 100000 octets as 32768 + 2 + 1 + 65536 + 1693.
    body = bytes(i % 253 for i in range(100000))
    chunks, pos, encoded = [32768, 2, 1, 65536], 0, b"\xcb"
    for size, octet in zip(chunks, (0xEF, 0xE1, 0xE0, 0xF0)):
        encoded += bytes((octet,)) + body[pos:pos + size]
        pos += size
    encoded += b"\xc5\xdd" + body[pos:]
    assert pgp.parse_packets(encoded) == [pgp.Packet(pgp.Tag.LITERAL_DATA, body)]


def test_partial_body_lengths_are_refused_for_signatures_and_keys() -> None:
    for tag in (pgp.Tag.SIGNATURE, pgp.Tag.PUBLIC_KEY, pgp.Tag.USER_ID):
        with pytest.raises(PGPError, match="partial"):
            pgp.parse_packets(bytes((0xC0 | tag, 0xE1)) + b"ab" + b"\x01c")


@pytest.mark.parametrize("data", [b"\x00", b"\x7f\x01a", b"\xc2", b"\xc2\xc5", b"\xc2\xff\x00",
                                  b"\x89\x01", b"\xc0\x00", b"\xcb\x05abc"])
def test_packet_framing_errors(data: bytes) -> None:
    with pytest.raises(PGPError):
        pgp.parse_packets(data)


def test_parse_never_allocates_beyond_the_input() -> None:
    # A declared 4 GiB body in a 6-byte input fails at once.
    with pytest.raises(PGPError, match="truncated"):
        pgp.parse_packets(b"\xcb\xff\xff\xff\xff\xff")


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------

def _gpg_listing(tmp_path: Path, path: Path) -> tuple[set[str], set[str]]:
    """(fingerprints gpg --show-keys lists, key IDs gpg --list-packets prints)."""
    colons = gpg(tmp_path, "--show-keys", "--with-colons", "--with-subkey-fingerprints",
                 str(path)).decode()
    fprs = {line.split(":")[9].lower() for line in colons.splitlines() if line.startswith("fpr:")}
    listing = gpg(tmp_path, "--list-packets", str(path)).decode()
    key_ids = {m.lower() for m in re.findall(r"\bkeyid: ([0-9A-F]{16})", listing)}
    return fprs, key_ids


def _keys(path: Path) -> list[pgp.PublicKey]:
    return [pgp.parse_public_key(p.body, p.tag) for p in read_packets(path)
            if p.tag in (pgp.Tag.PUBLIC_KEY, pgp.Tag.PUBLIC_SUBKEY,
                         pgp.Tag.SECRET_KEY, pgp.Tag.SECRET_SUBKEY)]


V4_KEY_FILES = [p for p in corpus_key_files()
                if all(k.version == 4 for k in _keys(p))]


@needs_corpus
@needs_gpg
@pytest.mark.parametrize("path", corpus_params(V4_KEY_FILES, ids=lambda p: str(p.relative_to(CONFORMANCE))))
def test_v4_fingerprints_and_key_ids_match_gpg(path: Path, tmp_path: Path) -> None:
    keys = _keys(path)
    gpg_fprs, gpg_ids = _gpg_listing(tmp_path, path)
    ours = {k.fingerprint_hex for k in keys}
    # gpg lists every key packet's key ID, but only the subkeys it considers
    # validly bound (the CVE-2021-3521 keys have unbound ones).
    assert {k.key_id_hex for k in keys} == gpg_ids
    assert gpg_fprs <= ours
    assert {k.fingerprint_hex for k in keys if not k.subkey} <= gpg_fprs
    assert all(k.key_id == k.fingerprint[-8:] for k in keys)


@needs_corpus
def test_corpus_has_v4_and_v6_keys() -> None:
    assert len(V4_KEY_FILES) >= 25
    assert len(corpus_key_files()) - len(V4_KEY_FILES) >= 7


# v6 fingerprints and key IDs as rpm's own test suite prints them
# (rpm tests/rpmsigdig.at, "openpgp v6 keys and signatures", "ML-DSA keys").
RPM_V6_VALUES = {
    "rpm-tests/keys/rpm.org-v6-ed25519-test.asc": (
        "036824f0ac60aed6f1a3256f88190469f6d7255e3d8e41c577233aa03e0bb9d3", "6118abe481c41473"),
    "rpm-tests/keys/rpm.org-v6-rsa4k-test.asc": (
        "b0c818335157193717c146bc4092292808d5c705710509340033080ebe457eca", "0a25ec5925ee7635"),
    "rpm-tests/keys/unknown/rpm.org-v6-mldsa87-test.asc": (
        "aed054589cbf858445cfea63e827a16cc45ee27ff4b97d8eb8ec71d34684f4e6", "db11ab41d7ae9cd3"),
}


@needs_corpus
@pytest.mark.parametrize("name", sorted(RPM_V6_VALUES))
def test_v6_fingerprints_match_rpm(name: str) -> None:
    primary_fpr, subkey_id = RPM_V6_VALUES[name]
    keys = _keys(CONFORMANCE / name)
    assert [k.version for k in keys] == [6, 6]
    assert keys[0].fingerprint_hex == primary_fpr
    assert keys[0].key_id == keys[0].fingerprint[:8]       # v6: the high 64 bits
    assert keys[1].key_id_hex == subkey_id
    assert keys[1].key_id == keys[1].fingerprint[:8]


V6_KEY_FILES = [p for p in corpus_key_files() if p not in V4_KEY_FILES]


@needs_corpus
@pytest.mark.parametrize("path", corpus_params(V6_KEY_FILES, ids=lambda p: str(p.relative_to(CONFORMANCE))))
def test_v6_fingerprints_match_the_signers_issuer_subpackets(path: Path) -> None:
    """Sequoia/rpm-rs wrote the issuer fingerprint of the key that made each
    self-signature and back-signature; our fingerprints must be the same."""
    primary = sub = None
    checked = 0
    for packet in read_packets(path):
        if packet.tag in (pgp.Tag.PUBLIC_KEY, pgp.Tag.PUBLIC_SUBKEY):
            key = pgp.parse_public_key(packet.body, packet.tag)
            primary, sub = (key, None) if packet.tag == pgp.Tag.PUBLIC_KEY else (primary, key)
        elif packet.tag == pgp.Tag.SIGNATURE:
            sig = pgp.parse_signature(packet.body)
            assert sig.issuer_fingerprints == (primary.fingerprint,)
            checked += 1
            for back in sig.embedded:
                assert back.sig_type == pgp.SigType.PRIMARY_KEY_BINDING
                assert back.issuer_fingerprints == (sub.fingerprint,)
                checked += 1
    assert checked >= 4


@needs_corpus
def test_secret_key_packets_give_the_public_key() -> None:
    for secret in sorted(CONFORMANCE.rglob("*.secret")):
        public = secret.with_suffix(".asc")
        if not public.exists():
            public = secret.with_suffix(".pub")
        if not public.exists():
            continue
        sec = {(k.fingerprint, k.body) for k in _keys(secret)}
        pub = {(k.fingerprint, k.body) for k in _keys(public)}
        assert pub <= sec, secret.name


def _mpi(n: int) -> bytes:
    return n.bit_length().to_bytes(2, "big") + n.to_bytes((n.bit_length() + 7) // 8, "big")


def test_v3_rsa_key_fingerprint_and_key_id() -> None:
    # RFC 4880 12.2: MD5 over the modulus and exponent bodies; key ID = the
    # low 64 bits of the modulus.  gpg 2.2 no longer reads v3 keys.
    numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    created, days = 1_000_000_000, 10
    body = (b"\x03" + created.to_bytes(4, "big") + days.to_bytes(2, "big") + b"\x01"
            + _mpi(numbers.n) + _mpi(numbers.e))
    key = pgp.parse_public_key(body)
    n = numbers.n.to_bytes(256, "big")
    assert key.version == 3 and key.usable and key.bits == 2048
    assert key.fingerprint == hashlib.md5(n + b"\x01\x00\x01").digest()
    assert key.key_id == n[-8:]
    assert key.v3_expiration == created + days * 86400
    with pytest.raises(PGPError, match="non-RSA"):
        pgp.parse_public_key(body[:7] + b"\x11" + body[8:])


def _v4_key(algo: int, material: bytes, tag: int = pgp.Tag.PUBLIC_KEY) -> pgp.PublicKey:
    return pgp.parse_public_key(b"\x04" + (1_600_000_000).to_bytes(4, "big")
                                + bytes((algo,)) + material, tag)


def test_keys_that_cannot_sign_parse_but_are_unusable() -> None:
    elgamal = _v4_key(16, _mpi(2**2047 + 1) + _mpi(2) + _mpi(12345))
    assert elgamal.unusable and "ElGamal" in elgamal.unusable and elgamal.bits == 2048
    x25519 = _v4_key(25, bytes(32))
    assert x25519.unusable and "cannot sign" in x25519.unusable
    ecdh = _v4_key(18, b"\x0a" + bytes.fromhex("2b060104019755010501") + _mpi(0x40 << 256)
                   + b"\x03\x01\x08\x07")
    assert ecdh.unusable and ecdh.curve == "Curve25519"
    unknown = _v4_key(99, b"whatever")
    assert unknown.unusable == "unsupported public-key algorithm 99"
    with pytest.raises(PGPError, match="unknown algorithm"):
        _v4_key(99, b"whatever", tag=pgp.Tag.SECRET_KEY)


def test_unknown_curves_and_bad_points_are_unusable_not_errors() -> None:
    assert "unsupported curve" in _v4_key(19, b"\x03\x2b\x65\x99" + _mpi(4 << 8)).unusable
    p256 = bytes.fromhex("082a8648ce3d030107")
    assert "rejected" in _v4_key(19, p256 + _mpi(4 << 512)).unusable  # (0, 0) is off the curve


def test_v6_key_of_unknown_algorithm_is_skipped_by_its_length() -> None:
    body = b"\x06" + (1).to_bytes(4, "big") + b"\x63" + (3).to_bytes(4, "big") + b"abc"
    key = pgp.parse_public_key(body)
    assert key.unusable and key.version == 6
    assert key.fingerprint == hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big")
                                             + body).digest()


@pytest.mark.parametrize("body, message", [
    (b"", "truncated"),
    (b"\x05" + bytes(10), "version 5"),
    (b"\x04\x00\x00\x00\x01\x01" + b"\xff\xff", "truncated"),        # 65535-bit MPI
    (b"\x04\x00\x00\x00\x01\x01" + _mpi(2**100) + _mpi(3) + b"!", "trailing"),
    (b"\x06\x00\x00\x00\x01\x1b\xff\xff\xff\xff" + bytes(32), "exceeds"),
    (b"\x06\x00\x00\x00\x01\x1b\x00\x00\x00\x21" + bytes(33), "trailing"),
    (b"\x04\x00\x00\x00\x01\x1e" + bytes(1984), "requires a v6 key"),
    (b"\x04\x00\x00\x00\x01\x13\xff", "reserved curve OID"),
])
def test_malformed_keys(body: bytes, message: str) -> None:
    with pytest.raises(PGPError, match=message):
        pgp.parse_public_key(body)


def test_key_hash_framing() -> None:
    # RFC 9580 5.2.4: 0x99 + 2-octet length (v4), 0x9B + 4-octet length (v6).
    assert pgp.key_hash_prefix(b"abc", 4) == b"\x99\x00\x03abc"
    assert pgp.key_hash_prefix(b"abc", 6) == b"\x9b\x00\x00\x00\x03abc"
    assert pgp.user_id_hash_prefix(b"me", 4) == b"\xb4\x00\x00\x00\x02me"
    assert pgp.user_id_hash_prefix(b"me", 4, pgp.Tag.USER_ATTRIBUTE) == b"\xd1\x00\x00\x00\x02me"
    assert pgp.user_id_hash_prefix(b"me", 3) == b"me"


# --------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------

def _subpacket(kind: int, data: bytes, critical: bool = False) -> bytes:
    body = bytes((kind | (0x80 if critical else 0),)) + data
    if len(body) < 192:
        return bytes((len(body),)) + body
    n = len(body) - 192
    return bytes((192 + (n >> 8), n & 0xFF)) + body


def _v4_sig(hashed: bytes, unhashed: bytes = b"", algo: int = 22, hash_algo: int = 8,
            material: bytes | None = None, sig_type: int = 0) -> bytes:
    if material is None:
        material = _mpi(2**255 + 1) + _mpi(2**254 + 3)
    return (bytes((4, sig_type, algo, hash_algo)) + len(hashed).to_bytes(2, "big") + hashed
            + len(unhashed).to_bytes(2, "big") + unhashed + b"\xab\xcd" + material)


CREATED = _subpacket(2, (1_700_000_000).to_bytes(4, "big"))
ISSUER = _subpacket(16, bytes.fromhex("0123456789abcdef"))


def test_v4_signature_fields_and_hashed_tail() -> None:
    hashed = (CREATED + _subpacket(3, (100).to_bytes(4, "big")) + _subpacket(27, b"\x03")
              + _subpacket(9, (200).to_bytes(4, "big")) + _subpacket(25, b"\x01")
              + _subpacket(29, b"\x01moved on") + _subpacket(33, b"\x04" + bytes(range(20))))
    body = _v4_sig(hashed, ISSUER)
    sig = pgp.parse_signature(body)
    assert (sig.version, sig.sig_type, sig.pubkey_algo, sig.hash_algo) == (4, 0, 22, 8)
    assert sig.created == 1_700_000_000 and sig.expires_at == 1_700_000_100
    assert sig.key_flags == 3 and sig.key_expiration == 200 and sig.primary_user_id
    assert sig.revocation_reason == (1, "moved on")
    assert sig.issuer_key_ids == (bytes.fromhex("0123456789abcdef"),)
    assert sig.issuer_fingerprints == (bytes(range(20)),)
    assert sig.issuer_ids() == {bytes.fromhex("0123456789abcdef"), bytes(range(12, 20))}
    assert sig.left16 == b"\xab\xcd" and len(sig.material) == 2 and not sig.unknown_critical
    hashed_part = body[:6 + len(hashed)]
    assert sig.hashed_tail == hashed_part + b"\x04\xff" + len(hashed_part).to_bytes(4, "big")
    assert sig.digest(b"data") == hashlib.sha256(b"data" + sig.hashed_tail).digest()


def test_unhashed_subpackets_do_not_count_except_issuers() -> None:
    unhashed = ISSUER + _subpacket(27, b"\x02") + _subpacket(9, (5).to_bytes(4, "big"))
    sig = pgp.parse_signature(_v4_sig(CREATED, unhashed))
    assert sig.key_flags is None and sig.key_expiration is None
    assert sig.issuer_key_ids == (bytes.fromhex("0123456789abcdef"),)
    with pytest.raises(PGPError, match="no hashed creation time"):
        pgp.parse_signature(_v4_sig(b"", CREATED + ISSUER))


@pytest.mark.parametrize("subpackets, expected", [
    (_subpacket(100, b"x", critical=True), (100,)),
    (_subpacket(20, bytes(8), critical=True), (20,)),         # critical notation
    (_subpacket(100, b"x"), ()),                              # not critical: ignored
    (_subpacket(27, b"\x02", critical=True), ()),             # understood
])
def test_critical_subpackets(subpackets: bytes, expected: tuple) -> None:
    assert pgp.parse_signature(_v4_sig(CREATED + subpackets)).unknown_critical == expected
    # An unknown critical subpacket in the unhashed area is not the signer's.
    assert pgp.parse_signature(_v4_sig(CREATED, subpackets)).unknown_critical == ()


@pytest.mark.parametrize("body, message", [
    (_v4_sig(CREATED + CREATED), "duplicate"),
    (_v4_sig(_subpacket(2, (0).to_bytes(4, "big"))), "zero"),
    (_v4_sig(_subpacket(2, b"\x01\x02")), "wrong size"),
    (_v4_sig(CREATED + _subpacket(16, b"\x01")), "wrong size"),
    (_v4_sig(CREATED + _subpacket(33, b"\x04" + bytes(19))), "issuer fingerprint"),
    (_v4_sig(CREATED + b"\x00"), "zero length"),
    (_v4_sig(CREATED + b"\x05\x02"), "truncated"),
    (_v4_sig(CREATED, algo=30, material=bytes(64 + 3309)), "requires a v6"),
    (_v4_sig(CREATED, algo=1, material=_mpi(5) + b"x"), "trailing"),
    (b"\x05" + bytes(40), "unsupported version"),
    (b"\x03\x04" + bytes(20), "hashed length"),
])
def test_malformed_signatures(body: bytes, message: str) -> None:
    with pytest.raises(PGPError, match=message):
        pgp.parse_signature(body)


def test_embedded_signatures_parse_one_level_deep() -> None:
    back = _v4_sig(CREATED, sig_type=0x19)
    sig = pgp.parse_signature(_v4_sig(CREATED, ISSUER + _subpacket(32, back), sig_type=0x18))
    assert [e.sig_type for e in sig.embedded] == [0x19]
    nested = _v4_sig(CREATED + _subpacket(32, back), sig_type=0x19)
    with pytest.raises(PGPError, match="nested"):
        pgp.parse_signature(_v4_sig(CREATED, _subpacket(32, nested)))


def test_v6_signature_salt_is_hashed_first() -> None:
    hashed = CREATED
    salt = bytes(range(32))
    body = (bytes((6, 0, 27, 10)) + len(hashed).to_bytes(4, "big") + hashed
            + (0).to_bytes(4, "big") + b"\x01\x02" + b"\x20" + salt + bytes(64))
    sig = pgp.parse_signature(body)
    assert sig.salt == salt
    tail = body[:8 + len(hashed)]
    assert sig.hashed_tail == tail + b"\x06\xff" + len(tail).to_bytes(4, "big")
    assert sig.digest(b"doc") == hashlib.sha512(salt + b"doc" + sig.hashed_tail).digest()
    short_salt = body.replace(b"\x20" + salt, b"\x10" + salt[:16])
    with pytest.raises(PGPError, match="salt"):
        pgp.parse_signature(short_salt)


def test_v3_signature_hashes_type_and_time() -> None:
    body = (b"\x03\x05\x00" + (1_500_000_000).to_bytes(4, "big") + bytes.fromhex("1122334455667788")
            + b"\x01\x08" + b"\xaa\xbb" + _mpi(2**2047 + 5))
    sig = pgp.parse_signature(body)
    assert (sig.version, sig.created, sig.hash_algo) == (3, 1_500_000_000, 8)
    assert sig.issuer_key_ids == (bytes.fromhex("1122334455667788"),)
    assert sig.hashed_tail == b"\x00" + (1_500_000_000).to_bytes(4, "big")


@needs_corpus
def test_every_corpus_signature_parses() -> None:
    count = 0
    for path in corpus_key_files():
        for packet in read_packets(path):
            if packet.tag == pgp.Tag.SIGNATURE:
                sig = pgp.parse_signature(packet.body)
                assert sig.created > 0 and not sig.unknown_critical
                count += 1
    assert count > 60


def test_unknown_hash_cannot_be_computed() -> None:
    sig = pgp.parse_signature(_v4_sig(CREATED, hash_algo=99))
    with pytest.raises(PGPError, match="unsupported hash"):
        sig.digest(b"x")


# --------------------------------------------------------------------------
# Robustness: nothing but PGPError, whatever the bytes
# --------------------------------------------------------------------------

def _seed_packets() -> list[bytes]:
    seeds = [new_packet(2, _v4_sig(CREATED + _subpacket(27, b"\x02"), ISSUER)),
             new_packet(6, b"\x04\x00\x00\x00\x01\x01" + _mpi(2**2047 + 1) + _mpi(65537))]
    for name in ("rpm-tests/keys/alice.asc", "rpm-tests/keys/rpm.org-v6-ed25519-test.asc"):
        path = CONFORMANCE / name
        if path.exists():
            seeds.append(pgp.dearmor(path.read_bytes())[0])
    return seeds


SEEDS = _seed_packets()


def _parse_everything(data: bytes) -> None:
    try:
        for packet in pgp.parse_packets(data):
            if packet.tag == pgp.Tag.SIGNATURE:
                sig = pgp.parse_signature(packet.body)
                if sig.hash is not None and sig.hash.supported:
                    sig.digest(b"x")
            elif packet.tag in (5, 6, 7, 14):
                pgp.parse_public_key(packet.body, packet.tag)
    except PGPError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_pgperror(data: bytes) -> None:
    _parse_everything(data)
    try:
        pgp.parse_signature(data)
    except PGPError:
        pass
    try:
        pgp.parse_public_key(data)
    except PGPError:
        pass
    try:
        pgp.dearmor(b"-----BEGIN PGP SIGNATURE-----\n\n" + data
                    + b"\n-----END PGP SIGNATURE-----\n")
    except PGPError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255),
                                                  st.sampled_from(["set", "insert", "delete"])),
                                        min_size=1, max_size=4))
def test_mutated_packets_raise_only_pgperror(seed: bytes, edits: list) -> None:
    data = bytearray(seed)
    for pos, value, op in edits:
        pos %= len(data) + 1
        if op == "insert":
            data.insert(pos, value)
        elif data and pos < len(data):
            if op == "set":
                data[pos] = value
            else:
                del data[pos]
    _parse_everything(bytes(data))


def test_every_truncation_of_a_signature_packet_is_pgperror() -> None:
    body = _v4_sig(CREATED + _subpacket(27, b"\x02"), ISSUER, algo=1, material=_mpi(2**2047 + 1))
    pgp.parse_signature(body)
    for cut in range(len(body)):
        with pytest.raises(PGPError):
            pgp.parse_signature(body[:cut])
