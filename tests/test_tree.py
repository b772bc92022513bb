"""The view's model (usrview.view.tree), built from real signed rpms, without FUSE."""

from __future__ import annotations

import hashlib
import logging
import stat

import pytest

from tests.rpmbuild import STAGED_MTIME, FileSpec
from usrview.store import pkgid_for
from usrview.view.tree import (
    ROOT_INODE,
    SYSIMAGE_DIR,
    PackageSource,
    TreeConflict,
    build_tree,
    digest_label,
)
from verifier.filecaps import parse_text
from verifier.header import read_package_file

BASE_FILES = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/tool", content=b"#!/bin/sh\necho tool\n", mode=0o755),
    FileSpec("/usr/bin/su-ish", content=b"setuid\n", mode=0o4755),
    FileSpec("/usr/bin/ping-ish", content=b"caps\n", mode=0o755, directives="%caps(cap_net_raw=ep)"),
    FileSpec("/usr/lib/base/data", content=b"data\n", mtime=STAGED_MTIME + 50),
    FileSpec("/usr/lib/base/link", kind="symlink", target="data"),
    FileSpec("/usr/lib/base/hard1", content=b"same bytes\n"),
    FileSpec("/usr/lib/base/hard2", kind="hardlink", target="/usr/lib/base/hard1"),
    FileSpec("/usr/lib/base/ghost", directives="%ghost", staged=False),
    FileSpec("/etc/base.conf", content=b"conf\n", directives="%config"),
]
OTHER_FILES = [
    FileSpec("/usr/bin", kind="dir"),
    FileSpec("/usr/bin/other", content=b"other\n", mode=0o755),
    FileSpec("/usr/share/doc/other/README", content=b"readme\n", mtime=STAGED_MTIME + 100),
]


def source(path):
    package = read_package_file(path)
    return PackageSource(pkgid_for(package), package, None, path)


@pytest.fixture
def image(rpm_packages):
    return [source(rpm_packages("base", files=BASE_FILES)),
            source(rpm_packages("other", files=OTHER_FILES))]


def test_only_usr_without_ghosts(image):
    tree = build_tree(image)
    paths = {p for p, _ in tree.walk()}
    assert "bin/tool" in paths and "bin/other" in paths
    assert "lib/base/ghost" not in paths
    assert not any("etc" in p or "base.conf" in p for p in paths)
    assert tree.root.inode == ROOT_INODE and tree.root.is_dir


def test_merged_and_implicit_directories(image):
    tree = build_tree(image)
    bin_ = tree.resolve("bin")
    assert bin_.names == ["other", "ping-ish", "su-ish", "tool"]
    assert tree.package_of(bin_) == "base-1.0-1.noarch"  # first package in image order
    # share/doc/other is owned by nobody: 0755 root:root, newest child's mtime.
    for implicit, mtime in (("share", STAGED_MTIME + 100), ("share/doc", STAGED_MTIME + 100),
                            ("lib/base", STAGED_MTIME + 50)):
        node = tree.resolve(implicit)
        assert node.mode == stat.S_IFDIR | 0o755, implicit
        assert (node.uid, node.gid) == (0, 0)
        assert node.mtime == mtime, implicit
        assert tree.package_of(node) is None
    assert tree.resolve("share").nlink == 3  # ., .., doc


def test_file_attributes(image):
    tree = build_tree(image)
    tool = tree.resolve("bin/tool")
    assert tool.mode == stat.S_IFREG | 0o755
    assert tool.size == len(b"#!/bin/sh\necho tool\n")
    assert tool.mtime == STAGED_MTIME
    assert tool.relpath == "usr/bin/tool"
    assert digest_label(tool) == "sha256:" + hashlib.sha256(b"#!/bin/sh\necho tool\n").hexdigest()
    assert tree.resolve("bin/su-ish").mode == stat.S_IFREG | 0o4755
    link = tree.resolve("lib/base/link")
    assert stat.S_ISLNK(link.mode) and link.relpath == "data" and link.size == 4
    caps = tree.resolve("bin/ping-ish").caps
    assert caps == parse_text("cap_net_raw=ep").to_xattr()
    assert tree.resolve("bin/tool").caps is None


def test_hardlinks_share_one_inode(image):
    tree = build_tree(image)
    h1, h2 = tree.resolve("lib/base/hard1"), tree.resolve("lib/base/hard2")
    assert h1 is h2
    assert h1.nlink == 2
    assert tree.resolve("lib/base/data").nlink == 1
    # Two names, two entry ids, one inode.
    lib = tree.resolve("lib/base")
    entries = {name: (node.inode, eid) for name, node, eid in tree.entries_after(lib, 0)}
    assert entries["hard1"][0] == entries["hard2"][0]
    assert entries["hard1"][1] != entries["hard2"][1]


def test_sysimage_lists_header_files(image):
    tree = build_tree(image)
    d = tree.resolve(SYSIMAGE_DIR)
    assert d.names == sorted(f"{s.pkgid}.rpm" for s in image)
    for s in image:
        node = tree.resolve(f"{SYSIMAGE_DIR}/{s.pkgid}.rpm")
        data = s.header_path.read_bytes()
        assert node.mode == stat.S_IFREG | 0o644
        assert node.size == len(data)
        assert node.digest == hashlib.sha256(data).hexdigest()
        assert tree.backing_dirs[node.backing] == s.header_path.parent
        assert node.relpath == s.header_path.name


def test_stable_inodes_and_entry_ids(image, rpm_packages):
    first = {p: n.inode for p, n in build_tree(image).walk()}
    second = {p: n.inode for p, n in build_tree(image).walk()}
    assert first == second
    tree = build_tree(image)
    for _, node in tree.walk():
        if node.is_dir:
            assert node.ids == sorted(node.ids) and len(set(node.ids)) == len(node.ids)
            # Resuming after any entry id gives exactly the rest.
            for i, eid in enumerate(node.ids):
                rest = [name for name, _, _ in tree.entries_after(node, eid)]
                assert rest == node.names[i + 1:]
    # Every inode number maps back to its node.
    for _, node in tree.walk():
        assert tree.node(node.inode) is node


def test_conflict_names_both_packages(rpm_packages):
    a = source(rpm_packages("ca", files=[FileSpec("/usr/share/x", content=b"one\n")]))
    b = source(rpm_packages("cb", files=[FileSpec("/usr/share/x", content=b"two\n")]))
    with pytest.raises(TreeConflict, match=r"/usr/share/x.*ca-1\.0-1\.noarch.*cb-1\.0-1\.noarch.*digest"):
        build_tree([a, b])


def test_identical_file_in_two_packages_is_fine(rpm_packages):
    spec = FileSpec("/usr/share/same", content=b"same\n")
    a = source(rpm_packages("sa", files=[spec]))
    b = source(rpm_packages("sb", files=[spec]))
    tree = build_tree([a, b])
    assert tree.package_of(tree.resolve("share/same")) == "sa-1.0-1.noarch"


def test_mode_conflict(rpm_packages):
    a = source(rpm_packages("ma", files=[FileSpec("/usr/share/m", content=b"m\n", mode=0o644)]))
    b = source(rpm_packages("mb", files=[FileSpec("/usr/share/m", content=b"m\n", mode=0o755)]))
    with pytest.raises(TreeConflict, match="mode 0644 vs 0755"):
        build_tree([a, b])


def test_file_versus_directory_conflict(rpm_packages):
    a = source(rpm_packages("fa", files=[FileSpec("/usr/share/fd", content=b"file\n")]))
    b = source(rpm_packages("fb", files=[FileSpec("/usr/share/fd/inner", content=b"x\n")]))
    with pytest.raises(TreeConflict, match="fa-1.0-1.noarch"):
        build_tree([a, b])
    with pytest.raises(TreeConflict, match="fb-1.0-1.noarch"):
        build_tree([b, a])


def test_unknown_owner_becomes_root_without_setuid(rpm_packages, expect_logs):
    pkg = source(rpm_packages("owners", files=[
        FileSpec("/usr/bin/odd", content=b"odd\n", mode=0o4755, user="nosuchuser-uv", group="nosuchgroup-uv"),
        FileSpec("/usr/bin/daemonish", content=b"d\n", user="daemon", group="daemon"),
    ]))
    with expect_logs(r"nosuchgroup-uv, nosuchuser-uv", level=logging.WARNING):
        tree = build_tree([pkg])
    odd = tree.resolve("bin/odd")
    assert (odd.uid, odd.gid) == (0, 0)
    assert odd.mode == stat.S_IFREG | 0o755
    import grp
    import pwd
    d = tree.resolve("bin/daemonish")
    assert (d.uid, d.gid) == (pwd.getpwnam("daemon").pw_uid, grp.getgrnam("daemon").gr_gid)
    assert tree.unknown_owners == {"nosuchuser-uv", "nosuchgroup-uv"}


def test_owners_resolve_in_the_tables_given(rpm_packages, tmp_path, expect_logs):
    """The initrd resolves owner names in the root file system's own /etc (its
    own /etc/passwd knows only root): the tables given, not this system's."""
    from verifier.fileio import OwnerIds

    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/bash\nuvowner:x:4321:4321::/:/bin/false\n")
    (tmp_path / "group").write_text("root:x:0:\nuvgroup:x:8765:\nbroken-line\n")
    pkg = source(rpm_packages("rootowners", files=[
        FileSpec("/usr/bin/shadowish", content=b"s\n", mode=0o2755, user="uvowner", group="uvgroup"),
        FileSpec("/usr/bin/daemonish", content=b"d\n", user="daemon", group="daemon"),
    ]))
    owners = OwnerIds.from_file(tmp_path / "passwd"), OwnerIds.from_file(tmp_path / "group")
    with expect_logs(r"daemon", level=logging.WARNING):
        tree = build_tree([pkg], owners=owners)
    s = tree.resolve("bin/shadowish")
    assert (s.uid, s.gid, stat.S_IMODE(s.mode)) == (4321, 8765, 0o2755)
    d = tree.resolve("bin/daemonish")  # known here, unknown to the tables given: root
    assert (d.uid, d.gid) == (0, 0)
    assert OwnerIds.from_file(tmp_path / "nosuch").get("root") is None


def test_memory_per_node_is_small():
    # Nodes use __slots__: no per-instance dict.
    from usrview.view.tree import Node
    assert not hasattr(Node(), "__dict__")


# -- the builder's fast paths must keep every rule --------------------------------

def crafted_package(tmp_path, paths: list[str], name: str = "crafted", *, mode: int = 0o100644):
    """A header-only package listing ``paths`` (OLDFILENAMES), written under tmp_path."""
    from tests import hdrbuild
    from verifier.tags import Tag, TagType
    entries = [
        (Tag.NAME, TagType.STRING, name), (Tag.VERSION, TagType.STRING, "1"),
        (Tag.RELEASE, TagType.STRING, "1"), (Tag.ARCH, TagType.STRING, "noarch"),
        (Tag.SOURCERPM, TagType.STRING, f"{name}-1-1.src.rpm"),
        (Tag.OLDFILENAMES, TagType.STRING_ARRAY, paths),
        (Tag.FILEMODES, TagType.INT16, [mode] * len(paths)),
        (Tag.FILESIZES, TagType.INT32, [1] * len(paths)),
        (Tag.FILEDIGESTS, TagType.STRING_ARRAY, ["ab" * 32] * len(paths)),
        (Tag.FILEDIGESTALGO, TagType.INT32, [8]),
    ]
    path = tmp_path / f"{name}.rpm"
    path.write_bytes(hdrbuild.build_package(hdrbuild.build_header(entries)))
    return source(path)


@pytest.mark.parametrize("bad", ["/usr/a/../b", "/usr/a//b", "/usr/./b", "/usr/a/..", "/usr/a/.",
                                 "/usr/../b"])
def test_unsafe_paths_refused_even_below_a_known_directory(tmp_path, bad):
    from usrview.view.tree import TreeError
    # /usr/a is known (and cached) before the unsafe path comes.
    pkg = crafted_package(tmp_path, ["/usr/a/ok", bad])
    with pytest.raises(TreeError, match="unsafe file path"):
        build_tree([pkg])


def test_file_below_a_file_of_another_package_conflicts_with_known_parent(tmp_path):
    first = crafted_package(tmp_path, ["/usr/a/x", "/usr/a/f"], "first")
    second = crafted_package(tmp_path, ["/usr/a/y", "/usr/a/f/inner"], "second")
    with pytest.raises(TreeConflict, match=r"/usr/a/f is a directory in second.*not in first"):
        build_tree([first, second])


def test_node_path_is_the_view_path(image):
    tree = build_tree(image)
    seen = set()
    for path, node in tree.walk():
        if node.inode in seen:  # a further name of a hardlink group
            continue
        seen.add(node.inode)
        assert node.path == path
        if node.is_reg and tree.package_of(node):
            assert node.relpath == "usr/" + path


def test_building_does_not_keep_the_file_lists(image):
    for s in image:
        assert s.package._files is None
    build_tree(image)
    # The tree does not need the parsed file lists afterwards; the packages do
    # not keep them either (only those with hardlinks, whose groups need them).
    assert image[1].package._files is None


def test_file_list_shares_owner_names(image):
    files = image[0].package.read_files()
    users = {id(f.user) for f in files if f.user == "root"}
    assert len(users) == 1
    assert image[0].package._files is None
    assert image[0].package.files == files


def test_build_view_restores_the_collector(monkeypatch):
    import gc

    from usrview.view import loader

    def boom(*args):
        assert not gc.isenabled()
        raise RuntimeError("load failed")

    monkeypatch.setattr(loader, "load_headers", boom)
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        loader.build_view(None, None, None)
    assert gc.isenabled()


def test_unsigned_header_with_an_import_error_is_refused(tmp_path):
    """load_headers parses each header once, leniently, for the signature check; an
    UNSIGNED header (allowed for a package imported unsigned) must still pass the
    import check the strict parse makes."""
    from datetime import UTC, datetime

    from tests import hdrbuild
    from usrview import images
    from usrview.errors import OperationalError
    from usrview.view.loader import load_headers
    from verifier.header import read_package
    from verifier.keyring import Keyring
    from verifier.tags import Tag, TagType

    main = bytearray(hdrbuild.build_header([
        (Tag.NAME, TagType.STRING, "pkg"), (Tag.VERSION, TagType.STRING, "1"),
        (Tag.RELEASE, TagType.STRING, "1"), (Tag.ARCH, TagType.STRING, "noarch"),
        (Tag.SOURCERPM, TagType.STRING, "pkg-1-1.src.rpm")]))
    i = main.index(b"pkg\0")
    main[i + 2] = 0  # "pk": the entries no longer fill the data store
    data = hdrbuild.build_package(bytes(main))
    package = read_package(data, strict=False)
    assert package.header.import_error
    pkgid = pkgid_for(package)

    class FakeStore:
        def header_path(self, pid):
            return tmp_path / f"{pid}.rpm"

        def unsigned_path(self, pid):
            return tmp_path / "unsigned" / pid

        def package_dir(self, pid):
            return tmp_path / "packages" / pid

        def read_header(self, pid):
            return self.header_path(pid).read_bytes()

    (tmp_path / "unsigned").mkdir()
    (tmp_path / "unsigned" / pkgid).touch()
    (tmp_path / f"{pkgid}.rpm").write_bytes(data)
    # a record as deploy --allow-unsigned makes it (the mount serves unsigned only what it lists so)
    image = images.Image(images.make_image_id([pkgid], datetime.now(UTC)), "", (pkgid,), (pkgid,))
    with pytest.raises(OperationalError, match="does not match its entries"):
        load_headers(FakeStore(), image, Keyring())


def test_release_free_memory_runs():
    # Best effort (glibc's malloc_trim); it must never fail a mount.
    from usrview.view.loader import release_free_memory
    release_free_memory()
