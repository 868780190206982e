"""The hyper-parameters of Algorithm 1 (:class:`TrainConfig`) and the run folder's file names."""

from __future__ import annotations

from dataclasses import dataclass

from efficientad_ext.training.precision import CPU_WINOGRAD_CHOICES, MEMORY_FORMATS, PRECISIONS

STATE_FILE = "train_state.safetensors"


MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of Algorithm 1 (the paper's values are the defaults)."""

    steps: int = 70_000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lr_drop_at: float = 0.95  # fraction of the steps after which lr is multiplied by lr_drop_factor
    lr_drop_factor: float = 0.1
    p_hard: float = 0.999
    hard_reduction: str = "auto"  # "auto": batch for batch_size 1, per_sample above
    penalty_dir: str | None = None
    validation_fraction: float = 0.1
    quantile_low: float = 0.9
    quantile_high: float = 0.995
    threshold_fpr: float = 0.01  # the decision threshold: this share of the hold-out's normal images flagged
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    skip_corrupt: bool = False
    max_preload_bytes: int = 4 * 2**30
    teacher_cache_bytes: int = 4 * 2**30  # TeacherCache when it fits (0: never cache)
    precision: str = "auto"  # "auto" (bf16 autocast on native-bf16 CPUs and CUDA), "float32" or "bfloat16"
    memory_format: str = "auto"  # "auto" (channels-last with bf16 and on AVX-512 CPUs), "channels_last" or "contiguous"
    # "auto" (default): the student's, teacher's and autoencoder's convolutions by Winograd in
    # float32 CPU steps (2x+ faster steps on AVX2, rounding ~1e-6 relative; then channels-last
    # when memory_format is auto; accuracy over 5 seeds in benchmarks/RESULTS.md, session 19);
    # "off": oneDNN's direct convolutions, step for step anomalib's arithmetic (issue #26's lock-step).
    cpu_winograd: str = "auto"
    eval_every: int = 0  # learning curve: evaluate the labelled set every N steps (0: never)
    eval_at: tuple[int, ...] = ()  # ... and at these steps (e.g. 250, 500, 1000, ...)
    eval_keep_models: bool = False  # also write each curve point's calibrated model to curve_models/
    # Stop early, on the same schedule (lr_at still counts ``steps``): after ``stop_at`` steps, or
    # once the loop has trained ``time_limit_s`` seconds (evaluations not counted). The run
    # finishes as at its end (a calibrated model file at that step) and keeps a resumable state
    # there, so ``resume`` with a later stop or none continues the same schedule.
    stop_at: int | None = None
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.hard_reduction not in ("auto", "batch", "per_sample"):
            raise ValueError(f"hard_reduction must be auto, batch or per_sample, got {self.hard_reduction!r}")
        if not 0.0 <= self.p_hard <= 1.0 or not 0.0 <= self.quantile_low < self.quantile_high <= 1.0:
            raise ValueError("p_hard must be in [0, 1] and 0 <= quantile_low < quantile_high <= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")
        if self.cpu_winograd not in CPU_WINOGRAD_CHOICES:
            raise ValueError(
                f"cpu_winograd must be one of {', '.join(CPU_WINOGRAD_CHOICES)}, got {self.cpu_winograd!r}"
            )
        if not 0.0 < self.threshold_fpr < 1.0:
            raise ValueError(f"threshold_fpr must be in (0, 1), got {self.threshold_fpr}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(f"stop_at must be in [1, steps={self.steps}], got {self.stop_at}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        if self.eval_every < 0 or any(int(s) < 1 for s in self.eval_at):
            raise ValueError(
                f"eval_every must be >= 0 and eval_at steps >= 1, got {self.eval_every} and {list(self.eval_at)}"
            )

    @property
    def reduction(self) -> str:
        if self.hard_reduction != "auto":
            return self.hard_reduction
        return "batch" if self.batch_size == 1 else "per_sample"

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step ``step``."""
        return self.lr * (self.lr_drop_factor if step >= int(self.lr_drop_at * self.steps) else 1.0)
