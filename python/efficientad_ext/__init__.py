"""efficientad_ext: EfficientAD (Batzner et al., WACV 2024) as fused PyTorch C++/CUDA ops.

Importing the package loads the compiled kernels, which registers the operators
``torch.ops.efficientad.*``; :mod:`efficientad_ext.ops` holds their typed wrappers and
:mod:`efficientad_ext.reference` their plain-PyTorch references. The functions of
:mod:`efficientad_ext.api` (``train``, ``evaluate``, ``distill``, ``load``, ``infer``) are
what the ``efficientad`` command line calls.
"""
from __future__ import annotations

from ._loader import build_info, load_library

load_library()

from . import ops, reference  # noqa: E402  (ops need the library loaded)
from ._inference import InferenceOptions  # noqa: E402
from .api import calibrate, distill, evaluate, export, infer, load, train  # noqa: E402
from .autoencoder import Autoencoder  # noqa: E402
from .formats.model_file import ModelFileError, load_model, save_model  # noqa: E402
from .model import DecisionThreshold, EfficientAD, InferenceResult, ModelConfig  # noqa: E402
from .pdn import PDN, PDN_ARCHITECTURES, build_pdn  # noqa: E402

__all__ = [
    "PDN",
    "PDN_ARCHITECTURES",
    "Autoencoder",
    "EfficientAD",
    "InferenceOptions",
    "InferenceResult",
    "DecisionThreshold",
    "calibrate",
    "export",
    "ModelConfig",
    "ModelFileError",
    "build_info",
    "build_pdn",
    "distill",
    "evaluate",
    "infer",
    "load",
    "load_model",
    "ops",
    "reference",
    "save_model",
    "train",
]
__version__ = "0.1.0"
