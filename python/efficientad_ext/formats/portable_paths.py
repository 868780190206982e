"""Paths in files that leave the machine: relative, never the build machine's absolute layout.

A model or teacher file is handed on (to a factory, with a package): its metadata records how
it was made (the data folder, the command, the teacher file), and an absolute path there names
the maker's machine (``/home/alice/...``) and means nothing on any other. So every absolute
path in a record is rewritten, when the file is written, to

- its path relative to the working directory, when that climbs at most
  :data:`MAX_PARENT_STEPS` levels (``data/hazelnut``, ``../shared/data/imagenet-samples``);
- else its last :data:`KEPT_COMPONENTS` components (``data/imagenet-samples``): the folder's
  own name says what was used; where it lay on that machine does not travel.

Relative paths are kept as given. Only the files' metadata is rewritten: ``training.json`` and
``distill.json`` stay on the machine that made them and keep the paths as given, and so does
the training state that ``--resume`` compares.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

MAX_PARENT_STEPS = 2
KEPT_COMPONENTS = 2


def _is_absolute(text: str) -> bool:
    # Both spellings: a file made on one system may be re-saved on another.
    return PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()


def portable_path(path: str, cwd: str | None = None) -> str:
    """``path`` as a file's metadata records it (module docstring); relative paths unchanged."""
    if not _is_absolute(path):
        return path
    cwd = os.getcwd() if cwd is None else cwd
    rel = None
    if os.path.isabs(path):  # a path of this system; another system's has no relative form here
        try:
            rel = os.path.relpath(path, cwd)
        except ValueError:  # another drive on Windows: no relative path exists
            pass
    if rel is not None and not _is_absolute(rel):
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        if sum(p == ".." for p in parts) <= MAX_PARENT_STEPS:
            return rel
    pure = PureWindowsPath(path) if PureWindowsPath(path).drive else PurePosixPath(path)
    kept = list(pure.parts[1:])[-KEPT_COMPONENTS:]  # parts[0] is the root or drive
    return "/".join(kept) if kept else "."


def _portable_token(token: str, cwd: str) -> str:
    # "--out=/abs/dir" keeps its option name; a bare absolute path is rewritten whole.
    name, sep, value = token.partition("=")
    if sep and name.startswith("-") and _is_absolute(value):
        return f"{name}={portable_path(value, cwd)}"
    return portable_path(token, cwd)  # a relative word (or no path at all) comes back unchanged


def portable_text(text: str, cwd: str | None = None) -> str:
    """``text`` with each whitespace-separated absolute path made portable (commands, and
    descriptions such as ``/abs/teacher.safetensors (sha256 ...)``). A path with spaces in
    it is seen as several words; only its words that are absolute paths are rewritten."""
    cwd = os.getcwd() if cwd is None else cwd
    # split(" ") keeps runs of spaces as empty words, so the join gives the text back unchanged
    # wherever nothing was rewritten.
    return " ".join(_portable_token(t, cwd) for t in text.split(" "))


def portable_record(value: Any, cwd: str | None = None) -> Any:
    """A JSON-able value (dicts, lists, tuples, strings, numbers) with every string made
    portable by :func:`portable_text`; keys are kept. Returns a new value."""
    cwd = os.getcwd() if cwd is None else cwd
    if isinstance(value, str):
        return portable_text(value, cwd)
    if isinstance(value, dict):
        return {k: portable_record(v, cwd) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_record(v, cwd) for v in value]
    return value
