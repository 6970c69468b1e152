import pytest
import timm
import torch
from jaxtyping import TypeCheckError
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from hidden_keys import keys_hidden_from_attention
from splathead.adapters import MaskedEncoder
from splathead.adapters.timm_vit import TimmViTEncoder
from splathead.masking import RandomMasking

TINY = dict(embed_dim=64, depth=2, num_heads=2)


def tiny_vit(**kwargs):
    """A 2-block, 64-wide ViT with 8-pixel patches for 32x32 images, random weights."""
    return VisionTransformer(**{"img_size": 32, "patch_size": 8, **TINY, **kwargs})


def tiny_timm_model(name, **kwargs):
    """timm's registered architecture ``name``, 2 blocks and 64 wide, random weights."""
    return timm.create_model(name, pretrained=False, **TINY, **kwargs)


# name -> (model factory, image (height, width), expected prefix tokens)
CONFIGS = {
    "mae": (tiny_vit, (32, 32), 1),
    "deit_distilled": (
        lambda: tiny_timm_model("deit_tiny_distilled_patch16_224", img_size=32),
        (32, 32),
        2,
    ),
    "deit_no_embed_class": (
        lambda: tiny_vit(no_embed_class=True, init_values=1e-6),
        (32, 32),
        1,
    ),
    "dino": (
        lambda: tiny_timm_model("vit_small_patch16_224.dino", img_size=48),
        (48, 48),
        1,
    ),
    "dinov2_reg4": (
        lambda: tiny_timm_model("vit_small_patch14_reg4_dinov2", img_size=42),
        (42, 42),
        5,
    ),
    # CLIP-style: a LayerNorm (norm_pre) between the embeddings and the first block
    "clip_pre_norm": (
        lambda: tiny_timm_model("vit_base_patch16_clip_224", img_size=64),
        (64, 64),
        1,
    ),
    "img_size_override_non_square": (
        lambda: tiny_timm_model("vit_small_patch16_224", img_size=(32, 64)),
        (32, 64),
        1,
    ),
    "dynamic_img_size_non_square": (
        lambda: tiny_vit(dynamic_img_size=True),
        (24, 40),
        1,
    ),
    "no_class_token_one_register": (
        lambda: tiny_vit(class_token=False, reg_tokens=1, global_pool="avg"),
        (32, 32),
        1,
    ),
}


@pytest.fixture(params=list(CONFIGS))
def config(request):
    """(encoder over an eval-mode tiny ViT with random weights, images for it)."""
    torch.manual_seed(0)
    factory, (height, width), _ = CONFIGS[request.param]
    vit = factory().eval()
    return TimmViTEncoder(vit), torch.randn(2, 3, height, width)


def num_patches(encoder, images):
    grid_height, grid_width = encoder.grid_size(*images.shape[2:])
    return grid_height * grid_width


def random_ids_keep(encoder, images, ratio=0.5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    patch_mask = RandomMasking(ratio)(
        images.shape[0], num_patches(encoder, images), generator=generator
    )
    return patch_mask.ids_keep


def blocks_input(encoder, images, ids_keep):
    """The token sequence the wrapped ViT's blocks receive."""
    seen = []
    hook = encoder.vit.blocks.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        encoder(images, ids_keep)
    finally:
        hook.remove()
    return seen[0]


@torch.no_grad()
def test_keep_all_equals_forward_features(config):
    encoder, images = config

    assert torch.equal(encoder(images), encoder.vit.forward_features(images))


@torch.no_grad()
def test_keeping_every_patch_in_grid_order_equals_forward_features(config):
    encoder, images = config
    every_patch = torch.arange(num_patches(encoder, images)).expand(images.shape[0], -1)

    assert torch.equal(encoder(images, every_patch), encoder.vit.forward_features(images))


@torch.no_grad()
def test_partial_keep_equals_forward_features_with_hidden_patches_out_of_attention(config):
    # Attention is the only place tokens meet, so hiding the dropped patches from attention in
    # timm's own forward pass must give the visible tokens exactly what encoding them alone gives.
    encoder, images = config
    prefix = encoder.num_prefix_tokens
    ids_keep = random_ids_keep(encoder, images)
    batch, length = images.shape[0], num_patches(encoder, images)
    visible = torch.zeros(batch, prefix + length, dtype=torch.bool)
    visible[:, :prefix] = True
    visible[:, prefix:].scatter_(1, ids_keep, True)

    with keys_hidden_from_attention(visible, num_blocks=len(encoder.vit.blocks)):
        reference = encoder.vit.forward_features(images)

    kept_rows = torch.cat([torch.arange(prefix).expand(batch, -1), ids_keep + prefix], dim=1)
    expected = reference[torch.arange(batch)[:, None], kept_rows]
    torch.testing.assert_close(encoder(images, ids_keep), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_output_does_not_depend_on_hidden_patch_pixels(config):
    encoder, images = config
    ids_keep = random_ids_keep(encoder, images)
    patch_height, patch_width = encoder.patch_size
    grid_width = encoder.grid_size(*images.shape[2:])[1]
    changed = images.clone()
    hidden = torch.ones(images.shape[0], num_patches(encoder, images), dtype=torch.bool)
    hidden.scatter_(1, ids_keep, False)
    for image_index, patch_index in hidden.nonzero().tolist():
        row, column = divmod(patch_index, grid_width)
        changed[
            image_index,
            :,
            row * patch_height : (row + 1) * patch_height,
            column * patch_width : (column + 1) * patch_width,
        ] = 100.0

    assert torch.equal(encoder(changed, ids_keep), encoder(images, ids_keep))


@torch.no_grad()
def test_permuting_ids_keep_permutes_the_visible_outputs(config):
    encoder, images = config
    prefix = encoder.num_prefix_tokens
    ids_keep = random_ids_keep(encoder, images)
    permutation = torch.randperm(ids_keep.shape[1], generator=torch.Generator().manual_seed(2))

    outputs = encoder(images, ids_keep)
    permuted = encoder(images, ids_keep[:, permutation])

    torch.testing.assert_close(permuted[:, :prefix], outputs[:, :prefix], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        permuted[:, prefix:], outputs[:, prefix + permutation], rtol=1e-5, atol=1e-5
    )


@torch.no_grad()
def test_output_has_prefix_plus_kept_tokens(config):
    encoder, images = config
    ids_keep = random_ids_keep(encoder, images, ratio=0.75)

    tokens = encoder(images, ids_keep)

    assert tokens.shape == (2, encoder.num_prefix_tokens + ids_keep.shape[1], encoder.embed_dim)


@torch.no_grad()
def test_class_and_register_tokens_lead_and_patches_carry_their_own_positions():
    vit = tiny_timm_model("vit_small_patch14_reg4_dinov2", img_size=42).eval()
    encoder = TimmViTEncoder(vit)
    images = torch.randn(2, 3, 42, 42)
    ids_keep = torch.tensor([[8, 0, 4], [1, 2, 7]])

    tokens = blocks_input(encoder, images, ids_keep)

    # DINOv2 adds positions to patches only (no_embed_class); cls then registers lead unchanged.
    prefix = torch.cat([vit.cls_token, vit.reg_token], dim=1).expand(2, -1, -1)
    assert torch.equal(tokens[:, :5], prefix)
    patches_with_positions = vit.patch_embed(images) + vit.pos_embed
    expected = patches_with_positions[torch.arange(2)[:, None], ids_keep]
    assert torch.equal(tokens[:, 5:], expected)


@torch.no_grad()
def test_class_token_position_is_added_when_pos_embed_covers_it():
    vit = tiny_vit().eval()
    encoder = TimmViTEncoder(vit)
    images = torch.randn(1, 3, 32, 32)
    ids_keep = torch.tensor([[15, 3]])

    tokens = blocks_input(encoder, images, ids_keep)

    assert torch.equal(tokens[:, 0], vit.cls_token[:, 0] + vit.pos_embed[:, 0])
    patch_positions = vit.pos_embed[0, 1:][ids_keep[0]]
    assert torch.equal(tokens[0, 1:], vit.patch_embed(images)[0, ids_keep[0]] + patch_positions)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reports_the_wrapped_models_layout(name):
    factory, (height, width), prefix = CONFIGS[name]
    vit = factory()

    encoder = TimmViTEncoder(vit)

    assert encoder.vit is vit
    assert encoder.embed_dim == 64
    assert encoder.patch_size == tuple(vit.patch_embed.patch_size)
    assert isinstance(encoder.patch_size, tuple)
    assert encoder.num_prefix_tokens == prefix
    patch_height, patch_width = encoder.patch_size
    assert encoder.grid_size(height, width) == (height // patch_height, width // patch_width)


def test_is_a_masked_encoder():
    assert isinstance(TimmViTEncoder(tiny_vit()), MaskedEncoder)


def test_wrapping_keeps_the_weights():
    vit = tiny_timm_model("vit_small_patch14_reg4_dinov2", img_size=28)
    before = {name: value.clone() for name, value in vit.state_dict().items()}

    encoder = TimmViTEncoder(vit).eval()
    encoder(torch.randn(1, 3, 28, 28), torch.tensor([[0, 3]]))

    after = vit.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert set(encoder.state_dict()) == {f"vit.{name}" for name in before}


def test_gradients_reach_the_wrapped_model():
    vit = tiny_vit()
    encoder = TimmViTEncoder(vit)

    encoder(torch.randn(2, 3, 32, 32), torch.tensor([[0, 5], [9, 2]])).square().mean().backward()

    assert vit.patch_embed.proj.weight.grad is not None
    assert vit.cls_token.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_tokens():
    vit = tiny_vit().eval()
    encoder = TimmViTEncoder(vit)
    images = torch.randn(2, 3, 32, 32)
    ids_keep = torch.tensor([[0, 5], [9, 2]])
    plain = encoder(images, ids_keep)

    vit.set_grad_checkpointing(True)

    assert torch.equal(encoder(images, ids_keep), plain)


def test_dynamic_model_takes_any_size_divisible_by_the_patch():
    encoder = TimmViTEncoder(tiny_vit(dynamic_img_size=True))

    assert encoder.grid_size(24, 40) == (3, 5)
    assert encoder(torch.randn(1, 3, 24, 40), torch.tensor([[14]])).shape == (1, 2, 64)


def test_static_model_rejects_another_image_size():
    encoder = TimmViTEncoder(tiny_vit())

    with pytest.raises(ValueError, match="images are 48x32 pixels but .* built for 32x32"):
        encoder(torch.randn(1, 3, 48, 32))


def test_image_size_not_divisible_by_the_patch_is_rejected():
    encoder = TimmViTEncoder(tiny_vit(dynamic_img_size=True))

    with pytest.raises(ValueError, match=r"images is 30x32 pixels \(h x w\), not divisible by the 8x8 patch"):
        encoder(torch.randn(1, 3, 30, 32))


def test_wrong_channel_count_is_rejected():
    encoder = TimmViTEncoder(tiny_vit())

    with pytest.raises(ValueError, match="images has 1 channels, the model expects 3"):
        encoder(torch.randn(2, 1, 32, 32))


def test_images_without_a_batch_dimension_are_rejected():
    encoder = TimmViTEncoder(tiny_vit())

    with pytest.raises(TypeCheckError, match="images"):
        encoder(torch.randn(3, 32, 32))


def test_ids_keep_must_match_the_batch():
    encoder = TimmViTEncoder(tiny_vit())

    with pytest.raises(TypeCheckError, match="ids_keep"):
        encoder(torch.randn(2, 3, 32, 32), torch.zeros(3, 4, dtype=torch.long))


def test_keeping_more_patches_than_the_grid_has_is_rejected():
    encoder = TimmViTEncoder(tiny_vit())

    with pytest.raises(ValueError, match="ids_keep keeps 17 patches of only 16"):
        encoder(torch.randn(1, 3, 32, 32), torch.zeros(1, 17, dtype=torch.long))


def test_patch_dropout_is_rejected():
    with pytest.raises(ValueError, match="patch dropout"):
        TimmViTEncoder(tiny_vit(patch_drop_rate=0.5))


def test_only_timm_vision_transformers_are_accepted():
    with pytest.raises(TypeError, match="timm VisionTransformer, got Linear"):
        TimmViTEncoder(nn.Linear(3, 3))
