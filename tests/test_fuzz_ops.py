"""A seeded fuzz of the public ops and of infer / load_model, run in a subprocess so that a
segfault, abort or hang fails as one (the probe is tests/fuzz_probe.py). Every call returns
a checked result or raises ValueError / TypeError; none crashes or raises anything else."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientad_ext import ops
from efficientad_ext.inference.winograd import prepare_weights
from efficientad_ext.ops import winograd_conv2d

PROBE = Path(__file__).with_name("fuzz_probe.py")


def test_fuzzed_calls_never_crash_and_fail_only_with_clear_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(PROBE), "14", "1.0", str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = [r for r in lines if "outcome" in r]
    started = [r["start"] for r in lines if "start" in r]
    assert proc.returncode == 0, (
        f"probe died (rc {proc.returncode}) in {started[-1] if started else 'setup'}: {proc.stderr[-2000:]}"
    )
    assert len(results) == len(started) >= 1800
    counts = collections.Counter(r["outcome"] for r in results)
    per_target = collections.Counter((r["target"], r["outcome"]) for r in results)
    print(f"fuzz: {len(results)} calls, {dict(counts)}; per target {dict(per_target)}")
    (Path(os.environ.get("EFFICIENTAD_PROBE_REPORT", tmp_path)) / "fuzz_counts.json").write_text(
        json.dumps({"calls": len(results), **counts, "per_target": {f"{t}/{o}": n for (t, o), n in per_target.items()}})
    )
    bad = [
        f"{r['target']} {r['case']}: {r['outcome']}: {r['detail']}"
        for r in results
        if r["outcome"] in ("unclear", "wrong")
    ]
    assert not bad, "\n".join(bad[:30])
    # The fuzz reaches both sides of every target.
    for target in ("quantile", "hard_feature_loss", "anomaly_maps", "conv2d_relu_pool", "winograd_conv2d", "infer"):
        assert per_target[(target, "ok")] > 0 and per_target[(target, "clear")] > 0, target


@pytest.mark.parametrize(
    "padding, kernel, pool_padding, match",
    [
        (-1, 3, 0, r"padding must be an integer in \[0, 65536\], got -1"),
        (2**40, 3, 0, r"padding must be an integer in \[0, 65536\], got 1099511627776"),
        (1, 0, 0, r"the kernel must be at least 1x1, got 0x0"),
        (0, 3, 2, r"pool_padding must be 0 or 1, got 2"),
    ],
)
def test_layer_arguments_are_value_errors(padding, kernel, pool_padding, match):
    x, w = torch.rand(1, 2, 8, 8), torch.rand(3, 2, kernel, kernel)
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        ops.conv2d_relu_pool(x, w, None, padding, True, True, pool_padding)
    if kernel:
        with torch.no_grad(), pytest.raises(ValueError, match=match):
            winograd_conv2d(x, prepare_weights(w), padding, True, True, pool_padding)
