"""cpu_heap.pad_heap_top: glibc's heap keeps freed pages mapped, so a training step's large
tensors stop page-faulting; the command line sets it for the commands that train, and only those."""

from __future__ import annotations

import subprocess
import sys

import pytest

import efficientad_ext.cli as cli
from efficientad_ext import cpu_heap
from efficientad_ext.cpu_heap import ENV_VAR, _glibc, pad_heap_top

glibc_only = pytest.mark.skipif(_glibc() is None, reason="the heap top pad is glibc's (Linux)")

# Page faults of four allocate-touch-free cycles of a 100 MB tensor, in a fresh process.
_CYCLES = """
import resource, sys, torch
from efficientad_ext.cpu_heap import pad_heap_top
print(pad_heap_top(int(sys.argv[1])))
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(25_000_000)
    x.fill_(1.0)
    del x
    small = [torch.empty(1000) for _ in range(100)]  # what a step allocates in between
    del small
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def _faults(pad: int) -> tuple[int, list[int]]:
    out = subprocess.run([sys.executable, "-c", _CYCLES, str(pad)], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.strip().splitlines()
    return int(applied), [int(f) for f in faults.split()]


@glibc_only
def test_a_padded_heap_stops_refaulting_large_tensors():
    pages = 100_000_000 // 4096
    applied, faults = _faults(1 << 30)
    assert applied == 1 << 30
    # Some later cycle is served from pages already mapped (glibc may trim and regrow the top
    # between cycles, so not every one is; measured here: 24,500, 0, 24,400, 0 or 24,500, 24,400, 0, 0).
    assert min(faults[1:]) < pages // 20, faults
    # Negative control: glibc's defaults map a 100 MB tensor afresh every time.
    applied, faults = _faults(0)
    assert applied == 0
    assert min(faults) > pages // 2, faults


def test_size_from_argument_or_environment_and_bad_values_named(monkeypatch):
    assert pad_heap_top(0) == 0
    monkeypatch.setenv(ENV_VAR, "0")
    assert pad_heap_top() == 0
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be a byte count"):
        pad_heap_top()
    with pytest.raises(ValueError, match="heap top pad must be in"):
        pad_heap_top(-1)
    with pytest.raises(ValueError, match="heap top pad must be in"):
        pad_heap_top(2**31)
    # The size reaches mallopt; a stand-in C library, so this test process keeps its own heap.
    calls = []

    class FakeGlibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        malloc, free, sbrk = (lambda self, n: 0), (lambda self, p: None), (lambda self, n: 0)

    monkeypatch.setattr(cpu_heap, "_glibc", FakeGlibc)
    monkeypatch.setenv(ENV_VAR, str(64 << 20))
    assert pad_heap_top() == 64 << 20 and calls == [(-2, 64 << 20)]  # M_TOP_PAD
    monkeypatch.delenv(ENV_VAR)
    assert pad_heap_top() == 1 << 30 and calls[-1] == (-2, 1 << 30)
    calls.clear()
    FakeGlibc.mallopt = lambda self, param, value: 0  # glibc refuses: reported as nothing set
    assert pad_heap_top() == 0


def test_the_command_line_pads_the_heap_for_training_commands_only(monkeypatch, tmp_path, capsys):
    calls = []

    def record():
        calls.append(True)
        raise ValueError("stopped after the heap setting")

    monkeypatch.setattr(cli, "pad_heap_top", record)
    assert cli.main(["train", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "stopped after the heap setting" in capsys.readouterr().err and calls == [True]
    assert cli.main(["distill", "--images", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert len(calls) == 2
    assert cli.main(["infer", str(tmp_path / "missing.safetensors"), str(tmp_path), "--out", str(tmp_path / "i")]) == 2
    assert len(calls) == 2  # inference keeps glibc's defaults
    assert set(cli.HEAP_PADDED_COMMANDS) == {"train", "train-all", "distill", "demo"}
