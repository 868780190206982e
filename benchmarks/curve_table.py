"""A learning curve's ``curve.json`` (written by ``efficientad train --eval-dataset ...``) as a
Markdown table: one row per evaluated step, image AUROC, pixel AUROC, AU-PRO, the image AUROC and
pixel AUROC of the local and global maps alone (points written since eval reports them), and
image AUROC per defect type. With ``--side LABEL=curve.json`` (twice or more): the sides' curves
next to each other, one row per step, the image AUROC of each side's local, global and combined
map (issue #26's per-branch curves: ours and anomalib's loop, ``benchmarks/branch_curves.sh``).

    python benchmarks/curve_table.py runs/curve/curve.json
    python benchmarks/curve_table.py --side ours=runs/curve/ours_s0/curve.json --side anomalib=runs/curve/anomalib_s0/curve.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table(curve: dict) -> str:
    points = curve["points"]
    types = sorted({t for p in points for t in (p.get("image_auroc_per_type") or {})})
    branch_cols = [(b, k) for b in ("local", "global") for k in ("image_auroc", "pixel_auroc")]
    head = [
        "step",
        "image AUROC",
        "pixel AUROC",
        "AU-PRO",
        *(f"{b} {'image' if k == 'image_auroc' else 'pixel'}" for b, k in branch_cols),
        *types,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]

    def fmt(v) -> str:
        return "" if v is None else f"{v:.4f}"

    for p in points:
        per_type = p.get("image_auroc_per_type") or {}
        branches = p.get("branches") or {}
        row = [
            str(p["step"]),
            fmt(p.get("image_auroc")),
            fmt(p.get("pixel_auroc")),
            fmt(p.get("au_pro")),
            *(fmt(branches.get(b, {}).get(k)) for b, k in branch_cols),
            *(fmt(per_type.get(t)) for t in types),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


BRANCHES = ("local", "global", "combined")


def sides_table(curves: dict[str, dict]) -> str:
    """Image AUROC per branch, one column group per side, one row per step any side evaluated
    (blank where a side has no point at that step)."""
    by_step = {label: {p["step"]: p for p in curve["points"]} for label, curve in curves.items()}
    steps = sorted({s for points in by_step.values() for s in points})
    head = ["step", *(f"{label} {b}" for label in curves for b in BRANCHES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for step in steps:
        row = [str(step)]
        for label in curves:
            point = by_step[label].get(step)
            branches = (point or {}).get("branches") or {}
            for b in BRANCHES:
                v = branches.get(b, {}).get("image_auroc")
                if v is None and b == "combined" and point is not None:
                    v = point.get("image_auroc")
                row.append("" if v is None else f"{v:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _side(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=path/to/curve.json, got {text!r}")
    return label, Path(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curve_json", type=Path, nargs="?")
    ap.add_argument("--side", type=_side, action="append", default=[], metavar="LABEL=CURVE_JSON")
    args = ap.parse_args(argv)
    if args.side:
        curves = {}
        for label, path in args.side:
            if not path.is_file():
                raise SystemExit(f"--side {label}: {path} does not exist (no point scored yet?)")
            curves[label] = json.loads(path.read_text())
        print(sides_table(curves))
        return 0
    if args.curve_json is None:
        ap.error("give a curve.json, or --side LABEL=curve.json twice or more")
    curve = json.loads(args.curve_json.read_text())
    if not curve.get("points"):
        raise SystemExit(f"{args.curve_json} has no evaluated points yet")
    print(f"{curve.get('title', '')}, {curve.get('test_images', '?')} test images\n")
    print(table(curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
