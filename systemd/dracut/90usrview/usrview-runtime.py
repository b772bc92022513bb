"""List what the usrview daemon needs at run time, for usrview's dracut module.

Run by the interpreter that runs usrview (module-setup.sh finds it).  It imports
the usrview and verifier packages with every submodule, then prints one line per
file the initrd must hold, tab-separated:

    python  PATH          the interpreter binary (installed with its libraries)
    home    PATH          sys.base_prefix: PYTHONHOME of the daemon
    stdlib  PATH          a standard-library file, installed at the same path
    site    SRC  REL      a file of usrview, verifier or a package they import,
                          installed as SITE/REL (SITE is on the daemon's PYTHONPATH)

Packages are taken whole (every module and data file of an imported package,
without test suites), so that an import made later -- inside a function -- finds
its module too; the daemon must nonetheless have imported everything before it
reports READY=1: after switch-root the initrd's files are gone.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import sys
import sysconfig

#: Standard-library packages never needed by the daemon, left out even when a
#: module of the walk imports them.
SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
        "distutils", "__pycache__", "site-packages", "dist-packages"}
#: Always taken: codecs looked up by name at run time.
ALWAYS = ("encodings",)
#: Never taken from a package: sources of compiled modules, type stubs.
SKIP_SUFFIXES = (".c", ".h", ".pyx", ".pxd", ".pyi", ".cpp")
#: Modules of this process that are not the daemon's: this script, the hooks of
#: an editable install and of setuptools.
NOT_RUNTIME = ("__main__", "__mp_main__", "__editable__", "_distutils_hack")


def walk(package: str) -> None:
    mod = importlib.import_module(package)
    for info in pkgutil.walk_packages(mod.__path__, prefix=package + "."):
        if not info.name.endswith(".__main__"):  # taken with its package, not run
            importlib.import_module(info.name)


def files_under(top: str, loaded: set[str]):
    """The files of a package (or a module), without test suites, sources of
    compiled modules, or compiled modules nobody loaded (zstandard ships a C and a
    CFFI backend and loads one)."""
    if os.path.isfile(top):
        yield top
        return
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.endswith((".pyc", ".pyo")) and os.path.basename(dirpath) != "__pycache__":
                continue
            if name.endswith(SKIP_SUFFIXES) or (name.endswith(".so") and path not in loaded):
                continue
            yield path


def main() -> int:
    for package in ("usrview", "verifier"):
        walk(package)
    for name in ALWAYS:
        importlib.import_module(name)
    stdlib = os.path.realpath(sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix,
                                                                  "base": sys.base_prefix}))
    dynload = os.path.join(stdlib, "lib-dynload")
    here = os.path.dirname(os.path.realpath(__file__))
    site_dirs = sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
                       - {stdlib, dynload, here}, key=len, reverse=True)
    out: set[tuple[str, ...]] = set()
    tops: dict[str, str] = {}  # top-level name -> its file or directory
    modules = {name: mod for name, mod in sys.modules.items() if not name.startswith(NOT_RUNTIME)}
    loaded = {os.path.realpath(m.__file__) for m in modules.values() if getattr(m, "__file__", None)}
    for name, mod in modules.items():
        path = getattr(mod, "__file__", None)
        if not path:
            continue
        path = os.path.realpath(path)
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
    print(f"python\t{os.path.realpath(sys._base_executable)}")
    print(f"home\t{sys.base_prefix}")
    for row in sorted(out):
        print("\t".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
