"""efficientad_ext: EfficientAD (Batzner et al., WACV 2024) as fused PyTorch C++/CUDA ops.

Importing the package loads the compiled kernels, which registers the operators
``torch.ops.efficientad.*``; :mod:`efficientad_ext.ops` holds their typed wrappers and
:mod:`efficientad_ext.reference` their plain-PyTorch references.
"""
from __future__ import annotations

from ._loader import build_info, load_library

load_library()

from . import ops, reference  # noqa: E402  (ops need the library loaded)
from .api import infer, load  # noqa: E402
from .autoencoder import Autoencoder  # noqa: E402
from .checkpoint import ModelFileError, load_model, save_model  # noqa: E402
from .model import EfficientAD, InferenceResult, ModelConfig  # noqa: E402
from .pdn import PDN, PDN_ARCHITECTURES, build_pdn  # noqa: E402

__all__ = [
    "PDN",
    "PDN_ARCHITECTURES",
    "Autoencoder",
    "EfficientAD",
    "InferenceResult",
    "ModelConfig",
    "ModelFileError",
    "build_info",
    "build_pdn",
    "infer",
    "load",
    "load_model",
    "ops",
    "reference",
    "save_model",
]
__version__ = "0.1.0"
