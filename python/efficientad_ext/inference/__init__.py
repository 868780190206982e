"""The inference engine behind ``EfficientAD.infer`` (the paper's Algorithm 2); private.

- :mod:`.options`: :class:`InferenceOptions`, the one switchboard (``model.inference_options``);
- :mod:`.networks`: the one cache (cast networks, first layer, CPU plan, CUDA graphs) and its
  weight fingerprint;
- :mod:`.teacher_student`: the teacher's and student's first layers as one convolution;
- :mod:`.cpu_winograd` and :mod:`.winograd`: Winograd convolutions for CPU inference;
- :mod:`.cuda_graphs`: CUDA-graph capture and replay;
- :mod:`.engine`: :func:`infer`, which puts them together.

The model imports this package; nothing here imports the model at run time.
"""
from __future__ import annotations

from efficientad_ext.inference.engine import infer
from efficientad_ext.inference.networks import clear
from efficientad_ext.inference.options import InferenceOptions
from efficientad_ext.inference.result import InferenceResult

__all__ = ["InferenceOptions", "InferenceResult", "clear", "infer"]
