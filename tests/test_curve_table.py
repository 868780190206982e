"""``benchmarks/curve_table.py``: one curve as a table, and several sides' per-branch curves next to
each other (the per-branch comparison of issue #26)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "curve_table.py"


def _module():
    spec = importlib.util.spec_from_file_location("curve_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(step, local, glob, combined=None, with_combined_branch=True):
    branches = {"local": {"image_auroc": local}, "global": {"image_auroc": glob}}
    if with_combined_branch:
        branches["combined"] = {"image_auroc": combined}
    return {"step": step, "image_auroc": combined, "branches": branches}


def test_sides_table_aligns_steps_and_leaves_gaps(tmp_path, capsys):
    ours = {"points": [_point(300, 0.66, 0.53, 0.65), _point(1000, 0.73, 0.57, 0.71)]}
    theirs = {"points": [_point(300, 0.67, 0.45, 0.60, with_combined_branch=False)]}
    (tmp_path / "a.json").write_text(json.dumps(ours))
    (tmp_path / "b.json").write_text(json.dumps(theirs))
    assert _module().main(["--side", f"ours={tmp_path / 'a.json'}", "--side", f"anomalib={tmp_path / 'b.json'}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("|")[1:-1] == [
        " step ",
        " ours local ",
        " ours global ",
        " ours combined ",
        " anomalib local ",
        " anomalib global ",
        " anomalib combined ",
    ]
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells == ["300", "0.6600", "0.5300", "0.6500", "0.6700", "0.4500", "0.6000"]  # combined from the point
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells == ["1000", "0.7300", "0.5700", "0.7100", "", "", ""]


def test_sides_table_names_a_missing_curve_and_a_bad_side(tmp_path):
    module = _module()
    with pytest.raises(SystemExit, match="anomalib: .* does not exist"):
        module.main(["--side", f"anomalib={tmp_path / 'none.json'}"])
    with pytest.raises(SystemExit):
        module.main(["--side", "no-equals-sign"])
