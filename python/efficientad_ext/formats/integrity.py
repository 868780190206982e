"""An integrity digest for the safetensors files we write (model, teacher, training states).

The digest is SHA-256 over a canonical serialisation of the file's content: first the
metadata (every key but ``digest`` itself, sorted), then every tensor in name order as
``len(header) | header | bytes`` where the header is the JSON ``[name, dtype, shape]`` and the
bytes are the tensor's elements in row-major order, as safetensors stores them
(little-endian; every platform torch supports for this package is little-endian). Every field
is length-prefixed or self-delimiting, so two different contents cannot serialise alike.

It is stored in the metadata as ``"digest": "sha256-v1:<64 hex digits>"`` and checked at load:

- a mismatch means the file changed after it was written (a flipped bit, a truncation that
  safetensors did not notice, an edit): the loader raises its error, naming the file;
- a model file without a digest is an old file or a stripped one: it is refused unless the
  caller allows it (``allow_unverified=True``, ``--allow-unverified``), and then loads after one
  :class:`UnverifiedFileWarning` (its values are still validated). Teacher files and training
  states without one still load after the warning: they only feed a new training run, whose
  own output carries a digest.

The digest protects against accidental damage, not against a forger, who can recompute it;
loading runs no code either way (safetensors holds tensors and strings only).
Cost: one pass of SHA-256 over the tensor bytes (about 26 ms of CPU for the 30.7 MiB of an
EfficientAD-S on the 2-core machine this was written on; see README).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

DIGEST_KEY = "digest"
SCHEME = "sha256-v1"
_DIGEST_RE = re.compile(r"^sha256-v1:[0-9a-f]{64}$")


class UnverifiedFileWarning(UserWarning):
    """A file of our format written before integrity digests existed: loaded unchecked."""


def _tensor_bytes(t: Tensor) -> memoryview:
    # reshape(-1) first: 0-dim tensors cannot be viewed as bytes directly.
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def compute_digest(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """The digest of ``tensors`` and ``metadata`` (``metadata[DIGEST_KEY]`` is ignored)."""
    h = hashlib.sha256()
    meta = sorted((str(k), str(v)) for k, v in metadata.items() if k != DIGEST_KEY)
    meta_bytes = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    h.update(len(meta_bytes).to_bytes(8, "little"))
    h.update(meta_bytes)
    for name in sorted(tensors):
        t = tensors[name]
        header = json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8")
        h.update(len(header).to_bytes(8, "little"))
        h.update(header)
        h.update(_tensor_bytes(t))
    return f"{SCHEME}:{h.hexdigest()}"


def with_digest(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus its ``digest`` entry, ready for ``safetensors.torch.save_file``."""
    out = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    out[DIGEST_KEY] = compute_digest(tensors, out)
    return out


def verify(
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    *,
    source: str,
    error: type[Exception],
    allow_unverified: bool = True,
    way_in: str = "",
) -> str | None:
    """Checks the stored digest of a file of our format; returns it, or ``None`` for a file
    without one. Raises ``error(message)`` naming ``source`` when the digest is malformed or does
    not match the content. A file without a digest is refused (one line naming ``way_in``, the
    argument that accepts it) unless ``allow_unverified``; then it loads after one
    :class:`UnverifiedFileWarning`."""
    stored = metadata.get(DIGEST_KEY)
    if stored is None:
        if not allow_unverified:
            raise error(
                f"{source} has no integrity digest, so it cannot be checked for corruption: every file efficientad_ext "
                f"writes carries one (this one is older, or had it stripped). If you trust it, load it with {way_in} "
                "and save it again to add one"
            )
        warnings.warn(
            f"{source} has no integrity digest (written by an efficientad_ext without digests): it cannot be checked "
            "for corruption; its values are still validated. Save it again to add one.",
            UnverifiedFileWarning,
            stacklevel=3,
        )
        return None
    if not isinstance(stored, str) or not _DIGEST_RE.match(stored):
        raise error(
            f"{source}: metadata field 'digest' must be '{SCHEME}:' and 64 hex digits, got {str(stored)[:80]!r}"
        )
    actual = compute_digest(tensors, metadata)
    if not hmac.compare_digest(actual, stored):
        raise error(
            f"{source} is corrupt: its content does not match its integrity digest (stored {stored[10:22]}..., "
            f"computed {actual[10:22]}...); the file was damaged or edited after it was written"
        )
    return stored
