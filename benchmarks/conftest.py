"""Shared set-up of the efficientad_ext benchmarks (pytest-benchmark).

Collection: the project's pytest config only collects ``tests/`` (``testpaths``) and the default
``test_*.py`` pattern, so a plain ``pytest`` never runs these files. This conftest collects every
``benchmarks/bench_*.py`` when the ``benchmarks`` folder is given explicitly::

    python -m pytest benchmarks --benchmark-only              # the whole suite
    python -m pytest benchmarks/bench_quantile.py --benchmark-only  # one file

Every case compares, in one pytest-benchmark *group* (same inputs, same device), our op
("ours") with the plain-PyTorch reference ("eager") and ``torch.compile`` of that reference
("compiled"), plus extra baselines where they make sense. ``extra_info`` of each benchmark
records ``op``, ``impl`` and ``case``; ``benchmarks/summarize.py`` turns the JSON into tables.

Options:
    --bench-no-compile   skip the torch.compile baselines (they cost ~5-30 s of compilation each).
Environment: threads are left at torch's default (``torch.get_num_threads()`` is recorded).
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import efficientad_ext

BENCH_DIR = Path(__file__).resolve().parent
BENCH_FILES = "bench_*.py"


# ----------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent):
    # Files named on the command line are collected by pytest itself (whatever their name).
    if fnmatch.fnmatch(file_path.name, BENCH_FILES) and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser):
    parser.addoption(
        "--bench-no-compile",
        action="store_true",
        default=False,
        help="efficientad benchmarks: skip the torch.compile(reference) baselines",
    )


# ----------------------------------------------------------------------------- skip reasons -> JSON

_SKIPS: list[dict] = []


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        _SKIPS.append({"test": report.nodeid, "reason": str(report.longrepr[2]).removeprefix("Skipped: ")})


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Skipped cases (no GPU, torch.compile failures, ...) go into the JSON as ``skipped`` so
    that summarize.py can say what was not measured."""
    output_json["skipped"] = list(_SKIPS)
    output_json["efficientad"] = {
        "build_info": efficientad_ext.build_info(),
        "torch_num_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- fixtures


def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not efficientad_ext.build_info().get("cuda_kernels", False):
        return "efficientad_ext was built without CUDA kernels"
    return None


_CUDA_SKIP = _cuda_skip_reason()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(_CUDA_SKIP is not None, reason=str(_CUDA_SKIP)))]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """``cpu`` always; ``cuda`` only with a GPU and a CUDA build of the extension."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Measure:
    """Times ``fn`` with ``benchmark.pedantic`` (one call per round); the number of rounds is
    sized from one untimed warm-up call so that every case takes about ``target_s`` seconds,
    between ``min_rounds`` and ``max_rounds``; ``check(result of the warm-up call)`` validates
    the output first. CUDA work is synchronised inside the timed call."""

    def __init__(self, benchmark, device: torch.device, config) -> None:
        self.benchmark = benchmark
        self.device = device
        self.config = config

    def __call__(
        self,
        fn: Callable[[], object],
        *,
        check: Callable[[object], None] | None = None,
        op: str,
        group: str,
        impl: str,
        case: str,
        target_s: float = 2.0,
        min_rounds: int = 3,
        max_rounds: int = 50,
        **extra,
    ):
        device = self.device

        def timed():
            out = fn()
            sync(device)
            return out

        t0 = time.perf_counter()
        out = timed()  # untimed warm-up: sizes the rounds, and its result is checked
        dt = time.perf_counter() - t0
        if check is not None:
            check(out)  # never time a wrong answer
        del out
        rounds = int(min(max_rounds, max(min_rounds, math.ceil(target_s / max(dt, 1e-6)))))
        warmup = 0 if dt > 0.25 else min(5, rounds)
        self.benchmark.group = f"{group} [{device.type}]"
        self.benchmark.extra_info.update(
            op=op,
            impl=impl,
            case=case,
            device=device.type,
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            **extra,
        )
        return self.benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)

    def compile(self, fn: Callable, warm: Callable[[Callable], object], **compile_kwargs) -> Callable:
        """``torch.compile(fn)`` (static shapes), warmed up by calling ``warm(compiled)`` twice
        outside the timed region. Skips the case, with the reason, if compilation fails."""
        if self.config.getoption("--bench-no-compile"):
            pytest.skip("torch.compile baselines disabled (--bench-no-compile)")
        torch._dynamo.reset()  # fresh caches per case: no recompile limit, no cross-case effects
        compile_kwargs.setdefault("dynamic", False)
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(fn, **compile_kwargs)
            warm(compiled)
            sync(self.device)
            compile_s = time.perf_counter() - t0
            warm(compiled)
            sync(self.device)
        except Exception as exc:  # noqa: BLE001 - any failure of the compiler stack is a skip
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            pytest.skip(f"torch.compile failed on this machine: {type(exc).__name__}: {first[:300]}")
        self.benchmark.extra_info["compile_s"] = round(compile_s, 2)
        return compiled


class OneEntryCache:
    """Keeps the last computed value (e.g. the reference output of the case whose impls are
    being timed: impl is the innermost parameter, so they run one after the other)."""

    def __init__(self) -> None:
        self.key = None
        self.value = None

    def get(self, key, compute: Callable[[], object]):
        if key != self.key:
            self.key, self.value = None, None  # free the previous value first
            self.value = compute()
            self.key = key
        return self.value


@pytest.fixture
def measure(benchmark, device, request) -> Measure:
    return Measure(benchmark, device, request.config)


@pytest.fixture(scope="session")
def reference_cache() -> OneEntryCache:
    """The reference result of the current case, computed once for all its impls."""
    return OneEntryCache()
