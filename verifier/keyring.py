"""Trusted OpenPGP certificates, and the verdict on an RPM header signature.

A :class:`Keyring` holds the certificates an administrator trusts (by default
every file in ``/etc/pki/rpm-gpg``).  Loading verifies every self-signature,
binding signature, back-signature and revocation cryptographically and keeps
only the valid ones; keys we cannot use are skipped and listed in
:attr:`Keyring.warnings`.  :meth:`Keyring.check` then judges one signature
over the signed bytes and returns a :class:`Result`; :func:`combine` turns the
results of a header's several signatures into the package verdict.  ``docs/signature-policy.md`` explains every rule.

All fingerprints and key IDs in results are lowercase hex, as ``rpmkeys -Kv``
prints them.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

from .errors import PGPError
from . import policy as policies
from .openpgp import (
    ALGORITHMS,
    CERTIFICATION_TYPES,
    HASHES,
    KeyFlag,
    Packet,
    PubkeyAlgo,
    PublicKey,
    RevocationReason,
    Signature,
    SigType,
    Tag,
    algorithm_name,
    dearmor,
    hash_name,
    is_armored,
    parse_packets,
    parse_public_key,
    parse_signature,
    user_id_hash_prefix,
)
from .policy import NEVER_FOR_BINDINGS, WEAK_HASHES, Policy

log = logging.getLogger(__name__)

DEFAULT_KEY_DIR = "/etc/pki/rpm-gpg"

#: Tolerated clock difference for signatures "from the future" (rpm-sequoia's).
CLOCK_SKEW = 5 * 60
#: verifier.policy.WEAK_HASHES: hashes rpm 6 no longer accepts (Sequoia's
#: standard policy: MD5 and RIPEMD-160 long since, SHA-1 for data signatures
#: since 2013 and for self- and binding signatures since February 2023).  A data
#: signature using one is NOTTRUSTED under every policy; a self- or binding
#: signature using one counts only where the keyring's policy accepts its hash
#: (``legacy``: SHA-1).  Revocations are honoured whatever their hash.
_ANY_HASH: frozenset[int] = frozenset()
#: Smaller RSA / DSA keys are NOTTRUSTED (Sequoia's standard policy).
MIN_KEY_BITS = {PubkeyAlgo.RSA: 2048, PubkeyAlgo.RSA_SIGN: 2048, PubkeyAlgo.DSA: 2048}
#: Revocation reasons that only take effect from the revocation's creation;
#: every other reason (or none) revokes the key for all times.
SOFT_REVOCATIONS = frozenset({RevocationReason.SUPERSEDED, RevocationReason.RETIRED,
                              RevocationReason.USER_ID_INVALID})
_REVOCATION_TYPES = frozenset({SigType.KEY_REVOCATION, SigType.SUBKEY_REVOCATION,
                               SigType.CERTIFICATION_REVOCATION})
_IGNORED_PACKETS = frozenset({Tag.TRUST, Tag.MARKER, Tag.PADDING})
_KEY_PACKETS = frozenset({Tag.PUBLIC_KEY, Tag.SECRET_KEY})
_SUBKEY_PACKETS = frozenset({Tag.PUBLIC_SUBKEY, Tag.SECRET_SUBKEY})
_USER_PACKETS = frozenset({Tag.USER_ID, Tag.USER_ATTRIBUTE})


class Verdict(str, enum.Enum):
    """The verdict on one signature or on a package (see docs/signature-policy.md)."""

    GOOD = "GOOD"
    BAD = "BAD"
    NOKEY = "NOKEY"
    NOTTRUSTED = "NOTTRUSTED"
    UNSIGNED = "UNSIGNED"
    #: Package level only: the package is malformed (verifier.sigcheck).
    PARSE = "PARSE"


@dataclass(frozen=True, slots=True)
class Result:
    """The verdict on a signature.

    Attributes:
        verdict: the :class:`Verdict`.
        reason: one line for humans.
        fingerprint: lowercase hex fingerprint of the key that made the
            signature (the subkey when a subkey signed), when a key was found.
        cert_fingerprint: lowercase hex fingerprint of that key's certificate
            (its primary key), as rpm prints it.
        key_id: lowercase hex issuer key ID named by the signature.
        policy: the name of the strictest signature policy
            (:data:`verifier.policy.POLICIES`) under which this signature is
            GOOD, whatever the keyring's policy; None when there is none.  A
            NOTTRUSTED signature with a policy is one that policy would accept.
    """

    verdict: Verdict
    reason: str
    fingerprint: str | None = None
    cert_fingerprint: str | None = None
    key_id: str | None = None
    policy: str | None = None


# --------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------

def _valid_by(key: PublicKey, sig: Signature, *chunks: bytes,
              weak: frozenset[int] = NEVER_FOR_BINDINGS) -> bool:
    """Whether ``sig`` is a well-formed, policy-acceptable signature by ``key``."""
    h = HASHES.get(sig.hash_algo)
    if sig.unknown_critical or h is None or not h.supported or sig.hash_algo in weak:
        return False
    if not key.usable:
        return False
    return key.verify_digest(sig, sig.digest(*chunks))


def _names(sig: Signature, key: PublicKey) -> bool:
    """Whether ``sig`` may come from ``key`` (no issuer at all: maybe)."""
    ids = sig.issuer_ids()
    return not ids or key.key_id in ids


def _in_force(sigs: Iterable[Signature], t: int) -> Signature | None:
    """The self-signature in force at ``t``: the newest one made at or before
    ``t``; when none is that old (older ones were stripped), the oldest."""
    sigs = list(sigs)
    before = [s for s in sigs if s.created <= t]
    if before:
        return max(before, key=lambda s: s.created)
    return min(sigs, key=lambda s: s.created) if sigs else None


def _revoked(revocations: Iterable[Signature], t: int) -> Signature | None:
    """The revocation that applies at ``t``: hard ones always, soft ones
    (superseded, retired) from their creation on."""
    for rev in revocations:
        code = rev.revocation_reason[0] if rev.revocation_reason else None
        if code not in SOFT_REVOCATIONS or rev.created <= t:
            return rev
    return None


def _revocation_text(rev: Signature) -> str:
    if not rev.revocation_reason:
        return "no reason given"
    code, text = rev.revocation_reason
    try:
        name = RevocationReason(code).name.lower().replace("_", " ")
    except ValueError:
        name = f"reason {code}"
    return f"{name}: {text}" if text else name


def _ts(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _weak_key(key: PublicKey) -> str | None:
    minimum = MIN_KEY_BITS.get(key.algorithm)
    if minimum and key.bits is not None and key.bits < minimum:
        return f"{key.algorithm_name} key of {key.bits} bits is too weak (< {minimum})"
    return None


@dataclass
class UserID:
    """A user ID (or user attribute) of a certificate.

    Attributes:
        value: the packet body.
        tag: Tag.USER_ID or Tag.USER_ATTRIBUTE.
        self_sigs: valid certifications by the primary key.
        revocations: valid certification revocations by the primary key.
    """

    value: bytes
    tag: int
    self_sigs: list[Signature] = field(default_factory=list)
    revocations: list[Signature] = field(default_factory=list)


@dataclass
class Binding:
    """A valid subkey binding signature.

    Attributes:
        sig: the binding signature (type 0x18) by the primary key.
        back_hashes: the hash algorithms of the valid primary-key binding
            signatures (type 0x19, made by the subkey) it embeds.
    """

    sig: Signature
    back_hashes: frozenset[int]

    def back_signed(self, policy: Policy) -> bool:
        """Whether it embeds a back-signature whose hash ``policy`` accepts."""
        return any(h not in policy.weak_binding_hashes for h in self.back_hashes)


@dataclass
class Subkey:
    """A subkey and its valid binding and revocation signatures."""

    key: PublicKey
    bindings: list[Binding] = field(default_factory=list)
    revocations: list[Signature] = field(default_factory=list)

    def bindings_under(self, policy: Policy) -> list[Binding]:
        """The bindings whose hash ``policy`` accepts."""
        return [b for b in self.bindings if b.sig.hash_algo not in policy.weak_binding_hashes]


@dataclass
class Certificate:
    """A transferable public key: the primary key and everything bound to it.

    Only signatures that verified against the primary key (and, for back-
    signatures, against the subkey) are kept.

    Attributes:
        primary: the primary key.
        user_ids: user IDs and user attributes with their self-signatures.
        subkeys: usable-algorithm subkeys with their bindings.
        direct_sigs: valid direct-key signatures.
        revocations: valid key revocation signatures.
        source: where the certificate was read from.
        weak_binding_hashes: the weak hashes (:data:`WEAK_HASHES`) of the self-
            and binding signatures seen, valid or not.  Those a policy accepts
            are kept (and verified) with the others; each validity question
            names the policy that judges.
        rejected_hashes: names of the weak hashes whose self- or binding
            signatures the loading keyring's policy does not accept.
    """

    primary: PublicKey
    user_ids: list[UserID] = field(default_factory=list)
    subkeys: list[Subkey] = field(default_factory=list)
    direct_sigs: list[Signature] = field(default_factory=list)
    revocations: list[Signature] = field(default_factory=list)
    source: str = ""
    weak_binding_hashes: set[int] = field(default_factory=set)
    rejected_hashes: set[str] = field(default_factory=set)

    @property
    def fingerprint(self) -> str:
        return self.primary.fingerprint_hex

    @property
    def name(self) -> str:
        """The first user ID, for messages."""
        for uid in self.user_ids:
            if uid.tag == Tag.USER_ID:
                return uid.value.decode("utf-8", "replace")
        return ""

    # -- building ----------------------------------------------------------

    @classmethod
    def from_packets(cls, packets: list[Packet], source: str, warnings: list[str],
                     policy: Policy = policies.DEFAULT) -> Certificate:
        """Build a certificate from its packets (the first is the primary key).

        Raises PGPError when the primary key itself is unusable or malformed;
        problems with its parts (as ``policy`` judges them) are appended to
        ``warnings``.
        """
        primary = parse_public_key(packets[0].body, packets[0].tag)
        if primary.subkey:
            raise PGPError("certificate does not start with a primary key")
        label = f"{source}: key {primary.fingerprint_hex}"
        if not primary.usable:
            raise PGPError(f"primary key {primary.fingerprint_hex} skipped: {primary.unusable}")
        cert = cls(primary, source=source)
        component: UserID | Subkey | None = None
        skipping = False  # inside a skipped subkey
        for packet in packets[1:]:
            if packet.tag in _IGNORED_PACKETS:
                continue
            if packet.tag in _USER_PACKETS:
                component, skipping = cert._user_id(packet), False
            elif packet.tag in _SUBKEY_PACKETS:
                component = cert._start_subkey(packet, label, warnings)
                skipping = component is None
            elif packet.tag == Tag.SIGNATURE:
                if not skipping:
                    cert._add_signature(packet.body, component, label)
            else:
                log.debug("%s: ignoring packet type %d", label, packet.tag)
        cert.rejected_hashes = {hash_name(h) for h in cert.weak_binding_hashes
                                & policy.weak_binding_hashes}
        why = ""
        if cert.rejected_hashes:
            looser = cert.looser_policy(policy)
            hint = f"; the {looser[0].name} signature policy accepts them: {looser[0].opt_in}" if looser else ""
            why = f" ({', '.join(sorted(cert.rejected_hashes))} self-signatures are not accepted{hint})"
        if not cert._self_sigs(policy=policy):
            warnings.append(f"{label}: no valid self-signature{why}; the key is not trusted")
        for sub in cert.subkeys:
            if not sub.bindings_under(policy):
                warnings.append(f"{label}: subkey {sub.key.fingerprint_hex} has no valid "
                                f"binding signature{why}; it is not trusted")
        return cert

    def _user_id(self, packet: Packet) -> UserID:
        """The user ID of this packet; a repeated one continues the first."""
        for uid in self.user_ids:
            if uid.tag == packet.tag and uid.value == packet.body:
                return uid
        uid = UserID(packet.body, packet.tag)
        self.user_ids.append(uid)
        return uid

    def _start_subkey(self, packet: Packet, label: str, warnings: list[str]) -> Subkey | None:
        """The subkey of this packet (a repeated one continues the first), or
        None if it is skipped."""
        try:
            key = parse_public_key(packet.body, packet.tag)
        except PGPError as e:
            warnings.append(f"{label}: malformed subkey skipped: {e}")
            return None
        if not key.usable:
            warnings.append(f"{label}: subkey {key.fingerprint_hex} skipped: {key.unusable}")
            return None
        for sub in self.subkeys:
            if sub.key.fingerprint == key.fingerprint:
                return sub
        sub = Subkey(key)
        self.subkeys.append(sub)
        return sub

    def _add_signature(self, body: bytes, component: UserID | Subkey | None,
                       label: str) -> None:
        try:
            sig = parse_signature(body)
        except PGPError as e:
            log.debug("%s: malformed signature ignored: %s", label, e)
            return
        primary = self.primary
        if not _names(sig, primary) or sig.created < primary.created:
            return  # a third-party certification, or impossible
        key_prefix = primary.hash_prefix(sig.version)
        t = sig.sig_type
        if sig.hash_algo in WEAK_HASHES and t not in _REVOCATION_TYPES:
            self.weak_binding_hashes.add(sig.hash_algo)
            if sig.hash_algo in NEVER_FOR_BINDINGS:
                return
        if t == SigType.KEY_REVOCATION:
            if _valid_by(primary, sig, key_prefix, weak=_ANY_HASH):
                self.revocations.append(sig)
        elif t == SigType.DIRECT_KEY:
            if _valid_by(primary, sig, key_prefix):
                self.direct_sigs.append(sig)
        elif isinstance(component, UserID) and (t in CERTIFICATION_TYPES
                                                or t == SigType.CERTIFICATION_REVOCATION):
            uid = user_id_hash_prefix(component.value, sig.version, component.tag)
            if t == SigType.CERTIFICATION_REVOCATION:
                if _valid_by(primary, sig, key_prefix, uid, weak=_ANY_HASH):
                    component.revocations.append(sig)
            elif _valid_by(primary, sig, key_prefix, uid):
                component.self_sigs.append(sig)
        elif isinstance(component, Subkey) and t in (SigType.SUBKEY_BINDING,
                                                     SigType.SUBKEY_REVOCATION):
            sub = component.key
            chunks = (key_prefix, sub.hash_prefix(sig.version))
            if t == SigType.SUBKEY_REVOCATION:
                if _valid_by(primary, sig, *chunks, weak=_ANY_HASH):
                    component.revocations.append(sig)
            elif sig.created >= sub.created and _valid_by(primary, sig, *chunks):
                component.bindings.append(Binding(sig, self._back_signed(sig, sub)))

    def _back_signed(self, binding: Signature, sub: PublicKey) -> frozenset[int]:
        """The hashes of the valid primary-key binding signatures by ``sub`` that
        ``binding`` embeds."""
        hashes = set()
        for back in binding.embedded:
            if back.sig_type != SigType.PRIMARY_KEY_BINDING or not _names(back, sub):
                continue
            chunks = (self.primary.hash_prefix(back.version), sub.hash_prefix(back.version))
            if back.hash_algo in WEAK_HASHES:
                self.weak_binding_hashes.add(back.hash_algo)
            if _valid_by(sub, back, *chunks):
                hashes.add(back.hash_algo)
        return frozenset(hashes)

    def merge(self, other: Certificate) -> None:
        """Add the valid signatures and components of ``other`` (same primary)."""
        if other.primary.fingerprint != self.primary.fingerprint:
            raise ValueError("merging different certificates")
        _extend_unique(self.revocations, other.revocations)
        _extend_unique(self.direct_sigs, other.direct_sigs)
        for uid in other.user_ids:
            mine = next((u for u in self.user_ids
                         if u.tag == uid.tag and u.value == uid.value), None)
            if mine is None:
                self.user_ids.append(uid)
            else:
                _extend_unique(mine.self_sigs, uid.self_sigs)
                _extend_unique(mine.revocations, uid.revocations)
        for sub in other.subkeys:
            mine = next((s for s in self.subkeys
                         if s.key.fingerprint == sub.key.fingerprint), None)
            if mine is None:
                self.subkeys.append(sub)
            else:
                _extend_unique(mine.bindings, sub.bindings)
                _extend_unique(mine.revocations, sub.revocations)

    # -- validity ----------------------------------------------------------

    def _self_sigs(self, t: int | None = None, *, policy: Policy) -> list[Signature]:
        """Valid self-signatures on the primary key whose hash ``policy`` accepts:
        direct-key signatures and certifications of user IDs not revoked at ``t``."""
        sigs = list(self.direct_sigs)
        for uid in self.user_ids:
            if t is None or _revoked(uid.revocations, t) is None:
                sigs.extend(uid.self_sigs)
        sigs = [s for s in sigs if s.hash_algo not in policy.weak_binding_hashes]
        if not sigs and t is not None:  # every user ID revoked: still a key
            return self._self_sigs(policy=policy)
        return sigs

    def looser_policy(self, policy: Policy) -> tuple[Policy, list[str]] | None:
        """The first policy looser than ``policy`` that accepts weak hashes this
        certificate's bindings use, and those hashes' names; None when there is none."""
        for other in policies.POLICIES[policies.POLICIES.index(policy) + 1:]:
            hashes = self.weak_binding_hashes & policy.weak_binding_hashes - other.weak_binding_hashes
            if hashes:
                return other, sorted(map(hash_name, hashes))
        return None

    def primary_problem(self, t: int, policy: Policy) -> str | None:
        """Why the primary key was not valid at ``t`` under ``policy``, or None if it was."""
        key = self.primary
        binding = _in_force(self._self_sigs(t, policy=policy), t)
        if binding is None:
            return "the key has no valid self-signature"
        rev = _revoked(self.revocations, t)
        if rev is not None:
            return f"the key was revoked on {_ts(rev.created)} ({_revocation_text(rev)})"
        if key.created > t:
            return f"the key was created after the signature ({_ts(key.created)})"
        if key.version == 3:
            expires = key.v3_expiration
        else:
            expires = key.created + binding.key_expiration if binding.key_expiration else None
        if expires is not None and expires <= t:
            return f"the key expired on {_ts(expires)}"
        return _weak_key(key)

    def signing_problem(self, key: PublicKey, t: int, policy: Policy) -> str | None:
        """Why ``key`` (the primary or one of its subkeys) could not make a
        data signature at ``t`` under ``policy``, or None if it could."""
        problem = self.primary_problem(t, policy)
        if problem is not None:
            return problem
        if key is self.primary:
            flags = _in_force(self._self_sigs(t, policy=policy), t).key_flags
            if flags is not None and not flags & KeyFlag.SIGN:
                return "the key flags do not allow signing"
            return None
        sub = next(s for s in self.subkeys if s.key is key)
        bindings = sub.bindings_under(policy)
        if not bindings:
            return f"subkey {key.fingerprint_hex} is not validly bound to its primary key"
        rev = _revoked(sub.revocations, t)
        if rev is not None:
            return (f"subkey {key.fingerprint_hex} was revoked on {_ts(rev.created)} "
                    f"({_revocation_text(rev)})")
        if key.created > t:
            return f"subkey {key.fingerprint_hex} was created after the signature"
        binding = _in_force((b.sig for b in bindings), t)
        chosen = next(b for b in bindings if b.sig is binding)
        expires = key.created + binding.key_expiration if binding.key_expiration else None
        if expires is not None and expires <= t:
            return f"subkey {key.fingerprint_hex} expired on {_ts(expires)}"
        if binding.key_flags is not None and not binding.key_flags & KeyFlag.SIGN:
            return f"the key flags of subkey {key.fingerprint_hex} do not allow signing"
        if not chosen.back_signed(policy):
            return (f"signing subkey {key.fingerprint_hex} has no valid primary-key "
                    "binding (back-)signature")
        return _weak_key(key)


def _extend_unique(mine: list, theirs: list) -> None:
    for item in theirs:
        if item not in mine:
            mine.append(item)


# --------------------------------------------------------------------------
# The keyring
# --------------------------------------------------------------------------

class KeyRef(NamedTuple):
    """A key in the keyring: the certificate and the key (primary or subkey)."""

    cert: Certificate
    key: PublicKey


_RANK = {Verdict.BAD: 0, Verdict.NOTTRUSTED: 1, Verdict.GOOD: 2}
#: Strictest policy first (verifier.policy.POLICIES).
_POLICY_RANK = {p.name: i for i, p in enumerate(policies.POLICIES)}


class Keyring:
    """The trusted certificates, indexed by key ID and fingerprint.

    Attributes:
        certificates: the loaded certificates (one per primary fingerprint;
            certificates read twice are merged).
        warnings: one line per thing skipped at load time, and why.
        policy: the signature policy (:mod:`verifier.policy`) its verdicts follow.
    """

    def __init__(self, certificates: Iterable[Certificate] = (),
                 warnings: Iterable[str] = (), *, policy: Policy = policies.DEFAULT):
        self.certificates: list[Certificate] = []
        self.warnings: list[str] = list(warnings)
        self.policy = policy
        self._by_fingerprint: dict[bytes, Certificate] = {}
        self._by_key_id: dict[bytes, list[KeyRef]] = {}
        self._by_key_fp: dict[bytes, list[KeyRef]] = {}
        for cert in certificates:
            self.add(cert)

    # -- loading -----------------------------------------------------------

    @classmethod
    def load(cls, paths: str | os.PathLike | Iterable[str | os.PathLike] = DEFAULT_KEY_DIR, *,
             policy: Policy = policies.DEFAULT) -> Keyring:
        """Load every certificate from files and directories (not recursive), for
        verdicts under ``policy``.

        Files may be ASCII-armored or binary and hold several certificates.
        Unreadable or malformed files become warnings; a path that does not
        exist raises OSError.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        ring = cls(policy=policy)
        pending: list[tuple[Signature, str]] = []
        for path in map(Path, paths):
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            for f in files:
                ring._load_bytes(f.read_bytes(), str(f), pending)
        ring._apply_revocations(pending)
        return ring

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>", *,
                   policy: Policy = policies.DEFAULT) -> Keyring:
        """A keyring from the certificates in ``data`` (armored or binary)."""
        ring = cls(policy=policy)
        pending: list[tuple[Signature, str]] = []
        ring._load_bytes(data, source, pending)
        ring._apply_revocations(pending)
        return ring

    def _load_bytes(self, data: bytes, source: str,
                    pending: list[tuple[Signature, str]]) -> None:
        try:
            blocks = dearmor(data) if is_armored(data) else [data]
            streams = [parse_packets(b) for b in blocks]
        except PGPError as e:
            self._warn(f"{source}: not loaded: {e}")
            return
        if not any(streams):
            self._warn(f"{source}: no OpenPGP data")
        for packets in streams:
            starts = [i for i, p in enumerate(packets) if p.tag in _KEY_PACKETS]
            for p in packets[:starts[0] if starts else len(packets)]:
                self._orphan(p, source, pending)
            for start, end in zip(starts, starts[1:] + [len(packets)]):
                try:
                    self.add(Certificate.from_packets(packets[start:end], source, self.warnings,
                                                      self.policy))
                except PGPError as e:
                    self._warn(f"{source}: certificate skipped: {e}")

    def _orphan(self, packet: Packet, source: str,
                pending: list[tuple[Signature, str]]) -> None:
        """A packet before any key: a stand-alone revocation certificate is kept
        to apply to its key once everything is loaded."""
        if packet.tag == Tag.SIGNATURE:
            try:
                sig = parse_signature(packet.body)
            except PGPError as e:
                self._warn(f"{source}: malformed signature skipped: {e}")
                return
            if sig.sig_type == SigType.KEY_REVOCATION:
                pending.append((sig, source))
                return
        if packet.tag not in _IGNORED_PACKETS:
            self._warn(f"{source}: packet type {packet.tag} outside a certificate skipped")

    def _apply_revocations(self, pending: list[tuple[Signature, str]]) -> None:
        for sig, source in pending:
            applied = False
            for cert in self.certificates:
                key = cert.primary
                if _names(sig, key) and _valid_by(key, sig, key.hash_prefix(sig.version),
                                                  weak=_ANY_HASH):
                    cert.revocations.append(sig)
                    applied = True
            if not applied:
                self._warn(f"{source}: revocation certificate for an unknown key skipped")

    def _warn(self, line: str) -> None:
        log.debug("%s", line)
        self.warnings.append(line)

    def add(self, cert: Certificate) -> None:
        """Add a certificate (merged into one with the same primary key)."""
        known = self._by_fingerprint.get(cert.primary.fingerprint)
        if known is None:
            self.certificates.append(cert)
            self._by_fingerprint[cert.primary.fingerprint] = known = cert
        else:
            known.merge(cert)
        for key in [known.primary] + [s.key for s in known.subkeys]:
            refs = self._by_key_fp.setdefault(key.fingerprint, [])
            if not any(r.cert is known for r in refs):
                ref = KeyRef(known, key)
                refs.append(ref)
                self._by_key_id.setdefault(key.key_id, []).append(ref)

    # -- lookup ------------------------------------------------------------

    def by_key_id(self, key_id: bytes | str) -> list[KeyRef]:
        """Every key with this 64-bit key ID (collisions give several)."""
        return list(self._by_key_id.get(_as_bytes(key_id), ()))

    def by_fingerprint(self, fingerprint: bytes | str) -> list[KeyRef]:
        """The key (primary or subkey) with this fingerprint."""
        return list(self._by_key_fp.get(_as_bytes(fingerprint), ()))

    def candidates(self, sig: Signature) -> list[KeyRef]:
        """Every key the signature may come from: by issuer fingerprint and by
        every key ID it names.  The verification decides between them."""
        refs: list[KeyRef] = []
        for fp in sig.issuer_fingerprints:
            refs.extend(self._by_key_fp.get(fp, ()))
        for key_id in sig.issuer_ids():
            refs.extend(self._by_key_id.get(key_id, ()))
        unique: dict[tuple[bytes, bytes], KeyRef] = {}
        for ref in refs:
            unique.setdefault((ref.cert.primary.fingerprint, ref.key.fingerprint), ref)
        return list(unique.values())

    # -- verification ------------------------------------------------------

    def check_packet(self, packet: bytes, signed_data: bytes, *,
                     now: float | None = None) -> Result:
        """Like :meth:`check` for a raw signature packet (header included), as
        RPM signature tags store it; a malformed packet is BAD."""
        try:
            packets = parse_packets(packet)
            if len(packets) != 1 or packets[0].tag != Tag.SIGNATURE:
                raise PGPError("not a single signature packet")
            sig = parse_signature(packets[0].body)
        except PGPError as e:
            return Result(Verdict.BAD, f"malformed OpenPGP signature: {e}")
        return self.check(sig, signed_data, now=now)

    def check(self, sig: Signature, signed_data: bytes, *,
              now: float | None = None) -> Result:
        """Judge a binary-document signature over ``signed_data``.

        ``now`` (default: the current time) is only used to reject signatures
        from the future and signatures past their own expiration; keys are
        judged at the signature's creation time.
        """
        now = time.time() if now is None else now
        ids = sig.issuer_ids()
        named = (sig.issuer_key_ids or sorted(ids) or [b""])[0].hex() or None

        def result(verdict: Verdict, reason: str) -> Result:
            return Result(verdict, reason, key_id=named)

        if sig.sig_type != SigType.BINARY:
            return result(Verdict.BAD, f"signature type 0x{sig.sig_type:02x} is not a "
                          "binary document signature")
        if sig.created > now + CLOCK_SKEW:
            return result(Verdict.BAD, f"signature created in the future ({_ts(sig.created)})")
        if sig.expires_at is not None and sig.expires_at <= now:
            return result(Verdict.BAD, f"signature expired on {_ts(sig.expires_at)}")
        if sig.unknown_critical:
            return result(Verdict.BAD, "signature has unknown critical subpackets "
                          f"{list(sig.unknown_critical)}")
        if not ids:
            return result(Verdict.BAD, "signature names no issuer")
        h = HASHES.get(sig.hash_algo)
        if h is None or not h.supported:
            return result(Verdict.NOTTRUSTED,
                          f"unsupported hash algorithm {hash_name(sig.hash_algo)}")
        digest = sig.digest(signed_data)
        if digest[:2] != sig.left16:
            return result(Verdict.BAD, "digest does not match the signature "
                          "(left 16 bits differ)")
        refs = [r for r in self.candidates(sig) if r.key.algorithm == sig.pubkey_algo]
        if not refs:
            algo = ALGORITHMS.get(sig.pubkey_algo)
            if algo is None or algo.verify is None:
                return result(Verdict.NOTTRUSTED, "unsupported public-key algorithm "
                              f"{algorithm_name(sig.pubkey_algo)}")
            if sig.hash_algo in WEAK_HASHES:
                return result(Verdict.NOTTRUSTED, f"{h.name} signature, and no trusted key")
            return result(Verdict.NOKEY, "no trusted key")
        # Key IDs collide: try every candidate, the mathematics decides.
        outcomes = []
        for ref in refs:
            outcome = self._check_with(ref, sig, digest, named)
            if outcome.verdict is Verdict.GOOD:
                return outcome
            outcomes.append(outcome)
        return max(outcomes, key=lambda r: _RANK[r.verdict])

    def _check_with(self, ref: KeyRef, sig: Signature, digest: bytes, named: str | None) -> Result:
        # The strictest policy under which the signature is GOOD (data
        # signatures are judged alike under all): recorded with the package.
        accepting = None if sig.hash_algo in WEAK_HASHES else next(
            (p.name for p in policies.POLICIES
             if ref.cert.signing_problem(ref.key, sig.created, p) is None), None)

        def result(verdict: Verdict, reason: str) -> Result:
            return Result(verdict, reason, ref.key.fingerprint_hex, ref.cert.fingerprint, named,
                          accepting if verdict is not Verdict.BAD else None)

        if not ref.key.verify_digest(sig, digest):
            return result(Verdict.BAD, f"signature does not verify with key "
                          f"{ref.key.fingerprint_hex}")
        problem = ref.cert.signing_problem(ref.key, sig.created, self.policy)
        if problem is not None:
            looser = ref.cert.looser_policy(self.policy) if accepting else None
            if looser is not None:
                problem += (f": its bindings use {', '.join(looser[1])}, which the {looser[0].name} "
                            f"signature policy accepts: {looser[0].opt_in}")
            return result(Verdict.NOTTRUSTED, problem)
        if sig.hash_algo in WEAK_HASHES:
            return result(Verdict.NOTTRUSTED, f"{hash_name(sig.hash_algo)} is not accepted "
                          "for data signatures")
        name = ref.cert.name
        return result(Verdict.GOOD, f"signed by {ref.key.algorithm_name} key "
                      f"{ref.key.fingerprint_hex}" + (f" ({name})" if name else ""))

    def check_all(self, packets: Iterable[bytes], signed_data: bytes, *,
                  now: float | None = None) -> Result:
        """The package verdict for several signature packets over the same
        bytes: :func:`combine` of :meth:`check_packet` of each."""
        return combine([self.check_packet(p, signed_data, now=now) for p in packets])


def _as_bytes(value: bytes | str) -> bytes:
    return bytes.fromhex(value) if isinstance(value, str) else value


def combine(results: Iterable[Result]) -> Result:
    """The package verdict from the verdicts of its header signatures:

    - no signature: UNSIGNED;
    - any BAD: BAD (a signature that does not match condemns the header);
    - else any GOOD: GOOD -- one trusted signer vouches for the bytes, and
      signatures from keys we do not hold (NOKEY) or cannot trust
      (NOTTRUSTED) take nothing away from it.  This is what lets a package
      signed during a key transition (say RSA and ML-DSA) install on
      machines that trust only one of the keys.  rpm 6's rpmvsVerify also
      counts NOKEY as a failure here; see docs/signature-policy.md;
    - else any NOKEY: NOKEY;
    - else NOTTRUSTED.

    Among several GOOD (or NOTTRUSTED) results, the one the strictest signature
    policy accepts decides (:attr:`Result.policy`): a package that a SHA-256-
    bound key signed too needs no legacy policy.

    Which signatures count is the caller's part, as in rpm 6: the
    RPMSIGTAG_OPENPGP tag when present, else RPMSIGTAG_RSA and RPMSIGTAG_DSA.
    """
    results = list(results)
    if not results:
        return Result(Verdict.UNSIGNED, "no header signature")
    for verdict in (Verdict.BAD, Verdict.GOOD, Verdict.NOKEY, Verdict.NOTTRUSTED):
        same = [r for r in results if r.verdict is verdict]
        if same:
            return min(same, key=lambda r: _POLICY_RANK.get(r.policy, len(_POLICY_RANK)))
    return results[0]
