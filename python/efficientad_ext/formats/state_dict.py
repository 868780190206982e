"""Reading a torchvision-style state dict from disk with strict name and shape checks."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn


class BackboneWeightsError(ValueError):
    """A backbone weight file that cannot be used; the message names the file and the problem."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A state dict from a ``.pth``/``.pt`` (``torch.load(weights_only=True)``: no pickled code
    runs) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise BackboneWeightsError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file)
        raise BackboneWeightsError(f"{path} could not be read as a weights-only torch file: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BackboneWeightsError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)


def load_strict(module: nn.Module, state: dict[str, Tensor], source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Loads ``state`` into ``module``: every parameter/buffer must be present with its exact
    shape; keys under ``ignore_prefixes`` (parts of the full network this module omits) are
    allowed and dropped; anything else is an error naming the keys."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BackboneWeightsError(
            f"{source} does not match {type(module).__name__}: missing {missing[:5]} "
            f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise BackboneWeightsError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
