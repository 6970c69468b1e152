"""TimmHieraEncoder: timm's Hiera masked by mask units, the patches of a GMAE.

The reference is Hiera's own masked forward, ``forward_features(x, mask=keep)`` with a mask
Hiera draws itself (``get_random_mask``, True = kept), which returns the kept units' tokens in
grid order; the adapter returns them in ``ids_keep`` order.
"""

import pytest
import timm
import torch

from gmae_step import changed_by_one_step
from splathead.adapters import TimmHieraEncoder, export_timm, wrap
from splathead.model import GMAE

SMALL = dict(pretrained=False, embed_dim=16, num_heads=1, stages=(1, 1, 2, 1))

# id -> (timm name, overrides, image size, mask-unit grid)
BACKBONES = {
    "hiera-tiny": ("hiera_tiny_224", dict(img_size=96), 96, (3, 3)),
    "hiera-abswin": ("hiera_small_abswin_256", dict(img_size=128), 128, (4, 4)),
}


def create(name, overrides, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **{**SMALL, **overrides, **kwargs}).eval()


@pytest.fixture(params=list(BACKBONES))
def backbone(request):
    """(model id, hiera, images, grid)."""
    name, overrides, size, grid = BACKBONES[request.param]
    torch.manual_seed(1)
    return request.param, create(name, overrides), torch.randn(2, 3, size, size), grid


def test_mask_units_are_the_patches(backbone):
    _, hiera, images, grid = backbone
    encoder = wrap(hiera)
    assert isinstance(encoder, TimmHieraEncoder)
    assert encoder.patch_size == (32, 32) and encoder.num_prefix_tokens == 0
    assert encoder.grid_size(*images.shape[2:]) == grid
    assert encoder.embed_dim == hiera.num_features


def test_all_units_equal_forward_features(backbone):
    _, hiera, images, _ = backbone
    with torch.no_grad():
        torch.testing.assert_close(wrap(hiera)(images), hiera.forward_features(images))


def test_kept_units_equal_hieras_masked_forward_in_ids_keep_order(backbone):
    _, hiera, images, grid = backbone
    torch.manual_seed(2)
    keep = hiera.get_random_mask(images, mask_ratio=0.6)  # Hiera's own mask, True = kept
    in_grid_order = torch.stack([row.nonzero().squeeze(1) for row in keep])
    shuffled = torch.stack([row[torch.randperm(len(row))] for row in in_grid_order])
    with torch.no_grad():
        reference = hiera.forward_features(images, mask=keep)
        tokens = wrap(hiera)(images, shuffled)
        tokens_in_grid_order = wrap(hiera)(images, in_grid_order)
    assert 0 < in_grid_order.shape[1] < grid[0] * grid[1]
    torch.testing.assert_close(tokens_in_grid_order, reference)
    for row in range(2):  # token j belongs to the unit shuffled[row, j]
        position = {unit: j for j, unit in enumerate(in_grid_order[row].tolist())}
        expected = reference[row, [position[unit] for unit in shuffled[row].tolist()]]
        torch.testing.assert_close(tokens[row], expected)


def test_a_gmae_trains_a_step_and_places_tokens_at_their_units(backbone):
    _, hiera, images, grid = backbone
    hiera.train()
    model = GMAE.from_encoder(wrap(hiera), img_size=images.shape[2], mask_ratio=0.5, dim=32,
                              depth=1, num_heads=2, num_queries=8, backend="torch")
    assert model.decoder.grid_size == grid and model.num_patches == grid[0] * grid[1]
    changed = changed_by_one_step(model, images)
    assert any(name.startswith("encoder.hiera.blocks.") for name in changed)
    assert any(name.startswith("decoder.") for name in changed)


def test_export_timm_round_trips(backbone, tmp_path, no_network):
    model_id, hiera, images, _ = backbone
    name, overrides, _, _ = BACKBONES[model_id]
    path = export_timm(wrap(hiera), tmp_path / "encoder.safetensors")
    torch.manual_seed(1)
    loaded = timm.create_model(name, **{**SMALL, **overrides, "pretrained": True},
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    for key, value in hiera.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_another_image_size_is_refused_naming_the_built_one():
    name, overrides, _, _ = BACKBONES["hiera-tiny"]
    with pytest.raises(ValueError, match="built for 96x96"):
        wrap(create(name, overrides)).grid_size(64, 64)


def test_more_than_one_token_per_unit_is_refused():
    name, overrides, _, _ = BACKBONES["hiera-tiny"]
    with pytest.raises(ValueError, match="4 tokens per mask unit"):
        TimmHieraEncoder(create(name, overrides, q_pool=2))


def test_patch_dropout_is_refused():
    name, overrides, _, _ = BACKBONES["hiera-tiny"]
    with pytest.raises(ValueError, match="patch_drop_rate"):
        TimmHieraEncoder(create(name, overrides, patch_drop_rate=0.5))
