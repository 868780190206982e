"""Training, the paper's Algorithm 1 (:func:`train`; the steps in :mod:`.trainer`'s docstring).

- :mod:`.config`: :class:`TrainConfig`, the hyper-parameters; :mod:`.step`: :class:`TrainStep`,
  one optimisation step; :mod:`.augment` and :mod:`.penalty`: its inputs;
- :mod:`.statistics`: the teacher's channel statistics, the map quantiles, the hold-out scores;
  :mod:`.teacher_cache`: the frozen teacher's outputs computed once;
- :mod:`.run_setup`, :mod:`.driver`, :mod:`.state`: a run's setup, its step loop, its resumable state;
- :mod:`.trainer`: :func:`train`, which puts them together; :mod:`.learning_curve`: metrics
  along the way;
- :mod:`.precision` (bf16 and memory format), :mod:`.distributed` (data-parallel over a process
  group), :mod:`.many_models` (one model per category), :mod:`.teacher_choice` (which teacher).
"""

from __future__ import annotations

from efficientad_ext.training.config import MODEL_FILE, STATE_FILE, TrainConfig
from efficientad_ext.training.penalty import penalty_batch
from efficientad_ext.training.statistics import holdout_scores, map_quantiles, teacher_channel_stats
from efficientad_ext.training.step import TrainStep
from efficientad_ext.training.teacher_cache import TeacherCache
from efficientad_ext.training.trainer import train

__all__ = [
    "MODEL_FILE",
    "STATE_FILE",
    "TeacherCache",
    "TrainConfig",
    "TrainStep",
    "holdout_scores",
    "map_quantiles",
    "penalty_batch",
    "teacher_channel_stats",
    "train",
]
