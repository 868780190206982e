"""The commands on a model file itself: ``export``, ``convert`` and the installation's ``selfcheck``."""

from __future__ import annotations

import argparse
from pathlib import Path

from efficientad_ext.api import convert_from_anomalib, convert_to_anomalib, export
from efficientad_ext.cli.options import ALLOW_UNVERIFIED_HELP, DEVICE_HELP, add_model_arg
from efficientad_ext.selfcheck import selfcheck


def cmd_export(args) -> int:

    for path in export(args.model, args.out, args.format, args.dtype, allow_unverified=args.allow_unverified):
        print(f"{path}")
    return 0


def cmd_selfcheck(args) -> int:

    ok = selfcheck(arch=args.arch, batch=args.batch, size=args.size, repeats=args.repeats, device=args.device)
    return 0 if ok else 1


def cmd_convert(args) -> int:
    """anomalib 2.7.0 EfficientAdModel state dict <-> our model file (:mod:`efficientad_ext.formats.anomalib`)."""

    if args.source == "anomalib":
        if args.allow_unverified:
            raise SystemExit(
                "--allow-unverified applies to --from ours only (anomalib's files carry no digest of ours)"
            )
        size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size
        if len(size) != 2:
            raise SystemExit(f"--image-size takes one or two numbers, got {args.image_size}")
        model = convert_from_anomalib(args.input, args.to, padded=args.padded, image_size=tuple(size))
        c = model.config
        print(
            f"{args.to}: EfficientAD-{c.arch[0].upper()} ({'padded' if c.padded else 'unpadded'}, "
            f"{c.image_size[0]}x{c.image_size[1]}, {'calibrated' if model.calibrated else 'quantiles not set'})"
        )
    else:
        if args.padded is not None or args.image_size != [256]:
            raise SystemExit("--padded / --image-size apply to --from anomalib only (our model file stores them)")
        convert_to_anomalib(args.input, args.to, allow_unverified=args.allow_unverified)
        print(
            f"{args.to}: anomalib EfficientAdModel state dict (load with model.load_state_dict(torch.load(path, weights_only=True)))"
        )
    return 0


def add_model_parsers(sub: argparse._SubParsersAction) -> None:
    """``export``, ``selfcheck`` and ``convert``."""
    p = sub.add_parser("export", help="write the model's inference as an ONNX file or OpenVINO IR (dynamic batch)")
    add_model_arg(p)
    p.add_argument(
        "--format",
        choices=["onnx", "openvino"],
        default="onnx",
        help="onnx: one .onnx file (onnxruntime, TensorRT); openvino: .xml + .bin",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="input, weights and activations (maps and scores are float32)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output file (.onnx; for openvino the .xml, its .bin beside it)"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("selfcheck", help="check the installation: fused ops vs plain torch, with timings")
    p.add_argument("--arch", choices=["small", "medium"], default="small", help="EfficientAD-S or -M")
    p.add_argument("--batch", type=int, default=1, help="images per run")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (>= 256)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per path; the median is reported")
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_selfcheck)

    p = sub.add_parser("convert", help="convert between anomalib's EfficientAd state dict and our model file")
    p.add_argument(
        "--from",
        dest="source",
        choices=["anomalib", "ours"],
        required=True,
        help="anomalib: a state dict / Lightning checkpoint (.pth, .ckpt, .safetensors) -> our model file; "
        "ours: our model file -> an anomalib state dict (.pth, or .safetensors)",
    )
    p.add_argument("input", type=Path, help="the file to convert")
    p.add_argument("--allow-unverified", action="store_true", help=f"--from ours: {ALLOW_UNVERIFIED_HELP}")
    p.add_argument("--to", type=Path, required=True, help="output file (written atomically)")
    p.add_argument(
        "--padded",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="anomalib's padding=True/False (default: from the checkpoint's hyper-parameters, else False)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[256],
        metavar="N",
        help="H [W] the anomalib model was trained at (its pre-processor's resize)",
    )
    p.set_defaults(func=cmd_convert)
