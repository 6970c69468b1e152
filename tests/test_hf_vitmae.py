"""HFViTMAEEncoder: Hugging Face ViTMAE encoding visible patches only, equal to HF's own forward."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from splathead.adapters import HFViTMAEEncoder, MaskedEncoder  # noqa: E402
from splathead.masking import RandomMasking  # noqa: E402

MASK_RATIO = 0.75


def tiny_config(**overrides):
    return transformers.ViTMAEConfig(
        **{
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
            "mask_ratio": MASK_RATIO,
            **overrides,
        }
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    return transformers.ViTMAEModel(tiny_config()).eval()


def test_is_a_masked_encoder_with_the_model_geometry(model):
    encoder = HFViTMAEEncoder(model)
    assert isinstance(encoder, MaskedEncoder)
    assert (encoder.embed_dim, encoder.patch_size, encoder.num_prefix_tokens) == (32, (8, 8), 1)
    assert encoder.grid_size(32, 32) == (4, 4)
    assert HFViTMAEEncoder(model, interpolate_pos_encoding=True).grid_size(32, 48) == (4, 6)


def test_equals_hf_forward_for_the_same_noise(model):
    images, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    expected = model(images, noise=noise).last_hidden_state
    mask = RandomMasking(MASK_RATIO).from_noise(noise)
    with torch.no_grad():
        tokens = HFViTMAEEncoder(model)(images, mask.ids_keep)
    torch.testing.assert_close(tokens, expected)


def test_our_masking_equals_hf_random_masking(model):
    noise = torch.rand(4, 16)
    hf = model(torch.randn(4, 3, 32, 32), noise=noise)
    mask = RandomMasking(MASK_RATIO).from_noise(noise)
    torch.testing.assert_close(mask.ids_restore, hf.ids_restore)
    torch.testing.assert_close(mask.mask, hf.mask.bool())


def test_keeping_every_patch_equals_hf_without_masking():
    torch.manual_seed(0)
    model = transformers.ViTMAEModel(tiny_config(mask_ratio=0.0)).eval()
    images = torch.randn(2, 3, 32, 32)
    # with nothing masked, increasing noise keeps the patches in grid order
    expected = model(images, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
    with torch.no_grad():
        tokens = HFViTMAEEncoder(model)(images)
    torch.testing.assert_close(tokens, expected)


def test_accepts_vitmae_for_pretraining_and_uses_its_encoder():
    torch.manual_seed(0)
    pretraining = transformers.ViTMAEForPreTraining(tiny_config()).eval()
    encoder = HFViTMAEEncoder(pretraining)
    assert encoder.model is pretraining.vit
    assert not any(p is q for p in encoder.parameters() for q in pretraining.decoder.parameters())
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    expected = pretraining.vit(images, noise=noise).last_hidden_state
    with torch.no_grad():
        tokens = encoder(images, RandomMasking(MASK_RATIO).from_noise(noise).ids_keep)
    torch.testing.assert_close(tokens, expected)


def test_interpolated_positions_equal_hf_for_other_image_sizes(model):
    images, noise = torch.randn(2, 3, 48, 24), torch.rand(2, 18)
    expected = model(images, noise=noise, interpolate_pos_encoding=True).last_hidden_state
    encoder = HFViTMAEEncoder(model, interpolate_pos_encoding=True)
    with torch.no_grad():
        tokens = encoder(images, RandomMasking(MASK_RATIO).from_noise(noise).ids_keep)
    torch.testing.assert_close(tokens, expected)


def test_other_image_size_without_interpolation_is_rejected(model):
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        HFViTMAEEncoder(model)(torch.randn(1, 3, 48, 32))


def test_image_size_not_divisible_by_the_patch_is_rejected(model):
    with pytest.raises(ValueError, match="not divisible"):
        HFViTMAEEncoder(model, interpolate_pos_encoding=True)(torch.randn(1, 3, 36, 32))


@pytest.mark.parametrize("num_kept", [0, 5, 16])
def test_cls_token_comes_first_whatever_is_kept(model, num_kept):
    ids_keep = torch.stack([torch.randperm(16)[:num_kept] for _ in range(2)])
    with torch.no_grad():
        tokens = HFViTMAEEncoder(model)(torch.randn(2, 3, 32, 32), ids_keep)
    assert tokens.shape == (2, 1 + num_kept, 32)


def test_wrapping_leaves_the_weights_unchanged(model):
    before = {name: value.clone() for name, value in model.state_dict().items()}
    encoder = HFViTMAEEncoder(model)
    encoder(torch.randn(1, 3, 32, 32), torch.arange(4).expand(1, 4))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert encoder.model is model


def test_rejects_other_models():
    with pytest.raises(TypeError, match="ViTMAEModel"):
        HFViTMAEEncoder(torch.nn.Linear(2, 2))
