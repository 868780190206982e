"""Teacher weight files in both published layouts, for small and medium: nelson1425's
(``torch.save`` of an ``nn.Sequential`` state dict: keys 0.weight, 3.weight, ...) and
anomalib's pretrained_teacher_{small,medium}.pth (keys conv1.weight ... conv4/conv6.bias,
names and shapes as in anomalib 2.7.0's torch_model.py, written out here by hand)."""

from __future__ import annotations

import pytest
import torch

from efficientad_ext import build_pdn
from efficientad_ext.formats.teacher_file import TeacherWeightsError, load_teacher_weights

# anomalib 2.7.0's teacher convolutions: (in, out, kernel) in order conv1, conv2, ...
ANOMALIB_TEACHER = {
    "small": [(3, 128, 4), (128, 256, 4), (256, 256, 3), (256, 384, 4)],
    "medium": [(3, 256, 4), (256, 512, 4), (512, 512, 1), (512, 512, 3), (512, 384, 4), (384, 384, 1)],
}
# Where each of those convolutions sits in nelson1425's nn.Sequential (and ours).
SEQUENTIAL_INDEX = {"small": [0, 3, 6, 8], "medium": [0, 3, 6, 8, 10, 12]}


def anomalib_teacher_state(arch: str) -> dict[str, torch.Tensor]:
    state = {}
    for i, (cin, cout, k) in enumerate(ANOMALIB_TEACHER[arch]):
        state[f"conv{i + 1}.weight"] = torch.randn(cout, cin, k, k)
        state[f"conv{i + 1}.bias"] = torch.randn(cout)
    return state


@pytest.mark.parametrize("arch", ["small", "medium"])
def test_anomalib_pretrained_teacher(arch, tmp_path):
    state = anomalib_teacher_state(arch)
    torch.save(state, tmp_path / f"pretrained_teacher_{arch}.pth")
    pdn = build_pdn(arch, 384)
    load_teacher_weights(pdn, tmp_path / f"pretrained_teacher_{arch}.pth")
    for i, index in enumerate(SEQUENTIAL_INDEX[arch]):
        assert torch.equal(pdn[index].weight, state[f"conv{i + 1}.weight"])
        assert torch.equal(pdn[index].bias, state[f"conv{i + 1}.bias"])
    # the same tensors inside a whole anomalib model's state dict / a Lightning checkpoint
    whole = {f"teacher.{k}": v for k, v in state.items()} | {"student.conv1.weight": torch.zeros(1)}
    torch.save({"state_dict": {f"model.{k}": v for k, v in whole.items()}}, tmp_path / "model.ckpt")
    other = build_pdn(arch, 384)
    load_teacher_weights(other, tmp_path / "model.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(pdn.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("arch", ["small", "medium"])
def test_nelson_sequential_teacher(arch, tmp_path):
    source = build_pdn(arch, 384)
    torch.save(source.state_dict(), tmp_path / f"teacher_{arch}.pth")
    assert sorted({k.split(".")[0] for k in source.state_dict()}, key=int) == [str(i) for i in SEQUENTIAL_INDEX[arch]]
    target = build_pdn(arch, 384)
    load_teacher_weights(target, tmp_path / f"teacher_{arch}.pth")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_anomalib_teacher_errors(tmp_path):
    torch.save(anomalib_teacher_state("medium"), tmp_path / "medium.pth")
    with pytest.raises(TeacherWeightsError, match="holds an anomalib medium PDN, expected a small PDN"):
        load_teacher_weights(build_pdn("small", 384), tmp_path / "medium.pth")
    state = anomalib_teacher_state("small")
    state["conv4.weight"] = torch.randn(384, 256, 3, 3)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(
        TeacherWeightsError, match=r"conv4.weight has shape \(384, 256, 3, 3\).*needs \(384, 256, 4, 4\)"
    ):
        load_teacher_weights(build_pdn("small", 384), tmp_path / "wrong.pth")
    state = anomalib_teacher_state("small")
    del state["conv2.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(TeacherWeightsError, match="Accepted: a PDN state dict with nn.Sequential keys.*anomalib's"):
        load_teacher_weights(build_pdn("small", 384), tmp_path / "partial.pth")
