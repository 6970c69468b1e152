"""HFDinov2Encoder: Hugging Face DINOv2 (with and without registers) on visible patches only."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hidden_keys import keys_hidden_from_attention  # noqa: E402
from splathead.adapters import HFDinov2Encoder, MaskedEncoder  # noqa: E402
from splathead.masking import gather_tokens  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def dinov2(patch_size=14, image_size=56):
    torch.manual_seed(0)
    config = transformers.Dinov2Config(**TINY, image_size=image_size, patch_size=patch_size)
    return transformers.Dinov2Model(config).eval()


def dinov2_with_registers(patch_size=14, image_size=56):
    torch.manual_seed(0)
    config = transformers.Dinov2WithRegistersConfig(
        **TINY, image_size=image_size, patch_size=patch_size, num_register_tokens=4
    )
    return transformers.Dinov2WithRegistersModel(config).eval()


MODELS = [
    pytest.param(dinov2, id="dinov2"),
    pytest.param(dinov2_with_registers, id="dinov2-reg4"),
]
# (patch, image size the model was built for, image size used): the model's own size, a larger
# non-square one (positions resampled by HF's interpolate_pos_encoding), and patch 8
GEOMETRIES = [(14, 56, (56, 56)), (14, 56, (42, 70)), (8, 32, (32, 48))]


def random_ids_keep(batch_size, num_patches, num_kept):
    return torch.stack([torch.randperm(num_patches)[:num_kept] for _ in range(batch_size)])


@pytest.mark.parametrize("make_model", MODELS)
def test_prefix_is_cls_and_registers(make_model):
    encoder = HFDinov2Encoder(make_model())
    assert isinstance(encoder, MaskedEncoder)
    expected = 1 + getattr(encoder.model.config, "num_register_tokens", 0)
    assert encoder.num_prefix_tokens == expected
    assert (encoder.embed_dim, encoder.patch_size) == (32, (14, 14))
    assert encoder.grid_size(42, 70) == (3, 5)


@pytest.mark.parametrize("make_model", MODELS)
@pytest.mark.parametrize(("patch_size", "built_for", "image_size"), GEOMETRIES)
def test_keeping_every_patch_equals_hf_last_hidden_state(
    make_model, patch_size, built_for, image_size
):
    model = make_model(patch_size=patch_size, image_size=built_for)
    images = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        torch.testing.assert_close(HFDinov2Encoder(model)(images), model(images).last_hidden_state)


@pytest.mark.parametrize("make_model", MODELS)
@pytest.mark.parametrize(("patch_size", "built_for", "image_size"), GEOMETRIES)
def test_dropping_patches_equals_hf_with_hidden_patches_left_out_of_attention(
    make_model, patch_size, built_for, image_size
):
    # Dropping a token is the same as hiding it from every attention (the rest is per token), so
    # HF's own forward with those keys hidden is the reference for the visible tokens.
    model = make_model(patch_size=patch_size, image_size=built_for)
    encoder = HFDinov2Encoder(model)
    images = torch.randn(2, 3, *image_size)
    num_patches = (image_size[0] // patch_size) * (image_size[1] // patch_size)
    ids_keep = random_ids_keep(2, num_patches, num_patches // 4)
    visible = torch.zeros(2, num_patches, dtype=torch.bool).scatter_(1, ids_keep, True)
    prefix = encoder.num_prefix_tokens
    visible = torch.cat([torch.ones(2, prefix, dtype=torch.bool), visible], dim=1)
    with torch.no_grad():
        with keys_hidden_from_attention(visible, model.config.num_hidden_layers):
            expected = model(images).last_hidden_state
        tokens = encoder(images, ids_keep)
    assert tokens.shape == (2, prefix + num_patches // 4, 32)
    torch.testing.assert_close(tokens[:, :prefix], expected[:, :prefix])
    torch.testing.assert_close(tokens[:, prefix:], gather_tokens(expected[:, prefix:], ids_keep))


@pytest.mark.parametrize("make_model", MODELS)
def test_hidden_patches_do_not_reach_the_output(make_model):
    encoder = HFDinov2Encoder(make_model())  # 4x4 grid of 14 px patches
    images = torch.randn(1, 3, 56, 56)
    ids_keep = torch.tensor([[0, 5, 10, 15]])  # the diagonal
    changed = images.clone()
    changed[..., :14, 14:] = torch.randn(3, 14, 42)  # patches 1, 2, 3: hidden
    with torch.no_grad():
        torch.testing.assert_close(encoder(changed, ids_keep), encoder(images, ids_keep))
        assert not torch.allclose(encoder(changed), encoder(images))


@pytest.mark.parametrize("make_model", MODELS)
def test_prefix_tokens_are_kept_even_when_no_patch_is(make_model):
    encoder = HFDinov2Encoder(make_model())
    with torch.no_grad():
        tokens = encoder(torch.randn(2, 3, 56, 56), torch.zeros(2, 0, dtype=torch.long))
    assert tokens.shape == (2, encoder.num_prefix_tokens, 32)


@pytest.mark.parametrize("make_model", MODELS)
def test_wrapping_leaves_the_weights_unchanged(make_model):
    model = make_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    encoder = HFDinov2Encoder(model)
    encoder(torch.randn(1, 3, 56, 56), random_ids_keep(1, 16, 4))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert encoder.model is model


def test_image_size_not_divisible_by_the_patch_is_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        HFDinov2Encoder(dinov2())(torch.randn(1, 3, 56, 60))


def test_rejects_other_models():
    with pytest.raises(TypeError, match="Dinov2Model"):
        HFDinov2Encoder(torch.nn.Linear(2, 2))
