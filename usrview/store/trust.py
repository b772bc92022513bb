"""The trust gate: may a package's header be used?  Decided here, once, for the
importer (before a package enters the store), the view's loader (before an
image is served) and verify (before a package's files are checked against it).

A header may be used when its signature verdict is GOOD -- which includes rpm's
import check (:attr:`verifier.header.Header.import_error`, see
:func:`verifier.sigcheck.check_package`) -- or when it is UNSIGNED, unsigned
headers are allowed (the importer's ``--allow-unsigned``; for a stored package,
its ``unsigned/PKGID`` marker), and it passes that same import check.  Nothing
else: BAD, NOKEY, NOTTRUSTED and PARSE never.

A header file of the store (``stored=True``: the loader and verify) must moreover be
exactly the signed parts and what rpm derives from them
(:func:`verifier.headerfile.header_file_error`): no byte after the main header,
the lead rpm writes for that header.  Those bytes are served in
``/usr/lib/sysimage/packages/`` and no signature covers them.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    usable: bool
    unsigned: bool
    reason: str = ""


def header_trust(check: HeaderCheck, *, unsigned_allowed: bool, stored: bool = False) -> HeaderTrust:
    """Whether the header ``check`` judged may be used (see the module docstring).

    ``check``: :func:`verifier.sigcheck.check_file`'s or ``check_bytes``'s result
    (a lenient parse: this makes the import check an UNSIGNED verdict skips).
    ``unsigned_allowed``: whether an UNSIGNED header is acceptable here.
    ``stored``: ``check`` judged a whole header file of the store (see the module docstring).
    """
    trust = _verdict_trust(check, unsigned_allowed)
    if trust.usable and stored:
        form = header_file_error(check.package)
        if form is not None:
            return HeaderTrust(False, trust.unsigned, f"header file: {form}")
    return trust


def _verdict_trust(check: HeaderCheck, unsigned_allowed: bool) -> HeaderTrust:
    verdict = check.verdict
    if verdict is Verdict.GOOD:
        return HeaderTrust(True, False)
    unsigned = verdict is Verdict.UNSIGNED
    if not (unsigned and unsigned_allowed):
        return HeaderTrust(False, unsigned, check.format())
    package = check.package
    import_error = package.signature.import_error or package.header.import_error
    if import_error:
        return HeaderTrust(False, True, f"{Verdict.PARSE.value} ({import_error})")
    return HeaderTrust(True, True)
