"""save_pretrained / from_pretrained / push_to_hub: Hub-style folders (config.json,
model.safetensors, README.md) that rebuild the same GMAE, offline, and refuse other models."""

import json

import pytest
import torch
from safetensors.torch import load_file

from splathead import GMAE, gmae_vit_tiny
from splathead.pretrained import CONFIG_NAME, MODEL_TYPE, WEIGHTS_NAME, gmae_config

SIZE = 32


def tiny(**overrides) -> GMAE:
    torch.manual_seed(0)
    return gmae_vit_tiny(img_size=SIZE, backend="torch", **overrides).eval()


def same_outputs(first: GMAE, second: GMAE) -> None:
    """Both models give the same loss, render and Gaussians for the same images and mask noise."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    noise = torch.rand(2, first.num_patches, generator=generator)
    with torch.no_grad():
        a, b = first(images, noise=noise), second(images, noise=noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.image, b.image)
    for name in ("means", "scales", "quats", "colors", "opacities"):
        assert torch.equal(getattr(a.gaussians, name), getattr(b.gaussians, name)), name


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(mask_ratio=0.5, loss="full", drop_path_rate=0.1, gaussians_per_token=2,
             max_scale=0.25, background=(0.0, 0.5, 1.0), patch_size=4, decoder_depth=1,
             footprint="authors", norm_pix_loss=True),
    ],
    ids=["tiny", "other-settings"],
)
def test_a_saved_folder_rebuilds_the_same_model_offline(tmp_path, no_network, overrides):
    model = tiny(**overrides)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "README.md", CONFIG_NAME, WEIGHTS_NAME]
    loaded = GMAE.from_pretrained(tmp_path / "saved").eval()
    assert gmae_config(loaded) == gmae_config(model)
    state = model.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in state.items())
    same_outputs(model, loaded)


def test_config_holds_every_setting_that_rebuilds_the_model(tmp_path):
    model = tiny(mask_ratio=0.6)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["model_type"] == MODEL_TYPE
    assert config["encoder"] == {"kind": "timm_vit", "settings": {
        "img_size": SIZE, "patch_size": 8, "embed_dim": 96, "depth": 3, "num_heads": 3,
        "mlp_ratio": 4.0, "qkv_bias": True, "class_token": True, "reg_tokens": 0,
        "no_embed_class": False, "drop_path_rate": 0.0}}
    assert config["decoder"]["dim"] == 64 and config["decoder"]["num_queries"] == 64
    assert config["camera"]["model"] == "ortho" and config["camera"]["fx"] == SIZE / 2
    assert config["mask_ratio"] == 0.6 and config["loss"] == "masked"
    assert config["norm_pix_loss"] is False
    assert config["mean"] == [0.485, 0.456, 0.406] and config["std"] == [0.229, 0.224, 0.225]
    assert load_file(tmp_path / WEIGHTS_NAME).keys() == model.state_dict().keys()


def test_a_folder_of_another_model_type_is_refused_by_name(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, image_size=SIZE, patch_size=8)
    transformers.ViTMAEModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model type 'vit_mae', not splathead's GMAE"):
        GMAE.from_pretrained(tmp_path)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"holds no {CONFIG_NAME}"):
        GMAE.from_pretrained(tmp_path)


def test_a_camera_this_splathead_would_not_render_with_is_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["camera"]["fx"] = 3.0
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="is not the camera this splathead renders"):
        GMAE.from_pretrained(tmp_path)


def test_an_encoder_it_cannot_rebuild_is_refused_before_writing(tmp_path):
    import timm

    from splathead.adapters import wrap

    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28,
                            depth=1, embed_dim=32, num_heads=2)  # layer scale, registers
    model = GMAE.from_encoder(wrap(vit), img_size=28, dim=32, depth=1, num_heads=2,
                              num_queries=4, backend="torch")
    with pytest.raises(ValueError, match="cannot be described so"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_the_model_card_lists_settings_and_evaluation_records(tmp_path):
    records = [{"event": "eval", "step": 128, "psnr_masked": 17.95, "psnr": 18.0, "ssim": 0.2806,
                "probe_top1_blocks": [1.0, 2.0]}]
    tiny().save_pretrained(tmp_path, evaluation=records)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: splathead\n")
    assert "| step | psnr_masked | psnr | ssim |" in card and "| 128 | 17.95 | 18 | 0.2806 |" in card
    assert "| mask ratio | 0.75 |" in card and "GMAE.from_pretrained(" in card


def test_a_hub_repo_id_is_downloaded_and_pushed_through_huggingface_hub(tmp_path, monkeypatch,
                                                                       no_network):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    remote = tmp_path / "remote"
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, *, repo_id, folder_path, commit_message, revision, create_pr):
            import shutil

            shutil.copytree(folder_path, remote)
            calls.append(("upload_folder", repo_id, commit_message))
            return f"https://huggingface.co/{repo_id}/commit/1"

    def fake_download(repo_id, *, allow_patterns, **kwargs):
        calls.append(("snapshot_download", repo_id, sorted(allow_patterns)))
        return str(remote)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = tiny()
    url = model.push_to_hub("someone/tiny-gmae", token="secret")
    assert url == "https://huggingface.co/someone/tiny-gmae/commit/1"
    assert "GMAE.from_pretrained('someone/tiny-gmae')" in (remote / "README.md").read_text()
    loaded = GMAE.from_pretrained("someone/tiny-gmae")
    same_outputs(model, loaded.eval())
    assert [call[0] for call in calls] == [
        "token", "create_repo", "upload_folder", "snapshot_download"]
    assert calls[3][2] == ["README.md", CONFIG_NAME, WEIGHTS_NAME]


def hf_encoder(kind: str):
    transformers = pytest.importorskip("transformers")
    from splathead.adapters import wrap

    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  image_size=SIZE, patch_size=8)
    if kind == "vit_mae":
        return wrap(transformers.ViTMAEModel(transformers.ViTMAEConfig(**common)))
    if kind == "vit_mae_eager":
        config = transformers.ViTMAEConfig(**common, attn_implementation="eager")
        return wrap(transformers.ViTMAEModel(config))
    if kind == "dinov2_with_registers":
        config = transformers.Dinov2WithRegistersConfig(**common, num_register_tokens=2)
        return wrap(transformers.Dinov2WithRegistersModel(config))
    return wrap(transformers.Dinov2Model(transformers.Dinov2Config(**common)))


@pytest.mark.parametrize("kind", ["vit_mae", "vit_mae_eager", "dinov2", "dinov2_with_registers"])
def test_hugging_face_encoders_are_rebuilt_from_their_config(tmp_path, no_network, kind):
    model = GMAE.from_encoder(hf_encoder(kind), img_size=SIZE, dim=32, depth=1, num_heads=2,
                              num_queries=8, backend="torch").eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["encoder"]["kind"] == "hf"
    assert config["encoder"]["config"]["model_type"] == kind.removesuffix("_eager")
    loaded = GMAE.from_pretrained(tmp_path).eval()
    assert type(loaded.encoder.model) is type(model.encoder.model)
    attention = model.encoder.model.config._attn_implementation
    assert attention == ("eager" if kind.endswith("_eager") else "sdpa")
    assert loaded.encoder.model.config._attn_implementation == attention
    same_outputs(model, loaded)
