"""Worker of tests/test_distributed_train.py, started by torchrun (2 gloo ranks on the CPU).

argv: images_dir penalty_dir out_dir. Runs, in one process group:
  equal/   2 steps, global batch 2, dropout off (compared with one process in the test);
  straight/ 2 steps with dropout; resumed/ interrupted after 1 step, then resumed to 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import efficientad_ext.training as tr
from efficientad_ext.training.distributed import process_group


class Interrupted(Exception):
    pass


def config(penalty_dir: str) -> tr.TrainConfig:
    # float32: the equality with one process is checked at float32 rounding (on a native-bf16
    # CPU, auto would train in bf16, whose rounding moves a tenth of the weights by > 1e-6).
    return tr.TrainConfig(
        steps=2,
        batch_size=2,
        checkpoint_every=1,
        validation_fraction=0.25,
        seed=3,
        penalty_dir=penalty_dir,
        log_every=1,
        precision="float32",
    )


def main() -> int:
    images, penalty, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    paths = sorted(images.glob("*.png"))
    with process_group("cpu") as env:
        assert env is not None and env.world_size == 2 and dist.get_backend() == "gloo"
        dropout = torch.nn.Dropout.forward
        torch.nn.Dropout.forward = lambda self, x: x
        try:
            tr.train(paths, out / "equal", config=config(penalty))
        finally:
            torch.nn.Dropout.forward = dropout
        tr.train(paths, out / "straight", config=config(penalty))

        original, calls = tr.TrainStep.__call__, {"n": 0}

        def interrupted(self, *args, **kwargs):
            if calls["n"] == 1:
                raise Interrupted
            calls["n"] += 1
            return original(self, *args, **kwargs)

        tr.TrainStep.__call__ = interrupted
        try:
            tr.train(paths, out / "resumed", config=config(penalty))
            raise AssertionError("the interruption did not happen")
        except Interrupted:
            pass
        finally:
            tr.TrainStep.__call__ = original
        dist.barrier()
        if env.is_main:
            (out / "interrupted.json").write_text(
                json.dumps({"model_written": (out / "resumed" / "model.safetensors").exists()})
            )
        tr.train(paths, out / "resumed", config=config(penalty), resume=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
