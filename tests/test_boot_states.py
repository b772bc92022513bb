"""Boot: the kernel command line (a table), the boot plan (a table), and boot
counting end to end on real stores of real signed rpms -- deploy puts an image on
trial, each boot spends a try, boot-complete makes it good, a bad image falls back
to the last good one with an event, gc keeps the last good image, status and the
monitor report the fallback -- plus the %ghost alternatives links and the sealed
source lookups.  The real FUSE mount is tests/test_initrd_mount.py's."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.rpmbuild import FileSpec
from tests.test_mount import REPO
from usrview import config, images
from usrview.boot import cmdline, select
from usrview.boot.initrd import Console, boot_complete, choose_and_load
from usrview.cli._common import load_keyring
from usrview.errors import OperationalError
from usrview.faults import KILL_AT_ENV
from usrview.images import bootstate
from usrview.images.bootstate import BAD, GOOD, TRIAL, BootState, ImageBoot
from usrview.images.lint import lint
from usrview.journal import BOOT_FALLBACK_MESSAGE_ID, Journal
from usrview.store import Store
from usrview.verify import monitor
from verifier.header import read_package_file

# -- the command line -------------------------------------------------------------------

D = cmdline.DEFAULT_STORE

CMDLINES = [
    # text, store, image, verify, explicit, problems (substrings)
    ("", D, "current", "enforce", False, []),
    ("BOOT_IMAGE=/vmlinuz root=/dev/vda rw quiet", D, "current", "enforce", False, []),
    ("usrview.image=previous", D, "previous", "enforce", True, []),
    ("usrview.image=current", D, "current", "enforce", False, []),
    ("usrview.image=20240101-000000-abcdef01", D, "20240101-000000-abcdef01", "enforce", True, []),
    ("usrview.image=2024", D, "2024", "enforce", True, []),
    ("usrview.rollback", D, "previous", "enforce", True, []),
    ("usrview.rollback=1", D, "previous", "enforce", True, []),
    ("usrview.rollback=no", D, "current", "enforce", False, []),
    ("usrview.rollback=maybe", D, "current", "enforce", False, ["usrview.rollback=maybe: not yes or no"]),
    ("usrview.image=abc usrview.rollback", D, "previous", "enforce", True,
     ["usrview.rollback overrides usrview.image=abc"]),
    ("usrview.verify=warn", D, "current", "warn", False, []),
    ("usrview.verify=off", D, "current", "off", False, []),
    ("usrview.verify=bogus", D, "current", "enforce", False, ["usrview.verify=bogus: not one of"]),
    ("usrview.verify=warn usrview.verify=off", D, "current", "off", False, []),  # the last one counts
    ("usrview.store=/srv/usrview/", D.replace(D, "/srv/usrview"), "current", "enforce", False, []),
    ("usrview.store=//srv//x/../y", "/srv/y", "current", "enforce", False, []),
    ('usrview.store="/srv/my store"', "/srv/my store", "current", "enforce", False, []),
    ("usrview.store=relative", D, "current", "enforce", False, ["not an absolute path"]),
    ("usrview.store=", D, "current", "enforce", False, ["usrview.store=: no value"]),
    ("usrview.image=a/b", D, "current", "enforce", False, ["not an image id"]),
    ("usrview.image", D, "current", "enforce", False, ["usrview.image: no value"]),
    ("usrview.colour=blue", D, "current", "enforce", False, ["unknown word usrview.colour=blue"]),
    ("rd.usrview.image=previous xusrview.image=previous", D, "current", "enforce", False, []),
]


@pytest.mark.parametrize("text,store,image,verify,explicit,problems", CMDLINES)
def test_cmdline(text, store, image, verify, explicit, problems):
    p = cmdline.parse(text)
    assert (p.store, p.image, p.verify, p.explicit) == (store, image, verify, explicit)
    assert len(p.problems) == len(problems)
    for got, want in zip(p.problems, problems, strict=True):
        assert want in got


@pytest.mark.parametrize("text,kernel_cache,problem", [
    ("", "auto", None),  # at boot the kernel caches what pyfuse3 lets it (docs/boot.md)
    ("usrview.kernel_cache=off", "off", None),
    ("usrview.kernel_cache=off usrview.kernel_cache=auto", "auto", None),
    ("usrview.kernel_cache=always", "auto", "usrview.kernel_cache=always: not one of auto, off; kernel caching auto"),
])
def test_cmdline_kernel_cache(text, kernel_cache, problem):
    p = cmdline.parse(text)
    assert p.kernel_cache == kernel_cache
    assert list(p.problems) == ([problem] if problem else [])


@pytest.mark.parametrize("text,delay,problem", [
    ("", 30.0, None),  # at boot the full check waits until the busiest seconds are over (docs/boot.md)
    ("usrview.full_check_delay=0", 0.0, None),
    ("usrview.full_check_delay=2.5", 2.5, None),
    ("usrview.full_check_delay=0 usrview.full_check_delay=120", 120.0, None),
    ("usrview.full_check_delay=-1", 30.0, "usrview.full_check_delay=-1: not a number of seconds from 0 to 3600"),
    ("usrview.full_check_delay=nan", 30.0, "usrview.full_check_delay=nan: not a number of seconds"),
    ("usrview.full_check_delay=1e9", 30.0, "usrview.full_check_delay=1e9: not a number of seconds"),
    ("usrview.full_check_delay=soon", 30.0, "usrview.full_check_delay=soon: not a number of seconds"),
    ("usrview.full_check_delay", 30.0, "usrview.full_check_delay: no value; default kept"),
])
def test_cmdline_full_check_delay(text, delay, problem):
    p = cmdline.parse(text)
    assert p.full_check_delay == delay
    assert len(p.problems) == (1 if problem else 0) and (problem is None or p.problems[0].startswith(problem)), \
        p.problems


@pytest.mark.parametrize("text,profile,problem", [
    ("", False, None),  # a diagnostic: off unless asked for (docs/boot.md)
    ("usrview.profile", True, None),
    ("usrview.profile=1", True, None),
    ("usrview.profile=1 usrview.profile=0", False, None),
    ("usrview.profile=much", False, "usrview.profile=much: not yes or no; not profiled"),
    ("usrview.profile usrview.rollback=no", True, None),
])
def test_cmdline_profile(text, profile, problem):
    p = cmdline.parse(text)
    assert p.profile == profile and p.image == "current"
    assert list(p.problems) == ([problem] if problem else [])


def test_split_words_quotes():
    assert cmdline.split_words(' a="b c"  \'d e\'f\tg\n') == ["a=b c", "d ef", "g"]


# -- the plan ---------------------------------------------------------------------------

A, B, C = "20260101-000000-aaaaaaaa", "20260102-000000-bbbbbbbb", "20260103-000000-cccccccc"
NEWEST_FIRST = [C, B, A]


def _state(last_good=None, **entries) -> BootState:
    return BootState({i: e for i, e in entries.items()}, last_good)


def _plan(state, requested=C, explicit=False, not_found="", current=C, previous=B):
    requested_id = requested if requested in NEWEST_FIRST else None
    return select.plan(state, NEWEST_FIRST, requested=requested, requested_id=requested_id,
                       explicit=explicit, not_found=not_found, current=current, previous=previous)


def _cands(p):
    return [(c.image, c.spend_try, bool(c.reason)) for c in p.candidates]


def test_plan_good_current_is_served_without_spending():
    p = _plan(_state(A, **{A: ImageBoot(GOOD), C: ImageBoot(GOOD)}))
    assert _cands(p)[0] == (C, False, False) and p.mark_bad is None


def test_plan_trial_with_tries_spends_one():
    p = _plan(_state(A, **{A: ImageBoot(GOOD), B: ImageBoot(BAD), C: ImageBoot(TRIAL, 1)}))
    assert _cands(p) == [(C, True, False), (A, False, True), (B, False, True)]


def test_plan_trial_without_tries_is_marked_bad_and_falls_back_to_last_good():
    # B is good too, and newer, but A was marked good last: A first.
    state = _state(A, **{A: ImageBoot(GOOD), B: ImageBoot(GOOD), C: ImageBoot(TRIAL, 0)})
    p = _plan(state)
    assert p.mark_bad[0] == C
    assert _cands(p) == [(A, False, True), (B, False, True), (C, False, True)]
    assert "no tries left" in p.candidates[0].reason


def test_plan_bad_image_falls_back_with_its_reason():
    p = _plan(_state(None, **{C: ImageBoot(BAD, why="it failed")}))
    # images the file does not name are good (recorded before boot states existed)
    assert _cands(p)[:2] == [(B, False, True), (A, False, True)]
    assert p.candidates[0].reason == f"image {C} is bad: it failed"


def test_plan_by_hand_overrules_counting():
    p = _plan(_state(None, **{B: ImageBoot(BAD), C: ImageBoot(GOOD)}), requested=B, explicit=True)
    assert _cands(p)[0] == (B, False, False)


def test_plan_unknown_image_falls_back():
    p = _plan(_state(C, **{C: ImageBoot(GOOD)}), requested="nope", not_found="no image 'nope'")
    assert p.requested == "nope" and _cands(p)[0] == (C, False, True)
    assert p.candidates[0].reason == "no image 'nope'"


def test_plan_no_good_image_still_boots_something():
    # the very first image of a machine, out of tries: served as the last resort
    p = _plan(_state(None, **{C: ImageBoot(TRIAL, 0), B: ImageBoot(BAD), A: ImageBoot(BAD)}))
    assert _cands(p) == [(C, False, True), (B, False, True), (A, False, True)]
    assert p.candidates[0].reason.endswith("no good image could be served")


# -- the state file ---------------------------------------------------------------------

def test_state_round_trip_and_corrupt_file(tmp_path):
    store = Store.open(tmp_path / "store", create=True)
    assert bootstate.load(store) == BootState()
    state = BootState()
    state.put_on_trial(A, 2)
    state.mark_good(B)
    state.mark_bad(C, "why")
    state.record_boot(A, "boot-1", fallback=False)
    event = state.add_event("boot-1", C, A, "because")
    with store.lock():
        bootstate.save(store, state)
    again = bootstate.load(store)
    assert again.to_json() == state.to_json() and again.last_event == event and event.seq == 1
    data = json.loads(store.boot_state_path.read_text())
    assert data["images"][A] == {"state": "trial", "tries": 2, "since": state.images[A].since}
    assert data["last_good"] == B and data["format"] == 1
    store.boot_state_path.write_text("{not json")
    broken = bootstate.load(store)
    assert broken.images == {} and "corrupt" in broken.problem
    with pytest.raises(RuntimeError):
        bootstate.save(store, state)  # only under the store lock


def test_config_tries(tmp_path):
    path = tmp_path / "usrview.toml"
    path.write_text("tries = 5\n")
    assert config.load(path).tries == 5
    for bad in ("tries = 0", "tries = true", 'tries = "3"'):
        path.write_text(bad + "\n")
        with pytest.raises(Exception, match="'tries' must be"):
            config.load(path)


# -- boot counting on a real store --------------------------------------------------------


def _pkg(rpm_packages, version: str) -> Path:
    return rpm_packages("bootpkg", version, "1", [FileSpec("/usr/bin", kind="dir"),
                                                  FileSpec("/usr/bin/boot", content=f"v{version}\n".encode())])


@pytest.fixture
def machine(rpm_packages, gpg_key, tmp_path):
    """store, keyring, deploy(version) -> image id, boot(text) -> (served id, console lines)."""
    store = Store.open(tmp_path / "store", create=True)
    keyring = load_keyring([gpg_key.public_path])
    kmsg = tmp_path / "kmsg"
    kmsg.touch()

    def deploy(version: str, tries: int = 3) -> str:
        src = tmp_path / f"src-{version}"
        src.mkdir()
        shutil.copy(_pkg(rpm_packages, version), src)
        return images.deploy(store, src, keyring, tries=tries).image.id

    def boot(text: str = ""):
        console = Console(str(kmsg))
        with contextlib.ExitStack() as serving:
            chosen = choose_and_load(store, cmdline.parse(text), keyring, console, serving)
        console.close()
        return (chosen[0].id if chosen else None), console.lines

    return SimpleNamespace(store=store, deploy=deploy, boot=boot, keyring=keyring)


def test_boot_counting_and_fallback(machine, capsys):
    store, deploy, boot = machine.store, machine.deploy, machine.boot
    first = deploy("1")
    assert bootstate.load(store).of(first) == ImageBoot(TRIAL, 3, bootstate.load(store).of(first).since)
    # the very first image: its boot spends a try; boot-complete marks it good
    assert boot()[0] == first
    assert bootstate.load(store).of(first).tries == 2
    assert boot_complete(store) == (first, TRIAL)
    state = bootstate.load(store)
    assert state.of(first).state == GOOD and state.last_good == first

    second = deploy("2", tries=2)
    for left in (1, 0):
        served, lines = boot()
        assert served == second and bootstate.load(store).of(second).tries == left
        assert f"image {second} is on trial: {left} more boot(s)" in lines[0]
    # no boot-complete: the third boot falls back to the last good image
    served, lines = boot()
    assert served == first
    state = bootstate.load(store)
    assert state.of(second).state == BAD and state.boot.image == first and state.boot.fallback
    event = state.last_event
    assert (event.requested, event.booted) == (second, first) and "no tries left" in event.reason
    assert any(f"booting image {first} instead of {second}" in line for line in lines)
    # and again on every boot, until an administrator acts
    assert boot()[0] == first and len(bootstate.load(store).events) == 2
    assert boot_complete(store) == (first, GOOD)

    # the manual rollback word: previous (the bad one) by hand, no try spent
    served, _ = boot("usrview.rollback")
    assert served == first  # previous is the first image: current is `second`
    # a unique prefix (ids made in the same second share the time and maybe hex digits)
    prefix = second[:max(18, len(os.path.commonprefix([first, second])) + 1)]
    served, _ = boot(f"usrview.image={prefix}")
    assert served == second and bootstate.load(store).of(second).state == BAD
    assert not bootstate.load(store).boot.fallback
    # booted by hand and healthy: good again
    assert boot_complete(store) == (second, BAD)
    assert bootstate.load(store).of(second).state == GOOD

    # rollback by command re-tries an image that is not good; a good one stays good
    third = deploy("3")
    images.rollback(store, tries=4)
    assert images.pointer(store, images.CURRENT) == second
    assert bootstate.load(store).of(second).state == GOOD
    images.rollback(store, tries=4)
    assert images.pointer(store, images.CURRENT) == third
    assert bootstate.load(store).of(third).tries == 4


def test_status_shows_boot_states_and_the_last_fallback(machine):
    store, deploy, boot = machine.store, machine.deploy, machine.boot
    first = deploy("1")
    boot()
    boot_complete(store)
    second = deploy("2", tries=1)
    boot()
    boot()  # falls back
    st = images.status(store)
    by_id = {im["id"]: im for im in st["images"]}
    assert (by_id[first]["boot"], by_id[second]["boot"]) == ("good", "bad")
    assert st["last_good"] == first and st["booted"]["image"] == first
    assert st["last_fallback"]["requested"] == second
    env = {**os.environ, "USRVIEW_CONFIG": "/dev/null"}
    text = subprocess.run([sys.executable, "-m", "usrview.cli", "status", "--store", str(store.root)],
                          capture_output=True, text=True, cwd=REPO, env=env, check=True).stdout
    lines = text.splitlines()
    assert lines[0] == f"store {store.root}" and lines[1].startswith("  ID")
    assert lines[2].startswith(f"* {second}") and lines[2].endswith("current")  # unchanged
    assert lines[4] == "boot states"
    assert lines[5] == f"  {second:<24}  BAD"
    assert lines[6] == f"  {first:<24}  good (last good, this boot)"
    assert lines[7].startswith("last fallback: ") and f"booted {first} instead of {second}" in lines[7]


def test_gc_keeps_the_last_good_image_and_prunes_states(machine):
    store, deploy, boot = machine.store, machine.deploy, machine.boot
    first = deploy("1")
    boot()
    boot_complete(store)
    ids = [deploy(v) for v in ("2", "3", "4")]
    boot("usrview.image=" + ids[-1])  # this boot serves the newest
    result = images.gc(store, keep=0)
    # current (4), previous (3), the last good (1); 2 goes, with its state
    assert sorted(result.kept) == sorted([first, ids[1], ids[2]])
    assert result.deleted_images == [ids[0]]
    assert set(bootstate.load(store).images) == {first, ids[1], ids[2]}


def test_deploy_killed_before_current_leaves_the_new_image_on_trial_only(machine, rpm_packages,
                                                                         gpg_key, tmp_path):
    store, deploy, boot = machine.store, machine.deploy, machine.boot
    first = deploy("1")
    src = tmp_path / "src-kill"
    src.mkdir()
    shutil.copy(_pkg(rpm_packages, "2"), src)
    env = {**os.environ, "USRVIEW_CONFIG": "/dev/null", KILL_AT_ENV: "deploy-previous"}
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "deploy", "--store", str(store.root),
                        "--keys", str(gpg_key.public_path), str(src)], capture_output=True, cwd=REPO, env=env, check=False)
    assert r.returncode == -signal.SIGKILL
    assert images.pointer(store, images.CURRENT) == first
    new = [i for i in images.image_ids(store) if i != first]
    assert len(new) == 1 and bootstate.load(store).of(new[0]).state == TRIAL
    assert boot()[0] == first


def test_read_only_root_turns_counting_off_and_still_boots(machine, tmp_path):
    """The initrd may mount the root read-only: no counting, one console line, the
    image served and held in use all the same (deploy made its lock file)."""
    store, first = machine.store, machine.deploy("1")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(store.root), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        ro_store = Store.open(ro)
        console = Console(str(tmp_path / "kmsg"))
        with contextlib.ExitStack() as serving:
            chosen = choose_and_load(ro_store, cmdline.parse(""), machine.keyring, console, serving)
            assert chosen is not None and chosen[0].id == first
            assert images.image_in_use(store, first)
        assert any(line.startswith("boot counting is off for this boot") for line in console.lines)
        assert bootstate.load(store).of(first).tries == 3
        # the served tree (the compiled file's map, the headers' fd) went with ``serving``:
        # nothing of the boot holds the store, which unmounts
        subprocess.run(["umount", str(ro)], check=True)
        ro = None
    finally:
        if ro is not None:  # the bind mount never stays, whatever failed (ismount: same device)
            subprocess.run(["umount", "--lazy", str(ro)], check=True)


def test_boot_complete_refuses_another_boot(machine):
    store, deploy, boot = machine.store, machine.deploy, machine.boot
    deploy("1")
    with pytest.raises(OperationalError, match="records no boot"):
        boot_complete(store)
    boot()
    state = bootstate.load(store)
    state.boot.boot_id = "another-boot"
    with store.lock():
        bootstate.save(store, state)
    with pytest.raises(OperationalError, match="is not this one"):
        boot_complete(store)


def test_monitor_reports_a_fallback_once(machine):
    store, deploy, boot = machine.store, machine.deploy, machine.boot
    first = deploy("1")
    boot()
    boot_complete(store)
    deploy("2", tries=1)
    boot()
    boot()  # the fallback
    out = io.StringIO()
    journal = Journal(use_journal=False, stream=out)
    assert monitor.report_boot_events(store.root, journal) == 1
    assert "boot fallback: " in out.getvalue() and f"booted {first} instead of" in out.getvalue()
    assert monitor.report_boot_events(store.root, journal) == 0
    assert out.getvalue().count("boot fallback") == 1
    assert bootstate.load(store).reported == bootstate.load(store).last_event.seq
    assert BOOT_FALLBACK_MESSAGE_ID


# -- %ghost: the alternatives links -------------------------------------------------------------

ALT_FILES = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/ld.bfd", content=b"bfd\n", mode=0o755),
    FileSpec("/usr/bin/ld", kind="symlink", target="/etc/alternatives/ld", directives="%ghost"),
    FileSpec("/usr/bin/cc", kind="symlink", target="/etc/alternatives/cc", directives="%ghost", staged=False),
    FileSpec("/usr/bin/editor", content=b"", directives="%ghost"),
    FileSpec("/etc/alternatives/ld", kind="symlink", target="/usr/bin/ld.bfd", directives="%ghost"),
]


def test_ghost_symlinks_match_rpm_dump(rpm_packages):
    """rpmbuild records a target only for a %ghost symlink present in the build root."""
    from tests.rpmbuild import rpm_dump

    dump = {d.path: d for d in rpm_dump(rpm_packages("alt", files=ALT_FILES))}
    assert dump["/usr/bin/ld"].linkto == "/etc/alternatives/ld" and dump["/usr/bin/ld"].mode == 0o120777
    assert dump["/usr/bin/cc"].linkto == "" and dump["/usr/bin/cc"].mode == 0o100000
    assert dump["/usr/bin/editor"].mode == 0o100644
    entries = {e.path: e for e in read_package_file(rpm_packages("alt", files=ALT_FILES)).files}
    assert [p for p, e in entries.items() if e.is_ghost_symlink] == ["/etc/alternatives/ld", "/usr/bin/ld"]


def test_ghost_symlink_in_the_tree_lint_and_verify(rpm_packages, gpg_key, tmp_path):
    from usrview.view.loader import build_view

    rpm = rpm_packages("alt", files=ALT_FILES)
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(rpm, src)
    store = Store.open(tmp_path / "store", create=True)
    keyring = load_keyring([gpg_key.public_path])
    image = images.deploy(store, src, keyring).image
    tree = build_view(store, image, keyring)[1]
    bin_dir = tree.lookup(tree.nodes[1], "bin")
    ld = tree.lookup(bin_dir, "ld")
    assert ld.is_symlink and ld.relpath == "/etc/alternatives/ld"
    assert tree.lookup(bin_dir, "cc") is None and tree.lookup(bin_dir, "editor") is None
    # lint: no warning for the ghost link outside /usr, and two packages that
    # link one name differently conflict as the view would
    pkg = read_package_file(rpm)
    assert [f.kind for f in lint([pkg])] == []
    other = read_package_file(rpm_packages("alt2", files=[
        FileSpec("/usr/bin/ld", kind="symlink", target="/etc/alternatives/ld2", directives="%ghost")]))
    assert [f.kind for f in lint([pkg, other])] == ["conflict"]
    # verify: the ghost link is not in the store; it is not reported (rpm -V's %ghost rule)
    env = {**os.environ, "USRVIEW_CONFIG": "/dev/null"}
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "verify", "--store", str(store.root),
                        "--keys", str(gpg_key.public_path)], capture_output=True, text=True, cwd=REPO, env=env,
                       check=False)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr


# -- source lookups sealed -------------------------------------------------------------------

def test_sealed_source_lookups_open_nothing():
    """After seal_source_lookups, a logged traceback and a warning read no source file."""
    script = """
import logging, os, sys, warnings
from usrview.boot import rootdaemon
opened = []
logging.basicConfig(stream=sys.stderr)
rootdaemon.seal_source_lookups()
sys.addaudithook(lambda e, a: opened.append(a[0]) if e == "open" else None)
try:
    1 / 0
except ZeroDivisionError:
    logging.exception("boom")
warnings.warn("careful")
print(repr(opened))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/",
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert r.stdout.strip() == "[]", r.stdout
    assert "ZeroDivisionError" in r.stderr and "careful" in r.stderr
