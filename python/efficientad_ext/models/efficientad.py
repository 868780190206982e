"""The EfficientAD model: teacher, student, autoencoder and everything inference needs.

Inference (the paper's Algorithm 2) runs the PDNs through the fused ``pdn_forward`` op and
the maps through the fused ``anomaly_maps`` op; training (Algorithm 1, :mod:`efficientad_ext.training`) uses the
same modules as plain ``torch.nn``. Images are ImageNet-normalised once, before the three
networks (anomalib normalises inside each network: three times per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from efficientad_ext import inference as _inference
from efficientad_ext import ops
from efficientad_ext.inference import InferenceOptions, InferenceResult, batch_input
from efficientad_ext.models.autoencoder import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, Autoencoder
from efficientad_ext.models.imagenet import IMAGENET_MEAN, IMAGENET_STD
from efficientad_ext.models.pdn import PDN, PDN_ARCHITECTURES
from efficientad_ext.ops import reference

# Zero border added around the maps of unpadded PDNs (56x56 at 256x256) so that they align
# with the image: the padded PDN's output is 8 pixels larger in each direction.
UNPADDED_MAP_BORDER = 4


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the networks' shapes and the input convention."""

    arch: str = "small"
    padded: bool = False
    image_size: tuple[int, int] = (256, 256)
    teacher_channels: int = 384
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.arch not in PDN_ARCHITECTURES:
            raise ValueError(f"arch must be one of {PDN_ARCHITECTURES}, got {self.arch!r}")
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) < MIN_IMAGE_SIZE or max(size) > MAX_IMAGE_SIZE:
            raise ValueError(
                f"image_size must be (H, W) with both in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (the autoencoder's "
                f"minimum; the maximum bounds memory: about 1.3 GB per megapixel per image), got {self.image_size!r}"
            )
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingRecord:
    """What produced a model (stored with it)."""

    steps: int = 0
    teacher: str = "random initialisation"
    penalty_images: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DecisionThreshold:
    """The image-score threshold above which an image is anomalous, and how it was chosen
    (``method``: ``normal_holdout_fpr`` or ``f1_labelled``; ``details``: e.g. the target false
    positive rate and the image count). See :mod:`efficientad_ext.evaluation.threshold`."""

    value: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)


class EfficientAD(nn.Module):
    """Teacher PDN (frozen), student PDN (2x the teacher's channels), autoencoder, the teacher's
    per-channel mean/std and the four map-normalisation quantiles.

    ``inference_options`` (:class:`InferenceOptions`) chooses how :meth:`infer` runs."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config.teacher_channels
        self.teacher = PDN(self.config.arch, c, self.config.padded)
        self.student = PDN(self.config.arch, 2 * c, self.config.padded)
        self.autoencoder = Autoencoder(c)
        self.teacher.requires_grad_(False)
        self.register_buffer("teacher_mean", torch.zeros(c))
        self.register_buffer("teacher_std", torch.ones(c))
        # [q_st_a, q_st_b, q_ae_a, q_ae_b]; the identity-like default until calibrated.
        self.register_buffer("quantiles", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.register_buffer("image_mean", torch.tensor(self.config.image_mean).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(self.config.image_std).view(1, 3, 1, 1))
        self.calibrated = False
        self.threshold: DecisionThreshold | None = None  # the decision (train / calibrate set it)
        self.record = TrainingRecord()
        self.inference_options = InferenceOptions()

    # ------------------------------------------------------------------ geometry

    @property
    def feature_size(self) -> tuple[int, int]:
        """Spatial size of the PDN output for the configured image size."""
        return self.teacher.output_size(*self.config.image_size)

    @property
    def map_border(self) -> int:
        return 0 if self.config.padded else UNPADDED_MAP_BORDER

    @property
    def device(self) -> torch.device:
        return self.teacher_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.student.parameters()).dtype

    # ------------------------------------------------------------------ input

    def prepare(self, batch: Tensor | Sequence[Any]) -> tuple[Tensor, tuple[int, int]]:
        """Converts a batch to the normalised network input [B, 3, H, W] on the model's
        device and dtype, resized to ``config.image_size``. Returns it and the input's (H, W).

        Accepts a float tensor in [0, 1] (see :mod:`efficientad_ext.models.batch_input` for the
        tolerance) or a uint8 tensor, [B, 3, H, W] (uint8 also [B, H, W, 3] where that is the only reading)
        ([B, 1, H, W] / [B, H, W, 1] grayscale is replicated to RGB; a single image without
        the batch dimension is accepted too), or a list of PIL images or numpy arrays of one size.
        """
        return batch_input.prepare(self, batch)

    def normalize(self, x: Tensor) -> Tensor:
        """ImageNet normalisation of float images in [0, 1] (done once, before all networks)."""
        return (x - self.image_mean.to(x.dtype)) / self.image_std.to(x.dtype)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def infer(
        self,
        batch: Tensor | Sequence[Any],
        dtype: torch.dtype | str | None = None,
        cuda_graph: bool = True,
        branches: bool = False,
    ) -> InferenceResult:
        """Anomaly maps and image scores (Algorithm 2) for a batch of any size.

        Returns ``InferenceResult(anomaly_map [B, 1, H, W], score [B])`` at the input's
        resolution, in float32 (float64 when computing in float64), on the model's device,
        with ``is_anomalous`` [B] and ``normalized_score`` [B] (the threshold at 0.5) when the
        model has a decision threshold (``self.threshold``). No host synchronisation happens
        for tensors already on the model's device.

        ``dtype``: the networks' compute dtype (``torch.float32``, ``torch.bfloat16``, ...,
        or its name); ``None``: bfloat16 on a CUDA GPU that supports it (float32 models),
        else the model's dtype. Images are normalised in the model's dtype first; the weights
        are cast once and cached (:mod:`efficientad_ext.inference`); maps and scores are
        accumulated in float32 whatever the compute dtype. ``cuda_graph``: replay a CUDA graph
        captured for this batch shape when the batch is a tensor on the model's CUDA device;
        ``False`` always runs eagerly. ``branches``: also return the local and the global map
        each on its own (``result.branches``; eager, no CUDA graph).
        """
        result = _inference.infer(self, batch, dtype, cuda_graph, branches)
        if self.threshold is None:
            return result
        return InferenceResult(result.anomaly_map, result.score, self.threshold.value, result.branches)

    @torch.no_grad()
    def infer_each(self, images: Sequence[Any], dtype: torch.dtype | str | None = None) -> list[InferenceResult]:
        """:meth:`infer` for images of different sizes, batched: one ``InferenceResult`` per
        image (map [1, 1, H, W] at that image's size, score [1]), with the values ``infer``
        gives each image alone, while the networks run once on all of them (each image is
        resized to the model's size first, as ``infer`` does). For a service whose requests
        come in mixed sizes (``efficientad serve``). Eager (no CUDA graph)."""
        results = _inference.infer_each(self, images, dtype)
        if self.threshold is None:
            return results
        return [InferenceResult(r.anomaly_map, r.score, self.threshold.value) for r in results]

    @torch.no_grad()
    def raw_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The raw student-teacher and student-autoencoder maps of normalised inputs ``x``,
        padded and resized to ``config.image_size`` as in inference (for the quantiles)."""
        teacher = self.teacher.fused_forward(x)
        student = self.student.fused_forward(x)
        autoencoder = self.autoencoder(x, self.feature_size)
        maps = ops.anomaly_maps_raw(teacher, self.teacher_mean, self.teacher_std, student, autoencoder)
        return tuple(reference.pad_and_resize(m, self.map_border, self.config.image_size) for m in maps)

    def forward(self, batch: Tensor | Sequence[Any]) -> InferenceResult:  # noqa: D401
        """Same as :meth:`infer`."""
        return self.infer(batch)

    def reference_infer(self, batch: Tensor | Sequence[Any]) -> InferenceResult:
        """Algorithm 2 in plain torch.nn / reference ops (for tests and benchmarks)."""

        with torch.no_grad():
            x, in_size = self.prepare(batch)
            t, s = self.teacher(x), self.student(x)
            a = self.autoencoder(x, self.feature_size)
            anomaly_map, score = reference.anomaly_maps(
                t, self.teacher_mean, self.teacher_std, s, a, self.quantiles, in_size, self.map_border
            )
        return InferenceResult(anomaly_map, score)
