"""usrview's verifier: signed RPM headers in, a trusted file list out.

This package knows nothing of FUSE or the store.  It parses RPM headers from
bytes (:mod:`verifier.header`), reads OpenPGP certificates and signatures
(:mod:`verifier.openpgp`, :mod:`verifier.keyring`), decides whether a header is
signed by a trusted key (:mod:`verifier.sigcheck`) and compares files on disk
with their header entries the way ``rpm -V`` does (:mod:`verifier.filecheck`).
"""
