"""Removing the temporary files an interrupted run left behind.

Every file we write goes through a temporary file beside its target (``files.write_atomically``,
``visualize.save_png_atomic``), named by ``tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")``:
``.<name>.<8 characters>.tmp``. A run killed with SIGKILL cannot remove its own, so a run
that starts in a folder removes the ones a previous run left there.

Only names of exactly that form whose ``<name>`` ends in an extension we write
(:data:`OUR_EXTENSIONS`) are removed, only regular files, and only in the folders the caller
names (never recursively into arbitrary trees). A folder is owned by one run at a time: a
second run writing into the same folder at the same moment is not supported.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("efficientad_ext.stale_files")

OUR_EXTENSIONS = (".safetensors", ".json", ".csv", ".png")
# mkstemp's random part: 8 characters of [a-z0-9_].
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def is_our_temp_file(name: str) -> bool:
    """Whether a file name is one of our atomic writes' temporary files."""
    m = _TEMP_RE.match(name)
    return bool(m) and m.group("name").lower().endswith(OUR_EXTENSIONS)


def remove_stale_temp_files(folders: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Removes our temporary files directly inside each of ``folders`` (missing folders are
    skipped); returns the paths removed and logs them as one warning."""
    removed: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if is_our_temp_file(entry.name) and entry.is_file(follow_symlinks=False):
                path = Path(entry.path)
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(path)
    if removed:
        shown = ", ".join(str(p) for p in removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        log.warning("removed %d temporary files left by an interrupted run: %s", len(removed), shown)
    return removed


def subfolders(folder: str | os.PathLike[str]) -> list[Path]:
    """``folder``'s immediate subfolders (for outputs grouped one level deep, e.g. eval's
    ``images/<defect type>/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
