"""The corruption suite: every damaged or edited variant of a tiny model file is refused with
one clear line by `efficientad infer`, or proven harmless (bit-identical results). Runs the
probe (tests/corruption_probe.py) in a subprocess so that a crash or a hang fails as one."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("corruption_probe.py")


def test_every_corrupted_model_file_is_refused_or_harmless(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(tmp_path / "work"), "0"], capture_output=True, text=True, timeout=900, env=env
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = [r for r in lines if "outcome" in r]
    started = [r["start"] for r in lines if "start" in r]
    assert proc.returncode == 0, (
        f"probe died (rc {proc.returncode}) during {started[-1] if started else 'setup'}: {proc.stderr[-2000:]}"
    )
    assert len(results) == len(started) and len(results) > 250
    counts = collections.Counter(r["outcome"] for r in results)
    summary = (
        f"tried {len(results)}, refused {counts['refused']}, harmless {counts['harmless']}, missed {counts['missed']}"
    )
    print(summary)
    (Path(os.environ.get("EFFICIENTAD_PROBE_REPORT", tmp_path)) / "corruption_counts.json").write_text(
        json.dumps({**counts, "tried": len(results)})
    )
    missed = [f"{r['variant']}: {r['detail']}" for r in results if r["outcome"] == "missed"]
    assert not missed, summary + "\n" + "\n".join(missed)
    by_name = {r["variant"]: r for r in results}
    # Damage to the bytes is refused outright (never "harmless by luck"), except appended bytes
    # that safetensors may ignore; edits with a stale digest are refused by the digest.
    for name, r in by_name.items():
        if name.startswith(("truncated", "header byte", "data byte", "length prefix")) or "(digest keep)" in name:
            assert r["outcome"] == "refused", (name, r)
    assert by_name["metadata config.teacher_channels=1e12 (digest sign)"]["detail"].endswith(
        "config.teacher_channels must be an integer in [1, 4096], got 1000000000000"
    )
    assert "integrity digest" in by_name["training.teacher edited (digest keep)"]["detail"]
    assert by_name["training.teacher edited (digest sign)"]["outcome"] == "harmless"
    assert by_name["digest removed (file from before digests)"]["outcome"] == "harmless"
    # Without a digest a file is refused unless the user allows it (then it is checked like any other).
    refused = by_name["digest removed, without --allow-unverified"]
    assert refused["outcome"] == "refused" and "--allow-unverified" in refused["detail"], refused
    assert (
        "image_size[0] must be an integer in [256, 4096], got 16384"
        in (by_name["metadata config.image_size=16384 (digest sign)"]["detail"])
    )
