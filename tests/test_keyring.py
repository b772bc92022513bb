"""Tests of verifier.keyring: loading certificates, verdicts, combining them.

Oracles: the conformance corpus (MANIFEST.tsv verdicts from rpm's and
rpm-rs's own test suites), keys and signatures made by gpg in a throw-away
GNUPGHOME (with --faked-system-time for the time-dependent cases), and gpg
--verify for the hand-built signatures used where gpg cannot produce a case.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.prereq import conformance_path
from verifier import openpgp as pgp
from verifier.errors import PGPError
from verifier.header import read_package
from verifier.keyring import DEFAULT_KEY_DIR, Keyring, Result, Verdict, combine
from verifier.policy import DEFAULT, LEGACY
from verifier.sigcheck import header_signatures

_CORPUS = conformance_path()
CONFORMANCE = _CORPUS or Path("/nonexistent/conformance")
needs_corpus = pytest.mark.usefixtures("conformance")
needs_gpg = pytest.mark.usefixtures("gpg_tool")

GOOD, BAD, NOKEY, NOTTRUSTED, UNSIGNED = (Verdict.GOOD, Verdict.BAD, Verdict.NOKEY,
                                          Verdict.NOTTRUSTED, Verdict.UNSIGNED)
DATA = os.urandom(3000)


# --------------------------------------------------------------------------
# RPM headers from the corpus
# --------------------------------------------------------------------------

def rpm_signatures(path: Path) -> tuple[list[bytes], bytes]:
    """(header signature packets as rpm 6 selects them, the signed bytes)."""
    pkg = read_package(path.read_bytes(), strict=False)
    return [p for _tag, p in header_signatures(pkg)], pkg.header.region_bytes


@functools.lru_cache(maxsize=None)
def corpus_keyring(keys: str) -> Keyring:
    return Keyring.load([CONFORMANCE / k for k in keys.split(",")])


def corpus_verdict(path: Path, keys: str) -> tuple[Result, list[Result]]:
    packets, signed = rpm_signatures(path)
    ring = corpus_keyring(keys)
    results = [ring.check_packet(p, signed) for p in packets]
    return combine(results), results


# The MANIFEST rows themselves are checked package by package, through
# verifier.sigcheck, in tests/test_conformance.py.


@needs_corpus
@pytest.mark.parametrize("case, trusted", [
    ("rpm-tests/RPMS/hello-2.0-1.x86_64-signed-mldsa87.rpm", "rpm-tests/keys/rpm.org-rsa-2048-test.pub"),
    ("rpm-rs-assets/RPMS/v6/signed/rpm-basic-multiple-signatures-2.3.4-5.el9.noarch.rpm",
     "rpm-rs-assets/signing_keys/v6/rpm-testkey-v6-ed25519.asc"),
])
def test_one_trusted_signature_of_two_is_enough(case: str, trusted: str) -> None:
    """Two signatures, one key trusted: that signature is GOOD, the other NOKEY,
    the package GOOD (docs/signature-policy.md: several signatures)."""
    result, each = corpus_verdict(CONFORMANCE / case, trusted)
    assert sorted(r.verdict for r in each) == [GOOD, NOKEY]
    assert result.verdict == GOOD and result.cert_fingerprint


@needs_corpus
def test_key_id_collision_tries_every_candidate() -> None:
    keys = "rpm-tests/keys/keyidcollision2.pub,rpm-tests/keys/keyidcollision1.pub"
    path = CONFORMANCE / "derived/rpm-tests/hello-keyidcollision1-sha256.rpm"
    ring = corpus_keyring(keys)
    assert len(ring.by_key_id("42655a75156b3de0")) == 2
    result, _ = corpus_verdict(path, keys)
    assert result.verdict == GOOD
    assert result.fingerprint == "79cc07f167fee8841829acaa42655a75156b3de0"
    assert result.key_id == "42655a75156b3de0"


@needs_corpus
def test_merged_certificates_keep_revocations() -> None:
    # alice.asc alone trusts the subkey; the same certificate with the
    # subkey's revocation, read later, must revoke it.
    path = CONFORMANCE / "rpm-tests/RPMS/hello-2.0-1.x86_64-signed-with-subkey.rpm"
    alone, _ = corpus_verdict(path, "rpm-tests/keys/alice.asc")
    both, _ = corpus_verdict(path, "rpm-tests/keys/alice.asc,rpm-tests/keys/alice-revoked-subkey.asc")
    assert (alone.verdict, both.verdict) == (GOOD, NOTTRUSTED)
    assert "compromised" in both.reason
    assert len(corpus_keyring("rpm-tests/keys/alice.asc,rpm-tests/keys/alice-revoked-subkey.asc")
               .certificates) == 1


@needs_corpus
@pytest.mark.parametrize("name", ["CVE-2021-3521-badbind.asc", "CVE-2021-3521-nosubsig.asc",
                                  "CVE-2021-3521-nosubsig-last.asc", "type-confusion.asc"])
def test_unbound_subkeys_are_reported(name: str) -> None:
    ring = Keyring.load(CONFORMANCE / "rpm-tests/keys" / name)
    (cert,) = ring.certificates
    unbound = [s for s in cert.subkeys if not s.bindings]
    if name == "CVE-2021-3521-nosubsig.asc":   # the same subkey appears again, bound
        assert not unbound
        return
    assert [s.key.fingerprint_hex for s in unbound] == ["b31e5aa680af713915901533185e6146f00650f8"]
    assert any("no valid binding signature" in w for w in ring.warnings)
    assert "not validly bound" in cert.signing_problem(unbound[0].key, int(time.time()), DEFAULT)


@needs_corpus
@pytest.mark.parametrize("part", [0, 1])
def test_composite_signatures_need_both_components(part: int) -> None:
    path = CONFORMANCE / ("rpm-rs-assets/RPMS/v6/signed/"
                          "rpm-basic-with-mldsa65-ed25519-2.3.4-5.el9.noarch.rpm")
    keys = "rpm-rs-assets/signing_keys/v6/rpm-testkey-v6-mldsa65-ed25519.asc"
    (packet,), signed = rpm_signatures(path)
    (parsed,) = pgp.parse_packets(packet)
    sig = pgp.parse_signature(parsed.body)
    assert [len(m) for m in sig.material] == [64, 3309]
    (ref,) = corpus_keyring(keys).candidates(sig)
    digest = sig.digest(signed)
    assert ref.key.verify_digest(sig, digest)
    material = list(sig.material)
    material[part] = material[part][:10] + bytes([material[part][10] ^ 1]) + material[part][11:]
    assert not ref.key.verify_digest(dataclasses.replace(sig, material=tuple(material)), digest)


@needs_corpus
def test_fingerprints_are_lowercase_hex_of_the_signing_key_and_its_certificate() -> None:
    result, _ = corpus_verdict(CONFORMANCE / "rpm-tests/RPMS/hello-2.0-1.x86_64-signed-with-subkey.rpm",
                               "rpm-tests/keys/alice.asc")
    assert result.fingerprint == "43253a62850dfadcacd423f11f71177215217ee0"        # subkey
    assert result.cert_fingerprint == "b6542f92f30650c36b6f41bcb3a771bfeb04e625"   # as rpm prints


# --------------------------------------------------------------------------
# gpg-made keys and signatures
# --------------------------------------------------------------------------

class Gpg:
    """gpg in a throw-away home directory (no passphrases)."""

    def __init__(self, home: Path):
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)

    def __call__(self, *args: str, faked: str | None = None, input: bytes | None = None) -> bytes:
        cmd = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--no-tty",
               "--pinentry-mode", "loopback", "--passphrase", "",
               "--ignore-time-conflict", "--ignore-valid-from"]
        if faked:
            cmd += ["--faked-system-time", faked]
        proc = subprocess.run(cmd + list(args), input=input, capture_output=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args)}: {proc.stderr.decode()}")
        return proc.stdout

    def fingerprints(self, who: str) -> list[str]:
        out = self("--with-colons", "--with-subkey-fingerprints", "--list-keys", who).decode()
        return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]

    def generate(self, uid: str, algo: str, usage: str = "sign", faked: str | None = None,
                 expire: str = "never") -> str:
        self("--quick-gen-key", uid, algo, usage, expire, faked=faked)
        return self.fingerprints(uid)[0]

    def add_subkey(self, fpr: str, algo: str, usage: str, faked: str | None = None) -> str:
        self("--quick-add-key", fpr, algo, usage, faked=faked)
        return self.fingerprints(fpr)[-1]

    def export(self, who: str) -> bytes:
        return self("--export", who)

    def sign(self, who: str, data: bytes = DATA, digest: str | None = None,
             faked: str | None = None, extra: tuple[str, ...] = ()) -> bytes:
        args = ["--local-user", who, "--detach-sign", *extra]
        if digest:
            args += ["--digest-algo", digest]
        return self(*args, faked=faked, input=data)

    def edit(self, fpr: str, *commands: str, faked: str | None = None) -> None:
        self("--command-fd", "0", "--edit-key", fpr, faked=faked,
             input=("\n".join(commands) + "\n").encode())

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
                       capture_output=True)


@pytest.fixture(scope="module")
def gpg(tmp_path_factory):
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed")
    g = Gpg(tmp_path_factory.mktemp("gnupg") / "home")
    yield g
    g.close()


def check(ring: Keyring, sig: bytes, data: bytes = DATA, now: float | None = None) -> Result:
    return ring.check_packet(sig, data, now=now)


ALGORITHMS = ["rsa2048", "dsa2048", "ed25519", "nistp256", "nistp384", "nistp521",
              "brainpoolP256r1"]
#: gpg refuses hashes shorter than the DSA q or the ECDSA curve order.
DIGESTS = {"rsa2048": ["SHA1", "SHA256", "SHA512"], "ed25519": ["SHA1", "SHA256", "SHA512"],
           "dsa2048": ["SHA256", "SHA512"], "nistp256": ["SHA256", "SHA384", "SHA512"],
           "nistp384": ["SHA384", "SHA512"], "nistp521": ["SHA512"],
           "brainpoolP256r1": ["SHA256", "SHA512"]}


@pytest.fixture(scope="module")
def gpg_keys(gpg):
    return {algo: gpg.generate(f"{algo} <{algo}@usrview.invalid>", algo) for algo in ALGORITHMS}


@pytest.mark.parametrize("algo, digest", [(a, d) for a in ALGORITHMS for d in DIGESTS[a]])
def test_gpg_round_trip(gpg, gpg_keys, algo: str, digest: str) -> None:
    fpr = gpg_keys[algo]
    ring = Keyring.from_bytes(gpg.export(fpr))
    assert not ring.warnings
    sig = gpg.sign(fpr, digest=digest)
    (packet,) = pgp.parse_packets(sig)
    parsed = pgp.parse_signature(packet.body)
    assert pgp.hash_name(parsed.hash_algo) == digest
    (ref,) = ring.candidates(parsed)
    assert ref.key.verify(parsed, DATA)              # the mathematics, whatever the policy
    result = check(ring, sig)
    if digest == "SHA1":
        assert result.verdict == NOTTRUSTED and "SHA1" in result.reason
    else:
        assert result.verdict == GOOD, result
        assert result.fingerprint == fpr.lower()
    flipped = bytearray(DATA)
    flipped[1234] ^= 0x40
    assert check(ring, sig, bytes(flipped)).verdict == BAD
    other = Keyring.from_bytes(gpg.export(gpg_keys["ed25519" if algo != "ed25519" else "rsa2048"]))
    assert check(other, sig).verdict == (NOTTRUSTED if digest == "SHA1" else NOKEY)
    assert check(Keyring(), sig).verdict == (NOTTRUSTED if digest == "SHA1" else NOKEY)


def test_armored_export_and_binary_export_load_the_same(gpg, gpg_keys) -> None:
    armored = Keyring.from_bytes(gpg("--armor", "--export", gpg_keys["rsa2048"]))
    binary = Keyring.from_bytes(gpg.export(gpg_keys["rsa2048"]))
    assert [c.fingerprint for c in armored.certificates] == [c.fingerprint for c in
                                                              binary.certificates]


def test_weak_rsa_key_is_not_trusted(gpg) -> None:
    fpr = gpg.generate("weak <weak@usrview.invalid>", "rsa1024")
    result = check(Keyring.from_bytes(gpg.export(fpr)), gpg.sign(fpr))
    assert result.verdict == NOTTRUSTED and "1024 bits is too weak" in result.reason


def test_elgamal_subkey_is_skipped_with_a_warning(gpg, tmp_path) -> None:
    fpr = gpg.generate("elg <elg@usrview.invalid>", "dsa2048")
    sub = gpg.add_subkey(fpr, "elg2048", "encr")
    (tmp_path / "RPM-GPG-KEY-elg").write_bytes(gpg("--armor", "--export", fpr))
    ring = Keyring.load(tmp_path)
    assert len(ring.warnings) == 1
    assert sub.lower() in ring.warnings[0] and "ElGamal" in ring.warnings[0]
    assert "RPM-GPG-KEY-elg" in ring.warnings[0]
    assert [s.key for s in ring.certificates[0].subkeys] == []
    assert check(ring, gpg.sign(fpr)).verdict == GOOD


def test_expired_key_is_judged_at_signature_time(gpg) -> None:
    fpr = gpg.generate("exp <exp@usrview.invalid>", "ed25519", faked="20200101T000000")
    before = gpg.sign(fpr, faked="20200301T000000")
    after = gpg.sign(fpr, faked="20210301T000000")
    gpg("--quick-set-expire", fpr, "2020-06-01", faked="20200201T000000")
    ring = Keyring.from_bytes(gpg.export(fpr))
    assert check(ring, before).verdict == GOOD           # expired after it signed
    result = check(ring, after)
    assert result.verdict == NOTTRUSTED and "expired on 2020-06-01" in result.reason


def test_signature_before_the_key_existed(gpg) -> None:
    fpr = gpg.generate("late <late@usrview.invalid>", "ed25519", faked="20200101T000000")
    early = gpg.sign(fpr, faked="20190101T000000")
    result = check(Keyring.from_bytes(gpg.export(fpr)), early)
    assert result.verdict == NOTTRUSTED and "created after the signature" in result.reason


REVOKE_PRIMARY = {"compromised": "1", "superseded": "2", "retired": "3", "none": "0"}


@pytest.mark.parametrize("reason, before, after", [
    ("none", NOTTRUSTED, NOTTRUSTED),            # hard: revoked at all times
    ("compromised", NOTTRUSTED, NOTTRUSTED),
    ("superseded", GOOD, NOTTRUSTED),            # soft: from the revocation on
    ("retired", GOOD, NOTTRUSTED),
])
def test_primary_key_revocation(gpg, reason: str, before: Verdict, after: Verdict) -> None:
    fpr = gpg.generate(f"rev-{reason} <rev@usrview.invalid>", "ed25519", faked="20190101T000000")
    sig_before = gpg.sign(fpr, faked="20190601T000000")
    sig_after = gpg.sign(fpr, faked="20210101T000000")
    assert check(Keyring.from_bytes(gpg.export(fpr)), sig_before).verdict == GOOD
    gpg.edit(fpr, "revkey", "y", REVOKE_PRIMARY[reason], reason, "", "y", "save",
             faked="20200101T000000")
    ring = Keyring.from_bytes(gpg.export(fpr))
    assert check(ring, sig_before).verdict == before
    result = check(ring, sig_after)
    assert result.verdict == after and "revoked on 2020-01-01" in result.reason


def test_revocation_certificate_in_the_key_directory(gpg, tmp_path) -> None:
    fpr = gpg.generate("revcert <revcert@usrview.invalid>", "ed25519")
    sig = gpg.sign(fpr)
    (tmp_path / "key.asc").write_bytes(gpg("--armor", "--export", fpr))
    assert check(Keyring.load(tmp_path), sig).verdict == GOOD
    # gpg stores a revocation certificate (reason 0) at generation, its armor
    # defused with a leading colon.
    rev = (gpg.home / "openpgp-revocs.d" / f"{fpr}.rev").read_bytes().replace(b":-----", b"-----")
    (tmp_path / "key.rev").write_bytes(rev)
    (tmp_path / "README").write_bytes(b"not a key\n")
    ring = Keyring.load(tmp_path)
    assert check(ring, sig).verdict == NOTTRUSTED
    assert len(ring.warnings) == 1 and ring.warnings[0].startswith(f"{tmp_path / 'README'}: ")


SUBKEY_REVOKE = {"compromised": "1", "retired": "3"}


@pytest.fixture(scope="module")
def subkey_cert(gpg):
    """An Ed25519 certify-only primary with an RSA signing subkey, and
    signatures by the subkey from 2019-06 and 2021-01."""
    fpr = gpg.generate("sub <sub@usrview.invalid>", "ed25519", "cert", faked="20190101T000000")
    sub = gpg.add_subkey(fpr, "rsa2048", "sign", faked="20190101T000000")
    return fpr, sub, gpg.sign(sub + "!", faked="20190601T000000"), gpg.sign(sub + "!", faked="20210101T000000")


def test_subkey_signature(gpg, subkey_cert) -> None:
    fpr, sub, early, late = subkey_cert
    ring = Keyring.from_bytes(gpg.export(fpr))
    result = check(ring, late)
    assert result.verdict == GOOD, (result.reason, [(s.key.created, [b.sig.created for b in s.bindings])
                                                    for s in ring.certificates[0].subkeys])
    assert (result.fingerprint, result.cert_fingerprint) == (sub.lower(), fpr.lower())


def _rebuild(packets: list[pgp.Packet]) -> bytes:
    return b"".join(bytes((0xC0 | p.tag, 0xFF)) + len(p.body).to_bytes(4, "big") + p.body
                    for p in packets)


def _drop_unhashed_subpackets(body: bytes, kind: int) -> bytes:
    """A v4 signature body without its unhashed subpackets of ``kind``."""
    hashed_end = 6 + int.from_bytes(body[4:6], "big")
    unhashed_len = int.from_bytes(body[hashed_end:hashed_end + 2], "big")
    sig = pgp.parse_signature(body)
    kept = b""
    for sp in sig.unhashed:
        if sp.type != kind:
            data = bytes((sp.type | (0x80 if sp.critical else 0),)) + sp.data
            kept += (bytes((len(data),)) if len(data) < 192
                     else bytes((192 + ((len(data) - 192) >> 8), (len(data) - 192) & 0xFF))) + data
    return (body[:hashed_end] + len(kept).to_bytes(2, "big") + kept
            + body[hashed_end + 2 + unhashed_len:])


def test_signing_subkey_needs_a_back_signature(gpg, subkey_cert) -> None:
    fpr, _sub, _early, late = subkey_cert
    packets = pgp.parse_packets(gpg.export(fpr))
    i = next(i for i, p in enumerate(packets) if p.tag == pgp.Tag.SIGNATURE
             and pgp.parse_signature(p.body).sig_type == pgp.SigType.SUBKEY_BINDING)
    # gpg puts the embedded primary-key binding signature in the unhashed area.
    packets[i] = pgp.Packet(pgp.Tag.SIGNATURE,
                            _drop_unhashed_subpackets(packets[i].body,
                                                      pgp.SubpacketType.EMBEDDED_SIGNATURE))
    result = check(Keyring.from_bytes(_rebuild(packets)), late)
    assert result.verdict == NOTTRUSTED and "back-)signature" in result.reason
    del packets[i]                        # no binding signature at all
    ring = Keyring.from_bytes(_rebuild(packets))
    result = check(ring, late)
    assert result.verdict == NOTTRUSTED and "not validly bound" in result.reason
    assert any("no valid binding signature" in w for w in ring.warnings)


@pytest.mark.parametrize("reason, early, late", [("compromised", NOTTRUSTED, NOTTRUSTED),
                                                 ("retired", GOOD, NOTTRUSTED)])
def test_subkey_revocation(gpg, reason: str, early: Verdict, late: Verdict) -> None:
    fpr = gpg.generate(f"subrev-{reason} <subrev@usrview.invalid>", "ed25519", "cert",
                       faked="20190101T000000")
    sub = gpg.add_subkey(fpr, "ed25519", "sign", faked="20190101T000000")
    sig_early = gpg.sign(sub + "!", faked="20190601T000000")
    sig_late = gpg.sign(sub + "!", faked="20210101T000000")
    gpg.edit(fpr, "key 1", "revkey", "y", SUBKEY_REVOKE[reason], reason, "", "y", "save",
             faked="20200101T000000")
    ring = Keyring.from_bytes(gpg.export(fpr))
    assert check(ring, sig_early).verdict == early
    assert check(ring, sig_late).verdict == late
    assert f"subkey {sub.lower()} was revoked" in check(ring, sig_late).reason


def test_signature_times_against_now(gpg) -> None:
    fpr = gpg.generate("times <times@usrview.invalid>", "ed25519", faked="20200101T000000")
    ring = Keyring.from_bytes(gpg.export(fpr))
    future = gpg.sign(fpr, faked="20300101T000000!")
    result = check(ring, future)
    assert result.verdict == BAD and "future" in result.reason
    assert check(ring, future, now=1893456000 + 86400).verdict == GOOD    # 2030-01-02
    assert check(ring, future, now=1893456000 - 200).verdict == GOOD      # clock skew
    assert check(ring, future, now=1893456000 - 400).verdict == BAD
    expiring = gpg.sign(fpr, faked="20210101T000000!", extra=("--default-sig-expire", "1d"))
    result = check(ring, expiring)
    assert result.verdict == BAD and "signature expired" in result.reason
    assert check(ring, expiring, now=1609459200 + 3600).verdict == GOOD   # 2021-01-01 01:00


def test_lookup_by_key_id_and_fingerprint(gpg, subkey_cert) -> None:
    fpr, sub, _early, _late = subkey_cert
    ring = Keyring.from_bytes(gpg.export(fpr))
    (ref,) = ring.by_fingerprint(sub.lower())
    assert ref.key.subkey and ref.cert.fingerprint == fpr.lower()
    assert ring.by_key_id(sub[-16:].lower()) == [ref]
    assert ring.by_key_id(bytes.fromhex(fpr[-16:]))[0].key is ring.certificates[0].primary
    assert ring.by_key_id("0000000000000000") == []


# --------------------------------------------------------------------------
# Hand-built keys and signatures, for what gpg will not make
# --------------------------------------------------------------------------

T0 = 1_600_000_000          # 2020-09-13
ED25519_OID = bytes.fromhex("2b06010401da470f01")


def mpi(n: int) -> bytes:
    return n.bit_length().to_bytes(2, "big") + n.to_bytes((n.bit_length() + 7) // 8, "big")


def subpacket(kind: int, data: bytes, critical: bool = False) -> bytes:
    body = bytes((kind | (0x80 if critical else 0),)) + data
    if len(body) < 192:
        return bytes((len(body),)) + body
    n = len(body) - 192
    return bytes((192 + (n >> 8), n & 0xFF)) + body


def packet(tag: int, body: bytes) -> bytes:
    return bytes((0xC0 | tag, 0xFF)) + len(body).to_bytes(4, "big") + body


class Signer:
    """A key made with ``cryptography`` and written as OpenPGP by hand."""

    ALGO = {"eddsa": 22, "rsa": 1, "ed25519": 27, "ed448": 28}

    def __init__(self, kind: str = "eddsa", version: int = 4, created: int = T0, bits: int = 2048):
        self.kind, self.version, self.created = kind, version, created
        if kind == "rsa":
            self.priv = rsa.generate_private_key(65537, bits)
            nums = self.priv.public_key().public_numbers()
            material = mpi(nums.n) + mpi(nums.e)
        else:
            self.priv = (ed448.Ed448PrivateKey if kind == "ed448"
                         else ed25519.Ed25519PrivateKey).generate()
            raw = self.priv.public_key().public_bytes_raw()
            material = (bytes((len(ED25519_OID),)) + ED25519_OID
                        + mpi(int.from_bytes(b"\x40" + raw, "big"))) if kind == "eddsa" else raw
        head = bytes((version,)) + created.to_bytes(4, "big")
        if version == 3:
            self.body = head + b"\x00\x00" + bytes((self.ALGO[kind],)) + material
        elif version == 4:
            self.body = head + bytes((self.ALGO[kind],)) + material
        else:
            self.body = head + bytes((self.ALGO[kind],)) + len(material).to_bytes(4, "big") + material
        self.key = pgp.parse_public_key(self.body)

    def _material(self, digest: bytes, h: pgp.HashAlgo) -> bytes:
        if self.kind == "rsa":
            return mpi(int.from_bytes(self.priv.sign(digest, padding.PKCS1v15(),
                                                     Prehashed(h.crypto())), "big"))
        raw = self.priv.sign(digest)
        if self.kind == "eddsa":
            return mpi(int.from_bytes(raw[:32], "big")) + mpi(int.from_bytes(raw[32:], "big"))
        return raw

    def sign(self, sig_type: int, *chunks: bytes, hashed: bytes = b"", unhashed: bytes | None = None,
             hash_algo: int = 8, created: int | None = None, version: int | None = None,
             issuer: bool = True, algo: int | None = None) -> bytes:
        """A signature packet body over ``chunks`` (``algo`` overrides the
        public-key algorithm ID written into it)."""
        version = version or (3 if self.version == 3 else self.version)
        created = created or self.created
        h = pgp.HASHES[hash_algo]
        algo = algo or self.ALGO[self.kind]
        if version == 3:
            tail = bytes((sig_type,)) + created.to_bytes(4, "big")
            ctx = h.new()
            for c in chunks + (tail,):
                ctx.update(c)
            digest = ctx.digest()
            return (b"\x03\x05" + tail + self.key.key_id + bytes((algo, hash_algo)) + digest[:2]
                    + self._material(digest, h))
        fp = bytes((self.version,)) + self.key.fingerprint
        area = subpacket(2, created.to_bytes(4, "big")) + (subpacket(33, fp) if issuer else b"") + hashed
        if unhashed is None:
            unhashed = subpacket(16, self.key.key_id) if issuer and version == 4 else b""
        width = 4 if version == 6 else 2
        prefix = bytes((version, sig_type, algo, hash_algo)) + len(area).to_bytes(width, "big") + area
        salt = os.urandom(h.salt_size) if version == 6 else b""
        ctx = h.new()
        for c in (salt, *chunks, prefix, bytes((version, 0xFF)), len(prefix).to_bytes(4, "big")):
            ctx.update(c)
        digest = ctx.digest()
        return (prefix + len(unhashed).to_bytes(width, "big") + unhashed + digest[:2]
                + (bytes((len(salt),)) + salt if version == 6 else b"") + self._material(digest, h))

    def prefix(self, sig_version: int) -> bytes:
        return pgp.key_hash_prefix(self.body, sig_version)

    def certificate(self, uid: bytes = b"hand-built <hb@usrview.invalid>", flags: int = 0x03,
                    hashed: bytes = b"", hash_algo: int = 8) -> bytes:
        v = 3 if self.version == 3 else self.version
        flag_sp = subpacket(27, bytes((flags,))) if v != 3 else b""
        selfsig = self.sign(0x13, self.prefix(v), pgp.user_id_hash_prefix(uid, v),
                            hashed=flag_sp + hashed, hash_algo=hash_algo)
        return packet(6, self.body) + packet(13, uid) + packet(2, selfsig)

    def bind(self, sub: Signer, flags: int = 0x02, back_signed: bool = True,
             hashed: bytes = b"", hash_algo: int = 8, back_hash_algo: int = 8) -> bytes:
        v = self.version
        chunks = (self.prefix(v), sub.prefix(v))
        unhashed = subpacket(16, self.key.key_id) if v == 4 else b""
        if back_signed:   # in the unhashed area, as gpg puts it
            unhashed += subpacket(32, sub.sign(0x19, *chunks, hash_algo=back_hash_algo))
        binding = self.sign(0x18, *chunks, hashed=subpacket(27, bytes((flags,))) + hashed,
                            unhashed=unhashed, hash_algo=hash_algo)
        return packet(14, sub.body) + packet(2, binding)

    def document(self, data: bytes = DATA, **kw) -> bytes:
        return packet(2, self.sign(0x00, data, **kw))


def test_hand_built_packets_are_accepted_by_gpg(gpg, tmp_path) -> None:
    """The builder's output is real OpenPGP: gpg verifies it, and refuses the
    subkey signature whose binding lacks the back-signature."""
    primary, sub, plain = Signer("eddsa"), Signer("rsa"), Signer("rsa")
    cert = primary.certificate(flags=0x01) + primary.bind(sub)
    data = tmp_path / "data"
    data.write_bytes(DATA)
    for name, key_material, sig in [("sub", cert, sub.document()),
                                    ("rsa", plain.certificate(), plain.document())]:
        home = Gpg(tmp_path / name)
        try:
            home("--import", input=key_material)
            (tmp_path / f"{name}.sig").write_bytes(sig)
            home("--verify", str(tmp_path / f"{name}.sig"), str(data))      # raises if bad
        finally:
            home.close()
        assert check(Keyring.from_bytes(key_material), sig).verdict == GOOD
    unsigned = primary.certificate(flags=0x01) + primary.bind(sub, back_signed=False)
    home = Gpg(tmp_path / "noback")
    try:
        home("--import", input=unsigned)
        with pytest.raises(RuntimeError, match="not cross-certified"):
            home("--verify", str(tmp_path / "sub.sig"), str(data))
    finally:
        home.close()
    assert check(Keyring.from_bytes(unsigned), sub.document()).verdict == NOTTRUSTED


def test_hand_built_cases_gpg_cannot_make() -> None:
    key = Signer("eddsa")
    ring = Keyring.from_bytes(key.certificate())
    assert check(ring, key.document()).verdict == GOOD
    cases = {
        "unknown critical": (key.document(hashed=subpacket(101, b"x", critical=True)), BAD),
        "critical notation": (key.document(hashed=subpacket(20, bytes(8), critical=True)), BAD),
        "unknown, not critical": (key.document(hashed=subpacket(101, b"x")), GOOD),
        "text signature": (packet(2, key.sign(0x01, DATA)), BAD),
        "no issuer": (key.document(issuer=False), BAD),
        "MD5": (key.document(hash_algo=1), NOTTRUSTED),
        "SHA-1": (key.document(hash_algo=2), NOTTRUSTED),
        "SHA3-512": (key.document(hash_algo=14), GOOD),
        "SHA-224": (key.document(hash_algo=11), GOOD),
    }
    for name, (sig, verdict) in cases.items():
        assert check(ring, sig).verdict == verdict, name


def test_key_flags_decide_who_may_sign() -> None:
    key = Signer("eddsa")
    result = check(Keyring.from_bytes(key.certificate(flags=0x01)), key.document())
    assert result.verdict == NOTTRUSTED and "key flags" in result.reason
    primary, sub = Signer("eddsa"), Signer("eddsa")
    ring = Keyring.from_bytes(primary.certificate(flags=0x01)
                              + primary.bind(sub, flags=0x0C, back_signed=False))
    result = check(ring, sub.document())
    assert result.verdict == NOTTRUSTED and "do not allow signing" in result.reason
    expiring = Keyring.from_bytes(primary.certificate(flags=0x01) + primary.bind(
        sub, hashed=subpacket(9, (100).to_bytes(4, "big"))))
    assert check(expiring, sub.document(created=T0 + 50)).verdict == GOOD
    assert "expired" in check(expiring, sub.document(created=T0 + 150)).reason


def test_forged_binding_signature_binds_nothing() -> None:
    """CVE-2021-3521: a subkey is only as good as its verified binding."""
    primary, sub = Signer("eddsa"), Signer("eddsa")
    bound = primary.bind(sub)
    assert check(Keyring.from_bytes(primary.certificate() + bound), sub.document()).verdict == GOOD
    forged = bytearray(bound)
    forged[-5] ^= 0x01                  # inside the binding's s value
    ring = Keyring.from_bytes(primary.certificate() + bytes(forged))
    result = check(ring, sub.document())
    assert result.verdict == NOTTRUSTED and "not validly bound" in result.reason
    # A binding made by another key that claims to be the primary.
    mallory = Signer("eddsa")
    mallory.key = primary.key              # sign as if we were the primary
    mallory.body = primary.body
    ring = Keyring.from_bytes(primary.certificate() + mallory.bind(sub))
    assert check(ring, sub.document()).verdict == NOTTRUSTED


def test_every_candidate_key_is_tried() -> None:
    """The same signing key known twice: unbound in one certificate, bound in
    another.  The first candidate failing must not hide the second."""
    a, b, sub = Signer("eddsa"), Signer("eddsa"), Signer("eddsa")
    unbound = b.certificate() + packet(14, sub.body)
    ring = Keyring.from_bytes(unbound + a.certificate() + a.bind(sub))
    assert [r.cert.fingerprint for r in ring.by_fingerprint(sub.key.fingerprint)] == [
        b.key.fingerprint_hex, a.key.fingerprint_hex]
    result = check(ring, sub.document())
    assert result.verdict == GOOD and result.cert_fingerprint == a.key.fingerprint_hex
    only_unbound = check(Keyring.from_bytes(unbound), sub.document())
    assert only_unbound.verdict == NOTTRUSTED


def test_sha1_self_signatures_do_not_count() -> None:
    key = Signer("eddsa")
    ring = Keyring.from_bytes(key.certificate(hash_algo=2))
    assert ring.warnings and "SHA1 self-signatures are not accepted" in ring.warnings[0]
    result = check(ring, key.document())
    assert result.verdict == NOTTRUSTED and "no valid self-signature" in result.reason


MD5, SHA1, SHA256 = 1, 2, 8


def _subkey_cert(binding: int, back: int) -> tuple[bytes, Signer]:
    primary, sub = Signer(), Signer()
    return primary.certificate(flags=0x01) + primary.bind(sub, hash_algo=binding, back_hash_algo=back), sub


def _two_self_sigs() -> tuple[bytes, Signer]:
    """A SHA-1 self-signature and a newer SHA-256 one (a key re-signed later)."""
    key = Signer()
    uid = b"re-signed <rs@usrview.invalid>"
    newer = key.sign(0x13, key.prefix(4), pgp.user_id_hash_prefix(uid, 4), created=T0 + 10,
                     hashed=subpacket(27, b"\x03"))
    return key.certificate(uid, hash_algo=SHA1) + packet(2, newer), key


def _primary(hash_algo: int, kind: str = "eddsa", bits: int = 2048) -> tuple[bytes, Signer]:
    key = Signer(kind, bits=bits)
    return key.certificate(hash_algo=hash_algo), key


#: (case, certificate builder, data signature hash, verdict under default, under
#: legacy, Result.policy).  legacy accepts SHA-1 on self-, binding and back-
#: signatures only: never on data signatures, never MD5, never small keys.
POLICY_CASES = [
    ("sha256 bindings", lambda: _primary(SHA256), SHA256, GOOD, GOOD, "default"),
    ("sha1 self-signature", lambda: _primary(SHA1), SHA256, NOTTRUSTED, GOOD, "legacy"),
    ("sha1 self-signature, rsa", lambda: _primary(SHA1, "rsa"), SHA256, NOTTRUSTED, GOOD, "legacy"),
    ("sha1 self-signature, sha1 data", lambda: _primary(SHA1), SHA1, NOTTRUSTED, NOTTRUSTED, None),
    ("sha256 bindings, sha1 data", lambda: _primary(SHA256), SHA1, NOTTRUSTED, NOTTRUSTED, None),
    ("md5 self-signature", lambda: _primary(MD5), SHA256, NOTTRUSTED, NOTTRUSTED, None),
    ("sha1 self-signature, rsa1024", lambda: _primary(SHA1, "rsa", 1024), SHA256, NOTTRUSTED, NOTTRUSTED,
     None),
    ("sha1 subkey binding", lambda: _subkey_cert(SHA1, SHA256), SHA256, NOTTRUSTED, GOOD, "legacy"),
    ("sha1 back-signature", lambda: _subkey_cert(SHA256, SHA1), SHA256, NOTTRUSTED, GOOD, "legacy"),
    ("md5 back-signature", lambda: _subkey_cert(SHA1, MD5), SHA256, NOTTRUSTED, NOTTRUSTED, None),
    ("sha1 and a newer sha256 self-signature", _two_self_sigs, SHA256, GOOD, GOOD, "default"),
]


@pytest.mark.parametrize("build, data_hash, under_default, under_legacy, accepting",
                         [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
def test_signature_policies(build, data_hash, under_default, under_legacy, accepting) -> None:
    cert, signer = build()
    doc = signer.document(hash_algo=data_hash)
    default = check(Keyring.from_bytes(cert), doc)
    legacy = check(Keyring.from_bytes(cert, policy=LEGACY), doc)
    assert (default.verdict, legacy.verdict) == (under_default, under_legacy)
    assert default.policy == legacy.policy == accepting
    # Under default the verdict says how to opt in, exactly when that would help.
    opt_in = "its bindings use SHA1, which the legacy signature policy accepts: --signature-policy legacy"
    assert (opt_in in default.reason) == (accepting == "legacy"), default.reason


def test_combine_prefers_the_strictest_policy() -> None:
    """Two GOOD signatures: the one default accepts decides the package's policy."""
    legacy_good = Result(GOOD, "a", policy="legacy")
    default_good = Result(GOOD, "b", policy="default")
    assert combine([legacy_good, default_good]) is default_good
    hinted = Result(NOTTRUSTED, "c", policy="legacy")
    assert combine([Result(NOTTRUSTED, "d"), hinted]) is hinted


@pytest.mark.parametrize("kind, version", [("rsa", 3), ("rsa", 6), ("ed25519", 6), ("ed448", 6)])
def test_v3_and_v6_keys(kind: str, version: int) -> None:
    key = Signer(kind, version)
    ring = Keyring.from_bytes(key.certificate())
    assert not ring.warnings
    sig = key.document(hash_algo=10)
    assert check(ring, sig).verdict == GOOD
    assert check(ring, sig, DATA[:-1]).verdict == BAD
    if version == 6:    # a v6 key makes only v6 signatures (RFC 9580 5.2.3)
        assert check(ring, key.document(version=4)).verdict == BAD


def test_signatures_nobody_can_check() -> None:
    ring = Keyring.from_bytes(Signer("eddsa").certificate())
    result = check(ring, packet(2, Signer("eddsa").sign(0x00, DATA, algo=99)))
    assert result.verdict == NOTTRUSTED and "unsupported public-key algorithm" in result.reason
    unknown_hash = bytearray(Signer("eddsa").sign(0x00, DATA))
    unknown_hash[3] = 99
    assert check(ring, packet(2, bytes(unknown_hash))).verdict == NOTTRUSTED


def test_check_packet_rejects_what_is_not_one_signature() -> None:
    ring = Keyring()
    key = Signer("eddsa")
    assert check(ring, key.document() + key.document()).verdict == BAD
    assert check(ring, packet(13, b"uid")).verdict == BAD
    assert check(ring, b"\x00garbage").verdict == BAD


# --------------------------------------------------------------------------
# combine(): the package verdict
# --------------------------------------------------------------------------

def R(verdict: Verdict) -> Result:
    return Result(verdict, verdict.value)


@pytest.mark.parametrize("verdicts, expected", [
    ([], UNSIGNED),
    ([GOOD], GOOD),
    ([GOOD, GOOD], GOOD),
    ([GOOD, NOTTRUSTED], GOOD),          # untrusted signatures beside a good one are ignored
    ([NOTTRUSTED, NOTTRUSTED], NOTTRUSTED),
    ([GOOD, NOKEY], GOOD),               # one trusted signer is enough (key transition)
    ([NOKEY, GOOD, NOTTRUSTED], GOOD),
    ([NOTTRUSTED, NOKEY], NOKEY),
    ([NOKEY, NOKEY], NOKEY),
    ([GOOD, BAD], BAD),                  # any bad signature fails the package
    ([NOKEY, BAD, GOOD], BAD),
    ([BAD], BAD),
])
def test_combine(verdicts: list[Verdict], expected: Verdict) -> None:
    assert combine([R(v) for v in verdicts]).verdict == expected


# --------------------------------------------------------------------------
# Loading and robustness
# --------------------------------------------------------------------------

def test_default_key_directory() -> None:
    assert DEFAULT_KEY_DIR == "/etc/pki/rpm-gpg"
    assert Keyring.load.__defaults__ == (DEFAULT_KEY_DIR,)


def test_missing_path_is_an_oserror(tmp_path) -> None:
    with pytest.raises(OSError):
        Keyring.load(tmp_path / "nope")


@needs_corpus
def test_a_file_with_several_certificates() -> None:
    ring = Keyring.load(CONFORMANCE / "rpm-rs-assets/signing_keys/v6/rpm-testkey-v6-keyring.asc")
    assert len(ring.certificates) == 3 and not ring.warnings
    assert sorted(c.primary.algorithm for c in ring.certificates) == [1, 27, 30]


def test_bad_files_become_warnings(gpg, gpg_keys, tmp_path) -> None:
    good = gpg("--armor", "--export", gpg_keys["ed25519"])
    (tmp_path / "a-truncated.asc").write_bytes(good.replace(b"=", b"", 1)[:300])
    (tmp_path / "b-good.asc").write_bytes(good)
    (tmp_path / "c-binary-junk.gpg").write_bytes(b"\x99\x00\x05\x04\x00")
    ring = Keyring.load(tmp_path)
    assert len(ring.certificates) == 1
    assert [w.split(":")[0] for w in ring.warnings] == [str(tmp_path / "a-truncated.asc"),
                                                        str(tmp_path / "c-binary-junk.gpg")]


def _seeds() -> list[bytes]:
    key = Signer("eddsa")
    return [key.certificate() + key.bind(Signer("eddsa")), key.document()]


SEEDS = _seeds()
SEED_RING = Keyring.from_bytes(SEEDS[0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)),
                                        min_size=1, max_size=3), st.binary(max_size=40))
def test_mutated_input_never_raises(seed: bytes, edits: list, tail: bytes) -> None:
    data = bytearray(seed + tail)
    for pos, value in edits:
        data[pos % len(data)] = value
    ring = Keyring.from_bytes(bytes(data))        # problems become warnings
    assert isinstance(ring.warnings, list)
    assert isinstance(SEED_RING.check_packet(bytes(data), DATA), Result)
    try:
        pgp.parse_packets(bytes(data))
    except PGPError:
        pass
