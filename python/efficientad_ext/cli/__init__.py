"""The ``efficientad`` command line: ``train``, ``train-all``, ``distill``, ``demo``
(:mod:`.train_commands`); ``eval``, ``infer``, ``calibrate`` (:mod:`.score_commands`); ``export``,
``selfcheck``, ``convert`` (:mod:`.model_commands`); ``serve`` (:mod:`.serve_command`). Every command reports a bad input as one
line ``efficientad CMD: error: ...`` and exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from efficientad_ext.cli.model_commands import add_model_parsers
from efficientad_ext.cli.options import HelpWithDefaults
from efficientad_ext.cli.score_commands import add_score_parsers
from efficientad_ext.cli.serve_command import add_serve_parser
from efficientad_ext.cli.train_commands import add_demo_parser, add_distill_parser, add_train_parsers
from efficientad_ext.cpu_heap import pad_heap_top
from efficientad_ext.data import ImageError
from efficientad_ext.formats.model_file import ModelFileError
from efficientad_ext.training.distributed import torchrun_env

__all__ = ["build_parser", "main"]

# Commands that train: their steps allocate and free tensors of ~100 MB each time (cpu_heap.py).
HEAP_PADDED_COMMANDS = ("train", "train-all", "distill", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientad",
        description="EfficientAD anomaly detection (fused PyTorch C++/CUDA ops)",
        formatter_class=HelpWithDefaults,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level for every command")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parsers(sub)
    add_distill_parser(sub)
    add_score_parsers(sub)
    add_model_parsers(sub)
    add_demo_parser(sub)
    add_serve_parser(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpWithDefaults
    return parser


def _allocation_failure(e: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, torch's OutOfMemoryError (CUDA), or the
    RuntimeError torch's CPU allocator raises ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded by commands that keep provenance (distill)

    env = torchrun_env()  # under torchrun, only rank 0 logs progress; every rank warns
    logging.basicConfig(
        level=logging.INFO
        if (args.verbose or args.command in ("train", "demo", "distill", "train-all")) and (env is None or env.is_main)
        else logging.WARNING,
        format=("" if env is None else f"[rank {env.rank}] ") + "%(levelname)s %(name)s: %(message)s",
    )

    try:
        if args.command in HEAP_PADDED_COMMANDS:
            pad = pad_heap_top()
            logging.getLogger("efficientad_ext").info(
                "heap top pad: %s", f"{pad / 2**30:.2f} GiB" if pad else "glibc's defaults"
            )
        return args.func(args)
    except ModelFileError as e:  # one line, whatever the underlying reader said
        print(f"efficientad {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ImageError) as e:
        print(f"efficientad {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _allocation_failure(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(
            f"efficientad {args.command}: error: out of memory ({first[:300]}); lower --batch-size or the image size, "
            "or run on a machine with more memory",
            file=sys.stderr,
        )
        return 2
    except FloatingPointError as e:  # a diverging run: the cause is the settings, not a bug
        print(
            f"efficientad {args.command}: error: {e}. The last checkpoint in --out is from before the divergence; "
            "try a lower --lr or another --seed",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
