"""The evaluation recipes' encoder sources: random init, a pretraining checkpoint, an export."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from splathead.adapters import export_timm
from splathead_recipes import checkpoint
from splathead_recipes.config import ConfigError, PRESETS
from splathead_recipes.encoders import attach_head, build_architecture, load_encoder
from splathead_recipes.models import build_model
from timm.models.vision_transformer import VisionTransformer

TINY = dict(model="gmae_vit_tiny", img_size=32, patch_size=8)


def pretraining_checkpoint(path, seed=3):
    """A checkpoint as gmae_imagenet.py writes it (model + config), of a tiny GMAE."""
    config = dataclasses.replace(PRESETS["demo"], img_size=32, patch_size=8)
    torch.manual_seed(seed)
    model = build_model(config)
    checkpoint.save_atomic({"model": model.state_dict(), "config": dataclasses.asdict(config),
                            "step": 7}, path)
    return model


def test_none_builds_the_named_architecture_with_fresh_weights():
    vit = load_encoder("none", **TINY)
    assert isinstance(vit, VisionTransformer)
    assert (vit.embed_dim, len(vit.blocks), vit.patch_embed.patch_size) == (96, 3, (8, 8))
    timm_vit = load_encoder("none", model="vit_tiny_patch16_224", img_size=32, patch_size=8)
    assert timm_vit.embed_dim == 192 and timm_vit.num_classes == 0


def test_pretraining_checkpoint_gives_the_runs_encoder_weights(tmp_path):
    gmae = pretraining_checkpoint(tmp_path / "checkpoint-00000007.pt")
    torch.manual_seed(0)  # another init: only loading can make them agree
    vit = load_encoder(str(tmp_path / "checkpoint-00000007.pt"), model=None, img_size=32,
                       patch_size=None)
    expected = gmae.encoder.vit.state_dict()
    assert vit.state_dict().keys() == expected.keys()
    for name, tensor in vit.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_pretraining_checkpoint_refuses_another_architecture_naming_the_flag(tmp_path):
    pretraining_checkpoint(tmp_path / "checkpoint-00000007.pt")
    with pytest.raises(ConfigError, match="--img-size 64, but --checkpoint .* --img-size 32"):
        load_encoder(str(tmp_path / "checkpoint-00000007.pt"), model=None, img_size=64,
                     patch_size=None)
    with pytest.raises(ConfigError, match="--model gmae_vit_base_patch16"):
        load_encoder(str(tmp_path / "checkpoint-00000007.pt"), model="gmae_vit_base_patch16",
                     img_size=32, patch_size=None)


def test_exported_encoder_loads_and_a_mismatch_names_the_flags(tmp_path):
    torch.manual_seed(5)
    source = build_architecture("gmae_vit_tiny", img_size=32, patch_size=8)
    path = export_timm(source, tmp_path / "encoder.safetensors")
    vit = load_encoder(str(path), **TINY)
    for name, tensor in vit.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
    with pytest.raises(ConfigError, match="does not fit --model gmae_vit_tiny --img-size 32 "
                                          "--patch-size 4"):
        load_encoder(str(path), model="gmae_vit_tiny", img_size=32, patch_size=4)
    with pytest.raises(ConfigError, match="needs --model"):
        load_encoder(str(path), model=None, img_size=32, patch_size=8)


def test_bad_sources_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--checkpoint .*missing.pt: no such file"):
        load_encoder(str(tmp_path / "missing.pt"), **TINY)
    with pytest.raises(ConfigError, match="--model 'no_such_vit'"):
        load_encoder("none", model="no_such_vit", img_size=32, patch_size=8)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="garbage.pt: "):
        load_encoder(str(tmp_path / "garbage.pt"), **TINY)


def test_avg_pool_is_maes_mean_of_patch_tokens_then_a_fresh_layer_norm():
    torch.manual_seed(0)
    vit = load_encoder("none", **TINY)
    with torch.no_grad():
        vit.norm.weight.mul_(3)  # a trained final norm, which MAE's pooling leaves out
        images = torch.randn(2, 3, 32, 32)
        blocks = vit.blocks(vit._pos_embed(vit.patch_embed(images)))
        pooled = torch.nn.functional.layer_norm(blocks[:, 1:].mean(dim=1), (96,), eps=1e-6)
        attach_head(vit, num_classes=4, global_pool="avg")
        torch.testing.assert_close(vit.forward_head(vit.forward_features(images),
                                                    pre_logits=True), pooled)
    assert vit.head.out_features == 4


def test_token_pool_keeps_the_final_norm():
    torch.manual_seed(0)
    vit = load_encoder("none", **TINY)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls = vit.forward_features(images)[:, 0]
        attach_head(vit, num_classes=3, global_pool="token")
        torch.testing.assert_close(vit.forward_head(vit.forward_features(images),
                                                    pre_logits=True), cls)


def test_avg_after_norm_pools_the_patch_tokens_after_the_pretrained_final_norm():
    """The GMAE authors' probe: the mean of the patch tokens (cls left out) after the encoder's
    own final norm, no fresh LayerNorm."""
    torch.manual_seed(0)
    vit = load_encoder("none", **TINY)
    with torch.no_grad():
        vit.norm.weight.mul_(3)  # a trained final norm, which this pooling keeps
        images = torch.randn(2, 3, 32, 32)
        blocks = vit.blocks(vit._pos_embed(vit.patch_embed(images)))
        pooled = vit.norm(blocks)[:, 1:].mean(dim=1)
        attach_head(vit, num_classes=4, global_pool="avg_after_norm")
        torch.testing.assert_close(vit.forward_head(vit.forward_features(images),
                                                    pre_logits=True), pooled)
    assert vit.head.out_features == 4
