"""The build: build_info, registrations per device, refusal of a torch mismatch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import efficientad_ext

OPS = [
    "quantile",
    "hard_feature_loss",
    "hard_feature_loss_backward",
    "anomaly_maps_raw",
    "anomaly_maps",
    "conv2d_relu_pool",
]


def test_build_info_describes_the_build():
    info = efficientad_ext.build_info()
    assert info["torch_version"] == torch.__version__ == info["running_torch_version"]
    assert isinstance(info["cuda_kernels"], bool)
    assert info["cxx_compiler"]
    if info["cuda_kernels"]:
        assert info["cuda_archs"] and info["torch_cuda_version"] == torch.version.cuda
    else:
        assert info["cuda_archs"] == ""
    assert info["cuda_available"] == (info["cuda_kernels"] and torch.cuda.is_available())


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernels_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"efficientad::{op}", "CPU")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_registered_when_built(op):
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(f"efficientad::{op}", "CUDA")
    assert has_cuda == efficientad_ext.build_info()["cuda_kernels"]


def test_pdn_forward_is_device_generic():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("efficientad::pdn_forward", "CompositeExplicitAutograd")


# Drops an editable install's import redirect so that the copy in the working folder is imported.
_IMPORT_WITHOUT_EDITABLE_REDIRECT = (
    "import sys; sys.meta_path = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]; "
    "sys.path.insert(0, ''); import efficientad_ext"
)


def test_torch_mismatch_is_refused_with_a_clear_message(tmp_path):
    # A copy of the installed package whose build record names another torch release.
    import shutil
    from pathlib import Path

    src = Path(efficientad_ext.__file__).parent
    dst = tmp_path / "efficientad_ext"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    # An editable install keeps the compiled module and build record in site-packages.
    from efficientad_ext._loader import _compiled_dir

    for f in _compiled_dir().iterdir():
        if f.name.startswith("_C") or f.name == "_build_config.json":
            shutil.copy2(f, dst / f.name)
    config = json.loads((dst / "_build_config.json").read_text())
    config["torch_version"] = "1.0.0"
    (dst / "_build_config.json").write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITHOUT_EDITABLE_REDIRECT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "compiled against torch 1.0.0" in proc.stderr and "--no-build-isolation" in proc.stderr
