"""Images end to end: deploy, status, diff, rollback and gc through the CLI, checked on disk.

Each end-to-end test runs on a plain directory and on a real btrfs (``store_dir``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.btrfs_fixture import store_dir  # noqa: F401 - a fixture
from tests.rpmbuild import FileSpec
from usrview import images
from usrview.images.diff import _Info, diff_packages
from usrview.images.records import make_image_id
from usrview.images.vercmp import EVR
from usrview.store import Store, pkgid_for
from verifier.header import read_package_file

REPO = Path(__file__).resolve().parents[1]


def usrview(*args, check: int | None = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, USRVIEW_CONFIG="/dev/null", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "usrview.cli", *map(str, args)], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=300, check=False)
    if check is not None:
        assert r.returncode == check, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def tool(version: str, content: bytes | None = None) -> list[FileSpec]:
    return [FileSpec("/usr/bin/tool", content=content or f"tool {version}\n".encode(), mode=0o755),
            FileSpec("/usr/share/tool", "dir"),
            FileSpec("/usr/share/tool/README", content=b"same in every version\n")]


@pytest.fixture
def rpms(rpm_packages):
    """Named signed packages."""
    return {
        "tool1": rpm_packages("tool", "1.0", "1", tool("1.0")),
        "tool2": rpm_packages("tool", "2.0", "1", tool("2.0")),
        "lib": rpm_packages("libthing", "1.0", "1", [FileSpec("/usr/lib/libthing.so.1", content=b"lib\n")]),
        "extra": rpm_packages("extra", "1.0", "1", [FileSpec("/usr/bin/extra", content=b"extra\n"),
                                                    FileSpec("/etc/extra.conf", content=b"x\n")]),
        # ships /usr/bin/tool with other bytes than tool-1.0
        "clash": rpm_packages("clash", "1.0", "1", [FileSpec("/usr/bin/tool", content=b"clash\n", mode=0o755)]),
        "unsigned": rpm_packages("loose", "1.0", "1", [FileSpec("/usr/bin/loose", content=b"l\n")], signed=False),
    }


@pytest.fixture
def source(tmp_path, rpms):
    """``source("name", *keys)``: a fresh directory holding those rpms."""

    def make(name: str, *keys: str) -> Path:
        d = tmp_path / "sources" / name
        d.mkdir(parents=True)
        for key in keys:
            shutil.copy(rpms[key], d)
        return d

    return make


def pkgid(path: Path) -> str:
    return pkgid_for(read_package_file(path))


def current(store: Path) -> str | None:
    return _pointer(store / "current")


def previous(store: Path) -> str | None:
    return _pointer(store / "previous")


def _pointer(link: Path) -> str | None:
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    assert target.startswith("images/") and target.endswith(".json"), target
    assert (link.parent / target).is_file()
    return target[len("images/"):-len(".json")]


def records(store: Path) -> dict[str, dict]:
    return {p.name[:-5]: json.loads(p.read_text()) for p in (store / "images").glob("*.json")}


def stored(store: Path) -> set[str]:
    """Package ids on disk: headers and package trees must agree."""
    headers = {p.name[:-4] for p in (store / "headers").glob("*.rpm")}
    trees = {p.name for p in (store / "packages").iterdir()}
    assert headers == trees
    return headers


def test_deploy_status_diff_rollback(store_dir, source, rpms, gpg_key):  # noqa: F811
    store, keys = store_dir, gpg_key.public_path
    r = usrview("deploy", "--store", store, "--keys", keys, source("one", "tool1", "lib"))
    assert "deployed image" in r.stdout and "previous: (none)" in r.stdout
    first = current(store)
    assert previous(store) is None
    rec = records(store)
    assert list(rec) == [first]
    want = sorted([pkgid(rpms["tool1"]), pkgid(rpms["lib"])])
    assert rec[first]["format"] == 1 and rec[first]["id"] == first
    assert rec[first]["packages"] == want and rec[first]["unsigned"] == []
    assert datetime.fromisoformat(rec[first]["created"]).tzinfo is not None
    assert stored(store) == set(want)
    assert (store / "packages" / pkgid(rpms["tool1"]) / "usr/bin/tool").read_bytes() == b"tool 1.0\n"

    # the same set again: nothing changes
    r = usrview("deploy", "--store", store, "--keys", keys, source("one-again", "tool1", "lib"))
    assert "current already" in r.stdout
    assert list(records(store)) == [first] and current(store) == first

    # an update: tool upgraded, extra added (with a file outside /usr: a warning)
    r = usrview("deploy", "--store", store, "--keys", keys, source("two", "tool2", "lib", "extra"))
    assert "warning: outside-usr: extra-1.0-1.noarch" in r.stderr
    second = current(store)
    assert second != first and previous(store) == first
    assert sorted(records(store)) == sorted([first, second])
    assert records(store)[second]["packages"] == sorted(
        [pkgid(rpms["tool2"]), pkgid(rpms["lib"]), pkgid(rpms["extra"])])

    st = json.loads(usrview("status", "--store", store, "--json").stdout)
    assert [(i["id"], i["packages"], i["current"], i["previous"]) for i in st["images"]] == [
        (second, 3, True, False), (first, 2, False, True)]
    text = usrview("status", "--store", store).stdout
    assert f"* {second}" in text and "current" in text and "previous" in text

    d = json.loads(usrview("diff", "--store", store, "--json", "previous", "current").stdout)
    assert d["upgraded"] == [{"name": "tool", "from": "tool-1.0-1.noarch", "to": "tool-2.0-1.noarch"}]
    assert d["added"] == [{"name": "extra", "from": None, "to": "extra-1.0-1.noarch"}]
    assert d["removed"] == d["downgraded"] == d["rebuilt"] == [] and d["unchanged"] == 1
    text = usrview("diff", "--store", store, second, first).stdout.splitlines()
    assert text == ["downgraded  tool 2.0-1 -> 1.0-1", "removed     extra-1.0-1.noarch"]

    # rollback swaps, a second one swaps back
    r = usrview("rollback", "--store", store)
    assert current(store) == first and previous(store) == second
    assert first in r.stdout
    usrview("rollback", "--store", store)
    assert current(store) == second and previous(store) == first
    assert sorted(records(store)) == sorted([first, second])


def test_rollback_without_previous_is_one_line(store_dir, source, gpg_key):  # noqa: F811
    usrview("deploy", "--store", store_dir, "--keys", gpg_key.public_path, source("one", "tool1"))
    r = usrview("rollback", "--store", store_dir, check=2)
    assert r.stderr == "usrview: error: no previous image to roll back to\n"


def test_conflict_refuses_and_leaves_everything(store_dir, source, rpms, gpg_key):  # noqa: F811
    store, keys = store_dir, gpg_key.public_path
    usrview("deploy", "--store", store, "--keys", keys, source("one", "tool1", "lib"))
    before = (current(store), previous(store), records(store), stored(store))
    r = usrview("deploy", "--store", store, "--keys", keys, source("bad", "tool1", "lib", "clash"), check=1)
    assert ("error: conflict: /usr/bin/tool: clash-1.0-1.noarch and tool-1.0-1.noarch differ"
            in r.stderr), r.stderr
    assert r.stderr.splitlines()[-1].startswith("usrview: error: deploy refused")
    # nothing recorded, nothing switched, and (lint runs first) nothing imported
    assert (current(store), previous(store), records(store), stored(store)) == before
    assert pkgid(rpms["clash"]) not in stored(store)

    usrview("deploy", "--store", store, "--keys", keys, source("versions", "tool1", "tool2"), check=1)
    assert (current(store), previous(store), records(store)) == before[:3]


def test_header_only_sources(store_dir, source, rpms, gpg_key, tmp_path):  # noqa: F811
    store, keys = store_dir, gpg_key.public_path
    usrview("deploy", "--store", store, "--keys", keys, source("one", "tool1", "lib"))
    first = current(store)
    # header-only rpms of stored packages are enough
    headers = tmp_path / "headers"
    headers.mkdir()
    for key in ("tool1", "lib"):
        shutil.copy(store / "headers" / f"{pkgid(rpms[key])}.rpm", headers)
    r = usrview("deploy", "--store", store, "--keys", keys, headers)
    assert "current already" in r.stdout and current(store) == first
    # a header-only rpm whose package is not stored: a clear error, nothing changes
    extra_header = tmp_path / "extra-header"
    extra_header.mkdir()
    (extra_header / "extra.rpm").write_bytes(read_package_file(rpms["extra"]).header_only())
    r = usrview("deploy", "--store", store, "--keys", keys, extra_header, check=2)
    assert "header-only rpm(s) whose package is not in the store: extra.rpm (extra-1.0-1.noarch)" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert current(store) == first and list(records(store)) == [first]


def test_unsigned_needs_the_opt_in_and_is_flagged(store_dir, source, rpms, gpg_key):  # noqa: F811
    store, keys = store_dir, gpg_key.public_path
    src = source("loose", "tool1", "unsigned")
    r = usrview("deploy", "--store", store, "--keys", keys, src, check=1)
    assert "UNSIGNED" in r.stderr and current(store) is None
    usrview("deploy", "--store", store, "--keys", keys, "--allow-unsigned", src)
    image = current(store)
    assert records(store)[image]["unsigned"] == [pkgid(rpms["unsigned"])]
    st = json.loads(usrview("status", "--store", store, "--json").stdout)
    assert st["images"][0]["unsigned"] == ["loose-1.0-1.noarch"]
    assert "UNSIGNED: loose-1.0-1.noarch" in usrview("status", "--store", store).stdout


def _deploy_series(store, keys, source, sets):
    ids = []
    for n, keys_ in enumerate(sets):
        usrview("deploy", "--store", store, "--keys", keys, source(f"s{n}", *keys_))
        ids.append(current(store))
    return ids


def test_gc(store_dir, source, rpms, gpg_key):  # noqa: F811
    store, keys = store_dir, gpg_key.public_path
    ids = _deploy_series(store, keys, source, [("tool1",), ("tool1", "lib"), ("tool2",), ("tool2", "extra")])
    assert len(set(ids)) == 4
    usrview("rollback", "--store", store)  # current: ids[2], previous: ids[3]
    usrview("import", "--store", store, "--keys", keys, rpms["clash"])  # imported, never deployed

    r = usrview("gc", "--store", store, "--keep", "3")
    assert sorted(records(store)) == sorted(ids[1:])
    assert f"deleted image {ids[0]}" in r.stdout
    # tool1 is still used by ids[1]; the never-deployed package goes
    assert stored(store) == {pkgid(rpms[k]) for k in ("tool1", "lib", "tool2", "extra")}

    r = usrview("gc", "--store", store, "--keep", "0")
    assert sorted(records(store)) == sorted([ids[2], ids[3]])  # current and previous only
    assert (current(store), previous(store)) == (ids[2], ids[3])
    assert stored(store) == {pkgid(rpms[k]) for k in ("tool2", "extra")}
    assert not (store / "packages" / pkgid(rpms["tool1"])).exists()
    assert not (store / "headers" / f"{pkgid(rpms['lib'])}.rpm").exists()

    usrview("gc", "--store", store)  # nothing left to do
    assert sorted(records(store)) == sorted([ids[2], ids[3]])


def test_gc_never_deletes_an_image_in_use(store_dir, source, rpms, gpg_key):  # noqa: F811
    store, keys = store_dir, gpg_key.public_path
    ids = _deploy_series(store, keys, source, [("tool1", "lib"), ("tool2",), ("tool2", "extra")])
    s = Store.open(store)
    assert not images.image_in_use(s, ids[0])
    with images.hold_image(s, ids[0]) as image:
        assert image.id == ids[0]
        assert images.image_in_use(s, ids[0])
        st = json.loads(usrview("status", "--store", store, "--json").stdout)
        assert [i["in_use"] for i in st["images"]] == [False, False, True]
        r = usrview("gc", "--store", store, "--keep", "0")
        assert f"kept image {ids[0]}: in use" in r.stdout
        assert sorted(records(store)) == sorted(ids)
        assert pkgid(rpms["tool1"]) in stored(store)
    assert not images.image_in_use(s, ids[0])
    usrview("gc", "--store", store, "--keep", "0")
    assert sorted(records(store)) == sorted(ids[1:])
    assert pkgid(rpms["tool1"]) not in stored(store)
    assert not list((store / "images").glob(f"{ids[0]}*"))  # record and lock file gone
    with pytest.raises(Exception, match="no image"), images.hold_image(s, ids[0]):
        pass


def test_lint_cli(source, tmp_path):
    r = usrview("lint", source("bad", "tool1", "clash", "extra"), check=1)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("error: conflict: /usr/bin/tool:")
    assert any(line.startswith("warning: outside-usr: extra-1.0-1.noarch") for line in lines)
    r = usrview("lint", "--json", source("ok", "tool2", "extra"), check=0)
    assert [json.loads(line)["kind"] for line in r.stdout.splitlines()] == ["outside-usr"]
    r = usrview("lint", tmp_path / "missing", check=2)
    assert r.stderr.startswith("usrview: error:") and len(r.stderr.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    r = usrview("lint", tmp_path / "empty", check=2)
    assert "no *.rpm files" in r.stderr


def test_status_and_diff_errors(tmp_path, store_dir, source, gpg_key):  # noqa: F811
    r = usrview("status", "--store", tmp_path / "nostore", check=2)
    assert "no store" in r.stderr
    usrview("deploy", "--store", store_dir, "--keys", gpg_key.public_path, source("one", "tool1"))
    r = usrview("diff", "--store", store_dir, "current", "previous", check=2)
    assert r.stderr == f"usrview: error: the store {store_dir} has no previous image\n"
    cur = current(store_dir)
    r = usrview("diff", "--store", store_dir, cur[:12], "current")
    assert r.stdout == ""


# -- pure pieces ------------------------------------------------------------------------

def _i(name, evr, arch="noarch", sha="a"):
    e = EVR(None, *evr.split("-"))
    return _Info(f"{name}-{evr}.{arch}-x", name, arch, f"{name}-{evr}.{arch}", e, sha)


def test_diff_packages():
    a = [_i("same", "1-1"), _i("up", "1.0~rc1-1"), _i("down", "2-1"), _i("gone", "1-1"),
         _i("re", "1-1", sha="a"), _i("multi", "1-1", "i686"), _i("multi", "1-1", "x86_64")]
    b = [_i("same", "1-1"), _i("up", "1.0-1"), _i("down", "1.10-1"), _i("new", "1-1"),
         _i("re", "1-1", sha="b"), _i("multi", "2-1", "x86_64")]
    d = diff_packages(a, b)
    assert [c.name for c in d.upgraded] == ["multi", "up"]
    assert [c.name for c in d.downgraded] == ["down"]
    assert [c.new for c in d.added] == ["new-1-1.noarch"]
    assert [c.old for c in d.removed] == ["gone-1-1.noarch", "multi-1-1.i686"]
    assert [c.name for c in d.rebuilt] == ["re"]
    assert d.unchanged == 1


def test_image_ids():
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    a = make_image_id(["b-1-1.noarch-1", "a-1-1.noarch-2"], when)
    assert a == make_image_id(["a-1-1.noarch-2", "b-1-1.noarch-1"], when)  # a set
    assert a.startswith("20240506-070809-") and images.ID_RE.match(a)
    assert a != make_image_id(["a-1-1.noarch-2"], when)
    assert a < make_image_id(["a-1-1.noarch-2"], datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC))


# -- crash safety ----------------------------------------------------------------------

def usrview_killed(*args, env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, USRVIEW_CONFIG="/dev/null", PYTHONPATH=str(REPO), **env_extra)
    return subprocess.run([sys.executable, "-m", "usrview.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300, check=False)


@pytest.mark.parametrize("kill", [
    {"USRVIEW_TEST_KILL_AFTER_FILES": "2"},  # inside the import of tool-2.0
    {"USRVIEW_TEST_KILL_AT": "header"},  # tool-2.0 imported, nothing recorded
    {"USRVIEW_TEST_KILL_AT": "deploy-recorded"},
    {"USRVIEW_TEST_KILL_AT": "deploy-previous"},
], ids=lambda k: "-".join(k.values()))
def test_kill_during_deploy_keeps_the_old_image_current(store_dir, source, rpms, gpg_key, kill):  # noqa: F811
    store, keys = store_dir, gpg_key.public_path
    usrview("deploy", "--store", store, "--keys", keys, source("one", "tool1", "lib"))
    first = current(store)
    r = usrview_killed("deploy", "--store", store, "--keys", keys, source("two", "tool2", "lib"),
                       env_extra=kill)
    assert r.returncode == -9, r.stderr
    assert current(store) == first
    assert previous(store) in (None, first)
    st = json.loads(usrview("status", "--store", store, "--json").stdout)
    assert st["current"] == first
    # an interrupted deploy leaves at most one unreferenced record; a new deploy works
    assert len(records(store)) <= 2
    usrview("deploy", "--store", store, "--keys", keys, source("again", "tool2", "lib"))
    assert current(store) != first and previous(store) == first
    assert stored(store) == {pkgid(rpms[k]) for k in ("tool1", "tool2", "lib")}
    assert not list((store / "tmp").iterdir())


def test_kill_during_rollback(store_dir, source, gpg_key):  # noqa: F811
    store, keys = store_dir, gpg_key.public_path
    ids = _deploy_series(store, keys, source, [("tool1",), ("tool2",)])
    r = usrview_killed("rollback", "--store", store, env_extra={"USRVIEW_TEST_KILL_AT": "rollback-current"})
    assert r.returncode == -9
    assert current(store) == ids[0]  # the switch happened; previous still names it too
    assert previous(store) in (ids[0], ids[1])
