"""The verdict on a package's header: is it signed by a trusted key?

This joins the header parser and the keyring.  :func:`check_bytes` and
:func:`check_file` never raise for bad input: a malformed package is the
verdict PARSE.  Only I/O errors (a file that cannot be opened) propagate.

The order follows rpm: the headers' layout is checked, then the header digests
and signatures over the main header's immutable region, then what rpm checks
only on import (``Header.import_error``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HeaderError, PGPError
from .fileio import FILE_READ_FLAGS, hash_fd
from .files import digest_name
from .header import Package, read_package, read_package_file, sig_digests
from .keyring import Keyring, Result, Verdict, combine
from .openpgp import Tag as PacketTag
from .openpgp import dearmor, is_armored, parse_packets, parse_signature
from .tags import SigTag, Tag

#: RPMTAG_PAYLOADDIGESTALGO when absent: SHA-256 (PGPHASHALGO_SHA256).
PAYLOAD_DIGEST_DEFAULT_ALGO = 8


@dataclass(frozen=True)
class SignatureInfo:
    """One header signature and its result.  ``tag`` is the signature-header tag it came from."""

    tag: str
    result: Result

    def to_json(self) -> dict:
        r = self.result
        return {"tag": self.tag, "verdict": r.verdict.value, "reason": r.reason,
                "fingerprint": r.fingerprint, "cert_fingerprint": r.cert_fingerprint,
                "key_id": r.key_id, "policy": r.policy}


@dataclass(frozen=True)
class HeaderCheck:
    """The verdict on one package.

    Attributes:
        verdict: the package verdict.
        reason: one line for humans.
        fingerprint: the signing key's fingerprint (lowercase hex) when a
            trusted key made the deciding signature; the certificate's
            (primary key's) fingerprint, as rpm prints it.
        key_id: the key ID the deciding signature names.
        signatures: every header signature that counted, with its result.
        digests: header digest name -> "OK" or "BAD".
        package: the parsed package, when it parsed.
        policy: the strictest signature policy (its name, :mod:`verifier.policy`)
            under which the deciding signature is GOOD, whatever the keyring's:
            with a GOOD verdict, the policy that accepts the package; with a
            NOTTRUSTED one, the policy that would.  None otherwise.
    """

    verdict: Verdict
    reason: str
    fingerprint: str | None = None
    key_id: str | None = None
    signatures: tuple[SignatureInfo, ...] = ()
    digests: dict[str, str] = field(default_factory=dict)
    package: Package | None = field(default=None, repr=False, compare=False)
    policy: str | None = None

    @property
    def good(self) -> bool:
        return self.verdict is Verdict.GOOD

    def format(self) -> str:
        """``VERDICT [key FPR] [(reason)]``: the line ``usrview checksig`` prints."""
        words = [self.verdict.value]
        if self.fingerprint:
            words.append(f"key {self.fingerprint}")
        elif self.key_id and self.verdict in (Verdict.NOKEY, Verdict.BAD, Verdict.NOTTRUSTED):
            words.append(f"key ID {self.key_id}")
        if self.verdict is not Verdict.GOOD and self.reason:
            words.append(f"({self.reason})")
        return " ".join(words)

    def to_json(self) -> dict:
        pkg = self.package
        return {
            "verdict": self.verdict.value,
            "fingerprint": self.fingerprint,
            "key_id": self.key_id,
            "reason": self.reason,
            "nevra": pkg.nevra if pkg else None,
            "header_sha256": pkg.header_sha256 if pkg else None,
            "digests": self.digests,
            "signatures": [s.to_json() for s in self.signatures],
            "policy": self.policy,
        }


def header_signatures(pkg: Package) -> list[tuple[str, bytes]]:
    """The signature packets that count, as rpm 6 chooses them: the OPENPGP
    tag's (base64 strings) when present, else the RSA and DSA tags'.

    Raises HeaderError when the OPENPGP tag is not valid base64.
    """
    sig = pkg.signature
    if SigTag.OPENPGP in sig:
        packets = []
        for i, text in enumerate(sig.strings(SigTag.OPENPGP) or ()):
            try:
                packets.append(("OPENPGP", base64.b64decode(text.encode("ascii", "strict"),
                                                            validate=True)))
            except (binascii.Error, UnicodeEncodeError, ValueError):
                raise HeaderError(f"signature header: OPENPGP signature {i} is not base64") from None
        return packets
    out = []
    for tag, name in ((SigTag.RSA, "RSA"), (SigTag.DSA, "DSA")):
        raw = sig.raw(tag)
        if raw is not None:
            if sig.entries[tag].type.name != "BIN":
                raise HeaderError(f"signature header: {name} signature is not binary")
            out.append((name, raw))
    return out


def check_digests(pkg: Package, region: bytes) -> dict[str, str]:
    """Compare the header digests the signature header carries with the region's
    (``region``: ``pkg``'s header region, whose SHA-256 the package keeps)."""
    out = {}
    for name, expected in sig_digests(pkg.signature).items():
        actual = pkg.header_sha256 if name == "sha256" else hashlib.new(name, region).hexdigest()
        out[name] = "OK" if actual == expected else "BAD"
    return out


def check_package(pkg: Package, keyring: Keyring, *, now: float | None = None) -> HeaderCheck:
    """The verdict on a parsed package (parsed with ``strict=False``)."""
    region = pkg.header.region_bytes
    try:
        packets = header_signatures(pkg)
        digests = check_digests(pkg, region)
    except HeaderError as e:
        # rpm fails a signature or digest whose tag has the wrong type or
        # content (rpmvsAppendTag): the header is not verified.
        return HeaderCheck(Verdict.BAD, str(e), package=pkg)
    infos = tuple(SignatureInfo(tag, keyring.check_packet(p, region, now=now)) for tag, p in packets)
    if not infos:
        verdict, reason = Verdict.UNSIGNED, "no header signature"
        if "BAD" in digests.values():
            reason += "; header digest BAD"
        return HeaderCheck(verdict, reason, digests=digests, package=pkg)
    combined = combine([i.result for i in infos])
    verdict = combined.verdict
    reason = combined.reason
    bad_digests = [name for name, ok in digests.items() if ok == "BAD"]
    if bad_digests:
        what = f"header {', '.join(n.upper().replace('_', '-') for n in bad_digests)} digest does not match"
        reason = f"{what}; signature: {reason}" if verdict is Verdict.BAD else what
        verdict = Verdict.BAD
    if verdict is Verdict.GOOD:
        import_error = pkg.signature.import_error or pkg.header.import_error
        if import_error:
            verdict, reason = Verdict.PARSE, import_error
    return HeaderCheck(verdict, reason,
                       fingerprint=combined.cert_fingerprint if combined.verdict is not Verdict.NOKEY else None,
                       key_id=combined.key_id, signatures=infos, digests=digests, package=pkg,
                       policy=combined.policy if verdict is combined.verdict else None)


def check_bytes(data: bytes, keyring: Keyring, *, now: float | None = None) -> HeaderCheck:
    """The verdict on a package or header-only file held in memory."""
    try:
        pkg = read_package(data, strict=False)
    except HeaderError as e:
        return HeaderCheck(Verdict.PARSE, str(e))
    return check_package(pkg, keyring, now=now)


def check_file(path: str | Path, keyring: Keyring, *, now: float | None = None,
               payload: bool = False) -> HeaderCheck:
    """The verdict on a package file; reads only its lead and headers, unless ``payload``:
    then also, as ``rpmkeys --checksig`` does, whatever follows the main header against
    the header's signed payload digest (:func:`payload_digest_error`), and a GOOD header
    followed by bytes that do not match it is BAD.

    Raises OSError when the file cannot be read.
    """
    try:
        pkg = read_package_file(path, strict=False)
    except HeaderError as e:
        return HeaderCheck(Verdict.PARSE, str(e))
    check = check_package(pkg, keyring, now=now)
    if payload and pkg.has_payload and check.verdict is Verdict.GOOD:
        error = payload_digest_error(path, pkg)
        if error is not None:
            return dataclasses.replace(check, verdict=Verdict.BAD, reason=error)
    return check


def payload_digest_error(path: str | Path, pkg: Package) -> str | None:
    """Why the bytes after ``pkg``'s main header in the file ``path`` are not the payload
    its signed header names (``RPMTAG_PAYLOADDIGEST``, over the compressed payload, as
    rpm checks it), or None when they are or the header names no payload digest."""
    expected = pkg.header.strings(Tag.PAYLOADDIGEST) if Tag.PAYLOADDIGEST in pkg.header else None
    if not expected:
        return None
    algo = digest_name(pkg.header.int(Tag.PAYLOADDIGESTALGO, PAYLOAD_DIGEST_DEFAULT_ALGO))
    if algo is None:
        return "payload digest algorithm not supported"
    fd = os.open(path, FILE_READ_FLAGS)
    try:
        actual, _ = hash_fd(fd, algo, offset=pkg.payload_offset)
    finally:
        os.close(fd)
    return None if actual == expected[0].lower() else "payload digest does not match the header's"


def check_detached(signature: bytes, data: bytes, keyring: Keyring, *,
                   now: float | None = None) -> Result:
    """The verdict on a detached signature over ``data`` (``gpg --detach-sign``,
    binary or armored): every signature packet is a binary-document signature
    judged by :meth:`Keyring.check_packet`'s rules, and the verdicts are
    combined as a header's are (one GOOD from a trusted key vouches).  Never
    raises: anything but signature packets is BAD, no packet is UNSIGNED."""
    try:
        blocks = dearmor(signature) if is_armored(signature) else [signature]
        packets = [p for block in blocks for p in parse_packets(block)]
    except PGPError as e:
        return Result(Verdict.BAD, f"malformed detached signature: {e}")
    if any(p.tag != PacketTag.SIGNATURE for p in packets):
        return Result(Verdict.BAD, "a detached signature holds only signature packets")
    results = []
    for p in packets:
        try:
            sig = parse_signature(p.body)
        except PGPError as e:
            results.append(Result(Verdict.BAD, f"malformed OpenPGP signature: {e}"))
            continue
        results.append(keyring.check(sig, data, now=now))
    return combine(results)
