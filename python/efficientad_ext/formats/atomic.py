"""Atomic file writes: a failed or interrupted write never replaces or truncates a good file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp_path)`` for a temporary file beside ``path`` (same filesystem), fsyncs
    it and renames it over ``path``. On any error the temporary file is removed and ``path``
    is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would (0666 & ~umask).
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


# Read once, at import: setting the umask to read it is process-wide, so doing it per write
# would race with files other threads create meanwhile. A umask the process changes after
# importing this module is not seen (the files then get the import-time permissions).
_UMASK = _read_umask()


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text))
