"""Generated code compiled ahead, for the initrd's daemon (docs/boot.md).

Importing the daemon's modules defines about 35 dataclasses and, inside trio,
about 66 attrs classes: each writes the source of its ``__init__``, ``__repr__``,
``__eq__``... and compiles it (dataclasses through ``exec`` of a string, attrs
through ``compile``), namedtuple through ``eval``, and typing compiles the
strings of forward references.  About 320 snippets, compiled anew at every
start: a large part of the daemon's start under an emulated CPU, where the
start is on the boot's critical path.

The dracut module records them once, when it builds the initrd (the child of
``usrview-runtime.py`` imports what the daemon imports with :func:`start`
recording, and :meth:`CodeCache.save` writes them), and the initrd's unit names
the file in ``USRVIEW_CODE_CACHE``: ``python -m usrview.cli`` then starts with
:func:`start` reading it, and the same ``compile``, ``exec`` and ``eval`` calls
find their code objects there instead of compiling.  :func:`stop` puts the
built-ins back once the daemon's imports are done.

A code object is taken from the file only for exactly the same source, file
name, mode and compiler flags (the caller's ``__future__`` flags included, as
``compile`` inherits them): what it returns is what ``compile`` would have
returned, as a ``.pyc`` file holds what compiling its module would.  The file
comes with the initrd's modules and is trusted as they are; one written by
another interpreter (another bytecode magic) or not readable is not used, and
everything is then compiled as usual.

No ``from __future__ import annotations`` here: this module's own future flags
would be inherited by the strings it compiles.
"""

import __future__

import _frozen_importlib_external
import builtins
import marshal
import os
import sys

#: First line of the file; then the interpreter's bytecode magic, then marshal data.
HEADER = b"usrview-generated-code 1\n"
#: The compiler flags a caller's __future__ imports give compile(), exec() and eval().
FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    if _name != "nested_scopes":
        FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag
#: At most this much is read (the daemon's snippets take about 400 KB).
MAX_BYTES = 16 << 20

_real_compile = builtins.compile
_real_exec = builtins.exec
_real_eval = builtins.eval


def _inherited(depth):
    """The __future__ flags of the code ``depth`` frames up (the caller's caller...)."""
    return sys._getframe(depth + 1).f_code.co_flags & FUTURE_FLAGS


def _namespaces(globals, locals):
    """exec's and eval's namespaces as the built-ins take them: the caller's (two
    frames up, past the wrapper) when ``globals`` is None."""
    if globals is None:
        caller = sys._getframe(2)
        return caller.f_globals, caller.f_locals if locals is None else locals
    return globals, locals


class CodeCache:
    """Code objects by (source, file name, mode, flags); ``recording`` adds what it
    compiles.  hits: compilations answered from it; misses: compiled."""

    def __init__(self, codes=None, recording=False):
        self.codes = {} if codes is None else codes
        self.recording = recording
        self.hits = 0
        self.misses = 0

    def lookup(self, source, filename, mode, flags, optimize=-1):
        if not isinstance(source, str) or optimize != -1 or flags & ~FUTURE_FLAGS:
            return _real_compile(source, filename, mode, flags, True, optimize)
        key = (source, filename, mode, flags)
        code = self.codes.get(key)
        if code is not None:
            self.hits += 1
            return code
        self.misses += 1
        code = _real_compile(source, filename, mode, flags, True)
        if self.recording:
            self.codes[key] = code
        return code

    def compile(self, source, filename, mode, flags=0, dont_inherit=False, optimize=-1, **kwargs):
        """builtins.compile's place while installed."""
        if kwargs:
            return _real_compile(source, filename, mode, flags | (0 if dont_inherit else _inherited(1)), True,
                                 optimize, **kwargs)
        return self.lookup(source, filename, mode, flags | (0 if dont_inherit else _inherited(1)), optimize)

    def exec(self, source, globals=None, locals=None, /, **kwargs):
        """exec of the modules given :func:`start`'s shadows; they pass their globals."""
        if isinstance(source, str):
            source = self.lookup(source, "<string>", "exec", _inherited(1))
        return _real_exec(source, *_namespaces(globals, locals), **kwargs)

    def eval(self, source, globals=None, locals=None, /):
        if isinstance(source, str):  # eval strips leading blanks before compiling
            source = self.lookup(source.lstrip(" \t"), "<string>", "eval", _inherited(1))
        return _real_eval(source, *_namespaces(globals, locals))

    def save(self, path):
        """Write the recorded code objects to ``path`` (a temporary file, then renamed)."""
        data = HEADER + _frozen_importlib_external.MAGIC_NUMBER + marshal.dumps(
            [(*key, code) for key, code in self.codes.items()])
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def load(path):
    """The code objects of the file at ``path``, or a reason why not (a str)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    magic = _frozen_importlib_external.MAGIC_NUMBER
    if len(data) > MAX_BYTES:
        return f"{path}: larger than {MAX_BYTES} bytes"
    if not data.startswith(HEADER + magic):
        return f"{path}: not generated code of this interpreter"
    try:
        rows = marshal.loads(data[len(HEADER) + len(magic):])
        return {(source, filename, mode, flags): code for source, filename, mode, flags, code in rows}
    except (EOFError, ValueError, TypeError) as e:
        return f"{path}: does not decode ({e})"


#: The installed cache (None when none is).
active = None
#: Why the file named was not used (None when it was, or none was named).
refused = None


def start(path=None):
    """Answer compile(), and exec() and eval() of dataclasses and namedtuple, from
    the file at ``path`` (recording what they compile when ``path`` is None); the
    cache, or None (and :data:`refused` says why) when the file is not usable."""
    global active, refused
    import collections
    import dataclasses

    if path is None:
        cache = CodeCache(recording=True)
    else:
        codes = load(path)
        if isinstance(codes, str):
            refused = codes
            return None
        cache = CodeCache(codes)
    builtins.compile = cache.compile
    dataclasses.exec = cache.exec  # a module global ahead of the built-in: dataclasses' own calls only
    collections.eval = cache.eval
    active = cache
    return cache


def stop():
    """Put compile, exec and eval back; the cache that was active, or None."""
    global active
    cache, active = active, None
    if cache is None:
        return None
    import collections
    import dataclasses

    builtins.compile = _real_compile
    for module, name in ((dataclasses, "exec"), (collections, "eval")):
        if module.__dict__.get(name) in (cache.exec, cache.eval):
            delattr(module, name)
    return cache


def summary(cache):
    """``generated code: 318 of 320 compiled ahead`` (for the console line of READY)."""
    if cache is None:
        return f"generated code compiled at start ({refused})" if refused else "generated code compiled at start"
    return f"generated code: {cache.hits} of {cache.hits + cache.misses} compiled ahead"
