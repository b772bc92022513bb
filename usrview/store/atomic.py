"""Writing a file atomically: a new temp file, fsync, rename over the old one.

:meth:`usrview.store.store.Store.atomic_write` writes by paths;
:meth:`~usrview.store.store.Store.atomic_write_beneath` by names beneath
directory fds only -- for the initrd's daemon, whose paths lead nowhere after
switch-root (the prefetch's record of opened files, docs/boot.md).
"""

from __future__ import annotations

import contextlib
import os
import time

#: A new file, made here and nowhere else: never through a symlink, never an existing one.
FILE_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


#: getrandom(2)'s GRND_INSECURE (Linux 5.6; not in the os module of 3.11): bytes of the
#: kernel's generator without waiting for it to be seeded.
GRND_INSECURE = getattr(os, "GRND_INSECURE", 0x0004)


def temp_token() -> str:
    """Eight hex digits that make a temp file's name unique (the file is created with
    O_EXCL: unique is what counts, not secret).  Never waits for the kernel's random
    pool, as os.urandom does until it is seeded: the daemon writes the boot state in the
    initrd, where that wait would have the kernel spend about a second of CPU generating
    entropy (docs/boot.md, "The kernel's entropy")."""
    try:
        return os.getrandom(4, GRND_INSECURE).hex()
    except OSError:  # a kernel before 5.6
        return f"{time.time_ns() & 0xFFFFFFFF:08x}"


def write_and_rename(tmp, dst, data: bytes, mode: int, tmp_dir_fd: int | None = None,
                     dst_dir_fd: int | None = None) -> None:
    """Write ``data`` to the new file ``tmp``, fsync it, rename it to ``dst`` (each
    name beneath its directory fd when given); ``tmp`` is removed on any failure."""
    try:
        fd = os.open(tmp, FILE_CREATE_FLAGS, mode, dir_fd=tmp_dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, dst, src_dir_fd=tmp_dir_fd, dst_dir_fd=dst_dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=tmp_dir_fd)
        raise
