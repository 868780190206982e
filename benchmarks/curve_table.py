"""A learning curve's ``curve.json`` (written by ``efficientad train --eval-dataset ...``) as a
Markdown table: one row per evaluated step, image AUROC, pixel AUROC, AU-PRO, the image AUROC and
pixel AUROC of the local and global maps alone (points written since eval reports them), and
image AUROC per defect type.

    python benchmarks/curve_table.py runs/curve/curve.json
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curve_json", type=Path)
    args = ap.parse_args(argv)
    curve = json.loads(args.curve_json.read_text())
    if not curve.get("points"):
        raise SystemExit(f"{args.curve_json} has no evaluated points yet")
    print(f"{curve.get('title', '')}, {curve.get('test_images', '?')} test images\n")
    print(table(curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
