"""Replace a small file all at once: readers see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os

FILE_MODE = 0o640


def replace_file(path: str, data: bytes, *, durable: bool = True, mode: int = FILE_MODE) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``.

    ``durable`` fsyncs the data before the rename and the directory after it,
    so after power loss the file holds the old or the new content (without
    it, only a crash of the process is covered: cheaper for data rewritten
    every second anyway).  Raises OSError.
    """
    directory = os.path.dirname(path) or "."
    temporary = f"{path}.tmp{os.getpid()}"
    # A stale (or planted) file or symlink under the temporary name is removed, never followed.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    os.close(fd)
    try:
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
