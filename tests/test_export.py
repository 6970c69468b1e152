"""export_timm / export_hf: checkpoints others load with timm or transformers, offline."""

import json

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from splathead.adapters import export_hf, export_timm, wrap

TINY = dict(depth=2, embed_dim=32, num_heads=2)
TIMM_BACKBONES = [
    pytest.param("vit_base_patch16_224.mae", dict(TINY, img_size=32), (32, 32), id="mae"),
    pytest.param(
        "vit_small_patch14_reg4_dinov2",
        dict(TINY, img_size=56, init_values=1.0, dynamic_img_size=True),
        (42, 56),
        id="dinov2-reg4",
    ),
]


def create(name, overrides, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **overrides, **kwargs).eval()


@pytest.mark.parametrize(("name", "overrides", "image_size"), TIMM_BACKBONES)
def test_timm_export_loads_with_timm_create_model_offline(
    tmp_path, no_network, name, overrides, image_size
):
    vit = create(name, overrides, pretrained=False)
    path = export_timm(wrap(vit), tmp_path / "encoder.safetensors")
    torch.manual_seed(1)  # a different random init, so that only loading can make them agree
    loaded = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **overrides
    ).eval()
    for key, value in vit.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        torch.testing.assert_close(wrap(loaded)(images), wrap(vit)(images))


def test_timm_export_loads_for_fine_tuning_with_a_fresh_head(tmp_path, no_network):
    backbone = dict(TINY, img_size=32, num_classes=0)
    vit = create("vit_base_patch16_224", backbone, pretrained=False)
    path = export_timm(vit, tmp_path / "encoder.safetensors")
    overlay = dict(file=str(path), num_classes=0)  # the file holds no head
    torch.manual_seed(1)  # a different random init, so that only loading can make them agree
    classifier = timm.create_model(
        "vit_base_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
        **dict(backbone, num_classes=10),
    ).eval()
    assert classifier.head.out_features == 10
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier.forward_features(images), vit.forward_features(images))


def test_timm_export_is_plain_safetensors_with_the_architecture_name(tmp_path):
    vit = create("vit_base_patch16_224.mae", dict(TINY, img_size=32))
    path = export_timm(vit, tmp_path / "encoder.safetensors")
    assert load_file(path).keys() == vit.state_dict().keys()
    with safe_open(path, framework="pt") as file:
        assert file.metadata()["architecture"] == "vit_base_patch16_224"


def test_timm_export_needs_a_safetensors_path(tmp_path):
    vit = create("vit_base_patch16_224.mae", dict(TINY, img_size=32))
    with pytest.raises(ValueError, match=".safetensors"):
        export_timm(vit, tmp_path / "encoder.pth")


def test_timm_export_rejects_other_models(tmp_path):
    with pytest.raises(TypeError):
        export_timm(torch.nn.Linear(2, 2), tmp_path / "encoder.safetensors")


def hf_models():
    transformers = pytest.importorskip("transformers")
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return {
        "vitmae": (
            transformers.ViTMAEModel,
            transformers.ViTMAEConfig(**tiny, image_size=32, patch_size=8),
            (32, 32),
        ),
        "dinov2-reg4": (
            transformers.Dinov2WithRegistersModel,
            transformers.Dinov2WithRegistersConfig(
                **tiny, image_size=56, patch_size=14, num_register_tokens=4
            ),
            (42, 56),
        ),
    }


@pytest.mark.parametrize("family", ["vitmae", "dinov2-reg4"])
def test_hf_export_loads_with_from_pretrained_offline(tmp_path, no_network, family):
    model_class, config, image_size = hf_models()[family]
    torch.manual_seed(0)
    model = model_class(config).eval()
    directory = export_hf(wrap(model), tmp_path / family)
    assert (directory / "model.safetensors").is_file()
    assert not list(directory.glob("*.bin"))  # no pickle
    loaded = model_class.from_pretrained(directory).eval()
    images = torch.randn(2, 3, *image_size)
    ids_keep = torch.tensor([[0, 3], [2, 1]])
    with torch.no_grad():
        torch.testing.assert_close(wrap(loaded)(images, ids_keep), wrap(model)(images, ids_keep))


def test_hf_vitmae_export_loads_into_vitmae_for_pretraining(tmp_path, no_network):
    transformers = pytest.importorskip("transformers")
    model_class, config, _ = hf_models()["vitmae"]
    model = model_class(config)
    export_hf(model, tmp_path)
    pretraining = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(pretraining.vit.state_dict()[key], value), key
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "vit_mae"


def test_hf_export_rejects_timm_models(tmp_path):
    vit = create("vit_base_patch16_224.mae", dict(TINY, img_size=32))
    with pytest.raises(TypeError, match="export_timm"):
        export_hf(wrap(vit), tmp_path)
