"""usrview.boot.codecache: the code that imports generate, compiled when the initrd is
made and read at boot instead of compiled again (docs/boot.md)."""

import builtins
import collections
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from usrview.boot import codecache

REPO = Path(__file__).resolve().parents[1]

#: A module that generates code as the daemon's imports do: dataclasses (frozen,
#: with defaults and a factory), attrs classes, namedtuples, forward references,
#: and a caller with `from __future__ import annotations` compiling a snippet.
MODULE = '''
from __future__ import annotations

import collections
import dataclasses
import typing

import attrs


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 2
    tags: tuple = dataclasses.field(default_factory=tuple)


@dataclasses.dataclass(order=True)
class Job:
    name: str
    weight: float = 1.0


@attrs.define
class Task:
    name: str
    tries: int = 3


Pair = collections.namedtuple("Pair", "left right")
Ref = typing.List["Point"]
FUTURE_SNIPPET = compile("def f(x: Unknown) -> Missing: return x", "<snippet>", "exec")
'''

#: Imports the module under the cache (record: None, or a file), and reports.
CHILD = '''
import json, sys, typing
from usrview.boot import codecache
path = sys.argv[1]
cache = codecache.start(None if path == "record" else path)
import genmod
if cache is not None:
    codecache.stop()
    if path == "record":
        cache.save(sys.argv[2])
p = genmod.Point(1, tags=("a",))
ns = {}
exec(genmod.FUTURE_SNIPPET, ns)
print(json.dumps({
    "hits": cache.hits if cache else None, "misses": cache.misses if cache else None,
    "refused": codecache.refused,
    "point": repr(p), "equal": p == genmod.Point(1, 2, ("a",)), "hash": hash(genmod.Point(3)) == hash(genmod.Point(3)),
    "job_order": genmod.Job("a") < genmod.Job("b"), "task": repr(genmod.Task("t")),
    "pair": repr(genmod.Pair(1, 2)), "ref": repr(typing.get_args(genmod.Ref)),
    "future_annotations": ns["f"].__annotations__,
}))
'''


def run_child(tmp_path: Path, *args: str) -> dict:
    (tmp_path / "genmod.py").write_text(MODULE)
    (tmp_path / "child.py").write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), *sys.path[1:]]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-S", str(tmp_path / "child.py"), *args], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_recorded_code_is_read_back_and_behaves_as_compiled(tmp_path):
    cache_file = tmp_path / "generated"
    recorded = run_child(tmp_path, "record", str(cache_file))
    assert recorded["misses"] > 10 and recorded["hits"] == 0
    replayed = run_child(tmp_path, str(cache_file))
    plain = run_child(tmp_path, "-")
    # every snippet is found but attrs' hash-seeded ones (their source holds the hash of
    # a generated name, which changes per process); and nothing behaves otherwise
    seeded = sum(1 for source, filename, _, _ in codecache.load(cache_file)
                 if filename.startswith("<attrs generated") and "hash((" in source)
    assert replayed["hits"] >= recorded["misses"] - seeded and replayed["hits"] > 20, (replayed, seeded)
    assert replayed["refused"] is None
    for key in ("point", "equal", "hash", "job_order", "task", "pair", "ref", "future_annotations"):
        assert replayed[key] == plain[key] == recorded[key], key
    # the snippet compiled by a caller with `from __future__ import annotations` kept
    # its annotations as strings, as compile() itself gives that caller
    assert replayed["future_annotations"] == {"x": "Unknown", "return": "Missing"}


def test_cached_code_objects_equal_a_fresh_compile(tmp_path):
    cache_file = tmp_path / "generated"
    run_child(tmp_path, "record", str(cache_file))
    codes = codecache.load(cache_file)
    assert isinstance(codes, dict) and len(codes) > 10
    for (source, filename, mode, flags), code in codes.items():
        assert code == compile(source, filename, mode, flags, dont_inherit=True), source


def test_compile_inherits_the_callers_future_flags(tmp_path):
    # compile() gives a snippet the __future__ flags of the code calling it: so must
    # the cache's compile, though it is another function, and the flags are part of the key.
    cache = codecache.CodeCache(recording=True)
    src = "def g(a: Nothing): pass\n"
    future = compile("from __future__ import annotations\nresult = compile_(src, '<s>', 'exec')\n", "<m>", "exec")
    plain = compile("result = compile_(src, '<s>', 'exec')\n", "<m>", "exec")
    out_future, out_plain = {"compile_": cache.compile, "src": src}, {"compile_": cache.compile, "src": src}
    exec(future, out_future)
    exec(plain, out_plain)
    flag = __import__("__future__").annotations.compiler_flag
    assert out_future["result"].co_flags & flag and not out_plain["result"].co_flags & flag
    assert len(cache.codes) == 2  # two keys, one per set of flags
    ns = {}
    exec(out_future["result"], ns)
    assert ns["g"].__annotations__ == {"a": "Nothing"}
    with pytest.raises(NameError):
        exec(out_plain["result"], {})


def test_stop_puts_the_builtins_back():
    cache = codecache.start()
    try:
        assert builtins.compile == cache.compile
        assert dataclasses.exec == cache.exec and collections.eval == cache.eval
    finally:
        assert codecache.stop() is cache
    assert builtins.compile is codecache._real_compile
    assert "exec" not in vars(dataclasses) and "eval" not in vars(collections)
    assert codecache.stop() is None


@pytest.mark.parametrize("content, reason", [
    (None, "No such file"),
    (b"usrview-generated-code 1\n\x00\x00\x0d\x0a" + b"x" * 10, "not generated code of this interpreter"),
    (b"something else entirely", "not generated code of this interpreter"),
    ("truncated", "does not decode"),
])
def test_a_file_that_cannot_be_used_is_refused_and_nothing_changes(tmp_path, content, reason):
    path = tmp_path / "generated"
    if content == "truncated":
        cache = codecache.CodeCache(recording=True)
        cache.compile("x = 1", "<t>", "exec")
        cache.save(path)
        path.write_bytes(path.read_bytes()[:-5])
    elif content is not None:
        path.write_bytes(content)
    try:
        assert codecache.start(path) is None
        assert reason in codecache.refused
        assert builtins.compile is codecache._real_compile and "exec" not in vars(dataclasses)
        assert codecache.summary(None).startswith("generated code compiled at start (")
    finally:
        codecache.refused = None


def test_the_usrview_command_starts_with_a_cache_and_with_a_broken_one(tmp_path):
    good = tmp_path / "good"
    run_child(tmp_path, "record", str(good))
    (tmp_path / "broken").write_bytes(b"usrview-generated-code 1\nrubbish")
    for path in (good, tmp_path / "broken"):
        r = subprocess.run([sys.executable, "-S", "-m", "usrview.cli", "--help"], capture_output=True, text=True,
                           env={**os.environ, "USRVIEW_CODE_CACHE": str(path),
                                "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path[1:]])}, cwd="/", timeout=120)
        assert r.returncode == 0 and "usage" in r.stdout, r.stderr


def test_the_dracut_listing_records_the_daemons_generated_code(tmp_path):
    # usrview-runtime.py's child imports what the daemon imports and writes the cache
    # the initrd's unit names (USRVIEW_CODE_CACHE); most of it is dataclasses' and attrs'.
    out = tmp_path / "usrview-generated-code"
    script = REPO / "systemd/dracut/90usrview/usrview-runtime.py"
    r = subprocess.run([sys.executable, str(script), f"--code-cache={out}"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}, cwd="/",
                       timeout=300)
    assert r.returncode == 0, r.stderr
    codes = codecache.load(out)
    assert isinstance(codes, dict), codes
    filenames = collections.Counter(filename.split(" ")[1] if filename.startswith("<attrs") else filename
                                    for _, filename, _, _ in codes)
    assert len(codes) > 200 and filenames["<string>"] > 100 and filenames["generated"] > 30, filenames
    unit = (REPO / "systemd/dracut/90usrview/usrview-sysroot-usr.service").read_text()
    assert "USRVIEW_CODE_CACHE=@SITE@/usrview-generated-code" in unit
    setup = (REPO / "systemd/dracut/90usrview/module-setup.sh").read_text()
    assert '--code-cache="$initdir$site/usrview-generated-code"' in setup
