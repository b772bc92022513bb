"""The benchmark package set generator (tests/pkgset.py), on three Debian packages.

The packages are signed by the bench key, and each holds what ``dpkg -L`` lists:
the same regular files and symlinks, with the live files' digests, modes, owners,
mtimes and link targets.  The update variant changes one file of one package.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest

from tests import pkgset
from tests.prereq import require_tools
from tests.rpmbuild import rpm_dump

#: Essential packages, installed on every Debian system; bash and coreutils ship
#: files through merged-/usr aliases (/bin/bash), tar ships /etc and /usr/sbin files.
NAMES = ["bash", "coreutils", "tar"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require_tools("rpmbuild", "rpmsign", "rpmkeys", "dpkg", "dpkg-query", "gpg", "gpgconf")
    out = tmp_path_factory.mktemp("pkgset")
    result = pkgset.build_set(out, update_fraction=0.3, names=NAMES, log=lambda *a: None)
    return result


def dpkg_listed(name: str) -> dict[str, os.stat_result]:
    """``dpkg -L NAME``: its regular files and symlinks, lstat'ed on the live system
    (a listed directory that is a merged-/usr symlink, like /bin, is a directory)."""
    out = subprocess.run(["dpkg", "-L", name], capture_output=True, text=True, check=True).stdout
    paths = [line for line in out.splitlines() if line.startswith("/") and line != "/."]
    parents = {p.rsplit("/", 1)[0] for p in paths}
    listed = {}
    for p in paths:
        st = os.lstat(p)
        if (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and p not in parents:
            listed[p] = st
    return listed


def test_set_layout(built):
    assert len(built.v1) == len(NAMES) and len(built.v2) == len(NAMES)
    assert built.pubkey.name == pkgset.PUBKEY_NAME and built.pubkey.read_text().startswith(
        "-----BEGIN PGP PUBLIC KEY BLOCK-----")
    man = pkgset.load(built.outdir)
    assert sorted(man["packages"]) == NAMES
    assert sum(1 for p in man["packages"].values() if p["update"]) == 1


def test_signed(built, tmp_path):
    db = tmp_path / "db"
    subprocess.run(["rpmkeys", "--dbpath", str(db), "--import", str(built.pubkey)], check=True)
    for rpm in {*built.v1, *built.v2}:
        r = subprocess.run(["rpmkeys", "--dbpath", str(db), "-Kv", str(rpm)], check=False,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"key ID {built.key.keyid[-8:].lower()}: OK" in r.stdout, r.stdout


@pytest.mark.parametrize("name", NAMES)
def test_files_equal_dpkg(built, name):
    rpm = built.v1_dir / pkgset.load(built.outdir)["packages"][name]["rpm"]
    q = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME} %{FILEDIGESTALGO} %{PAYLOADCOMPRESSOR}",
                        str(rpm)], capture_output=True, text=True, check=True).stdout
    assert q == f"{name} 8 zstd"
    entries = {d.path: d for d in rpm_dump(rpm)}
    listed = dpkg_listed(name)
    packaged = {p for p, d in entries.items() if stat.S_ISREG(d.mode) or stat.S_ISLNK(d.mode)}
    assert packaged == set(listed)
    for path, st in listed.items():
        d = entries[path]
        assert d.mode == st.st_mode, path
        assert d.mtime == int(st.st_mtime), path
        assert (d.user, d.group) == (pkgset._user(st.st_uid), pkgset._group(st.st_gid)), path
        if stat.S_ISLNK(st.st_mode):
            assert d.linkto == os.readlink(path), path
        else:
            assert d.size == st.st_size, path
            with open(path, "rb") as f:
                assert d.digest == hashlib.file_digest(f, "sha256").hexdigest(), path
    # Directories dpkg lists are owned by the package too.
    assert any(stat.S_ISDIR(d.mode) for d in entries.values())


def test_update_variant(built):
    man = pkgset.load(built.outdir)
    (name, info), = [(n, p) for n, p in man["packages"].items() if p["update"]]
    old, new = built.v1_dir / info["rpm"], built.v2_dir / info["update"]["rpm"]
    assert not (built.v2_dir / info["rpm"]).exists()
    assert info["update"]["evr"].endswith(".1") and info["update"]["evr"][:-2] == info["evr"]
    before, after = {d.path: d for d in rpm_dump(old)}, {d.path: d for d in rpm_dump(new)}
    assert before.keys() == after.keys()
    differ = [p for p in before if before[p] != after[p]]
    assert differ == [info["update"]["changed"]]
    assert after[differ[0]].size == before[differ[0]].size + len(pkgset.UPDATE_TAIL)
    # The unchanged packages are the very same rpm files.
    for other, p in man["packages"].items():
        if other != name:
            assert os.path.samefile(built.v1_dir / p["rpm"], built.v2_dir / p["rpm"]) or \
                (built.v1_dir / p["rpm"]).read_bytes() == (built.v2_dir / p["rpm"]).read_bytes()


# --- relocated sets (the boot tests' guest image) ----------------------------------

#: bash ships /bin/bash (moved into /usr) and /etc files; mawk is awk's selected
#: alternative on a Debian machine; libpython3.11-minimal ships modules whose
#: bytecode Debian makes at install time.
RELOCATED = ["bash", "mawk", "libpython3.11-minimal"]


@pytest.fixture(scope="module")
def relocated(tmp_path_factory):
    require_tools("rpmbuild", "rpmsign", "rpmkeys", "dpkg", "dpkg-query", "gpg", "gpgconf")
    out = tmp_path_factory.mktemp("pkgset-relocated")
    return pkgset.build_set(out, names=RELOCATED, update_fraction=0, relocate=True, log=lambda *a: None)


def test_relocated_everything_in_usr(relocated):
    man = pkgset.load(relocated.outdir)
    for name, info in man["packages"].items():
        paths = [d.path for d in rpm_dump(relocated.v1_dir / info["rpm"])]
        assert paths and all(p.startswith("/usr/") for p in paths), [p for p in paths if not p.startswith("/usr/")]
    bash = {d.path: d for d in rpm_dump(relocated.v1_dir / man["packages"]["bash"]["rpm"])}
    assert "/usr/bin/bash" in bash and bash["/usr/bin/bash"].size == os.stat("/bin/bash").st_size
    # /etc entries are set aside for the machine's /etc
    assert "/etc/bash.bashrc" in man["packages"]["bash"]["etc"]


def test_relocated_bytecode_as_debian_makes_it(relocated):
    import importlib.util
    man = pkgset.load(relocated.outdir)
    dump = {d.path: d for d in rpm_dump(relocated.v1_dir / man["packages"]["libpython3.11-minimal"]["rpm"])}
    sources = [p for p in dump if p.endswith(".py")]
    assert len(sources) > 100
    compiled = [p for p in sources if importlib.util.cache_from_source(p) in dump]
    assert len(compiled) > 0.95 * len(sources), set(sources) - set(compiled)
    # the .pyc header names the source's mtime and size, as the packaged .py has them
    import struct
    src = "/usr/lib/python3.11/os.py"
    pyc = importlib.util.cache_from_source(src)
    data = (relocated.outdir / "pyc" / pyc.lstrip("/")).read_bytes()
    flags, mtime, size = struct.unpack("<III", data[4:16])
    assert (flags, mtime, size) == (0, dump[src].mtime, dump[src].size)


def test_relocated_alternatives_as_ghost_links(relocated):
    selected = {a.name: a for a in pkgset.alternatives()}
    if os.path.realpath("/etc/alternatives/awk") != "/usr/bin/mawk":
        pytest.skip("awk is not mawk here")
    man = pkgset.load(relocated.outdir)
    rpm = relocated.v1_dir / man["packages"]["mawk"]["rpm"]
    dump = {d.path: d for d in rpm_dump(rpm)}
    assert dump[selected["awk"].link].linkto == "/etc/alternatives/awk"
    ghosts = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", str(rpm)],
                            capture_output=True, text=True, check=True).stdout
    assert f"{selected['awk'].link} g" in ghosts.splitlines(), ghosts
