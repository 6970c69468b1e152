"""wrap(model): the right adapter for each backbone family, and a GMAE training step through it."""

import subprocess
import sys

import pytest
import timm
import torch

from splathead.adapters import HFDinov2Encoder, HFViTMAEEncoder, TimmViTEncoder, wrap
from splathead.model import GMAE

TINY_TIMM = dict(pretrained=False, depth=2, embed_dim=32, num_heads=2)
TINY_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def timm_mae():
    return timm.create_model("vit_base_patch16_224.mae", **TINY_TIMM, img_size=32, patch_size=8)


def timm_dino():
    return timm.create_model("vit_small_patch16_224.dino", **TINY_TIMM, img_size=32, patch_size=8)


def timm_dinov2_reg4():
    return timm.create_model(
        "vit_small_patch14_reg4_dinov2", **TINY_TIMM, img_size=56, init_values=1.0
    )


def hf_vitmae():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(**TINY_HF, image_size=32, patch_size=8)
    return transformers.ViTMAEModel(config)


def hf_vitmae_for_pretraining():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(**TINY_HF, image_size=32, patch_size=8)
    return transformers.ViTMAEForPreTraining(config)


def hf_dinov2():
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(**TINY_HF, image_size=56, patch_size=14)
    return transformers.Dinov2Model(config)


def hf_dinov2_reg4():
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2WithRegistersConfig(
        **TINY_HF, image_size=56, patch_size=14, num_register_tokens=4
    )
    return transformers.Dinov2WithRegistersModel(config)


# (backbone factory, adapter class, image size)
FAMILIES = [
    pytest.param(timm_mae, TimmViTEncoder, 32, id="timm-mae"),
    pytest.param(timm_dino, TimmViTEncoder, 32, id="timm-dino"),
    pytest.param(timm_dinov2_reg4, TimmViTEncoder, 56, id="timm-dinov2-reg4"),
    pytest.param(hf_vitmae, HFViTMAEEncoder, 32, id="hf-vitmae"),
    pytest.param(hf_vitmae_for_pretraining, HFViTMAEEncoder, 32, id="hf-vitmae-pretraining"),
    pytest.param(hf_dinov2, HFDinov2Encoder, 56, id="hf-dinov2"),
    pytest.param(hf_dinov2_reg4, HFDinov2Encoder, 56, id="hf-dinov2-reg4"),
]


@pytest.mark.parametrize(("make_backbone", "adapter", "image_size"), FAMILIES)
def test_wrap_picks_the_adapter_of_each_family(make_backbone, adapter, image_size):
    assert type(wrap(make_backbone())) is adapter


def test_wrap_holds_the_model_itself():
    vit = timm_mae()
    assert wrap(vit).vit is vit


def test_wrap_returns_a_masked_encoder_unchanged():
    encoder = wrap(timm_mae())
    assert wrap(encoder) is encoder


def test_wrap_rejects_other_models_listing_the_supported_ones():
    with pytest.raises(TypeError, match="Linear.*VisionTransformer.*ViTMAEModel.*Dinov2Model"):
        wrap(torch.nn.Linear(2, 2))


def test_wrap_works_for_timm_without_transformers_installed():
    # `sys.modules[name] = None` makes `import transformers` fail as if it were not installed.
    script = (
        "import sys; sys.modules['transformers'] = None\n"
        "import timm\n"
        "from splathead.adapters import TimmViTEncoder, wrap\n"
        "vit = timm.create_model('vit_base_patch16_224.mae', pretrained=False, depth=1,"
        " embed_dim=32, num_heads=2, img_size=32)\n"
        "assert type(wrap(vit)) is TimmViTEncoder\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("make_backbone", "adapter", "image_size"), FAMILIES)
def test_gmae_takes_one_training_step_through_each_family(make_backbone, adapter, image_size):
    torch.manual_seed(0)
    model = GMAE.from_encoder(
        wrap(make_backbone()),
        img_size=image_size,
        dim=32,
        depth=1,
        num_heads=2,
        num_queries=16,
        backend="torch",
    )
    assert type(model.encoder) is adapter
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainable = {
        name: parameter.detach().clone()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
    images = torch.randn(2, 3, image_size, image_size)

    output = model(images)
    output.loss.backward()
    optimizer.step()

    assert torch.isfinite(output.loss)
    assert output.image.shape == (2, 3, image_size, image_size)
    changed = {
        name
        for name, parameter in model.named_parameters()
        if name in trainable and not torch.equal(parameter, trainable[name])
    }
    assert any(name.startswith("encoder.") for name in changed)
    assert any(name.startswith("decoder.") for name in changed)
