"""Files that must never be seen half-written, nor by anyone but their owner: keys, caches, archives;
and the files a command line names (`read_input`).

One way to write them: a 0600 temporary file in the same directory, written and fsync'd, then
renamed over the target (or, for `exclusive`, hard-linked so an existing file always wins), and the
directory fsync'd so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kbs.errors import UsageError


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None], *, exclusive: bool = False) -> bool:
    """Write `data` (bytes, or a function that writes to the open file) to `path`, mode 0600.

    With `exclusive`, an existing `path` is left as it is and False is returned: replicas starting
    together agree on whichever file was linked first.
    """
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return True


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_input(path: str | Path, what: str) -> bytes:
    """A file a command line names; unreadable, it is a usage error (exit 2) saying which and why."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc
