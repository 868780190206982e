"""The GPU machine's scripts, checked without a GPU: device_check.sh parses, and gpu_table.py's
table arithmetic (speed-ups against the right baseline, fraction of the bf16 floor) is right.
The scripts' full dry run (`bash benchmarks/device_check.sh --dry-run`) takes minutes on two
cores and is not part of the suite."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_gpu_table():
    spec = importlib.util.spec_from_file_location("gpu_table", BENCHMARKS / "gpu_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_table"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_device_check_script_parses():
    result = subprocess.run(["bash", "-n", str(BENCHMARKS / "device_check.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_table_ratios_and_floor_fraction(tmp_path):
    gt = load_gpu_table()
    settings = gt.Settings(
        device=torch.device("cpu"),
        dry_run=True,
        archs=["small"],
        teacher_channels=384,
        small_batch=1,
        large_batch=64,
        train_batches=(1, 8),
        latency_iters=1,
        throughput_iters=1,
        train_iters=1,
        compile_jobs=[],
        budget_s=1.0,
        out=tmp_path,
    )
    flops = 79e9  # 0.1 ms per image at 790 TFLOP/s
    table = gt.Table(settings, {"small": flops})
    table.add(gt.Row("small", "infer", "ref", "fp16", 1, "no", 2.0, 2.2, 500.0))
    table.add(gt.Row("small", "infer", "ref", "fp32", 1, "no", 4.0, 4.4, 250.0))
    table.add(gt.Row("small", "infer", "ours", "bf16", 1, "yes", 0.5, 0.6, 2000.0))
    table.add(gt.Row("small", "infer", "ours", "bf16", 64, "yes", 6.4, None, 10000.0))
    table.add(gt.Row("small", "train", "ref", "fp32", 1, "no", 30.0, 31.0, 33.3))
    table.add(gt.Row("small", "train", "ours", "fp32", 1, "no", 10.0, 11.0, 100.0, {"70k_steps_min": 11.7}))
    lines = {
        tuple(c.strip() for c in line.split("|")[1:7]): line.split("|")[9:12]
        for line in table.markdown().splitlines()
        if line.startswith("| small")
    }
    ours_b1 = lines[("small", "infer", "ours", "bf16", "1", "yes")]
    assert ours_b1[0].strip() == "2000.0" and ours_b1[1].strip() == "4.00"  # vs the fp16 reference, not fp32
    assert ours_b1[2].strip() == "20.0"  # 0.1 ms floor / 0.5 ms measured
    assert lines[("small", "infer", "ours", "bf16", "64", "yes")][2].strip() == "100.0"
    assert lines[("small", "infer", "ours", "bf16", "64", "yes")][1].strip() == "-"  # no B=64 baseline measured
    assert lines[("small", "train", "ours", "fp32", "1", "no")][1].strip() == "3.00"
    summary = "\n".join(gt.summary(table))
    assert "batch 1 vs eager fp16 reference: 4.00x" in summary and "11.7 min" in summary
    assert (tmp_path / "gpu_table.md").read_text() == table.markdown()  # rewritten after every row


# ----------------------------------------------------------------------------- device_check.sh preflight


def _fake_tools(tmp_path, cmake_version: str, skbuild_error: str | None):
    """A PATH dir with a fake `cmake` of that version, and a PYTHONPATH dir that shadows the
    cmake and scikit-build-core Python packages (the latter failing with `skbuild_error`)."""
    bin_dir, py_dir = tmp_path / "bin", tmp_path / "py"
    (py_dir / "cmake").mkdir(parents=True)
    (py_dir / "scikit_build_core" / "build").mkdir(parents=True)
    bin_dir.mkdir()
    fake = bin_dir / "cmake"
    fake.write_text(f"#!/bin/sh\necho 'cmake version {cmake_version}'\n")
    fake.chmod(0o755)
    (py_dir / "cmake" / "__init__.py").write_text(f"CMAKE_BIN_DIR = {str(bin_dir)!r}\n")
    (py_dir / "scikit_build_core" / "__init__.py").write_text("__version__ = '0.9.0'\n")
    body = f"raise ValueError({skbuild_error!r})" if skbuild_error else "return 'x.dist-info'"
    (py_dir / "scikit_build_core" / "build" / "__init__.py").write_text(
        f"def prepare_metadata_for_build_wheel(d, config_settings=None):\n    {body}\n"
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(py_dir),
        "PYTHON": sys.executable,
        "CUDACXX": "/bin/true",
    }
    return env


def _preflight(env):
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "device_check.sh"), "--preflight"],
        capture_output=True,
        text=True,
        env=env,
        cwd=BENCHMARKS.parent,
    )
    return result.returncode, result.stdout.strip().splitlines(), result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize(
    "cmake_version, skbuild_error, cudacxx, want",
    [
        ("3.30.2", None, "/bin/true", None),
        ("3.25.1", None, "/bin/true", "cmake 3.25.1 is too old: the build needs cmake >= 3.28"),
        ("3.30.2", "Field project.license has an invalid type, expecting a dict", "/bin/true", "PEP 639"),
        ("3.30.2", None, "/nonexistent/nvcc", "CUDACXX=/nonexistent/nvcc is not an executable file"),
    ],
)
def test_preflight_stops_with_one_clear_line(tmp_path, cmake_version, skbuild_error, cudacxx, want):
    env = _fake_tools(tmp_path, cmake_version, skbuild_error)
    env["CUDACXX"] = cudacxx
    rc, lines, stderr = _preflight(env)
    if want is None:
        if rc != 0 and "Python.h" in "\n".join(lines):
            pytest.skip("no Python.h on this machine")
        assert (rc, lines) == (0, ["preflight: ok"]), stderr
    else:
        assert rc == 3 and len(lines) == 1, (rc, lines, stderr)
        assert lines[0].startswith("PREFLIGHT FAILED: ") and want in lines[0]


def test_table_leaves_no_tmp_files_and_profiles_land_in_the_json(tmp_path):
    gt = load_gpu_table()
    settings = gt.Settings(
        device=torch.device("cpu"),
        dry_run=True,
        archs=["small"],
        teacher_channels=8,
        small_batch=1,
        large_batch=2,
        train_batches=(1, 2),
        latency_iters=1,
        throughput_iters=1,
        train_iters=1,
        compile_jobs=[],
        budget_s=1.0,
        out=tmp_path,
    )
    table = gt.Table(settings, {"small": 1e9})
    x = torch.randn(1, 3, 16, 16)
    kernels = gt.kernel_breakdown(
        lambda: torch.nn.functional.conv2d(x, torch.randn(4, 3, 3, 3)), torch.device("cpu"), 2
    )
    assert kernels and all(k.keys() == {"name", "calls_per_infer", "us_per_infer", "pct"} for k in kernels)
    table.profile("small bf16 B=1", kernels)
    table.add(gt.Row("small", "infer", "ours", "bf16", 1, "yes", 0.5, 0.6, 2000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_table.json", "gpu_table.md"]
    assert json.loads((tmp_path / "gpu_table.json").read_text())["profiles"]["small bf16 B=1"] == kernels
