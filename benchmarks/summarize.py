#!/usr/bin/env python
"""Markdown tables from a pytest-benchmark JSON written by the efficientad benchmarks.

    python benchmarks/summarize.py bench.json            # summary per op + one table per group
    python benchmarks/summarize.py bench.json --summary  # only the per-op summary tables
    python benchmarks/summarize.py a.json b.json         # several runs (e.g. one per file), merged

With several files, a group measured in more than one keeps the entries of the last file.

Ratios are ``median(impl) / median(ours)`` in the same group (same inputs, same run): a ratio
above 1 means ours is that many times faster than ``impl``. Cases that were skipped (no GPU,
torch.compile failures, torch.quantile's size limit, ...) are listed with their reasons.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict, defaultdict

IMPL_ORDER = ["ours", "eager", "eager_cl", "compiled", "kthvalue"]


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms < 1:
        return f"{ms:.3f} ms"
    if ms < 100:
        return f"{ms:.2f} ms"
    if ms < 10_000:
        return f"{ms:.0f} ms"
    return f"{seconds:.1f} s"


def fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den == 0:
        return "-"
    r = num / den
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def impl_key(impl: str) -> tuple[int, str]:
    return (IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER), impl)


def load(paths: list[str]) -> dict:
    """One JSON, or several merged: machine info and date of the last file, all benchmarks
    (a later file's entry replaces an earlier one with the same fullname), all skips."""
    merged: dict = {}
    benchmarks: OrderedDict[str, dict] = OrderedDict()
    skips: OrderedDict[str, dict] = OrderedDict()
    dates = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        merged.update({k: v for k, v in data.items() if k not in ("benchmarks", "skipped")})
        dates.append(data.get("datetime", "?"))
        for b in data.get("benchmarks", []):
            benchmarks.pop(b["fullname"], None)
            benchmarks[b["fullname"]] = b
        for s in data.get("skipped") or []:
            skips[s["test"]] = s
    merged["benchmarks"] = list(benchmarks.values())
    merged["skipped"] = [s for t, s in skips.items() if t not in benchmarks]
    merged["datetime"] = ", ".join(dates)
    return merged


def collect(data: dict):
    """{op: {group: {impl: benchmark}}} in file order."""
    ops: OrderedDict[str, OrderedDict[str, dict]] = OrderedDict()
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        op = info.get("op", b.get("group") or "?")
        group = b.get("group") or b["name"]
        impl = info.get("impl", b["name"])
        ops.setdefault(op, OrderedDict()).setdefault(group, {})[impl] = b
    return ops


def header(data: dict) -> list[str]:
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {})
    eff = data.get("efficientad", {})
    lines = [
        f"- date: {data.get('datetime', '?')}",
        f"- machine: {cpu.get('brand_raw', m.get('processor', '?'))}, "
        f"{cpu.get('count', '?')} logical CPUs, {m.get('system', '?')} {m.get('release', '')}".rstrip(),
        f"- python {m.get('python_version', '?')}; torch threads: {eff.get('torch_num_threads', '?')}",
    ]
    bi = eff.get("build_info")
    if bi:
        lines.append(
            f"- torch {bi.get('running_torch_version', '?')}; efficientad_ext built with CUDA kernels: "
            f"{bi.get('cuda_kernels')}; CUDA available: {bi.get('cuda_available')}"
        )
    return lines


def summary_tables(ops) -> list[str]:
    out: list[str] = []
    for op, groups in ops.items():
        impls = sorted({i for g in groups.values() for i in g}, key=impl_key)
        others = [i for i in impls if i != "ours"]
        out.append(f"### {op}")
        out.append("")
        cols = ["case", "device", "ours"] + [c for i in others for c in (i, f"{i}/ours")]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 2)) + "|")
        for group, by_impl in groups.items():
            any_b = next(iter(by_impl.values()))
            info = any_b.get("extra_info", {})
            ours = by_impl.get("ours", {}).get("stats", {}).get("median")
            row = [info.get("case", group), info.get("device", "?"), fmt_time(ours)]
            for i in others:
                med = by_impl.get(i, {}).get("stats", {}).get("median")
                row += [fmt_time(med), fmt_ratio(med, ours)]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return out


def group_tables(ops) -> list[str]:
    out: list[str] = []
    for groups in ops.values():
        for group, by_impl in groups.items():
            ours = by_impl.get("ours", {}).get("stats", {}).get("median")
            out.append(f"#### {group}")
            out.append("")
            out.append("| impl | median | min | IQR | rounds | median / ours | compile + 1st call |")
            out.append("|---|---:|---:|---:|---:|---:|---:|")
            for impl in sorted(by_impl, key=impl_key):
                b = by_impl[impl]
                s = b["stats"]
                comp = b.get("extra_info", {}).get("compile_s")
                out.append(
                    f"| {impl} | {fmt_time(s['median'])} | {fmt_time(s['min'])} | {fmt_time(s['iqr'])} | "
                    f"{s['rounds']} | {fmt_ratio(s['median'], ours) if impl != 'ours' else '1'} | "
                    f"{f'{comp:.1f} s' if comp is not None else ''} |"
                )
            out.append("")
    return out


def skipped(data: dict) -> list[str]:
    skips = data.get("skipped") or []
    if not skips:
        return []
    by_reason: dict[str, list[str]] = defaultdict(list)
    for s in skips:
        by_reason[s["reason"]].append(s["test"])
    out = ["### Not measured (skipped)", "", "| reason | cases |", "|---|---:|"]
    for reason, tests in by_reason.items():
        out.append(f"| {reason.replace('|', '/')} | {len(tests)} |")
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="file(s) written by pytest --benchmark-json=...")
    ap.add_argument("--summary", action="store_true", help="only the per-op summary tables")
    args = ap.parse_args(argv)
    data = load(args.json)
    ops = collect(data)
    lines = header(data) + [""]
    lines += ["## Summary (median; X/ours > 1 means ours is faster)", ""] + summary_tables(ops)
    lines += skipped(data)
    if not args.summary:
        lines += ["## Per group", ""] + group_tables(ops)
    sys.stdout.write("\n".join(lines).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
