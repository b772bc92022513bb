"""The external conformance corpus (../shared/conformance), and what of it the suite builds itself.

- The corpus: test data kept outside the repository (see README.md, "The
  conformance corpus").  A test that reads it takes the ``conformance`` fixture
  (conftest.py), which skips the test where the corpus is absent; tests
  parametrized over its files get their parameters from :func:`corpus_params`.
  :func:`manifest` reads MANIFEST.tsv.
- Its ``selfbuilt/`` part -- one package of every shape (symlinks, a 3-way
  hardlink, set-id, capabilities, %config, %ghost, odd names ...) in six
  compressions and six file-digest algorithms -- is made by rpmbuild from
  :data:`SAMPLE_FILES` (after selfbuilt/usrview-sample.spec), so that a clone
  without the corpus tests those shapes too: :data:`SAMPLE_VARIANTS`.  Its
  ``selfbuilt/signed/`` part -- that package signed by rpmsign with several key
  types, a subkey, a key that expired after signing and a revoked key -- is
  :data:`SIGNED_SAMPLES` (the ``signed_samples`` fixture).
"""

from __future__ import annotations

import csv
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pytest

from tests import rpmbuild
from tests.prereq import conformance_path
from tests.rpmbuild import FileSpec, GpgKey, sign_rpm, stop_gpg_agent

# -- the external corpus -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One MANIFEST row: a file checked against some trusted keys."""

    file: str
    sha256: str
    case_id: str
    keys: tuple[str, ...]
    expected: str
    rpm418: str

    @property
    def is_package_case(self) -> bool:
        return self.expected not in ("key", "header-only rpm", "-")


def manifest(root: Path) -> list[Case]:
    rows = []
    with open(root / "MANIFEST.tsv", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for row in reader:
            if not row or row[0].startswith("#"):
                continue
            file, sha, _prov, case_id, keys, expected = row[:6]
            rpm418 = row[8] if len(row) > 8 else ""
            rows.append(Case(file, sha, case_id,
                             tuple(k for k in keys.split(",") if k and k != "-"),
                             expected, rpm418))
    return rows


def package_files(root: Path) -> list[str]:
    """Every rpm (full or header-only) the manifest lists, once."""
    seen = []
    for case in manifest(root):
        if case.expected == "key" or case.file in seen:
            continue
        if (root / case.file).is_file():
            seen.append(case.file)
    return seen


def corpus_params(values: Iterable, ids=None, *, argnames: int = 1) -> list:
    """Parameters read from the corpus when tests are collected.  Where the corpus
    is absent: one placeholder (id ``corpus-absent``, every argument None), so the
    test is still collected and skips through the ``conformance`` fixture -- with
    the corpus' reason, not pytest's "got empty parameter set"."""
    if conformance_path() is None:
        return [pytest.param(*([None] * argnames), id="corpus-absent")]
    return [pytest.param(*(v if argnames > 1 else (v,)), id=None if ids is None else ids(v))
            for v in values]


# -- the corpus' selfbuilt/ package, built here ------------------------------------

MiB = 1 << 20

#: The files of selfbuilt/usrview-sample.spec.
SAMPLE_FILES = [
    FileSpec("/usr/bin/hello", content=b"#!/bin/sh\necho hello\n", mode=0o755),
    FileSpec("/usr/bin/hello-link", kind="symlink", target="hello"),
    FileSpec("/usr/bin/abs-target-link", kind="symlink", target="../lib/usrview-sample/hard1"),
    FileSpec("/usr/bin/suidbin", content=b"suid\n", mode=0o4755),
    FileSpec("/usr/sbin/capbin", content=b"x", mode=0o755, directives="%caps(cap_net_raw=ep)"),
    FileSpec("/usr/lib/usrview-sample", kind="dir"),
    FileSpec("/usr/lib/usrview-sample/hard1", content=b"hardlinked content\n"),
    FileSpec("/usr/lib/usrview-sample/hard2", kind="hardlink", target="/usr/lib/usrview-sample/hard1"),
    FileSpec("/usr/share/usrview-sample", kind="dir"),
    FileSpec("/usr/share/usrview-sample/hard3", kind="hardlink", target="/usr/lib/usrview-sample/hard1"),
    FileSpec("/usr/share/usrview-sample/empty"),
    FileSpec("/usr/share/usrview-sample/with space.txt", content=b"space\n"),
    FileSpec("/usr/share/usrview-sample/ünïcödé.txt", content=b"unicode\n"),
    FileSpec("/usr/share/usrview-sample/nobody-file", content=b"owned by nobody\n", mode=0o640,
             user="nobody", group="nogroup"),
    FileSpec("/usr/share/usrview-sample/big.bin", content=b"A" * MiB),
    FileSpec("/usr/share/usrview-sample/subdir", kind="dir", mode=0o750),
    FileSpec("/usr/share/doc/usrview-sample/README", content=b"readme\n", directives="%doc"),
    FileSpec("/usr/share/licenses/usrview-sample/COPYING", content=b"MIT\n", directives="%license"),
    FileSpec("/etc/usrview.conf", content=b"key=value\n", directives="%config(noreplace)"),
    FileSpec("/var/log/usrview.log", directives="%ghost", staged=False),
]

#: Variant name -> rpm_packages options, as in selfbuilt/unsigned/: every payload
#: compression with SHA-256 file digests, every other file-digest algorithm with gzip.
SAMPLE_VARIANTS = {
    **{name: {"compress": c} for name, c in (("gzip", "w9.gzdio"), ("xz", "w6.xzdio"), ("zstd", "w19.zstdio"),
                                              ("bzip2", "w9.bzdio"), ("none", "w0.ufdio"), ("lzma", "w6.lzdio"))},
    **{f"fd{name}": {"digest_algo": algo}
       for name, algo in (("md5", 1), ("sha1", 2), ("sha224", 11), ("sha384", 9), ("sha512", 10))},
}


def build_sample(rpm_packages, variant: str, **kwargs) -> Path:
    """The sample package in ``variant`` (a key of SAMPLE_VARIANTS), built once per session."""
    return rpm_packages("usrview-sample", "1.0", f"1.{variant}", SAMPLE_FILES,
                        **SAMPLE_VARIANTS[variant], **kwargs)


# -- the corpus' selfbuilt/signed/, signed here --------------------------------------

@dataclass(frozen=True)
class SignedSample:
    """The sample package signed by rpmsign, and the public key that made the signature.

    Attributes:
        package: the signed package (SHA-256 file digests, gzip).
        public_key: the armored certificate to trust; for "revoked", with its revocation.
        check_at: the time to check the signature at (None: now).
    """

    package: Path
    public_key: Path
    check_at: float | None = None


#: How the signatures of selfbuilt/signed/ were made: name -> (gpg key algorithm,
#: signing subkey algorithm or None, gpg's digest-algo or None).
SIGNED_SAMPLES = {
    "rsa3072-sha256": ("rsa3072", None, None),
    "rsa3072-sha512": ("rsa3072", None, "SHA512"),
    "rsa3072-sha1": ("rsa3072", None, "SHA1"),
    "ed25519": ("ed25519", None, None),
    "dsa2048": ("dsa2048", None, None),
    "subkey-signed": ("ed25519", "rsa2048", None),
    "expired-key-signed-while-valid": ("ed25519", None, None),
    "revoked-key": ("ed25519", None, None),
}

#: The expired key's lifetime, and how long after signing its signature is checked.
EXPIRES_AFTER = "1d"
CHECKED_AFTER = 3 * 86400


def _gpg(home: Path, *args: str) -> str:
    return rpmbuild._run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
                          "--passphrase", "", *args])


def make_signing_key(home: Path, name: str) -> GpgKey:
    """A key made as SIGNED_SAMPLES says for ``name``, in a new GNUPGHOME under ``home``."""
    algo, subkey, digest = SIGNED_SAMPLES[name]
    gnupghome = home / "gnupg"
    gnupghome.mkdir(mode=0o700, parents=True)
    if digest:
        (gnupghome / "gpg.conf").write_text(f"digest-algo {digest}\n")
    uid = f"{name} <{name}@usrview.invalid>"
    expire = EXPIRES_AFTER if name == "expired-key-signed-while-valid" else "never"
    _gpg(gnupghome, "--quick-gen-key", uid, algo, "cert" if subkey else "sign", expire)
    colons = _gpg(gnupghome, "--with-colons", "--list-secret-keys")
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    if subkey:
        _gpg(gnupghome, "--quick-add-key", fpr, subkey, "sign", "never")
    return GpgKey(gnupghome, fpr, home / "key.asc")


def export_public_key(key: GpgKey, *, revoked: bool = False) -> Path:
    """Write ``key.public_path``; ``revoked``: after importing the revocation
    certificate gpg made with the key (reason 0, a hard revocation)."""
    if revoked:
        rev = key.gnupghome / "openpgp-revocs.d" / f"{key.fingerprint}.rev"
        defused = rev.read_text().replace(":-----BEGIN", "-----BEGIN")  # gpg defuses it with a colon
        (key.gnupghome / "revocation.asc").write_text(defused)
        _gpg(key.gnupghome, "--import", str(key.gnupghome / "revocation.asc"))
    key.public_path.write_text(_gpg(key.gnupghome, "--armor", "--export", key.fingerprint))
    return key.public_path


def make_signed_samples(workdir: Path, rpm_packages) -> dict[str, SignedSample]:
    """Every SIGNED_SAMPLES package: the unsigned sample copied and signed by rpmsign."""
    unsigned = build_sample(rpm_packages, "gzip", signed=False)
    samples = {}
    for name in SIGNED_SAMPLES:
        key = make_signing_key(workdir / name, name)
        try:
            package = workdir / name / f"{name}.rpm"
            shutil.copyfile(unsigned, package)
            sign_rpm(package, key)
        finally:
            stop_gpg_agent(key)
        check_at = time.time() + CHECKED_AFTER if name == "expired-key-signed-while-valid" else None
        samples[name] = SignedSample(package, export_public_key(key, revoked=name == "revoked-key"),
                                     check_at)
    return samples
