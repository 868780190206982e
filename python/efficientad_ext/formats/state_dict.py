"""Reading state dicts from disk and checking them against a module, strictly: written once
for the model file, teacher files, anomalib conversion and the backbones. Each caller raises
its own error type with its own wording; the checks are these."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


class BackboneWeightsError(ValueError):
    """A backbone weight file that cannot be used; the message names the file and the problem."""


def key_mismatch(expected: Iterable[str], state: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(missing, unexpected)`` keys of ``state`` against ``expected``, sorted."""
    expected, state = set(expected), set(state)
    return sorted(expected - state), sorted(state - expected)


def shape_mismatch(expected: Mapping[str, Sequence[int]], state: Mapping[str, Tensor]) -> str | None:
    """The first key (in ``state``'s order) whose tensor's shape is not ``expected[key]``."""
    return next((k for k, v in state.items() if tuple(v.shape) != tuple(expected[k])), None)


def tensor_mismatch(
    expected: Mapping[str, Sequence[int]], state: Mapping[str, Tensor], floating: bool = True
) -> str | None:
    """What keeps ``state`` from being exactly the tensors ``expected`` describes (name ->
    shape), or None: missing or unexpected keys first, then the first wrong shape, then (with
    ``floating``) the first tensor that is not floating point. Callers prefix the file's name."""
    missing, unexpected = key_mismatch(expected, state)
    if missing or unexpected:
        return (
            f"missing keys {missing[:6]} ({len(missing)} in all), unexpected keys {unexpected[:6]} "
            f"({len(unexpected)} in all)"
        )
    key = shape_mismatch(expected, state)
    if key is not None:
        return f"{key} has shape {tuple(state[key].shape)}, expected {tuple(expected[key])}"
    key = next((k for k, v in state.items() if not v.is_floating_point()), None) if floating else None
    if key is not None:
        return f"{key} has dtype {state[key].dtype}, expected floating point"
    return None


def read_state_dict(
    path: str | os.PathLike[str],
    error: type[ValueError] = BackboneWeightsError,
    what: str = "backbone",
    torch_suffixes: tuple[str, ...] | None = None,
) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file read with
    ``torch.load(weights_only=True)`` (no pickled code runs; a Lightning-style
    ``{"state_dict": ...}`` is unwrapped). ``torch_suffixes``: the suffixes accepted for the
    latter (``None``: any). ``what`` names the weights in messages ("teacher", "backbone");
    unreadable files raise ``error`` naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise error(f"{path} is not a readable safetensors file: {e}") from None
    if torch_suffixes is not None and path.suffix not in torch_suffixes:
        raise error(
            f"{path}: unsupported {what} file type {path.suffix!r} (expected .safetensors or {', '.join(torch_suffixes)})"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file)
        raise error(f"{path} could not be read as a weights-only torch file: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise error(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)


def load_strict(
    module: nn.Module, state: dict[str, Tensor], source: str, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Loads ``state`` into ``module``: every parameter/buffer must be present with its exact
    shape; keys under ``ignore_prefixes`` (parts of the full network this module omits) are
    allowed and dropped; anything else is a :class:`BackboneWeightsError` naming the keys."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = module.state_dict()
    # Batch-norm's integer counters are state too; their dtype is the module's business.
    problem = tensor_mismatch({k: v.shape for k, v in expected.items()}, state, floating=False)
    if problem is not None:
        raise BackboneWeightsError(f"{source} does not match {type(module).__name__}: {problem}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
