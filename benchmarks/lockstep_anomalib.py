"""Lock-step training comparison with anomalib 2.7.0's ``EfficientAdModel``: the same initial
weights, the same training images, penalty images, augmentation draws and dropout masks fed
to both loops, float32; their loss terms and weights compared after every step.

Both sides start from anomalib's seeded initialisation (converted to ours), with the same
teacher and teacher mean/std. Per step, one training image and one penalty image are drawn
once and given to both; the autoencoder branch's augmentation (kind and factor) is drawn once,
anomalib applies it with torchvision's functional adjustments (as its
``choose_random_aug_image`` does; we replace only the random draw), ours with
:func:`efficientad_ext.training.augment.color_jitter_one_of`; torch's global generator is
reseeded before each step on both sides, so the autoencoder's dropout masks are the same
draws (both autoencoders call their six dropouts in the same order on the same shapes).

    python benchmarks/lockstep_anomalib.py ../shared/data/magnetic-tile --steps 300 \
        --penalty-dir ../shared/data/imagenet-samples --out benchmarks/results/lockstep.json

Needs anomalib (``pip install --no-deps -r .ci/peers-requirements.txt``). The verdict per
step: the largest relative difference of each loss term, and of the student's and the
autoencoder's weights (max |ours - theirs| / max |theirs| per tensor, the largest tensor).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path

import torch

from efficientad_ext.data import list_images, load_image, open_dataset, resize_image
from efficientad_ext.formats.anomalib import from_anomalib_state_dict
from efficientad_ext.formats.anomalib_layout import autoencoder_key_map, pdn_key_map
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.teacher_file import load_teacher_weights
from efficientad_ext.models.efficientad import EfficientAD
from efficientad_ext.training import TrainConfig, TrainStep, penalty_batch
from efficientad_ext.training.augment import draw_color_jitter

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from anomalib.models.image.efficient_ad import torch_model as anomalib_torch_model
    from torchvision.transforms import functional as TF

ADJUSTMENTS = (
    TF.adjust_brightness,
    TF.adjust_contrast,
    TF.adjust_saturation,
)  # kind 0, 1, 2 (ours and anomalib's order)


class LockStep:
    """Both models and their optimisers, stepped on the same inputs."""

    def __init__(self, teacher: str | None, train_images: torch.Tensor, steps: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.theirs = anomalib_torch_model.EfficientAdModel(model_size=anomalib_torch_model.EfficientAdModelSize.S)
        if teacher is not None:  # the same teacher file on both sides, through our loader
            ours_teacher = EfficientAD().teacher
            load_teacher_weights(ours_teacher, teacher)
            sd = ours_teacher.state_dict()
            self.theirs.teacher.load_state_dict({t: sd[o] for t, o in pdn_key_map("small").items()}, strict=True)
        with torch.no_grad():  # teacher channel statistics over the training images, set on both sides
            outs = torch.cat(
                [self.theirs.teacher(train_images[i : i + 8]) for i in range(0, len(train_images), 8)]
            ).double()
            mean, std = outs.mean(dim=(0, 2, 3)), outs.var(dim=(0, 2, 3), unbiased=False).sqrt()
            self.theirs.mean_std["mean"].copy_(mean.float().view(1, -1, 1, 1))
            self.theirs.mean_std["std"].copy_(std.float().view(1, -1, 1, 1))
        self.ours: EfficientAD = from_anomalib_state_dict(self.theirs.state_dict())
        self.config = TrainConfig(steps=steps, precision="float32", memory_format="contiguous")
        self.stepper = TrainStep(self.ours, self.config, torch.Generator().manual_seed(seed), "float32", "contiguous")
        self.opt = torch.optim.Adam(
            list(self.theirs.student.parameters()) + list(self.theirs.ae.parameters()),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
        )
        self.sched = torch.optim.lr_scheduler.StepLR(
            self.opt, step_size=int(self.config.lr_drop_at * steps), gamma=self.config.lr_drop_factor
        )
        self.initial = {
            "student": {k: v.clone() for k, v in self.theirs.student.state_dict().items()},
            "ae": {k: v.clone() for k, v in self.theirs.ae.state_dict().items()},
        }
        self.theirs.train()
        self.ours.teacher.eval()
        self.ours.student.train()
        self.ours.autoencoder.train()

    def step(
        self,
        s: int,
        image: torch.Tensor,
        penalty: torch.Tensor,
        kind: int,
        factor: float,
        dropout_seed: int,
        teacher_cache: bool = False,
        ours_factor_offset: float = 0.0,
    ) -> dict:
        """One step of each loop; their loss terms. ``teacher_cache``: give our step the teacher's
        output on ``image`` precomputed by the fused op, as training's TeacherCache does.
        ``ours_factor_offset``: added to our augmentation factor only (the tests' negative control)."""
        self.theirs.choose_random_aug_image = lambda x: ADJUSTMENTS[kind](x, factor)
        torch.manual_seed(dropout_seed)
        lst, lae, lstae = self.theirs(image, penalty)
        loss = lst + lae + lstae
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        cached = self.ours.teacher.fused_forward(self.ours.normalize(image)) if teacher_cache else None
        torch.manual_seed(dropout_seed)
        terms = self.stepper(
            s,
            image,
            penalty,
            jitter=(torch.tensor([kind]), torch.tensor([factor + ours_factor_offset])),
            teacher_images=cached,
        )
        return {
            "theirs": {"st": lst.item(), "ae": lae.item(), "stae": lstae.item()},
            "ours": {"st": terms["hard"] + terms["penalty"], "ae": terms["ae"], "stae": terms["stae"]},
        }

    def weight_differences(self) -> dict[str, float]:
        """Per network: ``{net}`` the largest over its tensors of max |ours - theirs| / max |theirs|;
        ``{net}_update`` ||ours - theirs|| / ||theirs - initial|| over all its weights (how far
        apart the two are against how far training moved them)."""
        out = {}
        ours_sd = {"student": self.ours.student.state_dict(), "ae": self.ours.autoencoder.state_dict()}
        theirs_sd = {"student": self.theirs.student.state_dict(), "ae": self.theirs.ae.state_dict()}
        for net, keys in (("student", pdn_key_map("small")), ("ae", autoencoder_key_map())):
            worst, apart, moved = 0.0, 0.0, 0.0
            for t, o in keys.items():
                a, b = ours_sd[net][o], theirs_sd[net][t]
                worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
                apart += float(((a - b).double() ** 2).sum())
                moved += float(((b - self.initial[net][t]).double() ** 2).sum())
            out[net], out[f"{net}_update"] = worst, (apart / max(moved, 1e-300)) ** 0.5
        return out


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="MVTec-layout folder (its train/good images are drawn)")
    ap.add_argument("--penalty-dir", type=Path, required=True)
    ap.add_argument(
        "--teacher", default=None, help="teacher file for both sides (default: the package's shipped teacher)"
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--teacher-cache", action="store_true", help="our step reads the teacher's output precomputed (TeacherCache)"
    )
    ap.add_argument(
        "--max-train-images", type=int, default=0, help="draw from the first N training images only (0: all)"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from efficientad_ext.training.teacher_choice import resolve_teacher

    teacher = resolve_teacher(args.teacher, "small").path
    paths = sorted(s.path for s in open_dataset(args.dataset).train)
    paths = paths[: args.max_train_images] if args.max_train_images else paths
    images = torch.stack([resize_image(load_image(p), (256, 256)) for p in paths])
    pen_paths = list_images(args.penalty_dir)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    run = LockStep(str(teacher) if teacher else None, images, args.steps, args.seed)
    rows, t0 = [], time.perf_counter()
    for s in range(args.steps):
        image = images[rng.randrange(len(images))][None]
        penalty = penalty_batch([pen_paths[rng.randrange(len(pen_paths))]], (256, 256), gen)
        kind, factor = draw_color_jitter(1, gen)
        terms = run.step(
            s, image, penalty, int(kind[0]), float(factor[0]), dropout_seed=10_000 + s, teacher_cache=args.teacher_cache
        )
        diffs = run.weight_differences()
        row = {
            "step": s + 1,
            **terms,
            "weights": diffs,
            "loss_rel": {k: relative(terms["ours"][k], terms["theirs"][k]) for k in ("st", "ae", "stae")},
        }
        rows.append(row)
        if s < 5 or (s + 1) % 25 == 0:
            print(
                f"step {s + 1}: loss rel diff st {row['loss_rel']['st']:.2e} ae {row['loss_rel']['ae']:.2e} "
                f"stae {row['loss_rel']['stae']:.2e}; weights rel diff student {diffs['student']:.2e} ae {diffs['ae']:.2e}; "
                f"apart/moved student {diffs['student_update']:.2e} ae {diffs['ae_update']:.2e}",
                flush=True,
            )
    summary = {
        "dataset": str(args.dataset),
        "steps": args.steps,
        "seed": args.seed,
        "teacher": str(teacher),
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "max_loss_rel": {k: max(r["loss_rel"][k] for r in rows) for k in ("st", "ae", "stae")},
        "max_weight_rel": {
            k: max(r["weights"][k] for r in rows) for k in ("student", "ae", "student_update", "ae_update")
        },
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.out:
        write_text_atomically(args.out, json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
