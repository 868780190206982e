"""The fuzz probe: seeded random calls of the public ops and of ``infer`` / ``load_model``
with valid and invalid arguments (run by tests/test_fuzz_ops.py in a subprocess, so that a
segfault, abort or hang fails the test as one; by hand: ``python tests/fuzz_probe.py SEED N``).

Each call prints one JSON line ``{"target", "case", "outcome", "detail"}``, outcome one of

- ``ok``: returned; the result was checked (shape, dtype, finite where the inputs are);
- ``clear``: refused with ValueError / TypeError (the wrappers' argument errors);
- ``unclear``: any other exception (e.g. a RuntimeError from inside the kernel);
- ``wrong``: returned a result that fails the check.

A ``{"start": ...}`` line before each call names the call a crash happened in.
"""

from __future__ import annotations

import json
import random
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from efficientad_ext import EfficientAD, ModelConfig, load_model, ops, save_model
from efficientad_ext.inference.winograd import prepare_weights
from efficientad_ext.models.pdn import build_pdn
from efficientad_ext.ops import winograd_conv2d

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


class Rand:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        torch.manual_seed(seed)

    def pick(self, *options):
        return options[self.r.randrange(len(options))]

    def size(self, lo: int = 0, hi: int = 9) -> int:
        # Empty dimensions (lo == 0) one time in ten; the rest of the range evenly.
        if lo == 0 and self.r.random() >= 0.1:
            lo = 1
        return self.r.randint(lo, max(lo, hi))

    def tensor(self, shape, dtype=None, special: bool = True) -> torch.Tensor:
        dtype = dtype or self.pick(*DTYPES[:4])
        if dtype.is_floating_point:
            t = torch.randn(shape, dtype=torch.float64).to(dtype)
            if special and t.numel() and self.r.random() < 0.2:
                t.view(-1)[self.r.randrange(t.numel())] = self.pick(float("nan"), float("inf"), float("-inf"))
        elif dtype == torch.bool:
            t = torch.rand(shape) > 0.5
        else:
            t = torch.randint(0, 255, shape).to(dtype)
        if t.dim() >= 2 and self.r.random() < 0.2:
            t = t.transpose(-1, -2).contiguous().transpose(-1, -2)  # non-contiguous view, same shape
        return t


def _finite_if(result: torch.Tensor, *inputs: torch.Tensor) -> bool:
    if all(bool(torch.isfinite(x).all()) for x in inputs if x is not None and x.is_floating_point()):
        return bool(torch.isfinite(result.float()).all())
    return True


def case_quantile(rnd: Rand):
    x = rnd.tensor([rnd.size(0, 40) for _ in range(rnd.size(0, 3))], rnd.pick(*DTYPES[:4], *DTYPES))
    q = rnd.pick(
        0.0, 0.5, 1.0, 0.999, 0.3, [0.1, 0.9], torch.tensor([0.2, 0.7]), -0.1, 1.5, float("nan"), [], "0.5", True, 2
    )

    def call():
        out = ops.quantile(x, q)
        if x.numel() and x.is_floating_point() and not isinstance(q, (str, bool)):
            ref = torch.quantile(x.double().reshape(-1), torch.as_tensor(q, dtype=torch.float64))
            finite = torch.isfinite(x).all()
            return bool(finite) <= bool(torch.allclose(out.double(), ref, rtol=1e-2, atol=1e-2, equal_nan=True))
        return True

    return f"quantile({tuple(x.shape)} {x.dtype}, {q!r})", call


def case_hard_feature_loss(rnd: Rand):
    shape = [rnd.size(0, 3), rnd.size(0, 5), rnd.size(0, 6), rnd.size(0, 6)]
    teacher = rnd.tensor(shape)
    other = shape if rnd.r.random() < 0.8 else [s + 1 for s in shape]
    student = rnd.tensor(other, rnd.pick(teacher.dtype, teacher.dtype, teacher.dtype, torch.float32))
    p = rnd.pick(0.999, 0.0, 1.0, 0.5, 0.9, 0.99, -1.0, 2.0, float("nan"))
    reduction = rnd.pick("batch", "per_sample", "batch", "per_sample", "mean", None)

    def call():
        loss = ops.hard_feature_loss(teacher, student, p, reduction)
        return loss.dim() == 0 and _finite_if(loss, teacher, student)

    return f"hard_feature_loss({shape} {teacher.dtype}, {other} {student.dtype}, {p}, {reduction})", call


def case_anomaly_maps(rnd: Rand):
    b, c, h, w = rnd.size(0, 2), rnd.size(0, 4), rnd.size(0, 7), rnd.size(0, 7)
    dtype = rnd.pick(*DTYPES[:4])
    teacher = rnd.tensor([b, c, h, w], dtype)
    student = rnd.tensor([b, rnd.pick(2 * c, 2 * c, c), h, w], dtype)
    autoencoder = rnd.tensor([b, c, h, w], rnd.pick(dtype, dtype, torch.float32))
    mean = rnd.tensor([rnd.pick(c, c, c + 1)], torch.float32, special=False)
    std = rnd.tensor([c], torch.float32, special=False).abs() + 0.1
    quantiles = rnd.pick(
        torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.5, 0.5, 0.0, 1.0])
    )
    size = rnd.pick((h + 8, w + 8), (16, 16), (0, 4), (1, 1), (-1, 5), (h, w))
    pad = rnd.pick(0, 4, -1, 1)
    raw = rnd.r.random() < 0.3

    def call():
        with torch.no_grad():
            if raw:
                out = ops.anomaly_maps_raw(teacher, mean, std, student, autoencoder)
                return out.map_st.shape == (b, 1, h, w)
            out = ops.anomaly_maps(teacher, mean, std, student, autoencoder, quantiles, size, pad)
            return tuple(out.anomaly_map.shape) == (b, 1, *size) and tuple(out.score.shape) == (b,)

    return f"anomaly_maps(raw={raw}, {b, c, h, w} {dtype}, size {size}, pad {pad}, q {quantiles.tolist()})", call


def case_conv2d_relu_pool(rnd: Rand):
    b, cin, cout = rnd.size(0, 2), rnd.size(1, 4), rnd.size(1, 4)
    k = rnd.pick(1, 3, 4, 1, 3, 4, 0)
    h, w = rnd.size(0, 12), rnd.size(0, 12)
    dtype = rnd.pick(*DTYPES[:4])
    x = rnd.tensor([b, rnd.pick(cin, cin, cin + 1), h, w], dtype, special=False)
    weight = rnd.tensor([cout, cin, k, k], rnd.pick(dtype, dtype, torch.float32), special=False)
    bias = rnd.pick(
        None,
        rnd.tensor([cout], dtype, special=False),
        rnd.tensor([cout], dtype, special=False),
        rnd.tensor([cout + 1], dtype, special=False),
    )
    padding = rnd.pick(0, 1, 2, 3, 0, 1, -1, 2**40)
    pool, pool_padding, relu = rnd.pick(True, False), rnd.pick(0, 1, 0, 1, 2, -1), rnd.pick(True, False)

    def call():
        with torch.no_grad():
            out = ops.conv2d_relu_pool(x, weight, bias, padding, relu, pool, pool_padding)
            ref = torch.nn.functional.conv2d(
                x.double(), weight.double(), None if bias is None else bias.double(), padding=padding
            )
            ref = ref.relu() if relu else ref
            ref = torch.nn.functional.avg_pool2d(ref, 2, 2, pool_padding) if pool else ref
            tol = 1e-1 if dtype in (torch.float16, torch.bfloat16) else 1e-4
            return out.shape == ref.shape and torch.allclose(out.double(), ref, rtol=tol, atol=tol)

    return f"conv2d_relu_pool({b, x.shape[1], h, w} {dtype}, k {k}, pad {padding}, pool {pool}/{pool_padding})", call


def case_winograd(rnd: Rand):
    cin, cout, k = rnd.size(1, 4), rnd.size(1, 4), rnd.pick(3, 4, 3)
    h, w = rnd.size(0, 14), rnd.size(0, 14)
    dtype = rnd.pick(torch.float32, torch.float64, torch.float16)
    x = rnd.tensor([rnd.size(0, 2), cin, h, w], dtype, special=False)
    weight = rnd.tensor([cout, cin, k, k], torch.float32 if dtype == torch.float16 else dtype, special=False)
    padding = rnd.pick(0, 1, 2, -1, 2**40)
    pool, pool_padding, relu = rnd.pick(True, False), rnd.pick(0, 1, 2), rnd.pick(True, False)

    def call():
        prepared = prepare_weights(weight)
        with torch.no_grad():
            out = winograd_conv2d(x, prepared, padding, relu, pool, pool_padding)
            ref = torch.nn.functional.conv2d(x.double(), weight.double(), padding=padding)
            ref = ref.relu() if relu else ref
            ref = torch.nn.functional.avg_pool2d(ref, 2, 2, pool_padding) if pool else ref
            return out.shape == ref.shape and torch.allclose(out.double(), ref, rtol=1e-3, atol=1e-3)

    return f"winograd_conv2d({tuple(x.shape)} {dtype}, k {k}, pad {padding}, pool {pool}/{pool_padding})", call


_PDNS = {}


def case_pdn_forward(rnd: Rand):
    arch, padded = rnd.pick("small", "medium"), rnd.pick(True, False)
    key = (arch, padded)
    if key not in _PDNS:
        _PDNS[key] = build_pdn(arch, 4, padded).eval()
    pdn = _PDNS[key]
    h, w = rnd.pick(0, 8, 33, 40, 64), rnd.pick(8, 33, 40, 64)
    x = rnd.tensor(
        [rnd.size(0, 2), rnd.pick(3, 3, 1), h, w], rnd.pick(torch.float32, torch.float32, torch.float64), special=False
    )

    def call():
        with torch.no_grad():
            out = ops.pdn_forward(x, pdn.to(x.dtype))
            return torch.allclose(out.double(), pdn(x).double(), rtol=1e-3, atol=1e-3)

    return f"pdn_forward({arch}, padded={padded}, {tuple(x.shape)} {x.dtype})", call


_MODEL: list[EfficientAD] = []


def _model() -> EfficientAD:
    if not _MODEL:
        torch.manual_seed(0)
        _MODEL.append(EfficientAD(ModelConfig(teacher_channels=8)).eval())
    return _MODEL[0]


def case_infer(rnd: Rand):
    from PIL import Image

    kind = rnd.pick("tensor", "pil", "numpy", "junk")
    size = rnd.pick((256, 256), (300, 200), (64, 64), (0, 5))
    if kind == "tensor":
        # (4, 64) and (20, 300): below the 33-pixel minimum; (64, 3) permuted: an ambiguous layout
        size = rnd.pick(size, size, (4, 64), (20, 300), (64, 3))
        dtype = rnd.pick(torch.float32, torch.uint8, torch.float64, torch.int32, torch.float16)
        base = torch.rand(1, 3, *size)
        scale = rnd.pick(1.0, 1.0, 255.0, -5.0, 1.4, float("nan"))
        batch = (base * scale).to(dtype) if dtype.is_floating_point else (base * 255).to(dtype)
        batch = batch.permute(0, 2, 3, 1) if rnd.r.random() < 0.3 else batch
        desc = f"tensor {tuple(batch.shape)} {dtype} x{scale}"
        # The documented reading: NCHW, or uint8 NHWC when dim 1 cannot be a channel count.
        nhwc = dtype == torch.uint8 and batch.shape[1] not in (1, 3) and batch.shape[-1] in (1, 3)
        expected_hw = tuple(batch.shape[1:3]) if nhwc else tuple(batch.shape[-2:])
    elif kind == "pil":
        mode = rnd.pick("RGB", "L", "I;16", "I", "F", "1", "P", "LA", "RGBA", "CMYK")
        a = np.random.default_rng(rnd.r.randrange(1 << 30)).integers(
            0, 255, (max(size[0], 1), max(size[1], 1), 3), dtype=np.uint8
        )
        img = Image.fromarray(a).convert("L" if mode in ("I;16", "I", "F") else "RGB")
        if mode == "I;16":
            img = Image.fromarray((np.asarray(img).astype(np.uint16) * 257), "I;16")
        elif mode in ("I", "F"):
            img = img.convert(mode)
        else:
            img = img.convert(mode)
        batch = [img] * rnd.pick(1, 2)
        desc = f"PIL {mode} {img.size}"
    elif kind == "numpy":
        dtype = rnd.pick(np.uint8, np.float32, np.uint16, np.float64)
        a = np.random.default_rng(rnd.r.randrange(1 << 30)).random((*size, rnd.pick(3, 1, 4, 2)))
        batch = [(a * (255 if dtype in (np.uint8, np.uint16) else rnd.pick(1.0, 255.0, -5.0))).astype(dtype)]
        desc = f"numpy {batch[0].shape} {dtype.__name__}"
    else:
        batch = rnd.pick("x.png", [], [1, 2], None, {"a": 1}, torch.rand(5), [torch.rand(3, 256, 256)])
        desc = f"junk {type(batch).__name__}"

    def call():
        result = _model().infer(batch)
        layout_ok = kind != "tensor" or tuple(result.anomaly_map.shape[-2:]) == expected_hw
        return bool(torch.isfinite(result.score).all()) and result.anomaly_map.dim() == 4 and layout_ok

    return f"infer({desc})", call


def case_load(rnd: Rand, work: Path):
    good = work / "good.safetensors"
    if not good.exists():
        save_model(_model(), good)
    raw = good.read_bytes()
    how = rnd.pick("random bytes", "json header only", "prefix of a good file", "zeros", "huge length", "empty")
    if how == "random bytes":
        data = bytes(rnd.r.randrange(256) for _ in range(rnd.size(1, 400)))
    elif how == "json header only":
        header = json.dumps(
            {
                "__metadata__": {"format": "efficientad_ext.model"},
                "x": {"dtype": "F32", "shape": [rnd.size(0, 4)], "data_offsets": [0, rnd.size(0, 16)]},
            }
        ).encode()
        data = len(header).to_bytes(8, "little") + header + bytes(rnd.size(0, 16))
    elif how == "prefix of a good file":
        data = raw[: rnd.r.randrange(len(raw))]
    elif how == "zeros":
        data = bytes(rnd.size(0, 64))
    elif how == "huge length":
        data = (2**63 - 1).to_bytes(8, "little") + b"{}"
    else:
        data = b""
    path = work / "fuzz.safetensors"
    path.write_bytes(data)

    def call():
        from efficientad_ext import ModelFileError

        try:
            load_model(path)
        except ModelFileError:
            raise ValueError("refused with ModelFileError") from None
        return False  # none of these is a valid model file

    return f"load_model({how}, {len(data)} bytes)", call


CASES: list[tuple[str, Callable, int]] = [
    ("quantile", case_quantile, 400),
    ("hard_feature_loss", case_hard_feature_loss, 400),
    ("anomaly_maps", case_anomaly_maps, 400),
    ("conv2d_relu_pool", case_conv2d_relu_pool, 400),
    ("winograd_conv2d", case_winograd, 250),
    ("pdn_forward", case_pdn_forward, 60),
    ("infer", case_infer, 40),
    ("load_model", None, 40),
]


def run(seed: int, scale: float, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    rnd = Rand(seed)
    for target, make, n in CASES:
        for _ in range(max(1, int(n * scale))):
            desc, call = case_load(rnd, work) if make is None else make(rnd)
            print(json.dumps({"start": f"{target}: {desc}"}), flush=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    good = bool(call())
                outcome, detail = ("ok", "") if good else ("wrong", "the result failed its check")
            except (ValueError, TypeError) as e:
                outcome, detail = "clear", f"{type(e).__name__}: {str(e)[:160]}"
            except Exception as e:  # noqa: BLE001  (counted and reported, never hidden)
                outcome, detail = "unclear", f"{type(e).__name__}: {str(e)[:300]}"
            print(json.dumps({"target": target, "case": desc, "outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    run(
        int(sys.argv[1]),
        float(sys.argv[2]) if len(sys.argv) > 2 else 1.0,
        Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/fuzz"),
    )
