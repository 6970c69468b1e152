"""The recipe's input pipeline and checkpoint files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splathead_recipes import checkpoint
from splathead_recipes.config import PRESETS
from splathead_recipes.data import ResumableSampler, build_dataset, build_loader, load_rgb


def image_folder(root: Path, *, good: int, corrupt: int) -> Path:
    """``root/train/<class>/`` with ``good`` small JPEGs and ``corrupt`` unreadable ones."""
    rng = np.random.default_rng(0)
    for index in range(good):
        folder = root / "train" / f"class_{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"good_{index}.JPEG")
    for index in range(corrupt):
        (root / "train" / "class_0" / f"broken_{index}.JPEG").write_bytes(b"not a jpeg")
    return root


def config_for(root: Path, **overrides):
    return dataclasses.replace(PRESETS["demo"], dataset="imagefolder", data_path=str(root),
                               img_size=32, batch_size=4, **overrides)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_images_are_replaced_and_counted_across_workers(tmp_path, num_workers, caplog):
    config = config_for(image_folder(tmp_path, good=6, corrupt=2), num_workers=num_workers)
    dataset = build_dataset(config)
    loader, _ = build_loader(config, dataset, rank=0, world_size=1, pin_memory=False)
    batches = list(loader)
    assert len(dataset) == 8 and [batch.images.shape[0] for batch in batches] == [4, 4]
    assert sum(batch.num_skipped for batch in batches) == 2
    if num_workers == 0:  # worker processes log to their own stderr
        assert caplog.text.count("skipping unreadable image") == 2


def test_ranks_split_each_global_batch_and_cover_the_epoch_once():
    dataset = list(range(50))
    samplers = [ResumableSampler(dataset, global_batch=8, num_replicas=4, rank=rank, seed=3)
                for rank in range(4)]
    indices = [index for sampler in samplers for index, _ in sampler]
    assert len(indices) == 48 and len(set(indices)) == 48


def test_sampler_started_mid_epoch_yields_the_rest_of_the_epoch():
    dataset = list(range(40))
    sampler = ResumableSampler(dataset, global_batch=8, num_replicas=1, rank=0, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_start_step(3)
    assert list(sampler) == full[24:] and len(sampler) == 16


def test_epochs_have_different_orders_and_augmentation_seeds():
    sampler = ResumableSampler(list(range(40)), global_batch=8, num_replicas=1, rank=0, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for i, _ in first] != [i for i, _ in second]
    assert {s for _, s in first}.isdisjoint({s for _, s in second})


def test_augmentation_is_the_same_with_and_without_workers():
    config = dataclasses.replace(PRESETS["demo"], img_size=32, batch_size=4,
                                 samples_per_epoch=8)
    dataset = build_dataset(config)
    batches = {}
    for workers in (0, 2):
        loader, _ = build_loader(dataclasses.replace(config, num_workers=workers), dataset,
                                 rank=0, world_size=1, pin_memory=False)
        batches[workers] = torch.cat([batch.images for batch in loader])
    assert torch.equal(batches[0], batches[2])


def test_truncated_checkpoint_is_skipped_for_the_newest_readable_one(tmp_path, caplog):
    for step in (1, 2, 3):
        checkpoint.save_and_prune({"step": step, "weights": torch.randn(1000)}, tmp_path,
                                  step=step, keep=5)
    newest = checkpoint.checkpoint_path(tmp_path, 3)
    newest.write_bytes(newest.read_bytes()[:100])
    path, state = checkpoint.load_newest(tmp_path)
    assert path == checkpoint.checkpoint_path(tmp_path, 2) and state["step"] == 2
    assert "skipping unreadable checkpoint" in caplog.text


def test_only_the_newest_checkpoints_are_kept_and_no_temporary_file_remains(tmp_path):
    for step in (5, 10, 15, 20):
        checkpoint.save_and_prune({"step": step}, tmp_path, step=step, keep=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "checkpoint-00000015.pt", "checkpoint-00000020.pt"]


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    import random

    checkpoint.save_atomic({"rng": checkpoint.rng_state()}, tmp_path / "state.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "state.pt")["rng"])
    actual = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], actual[0]) and np.array_equal(expected[1], actual[1])
    assert expected[2] == actual[2]


def test_pruning_keeps_checkpoints_of_later_steps(tmp_path):
    for step in (2, 4):
        checkpoint.save_and_prune({"step": step}, tmp_path, step=step, keep=1)
    checkpoint.save_and_prune({"step": 3}, tmp_path, step=3, keep=1)  # resumed from step 2
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "checkpoint-00000003.pt", "checkpoint-00000004.pt"]


def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path):
    levels = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(levels).save(tmp_path / "grey16.png")
    # Pillow 10.0 opens it as "I" (32-bit grey), newer ones as "I;16": load_rgb takes both.
    assert Image.open(tmp_path / "grey16.png").mode in ("I", "I;16")
    rgb = np.asarray(load_rgb(str(tmp_path / "grey16.png")))
    expected = np.round(levels / 257).astype(np.uint8)
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 1], expected)


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200  # a red hidden under alpha
    rgba[..., 3] = [[0, 255], [128, 0]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = np.asarray(load_rgb(str(tmp_path / "rgba.png"))).astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [200, 0, 0]
    blend = [round((200 * 128 + 255 * 127) / 255), round(255 * 127 / 255), round(255 * 127 / 255)]
    assert np.abs(rgb[1, 0] - blend).max() <= 1

