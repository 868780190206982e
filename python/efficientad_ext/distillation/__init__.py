"""Teacher distillation, the paper's Algorithm 3 (:func:`distill`; the steps in :mod:`.distiller`'s docstring).

- :mod:`.config`: :class:`DistillConfig` and the run's record; :mod:`.extractors`: Psi, the
  pretrained feature extractors and their projection;
- :mod:`.targets`: Psi's moments and standardised features; :mod:`.step`: one step and the
  held-out loss;
- :mod:`.run_setup`: a run's setup, resume and target cache; :mod:`.distiller`: the loop and
  :func:`distill`, which puts them together.
"""

from __future__ import annotations

from efficientad_ext.distillation.config import CROP_MARGIN_CELLS, PDN_STRIDE, DistillConfig, DistillRecord
from efficientad_ext.distillation.distiller import distill
from efficientad_ext.distillation.step import DistillStep, crop_valid_mask
from efficientad_ext.distillation.targets import DistillTargets

__all__ = [
    "CROP_MARGIN_CELLS",
    "PDN_STRIDE",
    "DistillConfig",
    "DistillRecord",
    "DistillStep",
    "DistillTargets",
    "crop_valid_mask",
    "distill",
]
