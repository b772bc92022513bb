"""The named signature policies: which hashes the signatures binding a key may use.

``default`` is rpm 6's with Sequoia's standard policy: MD5, SHA-1 and
RIPEMD-160 are refused everywhere.  ``legacy`` also accepts SHA-1 on the
self-signatures, subkey binding signatures and primary-key binding
(back-)signatures that bind a key, as the keys of older distributions (CentOS
3-7, EPEL 7, RHEL 8, ...) need.  Data signatures and key sizes are judged alike
under both: a data signature by SHA-1 or weaker, or a key under 2048 bits, is
never accepted.  docs/signature-policy.md, "Named policies", says where this
differs from the crypto-policies LEGACY policy rpm-sequoia follows, and why.

A :class:`Policy` is a parameter (of :class:`verifier.keyring.Keyring`), never
module state.
"""

from __future__ import annotations

from dataclasses import dataclass

#: OpenPGP hash algorithm ids (RFC 9580, 9.5).
MD5, SHA1, RIPEMD160 = 1, 2, 3
#: Hashes no policy accepts on data signatures (nor on anything but revocations,
#: unless a policy says otherwise for key bindings).
WEAK_HASHES = frozenset({MD5, SHA1, RIPEMD160})
#: The option that names a policy, for the lines that say how to opt in.
OPTION = "--signature-policy"


@dataclass(frozen=True)
class Policy:
    """A named signature policy.

    Attributes:
        name: as the configuration file and ``--signature-policy`` spell it.
        weak_binding_hashes: hashes that self-, binding and back-signatures may
            not use (such a signature does not bind anything).
    """

    name: str
    weak_binding_hashes: frozenset[int]

    @property
    def opt_in(self) -> str:
        """The words that choose this policy on the command line."""
        return f"{OPTION} {self.name}"


DEFAULT = Policy("default", WEAK_HASHES)
LEGACY = Policy("legacy", WEAK_HASHES - {SHA1})
#: The policies, strictest first: a package's policy is the first that accepts it.
POLICIES = (DEFAULT, LEGACY)
#: Binding hashes no policy accepts: such signatures are not even verified.
NEVER_FOR_BINDINGS = frozenset.intersection(*(p.weak_binding_hashes for p in POLICIES))


def by_name(name: str) -> Policy:
    """The policy called ``name``; ValueError naming the choices when there is none."""
    for policy in POLICIES:
        if policy.name == name:
            return policy
    raise ValueError(f"unknown signature policy {name!r} (choose {' or '.join(names())})")


def names() -> list[str]:
    return [p.name for p in POLICIES]


def covers(policy: Policy, needed: str) -> bool:
    """Whether ``policy`` accepts what the policy called ``needed`` accepts (it is
    that policy or a looser one)."""
    return POLICIES.index(policy) >= POLICIES.index(by_name(needed))
