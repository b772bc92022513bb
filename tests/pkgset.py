"""A realistic set of 200+ signed rpms, made from the Debian packages installed here.

The benchmarks of issues 3, 4 and 5 all run over the same package set.  Nobody can
download one here, so this module packages the files of installed Debian packages:
one rpm per Debian package, named after it, holding the files ``dpkg -L`` lists --
regular files, symlinks and directories, /etc and /var included (real sets have
files outside /usr, which ``usrview lint`` must report) -- with their real modes,
owners, mtimes and hard links, SHA-256 file digests, a zstd payload, signed by a
generated RSA-3072 test key.

    .venv/bin/python tests/pkgset.py OUTDIR [--count 250] [--update-fraction 0.1]
                                            [--key-dir DIR] [--compress w3.zstdio]

writes

    OUTDIR/key/RPM-GPG-KEY-usrview-bench   the armored public key (trust it with --keys)
    OUTDIR/key/gnupg/                      the GNUPGHOME holding the secret key
    OUTDIR/set-v1/*.rpm                    COUNT packages
    OUTDIR/set-v2/*.rpm                    the same set, FRACTION of it updated
    OUTDIR/manifest.json                   what was packaged (see :class:`PackageSet`)

Selection is deterministic: the installed packages sorted by name, the first COUNT
that qualify (see :func:`eligible`).  A fresh machine of this kind has the same
packages installed and gets the same set; another machine gets a set made of its
own packages, which is fine for a benchmark.

Speed: rpmbuild builds one spec at a time, but a spec can hold many subpackages
(``%package -n NAME``), each with its own ``%files``: one rpmbuild run per batch of
:data:`BATCH` packages, two runs at a time.  The build root is made of hard links
to the live files (copies across filesystems), so staging costs almost nothing.

The update variant: ``--update-fraction 0.1`` rebuilds 10% of the packages
(chosen by a hash of their names, so spread over the set) with the release bumped
(``R`` -> ``R.1``, an upgrade by rpm's comparison) and one regular file changed
(bytes appended to a copy).  set-v2 holds hard links to the other 90% of set-v1's
rpm files, byte-identical, plus the updated ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import hashlib
import json
import math
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.rpmbuild import TOOL_TIMEOUT, GpgKey, make_gpg_key, sign_rpm, stop_gpg_agent

#: Public key file name inside the key directory.
PUBKEY_NAME = "RPM-GPG-KEY-usrview-bench"
#: Payload compressor.  w3: builds several times faster than Fedora's w19, and
#: zstd decompresses at the same speed whatever the level, which is what import measures.
DEFAULT_COMPRESS = "w3.zstdio"
#: Subpackages per spec, i.e. per rpmbuild run.
BATCH = 50
#: rpmbuild runs at a time.
JOBS = max(1, min(4, os.cpu_count() or 1))
#: Packages qualify with at least this many bytes of regular files under /usr ...
MIN_USR_BYTES = 64 * 1024
#: ... and at most this many bytes in all (keeps the set near 1-2 GB: no compilers'
#: 100 MB libraries, no 500 MB cloud SDKs).
MAX_BYTES = 24 * 1024 * 1024
#: Paths a %files line can name: printable UTF-8 without quotes, backslashes or braces
#: (glob characters are escaped by :func:`files_path`, '%' doubled).
SAFE_PATH = re.compile(r'^/[^"\\{}\x00-\x1f\x7f\udc80-\udcff]*$')
#: The same, with backslashes (see :func:`files_path`): for the relocated sets only,
#: so that the benchmark sets stay what they were.
SAFE_PATH_RELOCATED = re.compile(r'^/[^"{}\x00-\x1f\x7f\udc80-\udcff]*$')
#: Never packaged from the live system.
VIRTUAL_ROOTS = ("/proc/", "/sys/", "/dev/", "/run/", "/tmp/")
#: Bytes appended to the changed file of an updated package.
UPDATE_TAIL = b"\n# usrview-bench update\n"
DPKG_INFO = Path("/var/lib/dpkg/info")


@dataclass(frozen=True)
class Entry:
    """One packaged path, as found on the live system."""

    path: str
    kind: str  # "file", "dir", "symlink"
    mode: int  # permission bits (07777)
    user: str
    group: str
    size: int
    mtime: int
    target: str = ""
    #: Where the bytes come from when not from ``path`` itself: the live path of a
    #: relocated entry (/bin/bash for /usr/bin/bash), a compiled .pyc; "" for a %ghost.
    source: str = ""
    #: A %ghost entry (the alternatives links): listed, never installed by rpm.
    ghost: bool = False

    @property
    def live(self) -> str:
        return self.source or self.path

    def files_line(self) -> str:
        mode = "-" if self.kind == "symlink" else f"{self.mode:04o}"
        words = [f"%attr({mode},{self.user},{self.group})"]
        if self.kind == "dir":
            words.append("%dir")
        if self.ghost:
            words.append("%ghost")
        words.append(f'"{files_path(self.path)}"')
        return " ".join(words)


def files_path(path: str) -> str:
    """``path`` as a %files entry matching only itself: rpmbuild globs every entry
    (a backslash does not escape), so glob characters go in brackets; and expands
    macros, so '%' is doubled.  A backslash (systemd's escaped unit names, e.g.
    ``system-systemd\\x2dcryptsetup.slice``) cannot be written at all, in brackets or
    not: it becomes '?', and :func:`build_batch` checks that the pattern matches
    only the one staged file."""
    return (re.sub(r"[][*?]", lambda m: f"[{m.group()}]", path).replace("%", "%%")
            .replace("\\", "?"))


@dataclass
class DebPackage:
    """An installed Debian package and the rpm made from it."""

    deb_name: str
    deb_version: str
    name: str
    epoch: str
    version: str
    release: str
    entries: list[Entry]
    #: Relocated packages (:func:`usr_package`): the entries under /etc, which a
    #: machine on the view keeps in its own /etc, not in the image.
    etc: list[Entry] = field(default_factory=list)

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "file"]

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.files)

    @property
    def usr_bytes(self) -> int:
        return sum(e.size for e in self.files if e.path.startswith("/usr/"))

    def evr(self) -> str:
        return f"{self.epoch + ':' if self.epoch else ''}{self.version}-{self.release}"


@dataclass
class PackageSet:
    """What :func:`build_set` made (also written to OUTDIR/manifest.json)."""

    outdir: Path
    key: GpgKey
    v1: list[Path]
    v2: list[Path]
    #: name -> {"deb": ..., "evr": ..., "files": n, "symlinks": n, "dirs": n, "bytes": n,
    #:          "rpm": v1 file name, "update": {"rpm": v2 file name, "changed": path} | None}
    packages: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def v1_dir(self) -> Path:
        return self.outdir / "set-v1"

    @property
    def v2_dir(self) -> Path:
        return self.outdir / "set-v2"

    @property
    def pubkey(self) -> Path:
        return self.key.public_path


# --- Debian side -------------------------------------------------------------

def installed() -> list[tuple[str, str, str]]:
    """(package, architecture, version) of every installed Debian package, sorted."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n"],
        capture_output=True, text=True, check=True, timeout=TOOL_TIMEOUT).stdout
    pkgs = set()
    for line in out.splitlines():
        name, arch, version, status = line.split("\t")
        if status.strip() == "ii":
            pkgs.add((name, arch, version))
    return sorted(pkgs)


def _list_file(name: str, arch: str) -> Path | None:
    for candidate in (DPKG_INFO / f"{name}:{arch}.list", DPKG_INFO / f"{name}.list"):
        if candidate.exists():
            return candidate
    return None


def dpkg_paths(name: str, arch: str) -> list[str]:
    """The paths ``dpkg -L`` lists for a package (read from dpkg's database directly:
    250 dpkg runs cost seconds), without "/."."""
    path = _list_file(name, arch)
    if path is None:
        return []
    lines = path.read_bytes().decode("utf-8", "surrogateescape").splitlines()
    return [p for p in lines if p and p != "/."]


def _sanitise(text: str, allowed: str = r"A-Za-z0-9._+~^") -> str:
    return re.sub(f"[^{allowed}]", "_", text)


def rpm_name(deb_name: str) -> str:
    return _sanitise(deb_name, r"A-Za-z0-9._+-")


def rpm_evr(deb_version: str) -> tuple[str, str, str]:
    """Debian ``[epoch:]upstream[-revision]`` -> rpm (epoch, version, release): the
    revision becomes the release ("0" for native packages); characters rpm refuses
    in a version ('-', ':' ...) become '_'."""
    epoch, _, rest = deb_version.rpartition(":") if ":" in deb_version else ("", "", deb_version)
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, "0"
    return epoch, _sanitise(upstream), _sanitise(revision)


_USERS: dict[int, str | None] = {}
_GROUPS: dict[int, str | None] = {}


def _user(uid: int) -> str | None:
    if uid not in _USERS:
        try:
            _USERS[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USERS[uid] = None
    return _USERS[uid]


def _group(gid: int) -> str | None:
    if gid not in _GROUPS:
        try:
            _GROUPS[gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            _GROUPS[gid] = None
    return _GROUPS[gid]


def scan(name: str, arch: str, version: str, *, relocated: bool = False) -> tuple[DebPackage | None, str]:
    """Read a package's files from the live system; (None, why) when it cannot be
    packaged faithfully: a listed path missing, unreadable, not a regular file,
    directory or symlink, under /proc /sys /dev, named with characters rpm's %files
    parser would interpret, or owned by an id with no name.

    ``relocated``: only the paths that belong in a /usr image or in /etc (see
    :func:`usr_path`) are read, the rest (/var, /dev, /run ... directories) are left
    out; names with a backslash are accepted (see :func:`files_path`)."""
    paths = dpkg_paths(name, arch)
    if relocated:
        paths = [p for p in paths if usr_path(p).startswith(("/usr/", "/etc/")) or usr_path(p) in ("/usr", "/etc")]
    if not paths:
        return None, "no files"
    parents = {p.rsplit("/", 1)[0] for p in paths}
    safe = SAFE_PATH_RELOCATED if relocated else SAFE_PATH
    entries = []
    for path in paths:
        if not safe.match(path):
            return None, f"path rpm cannot list literally: {path!r}"
        if path.startswith(VIRTUAL_ROOTS) or path in {p.rstrip("/") for p in VIRTUAL_ROOTS}:
            return None, f"virtual filesystem path {path}"
        try:
            st = os.lstat(path)
            # Merged /usr: dpkg lists /bin, /lib ... as directories; they are
            # symlinks here.  Package what dpkg means, a directory.
            if stat.S_ISLNK(st.st_mode) and path in parents:
                st = os.stat(path)
        except OSError as e:
            return None, f"{path}: {e.strerror}"
        user, group = _user(st.st_uid), _group(st.st_gid)
        if user is None or group is None:
            return None, f"{path}: owner without a name"
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(path, "dir", mode, user, group, 0, int(st.st_mtime)))
        elif stat.S_ISLNK(st.st_mode):
            entries.append(Entry(path, "symlink", mode, user, group, 0, int(st.st_mtime),
                                 target=os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            if not os.access(path, os.R_OK):
                return None, f"{path}: unreadable"
            entries.append(Entry(path, "file", mode, user, group, st.st_size, int(st.st_mtime)))
        else:
            return None, f"{path}: special file"
    epoch, ver, rel = rpm_evr(version)
    return DebPackage(name, version, rpm_name(name), epoch, ver, rel, entries), ""


def eligible(pkg: DebPackage) -> bool:
    """Sizable /usr contents, not huge."""
    return pkg.usr_bytes >= MIN_USR_BYTES and pkg.bytes <= MAX_BYTES


def select(count: int, *, names: list[str] | None = None, verbose: bool = False,
           relocated: bool = False) -> list[DebPackage]:
    """The first ``count`` qualifying installed packages in name order (or the
    named ones, when ``names`` is given: each must be packageable)."""
    chosen: list[DebPackage] = []
    seen_names: set[str] = set()
    for name, arch, version in installed():
        if names is not None and name not in names:
            continue
        pkg, why = scan(name, arch, version, relocated=relocated)
        if pkg is None:
            if names is not None:
                raise ValueError(f"{name}: cannot be packaged: {why}")
            if verbose:
                print(f"  skip {name}: {why}", file=sys.stderr)
            continue
        if names is None and not eligible(pkg):
            continue
        if pkg.name in seen_names:  # two architectures of one package
            continue
        seen_names.add(pkg.name)
        chosen.append(pkg)
        if len(chosen) == count:
            break
    return chosen


# --- relocated sets: packages as Fedora ships them, everything in /usr ---------

#: Top-level directories that live in /usr on a merged-/usr system: Fedora packages
#: ship /usr/bin/bash where Debian's list says /bin/bash.
USR_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Where Debian keeps the alternatives (one file per name: mode, master link, slaves).
ALTERNATIVES_ADMIN = Path("/var/lib/dpkg/alternatives")
ALTERNATIVES_LINKS = Path("/etc/alternatives")
#: The Python that compiles the bytecode of the packaged modules: the one the
#: packages belong to (Debian's), not whatever runs this script.
DEBIAN_PYTHON = "/usr/bin/python3"
#: Modules Debian byte-compiles at install time (py3compile): the standard library
#: and dist-packages.
PYTHON_MODULE = re.compile(r"^/usr/lib/python3(\.\d+)?/.+\.py$")


def usr_path(path: str) -> str:
    """Where ``path`` is in a relocated package: /bin/ls -> /usr/bin/ls, /lib64/x ->
    /usr/lib64/x; other paths stay."""
    top, sep, rest = path[1:].partition("/")
    return f"/usr/{top}{sep}{rest}" if top in USR_MERGED else path


def dependency_closure(roots: list[str]) -> list[str]:
    """``roots`` and every installed package they need (Depends and Pre-Depends,
    the first installed choice of each alternative, virtual names resolved through
    Provides), sorted."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Pre-Depends}, ${Depends}\t${Provides}\n"],
        capture_output=True, text=True, check=True, timeout=TOOL_TIMEOUT).stdout
    depends: dict[str, str] = {}
    provided: dict[str, str] = {}
    for line in out.splitlines():
        name, status, deps, provides = line.split("\t")
        if status.strip() != "ii":
            continue
        depends[name] = deps
        for virtual in provides.split(","):
            provided.setdefault(virtual.strip().split(" ")[0], name)

    def needs(name: str) -> list[str]:
        found = []
        for clause in depends[name].split(","):
            for choice in clause.split("|"):
                choice = re.sub(r"\(.*?\)|\[.*?\]", "", choice).strip().split(":")[0]
                if choice in depends or choice in provided:
                    found.append(choice if choice in depends else provided[choice])
                    break
        return found

    missing = [r for r in roots if r not in depends]
    if missing:
        raise ValueError(f"not installed: {', '.join(missing)}")
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += needs(name)
    return sorted(seen)


@dataclass(frozen=True)
class Alternative:
    """One link ``update-alternatives`` manages (a master or a slave): ``link``
    (e.g. /usr/bin/awk) points at /etc/alternatives/``name``, which points at the
    selected ``target`` (/usr/bin/mawk)."""

    name: str
    link: str
    target: str


def alternatives() -> list[Alternative]:
    """The alternatives links of this machine with their current targets (the
    names ``update-alternatives --get-selections`` lists, masters and slaves; a
    slave the selected choice does not provide has no /etc/alternatives link and
    is left out)."""
    found = []
    if not ALTERNATIVES_ADMIN.is_dir():
        return found
    for admin in sorted(ALTERNATIVES_ADMIN.iterdir()):
        lines = admin.read_text(errors="surrogateescape").splitlines()
        if len(lines) < 2:
            continue
        pairs = [(admin.name, lines[1])]
        i = 2
        while i + 1 < len(lines) and lines[i]:
            pairs.append((lines[i], lines[i + 1]))
            i += 2
        for name, link in pairs:
            try:
                target = os.readlink(ALTERNATIVES_LINKS / name)
            except OSError:
                continue
            found.append(Alternative(name, link, target))
    return found


def _compile_bytecode(sources: list[tuple[str, str, str]]) -> None:
    """Compile (live source, install path, .pyc file) with Debian's Python, as its
    py3compile does at install time: timestamp-checked .pyc whose header matches the
    packaged source's mtime and size, tracebacks naming the install path.  Sources
    that do not compile (test data, Python 2 leftovers) are skipped, as there."""
    script = ("import json, py_compile, sys\n"
              "for src, dfile, cfile in json.load(sys.stdin):\n"
              "    try:\n"
              "        py_compile.compile(src, cfile, dfile, doraise=True)\n"
              "    except (py_compile.PyCompileError, SyntaxError, UnicodeDecodeError, ValueError):\n"
              "        pass\n")
    subprocess.run([DEBIAN_PYTHON, "-c", script], input=json.dumps(sources), text=True, check=True,
                   capture_output=True, timeout=TOOL_TIMEOUT)


def _cache_tag() -> str:
    return subprocess.run([DEBIAN_PYTHON, "-c", "import sys; print(sys.implementation.cache_tag)"],
                          capture_output=True, text=True, check=True, timeout=TOOL_TIMEOUT).stdout.strip()


def usr_packages(pkgs: list[DebPackage], pyc_dir: Path, alts: list[Alternative] | None = None,
                 log=print) -> list[DebPackage]:
    """The packages relocated as Fedora ships them: every path that Debian keeps in
    /bin, /sbin, /lib* moved into /usr (:func:`usr_path`); /etc entries set aside in
    ``etc`` (a machine on the view has its own /etc); paths elsewhere left out.
    Added: the ``__pycache__`` bytecode of each Python module (compiled into
    ``pyc_dir``), and each alternatives link as a %ghost symlink to
    /etc/alternatives/NAME in the package that ships the selected target."""
    tag = _cache_tag()
    out: list[DebPackage] = []
    compile_jobs: list[tuple[str, str, str]] = []
    for pkg in pkgs:
        entries: dict[str, Entry] = {}
        etc: list[Entry] = []
        for e in pkg.entries:
            if e.path[1:] in USR_MERGED and e.kind == "symlink":
                continue  # the merged-/usr alias itself (/lib -> usr/lib): the root disk's
            path = usr_path(e.path)
            moved = dataclasses.replace(e, path=path, source=e.path if path != e.path else "")
            if path == "/etc" or path.startswith("/etc/"):
                etc.append(moved)
            elif path.startswith("/usr/") and path not in entries:
                entries[path] = moved
            elif path in entries and e.kind != "dir" and entries[path].kind != e.kind:
                raise ValueError(f"{pkg.deb_name}: {e.path} and {entries[path].live} both become {path}")
        for e in list(entries.values()):
            if e.kind != "file" or not PYTHON_MODULE.match(e.path):
                continue
            head, _, base = e.path.rpartition("/")
            cache_dir = f"{head}/__pycache__"
            pyc = f"{cache_dir}/{base[:-3]}.{tag}.pyc"
            if pyc in entries:
                continue
            built = pyc_dir / pyc.lstrip("/")
            compile_jobs.append((e.live, e.path, str(built)))
            if cache_dir not in entries:
                entries[cache_dir] = Entry(cache_dir, "dir", 0o755, "root", "root", 0, e.mtime)
            entries[pyc] = Entry(pyc, "file", 0o644, "root", "root", -1, e.mtime, source=str(built))
        out.append(dataclasses.replace(pkg, entries=list(entries.values()), etc=etc))
    if compile_jobs:
        todo = [job for job in compile_jobs if not Path(job[2]).exists()]
        if todo:
            _compile_bytecode(todo)
        for pkg in out:
            kept = []
            for e in pkg.entries:
                if e.size == -1:  # a .pyc: its size is known once compiled
                    try:
                        st = os.stat(e.source)
                    except FileNotFoundError:
                        continue  # the source did not compile
                    os.utime(e.source, (e.mtime, e.mtime))
                    e = dataclasses.replace(e, size=st.st_size)
                kept.append(e)
            pkg.entries = kept
        dirs_used = {e.path.rpartition("/")[0] for p in out for e in p.entries if e.kind != "dir"}
        for pkg in out:  # no empty __pycache__ (every module of it failed to compile)
            pkg.entries = [e for e in pkg.entries
                           if not (e.kind == "dir" and e.path.endswith("/__pycache__") and e.path not in dirs_used)]
    owners = {e.path: (p, e) for p in out for e in p.entries if e.kind != "dir"}
    added = 0
    for alt in alternatives() if alts is None else alts:
        link, target = usr_path(alt.link), usr_path(alt.target)
        if target not in owners or not link.startswith("/usr/") or link in owners:
            continue
        owner, selected = owners[target]
        ghost = Entry(link, "symlink", 0o777, "root", "root", 0, selected.mtime,
                      target=f"/etc/alternatives/{alt.name}", ghost=True)
        owner.entries.append(ghost)
        owners[link] = (owner, ghost)
        added += 1
    log(f"pkgset: relocated {len(out)} packages into /usr: {len(compile_jobs)} .pyc, {added} alternatives links")
    return out


# --- building ------------------------------------------------------------------

def _link_or_copy(src: str, dest: Path) -> None:
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError:
        if os.path.islink(src):
            os.symlink(os.readlink(src), dest)
            os.utime(dest, ns=(os.lstat(src).st_atime_ns, os.lstat(src).st_mtime_ns), follow_symlinks=False)
        else:
            shutil.copy2(src, dest)


def _stage(root: Path, pkgs: list[DebPackage], changed: dict[str, str]) -> None:
    """Make the tree %install copies: hard links to the live files; for the paths
    in ``changed`` (updated packages) a modified copy instead."""
    dirs: dict[str, Entry] = {}
    for pkg in pkgs:
        for e in pkg.entries:
            dest = root / e.path.lstrip("/")
            if e.kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
                dirs[e.path] = e
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() or dest.is_symlink():
                continue  # a path two packages of the batch ship
            if e.path in changed.get(pkg.name, ()):
                shutil.copy2(e.live, dest)
                with open(dest, "ab") as f:
                    f.write(UPDATE_TAIL)
                os.utime(dest, (e.mtime + 86400, e.mtime + 86400))
            elif e.kind == "symlink" and (e.ghost or not os.path.islink(e.live)):
                # a %ghost link, or a live symlink standing in a merged-/usr alias
                os.symlink(e.target, dest)
                os.utime(dest, (e.mtime, e.mtime), follow_symlinks=False)
            else:
                _link_or_copy(e.live, dest)
    for path in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
        e = dirs[path]
        dest = root / path.lstrip("/")
        dest.chmod(e.mode)
        os.utime(dest, (e.mtime, e.mtime))


def _spec(batch: str, pkgs: list[DebPackage]) -> str:
    lines = [
        "%define debug_package %{nil}",
        "%define _unpackaged_files_terminate_build 0",
        f"Name: usrview-bench-{batch}",
        "Version: 1",
        "Release: 1",
        "Summary: usrview benchmark batch (not built itself)",
        "License: various",
        "AutoReqProv: no",
        "%description",
        "Batch of packages made from installed Debian packages.",
    ]
    for p in pkgs:
        lines += [
            f"%package -n {p.name}",
            *([f"Epoch: {p.epoch}"] if p.epoch else []),
            f"Version: {p.version}",
            f"Release: {p.release}",
            f"Summary: {p.deb_name} {p.deb_version}, repackaged from Debian for the usrview benchmark",
            "License: see /usr/share/doc",
            "AutoReqProv: no",
            f"%description -n {p.name}",
            f"Files of the Debian package {p.deb_name} {p.deb_version}.",
        ]
    lines += ["%install", "mkdir -p %{buildroot}", "cp -al %{_sourcedir}/root/. %{buildroot}/"]
    for p in pkgs:
        lines.append(f"%files -n {p.name}")
        lines += [e.files_line() for e in p.entries]
    return "\n".join(lines) + "\n"


def _run(cmd: list[str], **kw) -> None:
    r = subprocess.run(cmd, check=False, capture_output=True, stdin=subprocess.DEVNULL, timeout=3600, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... exited {r.returncode}\n"
                           f"{r.stderr.decode(errors='replace')[-4000:]}")


def build_batch(workdir: Path, batch: str, pkgs: list[DebPackage], *, compress: str,
                changed: dict[str, str] | None = None) -> dict[str, Path]:
    """One rpmbuild run: every package of ``pkgs`` as a subpackage.  Returns name -> rpm."""
    topdir = workdir / batch
    if topdir.exists():
        shutil.rmtree(topdir)
    (topdir / "SOURCES" / "root").mkdir(parents=True)
    (topdir / "tmp").mkdir()
    _stage(topdir / "SOURCES" / "root", pkgs, changed or {})
    for p in pkgs:  # a backslash became '?' in %files: it must match one file only
        for e in p.entries:
            if "\\" in e.path:
                pattern = files_path(e.path).replace("%%", "%")
                hits = list((topdir / "SOURCES" / "root").glob(pattern.lstrip("/")))
                if len(hits) != 1:
                    raise RuntimeError(f"{e.path}: the %files pattern {pattern} matches {len(hits)} staged files")
    spec = topdir / "batch.spec"
    spec.write_text(_spec(batch, pkgs))
    defines = {
        "_topdir": str(topdir),
        "_tmppath": str(topdir / "tmp"),
        "_binary_filedigest_algorithm": "8",
        "_binary_payload": compress,
        "__os_install_post": "%{nil}",
        "_build_id_links": "none",
        "_buildhost": "usrview.bench",
    }
    cmd = ["rpmbuild", "-bb", "--quiet"]
    for k, v in defines.items():
        cmd += ["--define", f"{k} {v}"]
    _run([*cmd, str(spec)], env={**os.environ, "LC_ALL": "C.UTF-8"})
    built = {}
    by_file = {p.name: p for p in pkgs}
    for rpm in (topdir / "RPMS").rglob("*.rpm"):
        name = rpm.name.rsplit("-", 2)[0]
        built[name] = rpm
    missing = set(by_file) - set(built)
    if missing:
        raise RuntimeError(f"rpmbuild made no rpm for {sorted(missing)}")
    shutil.rmtree(topdir / "SOURCES")
    shutil.rmtree(topdir / "BUILDROOT", ignore_errors=True)
    return built


def load_or_make_key(key_dir: Path) -> GpgKey:
    """The bench key in ``key_dir`` (``gnupg/`` + :data:`PUBKEY_NAME`), made if absent."""
    gnupghome = key_dir / "gnupg"
    pub = key_dir / PUBKEY_NAME
    if not gnupghome.exists():
        key_dir.mkdir(parents=True, exist_ok=True)
        key = make_gpg_key(key_dir, algo="rsa3072", uid="usrview bench <bench@usrview.invalid>")
        key.public_path.rename(pub)
        return GpgKey(key.gnupghome, key.fingerprint, pub)
    out = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], capture_output=True,
                         text=True, check=True, env={**os.environ, "GNUPGHOME": str(gnupghome)}).stdout
    fprs = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]
    if not fprs:
        raise RuntimeError(f"no secret key in {gnupghome}")
    if not pub.exists():
        pub.write_bytes(subprocess.run(["gpg", "--batch", "--armor", "--export", fprs[0]], capture_output=True,
                                       check=True, env={**os.environ, "GNUPGHOME": str(gnupghome)}).stdout)
    return GpgKey(gnupghome, fprs[0], pub)


def updated_names(names: list[str], fraction: float) -> list[str]:
    """The ``fraction`` of ``names`` to update: by hash of the name, so spread over the set."""
    k = math.ceil(len(names) * fraction) if fraction > 0 else 0
    return sorted(sorted(names, key=lambda n: hashlib.sha256(n.encode()).digest())[:k])


def changed_file(pkg: DebPackage) -> str:
    """The file an update changes: the smallest non-empty regular file under /usr
    (ties: first by name), else any regular file."""
    files = [e for e in pkg.files if e.size > 0] or pkg.files
    usr = [e for e in files if e.path.startswith("/usr/")] or files
    return min(usr, key=lambda e: (e.size, e.path)).path


def _batches(pkgs: list[DebPackage], size: int) -> list[list[DebPackage]]:
    return [pkgs[i:i + size] for i in range(0, len(pkgs), size)]


def build_set(outdir: Path, count: int = 250, *, update_fraction: float = 0.1, key_dir: Path | None = None,
              compress: str = DEFAULT_COMPRESS, names: list[str] | None = None, batch: int = BATCH,
              jobs: int = JOBS, relocate: bool = False, log=print) -> PackageSet:
    """Build the set into ``outdir`` (set-v1, set-v2, key, manifest.json); see the module doc.
    ``relocate``: packages as :func:`usr_packages` makes them (everything in /usr)."""
    t0 = time.monotonic()
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    key = load_or_make_key(Path(key_dir).resolve() if key_dir else outdir / "key")
    pkgs = select(count, names=names, relocated=relocate)
    if relocate:
        pkgs = usr_packages(pkgs, outdir / "pyc", log=log)
    if names is None and len(pkgs) < count:
        log(f"pkgset: only {len(pkgs)} installed packages qualify (asked for {count})")
    t_scan = time.monotonic() - t0
    log(f"pkgset: {len(pkgs)} packages, {sum(len(p.files) for p in pkgs)} files, "
        f"{sum(p.bytes for p in pkgs) / 1e6:.1f} MB (scan {t_scan:.1f} s)")

    v1_dir, v2_dir = outdir / "set-v1", outdir / "set-v2"
    for d in (v1_dir, v2_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
    update = set(updated_names([p.name for p in pkgs], update_fraction))
    upd_pkgs = [dataclasses.replace(p, release=p.release + ".1") for p in pkgs if p.name in update]
    changed = {p.name: changed_file(p) for p in upd_pkgs}

    with tempfile.TemporaryDirectory(prefix="pkgset-", dir=outdir) as work:
        work = Path(work)
        jobs_list = [(f"v1-{i:03d}", b, None) for i, b in enumerate(_batches(pkgs, batch))]
        jobs_list += [(f"v2-{i:03d}", b, changed) for i, b in enumerate(_batches(upd_pkgs, batch))]
        built: dict[str, dict[str, Path]] = {"v1": {}, "v2": {}}
        t1 = time.monotonic()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(build_batch, work, name, b, compress=compress, changed=ch): name
                       for name, b, ch in jobs_list}
            for fut, name in futures.items():
                built[name[:2]].update(fut.result())
        t_build = time.monotonic() - t1
        v1_by_name: dict[str, Path] = {}
        upd_by_name: dict[str, Path] = {}
        for which, into, d in (("v1", v1_by_name, v1_dir), ("v2", upd_by_name, v2_dir)):
            for name, rpm in sorted(built[which].items()):
                into[name] = d / rpm.name
                shutil.move(rpm, into[name])
        v1 = [v1_by_name[n] for n in sorted(v1_by_name)]
        upd_rpms = [upd_by_name[n] for n in sorted(upd_by_name)]
        t2 = time.monotonic()
        try:
            to_sign = v1 + upd_rpms
            sign_rpm(to_sign[0], key, *to_sign[1:])
        finally:
            stop_gpg_agent(key)
        t_sign = time.monotonic() - t2

    v2 = []
    for name in sorted(v1_by_name):
        if name in upd_by_name:
            v2.append(upd_by_name[name])
        else:
            dest = v2_dir / v1_by_name[name].name
            try:
                os.link(v1_by_name[name], dest)
            except OSError:
                shutil.copy2(v1_by_name[name], dest)
            v2.append(dest)

    result = PackageSet(outdir, key, v1, sorted(v2))
    for p in pkgs:
        up = next((u for u in upd_pkgs if u.name == p.name), None)
        result.packages[p.name] = {
            "deb": p.deb_name, "deb_version": p.deb_version, "evr": p.evr(),
            "files": len(p.files), "symlinks": sum(e.kind == "symlink" for e in p.entries),
            "dirs": sum(e.kind == "dir" for e in p.entries), "bytes": p.bytes,
            "outside_usr": sum(not e.path.startswith("/usr/") and e.kind != "dir" for e in p.entries),
            "etc": [e.path for e in p.etc],
            "ghosts": {e.path: e.target for e in p.entries if e.ghost},
            "rpm": v1_by_name[p.name].name,
            "update": None if up is None else {"evr": up.evr(), "rpm": upd_by_name[p.name].name,
                                               "changed": changed[p.name]},
        }
    result.seconds = time.monotonic() - t0
    (outdir / "manifest.json").write_text(json.dumps({
        "count": len(pkgs), "compress": compress, "update_fraction": update_fraction, "relocated": relocate,
        "key": str(key.public_path), "fingerprint": key.fingerprint,
        "files": sum(len(p.files) for p in pkgs),
        "symlinks": sum(v["symlinks"] for v in result.packages.values()),
        "bytes": sum(p.bytes for p in pkgs),
        "seconds": {"scan": round(t_scan, 2), "build": round(t_build, 2), "sign": round(t_sign, 2),
                    "total": round(result.seconds, 2)},
        "packages": result.packages,
    }, indent=1, sort_keys=True) + "\n")
    rpm_bytes = sum(f.stat().st_size for f in v1)
    log(f"pkgset: set-v1 {len(v1)} rpms ({rpm_bytes / 1e6:.1f} MB), set-v2 {len(v2)} rpms "
        f"({len(upd_rpms)} updated); build {t_build:.1f} s, sign {t_sign:.1f} s, "
        f"total {result.seconds:.1f} s ({compress})")
    return result


def load(outdir: Path) -> dict:
    """The manifest of a set built earlier."""
    return json.loads((Path(outdir) / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--count", type=int, default=250, help="packages (default 250)")
    ap.add_argument("--update-fraction", type=float, default=0.1,
                    help="share of packages updated in set-v2 (default 0.1)")
    ap.add_argument("--key-dir", type=Path, help="reuse (or make) the signing key here (default OUTDIR/key)")
    ap.add_argument("--compress", default=DEFAULT_COMPRESS, help=f"rpm payload compressor (default {DEFAULT_COMPRESS})")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"subpackages per rpmbuild run (default {BATCH})")
    ap.add_argument("--jobs", type=int, default=JOBS, help=f"rpmbuild runs at a time (default {JOBS})")
    ap.add_argument("--package", action="append", dest="names", metavar="NAME",
                    help="package exactly these Debian packages (repeatable) instead of choosing")
    ap.add_argument("--closure", action="append", metavar="NAME",
                    help="package these Debian packages and every package they depend on (repeatable)")
    ap.add_argument("--relocate", action="store_true",
                    help="everything in /usr as Fedora ships it: /bin, /sbin, /lib* moved, /etc set aside, "
                         "Python bytecode and alternatives links (%%ghost) added")
    args = ap.parse_args(argv)
    if args.closure:
        args.names = sorted(set(args.names or []) | set(dependency_closure(args.closure)))
    if not 0 <= args.update_fraction <= 1:
        ap.error("--update-fraction must be within 0..1")
    build_set(args.outdir, args.count, update_fraction=args.update_fraction, key_dir=args.key_dir,
              compress=args.compress, names=args.names, batch=args.batch, jobs=args.jobs,
              relocate=args.relocate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
