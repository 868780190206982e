"""The commands that score images with a model file: ``eval``, ``infer`` (sharded under torchrun) and ``calibrate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from efficientad_ext.api import calibrate, default_device, evaluate, score_folder, score_folder_sharded
from efficientad_ext.cli.options import DEVICE_HELP, add_model_arg, non_negative_int
from efficientad_ext.data import broken_links
from efficientad_ext.evaluation.evaluator import format_summary
from efficientad_ext.evaluation.report import DEFAULT_GALLERY_SIZE
from efficientad_ext.formats.run_record import RunRecord
from efficientad_ext.formats.stale_files import remove_stale_temp_files, subfolders
from efficientad_ext.training.distributed import process_group, rank_device, torchrun_env


def cmd_eval(args) -> int:

    remove_stale_temp_files([args.out, *subfolders(Path(args.out) / "images")])
    record = RunRecord(args.out, "eval", args.model).start()
    result = evaluate(
        args.model,
        args.dataset,
        args.out,
        batch_size=args.batch_size,
        write_images=not args.no_images,
        skip_corrupt=args.skip_corrupt,
        device=args.device,
        report=args.report,
        report_gallery=args.report_gallery,
        allow_unverified=args.allow_unverified,
    )
    # MVTec-style test folders: the symbolic links left out of them (each warned about when listed)
    test = Path(args.dataset) / "test"
    broken = sum(len(broken_links(d)) for d in test.iterdir() if d.is_dir()) if test.is_dir() else 0
    record.finish(images=result["images"], anomalous=result["anomalous"], broken_links=broken)  # the last write
    print(format_summary(result))
    print(f"metrics written to {Path(args.out) / 'metrics.json'}")
    if args.report:
        print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_infer(args) -> int:

    if torchrun_env() is not None:  # under torchrun, sharded and resumable (inference/sharded.py)
        return cmd_infer_sharded(args)

    out = Path(args.out)
    n = score_folder(
        args.model,
        args.images,
        out,
        batch_size=args.batch_size,
        skip_corrupt=args.skip_corrupt,
        write_images=not args.no_images,
        device=args.device,
        allow_unverified=args.allow_unverified,
    )
    print(f"{n} images scored: {out / 'scores.csv'}")
    return 0


def cmd_infer_sharded(args) -> int:

    device = rank_device(args.device or default_device())
    with process_group(device) as env:
        r = score_folder_sharded(
            args.model,
            args.images,
            args.out,
            device=device,
            batch_size=args.batch_size,
            workers=args.workers,
            write_images=not args.no_images,
            allow_unverified=args.allow_unverified,
        )
    if env.is_main:
        out = Path(args.out)
        print(
            f"{r.scored} images scored ({r.skipped} already scored before this run, {r.corrupt} corrupt: "
            f"{out / 'corrupt.csv'}) by {env.world_size} rank(s) in {r.seconds:.1f} s: {out / 'scores.csv'}"
        )
    return 0


def cmd_calibrate(args) -> int:

    t = calibrate(
        args.model,
        args.dataset,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        allow_unverified=args.allow_unverified,
    )
    print(
        f"threshold {t.value:.6g} (F1-optimal on {t.details['images']} images, {t.details['anomalous']} anomalous: "
        f"F1 {t.details['f1']:.4f}) written to {args.out or args.model}"
    )
    return 0


def _add_model_and_output_args(p: argparse.ArgumentParser, images: str, images_help: str, out_help: str) -> None:
    """The arguments ``eval`` and ``infer`` share."""
    add_model_arg(p)
    p.add_argument(images, type=Path, help=images_help)
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--no-images", action="store_true", help="scores only, no heatmap PNGs")
    p.add_argument("--device", help=DEVICE_HELP)


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a dataset's test set (metrics + heatmap PNGs)")
    _add_model_and_output_args(
        p, "dataset", "dataset folder (MVTec AD / LOCO / VisA layout)", "output folder (metrics.json, images/)"
    )
    p.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable images with a warning instead of failing"
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="also write --out/report.html: metrics, curves, score "
        'histograms and a gallery, one self-contained page (pip install ".[report]")',
    )
    p.add_argument(
        "--report-gallery",
        type=non_negative_int,
        default=DEFAULT_GALLERY_SIZE,
        metavar="N",
        help="test images in the report's gallery, misclassified first (0: all)",
    )
    p.set_defaults(func=cmd_eval)


def _add_infer_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="score a folder of images (scores.csv + heatmaps)")
    _add_model_and_output_args(
        p, "images", "folder of images (the files directly in it)", "output folder (scores.csv, heatmaps/)"
    )
    p.add_argument(  # sharded and resumable under torchrun
        "--skip-corrupt",
        action="store_true",
        help="skip unreadable images (under torchrun always: listed in corrupt.csv)",
    )
    p.add_argument(
        "--workers", type=int, help="under torchrun: DataLoader decoding workers per rank (default: the CPUs per rank)"
    )
    p.set_defaults(func=cmd_infer)


def add_score_parsers(sub: argparse._SubParsersAction) -> None:
    """``eval``, ``infer`` and ``calibrate``."""
    _add_eval_parser(sub)
    _add_infer_parser(sub)
    p = sub.add_parser("calibrate", help="set a model's decision threshold to the F1-optimal one on a labelled set")
    add_model_arg(p)
    p.add_argument(
        "dataset",
        type=Path,
        help="labelled set in MVTec layout (its test/good and test/<defect> images; "
        "masks not needed), kept apart from the set you report accuracy on",
    )
    p.add_argument("--out", type=Path, help="where to write the calibrated model (default: replace MODEL, atomically)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_calibrate)
