"""Arguments several commands share, and the help formatter that states every default."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from efficientad_ext.models.efficientad import ModelConfig
from efficientad_ext.training.config import TrainConfig

T = TypeVar("T")
DEVICE_HELP = "cpu, cuda, cuda:1 ... (default: cuda when available)"


ALLOW_UNVERIFIED_HELP = (
    "accept a model file without an integrity digest (an older or stripped file; refused by default: "
    "its content cannot be checked for corruption)"
)


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """The positional model file of the commands that read one, and ``--allow-unverified``."""
    p.add_argument("model", type=Path, help="model file written by train (model.safetensors)")
    p.add_argument("--allow-unverified", action="store_true", help=ALLOW_UNVERIFIED_HELP)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def add_optimiser_basics(p: argparse.ArgumentParser, d: Any, paper_steps: str, paper_batch: str, lr_help: str) -> None:
    """``--steps``, ``--batch-size``, ``--lr`` and ``--weight-decay``: train and distill share
    them; ``d`` is the command's config (a TrainConfig or DistillConfig) and gives the defaults."""
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimisation steps (the paper's {paper_steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per step (the paper's {paper_batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=lr_help)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay")


def add_choice(p: argparse.ArgumentParser, flag: str, choices: list[str], default: str, help: str) -> None:
    """An option that takes one of ``choices`` (the help formatter adds the default)."""
    p.add_argument(flag, choices=choices, default=default, help=help)


# What "auto" precision means, said once for train and distill; each adds what stays float32.
PRECISION_AUTO_HELP = "bf16 autocast on CPUs with AMX-BF16 or AVX-512-BF16 and on bf16-capable GPUs, float32 elsewhere"
PRECISION_CHOICES = ["auto", "float32", "bfloat16"]


def _add_optimiser_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    add_optimiser_basics(p, d, "70,000", "1", "Adam learning rate, x0.1 after 95%% of the steps")
    add_choice(
        p,
        "--hard-reduction",
        ["auto", "batch", "per_sample"],
        d.hard_reduction,
        "hard-feature threshold over the whole batch or per image (auto: batch at batch size 1, else per image)",
    )
    add_choice(
        p,
        "--precision",
        PRECISION_CHOICES,
        d.precision,
        f"network compute precision (auto: {PRECISION_AUTO_HELP}; weights, optimizer and losses stay float32)",
    )
    add_choice(
        p,
        "--memory-format",
        ["auto", "channels_last", "contiguous"],
        d.memory_format,
        "layout of the networks' weights and batches (auto: channels-last with bf16 and on AVX-512 CPUs, "
        "where oneDNN runs it faster; NCHW on AVX2-only CPUs, where it is slower)",
    )
    add_choice(
        p,
        "--cpu-winograd",
        ["auto", "off"],
        d.cpu_winograd,
        "auto: the student's and teacher's convolutions by Winograd in float32 CPU steps (forward and backward; "
        "2x+ faster steps on AVX2 CPUs, rounding ~1e-6 relative, channels-last); off: oneDNN's direct "
        "convolutions, anomalib's arithmetic step for step",
    )
    p.add_argument(
        "--penalty-dir",
        type=Path,
        help="folder of ImageNet(-like) images for the pretraining penalty (default: none, training without the penalty, with a warning)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="teacher: 'default' (the distilled teacher shipped with the package; "
        "the default), 'random', or a weight file (.safetensors / .pth: ours, nelson1425's, anomalib's)",
    )


def _add_run_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=d.validation_fraction,
        help="share of the normal training images held out for the map quantiles",
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between resumable training states"
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="seed of every random draw (hold-out, images, augmentations)"
    )
    p.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable images with a warning instead of failing"
    )
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="stop after STEP steps of the --steps schedule (the learning rate still follows --steps): "
        "a calibrated model at that step and a state that --resume continues (default: run to the end)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop once this run's loop has trained this many minutes (evaluations not counted; a --resume "
        "gets its own limit), as --stop-at does (default: none)",
    )


def _add_curve_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument(
        "--eval-dataset",
        type=Path,
        help="labelled MVTec-layout set for a learning curve (curve.json / curve.png in "
        "--out); its map quantiles come from the training hold-out (default: no curve)",
    )
    p.add_argument(
        "--eval-every", type=int, default=d.eval_every, help="evaluate --eval-dataset every N steps (0: never)"
    )
    p.add_argument(
        "--eval-at",
        type=lambda v: tuple(int(x) for x in v.split(",") if x),
        default=d.eval_at,
        metavar="S1,S2,...",
        help="also evaluate at these steps, e.g. 250,500,1000,2000 (default: none)",
    )
    p.add_argument(
        "--eval-keep-models",
        action="store_true",
        help="also write each curve point's calibrated model to --out/curve_models/ (default: off)",
    )


def add_train_args(p: argparse.ArgumentParser) -> None:

    d = TrainConfig()
    p.add_argument("--arch", choices=["small", "medium"], default="small", help="EfficientAD-S or -M")
    p.add_argument(
        "--padded",
        action="store_true",
        help="padded PDNs (the paper's 64x64 maps); off: unpadded PDNs, maps re-padded to the image",
    )
    p.add_argument(
        "--image-size", type=int, nargs="+", default=[256], metavar="N", help="H [W] of the network input (>= 256)"
    )
    _add_optimiser_args(p, d)
    _add_run_args(p, d)
    _add_curve_args(p, d)


def model_config(args):

    size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size
    if len(size) != 2:
        raise SystemExit(f"--image-size takes one or two numbers, got {args.image_size}")
    return ModelConfig(arch=args.arch, padded=args.padded, image_size=tuple(size))


def config_from_args(cls: type[T], args: argparse.Namespace, **converted: Any) -> T:
    """A config dataclass from the parsed arguments named like its fields (each option's
    ``dest`` is the field name); ``converted``: the fields whose option holds another form
    (a Path for a string, minutes for seconds, 0 for None). Fields without an option keep their
    defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**given, **converted})


def train_config(args: argparse.Namespace) -> TrainConfig:
    return config_from_args(
        TrainConfig,
        args,
        penalty_dir=str(args.penalty_dir) if args.penalty_dir else None,
        eval_at=tuple(args.eval_at),
        time_limit_s=args.time_limit * 60 if args.time_limit is not None else None,
    )


class HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default (``off`` for flags), unless the text already
    says it, the option is required, or it has none to state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.required or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            default = "off"
        elif isinstance(action.default, (list, tuple)):
            default = " ".join(str(v) for v in action.default) or "none"
        elif action.default is None:
            default = "none"
        else:
            default = str(action.default)
        return f"{text} (default: {default})"
