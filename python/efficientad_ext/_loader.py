"""Loading the compiled kernels, with a clear refusal when torch changed since the build."""

from __future__ import annotations

import importlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def _compiled_dir() -> Path:
    # The build record sits beside the compiled module. In a regular install that is this
    # package's folder; in an editable install (scikit-build-core) the compiled files stay in
    # site-packages while the Python sources are read from the checkout.
    spec = importlib.util.find_spec("efficientad_ext._C")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent
    return _PACKAGE_DIR


@lru_cache(maxsize=1)
def _build_config() -> dict[str, Any]:
    path = _compiled_dir() / "_build_config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ImportError(
            f"efficientad_ext's compiled kernels are missing ({path} not found). Install the "
            "package with `pip install .` (or `pip install --no-build-isolation .`) rather "
            "than importing it from the source tree."
        ) from None


def _same_release(built: str, running: str) -> bool:
    # A local label (+cpu, +cu130) is part of the ABI: compare the whole version string.
    return built == running


def load_library() -> None:
    """Import ``efficientad_ext._C`` (registering ``torch.ops.efficientad``) after checking
    that the running torch is the one the extension was compiled against."""
    config = _build_config()
    built = config["torch_version"]
    if not _same_release(built, torch.__version__):
        raise ImportError(
            f"efficientad_ext was compiled against torch {built}, but torch {torch.__version__} "
            "is installed. A C++ extension only loads into the exact torch it was built for. "
            "Rebuild it against the installed torch: "
            "`pip install --no-build-isolation --force-reinstall --no-deps .`"
        )
    importlib.import_module("efficientad_ext._C")


def build_info() -> dict[str, Any]:
    """Facts about this build of the kernels.

    Returns a dict with ``torch_version`` (torch the kernels were compiled against),
    ``torch_cuda_version`` ("" for a CPU build of torch), ``cuda_kernels`` (whether CUDA
    kernels were compiled), ``cuda_archs`` (e.g. "80;90"), ``cuda_compiler``,
    ``cxx_compiler`` and ``build_type``; plus ``cuda_available`` (a usable GPU right now)
    and ``running_torch_version``.
    """
    info = dict(_build_config())
    info["running_torch_version"] = torch.__version__
    info["cuda_available"] = bool(info["cuda_kernels"]) and torch.cuda.is_available()
    return info
