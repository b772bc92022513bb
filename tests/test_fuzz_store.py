"""Robustness of the store's own files, in the manner of tests/test_fuzz.py: image records,
the boot state, the verify cache (its file and its rows) and header files as the mount
reads them, each mutated or generated at random.

For every input: the reader answers with a value or its one documented error
(OperationalError for a record or a header the mount refuses; an empty or "problem"
value for the hints), never another exception -- which the CLI would print as a
traceback -- and never takes long.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rpmbuild import FileSpec
from usrview import images
from usrview.cli._common import load_keyring
from usrview.errors import OperationalError
from usrview.images import bootstate
from usrview.store import Store, pkgid_for
from usrview.store.store import read_store_file
from usrview.verify import vcache
from usrview.verify.image_check import check_image
from usrview.verify.pkgcache import cached_packages, package_rows
from usrview.verify.report import Stats
from usrview.view.loader import load_headers
from verifier.fileio import OwnerIds
from verifier.header import LEAD_SIZE, read_package
from verifier.headerfile import canonical_header_only
from verifier.keyring import Keyring

#: A generous bound: reading one store file must stay cheap.
MAX_SECONDS = 2.0
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
IMAGE_ID = "20260101-000000-00000000"
#: The lead's architecture and OS numbers: the build host's, which no header names.
UNCHECKED_LEAD_BYTES = {8, 9, 76, 77}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
RECORD_KEYS = ("format", "id", "created", "packages", "unsigned")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return Store.open(tmp_path_factory.mktemp("fuzz-store") / "store", create=True)


def _timed(fn):
    t0 = time.monotonic()
    try:
        return fn()
    finally:
        assert time.monotonic() - t0 < MAX_SECONDS


def _record_bytes(draw_value, as_dict) -> bytes:
    if isinstance(draw_value, bytes):
        return draw_value
    return json.dumps(as_dict if as_dict is not None else draw_value).encode()


@SETTINGS
@given(raw=st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
       fields=st.fixed_dictionaries({}, optional={k: JSON_VALUES for k in RECORD_KEYS}),
       packages=st.lists(st.text(max_size=30), max_size=4), unsigned=st.lists(JSON_VALUES, max_size=3))
def test_image_records(store, raw, fields, packages, unsigned):
    """A record of random bytes or JSON, one with random values in its fields, one whose
    lists hold random values: resolved, checked as verify checks it, or refused with
    OperationalError.  Found: an ``unsigned`` list holding a list raised TypeError."""
    path = images.image_path(store, IMAGE_ID)
    lists = {"format": 1, "id": IMAGE_ID, "created": "c", "packages": packages, "unsigned": unsigned}
    for data in (raw, json.dumps({"format": 1, "id": IMAGE_ID, **fields}).encode(), json.dumps(lists).encode()):
        path.write_bytes(data)
        try:
            image = _timed(lambda: images.resolve(store, IMAGE_ID))
        except OperationalError:
            image = None
        try:
            _timed(lambda: check_image(store, IMAGE_ID))
        except OperationalError:
            pass
        if image is not None:
            try:
                _timed(lambda: load_headers(store, image, Keyring()))
            except OperationalError:
                pass


@SETTINGS
@given(raw=st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_boot_state(store, raw):
    """The boot state never stops a boot: any content gives a state (with a problem)."""
    store.boot_state_path.write_bytes(raw)
    state = _timed(lambda: bootstate.load(store))
    assert isinstance(state, bootstate.BootState)


@SETTINGS
@given(raw=st.binary(max_size=2000), blob=st.binary(max_size=200),
       outcome=JSON_VALUES.map(json.dumps) | st.text(max_size=50))
def test_verify_cache(store, raw, blob, outcome):
    """The verify cache is a hint: a file of random bytes is ignored, a row with a random
    digests blob or outcome is unpacked to nothing or skipped."""
    path = vcache.cache_path(store)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(raw)
    assert isinstance(_timed(lambda: vcache.load_packages(path)), dict)
    assert isinstance(_timed(lambda: vcache.load_digests(path)), dict)
    assert isinstance(vcache.unpack_digests(blob), dict)
    path.unlink()
    pkgid = "x-1-1.noarch-0123456789abcdef"
    assert vcache.save(path, [(pkgid, "key", time.time(), outcome, blob)], replace=True)
    rows = package_rows(store, [pkgid], vcache.load_packages(path))
    found: dict = {}
    cached_packages(store, Keyring(), [pkgid], set(), rows, OwnerIds.users(), OwnerIds.groups(), {}, found,
                    Stats())
    assert isinstance(vcache.unpack_digests(vcache.load_digests(path).get(pkgid, b"")), dict)


@pytest.fixture(scope="module")
def header_seed(rpm_packages, gpg_key):
    rpm = rpm_packages("fuzzed", "1.0", "1", [FileSpec("/usr/share/fuzzed/a", content=b"a\n")])
    pkg = read_package(rpm.read_bytes())
    return canonical_header_only(pkg), load_keyring([gpg_key.public_path]), pkgid_for(pkg)


@SETTINGS
@given(data=st.data())
def test_header_files_as_the_mount_reads_them(store, header_seed, data):
    """A stored header file, mutated (bytes changed, inserted, cut, appended): the mount's
    loader serves it only unchanged, else refuses it with OperationalError."""
    seed, keyring, pkgid = header_seed
    store.package_dir(pkgid).mkdir(parents=True, exist_ok=True)   # no files: none are asked for here
    b = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "cut", "append"]))
        at = data.draw(st.integers(0, len(b)))
        if op == "flip" and at < len(b):
            b[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            b[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "cut":
            del b[at:at + data.draw(st.integers(1, 64))]
        else:
            b += data.draw(st.binary(min_size=1, max_size=64))
    store.header_path(pkgid).write_bytes(bytes(b))
    image = images.Image(images.make_image_id([pkgid], datetime.now(UTC)), "", (pkgid,))
    try:
        _timed(lambda: load_headers(store, image, keyring))
    except OperationalError:
        return
    # served: the same main header and nothing after it, the lead but for its build-host numbers;
    # the signature header's tags other than the signatures and digests are signed by nothing
    # (docs/store-format.md), so they may differ
    main = read_package(seed).header.start
    assert len(b) == len(seed) and b[main:] == seed[main:]
    assert all(x == y or i in UNCHECKED_LEAD_BYTES for i, (x, y) in enumerate(zip(b[:LEAD_SIZE], seed)))


def test_store_file_reader_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    for path, words in ((fifo, "a FIFO"), (link, "symbolic links"), (big, "larger than its format allows")):
        with pytest.raises(OSError) as e:
            read_store_file(path, 100)
        assert words in str(e.value.strerror), e.value
