"""The Python API: every command of the ``efficientad`` CLI is one typed function here, and the
CLI only parses arguments and calls them.

``load(path)`` then ``infer(batch)``; ``train(dataset_root, out_dir)`` (``train_categories`` for
one model per category), ``evaluate(model, dataset_root, out_dir)``, ``calibrate``,
``score_folder`` (``score_folder_sharded`` under torchrun), ``export``, ``convert_from_anomalib``
/ ``convert_to_anomalib``, ``distill(images, out_dir)`` and ``serve(model_path)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from efficientad_ext.data import broken_links, list_images, open_dataset
from efficientad_ext.distillation.distiller import distill as distill_teacher
from efficientad_ext.evaluation.evaluator import evaluate as evaluate_samples
from efficientad_ext.evaluation.evaluator import predict
from efficientad_ext.evaluation.report import DEFAULT_GALLERY_SIZE
from efficientad_ext.evaluation.threshold import f1_optimal_threshold
from efficientad_ext.formats.anomalib import convert_anomalib_file, save_anomalib_state_dict
from efficientad_ext.formats.export import export_model
from efficientad_ext.formats.model_file import load_model, save_model
from efficientad_ext.inference.folder import infer_folder
from efficientad_ext.inference.sharded import ShardedResult, sharded_infer
from efficientad_ext.models.efficientad import DecisionThreshold, EfficientAD, InferenceResult, ModelConfig
from efficientad_ext.serving import ServeConfig
from efficientad_ext.serving import serve as serve_model
from efficientad_ext.training.config import TrainConfig
from efficientad_ext.training.many_models import train_all
from efficientad_ext.training.trainer import train as train_on_images

if TYPE_CHECKING:
    from efficientad_ext.distillation.config import DistillConfig
    from efficientad_ext.models.pdn import PDN

PathLike = str | os.PathLike[str]
_current: EfficientAD | None = None


def default_device() -> str:
    """``"cuda"`` when a GPU is usable, else ``"cpu"``: the device every function defaults to."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(
    path: PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    allow_unverified: bool = False,
) -> EfficientAD:
    """Loads a model file and makes it the default model of :func:`infer`. ``device`` and
    ``dtype`` (e.g. ``"cuda"``, ``torch.bfloat16``) move it after loading.

    ``allow_unverified`` (here and in every function that reads a model file): accept a file
    without an integrity digest (an older or stripped one; refused by default)."""
    global _current
    _current = load_model(path, device=device, dtype=dtype, allow_unverified=allow_unverified)
    return _current


def infer(
    batch: Tensor | Sequence[Any],
    model: EfficientAD | None = None,
    dtype: torch.dtype | str | None = None,
    cuda_graph: bool = True,
) -> InferenceResult:
    """Anomaly maps [B, 1, H, W] (at the input resolution) and scores [B] for ``batch``.

    ``batch``: float tensor in [0, 1], [B, 3, H, W], or uint8 tensor ([B, 3, H, W] or [B, H, W, 3]), or a list
    of PIL images / numpy arrays. ``model``: defaults to the one set by :func:`load`.
    ``dtype`` / ``cuda_graph``: as :meth:`EfficientAD.infer` (default: bfloat16 on GPUs that
    support it, CUDA-graph replay for repeated batch shapes on the GPU).
    """
    model = model if model is not None else _current
    if model is None:
        raise RuntimeError("no model: call efficientad_ext.load(path) first or pass model=")
    if not isinstance(model, EfficientAD):
        raise TypeError(f"model must be an efficientad_ext.EfficientAD, got {type(model).__name__}")
    return model.infer(batch, dtype=dtype, cuda_graph=cuda_graph)


def train(
    dataset_root: PathLike,
    out_dir: PathLike,
    model_config: ModelConfig | None = None,
    config: TrainConfig | None = None,
    *,
    teacher: PathLike | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    eval_dataset: PathLike | None = None,
) -> EfficientAD:
    """Trains a model (Algorithm 1) on the normal images of a dataset; writes
    ``out_dir/model.safetensors``, ``training.json`` and the resumable training state.

    Args:
        dataset_root: an MVTec AD / LOCO / VisA folder or a plain folder of normal images
            (:func:`efficientad_ext.data.open_dataset`). Its own validation split (MVTec LOCO)
            calibrates the map quantiles; otherwise a seeded hold-out of
            ``config.validation_fraction`` of the training images does.
        out_dir: output folder.
        model_config: architecture, padding and image size (default EfficientAD-S, 256x256).
        config: Algorithm 1's hyper-parameters (default: the paper's).
        teacher: ``None``/"default" (the shipped teacher), "random", or a weight file.
        device: default :func:`default_device`.
        resume: continue from ``out_dir/train_state.safetensors``, bit for bit.
        eval_dataset: a labelled dataset for a learning curve at ``config.eval_every`` /
            ``config.eval_at`` (``out_dir/curve.json``, ``curve.png``).
    """

    config = config or TrainConfig()
    splits = open_dataset(dataset_root)
    curve_samples = None
    if eval_dataset is not None:
        curve_samples = open_dataset(eval_dataset).test
        if not curve_samples:
            raise ValueError(f"eval dataset {eval_dataset} has no test images (expected <dataset>/test/<type>/...)")
        if not (config.eval_every or config.eval_at):
            raise ValueError(
                "a learning curve (eval dataset) needs eval_every N or eval_at steps (--eval-every / --eval-at)"
            )
    validation = [s.path for s in splits.validation] or None
    return train_on_images(
        [s.path for s in splits.train],
        out_dir,
        model_config,
        config,
        validation_images=validation,
        teacher=teacher,
        device=device or default_device(),
        resume=resume,
        curve_samples=curve_samples,
    )


def evaluate(
    model: EfficientAD | PathLike,
    dataset_root: PathLike,
    out_dir: PathLike | None = None,
    *,
    batch_size: int = 8,
    write_images: bool = True,
    skip_corrupt: bool = False,
    device: str | torch.device | None = None,
    report: bool = False,
    report_gallery: int = DEFAULT_GALLERY_SIZE,
    allow_unverified: bool = False,
) -> dict[str, Any]:
    """Image AUROC, pixel AUROC and AU-PRO of ``model`` (or a model file) on the test split of
    a dataset; with ``out_dir``, writes ``metrics.json``, (``write_images``) one heatmap PNG per
    test image and (``report``) a self-contained ``report.html`` whose gallery shows
    ``report_gallery`` test images (0: all; needs ``pip install "efficientad_ext[report]"``).
    Returns the metrics dict (see :func:`efficientad_ext.evaluation.evaluator.evaluate`)."""

    model_name = "in-memory model" if isinstance(model, EfficientAD) else str(model)
    if not isinstance(model, EfficientAD):
        model = load_model(model, device=device or default_device(), allow_unverified=allow_unverified)
    splits = open_dataset(dataset_root)
    if not splits.test:
        raise ValueError(f"{dataset_root} has no test images (expected <dataset>/test/<type>/...)")
    return evaluate_samples(
        model,
        splits.test,
        out_dir,
        batch_size,
        write_images=write_images,
        skip_corrupt=skip_corrupt,
        report=report,
        report_gallery=report_gallery,
        names=(model_name, str(dataset_root)),
    )


def calibrate(
    model_path: PathLike,
    dataset_root: PathLike,
    out: PathLike | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    allow_unverified: bool = False,
) -> DecisionThreshold:
    """Sets a model file's decision threshold to the F1-optimal one on a labelled set (the test
    split of ``dataset_root``: normal and anomalous images; masks are not needed) and writes
    the model to ``out`` (default: ``model_path`` itself, replaced atomically). Returns the
    threshold, with its F1 and image counts in ``details``. Use a set kept apart from the one
    you report accuracy on: a threshold chosen on the test set flatters it."""

    model = load_model(model_path, device=device or default_device(), allow_unverified=allow_unverified)
    samples = open_dataset(dataset_root).test
    labels = [s.label for s in samples]
    if not samples or len(set(labels)) < 2:
        raise ValueError(
            f"{dataset_root}: calibrating a threshold needs normal and anomalous test images "
            "(<dataset>/test/good and <dataset>/test/<defect_type>)"
        )
    dataset, _maps, scores = predict(model, samples, batch_size)
    model.threshold = f1_optimal_threshold(scores, [s.label for s in dataset.samples])
    save_model(model, out if out is not None else model_path)
    return model.threshold


def export(
    model: EfficientAD | PathLike,
    out: PathLike,
    format: str = "onnx",
    dtype: str = "float32",
    *,
    allow_unverified: bool = False,
) -> list[Path]:
    """Writes the model's whole inference (Algorithm 2: normalisation, the three networks, the
    maps, the resize, the quantile normalisation, the score and, with a threshold, the
    decision) in standard operators for a deployment runtime: ``format="onnx"`` (one ``.onnx``
    file: onnxruntime, TensorRT) or ``"openvino"`` (``.xml`` + ``.bin``). Dynamic batch;
    ``dtype`` ``float32`` or ``float16``. Input: float images [B, 3, H, W] in [0, 1] at the
    model's image size. Returns the written files (see :mod:`efficientad_ext.formats.export`)."""

    if not isinstance(model, EfficientAD):
        model = load_model(model, device="cpu", allow_unverified=allow_unverified)
    return export_model(model, out, format, dtype)


def distill(
    images: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    config: DistillConfig | None = None,
    *,
    device: str | torch.device | None = None,
    resume: bool = False,
    save_dtype: torch.dtype = torch.float32,
    command: str | None = None,
) -> PDN:
    """Distils a PDN teacher (Algorithm 3) from a folder (or list) of ImageNet-like images;
    writes ``out_dir/teacher.safetensors`` (use it with ``train(..., teacher=path)``) and
    ``distill.json``. See :func:`efficientad_ext.distillation.distiller.distill`."""

    device = device or default_device()
    return distill_teacher(
        images, out_dir, config, device=device, resume=resume, save_dtype=save_dtype, command=command
    )


def train_categories(
    root: PathLike,
    out_dir: PathLike,
    model_config: ModelConfig | None = None,
    config: TrainConfig | None = None,
    *,
    teacher: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    evaluate_test: bool = True,
) -> list[dict[str, Any]]:
    """One model per category folder of ``root`` (each with ``train/good``) into
    ``out_dir/<category>/``, evaluated on its test set unless ``evaluate_test`` is False;
    resumable per category, and shared among the ranks of an initialised process group (see
    :mod:`efficientad_ext.training.many_models`). Returns the summary rows."""
    device = device or default_device()
    return train_all(root, out_dir, model_config, config, teacher=teacher, device=device, evaluate_test=evaluate_test)


def score_folder(
    model_path: PathLike,
    images: PathLike,
    out_dir: PathLike,
    *,
    batch_size: int = 8,
    skip_corrupt: bool = False,
    write_images: bool = True,
    device: str | torch.device | None = None,
    allow_unverified: bool = False,
) -> int:
    """Scores every image directly in the folder ``images`` with the model file ``model_path``
    into ``out_dir/scores.csv`` and ``out_dir/heatmaps/``; returns the number scored. Symbolic
    links that lead to no file are skipped with a warning and counted in ``run.json``."""
    paths = list_images(images)  # warns about symbolic links that lead to no file
    if not paths:
        raise FileNotFoundError(f"no images found in {images}")
    model = load_model(model_path, device=device or default_device(), allow_unverified=allow_unverified)
    broken = len(broken_links(images))  # counted in run.json
    return infer_folder(
        model, paths, out_dir, model_path, batch_size, skip_corrupt, write_images=write_images, broken_links=broken
    )


def score_folder_sharded(
    model_path: PathLike,
    images: PathLike,
    out_dir: PathLike,
    *,
    batch_size: int = 8,
    workers: int | None = None,
    write_images: bool = True,
    device: str | torch.device | None = None,
    allow_unverified: bool = False,
) -> ShardedResult:
    """:func:`score_folder` shared among the ranks of the initialised process group,
    resumable, corrupt files listed in ``corrupt.csv`` (:mod:`efficientad_ext.inference.sharded`)."""
    return sharded_infer(
        model_path,
        images,
        out_dir,
        device=device or default_device(),
        batch_size=batch_size,
        workers=workers,
        write_images=write_images,
        allow_unverified=allow_unverified,
    )


def convert_from_anomalib(
    path: PathLike, out: PathLike, *, padded: bool | None = None, image_size: tuple[int, int] = (256, 256)
) -> EfficientAD:
    """anomalib 2.7.0's ``EfficientAdModel`` state dict (or Lightning checkpoint) at ``path`` as
    our model file at ``out``; ``padded`` / ``image_size``: how it was trained (not stored in
    its file; ``padded=None`` reads the checkpoint's hyper-parameters when it has them)."""
    model = convert_anomalib_file(path, padded=padded, image_size=tuple(image_size))
    save_model(model, out)
    return model


def convert_to_anomalib(model_path: PathLike, out: PathLike, *, allow_unverified: bool = False) -> Path:
    """Our model file as an anomalib ``EfficientAdModel`` state dict (``.pth`` or ``.safetensors``)."""
    return save_anomalib_state_dict(load_model(model_path, allow_unverified=allow_unverified), out)


def serve(
    model_path: PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    config: ServeConfig | None = None,
    allow_unverified: bool = False,
) -> None:
    """Serves ``model_path`` over HTTP until interrupted: ``POST /v1/score``, ``GET /v1/model``,
    ``/healthz``, ``/readyz``, ``/metrics`` and a page at ``/`` (:mod:`efficientad_ext.serving`;
    needs ``pip install ".[serve]"``). ``config``: batching, limits and the token
    (:class:`~efficientad_ext.serving.ServeConfig`). Binds to 127.0.0.1 unless ``host`` says otherwise."""
    serve_model(model_path, host, port, config=config, device=device, dtype=dtype, allow_unverified=allow_unverified)
