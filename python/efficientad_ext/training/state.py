"""The resumable state of a training run (Algorithm 1 or 3), one safetensors file.

Tensors: the modules' state dicts under their prefixes, any extra tensors, the optimiser's
per-parameter state (``optim.<index>.<name>``), the global torch RNG (``rng.torch``) and the
run's generator (``rng.generator``). Metadata: ``format`` (``efficientad_ext.<kind>``),
``format_version``, ``step``, the optimiser's ``param_groups`` and the caller's own entries.
Restoring all of it continues a run bit for bit as if it had never stopped (tested).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from efficientad_ext.formats import integrity
from efficientad_ext.formats.atomic import write_atomically
from efficientad_ext.formats.model_file import ModelFileError

FORMAT_VERSION = "1"


@dataclass
class SavedState:
    """A state file as read: its tensors, its step and the caller's metadata entries."""

    tensors: dict[str, Tensor]
    step: int
    metadata: dict[str, str]

    def module_state(self, prefix: str) -> dict[str, Tensor]:
        """The state dict saved under ``prefix`` (e.g. ``"teacher"``)."""
        start = prefix + "."
        return {k[len(start) :]: v for k, v in self.tensors.items() if k.startswith(start)}


def save_state(
    path: Path,
    kind: str,
    step: int,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    extra_tensors: Mapping[str, Tensor] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes the state atomically (a crash never leaves a partial file at ``path``)."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    for prefix, module in modules.items():
        tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra_tensors or {}).items()})
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    header = {
        "format": f"efficientad_ext.{kind}",
        "format_version": FORMAT_VERSION,
        "step": str(step),
        "param_groups": json.dumps(opt["param_groups"]),
        **(metadata or {}),
    }
    header = integrity.with_digest(tensors, header)  # verified by read_state
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def read_state(path: Path, kind: str, description: str) -> SavedState:
    """Reads a file written by :func:`save_state` for ``kind``; a file of another format is a
    ValueError naming ``description`` (e.g. "training state"); an unreadable file or one whose
    integrity digest does not match is a ModelFileError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != f"efficientad_ext.{kind}" or metadata.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path} is not an efficientad_ext {description} (format {metadata.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{path} is not a readable {description} (safetensors): {e}") from None
    integrity.verify(tensors, metadata, source=str(path), error=ModelFileError)
    return SavedState(tensors, int(metadata["step"]), metadata)


def restore_optimizer_and_rng(
    saved: SavedState, optimizer: torch.optim.Optimizer, generator: torch.Generator, device: torch.device
) -> None:
    """Puts the optimiser state (on ``device``; Adam's ``step`` counters stay on the CPU) and
    both RNG states back as they were when ``saved`` was written."""
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in saved.tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v.to(device) if name != "step" else v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(saved.metadata["param_groups"])})
    torch.set_rng_state(saved.tensors["rng.torch"])
    generator.set_state(saved.tensors["rng.generator"])
