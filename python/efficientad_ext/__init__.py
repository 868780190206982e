"""efficientad_ext: EfficientAD (Batzner et al., WACV 2024) as fused PyTorch C++/CUDA ops.

Importing the package loads the compiled kernels, which registers the operators
``torch.ops.efficientad.*``; :mod:`efficientad_ext.ops` holds their typed wrappers and
:mod:`efficientad_ext.ops.reference` their plain-PyTorch references. The functions of
:mod:`efficientad_ext.api` (``train``, ``evaluate``, ``distill``, ``load``, ``infer``) are
what the ``efficientad`` command line calls.
"""

from __future__ import annotations

from efficientad_ext._loader import build_info, load_library
from efficientad_ext._version import __version__ as __version__

load_library()

from efficientad_ext import ops  # noqa: E402  (ops need the library loaded)
from efficientad_ext.api import calibrate, distill, evaluate, export, infer, load, serve, train  # noqa: E402
from efficientad_ext.formats.model_file import ModelFileError, load_model, save_model  # noqa: E402
from efficientad_ext.inference import InferenceOptions  # noqa: E402
from efficientad_ext.models.autoencoder import Autoencoder  # noqa: E402
from efficientad_ext.models.efficientad import (  # noqa: E402
    DecisionThreshold,
    EfficientAD,
    InferenceResult,
    ModelConfig,
)
from efficientad_ext.models.pdn import PDN, PDN_ARCHITECTURES, build_pdn  # noqa: E402
from efficientad_ext.ops import reference  # noqa: E402  (ops need the library loaded)

__all__ = [
    "PDN",
    "PDN_ARCHITECTURES",
    "Autoencoder",
    "EfficientAD",
    "InferenceOptions",
    "InferenceResult",
    "DecisionThreshold",
    "calibrate",
    "serve",
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
