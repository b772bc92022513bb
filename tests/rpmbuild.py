"""Building, signing, querying and installing small RPM packages with rpm's own tools.

Tests use these packages as inputs nobody on this project wrote by hand: rpmbuild
writes the headers, rpmsign signs them, and ``rpm -qp --dump``, ``rpm -V`` and
``rpmkeys --checksig`` are the oracles our code is compared with.

A package is described by a list of :class:`FileSpec`.  :func:`build_rpm` stages
the files in a source tree (contents, symlinks, hardlinks, FIFOs, mtimes), writes
a spec whose ``%install`` copies that tree into the build root and whose
``%files`` list carries each file's directives (``%attr``, ``%config``,
``%ghost``, ``%caps`` ...), runs ``rpmbuild -bb`` and, given a key, ``rpmsign``.
Nothing touches the network; no debuginfo, no brp scripts, no automatic
dependencies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping

#: Modification time given to every staged file, so builds are repeatable.
STAGED_MTIME = 1_700_000_000

#: The payload compressors rpmbuild 4.18 knows (``_binary_payload``).
COMPRESSORS = ("w9.gzdio", "w6.xzdio", "w19.zstdio", "w9.bzdio", "w0.ufdio", "w6.lzdio")

#: Seconds any rpm or gpg run may take: rpm 4.18.0 hangs for ever installing a FIFO
#: (rpm issue 2195), and a test must fail rather than hang.
TOOL_TIMEOUT = 300

Kind = Literal["file", "dir", "symlink", "hardlink", "fifo", "device"]


@dataclass(frozen=True)
class FileSpec:
    """One entry of a package's ``%files`` list.

    Attributes:
        path: absolute install path; no glob characters, no tab or newline.
        kind: "file", "dir" (listed with ``%dir``), "symlink", "hardlink" (a hard
            link to the regular file ``target``, which must come earlier),
            "fifo" (rpm 4.18.0 hangs installing one: build only), or "device"
            (``%dev``: never staged).
        content: bytes of a regular file.
        target: symlink target, or for a hardlink the path it links to.
        mode: permission bits for ``%attr`` (07777 mask); None: "-", i.e. taken
            from the staged file (0644 files, 0755 directories).
        user, group: owner names for ``%attr``; need not exist anywhere.
        directives: further ``%files`` words: "%config(noreplace)", "%ghost",
            "%doc", "%license", "%caps(cap_net_raw=ep)", "%verify(not md5)" ...
        device: ("c" or "b", major, minor) for kind "device".
        staged: False leaves the file out of the build root (a %ghost that
            does not exist at build time).
        mtime: staged modification time.
    """

    path: str
    kind: Kind = "file"
    content: bytes = b""
    target: str = ""
    mode: int | None = None
    user: str = "root"
    group: str = "root"
    directives: str = ""
    device: tuple[str, int, int] | None = None
    staged: bool = True
    mtime: int = STAGED_MTIME

    def files_line(self) -> str:
        mode = "-" if self.mode is None else f"{self.mode:04o}"
        words = [f"%attr({mode},{self.user},{self.group})"]
        if self.kind == "dir":
            words.append("%dir")
        if self.kind == "device":
            assert self.device is not None, "a device needs device=(type, major, minor)"
            kind, major, minor = self.device
            words.append(f"%dev({kind},{major},{minor})")
        if self.directives:
            words.append(self.directives)
        words.append(f'"{self.path}"')
        return " ".join(words)


@dataclass(frozen=True)
class GpgKey:
    """A throwaway OpenPGP key made by gpg for signing test packages.

    Attributes:
        gnupghome: the GNUPGHOME holding the secret key.
        fingerprint: uppercase hex v4 fingerprint.
        keyid: the last 16 hex digits of the fingerprint.
        public_path: the armored public key (``gpg --armor --export``).
    """

    gnupghome: Path
    fingerprint: str
    public_path: Path

    @property
    def keyid(self) -> str:
        return self.fingerprint[-16:]


def _run(cmd: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a tool; on failure raise with its output, so a test says why."""
    r = subprocess.run(cmd, capture_output=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                       timeout=TOOL_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited {r.returncode}\n"
            f"stdout: {r.stdout.decode(errors='replace')}\nstderr: {r.stderr.decode(errors='replace')}")
    return r.stdout.decode("utf-8", "surrogateescape")


def make_gpg_key(home: Path, *, algo: str = "rsa3072", uid: str = "usrview test <test@usrview.invalid>",
                 cert_digest_algo: str | None = None) -> GpgKey:
    """Make a passphrase-less signing key in a new GNUPGHOME under ``home``
    (``cert_digest_algo``: the hash of its self-signature, e.g. SHA1)."""
    gnupghome = home / "gnupg"
    gnupghome.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "GNUPGHOME": str(gnupghome)}
    digest = ["--cert-digest-algo", cert_digest_algo] if cert_digest_algo else []
    _run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *digest,
          "--quick-gen-key", uid, algo, "sign", "never"], env=env)
    colons = _run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=env)
    fprs = [line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:")]
    public_path = home / "key.asc"
    public_path.write_text(_run(["gpg", "--batch", "--armor", "--export", fprs[0]], env=env))
    return GpgKey(gnupghome, fprs[0], public_path)


def stop_gpg_agent(key: GpgKey) -> None:
    """End the gpg-agent that signing started for ``key``'s GNUPGHOME."""
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(key.gnupghome)},
                   capture_output=True, stdin=subprocess.DEVNULL)


def _stage(root: Path, files: Iterable[FileSpec]) -> None:
    """Create the files in ``root`` (the tree %install copies into the build root)."""
    for spec in files:
        if not spec.staged or spec.kind == "device":
            continue
        dest = root / spec.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if spec.kind == "file":
            dest.write_bytes(spec.content)
            dest.chmod(0o644)
        elif spec.kind == "dir":
            dest.mkdir(exist_ok=True)
            dest.chmod(0o755)
        elif spec.kind == "symlink":
            os.symlink(spec.target, dest)
        elif spec.kind == "hardlink":
            os.link(root / spec.target.lstrip("/"), dest)
        elif spec.kind == "fifo":
            os.mkfifo(dest, 0o644)
        else:
            raise ValueError(f"unknown kind {spec.kind!r}")
    # mtimes last: creating entries changes their parents' mtimes.
    for spec in sorted(files, key=lambda s: s.path.count("/"), reverse=True):
        if spec.staged and spec.kind != "device":
            os.utime(root / spec.path.lstrip("/"), (spec.mtime, spec.mtime), follow_symlinks=False)


def _spec_text(name: str, version: str, release: str, files: Iterable[FileSpec], *, summary: str,
               scriptlets: Mapping[str, str] | None) -> str:
    lines = [
        "%define debug_package %{nil}",
        f"Name: {name}",
        f"Version: {version}",
        f"Release: {release}",
        f"Summary: {summary}",
        "License: MIT",
        "BuildArch: noarch",
        "AutoReqProv: no",
        "%description",
        f"{summary}.",
        "%install",
        "mkdir -p %{buildroot}",
        "cp -a %{_sourcedir}/root/. %{buildroot}/",
    ]
    for section, body in (scriptlets or {}).items():
        lines += [f"%{section}", body]
    lines.append("%files")
    lines += [spec.files_line() for spec in files]
    return "\n".join(lines) + "\n"


def build_rpm(workdir: Path, name: str, version: str = "1.0", release: str = "1",
              files: Iterable[FileSpec] = (), *, summary: str | None = None, digest_algo: int = 8,
              compress: str = "w9.gzdio", sign_key: GpgKey | None = None,
              scriptlets: Mapping[str, str] | None = None) -> Path:
    """Build (and with ``sign_key``, sign) a noarch package; return its path.

    ``digest_algo`` is the file-digest algorithm (OpenPGP id: 1 MD5, 2 SHA-1,
    8 SHA-256, 9 SHA-384, 10 SHA-512, 11 SHA-224); ``compress`` the payload
    compressor (:data:`COMPRESSORS`); ``scriptlets`` maps a section name such
    as "post" or "pre" to its body.
    """
    files = list(files)
    topdir = Path(workdir) / f"build-{name}-{version}-{release}"
    if topdir.exists():
        shutil.rmtree(topdir)
    (topdir / "SOURCES").mkdir(parents=True)
    _stage(topdir / "SOURCES" / "root", files)
    spec = topdir / f"{name}.spec"
    spec.write_text(_spec_text(name, version, release, files, summary=summary or f"Test package {name}",
                               scriptlets=scriptlets))
    defines = {
        "_topdir": str(topdir),
        "_tmppath": str(topdir / "tmp"),
        "_binary_filedigest_algorithm": str(digest_algo),
        "_binary_payload": compress,
        "__os_install_post": "%{nil}",
        "_build_id_links": "none",
        "_buildhost": "usrview.test",
        # a program (ELF) in a noarch test package: to run one from the view
        "_binaries_in_noarch_packages_terminate_build": "0",
    }
    cmd = ["rpmbuild", "-bb", "--quiet"]
    for key, value in defines.items():
        cmd += ["--define", f"{key} {value}"]
    (topdir / "tmp").mkdir()
    _run([*cmd, str(spec)], env={**os.environ, "LC_ALL": "C.UTF-8"})
    built = list((topdir / "RPMS").rglob("*.rpm"))
    assert len(built) == 1, built
    if sign_key is not None:
        sign_rpm(built[0], sign_key)
    return built[0]


def sign_rpm(path: Path, key: GpgKey, *more: Path, chunk: int = 64, digest_algo: str | None = None) -> None:
    """Add a header signature with ``rpmsign --addsign`` (in place), to one or
    more packages: one rpmsign process per ``chunk`` files (``digest_algo``: the
    signature's hash, e.g. sha1; default rpm's, sha256)."""
    env = {**os.environ, "GNUPGHOME": str(key.gnupghome)}
    paths = [path, *more]
    digest = ["--define", f"_gpg_digest_algo {digest_algo}"] if digest_algo else []
    for i in range(0, len(paths), chunk):
        _run(["rpmsign", "--addsign", *digest,
              "--define", "__gpg /usr/bin/gpg",
              "--define", f"_gpg_name {key.fingerprint}",
              "--define", f"_gpg_path {key.gnupghome}",
              *map(str, paths[i:i + chunk])], env=env)


class PackageCache:
    """Builds each distinct package once per test session.

    Attributes:
        workdir: where packages are built.
        key: the key that signs every package (None: unsigned).
    """

    def __init__(self, workdir: Path, key: GpgKey | None):
        self.workdir = workdir
        self.key = key
        self._built: dict[str, Path] = {}

    def __call__(self, name: str, version: str = "1.0", release: str = "1",
                 files: Iterable[FileSpec] = (), *, signed: bool = True, **kwargs) -> Path:
        files = list(files)
        sign_key = self.key if signed else None
        ident = repr((name, version, release, files, sorted(kwargs.items()),
                      sign_key.fingerprint if sign_key else None))
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        if digest not in self._built:
            self._built[digest] = build_rpm(self.workdir / digest, name, version, release, files,
                                            sign_key=sign_key, **kwargs)
        return self._built[digest]


# --- rpm -qp --dump ---------------------------------------------------------

@dataclass(frozen=True)
class DumpLine:
    """One line of ``rpm -qp --dump``: how rpm itself reads a file entry.

    Attributes: path, size, mtime, digest (hex; zeros when the file has none),
    mode (st_mode), user, group, is_config, is_doc, rdev, linkto ("" when "X").
    """

    path: str
    size: int
    mtime: int
    digest: str
    mode: int
    user: str
    group: str
    is_config: bool
    is_doc: bool
    rdev: int
    linkto: str


# path size mtime digest mode owner group isconfig isdoc rdev symlink; the path and the
# link target may hold spaces, the fields between them cannot.
_DUMP_RE = re.compile(
    r"^(?P<path>.+) (?P<size>\d+) (?P<mtime>\d+) (?P<digest>[0-9a-f]+|X) (?P<mode>0[0-7]+) "
    r"(?P<user>\S+) (?P<group>\S+) (?P<config>[01]) (?P<doc>[01]) (?P<rdev>\d+) (?P<linkto>.*)$")


def parse_dump(text: str) -> list[DumpLine]:
    lines = []
    for line in text.splitlines():
        m = _DUMP_RE.match(line)
        if m is None:
            raise ValueError(f"unexpected rpm --dump line: {line!r}")
        lines.append(DumpLine(
            path=m["path"], size=int(m["size"]), mtime=int(m["mtime"]), digest=m["digest"],
            mode=int(m["mode"], 8), user=m["user"], group=m["group"], is_config=m["config"] == "1",
            is_doc=m["doc"] == "1", rdev=int(m["rdev"]), linkto="" if m["linkto"] == "X" else m["linkto"]))
    return lines


def rpm_dump(pkg: Path) -> list[DumpLine]:
    """``rpm -qp --dump PKG``, parsed."""
    return parse_dump(_run(["rpm", "-qp", "--nosignature", "--nodigest", "--dump", str(pkg)]))


#: Every per-file tag FileEntry holds, tab-separated, one line per file.
_ENTRY_QF = "\\t".join(f"%{{{tag}}}" for tag in (
    "FILENAMES", "FILESIZES", "FILEMODES", "FILERDEVS", "FILEMTIMES", "FILEDIGESTS", "FILELINKTOS",
    "FILEFLAGS", "FILEUSERNAME", "FILEGROUPNAME", "FILEVERIFYFLAGS", "FILEDEVICES", "FILEINODES",
    "FILELANGS", "FILECAPS", "FILECOLORS"))


def rpm_file_entries(pkg: Path):
    """The package's file entries as rpm itself reads them (``rpm -qp --qf``), built
    independently of verifier.header; file names must not hold tabs or newlines."""
    from verifier.files import FileEntry, FileFlag, VerifyFlag

    out = _run(["rpm", "-qp", "--nosignature", "--nodigest", "--qf",
                f"%{{FILEDIGESTALGO}}\\n[{_ENTRY_QF}\\n]", str(pkg)])
    first, *lines = out.splitlines()
    algo = 1 if first == "(none)" else int(first)
    entries = []
    for line in lines:
        (path, size, mode, rdev, mtime, digest, linkto, flags, user, group, vflags, device, inode,
         lang, caps, color) = line.split("\t")
        caps = "" if caps == "(none)" else caps
        entries.append(FileEntry(
            path=path, size=int(size), mode=int(mode), rdev=int(rdev), mtime=int(mtime),
            digest=digest, digest_algo=algo, linkto=linkto, flags=FileFlag(int(flags)), user=user,
            group=group, verify_flags=VerifyFlag(int(vflags) & VerifyFlag.ALL), device=int(device),
            inode=int(inode), lang=lang, caps=caps, color=int(color)))
    return entries


# --- installing into a root -------------------------------------------------

#: rpm options for installing test packages into a scratch root: Debian's rpm keeps its
#: database in ~/.rpmdb unless told (FACTS.md), and no scriptlet may run.
RPM_ROOT_INSTALL_OPTS = ("-i", "--nodeps", "--noscripts", "--ignorearch", "--ignoreos", "--nosignature")


def rpm_root_cmd(root: Path) -> list[str]:
    return ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm"]


def rpm_root_install(root: Path, pkgs: Iterable[Path]) -> None:
    """Install packages into ``root`` as rpm would on a real system.

    /etc/passwd and /etc/group are copied in first: rpm resolves owner names inside
    the root, and without them every owner but root becomes root.
    """
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for name in ("passwd", "group"):
        if not (root / "etc" / name).exists():
            shutil.copy2(f"/etc/{name}", root / "etc" / name)
    _run([*rpm_root_cmd(root), *RPM_ROOT_INSTALL_OPTS, *map(str, pkgs)])


def rpm_verify(root: Path, name: str) -> tuple[int, list[str]]:
    """``rpm -V --nodeps --noscripts NAME`` in ``root``: exit status and output lines."""
    r = subprocess.run([*rpm_root_cmd(root), "-V", "--nodeps", "--noscripts", name],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=TOOL_TIMEOUT)
    if r.stderr.strip():
        raise RuntimeError(f"rpm -V {name} wrote to stderr: {r.stderr.decode(errors='replace')}")
    return r.returncode, r.stdout.decode("utf-8", "surrogateescape").splitlines()


def read_id_map(path: Path) -> dict[str, int]:
    """name -> id from an /etc/passwd or /etc/group style file."""
    ids = {}
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] not in ids and fields[2].isdigit():
            ids[fields[0]] = int(fields[2])
    return ids


def replace(spec: FileSpec, **changes) -> FileSpec:
    return dataclasses.replace(spec, **changes)


__all__ = [
    "COMPRESSORS", "DumpLine", "FileSpec", "GpgKey", "PackageCache", "STAGED_MTIME", "build_rpm",
    "make_gpg_key", "parse_dump", "read_id_map", "replace", "rpm_dump", "rpm_file_entries", "rpm_root_cmd",
    "rpm_root_install", "rpm_verify", "sign_rpm", "stop_gpg_agent",
]
