"""How anomalib 2.7.0's ``EfficientAdModel`` names its tensors, mapped to ours.

Facts read from anomalib 2.7.0's ``models/image/efficient_ad/torch_model.py`` (no code taken):

- PDNs are modules with named convolutions ``conv1`` .. ``conv4`` (small) or ``conv1`` ..
  ``conv6`` (medium); pooling and ReLU hold no tensors. Ours are ``nn.Sequential`` (the
  nelson1425/EfficientAD layout), so the convolutions sit at indices 0, 3, 6, 8 (small) and
  0, 3, 6, 8, 10, 12 (medium). The pretrained-teacher files anomalib downloads
  (``pretrained_teacher_small.pth`` / ``pretrained_teacher_medium.pth``) are state dicts of
  such a PDN: keys ``conv1.weight``, ``conv1.bias``, ...
- The autoencoder is ``ae``: ``ae.encoder.enconv1`` .. ``enconv6`` and ``ae.decoder.deconv1`` ..
  ``deconv8`` (deconv7/8: the two 3x3 convolutions after the last upsampling).
- ``mean_std.mean`` / ``mean_std.std``: the teacher's channel statistics, shape [1, C, 1, 1]
  (ours: [C]). All zeros means "not computed" (anomalib then skips the standardisation).
- ``quantiles.qa_st``, ``quantiles.qb_st``, ``quantiles.qa_ae``, ``quantiles.qb_ae``: 0-d
  tensors (ours: one [4] tensor in that order). All zeros means "not computed" (anomalib then
  skips the map normalisation).
"""

from __future__ import annotations

# Our nn.Sequential index of each anomalib PDN convolution, by architecture.
PDN_CONV_INDICES: dict[str, tuple[int, ...]] = {"small": (0, 3, 6, 8), "medium": (0, 3, 6, 8, 10, 12)}
# Our Autoencoder's module path of each anomalib autoencoder convolution.
AUTOENCODER_CONVS: dict[str, str] = {
    **{f"encoder.enconv{i + 1}": f"encoder.{2 * i}" for i in range(6)},
    **{f"decoder.deconv{i + 1}": f"decoder_stages.{i}.0" for i in range(6)},
    "decoder.deconv7": "head.0",
    "decoder.deconv8": "head.2",
}
QUANTILE_KEYS = ("qa_st", "qb_st", "qa_ae", "qb_ae")  # the order of our ``quantiles`` tensor


def pdn_key_map(arch: str) -> dict[str, str]:
    """anomalib PDN state-dict key -> our PDN state-dict key (``conv1.weight`` -> ``0.weight``)."""
    if arch not in PDN_CONV_INDICES:
        raise ValueError(f"arch must be one of {tuple(PDN_CONV_INDICES)}, got {arch!r}")
    return {
        f"conv{n + 1}.{p}": f"{index}.{p}" for n, index in enumerate(PDN_CONV_INDICES[arch]) for p in ("weight", "bias")
    }


def autoencoder_key_map() -> dict[str, str]:
    """anomalib ``ae.*`` key (without ``ae.``) -> our ``autoencoder.*`` key (without prefix)."""
    return {f"{a}.{p}": f"{o}.{p}" for a, o in AUTOENCODER_CONVS.items() for p in ("weight", "bias")}


def pdn_arch_of_keys(keys: set[str]) -> str | None:
    """``small`` / ``medium`` when ``keys`` are exactly an anomalib PDN's, else None."""
    for arch in PDN_CONV_INDICES:
        if keys == set(pdn_key_map(arch)):
            return arch
    return None
