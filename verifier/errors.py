"""The exceptions the verifier raises."""


class VerifierError(Exception):
    """Base class of every error the verifier raises on bad input."""


class HeaderError(VerifierError):
    """An RPM lead, signature header or main header is malformed or truncated."""


class PGPError(VerifierError):
    """An OpenPGP packet, certificate or signature is malformed or unsupported."""
