"""What an inference variant costs in accuracy: one trained model, one labelled test set, each
variant's metrics beside the reference's, and the decisions it flips (issue #29 item 2's gate).

    python benchmarks/variant_accuracy.py runs/x/model.safetensors path/to/magnetic-tile \\
        --variants direct large_tiles small_tiles --out variant_accuracy.json

Variants (``--variants``; the first one is the reference the others are compared with):

* ``direct``: float32, oneDNN direct convolutions (``cpu_winograd=False``);
* ``large_tiles`` / ``small_tiles``: float32 Winograd with 8x8 / 6x6 input tiles
  (``cpu_winograd_tiles``);
* ``bfloat16``: ``infer(dtype=torch.bfloat16)`` with the default options; refused on a CPU
  without native bfloat16 (oneDNN falls back to reference code there, hours for a test set)
  unless ``--allow-slow-bfloat16``.

Per variant: image AUROC, pixel AUROC and AU-PRO of the combined map (as ``eval`` computes
them), the largest |map - reference map| over all test pixels relative to the reference maps'
range, the largest |score - reference score|, and, at the model's stored decision threshold,
the test images whose decision differs from the reference's, each with its two scores. One
model, one pass per variant, no randomness: the figures are exact for this model and set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from efficientad_ext.data.layouts import open_dataset
from efficientad_ext.evaluation.evaluator import predict
from efficientad_ext.evaluation.metrics import au_pro, image_auroc, pixel_auroc
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.model_file import load_model
from efficientad_ext.training.precision import cpu_has_native_bf16, describe_cpu

# name -> (inference option changes, compute dtype)
VARIANTS: dict[str, tuple[dict, torch.dtype]] = {
    "direct": ({"cpu_winograd": False}, torch.float32),
    "large_tiles": ({"cpu_winograd": True, "cpu_winograd_tiles": "large"}, torch.float32),
    "small_tiles": ({"cpu_winograd": True, "cpu_winograd_tiles": "small"}, torch.float32),
    "bfloat16": ({}, torch.bfloat16),
}


def _metrics(maps: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None) -> dict:
    row = {"image_auroc": image_auroc(scores, labels)}
    if masks is not None:
        row["pixel_auroc"] = pixel_auroc(maps, masks)
        row["au_pro"] = au_pro(maps, masks, fpr_limit=0.3)
    return row


def _against_reference(maps, scores, ref_maps, ref_scores, threshold: float | None, names: list[str]) -> dict:
    span = (ref_maps.max() - ref_maps.min()).item()
    row = {
        "max_map_difference_of_range": (maps - ref_maps).abs().max().item() / span if span > 0 else None,
        "max_score_difference": (scores - ref_scores).abs().max().item(),
    }
    if threshold is not None:
        flipped = ((scores > threshold) != (ref_scores > threshold)).nonzero().flatten().tolist()
        row["decisions_flipped"] = len(flipped)
        row["flipped"] = [
            {"image": names[i], "reference_score": ref_scores[i].item(), "score": scores[i].item()} for i in flipped
        ]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["direct", "large_tiles", "small_tiles"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--allow-slow-bfloat16", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if "bfloat16" in args.variants and not (cpu_has_native_bf16() or args.allow_slow_bfloat16):
        ap.error("bfloat16 on this CPU has no native instructions (hours per test set); pass --allow-slow-bfloat16")
    model = load_model(args.model, device="cpu")
    samples = open_dataset(args.dataset).test
    if not samples:
        ap.error(f"{args.dataset} has no test images (expected <dataset>/test/<type>/...)")
    results: dict[str, dict] = {}
    reference = None
    threshold = None if model.threshold is None else model.threshold.value
    for name in args.variants:
        changes, dtype = VARIANTS[name]
        model.inference_options = replace(model.inference_options, **changes)
        t0 = time.perf_counter()
        dataset, maps, scores = predict(model, samples, args.batch_size, dtype=dtype)
        seconds = time.perf_counter() - t0
        if reference is None:
            labels = torch.tensor([s.label for s in dataset.samples])
            names = [str(Path(s.path).relative_to(args.dataset)) for s in dataset.samples]
            with_masks = all(s.mask_path is not None for s in dataset.samples if s.label == 1)
            masks = torch.stack([dataset[i]["mask"][0] for i in range(len(dataset))]) if with_masks else None
            reference = (maps, scores)
        row = {"dtype": str(dtype).removeprefix("torch."), "options": changes, "seconds": round(seconds, 1)}
        row |= _metrics(maps, scores, labels, masks)
        row |= _against_reference(maps, scores, *reference, threshold, names)
        results[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "flipped"}), flush=True)
    out = {
        "model": str(args.model),
        "dataset": str(args.dataset),
        "reference": args.variants[0],
        "threshold": threshold,
        "images": len(labels),
        "anomalous": int(labels.sum()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {describe_cpu()}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "variants": results,
    }
    write_text_atomically(args.out, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
