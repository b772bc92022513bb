"""Images from a web server: publish, then pull through real servers.

nginx (Debian's) serves the repository on 127.0.0.1; a fault-injecting proxy of
our own (tests/remote_servers.py) sits in front of it where a test needs a
broken or hostile network.  Packages are real rpms signed with rpmsign, indexes
signed by gpg; pull runs as the CLI in a subprocess, as a user runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import rpmbuild
from tests.remote_servers import Rule, copy_repository, fault_proxy, make_tls_pair, nginx, port_of
from tests.rpmbuild import FileSpec
from tests.test_images import source as make_dir  # noqa: F401 - a fixture, with this module's rpms
from tests.test_images import usrview
from usrview.remote.index import index_path, latest_path, parse_index
from usrview.remote.publish import publish
from verifier.keyring import Keyring, Verdict
from verifier.sigcheck import check_detached

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def big(seed: int, size: int = 300_000) -> bytes:
    """Bytes that do not compress: the payload spans many reads."""
    out = bytearray()
    block = str(seed).encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


@pytest.fixture(scope="module")
def rpms(rpm_packages):
    return {
        "tool1": rpm_packages("rtool", "1.0", "1", [FileSpec("/usr/bin/rtool", content=big(1), mode=0o755)]),
        "tool2": rpm_packages("rtool", "2.0", "1", [FileSpec("/usr/bin/rtool", content=big(2), mode=0o755)]),
        "lib": rpm_packages("rlib", "1.0", "1", [FileSpec("/usr/lib/librlib.so.1", content=big(3))]),
        "data": rpm_packages("rdata", "1.0", "1", [FileSpec("/usr/share/rdata/a", content=b"a\n")]),
    }


@pytest.fixture(scope="module")
def other_key(tmp_path_factory):
    """A key nobody trusts."""
    key = rpmbuild.make_gpg_key(tmp_path_factory.mktemp("other-gpg"), uid="intruder <x@usrview.invalid>")
    yield key
    rpmbuild.stop_gpg_agent(key)


def do_publish(image_dir: Path, repo: Path, key, *more) -> subprocess.CompletedProcess:
    return usrview("publish", image_dir, repo, "--gpg-home", key.gnupghome, "--sign-with", key.fingerprint, *more)


def pull(store: Path, url: str, key, *more, check: int | None = 0) -> subprocess.CompletedProcess:
    return usrview("pull", "--store", store, "--keys", key.public_path, "--retries", "2", "--timeout", "5",
                   url, *more, check=check)


def snapshot(store: Path) -> tuple:
    """What a failure must leave unchanged: the packages, headers, images and pointers."""
    if not store.exists():
        return ()
    names = sorted(os.listdir(store / "headers")), sorted(os.listdir(store / "images"))
    links = tuple(os.readlink(store / p) if (store / p).is_symlink() else None for p in ("current", "previous"))
    return names, sorted(os.listdir(store / "packages")), links


def object_of(repo: Path, name: str, serial: int = 1):
    """The index entry of package ``name`` in image stable's index ``serial``."""
    index = parse_index((repo / index_path("stable", serial)).read_bytes())
    return next(e for e in index.packages if e.nevra.startswith(name + "-"))


@pytest.fixture
def origin(tmp_path, make_dir, gpg_key):
    """A repository with image ``stable`` (tool1, lib, data) served by nginx."""
    repo = tmp_path / "repo"
    do_publish(make_dir("v1", "tool1", "lib", "data"), repo, gpg_key)
    with nginx(tmp_path / "nginx", root=repo) as server:
        server.repo = repo
        yield server


# -- publish -----------------------------------------------------------------------------------

def test_publish_writes_content_addressed_objects_and_signed_indexes(tmp_path, make_dir, gpg_key, rpms):
    repo = tmp_path / "repo"
    r = do_publish(make_dir("v1", "tool1", "lib"), repo, gpg_key)
    assert "serial 1" in r.stdout and "2 new" in r.stdout
    r = do_publish(make_dir("v2", "tool2", "lib"), repo, gpg_key, "--valid-days", "3")
    assert "serial 2" in r.stdout and "1 new, 1 already there" in r.stdout, r.stdout
    do_publish(make_dir("t", "data"), repo, gpg_key, "--name", "testing")

    assert (repo / latest_path("stable")).read_text() == "2\n"
    keyring = Keyring.load(gpg_key.public_path)
    for serial in (1, 2):  # the history stays, each index verifiable
        data = (repo / index_path("stable", serial)).read_bytes()
        sig = (repo / (index_path("stable", serial) + ".sig")).read_bytes()
        assert check_detached(sig, data, keyring).verdict is Verdict.GOOD
        assert check_detached(sig, data + b" ", keyring).verdict is Verdict.BAD
    index = parse_index((repo / index_path("stable", 2)).read_bytes())
    assert index.serial == 2 and index.expires - index.issued == timedelta(days=3)
    assert [e.nevra.split("-")[0] for e in index.packages] == ["rlib", "rtool"]
    for e in index.packages:
        data = (repo / e.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e.rpm_sha256 and len(data) == e.size
        assert e.path.endswith(f"{e.rpm_sha256}.rpm")
    assert len(list((repo / "objects").rglob("*.rpm"))) == 4  # tool1, tool2, lib, data
    assert not list((repo / ".tmp").iterdir())
    assert check_detached((repo / (index_path("testing", 1) + ".sig")).read_bytes(),
                          (repo / index_path("testing", 1)).read_bytes(), Keyring()).verdict is Verdict.NOKEY


# -- pull, end to end ----------------------------------------------------------------------------

def test_pull_deploys_then_fetches_only_what_changed(tmp_path, origin, make_dir, gpg_key):
    store = tmp_path / "store"
    r = pull(store, origin.url, gpg_key, "--json")
    summary = json.loads(r.stdout)
    assert summary["serial"] == 1 and len(summary["fetched"]) == 3 and summary["already_stored"] == 0
    assert os.readlink(store / "current") == f"images/{summary['image']}.json"
    assert not list((store / "downloads").iterdir())  # imported, then removed
    assert json.loads((store / "remote.json").read_text())["accepted"] == {f"{origin.url}#stable": 1}

    again = json.loads(pull(store, origin.url, gpg_key, "--json").stdout)
    assert again["fetched"] == [] and again["already_current"]

    do_publish(make_dir("v2", "tool2", "lib", "data"), origin.repo, gpg_key)
    before = len(origin.requests())
    r = usrview("deploy", "--store", store, "--keys", gpg_key.public_path, origin.url)
    assert "1 fetched" in r.stdout and "deployed image" in r.stdout, r.stdout
    objects = [req for req in origin.requests()[before:] if "/objects/" in req[1]]
    assert {req[1] for req in objects} == {f"/{e.path}" for e in parse_index(
        (origin.repo / index_path("stable", 2)).read_bytes()).packages if e.nevra.startswith("rtool-2")}
    status = json.loads(usrview("status", "--store", store, "--json").stdout)
    assert status["previous"] == summary["image"]


def test_header_is_checked_before_any_payload_byte(tmp_path, make_dir, gpg_key, other_key, rpms):
    """A package re-signed by an untrusted key: refused after the header's Range request alone."""
    image = make_dir("resigned", "lib")
    resigned = tmp_path / "rdata-resigned.rpm"
    shutil.copy(rpms["data"], resigned)
    subprocess.run(["rpmsign", "--delsign", str(resigned)], check=True, capture_output=True)
    rpmbuild.sign_rpm(resigned, other_key)
    shutil.copy(resigned, image)
    repo = tmp_path / "repo"
    do_publish(image, repo, gpg_key)
    store = tmp_path / "store"
    with nginx(tmp_path / "nginx", root=repo) as server:
        r = pull(store, server.url, gpg_key, check=1)
        assert "rdata" in r.stderr and "signature check" in r.stderr and "NOKEY" in r.stderr, r.stderr
        entry = object_of(repo, "rdata")
        served = [req for req in server.requests() if req[1] == f"/{entry.path}"]
        assert served == [["GET", f"/{entry.path}", "206", str(entry.header_length),
                           f"bytes=0-{entry.header_length - 1}", "-"]]
    assert snapshot(store)[2] == (None, None)  # nothing deployed
    assert r.stderr.count("\n") == 1


# -- a hostile server ------------------------------------------------------------------------

def test_replayed_old_index_is_refused(tmp_path, origin, make_dir, gpg_key):
    store = tmp_path / "store"
    old = copy_repository(origin.repo, tmp_path / "old-repo")  # serial 1, kept by an attacker
    do_publish(make_dir("v2", "tool2", "lib", "data"), origin.repo, gpg_key)
    pull(store, origin.url, gpg_key)
    before = snapshot(store)
    shutil.rmtree(origin.repo)
    os.rename(old, origin.repo)  # the origin now serves the old index again
    r = pull(store, origin.url, gpg_key, check=1)
    assert "serial 1 is older than serial 2" in r.stderr and "replayed" in r.stderr
    assert snapshot(store) == before


def test_expired_index_is_refused(tmp_path, make_dir, gpg_key):
    repo = tmp_path / "repo"
    publish(make_dir("v1", "data"), repo, name="stable", sign_with=gpg_key.fingerprint,
            gpg_home=gpg_key.gnupghome, valid_days=1, now=datetime.now(UTC) - timedelta(days=2))
    with nginx(tmp_path / "nginx", root=repo) as server:
        r = pull(tmp_path / "store", server.url, gpg_key, check=1)
    assert "expired on" in r.stderr


def test_index_signed_by_an_untrusted_key_is_refused(tmp_path, make_dir, gpg_key, other_key):
    repo = tmp_path / "repo"
    do_publish(make_dir("v1", "data"), repo, other_key)
    with nginx(tmp_path / "nginx", root=repo) as server:
        r = pull(tmp_path / "store", server.url, gpg_key, check=1)
        assert "image index signature: NOKEY" in r.stderr
        assert not [req for req in server.requests() if "/objects/" in req[1]]


def test_index_tampered_after_signing_is_refused(tmp_path, origin, gpg_key):
    path = origin.repo / index_path("stable", 1)
    path.write_bytes(path.read_bytes().replace(b'"serial": 1', b'"serial": 9'))
    r = pull(tmp_path / "store", origin.url, gpg_key, check=1)
    assert "image index signature: BAD" in r.stderr


def test_payload_not_matching_its_header_is_refused(tmp_path, make_dir, gpg_key, rpms):
    """The publisher lists the bytes it has; the importer finds a file that is not the header's."""
    image = make_dir("bad", "lib")
    bad = image / "rtool-bad.rpm"
    data = bytearray(rpms["tool1"].read_bytes())
    data[-5000] ^= 0xFF  # inside the payload: the header (and its signature) untouched
    bad.write_bytes(bytes(data))
    repo = tmp_path / "repo"
    do_publish(image, repo, gpg_key)
    store = tmp_path / "store"
    with nginx(tmp_path / "nginx", root=repo) as server:
        r = pull(store, server.url, gpg_key, check=1)
    assert "rtool" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert snapshot(store)[2] == (None, None)
    assert not os.listdir(store / "packages") or all((store / "headers" / f"{p}.rpm").exists()
                                                   for p in os.listdir(store / "packages"))


def test_endless_body_is_cut_off(tmp_path, origin, gpg_key):
    store = tmp_path / "store"
    with fault_proxy(port_of(origin.url), [Rule("/objects/", "endless", 100)]) as proxy:
        r = pull(store, proxy.url, gpg_key, "--retries", "0", check=2)
    assert "not the package's header" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert snapshot(store)[2] == (None, None)
    # the right bytes and then more for ever, Range ignored: cut off where the index says
    with fault_proxy(port_of(origin.url), [Rule("/objects/", "overlong", 100)]) as proxy:
        assert json.loads(pull(store, proxy.url, gpg_key, "--json").stdout)["image"]


def test_redirect_to_file_is_refused(tmp_path, origin, gpg_key):
    with fault_proxy(port_of(origin.url), [Rule("/latest", "redirect_file")]) as proxy:
        r = pull(tmp_path / "store", proxy.url, gpg_key, check=2)
    assert "redirect to 'file:///etc/passwd' refused" in r.stderr
    assert r.stderr.count("\n") == 1


# -- a broken network ----------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["truncate", "error500", "reset"])
def test_transient_faults_are_retried_and_resumed(tmp_path, origin, gpg_key, fault):
    store = tmp_path / "store"
    with fault_proxy(port_of(origin.url), [Rule("/objects/", fault, 2)]) as proxy:
        r = pull(store, proxy.url, gpg_key, "--jobs", "1", "--json")
        assert json.loads(r.stdout)["image"]
    ranges = [rng for path, rng, f in proxy.seen if "/objects/" in path]
    if fault == "truncate":  # the retry asked only for the bytes not received
        resumed = [rng for rng in ranges if rng.startswith("bytes=") and not rng.startswith("bytes=0-")]
        assert resumed, proxy.seen


def test_interrupted_pull_leaves_the_store_and_resumes(tmp_path, origin, gpg_key):
    store = tmp_path / "store"
    tool = object_of(origin.repo, "rtool")
    with fault_proxy(port_of(origin.url), [Rule(tool.rpm_sha256, "stall", after=1)]) as proxy:
        r = pull(store, proxy.url, gpg_key, "--timeout", "1", "--retries", "0", "--jobs", "1", check=2)
        assert "timed out" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert snapshot(store)[2] == (None, None)
    parts = list((store / "downloads").glob(f"{tool.rpm_sha256}.part"))
    assert parts and tool.header_length < (kept := parts[0].stat().st_size) < tool.size
    with fault_proxy(port_of(origin.url)) as proxy:
        summary = json.loads(pull(store, proxy.url, gpg_key, "--json").stdout)
    assert any(n.startswith("rtool") for n in summary["resumed"])
    tool_ranges = [rng for path, rng, _ in proxy.seen if tool.rpm_sha256 in path]
    assert tool_ranges == [f"bytes={kept}-{tool.size - 1}"], (proxy.seen, tool)


def test_mirrors_fail_over_and_the_index_comes_from_the_origin(tmp_path, origin, gpg_key):
    store = tmp_path / "store"
    with fault_proxy(port_of(origin.url), [Rule("/objects/", "corrupt", 100)]) as bad, \
            fault_proxy(port_of(origin.url), [Rule("/objects/", "notfound", 100)]) as gone:
        r = pull(store, origin.url, gpg_key, "--mirror", gone.url, "--mirror", bad.url, "--json")
    assert json.loads(r.stdout)["image"]
    assert "trying the next source" in r.stderr
    for mirror in (bad, gone):
        assert mirror.seen and all("/objects/" in path for path, _, _ in mirror.seen)
    assert [req[1] for req in origin.requests() if "/images/" in req[1]]


def test_https_with_a_named_ca(tmp_path, origin, gpg_key):
    cert, key = make_tls_pair(tmp_path)
    with nginx(tmp_path / "tls", root=origin.repo, tls=(cert, key)) as server:
        r = pull(tmp_path / "store", server.url, gpg_key, check=2)
        assert "CERTIFICATE_VERIFY_FAILED" in r.stderr or "certificate" in r.stderr.lower(), r.stderr
        pull(tmp_path / "store", server.url, gpg_key, "--ca-file", cert)


# -- a fleet behind a cache ------------------------------------------------------------------------

FLEET = 20


@pytest.mark.slow
def test_twenty_pulls_through_a_cache_reach_the_origin_once_per_object(tmp_path, origin, gpg_key):
    """docs/fleet.md's nginx cache in front of the origin: 20 machines pull at once,
    the origin serves each file once."""
    env = dict(os.environ, USRVIEW_CONFIG="/dev/null", PYTHONPATH=str(REPO))
    with nginx(tmp_path / "cache", upstream=origin.url) as cache:
        procs = [subprocess.Popen([sys.executable, "-m", "usrview.cli", "pull", "--store", tmp_path / f"m{i}",
                                   "--keys", gpg_key.public_path, "--json", cache.url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
                 for i in range(FLEET)]
        try:
            outcomes = [(p.wait(timeout=TIMEOUT), *p.communicate()) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert [rc for rc, _, _ in outcomes] == [0] * FLEET, [err for _, _, err in outcomes]
        images = {json.loads(out)["image"].split("-")[-1] for _, out, _ in outcomes}
        assert len(images) == 1  # one package set everywhere
        served = [req[1] for req in origin.requests()]
        assert sorted(served) == sorted(set(served)), served  # each file once
        assert len([u for u in served if "/objects/" in u]) == 3
        misses = [req for req in cache.requests() if req[-1] == "MISS"]
        assert len(misses) == len(served)
