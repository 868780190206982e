#!/usr/bin/env python
"""One side-by-side table from the JSON of ``bench_cpu_peers.py`` (issue #6).

    python benchmarks/peers_table.py peers.json

Rows: inference and training step at each batch size; columns: per-image median time of each
implementation, then ratios. ``X / ours`` > 1 means ours is X times faster. Standard library only.
"""

from __future__ import annotations

import argparse
import sys

from summarize import fmt_time, header, load, skipped

INFER = ["ours", "ours_direct", "ours_bf16", "anomalib", "openvino_f32", "openvino_bf16"]
TRAIN = ["ours", "anomalib"]
# (numerator impl, denominator impl): how many times faster the denominator is.
INFER_RATIOS = [
    ("anomalib", "ours"),
    ("openvino_f32", "ours"),
    ("openvino_bf16", "ours"),
    ("ours_direct", "ours"),
    ("anomalib", "ours_bf16"),
    ("openvino_bf16", "ours_bf16"),
]
TRAIN_RATIOS = [("anomalib", "ours")]


def per_image(b: dict | None) -> float | None:
    if b is None:
        return None
    return b["stats"]["median"] / int(b.get("extra_info", {}).get("batch", 1))


def ratio(num: float | None, den: float | None) -> str:
    return "-" if num is None or den is None or den == 0 else f"{num / den:.2f}x"


def table(data: dict, op: str, impls: list[str], ratios: list[tuple[str, str]]) -> list[str]:
    groups: dict[str, dict[str, dict]] = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if info.get("op") == op:
            groups.setdefault(info["case"], {})[info["impl"]] = b
    if not groups:
        return []
    present = [i for i in impls if any(i in g for g in groups.values())]
    present_ratios = [(n, d) for n, d in ratios if n in present and d in present]
    cols = ["case"] + [f"{i} (per image)" for i in present] + [f"{n} / {d}" for n, d in present_ratios]
    out = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for case, by_impl in groups.items():
        t = {i: per_image(by_impl.get(i)) for i in present}
        row = [case] + [fmt_time(t[i]) for i in present] + [ratio(t[n], t[d]) for n, d in present_ratios]
        out.append("| " + " | ".join(row) + " |")
    notes = sorted(
        {
            f"{b['extra_info'].get('impl')}: precision hint {b['extra_info']['precision_hint']}, used "
            f"{b['extra_info']['precision_used']} (OpenVINO {b['extra_info'].get('openvino')})"
            for g in groups.values()
            for b in g.values()
            if "precision_used" in b.get("extra_info", {})
        }
    )
    threads = sorted({str(b.get("extra_info", {}).get("threads")) for g in groups.values() for b in g.values()})
    out += ["", f"threads: {', '.join(threads)}"] + [f"- {n}" for n in notes] + [""]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="file(s) written by pytest --benchmark-json=... (merged)")
    args = ap.parse_args(argv)
    data = load(args.json)
    lines = header(data) + ["", "### Inference, EfficientAD-S 256x256 (median per image)", ""]
    lines += table(data, "peers infer", INFER, INFER_RATIOS)
    lines += ["### Training step with a penalty batch (median per image)", ""]
    lines += table(data, "peers train step", TRAIN, TRAIN_RATIOS)
    lines += skipped(data)
    sys.stdout.write("\n".join(lines).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
