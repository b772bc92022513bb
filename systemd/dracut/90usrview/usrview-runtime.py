"""List what the usrview daemon needs at run time, for usrview's dracut module.

Run by the interpreter that runs usrview (module-setup.sh finds it).  A child
interpreter imports what ``usrview initrd-mount`` imports -- ``usrview.cli.main``
and ``usrview.boot.initrd.RUNTIME_IMPORTS`` -- and nothing else (this script's
own imports would add to it), and reports the modules it then holds.  With
``--code-cache=FILE`` it records the code those imports generate and compile
(dataclasses, attrs, namedtuple, forward references) into FILE, which the
initrd's daemon reads instead of compiling it again (usrview.boot.codecache).  Printed,
one line per file the initrd must hold, tab-separated:

    python  PATH          the interpreter binary (installed with its libraries)
    home    PATH          sys.base_prefix: PYTHONHOME of the daemon
    stdlib  PATH          a standard-library file, installed at the same path
    site    SRC  REL      a file of usrview, verifier or a package they import,
                          installed as SITE/REL (SITE is on the daemon's PYTHONPATH)

Packages are taken whole (every module and data file of an imported package,
without test suites), so that an import made later -- inside a function -- finds
its module too; the daemon must nonetheless have imported everything before it
reports READY=1: after switch-root the initrd's files are gone.  What the other
commands import (the bulk check, the repository client and its HTTP library,
the importer's decompressors, sqlite3, multiprocessing) stays out; with
``--all-commands`` every module of usrview and verifier is imported, and what
they import is taken too (usrview installed whole, as a package of the booted
system).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

#: Directories never taken from a package: test suites, bytecode (compiled anew
#: for the initrd's paths), the site directories of a standard library.
SKIP = {"test", "tests", "_tests", "testing", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
        "pydoc_data", "distutils", "__pycache__", "site-packages", "dist-packages"}
#: Always taken: codecs looked up by name at run time; what runs ``python -m``.
ALWAYS = ("encodings", "runpy")
#: Never taken from a package: sources of compiled modules, type stubs.
SKIP_SUFFIXES = (".c", ".h", ".pyx", ".pxd", ".pxi", ".pyi", ".cpp", ".typed")
#: Modules of the child that are not the daemon's: its own, the hooks of an
#: editable install and of setuptools.
NOT_RUNTIME = ("__main__", "__mp_main__", "__editable__", "_distutils_hack")

#: The child: import what the daemon imports, print {module: file} and the paths.
CHILD = """
import sys
code_cache = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--code-cache=")]
if code_cache:  # the generated code of the imports below, recorded (usrview.boot.codecache)
    from usrview.boot import codecache
    recorder = codecache.start()
import usrview.cli.main
from usrview.boot.initrd import RUNTIME_IMPORTS
for name in RUNTIME_IMPORTS + tuple(a for a in sys.argv[1:] if not a.startswith("-")):
    __import__(name)
if "--all-commands" in sys.argv:
    import importlib, pkgutil
    for package in ("usrview", "verifier"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, prefix=package + "."):
            if not info.name.endswith(".__main__"):
                importlib.import_module(info.name)
if code_cache:
    codecache.stop()
    recorder.save(code_cache[0])
import json, sysconfig
files = {n: m.__file__ for n, m in list(sys.modules.items()) if getattr(m, "__file__", None)}
print(json.dumps({"files": files, "path": sys.path, "base_prefix": sys.base_prefix,
                  "stdlib": sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix,
                                                                "base": sys.base_prefix}),
                  "executable": sys._base_executable}))
"""


def daemon_modules(all_commands: bool = False, code_cache: str | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *ALWAYS, *(["--all-commands"] if all_commands else []),
                          *([f"--code-cache={code_cache}"] if code_cache else [])],
                         check=True, capture_output=True, text=True, cwd="/").stdout
    return json.loads(out)


def files_under(top: str, loaded: set[str]):
    """The files of a package (or a module), without test suites, sources of
    compiled modules, bytecode, or compiled modules nobody loaded (zstandard
    ships a C and a CFFI backend and loads one)."""
    if os.path.isfile(top):
        yield top
        return
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.endswith((".pyc", ".pyo")) or name.endswith(SKIP_SUFFIXES):
                continue
            if name.endswith(".so") and path not in loaded:
                continue
            yield path


def main(argv: list[str]) -> int:
    code_cache = next((a.split("=", 1)[1] for a in argv if a.startswith("--code-cache=")), None)
    child = daemon_modules(all_commands="--all-commands" in argv, code_cache=code_cache)
    stdlib = os.path.realpath(child["stdlib"])
    dynload = os.path.join(stdlib, "lib-dynload")
    here = os.path.dirname(os.path.realpath(__file__))
    site_dirs = sorted({os.path.realpath(p) for p in child["path"] if p and os.path.isdir(p)}
                       - {stdlib, dynload, here, "/"}, key=len, reverse=True)
    out: set[tuple[str, ...]] = set()
    tops: dict[str, str] = {}  # top-level name -> its file or directory
    modules = {name: os.path.realpath(path) for name, path in child["files"].items()
               if not name.startswith(NOT_RUNTIME)}
    loaded = set(modules.values())
    for name, path in modules.items():
        top = name.split(".")[0]
        if path.startswith(stdlib + os.sep):
            rel = os.path.relpath(path, stdlib).split(os.sep)
            if rel[0] == "lib-dynload" or len(rel) == 1:
                out.add(("stdlib", path))
            else:
                tops.setdefault(top, os.path.join(stdlib, rel[0]))
            continue
        for site in site_dirs:
            if path.startswith(site + os.sep):
                rel = os.path.relpath(path, site).split(os.sep)
                tops.setdefault(top, os.path.join(site, rel[0]))
                break
    for top, where in sorted(tops.items()):
        if where.startswith(stdlib + os.sep):
            for f in files_under(where, loaded):
                out.add(("stdlib", f))
        else:
            site = os.path.dirname(where)
            for f in files_under(where, loaded):
                out.add(("site", f, os.path.relpath(f, site)))
    # metadata of the distributions taken (importlib.metadata reads it at run time)
    dist_tops = importlib.metadata.packages_distributions()
    for top, where in tops.items():
        if where.startswith(stdlib + os.sep):
            continue
        for dist_name in dist_tops.get(top, ()):
            dist = importlib.metadata.distribution(dist_name)
            info = getattr(dist, "_path", None)
            if info is not None and os.path.isdir(info):
                for f in files_under(str(info), loaded):
                    out.add(("site", f, os.path.relpath(f, os.path.dirname(str(info)))))
    for f in sorted(os.listdir(stdlib)):  # the site machinery and build-time config
        if f.startswith(("_sysconfigdata", "site.py", "sitecustomize", "os.py")):
            out.add(("stdlib", os.path.join(stdlib, f)))
    print(f"python\t{os.path.realpath(child['executable'])}")
    print(f"home\t{child['base_prefix']}")
    print(f"stdlibdir\t{stdlib}")
    for row in sorted(out):
        print("\t".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
