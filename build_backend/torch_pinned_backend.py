"""PEP 517 backend: scikit-build-core, with torch pinned to the target environment's release.

Why: an isolated build (`pip install .` without `--no-build-isolation`) installs its own
build requirements into a throw-away prefix. If that prefix got a different torch than the
one that later imports the extension, the import fails with an `undefined symbol`. This
backend looks up the torch installed where the package is going (`sysconfig`'s purelib of
the running interpreter; pip keeps the interpreter and hides only its site-packages) and
requires exactly that release for the build. With no torch installed it requires any torch;
`efficientad_ext/__init__.py` then still refuses a mismatch with a clear message.
"""
from __future__ import annotations

import sysconfig
from importlib import metadata

from scikit_build_core import build as _skbuild
from scikit_build_core.build import *  # noqa: F401,F403  (re-export every PEP 517 hook)


def _target_torch_requirement() -> str:
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    for dist in metadata.distributions(path=sorted(paths)):
        if (dist.metadata["Name"] or "").lower() == "torch":
            return f"torch=={dist.version}"
    return "torch"


def get_requires_for_build_wheel(config_settings=None):
    return [*_skbuild.get_requires_for_build_wheel(config_settings), _target_torch_requirement()]


def get_requires_for_build_editable(config_settings=None):
    return [*_skbuild.get_requires_for_build_editable(config_settings), _target_torch_requirement()]
