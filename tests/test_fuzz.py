"""Robustness: thousands of mutated headers, seeded and property-based.

For every mutation: no exception other than HeaderError escapes the parser, the
signature check always answers with a verdict (never raises), nothing takes
long or allocates much, and a header whose signed bytes changed is never GOOD.
"""

from __future__ import annotations

import random
import struct
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier import sigcheck
from verifier.errors import HeaderError
from verifier.header import read_package, read_package_file
from verifier.keyring import Keyring

#: Packages signed here by rpmsign (tests/corpus.py, as the corpus' selfbuilt/signed/),
#: in header-only form.
BUILT_SEEDS = ["rsa3072-sha256", "ed25519", "dsa2048"]
#: Signed packages nobody here made (header-only form) and the keys that signed them.
CORPUS_SEEDS = [
    ("derived/header-only/rpm-tests/RPMS/hello-2.0-1.x86_64-signed.hdronly.rpm",
     "rpm-tests/keys/rpm.org-rsa-2048-test.pub"),
    ("derived/header-only/rpm-tests/RPMS/hello-2.0-1.x86_64-v3-signed.hdronly.rpm",
     "rpm-tests/keys/rpm.org-rsa-2048-test.pub"),
    ("derived/header-only/rpm-rs-assets/RPMS/v6/signed/rpm-basic-multiple-signatures-2.3.4-5.el9.noarch.hdronly.rpm",
     "rpm-rs-assets/signing_keys/v6/rpm-testkey-v6-ed25519.asc,"
     "rpm-rs-assets/signing_keys/v6/rpm-testkey-v6-rsa4k.asc"),
]
#: Mutations per seed: 3 built seeds x 3400 = 10,200 mutated headers without the
#: corpus, and 3 x 2200 more with it.
MUTATIONS_PER_SEED = {"built": 3400, "corpus": 2200}
TRACED_PER_SEED = 150
#: Generous bounds: a check of a mutated header must stay cheap.
MAX_SECONDS_PER_CHECK = 1.0
MAX_PEAK_BYTES = 8 * 1024 * 1024


def _seed(name: str, data: bytes, keyring: Keyring):
    assert sigcheck.check_bytes(data, keyring).verdict == sigcheck.Verdict.GOOD, name
    return name, data, keyring


@pytest.fixture(scope="module")
def built_seeds(signed_samples):
    return [_seed(name, read_package_file(signed_samples[name].package).header_only(),
                  Keyring.load([signed_samples[name].public_key]))
            for name in BUILT_SEEDS]


@pytest.fixture(scope="module")
def corpus_seeds(conformance):
    return [_seed(rel, (conformance / rel).read_bytes(),
                  Keyring.load([conformance / k for k in keys.split(",")]))
            for rel, keys in CORPUS_SEEDS]


def _layout(data: bytes):
    """Offsets of interesting fields: both headers' (il, dl) and index entries."""
    fields = []
    start = 96
    starts = []
    for _ in range(2):
        starts.append(start)
        il, dl = struct.unpack_from(">ii", data, start + 8)
        fields.append(("il", start + 8))
        fields.append(("dl", start + 12))
        for i in range(il):
            e = start + 16 + i * 16
            fields += [("tag", e), ("type", e + 4), ("offset", e + 8), ("count", e + 12)]
        end = start + 16 + il * 16 + dl
        start = end + (-(end - 96) % 8)
    return fields, starts[1]


EXTREMES = [0, 1, 2, 7, 8, 15, 16, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x00FFFFFF, 0x01000000,
            0x0FFFFFFF, 0x10000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF]


def mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    buf = bytearray(data)
    fields, main_start = _layout(data)
    if kind == 0:  # truncation
        return bytes(buf[:rng.randrange(len(buf))])
    if kind == 1:  # byte flips anywhere
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind == 2:  # byte flips inside the main header (the signed region)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(main_start, len(buf))
            buf[i] ^= rng.randint(1, 255)
        return bytes(buf)
    if kind == 3:  # an index field set to an extreme
        _name, off = rng.choice(fields)
        struct.pack_into(">I", buf, off, rng.choice(EXTREMES))
        return bytes(buf)
    if kind == 4:  # an index field nudged
        _name, off = rng.choice(fields)
        (v,) = struct.unpack_from(">I", buf, off)
        struct.pack_into(">I", buf, off, (v + rng.choice([-16, -8, -4, -1, 1, 4, 8, 16])) & 0xFFFFFFFF)
        return bytes(buf)
    # kind 5: a slice of the data store duplicated or zeroed (rpm's own "dd" corruptions)
    i = rng.randrange(main_start, len(buf))
    n = rng.randint(1, 64)
    buf[i:i + n] = bytes(min(n, len(buf) - i))
    return bytes(buf)


def _signed_region_changed(original: bytes, mutated: bytes) -> bool:
    try:
        a = read_package(original)
    except HeaderError:
        return True
    try:
        b = read_package(mutated, strict=False)
    except HeaderError:
        return True
    return a.header.region_bytes != b.header.region_bytes


def _check_one(data, keyring, original, stats):
    t0 = time.perf_counter()
    try:
        read_package(data)
    except HeaderError as e:
        assert str(e)
        stats["refused"] += 1
    result = sigcheck.check_bytes(data, keyring)
    elapsed = time.perf_counter() - t0
    assert elapsed < MAX_SECONDS_PER_CHECK, f"check took {elapsed:.2f}s"
    if result.verdict == sigcheck.Verdict.GOOD:
        assert not _signed_region_changed(original, data), "GOOD for a changed signed header"
        stats["good"] += 1
    stats[result.verdict.value] = stats.get(result.verdict.value, 0) + 1


def _mutate_seeds(seeds, per_seed: int) -> None:
    rng = random.Random(20261125)
    stats = {"refused": 0, "good": 0}
    # Memory is traced over the first mutations of every seed only: tracing
    # slows Python tenfold, and the bound is per check, not cumulative.
    tracemalloc.start()
    try:
        for _rel, data, keyring in seeds:
            for _ in range(TRACED_PER_SEED):
                _check_one(mutate(data, rng), keyring, data, stats)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for _rel, data, keyring in seeds:
        for _ in range(per_seed - TRACED_PER_SEED):
            _check_one(mutate(data, rng), keyring, data, stats)
    total = len(seeds) * per_seed
    print(f"{total} mutated headers: {stats}, peak traced memory {peak / 1e6:.1f} MB")
    assert peak < MAX_PEAK_BYTES
    # The mutations must actually reach deep: many are refused, many parse and fail the signature.
    assert stats["refused"] > total // 10
    assert stats.get("BAD", 0) > total // 10


def test_seeded_mutations_never_crash_and_never_pass(built_seeds):
    per_seed = MUTATIONS_PER_SEED["built"]
    assert len(built_seeds) * per_seed >= 10_000
    _mutate_seeds(built_seeds, per_seed)


def test_seeded_mutations_of_corpus_headers(corpus_seeds):
    _mutate_seeds(corpus_seeds, MUTATIONS_PER_SEED["corpus"])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_mutations(built_seeds, data):
    _name, original, keyring = data.draw(st.sampled_from(built_seeds))
    buf = bytearray(original)
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 255)),
                               min_size=1, max_size=6))
    for pos, value in edits:
        buf[pos] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(buf))))
    mutated = bytes(buf if cut is None else buf[:cut])
    _check_one(mutated, keyring, original, {"refused": 0, "good": 0})


def test_random_bytes_are_refused():
    rng = random.Random(7)
    for n in (0, 1, 95, 96, 97, 200, 4096):
        for _ in range(50):
            blob = bytes(rng.randrange(256) for _ in range(n))
            r = sigcheck.check_bytes(blob, Keyring.load([]))
            assert r.verdict == sigcheck.Verdict.PARSE
