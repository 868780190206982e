"""Moving models between anomalib 2.7.0's ``EfficientAdModel`` and ours.

anomalib's state dict (keys: :mod:`efficientad_ext.anomalib_layout`) holds the networks, the
teacher's channel mean/std and the map quantiles, but not the two things that fix the
geometry: whether the PDNs are padded (``padding``, default False) and the image size (its
pre-processor's resize, default 256x256). Both are arguments here; a Lightning checkpoint's
``hyper_parameters`` supply ``padding`` when they can be read without unpickling code.

Where the two implementations compute differently (details in ``tests/test_peers_anomalib.py``):

- anomalib ImageNet-normalises the image inside each of its three networks; we normalise it
  once before them. Same values up to float rounding.
- anomalib's ``pad_maps`` (default True) adds a 4-pixel zero border around the maps *whatever*
  ``padding`` is. We add it only to unpadded PDNs' maps (56x56 -> 64x64 at 256x256), where
  it aligns them with the image; a padded PDN's 64x64 map is already aligned, so anomalib's
  ``padding=True, pad_maps=True`` shrinks its maps by 4 x 4 px toward the centre and we do
  not. ``padding=False, pad_maps=False`` (maps not re-aligned) has no equivalent here.
  Both convert, with a warning; maps then differ by that misalignment.
- Unset statistics: anomalib skips the teacher standardisation while ``mean_std`` is all
  zeros and the map normalisation while ``quantiles`` are all zeros. The conversion
  reproduces that exactly (mean 0 / std 1; quantiles 0, 0.1, 0, 0.1, i.e. ``0.1 (m - 0) /
  0.1 = m``) and marks the model uncalibrated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from efficientad_ext.formats import anomalib_layout as layout
from efficientad_ext.formats.atomic import write_atomically
from efficientad_ext.formats.state_dict import tensor_mismatch
from efficientad_ext.models.efficientad import EfficientAD, ModelConfig, TrainingRecord
from efficientad_ext.models.imagenet import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

ANOMALIB_VERSION = "2.7.0"  # the layout below was read from this release
# Quantiles that make our normalisation 0.1 (m - qa) / (qb - qa) the identity: anomalib's
# behaviour while its quantiles are unset.
IDENTITY_QUANTILES = (0.0, 0.1, 0.0, 0.1)


class ConversionError(ValueError):
    """A state dict or file that is not the expected layout; the message names the key."""


def to_anomalib_state_dict(model: EfficientAD) -> dict[str, Tensor]:
    """Our model as a state dict that anomalib 2.7.0's ``EfficientAdModel(teacher_out_channels,
    model_size, padding=model.config.padded)`` loads with ``load_state_dict(strict=True)``.

    Tensors are detached copies on the CPU in the model's dtype. anomalib fixes the input
    normalisation to ImageNet's, so a model with another ``image_mean``/``image_std`` is refused.
    """
    config = model.config
    if config.image_mean != tuple(float(v) for v in IMAGENET_MEAN) or config.image_std != tuple(
        float(v) for v in IMAGENET_STD
    ):
        raise ConversionError(
            f"anomalib normalises images with ImageNet's mean/std; this model uses mean {config.image_mean}, std {config.image_std}"
        )
    std = model.teacher_std.detach()
    if not bool((std > 0).all()):
        raise ConversionError("teacher_std must be > 0 everywhere to convert (anomalib would divide by it)")
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in _anomalib_views(model).items()}


def _anomalib_views(model: EfficientAD) -> dict[str, Tensor]:
    """anomalib key -> our tensor (a view, on the model's device)."""
    config = model.config
    out: dict[str, Tensor] = {}
    for name in ("teacher", "student"):
        ours = getattr(model, name).state_dict()
        for theirs, key in layout.pdn_key_map(config.arch).items():
            out[f"{name}.{theirs}"] = ours[key]
    ours = model.autoencoder.state_dict()
    for theirs, key in layout.autoencoder_key_map().items():
        out[f"ae.{theirs}"] = ours[key]
    c = config.teacher_channels
    out["mean_std.mean"] = model.teacher_mean.reshape(1, c, 1, 1)
    out["mean_std.std"] = model.teacher_std.reshape(1, c, 1, 1)
    for i, key in enumerate(layout.QUANTILE_KEYS):
        out[f"quantiles.{key}"] = model.quantiles[i]
    return out


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The anomalib key -> shape table for ``config`` (from a model of ours built on the meta
    device: shapes only, no memory, no initialisation)."""
    with torch.device("meta"):
        model = EfficientAD(config)
    return {k: tuple(v.shape) for k, v in _anomalib_views(model).items()}


def _model_part(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The ``EfficientAdModel`` tensors of ``state``: the whole dict, or its ``model.*`` part when
    it is a Lightning module's state dict (whose other entries, e.g. the post-processor's
    thresholds, are not part of the networks and are left out)."""
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(f"state dict entries must be tensors; {bad[0]!r} is {type(state[bad[0]]).__name__}")
    return dict(state)


def detect_arch(state: Mapping[str, Tensor]) -> str:
    """``small`` or ``medium`` from the teacher's keys of an anomalib state dict."""
    teacher = {k[len("teacher.") :] for k in state if k.startswith("teacher.")}
    arch = layout.pdn_arch_of_keys(teacher)
    if arch is None:
        raise ConversionError(
            "not an anomalib EfficientAdModel state dict: its teacher.* keys "
            f"{sorted(teacher)[:8]} are neither conv1..conv4 (small) nor conv1..conv6 (medium) weights and biases"
        )
    return arch


def from_anomalib_state_dict(
    state: Mapping[str, Tensor], *, padded: bool = False, image_size: tuple[int, int] = (256, 256)
) -> EfficientAD:
    """Our model from anomalib 2.7.0's ``EfficientAdModel.state_dict()`` (or a Lightning
    ``EfficientAd`` module's, keys ``model.*``). The architecture and teacher channels come
    from the tensors; ``padded`` (anomalib's ``padding``) and ``image_size`` (its
    pre-processor's resize) are not stored there and must match how it was trained.

    Every key and shape is checked (:class:`ConversionError` names the first mismatch).
    Returns the model in eval mode, float32, on the CPU.
    """
    state = _model_part(state)
    arch = detect_arch(state)
    channels = state[f"teacher.conv{len(layout.PDN_CONV_INDICES[arch])}.weight"].shape[0]  # the last convolution's
    config = ModelConfig(arch=arch, padded=bool(padded), image_size=tuple(image_size), teacher_channels=int(channels))
    problem = tensor_mismatch(_expected_shapes(config), state)
    if problem is not None:
        raise ConversionError(
            f"not an anomalib {arch} EfficientAdModel state dict with {channels} teacher channels: {problem}"
        )
    model = EfficientAD(config)
    with torch.no_grad():
        for name in ("teacher", "student"):
            getattr(model, name).load_state_dict(
                {ours: state[f"{name}.{theirs}"].float() for theirs, ours in layout.pdn_key_map(arch).items()},
                strict=True,
            )
        model.autoencoder.load_state_dict(
            {ours: state[f"ae.{theirs}"].float() for theirs, ours in layout.autoencoder_key_map().items()}, strict=True
        )
        mean, std = state["mean_std.mean"].float().flatten(), state["mean_std.std"].float().flatten()
        # anomalib's "is set" test: any of the two sums non-zero.
        if float(mean.sum()) != 0 or float(std.sum()) != 0:
            if not bool((std > 0).all()):
                raise ConversionError("mean_std.std has entries <= 0: anomalib would divide by them")
            model.teacher_mean.copy_(mean)
            model.teacher_std.copy_(std)
        quantiles = torch.stack([state[f"quantiles.{k}"].float().reshape(()) for k in layout.QUANTILE_KEYS])
        calibrated = bool((quantiles != 0).any())
        if calibrated:
            for a, b in ((0, 1), (2, 3)):
                if float(quantiles[b]) == float(quantiles[a]):
                    raise ConversionError(
                        f"quantiles.{layout.QUANTILE_KEYS[a]} == quantiles.{layout.QUANTILE_KEYS[b]}: "
                        "anomalib would divide by zero normalising the maps"
                    )
            model.quantiles.copy_(quantiles)
        else:
            model.quantiles.copy_(torch.tensor(IDENTITY_QUANTILES))
    model.calibrated = calibrated
    model.record = TrainingRecord(
        teacher=f"converted from anomalib {ANOMALIB_VERSION} EfficientAdModel",
        extra={"converted_from": "anomalib", "anomalib_quantiles_set": calibrated},
    )
    return model.eval()


# ---------------------------------------------------------------------------------- files


@dataclass
class AnomalibFile:
    """A state dict read from an anomalib file, and the hyper-parameters stored with it."""

    state: dict[str, Tensor]
    hyper_parameters: dict[str, Any] = field(default_factory=dict)


def read_anomalib_file(path: str | os.PathLike[str]) -> AnomalibFile:
    """Reads ``torch.save(efficient_ad_model.state_dict())`` or a Lightning checkpoint
    (``{"state_dict": ..., "hyper_parameters": ...}``) with ``torch.load(weights_only=True)``
    (no pickled code runs), or a safetensors file of the state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"anomalib model file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return AnomalibFile(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for a bad or pickled file)
        raise ConversionError(
            f"{path} could not be read as a weights-only torch file ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "Lightning checkpoints whose hyper-parameters hold Python objects cannot be read without running their code: "
            "load it with anomalib and save `torch.save(lightning_model.model.state_dict(), 'efficientad.pth')`, then convert that"
        ) from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, expected a state dict")
    hyper = obj.get("hyper_parameters") if isinstance(obj.get("hyper_parameters"), dict) else {}
    if isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return AnomalibFile(dict(obj), dict(hyper))


def convert_anomalib_file(
    path: str | os.PathLike[str], *, padded: bool | None = None, image_size: tuple[int, int] = (256, 256)
) -> EfficientAD:
    """:func:`from_anomalib_state_dict` of a file. ``padded=None`` takes anomalib's ``padding``
    from the checkpoint's hyper-parameters, else anomalib's default (False). Logs a warning
    when anomalib's ``pad_maps`` (stored, else its default True) gives maps that differ from
    ours (see the module doc)."""
    f = read_anomalib_file(path)
    stored = f.hyper_parameters.get("padding")
    if padded is None:
        padded = bool(stored) if stored is not None else False
    elif stored is not None and bool(stored) != padded:
        raise ConversionError(f"{path} was trained with padding={bool(stored)}, but padded={padded} was asked for")
    pad_maps = f.hyper_parameters.get("pad_maps", True)  # not stored: anomalib's default
    if bool(pad_maps) == padded:
        log.warning(
            "%s: anomalib's padding=%s with pad_maps=%s %s; this model's maps are aligned with the image, so maps "
            "and scores differ slightly from anomalib's",
            path,
            padded,
            bool(pad_maps),
            "adds a 4-pixel border to already aligned maps" if padded else "leaves the maps unaligned",
        )
    try:
        model = from_anomalib_state_dict(f.state, padded=padded, image_size=image_size)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    size = str(getattr(f.hyper_parameters.get("model_size"), "value", f.hyper_parameters.get("model_size", ""))).lower()
    if size in ("small", "medium") and size != model.config.arch:
        raise ConversionError(
            f"{path}: hyper-parameters say model_size={size}, the tensors are a {model.config.arch} model"
        )
    return model


def save_anomalib_state_dict(model: EfficientAD, path: str | os.PathLike[str]) -> Path:
    """Writes :func:`to_anomalib_state_dict` atomically: with ``torch.save`` (anomalib loads it
    with ``EfficientAdModel(...).load_state_dict(torch.load(path, weights_only=True))``), or as
    safetensors when ``path`` ends in ``.safetensors``."""
    state = to_anomalib_state_dict(model)
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save_file

        return write_atomically(path, lambda tmp: save_file(state, str(tmp)))
    return write_atomically(path, lambda tmp: torch.save(state, tmp))
