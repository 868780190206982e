"""Psi's cached targets on disk, so that a resumed distillation skips recomputing them.

Computing the targets of ~1,000 images at 512x512 takes about 11 minutes of one CPU core
(EfficientNet-Lite0); every ``--resume`` paid it again. The cache is written once per run folder
(``psi_targets.safetensors``, float16, about 3 GB for 950 images at 384 channels) and read back
when its key matches. The key names everything the targets depend on:

- the extractor (name, input size) and the digest of its parameters and buffers (so the weights,
  wherever their file lies);
- the digest of the fitted target head (Psi's statistics and projection): a run restarted from
  scratch fits a new one, and its targets differ;
- the training images: path, byte size and modification time of each, in order;
- the device type that computed them (CPU and GPU round differently);
- ``FORMAT``, raised whenever the code that resizes images or computes targets changes.

Any mismatch, or a file that cannot be read (truncated by a crash, edited), means the targets are
computed again and the file is replaced atomically; a stale file is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from efficientad_ext.formats.atomic import write_atomically

log = logging.getLogger("efficientad_ext.distill")

CACHE_FILE = "psi_targets.safetensors"
FORMAT = 1
_TENSOR = "targets"
_KEY = "key"


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def images_digest(paths: list[Path]) -> str:
    """SHA-256 of each image's path, size and modification time, in order (a changed, moved or
    reordered image changes it; reading every file's content would cost as much as decoding)."""
    h = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(
    extractor: nn.Module, extractor_desc: dict[str, object], head: nn.Module, paths: list[Path], device: torch.device
) -> str:
    """The JSON key a cache file must carry to be used."""
    return json.dumps(
        {
            "extractor": extractor_desc,
            "extractor_digest": module_digest(extractor),
            "head_digest": module_digest(head),
            "images": len(paths),
            "images_digest": images_digest(paths),
            "device_type": device.type,
            "format": FORMAT,
        },
        sort_keys=True,
    )


def load_targets(path: Path, key: str, shape: tuple[int, ...]) -> Tensor | None:
    """The cached targets when ``path`` holds them under ``key`` with ``shape`` (float16), else
    None (the reason logged)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get(_KEY) != key:
                log.info("Psi target cache %s is for other images, extractor or statistics: computing anew", path)
                return None
            targets = f.get_tensor(_TENSOR)
    except Exception as e:  # a truncated or foreign file is recomputed, never trusted
        log.warning("Psi target cache %s is unreadable (%s): computing anew", path, e)
        return None
    if tuple(targets.shape) != shape or targets.dtype != torch.float16:
        log.warning(
            "Psi target cache %s holds %s %s, expected float16 %s: computing anew",
            path,
            targets.dtype,
            tuple(targets.shape),
            shape,
        )
        return None
    return targets


def save_targets(path: Path, key: str, targets: Tensor) -> None:
    """Writes the targets atomically: a crash leaves the old file or none, never a partial one."""
    write_atomically(path, lambda tmp: save_file({_TENSOR: targets.contiguous()}, str(tmp), metadata={_KEY: key}))
