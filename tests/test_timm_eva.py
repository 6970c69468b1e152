"""TimmEvaEncoder: EVA02, DINOv3 and RoPE ViTs (timm ``Eva``) over visible patches.

The reference for kept patches is timm's own patch-drop path (``patch_drop_rate > 0``): the same
model, whose ``PatchDropoutWithIndices`` drops patches at random; the adapter given the indices
timm kept must give timm's tokens, prefix tokens and rotary embeddings included. With every
patch kept, the reference is ``forward_features``.
"""

import pytest
import timm
import torch

from gmae_step import changed_by_one_step
from splathead.adapters import TimmEvaEncoder, export_timm, wrap
from splathead.adapters.timm_eva import ROPE_KEEP_FIXED, _timm_version
from splathead.masking import RandomMasking
from splathead.model import GMAE

SMALL = dict(pretrained=False, depth=2, embed_dim=64, num_heads=2)

# id -> (timm name, overrides, image (height, width), prefix tokens)
BACKBONES = {
    "eva02": ("eva02_tiny_patch14_224", dict(embed_dim=48, img_size=42), (42, 42), 1),
    "eva02-dynamic": (
        "eva02_tiny_patch14_224", dict(embed_dim=48, img_size=42, dynamic_img_size=True),
        (28, 56), 1,
    ),
    "dinov3": ("vit_small_patch16_dinov3", dict(img_size=48), (32, 48), 5),
    "dinov3-qkvb": ("vit_small_patch16_dinov3_qkvb", dict(img_size=48), (48, 48), 5),
    "rope-reg1-gap": ("vit_base_patch16_rope_reg1_gap_256", dict(img_size=48), (48, 48), 1),
    "rope-reg4-gap": ("vit_betwixt_patch16_rope_reg4_gap_256", dict(img_size=48), (48, 48), 4),
    "rope-mixed": ("vit_small_patch16_rope_mixed_224", dict(img_size=48), (48, 48), 1),
    "rope-mixed-ape": ("vit_small_patch16_rope_mixed_ape_224", dict(img_size=48), (48, 48), 1),
}

needs_rope_keep_fix = pytest.mark.skipif(
    _timm_version() < ROPE_KEEP_FIXED, reason="timm < 1.0.18 (the adapter refuses RoPE models)"
)


def create(name, overrides, redraw=True, **kwargs):
    """timm's ``name`` with random weights drawn large enough (std 0.2 in place of timm's 0.02)
    for sharp attention, where a patch's rotary position visibly changes the tokens."""
    if name not in timm.list_models(name):
        pytest.skip(f"{name} is not in timm {timm.__version__}")
    torch.manual_seed(0)
    model = timm.create_model(name, **{**SMALL, **overrides, **kwargs}).eval()
    if redraw:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0, 0.2)
    return model


@pytest.fixture(params=list(BACKBONES))
def backbone(request):
    """(model id, eva, images, prefix tokens)."""
    name, overrides, (height, width), prefix = BACKBONES[request.param]
    torch.manual_seed(1)
    return request.param, create(name, overrides), torch.randn(2, 3, height, width), prefix


@needs_rope_keep_fix
def test_all_patches_equal_forward_features(backbone):
    _, eva, images, prefix = backbone
    encoder = wrap(eva)
    assert isinstance(encoder, TimmEvaEncoder) and encoder.num_prefix_tokens == prefix
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), eva.forward_features(images))


@needs_rope_keep_fix
def test_kept_patches_equal_timms_own_patch_drop(backbone):
    model_id, eva, images, _ = backbone
    name, overrides, _, _ = BACKBONES[model_id]
    dropping = create(name, overrides, patch_drop_rate=0.6)
    for key, value in eva.state_dict().items():
        assert torch.equal(dropping.state_dict()[key], value), key
    dropping.patch_drop.train()  # only patch dropout draws; everything else in eval mode
    kept = []
    dropping.patch_drop.register_forward_hook(lambda module, args, output: kept.append(output[1]))
    with torch.no_grad():
        reference = dropping.forward_features(images)
        ids_keep = kept[0]
        tokens = wrap(eva)(images, ids_keep)
    num_patches = (images.shape[2] // eva.patch_embed.patch_size[0]) * (
        images.shape[3] // eva.patch_embed.patch_size[1]
    )
    assert ids_keep.shape[1] < num_patches
    torch.testing.assert_close(tokens, reference)


@needs_rope_keep_fix
def test_wrapping_and_encoding_leave_the_model_as_it_was(backbone):
    _, eva, images, _ = backbone
    state = {key: value.clone() for key, value in eva.state_dict().items()}
    encoder = wrap(eva)
    grid_height, grid_width = encoder.grid_size(*images.shape[2:])
    with torch.no_grad():
        encoder(images, RandomMasking(0.5)(2, grid_height * grid_width).ids_keep)
    assert encoder.eva is eva and eva.patch_drop is None
    assert all(torch.equal(eva.state_dict()[key], value) for key, value in state.items())


@needs_rope_keep_fix
def test_a_gmae_trains_a_step_on_each(backbone):
    _, eva, images, _ = backbone
    eva.train()
    model = GMAE.from_encoder(
        wrap(eva), img_size=tuple(images.shape[2:]), dim=32, depth=1, num_heads=2, num_queries=8,
        backend="torch",
    )
    changed = changed_by_one_step(model, images)
    assert any(name.startswith("encoder.eva.blocks.") for name in changed)
    assert any(name.startswith("decoder.") for name in changed)


@needs_rope_keep_fix
def test_export_timm_round_trips(backbone, tmp_path, no_network):
    model_id, eva, images, _ = backbone
    name, overrides, _, _ = BACKBONES[model_id]
    path = export_timm(wrap(eva), tmp_path / "encoder.safetensors")
    # eva's weights were redrawn after timm's init: only loading can make the two agree
    loaded = create(
        name, overrides, redraw=False, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    for key, value in eva.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(wrap(loaded)(images), wrap(eva)(images))


def test_patch_dropout_is_refused():
    name, overrides, _, _ = BACKBONES["eva02"]
    with pytest.raises(ValueError, match="patch_drop_rate"):
        TimmEvaEncoder(create(name, overrides, patch_drop_rate=0.5))


@pytest.mark.skipif(_timm_version() >= ROPE_KEEP_FIXED, reason="timm >= 1.0.18")
def test_rope_models_are_refused_before_timm_1_0_18():
    name, overrides, _, _ = BACKBONES["eva02"]
    with pytest.raises(RuntimeError, match=r"Eva .*timm >= 1\.0\.18"):
        wrap(create(name, overrides))


@needs_rope_keep_fix
def test_wrong_image_size_names_the_built_size():
    name, overrides, _, _ = BACKBONES["eva02"]
    with pytest.raises(ValueError, match="built for 42x42"):
        wrap(create(name, overrides)).grid_size(28, 28)


def test_refusals_name_the_class_and_never_print_the_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with pytest.raises(TypeError) as wrap_error:
        wrap(model)
    with pytest.raises(TypeError) as export_error:
        export_timm(model, tmp_path / "encoder.safetensors")
    for error in (wrap_error, export_error):
        assert "Sequential" in str(error.value) and "Linear(" not in str(error.value)
