"""Export Algorithm 2 to deployment runtimes: ONNX (onnxruntime, TensorRT, ...) and OpenVINO IR.

The exported graph is the whole of inference in standard operators, from the image to the
decision: ImageNet normalisation, the teacher, the student and the autoencoder, the two
channel-mean difference maps, the zero border of unpadded PDNs, the bilinear resize to the
image size, the quantile normalisation, the 0.5/0.5 combination and the image score (the
map's maximum); with the model's decision threshold also ``is_anomalous``.

- Input ``images``: float [B, 3, H, W] in [0, 1] at the model's image size (resize before; the
  batch dimension is dynamic).
- Outputs ``anomaly_map`` [B, 1, H, W] and ``score`` [B], float32 (a float16 export runs the
  networks in float16 and accumulates the maps in float32, as ``infer`` does), and
  ``is_anomalous`` (bool [B]) when the model has a threshold.

The graph is traced from the plain ``torch.nn`` reference of Algorithm 2
(:func:`efficientad_ext.ops.reference.anomaly_maps`), the same computation as the fused ops (tests
compare the exported files run in onnxruntime and OpenVINO with :meth:`EfficientAD.infer`).
Needs the optional packages ``onnx`` and ``onnxscript`` (``pip install ".[export]"``); the
OpenVINO format also ``openvino`` (it converts the ONNX graph).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from efficientad_ext.formats.atomic import write_atomically
from efficientad_ext.inference.result import decide
from efficientad_ext.models.efficientad import EfficientAD
from efficientad_ext.ops import reference

FORMATS = ("onnx", "openvino")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
OPSET = 18


class Algorithm2(nn.Module):
    """Inference (Algorithm 2) of an :class:`EfficientAD` in standard torch ops, for export."""

    def __init__(self, model: EfficientAD) -> None:
        super().__init__()
        if not model.calibrated:
            raise ValueError("the model's map quantiles are not calibrated (train it, or load a trained model file)")
        self.teacher, self.student, self.autoencoder = model.teacher, model.student, model.autoencoder
        for name in ("teacher_mean", "teacher_std", "quantiles", "image_mean", "image_std"):
            self.register_buffer(name, getattr(model, name).detach().clone())
        self.image_size = model.config.image_size
        self.feature_size = model.feature_size
        self.border = model.map_border
        self.threshold = None if model.threshold is None else model.threshold.value

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = (images - self.image_mean) / self.image_std
        t, s = self.teacher(x), self.student(x)
        a = self.autoencoder(x, self.feature_size)
        anomaly_map, score = reference.anomaly_maps(
            t, self.teacher_mean, self.teacher_std, s, a, self.quantiles, self.image_size, self.border
        )
        if self.threshold is None:
            return anomaly_map, score
        return anomaly_map, score, decide(score, self.threshold)


def _onnx_program(model: EfficientAD, dtype: torch.dtype):
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"exporting needs the packages onnx and onnxscript ({e.name} is missing): "
            "pip install onnx onnxscript (or the package's [export] extra)"
        ) from None
    module = Algorithm2(model).to("cpu", dtype).eval()
    # The statistics and quantiles stay float32 whatever the networks' dtype: the maps are
    # accumulated in float32, and q_b - q_a rounded to float16 would skew every normalised pixel.
    for name in ("teacher_mean", "teacher_std", "quantiles"):
        setattr(module, name, getattr(model, name).detach().to("cpu", torch.float32).clone())
    h, w = model.config.image_size
    example = torch.rand(2, 3, h, w, dtype=dtype)
    batch = torch.export.Dim("batch", min=1, max=4096)
    outputs = ["anomaly_map", "score"] + (["is_anomalous"] if module.threshold is not None else [])
    with torch.no_grad():
        return torch.onnx.export(
            module,
            (example,),
            input_names=["images"],
            output_names=outputs,
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )


def export_model(
    model: EfficientAD, out: str | os.PathLike[str], format: str = "onnx", dtype: str = "float32"
) -> list[Path]:
    """Writes ``model``'s inference graph to ``out`` (``format`` ``onnx``: one ``.onnx`` file;
    ``openvino``: ``out`` with ``.xml`` and its ``.bin``), each file atomically. Returns the
    written paths. ``dtype``: ``float32`` or ``float16`` (input, weights and activations; the
    maps and score are accumulated in float32)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    out = Path(out)
    program = _onnx_program(model, DTYPES[dtype])
    if format == "onnx":
        path = out if out.suffix == ".onnx" else out.with_suffix(".onnx")
        # One self-contained file (the weights inline: an EfficientAD-S is ~30 MB in float32).
        return [write_atomically(path, lambda tmp: program.save(str(tmp), external_data=False))]
    try:
        import openvino as ov
    except ImportError:
        raise ImportError("the openvino format needs the openvino package: pip install openvino") from None
    xml = out.with_suffix(".xml")
    with tempfile.TemporaryDirectory(dir=xml.parent if xml.parent.exists() else None) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        program.save(str(onnx_path), external_data=False)
        ov_model = ov.convert_model(str(onnx_path))
        staged = Path(tmp) / "model.xml"
        # compress_to_fp16=False: the requested dtype is what the graph holds, not a silent cast.
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        bin_path = xml.with_suffix(".bin")
        written = [
            write_atomically(bin_path, lambda t: Path(t).write_bytes(staged.with_suffix(".bin").read_bytes())),
            write_atomically(xml, lambda t: Path(t).write_bytes(staged.read_bytes())),
        ]
    return written
