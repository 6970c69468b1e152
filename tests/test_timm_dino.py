"""timm DINO and DINOv2 ViTs through TimmViTEncoder: registers, patch 14, other image sizes."""


import pytest
import timm
import torch

from hidden_keys import keys_hidden_from_attention
from splathead.adapters import TimmViTEncoder, wrap
from splathead.masking import gather_tokens

# Tiny random-weight versions of the real architectures. DINOv2's layer scale starts at 1e-5,
# which makes every block nearly the identity; 1.0 keeps the layer scale but lets attention
# matter, so that a wrong mask would show.
TINY = dict(pretrained=False, depth=2, embed_dim=32, num_heads=2)
DINOV2 = dict(TINY, img_size=56, init_values=1.0)

# (timm name, overrides, image size fed)
BACKBONES = [
    pytest.param("vit_small_patch16_224.dino", dict(TINY, img_size=32), (32, 32), id="dino"),
    pytest.param("vit_small_patch14_dinov2", DINOV2, (56, 56), id="dinov2"),
    pytest.param("vit_small_patch14_reg4_dinov2", DINOV2, (56, 56), id="dinov2-reg4"),
    pytest.param(
        "vit_small_patch14_reg4_dinov2",
        dict(DINOV2, img_size=(42, 70)),
        (42, 70),
        id="dinov2-reg4-img_size-42x70",
    ),
    pytest.param(
        "vit_small_patch14_reg4_dinov2",
        dict(DINOV2, dynamic_img_size=True),
        (42, 70),
        id="dinov2-reg4-dynamic-42x70",
    ),
]


def create(name, overrides):
    torch.manual_seed(0)
    return timm.create_model(name, **overrides).eval()


def key_mask(ids_keep, num_prefix_tokens, num_patches):
    """``[b prefix+l]`` True for the tokens every query may attend to: prefix and visible."""
    batch_size = ids_keep.shape[0]
    visible = torch.zeros(batch_size, num_patches, dtype=torch.bool).scatter_(1, ids_keep, True)
    prefix = torch.ones(batch_size, num_prefix_tokens, dtype=torch.bool)
    return torch.cat([prefix, visible], dim=1)


def test_create_model_without_pretrained_weights_is_offline(no_network):
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", **DINOV2)
    assert isinstance(wrap(vit), TimmViTEncoder)


@pytest.mark.parametrize(
    ("name", "num_prefix_tokens", "patch_size"),
    [
        ("vit_small_patch16_224.dino", 1, (16, 16)),
        ("vit_small_patch14_dinov2", 1, (14, 14)),
        ("vit_small_patch14_reg4_dinov2", 5, (14, 14)),
    ],
)
def test_prefix_is_cls_and_registers_and_patch_size_is_the_models(
    name, num_prefix_tokens, patch_size
):
    encoder = wrap(create(name, DINOV2))
    assert (encoder.num_prefix_tokens, encoder.patch_size) == (num_prefix_tokens, patch_size)


@pytest.mark.parametrize(("name", "overrides", "image_size"), BACKBONES)
def test_keeping_every_patch_equals_forward_features(name, overrides, image_size):
    vit = create(name, overrides)
    images = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        torch.testing.assert_close(wrap(vit)(images), vit.forward_features(images))


@pytest.mark.parametrize(("name", "overrides", "image_size"), BACKBONES)
def test_dropping_patches_equals_forward_features_with_hidden_patches_left_out_of_attention(
    name, overrides, image_size
):
    # Dropping a token is the same as hiding it from every attention (the rest is per token), so
    # timm's own forward_features with those keys hidden is the reference for the visible tokens.
    vit = create(name, overrides)
    encoder = wrap(vit)
    prefix = encoder.num_prefix_tokens
    grid_height, grid_width = encoder.grid_size(*image_size)
    num_patches = grid_height * grid_width
    ids_keep = torch.stack([torch.randperm(num_patches)[: num_patches // 4] for _ in range(2)])
    images = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        with keys_hidden_from_attention(key_mask(ids_keep, prefix, num_patches), len(vit.blocks)):
            expected = vit.forward_features(images)
        tokens = encoder(images, ids_keep)
        unmasked = vit.forward_features(images)
    assert tokens.shape == (2, prefix + num_patches // 4, 32)
    torch.testing.assert_close(tokens[:, :prefix], expected[:, :prefix])
    torch.testing.assert_close(tokens[:, prefix:], gather_tokens(expected[:, prefix:], ids_keep))
    assert not torch.allclose(tokens[:, :prefix], unmasked[:, :prefix])  # the mask mattered


@pytest.mark.parametrize("num_kept", [1, 7, 16])
def test_cls_and_registers_are_never_masked(num_kept):
    vit = create("vit_small_patch14_reg4_dinov2", DINOV2)
    ids_keep = torch.randperm(16)[:num_kept][None]
    images = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        tokens = wrap(vit)(images, ids_keep)
        with keys_hidden_from_attention(key_mask(ids_keep, 5, 16), len(vit.blocks)):
            expected = vit.forward_features(images)
    assert tokens.shape == (1, 5 + num_kept, 32)
    torch.testing.assert_close(tokens[:, :5], expected[:, :5])


def test_dynamic_img_size_model_takes_several_sizes():
    vit = create("vit_small_patch14_reg4_dinov2", dict(DINOV2, dynamic_img_size=True))
    encoder = wrap(vit)
    for image_size, grid in [((56, 56), (4, 4)), ((42, 70), (3, 5)), ((84, 28), (6, 2))]:
        images = torch.randn(1, 3, *image_size)
        assert encoder.grid_size(*image_size) == grid
        with torch.no_grad():
            torch.testing.assert_close(encoder(images), vit.forward_features(images))


def test_static_model_rejects_other_image_sizes():
    encoder = wrap(create("vit_small_patch14_dinov2", DINOV2))
    with pytest.raises(ValueError, match="img_size"):
        encoder(torch.randn(1, 3, 42, 70))


@pytest.mark.parametrize(("name", "overrides", "image_size"), BACKBONES)
def test_wrapping_leaves_the_weights_unchanged(name, overrides, image_size):
    vit = create(name, overrides)
    before = {key: value.clone() for key, value in vit.state_dict().items()}
    encoder = wrap(vit)
    encoder(torch.randn(1, 3, *image_size), torch.tensor([[0, 1]]))
    after = vit.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert encoder.vit is vit
