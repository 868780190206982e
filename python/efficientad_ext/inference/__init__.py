"""Inference: the engine behind ``EfficientAD.infer`` (the paper's Algorithm 2) and the
scoring of image folders.

- :mod:`.batch_input`: every batch form a user passes, made into the networks' input;
- :mod:`.options`: :class:`InferenceOptions`, the one switchboard (``model.inference_options``);
- :mod:`.networks`: the one cache (cast networks, first layer, CPU plan, CUDA graphs) and its
  weight fingerprint;
- :mod:`.teacher_student`: the teacher's and student's first layers as one convolution;
- :mod:`.cpu_winograd` and :mod:`.winograd`: Winograd convolutions for CPU inference;
- :mod:`.cuda_graphs`: CUDA-graph capture and replay;
- :mod:`.engine`: :func:`infer`, which puts them together, and :func:`infer_each` (mixed sizes, batched);
- :mod:`.folder` and :mod:`.sharded`: a folder of images scored into ``scores.csv`` and
  heatmaps, in one process or shared among the ranks of a process group.

The model (:mod:`efficientad_ext.models.efficientad`) calls the engine; the engine imports the
model only for type annotations. This ``__init__`` imports the engine alone: the folder modules
load models from files, so they are imported by their own names.
"""

from __future__ import annotations

from efficientad_ext.inference.engine import infer, infer_each
from efficientad_ext.inference.networks import clear
from efficientad_ext.inference.options import InferenceOptions
from efficientad_ext.inference.result import InferenceResult

__all__ = ["InferenceOptions", "InferenceResult", "clear", "infer", "infer_each"]
