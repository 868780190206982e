"""anomalib 2.7's training loop as a resumable learning curve, scored per branch by our evaluator.

``../shared/tools/anomalib_train_loop.py`` (the accuracy anchor) trains anomalib's
``EfficientAdModel`` for N steps in one process and prints one image AUROC. A learning curve to
4,000 steps takes about 11 hours of one AVX2 core, longer than a working session, and that tool
cannot stop and go on. This file runs the same loop, resumably, in two parts:

``train`` (in a Python with anomalib 2.7.0, e.g. ``.venv-cuda``; needs no efficientad_ext):
    the tool's set-up and loop statement for statement, in the same order of random draws
    (Python's ``random`` for the hold-out shuffle, the training image and the penalty image and
    its grayscale; torch's generator for the initial weights, anomalib's augmentation draw and
    the autoencoder's dropout), so that with ``--schedule-steps N --stop-at N`` it trains
    exactly the model the tool trains with ``STEPS=N`` (tested, bit for bit:
    ``tests/test_anomalib_curve.py``). Differences, and why:

    - ``--schedule-steps`` sets the learning-rate schedule (x0.1 after 95% of it) apart from
      where the run stops, as ``efficientad train --steps 70000 --stop-at 4000`` does: both
      sides of a curve then train at a constant 1e-4 through 4,000 steps.
    - every ``--checkpoint-every`` steps (and on SIGTERM / SIGINT, after the step in progress)
      it writes the model, Adam's and the scheduler's state and both generators' states to
      ``OUT/state.pt`` atomically; ``--resume`` continues from there to the same weights as an
      uninterrupted run (tested).
    - at each ``--eval-at`` step it computes the tool's four map quantiles on the tool's hold-out
      and writes ``OUT/points/step_NNNNNN.pt`` (anomalib state dict + quantiles); the
      generators are saved before and restored after, so evaluating changes nothing in training.

``score`` (in our Python): converts each point to our model
    (:func:`efficientad_ext.formats.anomalib.from_anomalib_state_dict`, inference conformant to
    anomalib's within 1.4e-5) and evaluates it on the test set: image AUROC, pixel AUROC and
    AU-PRO of the local, global and combined maps, into ``--out`` (JSON, resumable: scored
    points are kept).

    .venv-cuda/bin/python benchmarks/anomalib_curve.py train DATASET PENALTY_DIR TEACHER \\
        --out RUN --schedule-steps 70000 --stop-at 4000 --eval-at 300,1000,2000,4000 [--resume]
    .venv/bin/python benchmarks/anomalib_curve.py score RUN DATASET --out RUN/curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import sys
import time
import warnings

import torch

STATE = "state.pt"
POINTS = "points"
# Settings a resumed run must share with the run that wrote the state.
RESUME_KEYS = ("dataset", "penalty_dir", "teacher", "seed", "schedule_steps")


# ---------------------------------------------------------------------------------------------
# train: the tool's loop, resumable (imports anomalib, not efficientad_ext)
# ---------------------------------------------------------------------------------------------


def _load(path, size: int = 256) -> torch.Tensor:
    """An image as the tool loads it: RGB, PIL bilinear resize, float in [0, 1], CHW."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def _penalty_image(penalty_paths: list) -> torch.Tensor:
    """The tool's penalty draw: a random ImageNet image, 512x512, grayscale with p = 0.3, the
    central 256x256 crop. Draws from Python's ``random`` in the tool's order."""
    import numpy as np
    from PIL import Image

    image = Image.open(random.choice(penalty_paths)).convert("RGB").resize((512, 512), Image.BILINEAR)
    if random.random() < 0.3:
        image = image.convert("L").convert("RGB")
    image = image.crop((128, 128, 384, 384))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def _load_teacher(model, teacher: pathlib.Path) -> None:
    """The tool's teacher loading: our PDN-S safetensors keys (0, 3, 6, 8) onto conv1..conv4."""
    from safetensors.torch import load_file

    state = {k.removeprefix("teacher."): v.float() for k, v in load_file(str(teacher)).items()}
    indices = (0, 3, 6, 8)
    model.teacher.load_state_dict(
        {f"conv{n + 1}.{p}": state[f"{i}.{p}"] for n, i in enumerate(indices) for p in ("weight", "bias")}, strict=True
    )


def _atomic_save(obj, path: pathlib.Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _quantiles(model, validation: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tool's map quantiles (0.9 and 0.995 of each raw map over the hold-out images)."""
    local, glob = [], []
    with torch.no_grad():
        for i in range(len(validation)):
            x = validation[i : i + 1]
            student_out, distance = model.compute_student_teacher_distance(x)
            map_st, map_ae = model.compute_maps(x, student_out, distance, normalize=False)
            local.append(map_st.flatten())
            glob.append(map_ae.flatten())
    local, glob = torch.cat(local), torch.cat(glob)
    return {
        "qa_st": torch.quantile(local, 0.9),
        "qb_st": torch.quantile(local, 0.995),
        "qa_ae": torch.quantile(glob, 0.9),
        "qb_ae": torch.quantile(glob, 0.995),
    }


class _StopRequest:
    """SIGTERM / SIGINT set a flag; the loop checkpoints after the step in progress and exits."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True


def train(args: argparse.Namespace) -> dict:
    """Runs (or resumes) the loop; returns ``{"step": ..., "points": [...]}``."""
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize

    out = pathlib.Path(args.out)
    (out / POINTS).mkdir(parents=True, exist_ok=True)
    settings = {
        "dataset": str(args.dataset),
        "penalty_dir": str(args.penalty_dir),
        "teacher": str(args.teacher),
        "seed": args.seed,
        "schedule_steps": args.schedule_steps,
    }
    stop_at = args.stop_at if args.stop_at is not None else args.schedule_steps
    if not 0 < stop_at <= args.schedule_steps:
        raise SystemExit(f"--stop-at must be in 1..--schedule-steps ({args.schedule_steps}), got {stop_at}")
    eval_at = sorted({s for s in args.eval_at if 0 < s <= stop_at})
    state_path = out / STATE
    saved = None
    if args.resume:
        if not state_path.is_file():
            raise SystemExit(f"--resume: no {state_path}; start without --resume")
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        differ = {k: (saved["settings"][k], settings[k]) for k in RESUME_KEYS if saved["settings"][k] != settings[k]}
        if differ:
            raise SystemExit(f"--resume: the state in {state_path} was written with other settings: {differ}")
    elif state_path.exists():
        raise SystemExit(f"{state_path} exists: add --resume to continue it, or choose another --out")

    # ---- the tool's set-up, in its order of random draws ----
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    dataset = pathlib.Path(args.dataset)
    train_paths = sorted((dataset / "train" / "good").glob("*.*"))
    random.shuffle(train_paths)
    n_val = max(1, len(train_paths) // 10)
    val_paths, train_paths = train_paths[:n_val], train_paths[n_val:]
    images = torch.stack([_load(p) for p in train_paths])
    validation = torch.stack([_load(p) for p in val_paths])
    penalty_paths = sorted(pathlib.Path(args.penalty_dir).glob("*.JPEG"))
    if not penalty_paths:
        raise SystemExit(f"--penalty-dir {args.penalty_dir}: no *.JPEG images (the tool's pattern)")
    model = EfficientAdModel(model_size=EfficientAdModelSize.S)
    _load_teacher(model, pathlib.Path(args.teacher))
    if saved is None:
        with torch.no_grad():  # teacher channel statistics over the training images, 8 at a time
            outs = torch.cat([model.teacher(images[i : i + 8]) for i in range(0, len(images), 8)])
            model.mean_std["mean"].copy_(outs.mean(dim=(0, 2, 3), keepdim=True))
            model.mean_std["std"].copy_(outs.std(dim=(0, 2, 3), keepdim=True))
            del outs
    params = list(model.student.parameters()) + list(model.ae.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(0.95 * args.schedule_steps), gamma=0.1)
    step, points, train_seconds = 0, [], 0.0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        random.setstate(saved["python_random"])
        torch.set_rng_state(saved["torch_random"])
        step, points, train_seconds = saved["step"], saved["points"], saved["train_seconds"]

    def checkpoint() -> None:
        _atomic_save(
            {
                "settings": settings,
                "step": step,
                "points": points,
                "train_seconds": train_seconds,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "python_random": random.getstate(),
                "torch_random": torch.get_rng_state(),
            },
            state_path,
        )

    stop = _StopRequest()
    deadline = time.monotonic() + 60 * args.time_limit if args.time_limit else None
    model.train()
    while step < stop_at:
        t0 = time.perf_counter()
        x = images[random.randrange(len(images))][None]
        loss_st, loss_ae, loss_stae = model(x, _penalty_image(penalty_paths)[None])
        loss = loss_st + loss_ae + loss_stae
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        train_seconds += time.perf_counter() - t0
        if step % args.log_every == 0:
            print(
                f"step {step}/{stop_at}: loss {loss.item():.4f} (st {loss_st.item():.4f}, ae {loss_ae.item():.4f}, "
                f"stae {loss_stae.item():.4f}), {train_seconds / step:.2f} s/step",
                flush=True,
            )
        if step in eval_at and step not in [p["step"] for p in points]:
            python_state, torch_state = random.getstate(), torch.get_rng_state()
            model.eval()
            q = _quantiles(model, validation)
            model.train()
            random.setstate(python_state)
            torch.set_rng_state(torch_state)
            name = f"step_{step:06d}.pt"
            _atomic_save(
                {"step": step, "settings": settings, "model": model.state_dict(), "quantiles": q}, out / POINTS / name
            )
            points.append({"step": step, "file": name, "seconds_per_step": train_seconds / step})
            print(f"point at step {step}: {out / POINTS / name}", flush=True)
            checkpoint()
        elif step % args.checkpoint_every == 0 or step == stop_at:
            checkpoint()
        if stop.requested or (deadline is not None and time.monotonic() > deadline):
            if step % args.checkpoint_every != 0 and step != stop_at:
                checkpoint()
            print(f"stopped at step {step} ({'signal' if stop.requested else 'time limit'}); --resume continues")
            break
    return {"step": step, "points": points, "model": model}


# ---------------------------------------------------------------------------------------------
# score: each point through our evaluator, per branch (imports efficientad_ext)
# ---------------------------------------------------------------------------------------------


def score_anomalib_model(state_dict: dict, quantiles: dict, test_samples) -> dict:
    """Our evaluator's metrics (per branch too) of an anomalib ``EfficientAdModel`` state dict
    with the tool's four map quantiles (``qa_st``, ``qb_st``, ``qa_ae``, ``qb_ae``)."""
    from efficientad_ext.evaluation.evaluator import evaluate
    from efficientad_ext.formats.anomalib import from_anomalib_state_dict

    model = from_anomalib_state_dict(state_dict)
    with torch.no_grad():
        model.quantiles.copy_(torch.stack([quantiles[k].float() for k in ("qa_st", "qb_st", "qa_ae", "qb_ae")]))
    model.calibrated = True
    return evaluate(model, test_samples, out_dir=None, write_images=False)


def score(args: argparse.Namespace) -> dict:
    from efficientad_ext.data import open_dataset

    run = pathlib.Path(args.run)
    out = pathlib.Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"run": str(run), "points": []}
    done = {p["step"] for p in result["points"]}
    state = torch.load(run / STATE, map_location="cpu", weights_only=False) if (run / STATE).is_file() else None
    timing = {p["step"]: p["seconds_per_step"] for p in (state["points"] if state else [])}
    test = open_dataset(args.dataset).test
    for path in sorted((run / POINTS).glob("step_*.pt")):
        point = torch.load(path, map_location="cpu", weights_only=False)
        if point["step"] in done:
            continue
        metrics = score_anomalib_model(point["model"], point["quantiles"], test)
        result["points"].append(
            {
                "step": point["step"],
                "seed": point["settings"]["seed"],
                "schedule_steps": point["settings"]["schedule_steps"],
                "seconds_per_step": timing.get(point["step"]),
                **{
                    k: metrics.get(k)
                    for k in ("image_auroc", "pixel_auroc", "au_pro", "image_auroc_per_type", "branches")
                },
            }
        )
        result["points"].sort(key=lambda p: p["step"])
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)
        b = metrics.get("branches") or {}
        print(
            f"step {point['step']}: combined {metrics['image_auroc']:.4f}, "
            + ", ".join(f"{k} {v['image_auroc']:.4f}" for k, v in b.items()),
            flush=True,
        )
    return result


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps like 300,1000, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run or resume anomalib's loop (anomalib's Python)")
    t.add_argument("dataset", type=pathlib.Path, help="MVTec-layout folder (train/good, test/...)")
    t.add_argument("penalty_dir", type=pathlib.Path, help="ImageNet images (*.JPEG), as the tool")
    t.add_argument("teacher", type=pathlib.Path, help="PDN-S teacher .safetensors (our keys), as the tool")
    t.add_argument("--out", type=pathlib.Path, required=True)
    t.add_argument("--seed", type=int, default=int(os.environ.get("SEED", "0")), help="the tool's SEED")
    t.add_argument("--schedule-steps", type=int, default=70000, help="lr x0.1 after 95%% of these")
    t.add_argument("--stop-at", type=int, default=None, help="stop after this step (default: the schedule)")
    t.add_argument("--eval-at", type=_steps, default=[], help="steps to save a scored point at")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--time-limit", type=float, default=None, help="minutes, then checkpoint and stop")
    t.add_argument("--resume", action="store_true")
    s = sub.add_parser("score", help="score the saved points per branch (our Python)")
    s.add_argument("run", type=pathlib.Path)
    s.add_argument("dataset", type=pathlib.Path)
    s.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.command == "train":
            r = train(args)
            print(json.dumps({"step": r["step"], "points": r["points"]}))
        else:
            score(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
