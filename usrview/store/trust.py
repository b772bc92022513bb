"""The trust gate: may a package's header be used?  Decided here, once, for the
importer (before a package enters the store), the view's loader (before an
image is served) and verify (before a package's files are checked against it).

A header may be used when its signature verdict is GOOD -- which includes rpm's
import check (:attr:`verifier.header.Header.import_error`, see
:func:`verifier.sigcheck.check_package`) -- or when it is UNSIGNED, unsigned
headers are allowed (the importer's ``--allow-unsigned``; for a stored package,
its ``unsigned/PKGID`` marker), and it passes that same import check.  Verify
alone also uses a header only a looser signature policy than the keyring's
accepts (NOTTRUSTED under ``default``, GOOD under ``legacy``: keys bound by
SHA-1), reporting it, when it passes that import check too.  Nothing else: BAD,
NOKEY, other NOTTRUSTED and PARSE never.

A header file of the store (``stored=True``: the loader and verify) must moreover be
exactly the signed parts and what rpm derives from them
(:func:`verifier.headerfile.header_file_error`): no byte after the main header,
the lead rpm writes for that header.  Those bytes are served in
``/usr/lib/sysimage/packages/`` and no signature covers them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from verifier import policy as policies
from verifier.headerfile import header_file_error
from verifier.keyring import Verdict
from verifier.sigcheck import HeaderCheck


@dataclass(frozen=True)
class HeaderTrust:
    """The gate's answer for one header.

    Attributes:
        usable: whether the header, and so its file list, may be used.
        unsigned: whether the header is UNSIGNED (usable only where unsigned
            headers are allowed).
        reason: why it may not be used ("" when usable): the signature verdict's
            line (:meth:`verifier.sigcheck.HeaderCheck.format`), or for an
            UNSIGNED header that is allowed, ``PARSE (why rpm refuses to import
            it)`` -- what the verdict on a signed header with that fault reads.
            For a header used under a looser policy, the verdict's line.
        looser_policy: the name of the looser signature policy a usable header
            needs (None: the keyring's own accepts it).
    """

    usable: bool
    unsigned: bool
    reason: str = ""
    looser_policy: str | None = None


def header_trust(check: HeaderCheck, *, unsigned_allowed: bool,
                 looser_policy_allowed: bool = False, stored: bool = False) -> HeaderTrust:
    """Whether the header ``check`` judged may be used (see the module docstring).

    ``check``: :func:`verifier.sigcheck.check_file`'s or ``check_bytes``'s result
    (a lenient parse: this makes the import check an UNSIGNED verdict skips).
    ``unsigned_allowed``: whether an UNSIGNED header is acceptable here.
    ``looser_policy_allowed``: whether a header only a looser signature policy
    accepts is (verify: it reports it).
    ``stored``: ``check`` judged a whole header file of the store (see the module docstring).
    """
    trust = _verdict_trust(check, unsigned_allowed, looser_policy_allowed)
    if trust.usable and stored:
        form = header_file_error(check.package)
        if form is not None:
            return HeaderTrust(False, trust.unsigned, f"header file: {form}")
    return trust


def _verdict_trust(check: HeaderCheck, unsigned_allowed: bool, looser_policy_allowed: bool) -> HeaderTrust:
    verdict = check.verdict
    if verdict is Verdict.GOOD:
        return HeaderTrust(True, False)
    unsigned = verdict is Verdict.UNSIGNED
    looser = looser_policy_allowed and verdict is Verdict.NOTTRUSTED and check.policy is not None
    if not (unsigned and unsigned_allowed) and not looser:
        return HeaderTrust(False, unsigned, check.format())
    package = check.package
    import_error = package.signature.import_error or package.header.import_error
    if import_error:
        return HeaderTrust(False, unsigned, f"{Verdict.PARSE.value} ({import_error})")
    if looser:
        return HeaderTrust(True, False, check.format(), check.policy)
    return HeaderTrust(True, True)


def stored_policy_refusal(store, pkgids: Iterable[str], policy: policies.Policy) -> str | None:
    """Why stored packages may not be used under ``policy`` (None: they may): those
    the store records as accepted only by the legacy signature policy
    (``legacy/PKGID``), when ``policy`` is stricter.  For stored packages whose
    signatures are not checked again here (deploy of header-only rpms)."""
    legacy_ids = sorted(set(pkgids) & store.legacy_pkgids())
    if not legacy_ids or policies.covers(policy, policies.LEGACY.name):
        return None
    return (f"stored under the legacy signature policy: {', '.join(legacy_ids)} "
            f"({policies.LEGACY.opt_in} deploys them)")
