"""Package heads in a pull: every head the store may keep pinned by the signed index
(``head_sha256``), and the packed heads object an empty store fetches in one request.

A mirror (or a hostile origin) that serves a head re-signed by another *trusted* key has a
main header whose SHA-256 is the index's and a signature the trust gate accepts; only the
head's own digest in the signed index tells it from the published one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest
import zstandard

from tests import rpmbuild
from tests.remote_servers import Rule, copy_repository, fault_proxy, nginx, port_of
from tests.rpmbuild import FileSpec
from tests.test_images import usrview
from tests.test_remote import do_publish, object_of, pull, snapshot
from tests.test_remote_delta import drpms, image_dir, origin, publish_v2  # noqa: F401 - fixtures
from usrview.remote.index import (
    FILE_OBJECTS_DIR,
    ImageIndex,
    head_delta_name,
    head_object_name,
    index_path,
    parse_index,
)
from usrview.remote.publish import _sign
from usrview.remote.pull import PACKED_HEADS_MIN
from usrview.store import Store
from verifier.header import read_package, read_package_file
from verifier.headerfile import canonical_header_only


@pytest.fixture(scope="module")
def trusted_too(tmp_path_factory):
    """A second key the client trusts (``--keys`` both)."""
    key = rpmbuild.make_gpg_key(tmp_path_factory.mktemp("second-gpg"), uid="second <s@usrview.invalid>")
    yield key
    rpmbuild.stop_gpg_agent(key)


def resigned_head(tmp_path, rpm, key) -> tuple:
    """``rpm`` re-signed by ``key``: (its path, its head).  rpmsign replaces the signature in
    the room the old one had (the signature header's reserved space): the head keeps its length."""
    out = tmp_path / f"resigned-{rpm.name}"
    shutil.copy(rpm, out)
    rpmbuild.sign_rpm(out, key)
    return out, out.read_bytes()[:read_package_file(out).payload_offset]


def substitute_dapp_v2(repo, resigned, head) -> None:
    """In ``repo``: dapp 2.0's rpm, compressed head and header delta all the re-signed package's."""
    entry = object_of(repo, "dapp", 2)
    old = object_of(repo, "dapp", 1)
    shutil.copy(resigned, repo / entry.path)
    (repo / FILE_OBJECTS_DIR / head_object_name(entry.rpm_sha256)).write_bytes(zstandard.compress(head))
    (repo / FILE_OBJECTS_DIR / head_delta_name(old.header_sha256, entry.rpm_sha256)).unlink()


def stored_header(store, nevra: str) -> bytes:
    s = Store.open(store)
    return s.read_header(next(p for p in s.pkgids() if p.startswith(nevra + "-")))


def v1_pulled_v2_resigned(tmp_path, origin, drpms, gpg_key, trusted_too):  # noqa: F811
    """A store that pulled dapp 1.0 (trusting both keys), dapp 2.0 published, and dapp 2.0
    re-signed by the second key: (store, the --keys to pass, the re-signed rpm, its head)."""
    store = tmp_path / "store"
    keys = ("--keys", trusted_too.public_path)
    pull(store, origin.url, gpg_key, *keys)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    return (store, keys, *resigned_head(tmp_path, drpms["v2"], trusted_too))


def test_head_resigned_by_another_trusted_key_is_refused_and_the_pull_fails_over(
        tmp_path, origin, drpms, gpg_key, trusted_too):  # noqa: F811
    store, keys, resigned, head = v1_pulled_v2_resigned(tmp_path, origin, drpms, gpg_key, trusted_too)
    entry = object_of(origin.repo, "dapp", 2)
    package = read_package(head, strict=False)
    # what the pin alone tells apart: the same main header, the same length, a trusted signature
    assert package.header_sha256 == entry.header_sha256 and len(head) == entry.header_length
    mirror = copy_repository(origin.repo, tmp_path / "mirror")
    substitute_dapp_v2(mirror, resigned, head)
    with nginx(tmp_path / "mirror-nginx", root=mirror) as bad:
        r = pull(store, origin.url, gpg_key, *keys, "--mirror", bad.url, "--json")
    summary = json.loads(r.stdout)
    assert summary["assembled"] == [entry.nevra], r.stderr
    warnings = r.stderr.splitlines()
    assert len(warnings) == 1 and "head_sha256" in warnings[0] and "trying the next source" in warnings[0], r.stderr
    published = read_package_file(origin.repo / entry.path)
    assert stored_header(store, entry.nevra) == canonical_header_only(published)
    assert stored_header(store, entry.nevra) != canonical_header_only(package)


def test_origin_serving_a_resigned_head_leaves_the_store_unchanged(
        tmp_path, origin, drpms, gpg_key, trusted_too):  # noqa: F811
    store, keys, resigned, head = v1_pulled_v2_resigned(tmp_path, origin, drpms, gpg_key, trusted_too)
    substitute_dapp_v2(origin.repo, resigned, head)
    before = snapshot(store)
    r = pull(store, origin.url, gpg_key, *keys, check=2)
    assert r.stderr.count("\n") == 1 and "dapp-2.0" in r.stderr and "head_sha256" in r.stderr, r.stderr
    assert snapshot(store) == before


def test_an_index_without_head_digests_is_read_and_its_packages_fetched_whole(
        tmp_path, origin, drpms, gpg_key):  # noqa: F811
    """An index written before ``head_sha256``: still pulled, but never file by file (only the
    rpm's SHA-256 pins its head then)."""
    store = tmp_path / "store"
    pull(store, origin.url, gpg_key)
    publish_v2(tmp_path, origin, drpms, gpg_key)
    path = origin.repo / index_path("stable", 2)
    index = parse_index(path.read_bytes())
    old = ImageIndex(index.name, index.serial, index.issued, index.expires,
                     tuple(dataclasses.replace(e, head_sha256=None) for e in index.packages),
                     index.file_objects)
    path.write_bytes(old.to_bytes())
    assert b"head_sha256" not in path.read_bytes() and b'"heads"' not in path.read_bytes()
    _sign(path, path.with_name(path.name + ".sig"), gpg_key.fingerprint, gpg_key.gnupghome)
    n = len(origin.requests())
    summary = json.loads(pull(store, origin.url, gpg_key, "--json").stdout)
    entry = index.packages[0]
    assert summary["assembled"] == [] and summary["fetched"] == [entry.nevra]
    assert [r[4] for r in origin.requests()[n:] if r[1] == f"/{entry.path}"] == [
        f"bytes={entry.header_length}-{entry.size - 1}"]  # its payload, after the header (as a delta)
    assert usrview("verify", "--store", store, "--keys", gpg_key.public_path).returncode == 0


# -- the packed heads -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def many(rpm_packages):
    """PACKED_HEADS_MIN + 2 small packages."""
    return [rpm_packages(f"rpack{i}", "1.0", "1", [FileSpec(f"/usr/share/rpack/{i}", content=f"{i}\n".encode())])
            for i in range(PACKED_HEADS_MIN + 2)]


@pytest.fixture
def packed_origin(tmp_path, many, gpg_key):
    repo = tmp_path / "repo"
    do_publish(image_dir(tmp_path, "many", *many), repo, gpg_key)
    with nginx(tmp_path / "nginx", root=repo) as server:
        server.repo = repo
        yield server


def rpm_requests(server, since: int = 0) -> list:
    return [r for r in server.requests()[since:] if r[1].endswith(".rpm")]


def test_empty_store_fetches_every_head_in_one_request(tmp_path, packed_origin, many, gpg_key):
    repo = packed_origin.repo
    index = parse_index((repo / index_path("stable", 1)).read_bytes())
    heads = index.heads
    data = (repo / heads.path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == heads.sha256 and len(data) == heads.size
    packed = zstandard.ZstdDecompressor().decompress(data)
    assert packed == b"".join((repo / e.path).read_bytes()[:e.header_length] for e in index.packages)
    store = tmp_path / "store"
    summary = json.loads(pull(store, packed_origin.url, gpg_key, "--json").stdout)
    assert len(summary["fetched"]) == len(many)
    assert [r[1] for r in packed_origin.requests() if "/objects/heads/" in r[1]] == [f"/{heads.path}"]
    # each rpm asked for once, from its payload on: no header Range request
    ranges = sorted(r[4] for r in rpm_requests(packed_origin))
    assert ranges == sorted(f"bytes={e.header_length}-{e.size - 1}" for e in index.packages)
    assert usrview("verify", "--store", store, "--keys", gpg_key.public_path).returncode == 0


def test_wrong_packed_heads_fail_over_then_each_head_alone(tmp_path, packed_origin, many, gpg_key):
    index = parse_index((packed_origin.repo / index_path("stable", 1)).read_bytes())
    with fault_proxy(port_of(packed_origin.url), [Rule("/objects/heads/", "corrupt", 100)]) as bad:
        r = pull(tmp_path / "store", packed_origin.url, gpg_key, "--mirror", bad.url)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "packed heads" in lines[0] and "SHA-256" in lines[0], r.stderr
    assert "trying the next source" in lines[0]
    store = tmp_path / "store2"
    (packed_origin.repo / index.heads.path).write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    before = len(packed_origin.requests())
    r = pull(store, packed_origin.url, gpg_key)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "packed heads" in lines[0] and "fetching each header alone" in lines[0], r.stderr
    header_ranges = [x for x in rpm_requests(packed_origin, before) if x[4].startswith("bytes=0-")]
    assert len(header_ranges) == len(many)
    assert usrview("verify", "--store", store, "--keys", gpg_key.public_path).returncode == 0


def test_a_store_lacking_a_few_packages_fetches_their_heads_alone(tmp_path, packed_origin, many, gpg_key,
                                                                  rpm_packages):
    store = tmp_path / "store"
    pull(store, packed_origin.url, gpg_key)
    extra = rpm_packages("rpack-extra", "1.0", "1", [FileSpec("/usr/share/rpack/extra", content=b"x\n")])
    do_publish(image_dir(tmp_path, "more", *many, extra), packed_origin.repo, gpg_key)
    before = len(packed_origin.requests())
    summary = json.loads(pull(store, packed_origin.url, gpg_key, "--json").stdout)
    assert summary["fetched"] == ["rpack-extra-1.0-1.noarch"]
    served = [r[1] for r in packed_origin.requests()[before:]]
    assert not any("/objects/heads/" in p for p in served)
    assert len([x for x in rpm_requests(packed_origin, before) if x[4].startswith("bytes=0-")]) == 1
