"""Data-parallel training (issue 17) with 2 gloo processes on the CPU: the same weights as one
process with the same global batch, checkpoints by rank 0, exact resume, the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distributed_launch import torchrun
from efficientad_ext.training import TrainConfig, train
from efficientad_ext.training.distributed import DataParallel, rank_seed, torchrun_env
from test_train import write_images

WORKER = Path(__file__).with_name("_distributed_worker.py")
TRAINED = ("student.", "autoencoder.")


def _trained(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(TRAINED)}


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_resume_exactly(tmp_path, monkeypatch):
    images = tmp_path / "images"
    write_images(images, 4)
    penalty = tmp_path / "penalty"
    write_images(penalty, 3, size=(300, 280), seed=1)
    out = tmp_path / "runs"
    torchrun([str(WORKER), str(images), str(penalty), str(out)], timeout=900)

    # One process, global batch 2, the same seed: the samples, penalty images and augmentations
    # are the same draws (dropout off in both: its masks are each rank's own).
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    cfg = TrainConfig(
        steps=2,
        batch_size=2,
        checkpoint_every=1,
        validation_fraction=0.25,
        seed=3,
        penalty_dir=str(penalty),
        precision="float32",
    )  # as the worker's
    train(sorted(images.glob("*.png")), tmp_path / "one", config=cfg)
    one, two = _trained(tmp_path / "one" / "model.safetensors"), _trained(out / "equal" / "model.safetensors")
    straight = _trained(out / "straight" / "model.safetensors")
    assert one.keys() == two.keys() == straight.keys()

    # Float summation order differs (DDP's all-reduce vs one backward). Adam's first steps move a
    # weight by about lr * sign(gradient), so a weight whose gradient is ~0 can differ by up to
    # ~1e-4 while all others agree to rounding: compare the fraction of weights that differ.
    # Measured: 1.7e-6 of them for the same samples; 5% when only the dropout masks differ.
    def differing(a, b):
        return sum(((a[k] - b[k]).abs() > 1e-6).sum().item() for k in a) / sum(v.numel() for v in a.values())

    assert max((one[k] - two[k]).abs().max().item() for k in one) < 2.5e-4
    assert differing(one, two) < 1e-4 < 1e-2 < differing(straight, two), (differing(one, two), differing(straight, two))
    m_one, m_two = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(out / "equal" / "model.safetensors")),
    )
    for k in ("teacher_mean", "teacher_std"):  # all-reduced float64 sums vs one stream
        torch.testing.assert_close(m_one[k], m_two[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m_one["quantiles"], m_two["quantiles"], rtol=1e-4, atol=1e-6)
    record = json.loads((out / "equal" / "training.json").read_text())
    assert record["extra"]["data_parallel"] == {
        "world_size": 2,
        "backend": "gloo",
        "global_batch": 2,
        "batch_per_rank": 1,
    }

    # Checkpoints by rank 0 hold both ranks' own RNG streams; resuming restores them: the
    # interrupted-and-resumed run (dropout on) equals the uninterrupted one bit for bit.
    state = load_file(str(out / "straight" / "train_state.safetensors"))
    assert int(state["dist.world_size"]) == 2 and not torch.equal(state["dist.rng.rank0"], state["dist.rng.rank1"])
    assert json.loads((out / "interrupted.json").read_text()) == {"model_written": False}
    resumed = _trained(out / "resumed" / "model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_rank_seeds_and_environment(monkeypatch):
    assert len({rank_seed(0, r) for r in range(8)} | {rank_seed(1, r) for r in range(8)}) == 16
    assert rank_seed(5, 2) == rank_seed(5, 2) and 0 <= rank_seed(5, 2) < 2**63
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    env = torchrun_env()
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (1, 2, 1, False)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="malformed torchrun environment"):
        torchrun_env()


def test_one_process_is_untouched_and_refusals_are_clear():
    # Without a process group there is no data-parallel view: the one-process code path.
    assert DataParallel.create(TrainConfig(batch_size=2), "cpu", None) is None
    assert DataParallel.create(TrainConfig(batch_size=2), "cpu", False) is None
    with pytest.raises(ValueError, match="initialised torch.distributed process group"):
        DataParallel.create(TrainConfig(batch_size=2), "cpu", True)


def test_splits_that_cannot_be_exact_are_refused(monkeypatch):
    import efficientad_ext.training.distributed as d

    monkeypatch.setattr(d, "group_size", lambda: 2)  # as under a 2-rank process group
    with pytest.raises(ValueError, match="not a multiple of the 2 ranks"):
        DataParallel.create(TrainConfig(batch_size=3), "cpu", None)
    with pytest.raises(ValueError, match="cannot be split"):
        DataParallel.create(TrainConfig(batch_size=2, hard_reduction="batch"), "cpu", None)
    with pytest.raises(ValueError, match="learning curve"):
        DataParallel.create(TrainConfig(batch_size=2), "cpu", None, curve=True)
    with pytest.raises(ValueError, match="use --stop-at"):  # each rank's clock would stop it elsewhere
        DataParallel.create(TrainConfig(batch_size=2, time_limit_s=60), "cpu", None)
