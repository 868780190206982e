"""Beyond one process, on PyTorch's own engine: ``torchrun`` and ``torch.distributed`` (gloo on
CPUs, NCCL on GPUs). This module holds the torchrun environment, the process group, and the
data-parallel part of training (:class:`DataParallel`); sharded scoring is in
:mod:`efficientad_ext.inference.sharded`, one model per rank in :mod:`efficientad_ext.training.many_models`.

Data-parallel training, the invariants (``world_size`` ranks, global batch ``B`` =
``TrainConfig.batch_size``, ``b = B / world_size`` images per rank):

* **Data draws.** Every rank holds the same data generator, seeded with ``config.seed``, and
  makes per step exactly the draws one process with ``batch_size = B`` makes, in the same
  order and for all ``B`` images: sample indices [B], penalty indices [B], penalty grayscale
  [B], jitter kind [B], jitter factor [B]. Rank ``r`` keeps positions ``[r*b, (r+1)*b)`` of
  each draw and decodes only those images. So the shares are disjoint, their union is the
  global batch of the one-process run with the same seed, and 2 ranks x batch 1 see the
  samples and augmentations of 1 process x batch 2.
* **Own seeds.** The only other randomness of a step is torch's global RNG (the autoencoder's
  dropout). Each rank seeds it with :func:`rank_seed` ``(seed, rank)``, so no two ranks draw
  the same masks; a checkpoint holds every rank's state and a resumed run restores them, so
  resume is exact. (Dropout masks cannot equal one process's: that draws them for ``B``
  images from one stream.)
* **Loss scaling.** Every term of the loss is a mean over the images of the batch (the hard
  loss per sample when ``B > 1``): ``L(batch) = (1/B) sum_i L_i``. Each rank computes the
  mean over its ``b`` images, and DDP averages the gradients over the ranks, so the gradient
  is ``(1/W) sum_r (1/b) sum_{i in r} grad L_i = (1/B) sum_i grad L_i``: the one-process
  gradient of the global batch, up to float summation order. This needs equal shares
  (``B % world_size == 0``) and per-sample thresholds (one threshold over the whole batch,
  ``hard_reduction="batch"`` with ``B > 1``, cannot be split and is refused).
* **Once per run.** The teacher's channel statistics: each rank sums over its share of the
  training images (``i % world_size == rank``), the float64 sums are all-reduced, mean and std
  are taken from the totals. The map quantiles (exact, over all validation pixels): rank 0
  computes them and broadcasts the four values.
* **Files.** Rank 0 writes the checkpoints, the model and ``training.json``. Every rank reads
  the training state on resume: for several nodes, ``--out`` must be on a shared filesystem.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from efficientad_ext.data.image_source import to_unit_float
from efficientad_ext.training.augment import draw_color_jitter, draw_grayscale
from efficientad_ext.training.penalty import penalty_batch
from efficientad_ext.training.statistics import teacher_channel_stats

log = logging.getLogger("efficientad_ext.training.distributed")

# How long a collective (a barrier at the end of scoring, the final all-reduce) waits for the
# slowest rank before failing; torchrun tears the job down on a crash long before that.
DEFAULT_TIMEOUT_S = 3600.0
TIMEOUT_ENV = "EFFICIENTAD_DIST_TIMEOUT_S"


# ---------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a torchrun job (torchrun's environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> TorchrunEnv | None:
    """The torchrun environment, or None when this process was not started by torchrun
    (no ``RANK``/``WORLD_SIZE`` in the environment)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError as e:
        raise ValueError(f"malformed torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK): {e}") from None
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise ValueError(
            f"malformed torchrun environment: RANK {rank}, WORLD_SIZE {world}, LOCAL_RANK {local_rank}, "
            f"LOCAL_WORLD_SIZE {local_world}"
        )
    return TorchrunEnv(rank, world, local_rank, local_world)


def rank_device(device: str | torch.device, env: TorchrunEnv | None = None) -> torch.device:
    """The device of this rank: ``cuda`` without an index becomes ``cuda:LOCAL_RANK`` (one
    rank per GPU); any other device, or one with an explicit index, is kept."""
    device = torch.device(device)
    env = env if env is not None else torchrun_env()
    if env is not None and device.type == "cuda" and device.index is None:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"rank {env.rank} has LOCAL_RANK {env.local_rank} but this node has "
                f"{torch.cuda.device_count()} GPUs: start at most one rank per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", env.local_rank)
    return device


def rank_seed(seed: int, rank: int) -> int:
    """This rank's own seed for torch's global RNG: independent streams for (seed, rank)
    (numpy's SeedSequence mixing), so no rank repeats another's, nor another run's rank."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> 1)


def _timeout(default_s: float = DEFAULT_TIMEOUT_S) -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else default_s
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    return timedelta(seconds=seconds)


@contextmanager
def process_group(
    device: str | torch.device, backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[TorchrunEnv | None]:
    """Under torchrun, initialises the default process group for the command's duration
    (gloo for CPU devices, NCCL for CUDA ones, unless ``backend`` says otherwise) and destroys
    it at the end, also on errors, so that no rank is left waiting. Yields the torchrun
    environment, or None (and does nothing) outside torchrun. A group initialised by the
    caller (a Python user's own script) is used as it is and left alone. ``timeout_s``: how
    long a collective waits (``$EFFICIENTAD_DIST_TIMEOUT_S`` overrides it)."""
    env = torchrun_env()
    if env is None or dist.is_initialized():
        yield env
        return
    device = torch.device(device)
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=_timeout(timeout_s))
    try:
        yield env
    finally:
        dist.destroy_process_group()


def group_size() -> int:
    """Ranks of the initialised default process group (1 when none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _NullStream(io.TextIOBase):
    """Where the progress line of ranks other than 0 goes."""

    def write(self, s: str) -> int:
        return len(s)

    def isatty(self) -> bool:
        return False


# ---------------------------------------------------------------------------- training


class DataParallel:
    """One rank's view of a data-parallel training run (see the module's invariants)."""

    def __init__(self, config, device: torch.device) -> None:
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_batch = config.batch_size // self.world_size
        self.share = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        self._stepper = None

    @classmethod
    def create(
        cls, config, device: str | torch.device, enabled: bool | None, curve: bool = False
    ) -> DataParallel | None:
        """None for one process (``enabled`` False, or None without a process group of more than
        one rank); else this rank's view, after checking the run can be split exactly."""
        world = group_size()
        if enabled is None:
            enabled = world > 1
        if not enabled:
            return None
        if world == 1 and not dist.is_initialized():
            raise ValueError(
                "data_parallel=True needs an initialised torch.distributed process group (start with torchrun)"
            )
        if world == 1:
            return None  # one rank: exactly the one-process run
        b = config.batch_size
        if b % world:
            raise ValueError(
                f"data-parallel training splits the global batch evenly: --batch-size {b} is not a "
                f"multiple of the {world} ranks"
            )
        if config.reduction == "batch" and b > 1:
            raise ValueError(
                "hard_reduction 'batch' takes one threshold over the whole global batch, which cannot be "
                "split across ranks: use per_sample (the default for batch_size > 1)"
            )
        if curve:
            raise ValueError("the learning curve (--eval-dataset) runs in one process: train without torchrun for it")
        if config.time_limit_s is not None:  # each rank's clock would decide on its own: a rank left waiting
            raise ValueError(
                "a time limit (--time-limit) would stop the ranks at different steps: use --stop-at STEP with torchrun"
            )
        return cls(config, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "backend": str(dist.get_backend()),
            "global_batch": self.config.batch_size,
            "batch_per_rank": self.local_batch,
        }

    def progress_stream(self):
        return None if self.is_main else _NullStream()

    # -- once per run

    def teacher_channel_stats(self, model, source) -> tuple[Tensor, Tensor]:
        def reduce(total: Tensor, total_sq: Tensor, count: int):
            packed = torch.cat([total, total_sq, total.new_tensor([float(count)])])
            dist.all_reduce(packed)
            c = total.numel()
            # count: a sum of integers far below 2^53, exact in float64.
            return packed[:c], packed[c : 2 * c], int(packed[2 * c].item())

        indices = range(self.rank, len(source), self.world_size)
        # the pass's progress from rank 0 only (every rank reads the same share of the images)
        return teacher_channel_stats(
            model, source, indices=indices, reduce=reduce, progress_stream=self.progress_stream()
        )

    def on_main_then_broadcast(self, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` on rank 0 only, its float32 result broadcast to every rank."""
        result = compute().to(self.device, torch.float32) if self.is_main else None
        shape = torch.tensor([result.numel() if result is not None else 0], device=self.device)
        dist.broadcast(shape, src=0)
        if result is None:
            result = torch.empty(int(shape.item()), device=self.device)
        dist.broadcast(result, src=0)
        return result

    # -- the loop

    def start(self, stepper, state_path: Path | None) -> None:
        """Wraps the student and the autoencoder in DistributedDataParallel (it broadcasts rank
        0's weights, a no-op here since every rank built or loaded the same) and puts this rank
        on its own RNG stream: the saved one when resuming, else :func:`rank_seed`."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        stepper.student = DDP(stepper.model.student, device_ids=ids)
        stepper.autoencoder = DDP(stepper.model.autoencoder, device_ids=ids)
        self._stepper = stepper
        state = self._saved_rng(state_path) if state_path is not None else None
        if state is not None:
            torch.set_rng_state(state)
        else:
            torch.manual_seed(rank_seed(self.config.seed, self.rank))

    def _saved_rng(self, state_path: Path) -> Tensor | None:
        with safe_open(str(state_path), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            saved_world = int(f.get_tensor("dist.world_size").item()) if "dist.world_size" in keys else 1
            key = f"dist.rng.rank{self.rank}"
            if saved_world == self.world_size and key in keys:
                return f.get_tensor(key)
        if self.is_main:
            log.warning(
                "%s was written by %d rank(s), this run has %d: the data stream continues exactly, the ranks' "
                "dropout streams start afresh (not bit-exact with an uninterrupted run)",
                state_path,
                saved_world,
                self.world_size,
            )
        return None

    def draw_share(
        self, generator: torch.Generator, source, penalty_paths: Sequence[Path], size: tuple[int, int]
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        """This rank's images, penalty images and jitter draws of the next global batch, from
        the draws one process makes for the whole batch, in its order (module docstring)."""
        b, share = self.config.batch_size, self.share
        idx = torch.randint(len(source), (b,), generator=generator)[share].tolist()
        images = to_unit_float(source.get(idx), self.device)
        penalty = None
        if penalty_paths:
            pidx = torch.randint(len(penalty_paths), (b,), generator=generator)[share].tolist()
            gray = draw_grayscale(b, generator)[share]
            penalty = penalty_batch([penalty_paths[i] for i in pidx], size, generator, gray=gray).to(self.device)
        kind, factor = draw_color_jitter(b, generator)
        return images, penalty, (kind[share], factor[share])

    def mean_terms(self, terms: dict[str, float]) -> dict[str, float]:
        """The loss terms averaged over the ranks: the global batch's (equal shares), the same
        on every rank, so that all ranks log the same and stop together on a divergence."""
        keys = list(terms)
        packed = torch.tensor([terms[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        return {k: float(v) / self.world_size for k, v in zip(keys, packed.tolist())}

    def save_state(self, write: Callable[[dict[str, Tensor]], None]) -> None:
        """Gathers every rank's RNG state (a collective: all ranks call it at the same step);
        rank 0 calls ``write(extra)`` with them as extra tensors of the training state."""
        state = torch.get_rng_state()
        gathered = [torch.empty_like(state, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(gathered, state.to(self.device))
        if self.is_main:
            extra = {f"dist.rng.rank{r}": s.cpu() for r, s in enumerate(gathered)}
            extra["dist.world_size"] = torch.tensor([self.world_size])
            write(extra)
