"""Atomic file writes: a crash or SIGKILL leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Union


def atomic_write(path: str, content: Union[bytes, Callable[[BinaryIO], None]], suffix: str = "") -> None:
    """Write ``content`` (bytes, or a function that writes to a binary handle) to ``path`` atomically.

    The data go to a temporary file in the same directory, are fsynced, and the file is renamed over ``path``.
    The file gets the permissions of an ordinary new file (umask applied), not mkstemp's 0600.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
