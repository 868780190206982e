"""The corruption probe: damaged and edited variants of one tiny model file, each run through
``efficientad infer`` and classified (run by tests/test_corruption_suite.py in a subprocess, so
that a crash or hang is detected as one; also runnable by hand:
``python tests/corruption_probe.py WORKDIR [SEED]``).

Per variant, one JSON line: ``{"variant", "outcome", "detail"}`` with outcome

- ``refused``: the CLI exited 2 with one line on stderr naming the file;
- ``harmless``: the CLI exited 0 and the loaded model gives bit-identical maps and scores and
  the same config as the original;
- ``missed``: anything else (exit 0 with different results, a traceback, an unclear error).

Before each variant a ``{"start": name}`` line is printed, so a crash names its variant.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from efficientad_ext import EfficientAD, ModelConfig, load_model, save_model
from efficientad_ext.cli import main as cli_main
from efficientad_ext.formats import integrity

Variant = tuple[str, Callable[[Path], None]]


def tiny_model() -> EfficientAD:
    torch.manual_seed(0)
    model = EfficientAD(ModelConfig(teacher_channels=8)).eval()
    with torch.no_grad():
        model.teacher_mean.normal_(0, 0.1)
        model.teacher_std.uniform_(0.5, 1.5)
        model.quantiles.copy_(torch.tensor([0.01, 0.05, 0.02, 0.06]))
    model.calibrated = True
    return model


def _read(raw: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load

    n = int.from_bytes(raw[:8], "little")
    metadata = json.loads(raw[8 : 8 + n])["__metadata__"]
    return load(raw), metadata


def _writer(tensors, metadata, digest: str) -> Callable[[Path], None]:
    from safetensors.torch import save_file

    def write(path: Path) -> None:
        meta = dict(metadata)
        if digest == "sign":
            meta = integrity.with_digest(tensors, meta)
        elif digest == "drop":
            meta.pop(integrity.DIGEST_KEY, None)
        save_file(tensors, str(path), metadata=meta)

    return write


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _flip(raw: bytes, byte: int, bit: int) -> bytes:
    b = bytearray(raw)
    b[byte] ^= 1 << bit
    return bytes(b)


METADATA_EDITS: list[tuple[str, Callable[[dict], None]]] = []


def _config_edit(name: str, field: str, value) -> None:
    def edit(meta: dict) -> None:
        config = json.loads(meta["config"])
        config[field] = value
        meta["config"] = json.dumps(config)

    METADATA_EDITS.append((f"config.{field}={name}", edit))


def _raw_edit(name: str, key: str, text: str | None) -> None:
    def edit(meta: dict) -> None:
        if text is None:
            meta.pop(key, None)
        else:
            meta[key] = text

    METADATA_EDITS.append((name, edit))


for _name, _field, _value in [
    ("no", "padded", "no"),
    ("1", "padded", 1),
    ("256.7", "image_size", [256.7, 256]),
    ("128", "image_size", [128, 128]),
    ("3d", "image_size", [256, 256, 3]),
    ("16384", "image_size", [16384, 16384]),  # in range before MAX_IMAGE_SIZE: killed for memory at infer
    ("-1", "teacher_channels", -1),
    ("1e12", "teacher_channels", 10**12),
    ("x", "teacher_channels", "x"),
    ("7", "teacher_channels", 7),
    ("len2", "image_mean", [0.4, 0.4]),
    ("neg", "image_mean", [-3.0, 0.4, 0.4]),
    ("std0", "image_std", [0.0, 0.2, 0.2]),
    ("stdneg", "image_std", [-0.2, 0.2, 0.2]),
    ("large", "arch", "large"),
    ("none", "arch", None),
]:
    _config_edit(_name, _field, _value)
for _name, _key, _text in [
    ("config=[]", "config", "[]"),
    ("config={", "config", "{"),
    ("config missing", "config", None),
    ("config nested", "config", "[" * 50000 + "]" * 50000),
    ("config unknown field", "config", None),
    ("calibrated=NaN", "calibrated", "NaN"),
    ("calibrated=2", "calibrated", "2"),
    ('calibrated="true"', "calibrated", '"true"'),
    ("training=[]", "training", "[]"),
    ("training.steps=-1", "training", '{"steps": -1}'),
    ("training unknown field", "training", '{"stepz": 1}'),
    ("format_version=2", "format_version", "2"),
    ("format=other", "format", "other"),
    ("unknown key", "extra", "1"),
]:
    _raw_edit(_name, _key, _text)


def _unknown_config_field(meta: dict) -> None:
    config = json.loads(meta["config"])
    config["colour"] = "red"
    meta["config"] = json.dumps(config)


METADATA_EDITS[[n for n, _ in METADATA_EDITS].index("config unknown field")] = (
    "config unknown field",
    _unknown_config_field,
)


def _set(name: str, index: int, value: float) -> Callable[[dict], None]:
    def edit(tensors: dict) -> None:
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[index] = value

    return edit


def _replace(name: str, make: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[dict], None]:
    def edit(tensors: dict) -> None:
        new = make(tensors[name])
        if new is None:
            del tensors[name]
        else:
            tensors[name] = new

    return edit


NAN, INF = float("nan"), float("inf")
VALUE_EDITS: list[tuple[str, Callable[[dict], None]]] = [
    ("quantiles NaN", _set("quantiles", 0, NAN)),
    ("quantiles inf", _set("quantiles", 1, INF)),
    ("quantiles -inf", _set("quantiles", 2, -INF)),
    ("q_st_a == q_st_b", _set("quantiles", 0, 0.05)),
    ("q_ae_a > q_ae_b", _set("quantiles", 2, 0.5)),
    ("teacher_std 0", _set("teacher_std", 1, 0.0)),
    ("teacher_std < 0", _set("teacher_std", 2, -0.5)),
    ("teacher_std NaN", _set("teacher_std", 3, NAN)),
    ("teacher_mean NaN", _set("teacher_mean", 0, NAN)),
    ("teacher_mean inf", _set("teacher_mean", 4, INF)),
    ("teacher weight NaN", _set("teacher.0.weight", 11, NAN)),
    ("student weight inf", _set("student.3.weight", 5, INF)),
    ("autoencoder bias NaN", _set("autoencoder.encoder.0.bias", 0, NAN)),
    ("shape changed", _replace("student.0.bias", lambda t: t[:-1].clone())),
    ("dtype int32", _replace("teacher_mean", lambda t: t.to(torch.int32))),
    ("tensor missing", _replace("quantiles", lambda t: None)),
    ("extra tensor", lambda tensors: tensors.__setitem__("extra", torch.zeros(3))),
]


def variants(raw: bytes, seed: int) -> Iterator[Variant]:
    rng = random.Random(seed)
    n = int.from_bytes(raw[:8], "little")
    size = len(raw)
    for cut in sorted(
        {
            0,
            1,
            7,
            8,
            9,
            8 + n // 2,
            8 + n - 1,
            8 + n,
            8 + n + 1,
            8 + n + 4096,
            size // 2,
            size - 4096,
            size - 4,
            size - 1,
        }
    ):
        yield f"truncated to {cut} bytes", _bytes(raw[:cut])
    yield "1 byte appended", _bytes(raw + b"\x00")
    yield "4096 bytes appended", _bytes(raw + bytes(4096))
    for bit in sorted(rng.sample(range(64), 24)):
        yield f"length prefix bit {bit}", _bytes(_flip(raw, bit // 8, bit % 8))
    for pos in sorted(rng.sample(range(8, 8 + n), 80)):
        bit = rng.randrange(8)
        yield f"header byte {pos} bit {bit}", _bytes(_flip(raw, pos, bit))
    for pos in sorted(rng.sample(range(8 + n, size), 80)):
        bit = rng.randrange(8)
        yield f"data byte {pos} bit {bit}", _bytes(_flip(raw, pos, bit))
    tensors, metadata = _read(raw)
    for name, edit in METADATA_EDITS:
        for digest in ("keep", "sign", "drop"):
            meta = dict(metadata)
            edit(meta)
            yield f"metadata {name} (digest {digest})", _writer(tensors, meta, digest)
    for name, edit in VALUE_EDITS:
        for digest in ("keep", "sign", "drop"):
            t = dict(tensors)
            edit(t)
            yield f"value {name} (digest {digest})", _writer(t, metadata, digest)
    # Edits that change nothing a model computes: must load and give identical results.
    record = json.loads(metadata["training"])
    record["teacher"] = "edited description"
    yield (
        "training.teacher edited (digest sign)",
        _writer(tensors, {**metadata, "training": json.dumps(record)}, "sign"),
    )
    yield (
        "training.teacher edited (digest keep)",
        _writer(tensors, {**metadata, "training": json.dumps(record)}, "keep"),
    )
    yield "digest removed (file from before digests)", _writer(tensors, metadata, "drop")
    yield "digest removed, without --allow-unverified", _writer(tensors, metadata, "drop")


def classify(path: Path, images: Path, out: Path, baseline, x: torch.Tensor, unverified: bool) -> tuple[str, str]:
    """``unverified``: the variant has no digest and is tried with ``--allow-unverified``, so
    that the checks behind the digest are what refuses it (or proves it harmless)."""
    err = io.StringIO()
    flags = ["--allow-unverified"] if unverified else []
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = cli_main(["infer", str(path), str(images), "--out", str(out), "--no-images", *flags])
    except BaseException as e:  # noqa: BLE001  (anything escaping the CLI is a traceback for the user)
        return "missed", f"traceback: {type(e).__name__}: {str(e)[:200]}"
    text = err.getvalue()
    if rc == 2:
        lines = text.strip().splitlines()
        if len(lines) == 1 and lines[0].startswith("efficientad infer: error: ") and path.name in lines[0]:
            return "refused", lines[0][len("efficientad infer: error: ") :][:400]
        return "missed", f"exit 2 without a one-line error naming the file: {text[:300]!r}"
    if rc != 0:
        return "missed", f"exit {rc}: {text[:300]!r}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(path, allow_unverified=unverified)
    result = model.infer(x)
    same = (
        model.config == baseline["config"]
        and model.calibrated == baseline["calibrated"]
        and torch.equal(result.anomaly_map, baseline["map"])
        and torch.equal(result.score, baseline["score"])
    )
    return (
        ("harmless", "loads and computes exactly what the original does")
        if same
        else ("missed", "loaded with different results")
    )


def run(work: Path, seed: int = 0) -> None:
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    base = save_model(tiny_model(), work / "base.safetensors")
    images = work / "images"
    images.mkdir(exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    original = load_model(base)
    ref = original.infer(x)
    baseline = {
        "config": original.config,
        "calibrated": original.calibrated,
        "map": ref.anomaly_map,
        "score": ref.score,
    }
    raw = base.read_bytes()
    for i, (name, write) in enumerate(variants(raw, seed)):
        print(json.dumps({"start": name}), flush=True)
        path = work / f"variant{i:03d}.safetensors"
        write(path)
        unverified = "(digest drop)" in name or name == "digest removed (file from before digests)"
        outcome, detail = classify(path, images, work / "out", baseline, x, unverified)
        path.unlink()
        print(json.dumps({"variant": name, "outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
