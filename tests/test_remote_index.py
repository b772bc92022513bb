"""The image index format and the detached signature check, without servers."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from usrview.remote.index import (
    ImageIndex,
    IndexEntry,
    IndexRefused,
    PackedHeads,
    object_path,
    packed_heads_path,
    parse_index,
)
from usrview.remote.pull import check_index
from verifier.keyring import Keyring, Verdict
from verifier.sigcheck import check_detached

NOW = datetime(2030, 1, 1, tzinfo=UTC)
H = "a" * 64
HEADS = {"path": packed_heads_path("e" * 64), "sha256": "e" * 64, "size": 1000}


def entry(**changes) -> dict:
    e = IndexEntry("tool-1.0-1.noarch", H, "b" * 64, 1000, 200, object_path("b" * 64)).to_json()
    return {**e, **changes}


def index(packages=None, **changes) -> bytes:
    doc = ImageIndex("stable", 3, NOW, NOW + timedelta(days=1), ()).to_json()
    doc["packages"] = [entry()] if packages is None else packages
    return json.dumps({**doc, **changes}).encode()


def test_an_index_round_trips():
    parsed = parse_index(index())
    assert parsed.serial == 3 and parsed.packages[0].pkgid == f"tool-1.0-1.noarch-{H[:16]}"
    assert parse_index(parsed.to_bytes()) == parsed
    assert parsed.heads is None and parsed.packages[0].head_sha256 is None  # an index from before them


def test_an_index_with_head_digests_and_packed_heads_round_trips():
    parsed = parse_index(index([entry(head_sha256="d" * 64)], heads=HEADS))
    assert parsed.packages[0].head_sha256 == "d" * 64
    assert parsed.heads == PackedHeads(HEADS["path"], HEADS["sha256"], HEADS["size"])
    assert parse_index(parsed.to_bytes()) == parsed


@pytest.mark.parametrize("data, reason", [
    (b"not json", "not JSON"),
    (index(format=2), "format 2"),
    (index(serial=0), "malformed"),
    (index(serial="3"), "malformed"),
    (index(expires="2030-01-02"), "with a zone"),
    (index([entry(path="../../etc/passwd")]), "outside the repository"),
    (index([entry(path="/etc/passwd")]), "outside the repository"),
    (index([entry(path="http://evil/x.rpm")]), "outside the repository"),
    (index([entry(rpm_sha256="B" * 64)]), "malformed SHA-256"),
    (index([entry(header_length=2000)]), "malformed"),
    (index([entry(size=True)]), "malformed"),
    (index([entry(nevra="../x")]), "cannot be stored"),
    (index([entry(), entry(rpm_sha256="c" * 64)]), "twice"),
    (index([entry(head_sha256="C" * 64)]), "malformed SHA-256"),
    (index([entry(head_sha256=7)]), "malformed SHA-256"),
    (index(heads=HEADS | {"path": "../heads.zst"}), "heads is malformed"),
    (index(heads=HEADS | {"sha256": "x"}), "heads is malformed"),
    (index(heads=HEADS | {"size": 0}), "heads is malformed"),
    (index(heads=[HEADS]), "heads is not an object"),
    (index([entry()], heads=HEADS), "without head_sha256"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_malformed_indexes_are_refused(data, reason):
    with pytest.raises(IndexRefused, match=reason):
        parse_index(data)


@pytest.fixture(scope="module")
def signed(gpg_key, tmp_path_factory):
    """An index signed by gpg, binary and armored, and the keyring trusting its key."""
    d = tmp_path_factory.mktemp("signed")
    (d / "index.json").write_bytes(index())
    for armor in ([], ["--armor"]):
        out = d / ("index.json.asc" if armor else "index.json.sig")
        subprocess.run(["gpg", "--homedir", str(gpg_key.gnupghome), "--batch", "--detach-sign", *armor,
                        "--output", str(out), str(d / "index.json")], check=True, capture_output=True)
    return d, Keyring.load(gpg_key.public_path)


@pytest.mark.parametrize("sig_name", ["index.json.sig", "index.json.asc"])
def test_detached_signatures_of_gpg_are_checked(signed, sig_name):
    d, keyring = signed
    data, sig = (d / "index.json").read_bytes(), (d / sig_name).read_bytes()
    assert check_detached(sig, data, keyring).verdict is Verdict.GOOD
    assert check_detached(sig, data + b"\n", keyring).verdict is Verdict.BAD
    assert check_detached(sig, data, Keyring()).verdict is Verdict.NOKEY
    assert check_detached(b"", data, keyring).verdict is Verdict.UNSIGNED
    assert check_detached(b"\x99garbage", data, keyring).verdict is Verdict.BAD
    user_id_packet = bytes([0xCD, 4]) + b"evil"  # a packet, but no signature
    assert check_detached(user_id_packet, data, keyring).verdict is Verdict.BAD


def test_check_index_refuses_replays_expiry_and_other_images(signed):
    d, keyring = signed
    data, sig = (d / "index.json").read_bytes(), (d / "index.json.sig").read_bytes()
    assert check_index(data, sig, keyring, name="stable", accepted=3, now=NOW).serial == 3
    with pytest.raises(IndexRefused, match="older than serial 4"):
        check_index(data, sig, keyring, name="stable", accepted=4, now=NOW)
    with pytest.raises(IndexRefused, match="expired"):
        check_index(data, sig, keyring, name="stable", accepted=0, now=NOW + timedelta(days=1))
    with pytest.raises(IndexRefused, match="not 'testing'"):
        check_index(data, sig, keyring, name="testing", accepted=0, now=NOW)
