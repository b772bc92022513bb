"""The header parser against rpm itself (``rpm -qp --dump`` and ``--qf``) and against broken input."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from tests import hdrbuild
from tests.corpus import manifest, package_files
from tests.prereq import require
from verifier.errors import HeaderError
from verifier.files import FileFlag
from verifier.header import file_entries, read_package, read_package_file
from verifier.tags import SigTag, Tag, TagType


def _parse_case_files(root):
    """Files the manifest says must be rejected as malformed."""
    return {c.file for c in manifest(root) if c.expected == "PARSE"}


QF = ("[%{FILENAMES}\\t%{FILECAPS}\\t%{FILEVERIFYFLAGS}\\t%{FILEINODES}\\t"
      "%{FILEDEVICES}\\t%{FILELANGS}\\t%{FILEFLAGS}\\t%{FILECOLORS}\\n]")


def rpm_query(path, *args) -> str:
    r = subprocess.run(["rpm", "-qp", "--nosignature", "--nodigest", *args, str(path)],
                       capture_output=True, check=True)
    return r.stdout.decode("utf-8", "surrogateescape")


def test_corpus_file_lists_equal_rpm_dump(conformance):
    """Every field of every file of every corpus package equals what rpm prints."""
    root = conformance
    require(shutil.which("rpm"), "rpm is not installed")
    parse_cases = _parse_case_files(root)
    compared = files_compared = 0
    for rel in package_files(root):
        path = root / rel
        if rel in parse_cases:
            with pytest.raises(HeaderError):
                read_package(path.read_bytes())
            continue
        pkg = read_package_file(path, strict=False)
        if pkg.header.import_error:
            # rpm refuses to load these too ("hdr load: BAD"); checked in test_sigcheck.
            continue
        dump = rpm_query(path, "--dump").splitlines()
        extra = rpm_query(path, "--qf", QF).splitlines()
        files = pkg.files
        if dump == ["(contains no files)"]:
            assert files == [], rel
            compared += 1
            continue
        assert len(dump) == len(files) == len(extra), rel
        for line, more, f in zip(dump, extra, files):
            assert line.startswith(f.path + " "), (rel, line, f.path)
            fields = line[len(f.path) + 1:].split(" ")
            size, mtime, digest, mode, user, group, isconfig, isdoc, rdev = fields[:9]
            link = " ".join(fields[9:])
            assert f.size == int(size), (rel, f.path)
            assert f.mtime == int(mtime), (rel, f.path)
            assert f.digest == (digest if digest.strip("0") else ""), (rel, f.path)
            assert f.mode == int(mode, 8), (rel, f.path)
            assert (f.user, f.group) == (user, group), (rel, f.path)
            assert int(bool(f.flags & FileFlag.CONFIG)) == int(isconfig), (rel, f.path)
            assert int(bool(f.flags & FileFlag.DOC)) == int(isdoc), (rel, f.path)
            assert f.rdev == int(rdev), (rel, f.path)
            assert f.linkto == ("" if link == "X" else link), (rel, f.path)
            name, caps, vflags, inode, device, lang, flags, color = more.split("\t")
            assert name == f.path
            assert f.caps == ("" if caps == "(none)" else caps), (rel, f.path)
            if vflags != "(none)":
                assert int(f.verify_flags) == int(vflags) & 0x1FF, (rel, f.path)
            if inode != "(none)":
                assert f.inode == int(inode), (rel, f.path)
            if device != "(none)":
                assert f.device == int(device), (rel, f.path)
            assert f.lang == ("" if lang == "(none)" else lang), (rel, f.path)
            assert int(f.flags) == int(flags), (rel, f.path)
            if color != "(none)":
                assert f.color == int(color), (rel, f.path)
            files_compared += 1
        compared += 1
    print(f"{compared} packages, {files_compared} files equal to rpm -qp --dump")
    assert compared >= 100 and files_compared >= 200


def test_nevra_and_payload_match_rpm(conformance):
    root = conformance
    require(shutil.which("rpm"), "rpm is not installed")
    qf = "%{NAME}|%{EPOCH}|%{VERSION}|%{RELEASE}|%{ARCH}|%{PAYLOADFORMAT}|%{PAYLOADCOMPRESSOR}|%{SOURCERPM}"
    parse_cases = _parse_case_files(root)
    for rel in package_files(root):
        if rel in parse_cases:
            continue
        pkg = read_package_file(root / rel, strict=False)
        if pkg.header.import_error:
            continue
        name, epoch, version, release, arch, fmt, comp, srpm = rpm_query(root / rel, "--qf", qf).split("|")
        assert (pkg.name, pkg.version, pkg.release) == (name, version, release), rel
        assert pkg.epoch == (None if epoch == "(none)" else int(epoch)), rel
        if srpm != "(none)":
            assert pkg.arch == arch, rel
        else:
            assert pkg.is_source and pkg.arch == "src"
        assert pkg.payload_format == (fmt if fmt != "(none)" else "cpio"), rel
        assert pkg.payload_compressor == (comp if comp != "(none)" else "gzip"), rel


def test_header_only_files_equal_full_packages(conformance):
    """A header-only file carries exactly the full package's signed bytes and file list."""
    root = conformance
    pairs = 0
    for hdr in sorted((root / "derived" / "header-only").rglob("*.hdronly.rpm")):
        rel = hdr.relative_to(root / "derived" / "header-only")
        full = root / str(rel).replace(".hdronly.rpm", ".rpm")
        if not full.exists():
            full = root / str(rel).replace(".hdronly.rpm", "")
        if not full.exists():
            continue
        try:
            a = read_package(full.read_bytes(), strict=False)
        except HeaderError:
            with pytest.raises(HeaderError):
                read_package(hdr.read_bytes(), strict=False)
            continue
        b = read_package(hdr.read_bytes(), strict=False)
        assert not b.has_payload and (a.has_payload or a.header.end == len(full.read_bytes()))
        assert a.header.region_bytes == b.header.region_bytes
        assert a.signature.bytes == b.signature.bytes
        assert b.header_only() == hdr.read_bytes()
        if not a.header.import_error:
            assert a.files == b.files
        pairs += 1
    assert pairs >= 50


def test_v3_package_with_oldfilenames_and_no_region(conformance):
    root = conformance
    pkg = read_package_file(root / "rpm-tests/RPMS/hello-1.0-1.x86_64.rpm-v3")
    assert pkg.header.region_tag == 0 and pkg.rpm_format == 3
    assert Tag.OLDFILENAMES in pkg.header and Tag.BASENAMES not in pkg.header
    assert [f.path for f in pkg.files][:2] == ["/usr/local/bin/hello", "/usr/share/doc/hello"]
    assert pkg.header.region_bytes == pkg.header.bytes


def test_v6_package_format_and_scriptlets(conformance):
    root = conformance
    pkg = read_package_file(root / "rpm-rs-assets/RPMS/v6/rpm-scriptlets-1.0-1.noarch.rpm")
    assert pkg.rpm_format == 6
    assert {"%pre", "%post", "%preun", "%postun", "%pretrans", "%posttrans"} <= set(pkg.scriptlets)
    assert SigTag.SHA3_256 in pkg.signature
    plain = read_package_file(root / "rpm-rs-assets/RPMS/v6/rpm-basic-2.3.4-5.el9.noarch.rpm")
    assert plain.scriptlets == []
    assert plain.nevra == "rpm-basic-1:2.3.4-5.el9.noarch"


def test_every_truncation_of_a_header_is_refused(conformance):
    root = conformance
    data = (root / "derived/header-only/rpm-tests/RPMS/hello-2.0-1.x86_64-signed.hdronly.rpm").read_bytes()
    read_package(data)
    for n in range(len(data)):
        with pytest.raises(HeaderError):
            read_package(data[:n])


# -- crafted headers ----------------------------------------------------------

NAME = (Tag.NAME, TagType.STRING, "pkg")
GOOD_FILES = [
    NAME,
    (Tag.VERSION, TagType.STRING, "1"),
    (Tag.RELEASE, TagType.STRING, "1"),
    (Tag.ARCH, TagType.STRING, "noarch"),
    (Tag.SOURCERPM, TagType.STRING, "pkg-1-1.src.rpm"),
    (Tag.FILESIZES, TagType.INT32, [3, 0]),
    (Tag.FILEMODES, TagType.INT16, [0o100644, 0o40755]),
    (Tag.FILEDIGESTS, TagType.STRING_ARRAY, ["ab" * 32, ""]),
    (Tag.DIRINDEXES, TagType.INT32, [0, 0]),
    (Tag.BASENAMES, TagType.STRING_ARRAY, ["a", "d"]),
    (Tag.DIRNAMES, TagType.STRING_ARRAY, ["/usr/"]),
    (Tag.FILEDIGESTALGO, TagType.INT32, [8]),
]


def pkg_bytes(entries, **kw):
    return hdrbuild.build_package(hdrbuild.build_header(entries, **kw))


def test_crafted_header_round_trip():
    pkg = read_package(pkg_bytes(GOOD_FILES))
    assert pkg.nevra == "pkg-1-1.noarch"
    assert [(f.path, f.size, f.mode, f.digest, f.digest_algo) for f in pkg.files] == [
        ("/usr/a", 3, 0o100644, "ab" * 32, 8), ("/usr/d", 0, 0o40755, "", 8)]


def _replace(entries, tag, typ, value):
    return [e for e in entries if e[0] != tag] + [(tag, typ, value)]


def _patch_index(data: bytes, header_start: int, i: int, field: int, value: int) -> bytes:
    """Set field (0 tag, 1 type, 2 offset, 3 count) of index entry i of the header at header_start."""
    off = header_start + 16 + i * 16 + field * 4
    return data[:off] + struct.pack(">I", value & 0xFFFFFFFF) + data[off + 4:]


def _main_start(data: bytes) -> int:
    il, dl = struct.unpack_from(">ii", data, 96 + 8)
    end = 96 + 16 + il * 16 + dl
    return end + (-(end - 96) % 8)


MALFORMED = {
    # name: (function producing bytes, text expected in the error)
    "count mismatch": (lambda: pkg_bytes(_replace(GOOD_FILES, Tag.FILESIZES, TagType.INT32, [3])), "FILESIZES has 1 entries"),
    "dirindex out of range": (lambda: pkg_bytes(_replace(GOOD_FILES, Tag.DIRINDEXES, TagType.INT32, [0, 5])), "directory index 5"),
    "basenames without dirnames": (lambda: pkg_bytes([e for e in GOOD_FILES if e[0] != Tag.DIRNAMES]), "without DIRNAMES"),
    "wrong type for known tag": (lambda: pkg_bytes(_replace(GOOD_FILES, Tag.FILEMODES, TagType.INT32, [0o100644, 0o40755])), "INT32 where INT16"),
    "no region": (lambda: pkg_bytes(GOOD_FILES, region_tag=Tag.HEADERIMAGE), "unexpected region tag"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_crafted_malformed_header(case):
    make, message = MALFORMED[case]
    with pytest.raises(HeaderError, match=message):
        pkg = read_package(make())
        file_entries(pkg.header)


def _index_patch_cases():
    base = pkg_bytes(GOOD_FILES)
    start = _main_start(base)
    # entry 0 is the region; entry 1.. are data entries in tag order
    return {
        "NULL type": (_patch_index(base, start, 3, 1, 0), "invalid type 0"),
        "type out of range": (_patch_index(base, start, 3, 1, 10), "invalid type 10"),
        "zero count": (_patch_index(base, start, 3, 3, 0), "invalid count"),
        "absurd count": (_patch_index(base, start, 3, 3, 0x7FFFFFFF), "invalid count"),
        "huge int count": (_patch_index(base, start, 6, 3, 0x00FFFFFF), "past the data store"),
        "negative offset": (_patch_index(base, start, 3, 2, -8), "overlaps|out of range"),
        "offset past data": (_patch_index(base, start, 3, 2, 1 << 20), "out of range|overlaps"),
        "overlapping data": (_patch_index(base, start, 2, 2, 0), "overlaps"),
        "misaligned int": (_patch_index(base, start, 6, 2, 0x41), "misaligned|overlaps|out of range"),
        "tag below 100": (_patch_index(base, start, 2, 0, 50), "invalid tag"),
        "region trailer bad": (_patch_index(base, start, 0, 2, 4), "region"),
        "region count": (_patch_index(base, start, 0, 3, 15), "region"),
        "il absurd": (base[:start + 8] + struct.pack(">i", 0x7FFFFFFF) + base[start + 12:], "number of tags"),
        "il zero": (base[:start + 8] + struct.pack(">i", 0) + base[start + 12:], "number of tags"),
        "il negative": (base[:start + 8] + struct.pack(">i", -1) + base[start + 12:], "number of tags"),
        "dl absurd": (base[:start + 12] + struct.pack(">i", 0x7FFFFFFF) + base[start + 16:], "data size"),
        "dl past end": (base[:start + 12] + struct.pack(">i", 1 << 20) + base[start + 16:], "truncated"),
        "sig il over 32": (base[:96 + 8] + struct.pack(">i", 33) + base[96 + 12:], "number of tags"),
        "bad header magic": (base[:start] + b"\x8e\xad\xe8\x02" + base[start + 4:], "bad magic"),
        "bad lead magic": (b"\0" + base[1:], "bad magic"),
        "lead signature type": (base[:78] + b"\0\1" + base[80:], "signature type"),
        "nonzero padding": (base, None),
    }


@pytest.mark.parametrize("case", sorted(_index_patch_cases()))
def test_index_corruption_is_refused(case):
    data, message = _index_patch_cases()[case]
    if message is None:
        read_package(data)  # the unmodified base parses
        return
    with pytest.raises(HeaderError, match=message):
        read_package(data)


def test_unterminated_string_is_refused():
    # A legacy header (no region): the last string ends the data store.
    base = pkg_bytes([NAME, (Tag.VERSION, TagType.STRING, "1")], region_tag=None)
    read_package(base)
    assert base[-1] == 0
    with pytest.raises(HeaderError, match="unterminated"):
        read_package(base[:-1] + b"x")
    # With a region, the string would run into the trailer.
    base = pkg_bytes([NAME, (Tag.VERSION, TagType.STRING, "1")])
    end = len(base) - 16 - 1
    with pytest.raises(HeaderError, match="region trailer"):
        read_package(base[:end] + b"x" + base[end + 1:])


def test_gap_in_data_store_is_an_import_error():
    """rpm loads the layout, then refuses to import a data store with gaps; so do we."""
    main = bytearray(hdrbuild.build_header([NAME, (Tag.VERSION, TagType.STRING, "1")]))
    # Shorten "pkg" to "pk": the entries no longer fill the data store.
    i = main.index(b"pkg\0")
    main[i + 2] = 0
    data = hdrbuild.build_package(bytes(main))
    with pytest.raises(HeaderError, match="does not match"):
        read_package(data)
    assert read_package(data, strict=False).header.import_error
