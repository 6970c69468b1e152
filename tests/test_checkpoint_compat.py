"""Checkpoints written before the recipes' restructuring still load.

``tests/data/checkpoint_layout_0210ebe.json`` was recorded from checkpoints that splathead's main
at 0210ebe wrote (``gmae_imagenet.py --preset demo`` and ``gmae_linprobe.py --preset demo``, a
few steps each): their top-level keys, stored config and every model tensor's name and shape.
A checkpoint rebuilt from it (random values in the recorded layout) must load into today's code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gmae_linprobe import LinprobeConfig, build_probe
from splathead_recipes.cli import from_dict
from splathead_recipes.config import Config, load_config
from splathead_recipes.encoders import load_encoder
from splathead_recipes.models import build_model, load_pretrained

LAYOUT = json.loads((Path(__file__).parent / "data" / "checkpoint_layout_0210ebe.json").read_text())


def old_pretraining_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A file in the old pretraining checkpoint's layout; returns its model tensors."""
    generator = torch.Generator().manual_seed(0)
    model = {name: torch.randn(shape, generator=generator)
             for name, shape in LAYOUT["pretraining"]["model"].items()}
    torch.save({"model": model, "config": LAYOUT["pretraining"]["config"], "step": 3}, path)
    return model


def shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in state.items()}


@pytest.mark.parametrize("recipe, config_type", [("pretraining", Config),
                                                 ("linprobe", LinprobeConfig)])
def test_old_stored_configs_read_back_unchanged(recipe, config_type):
    stored = LAYOUT[recipe]["config"]
    config = from_dict(config_type, stored)
    read_back = json.loads(json.dumps(dataclasses.asdict(config)))
    assert read_back == {**stored, **FIELDS_ADDED_SINCE[recipe]}


# Settings added after the recorded layout, at the defaults that keep the old runs' behaviour.
FIELDS_ADDED_SINCE = {
    "pretraining": {"footprint": "ortho", "head_init": "xavier", "decay_groups": "timm",
                    "lr_schedule": "per-step", "norm_pix_loss": False,
                    "probe_view": "masked", "crop_style": "torchvision"},
    "linprobe": {"crop_style": "torchvision"},
}


def test_the_pretraining_model_keeps_the_old_state_dict_layout():
    config = load_config(LAYOUT["pretraining"]["config"])
    assert shapes(build_model(config).state_dict()) == LAYOUT["pretraining"]["model"]


def test_an_old_pretraining_checkpoint_loads_as_a_gmae(tmp_path):
    path = tmp_path / "checkpoint-00000003.pt"
    weights = old_pretraining_checkpoint(path)
    loaded = load_pretrained(path).state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[name], weights[name]) for name in weights)


def test_an_old_pretraining_checkpoint_gives_the_evaluation_recipes_its_encoder(tmp_path):
    path = tmp_path / "checkpoint-00000003.pt"
    weights = old_pretraining_checkpoint(path)
    vit = load_encoder(str(path), model=None, img_size=32, patch_size=None)
    encoder = {name.removeprefix("encoder.vit."): tensor for name, tensor in weights.items()
               if name.startswith("encoder.vit.")}
    assert all(torch.equal(vit.state_dict()[name], tensor) for name, tensor in encoder.items())


def test_the_linear_probe_keeps_the_old_state_dict_layout(tmp_path):
    path = tmp_path / "checkpoint-00000003.pt"
    old_pretraining_checkpoint(path)
    config = dataclasses.replace(from_dict(LinprobeConfig, LAYOUT["linprobe"]["config"]),
                                 checkpoint=str(path))
    assert shapes(build_probe(config, num_classes=4).state_dict()) == LAYOUT["linprobe"]["model"]
