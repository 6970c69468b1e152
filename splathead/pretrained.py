"""Hub-style GMAE folders: ``config.json`` (everything that rebuilds the model), the weights as
``model.safetensors`` and a model card ``README.md``, the layout of Hugging Face Hub model repos.

:meth:`GMAE.save_pretrained <splathead.model.GMAE.save_pretrained>` writes one,
:meth:`GMAE.from_pretrained <splathead.model.GMAE.from_pretrained>` reads one from a local folder
(no network) or a Hub repo id, and :meth:`GMAE.push_to_hub <splathead.model.GMAE.push_to_hub>`
uploads one; the Hub needs ``huggingface_hub`` (the ``hf`` extra). ``config.json`` holds::

    model_type          "splathead-gmae": another model's folder is refused by name
    splathead_version   the version that wrote it
    img_size            [h, w]
    encoder             {"kind": "timm_vit", "settings": keywords of build_vit_encoder}, or
                        {"kind": "hf", "config": the transformers config's to_dict()
                         without private keys, "attn_implementation": the attention in use,
                         "interpolate_pos_encoding": HFViTMAEEncoder's setting}
    decoder             the decoder's DecoderSettings, as dataclasses.asdict gives them
    camera              the render camera (Camera.gmae of img_size), checked when loading
    mask_ratio, mean, std, loss, norm_pix_loss, freeze_encoder

Encoders: the timm ViTs of :func:`~splathead.factories.build_vit_encoder` (every factory's) and
the Hugging Face ViTMAE / DINOv2 encoders of :func:`splathead.adapters.wrap` (rebuilt from their
config by ``transformers``); another encoder is refused by name, since nothing in its folder
could rebuild it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from safetensors.torch import load_model, save_model

from splathead.adapters import HFDinov2Encoder, HFViTMAEEncoder, TimmViTEncoder
from splathead.camera import Camera
from splathead.decoder import DecoderSettings
from splathead.factories import build_vit_encoder
from splathead.model import GMAE

__all__ = [
    "CONFIG_NAME",
    "MODEL_CARD_NAME",
    "MODEL_TYPE",
    "WEIGHTS_NAME",
    "gmae_config",
    "load_pretrained",
    "push_to_hub",
    "save_pretrained",
]

MODEL_TYPE = "splathead-gmae"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"

Evaluation = Sequence[Mapping[str, Any]]


def gmae_config(model: GMAE) -> dict[str, Any]:
    """``config.json``'s content for ``model``; ``ValueError`` naming an encoder it cannot
    describe (nothing is written then)."""
    from splathead import __version__

    height, width = model.img_size
    return {
        "model_type": MODEL_TYPE,
        "splathead_version": __version__,
        "img_size": [height, width],
        "encoder": _encoder_config(model.encoder),
        "decoder": dataclasses.asdict(model.decoder.settings),
        "camera": _camera_dict(model.camera),
        "mask_ratio": model.mask_ratio,
        "mean": _shortest(model.mean),
        "std": _shortest(model.std),
        "loss": model.loss,
        "norm_pix_loss": model.norm_pix_loss,
        "freeze_encoder": model.freeze_encoder,
    }


def save_pretrained(
    model: GMAE, save_directory: str | os.PathLike, *, evaluation: Evaluation | None = None,
    name: str | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` (its settings,
    and ``evaluation``'s records when given) into ``save_directory`` (created; those three files
    are replaced). ``name``: what the card's loading example passes to ``from_pretrained``."""
    config = gmae_config(model)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_model(model, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / MODEL_CARD_NAME).write_text(model_card(config, evaluation, name or str(folder)))
    return folder


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    **download: Any,
) -> GMAE:
    """The GMAE saved in the folder ``name_or_path``, or in the Hub repo of that id, downloaded
    by ``huggingface_hub.snapshot_download`` with the keywords ``download`` (``revision``,
    ``cache_dir``, ``force_download``, ``token``, ``local_files_only``). Raises
    ``FileNotFoundError`` for a folder without ``config.json``, ``ValueError`` for one written
    by another model type or whose settings this splathead cannot build."""
    folder = _local_folder(name_or_path, **download)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME}: not a saved model")
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != MODEL_TYPE:
        raise ValueError(
            f"{config_path} was written for model type {model_type!r}, not splathead's GMAE "
            f"({MODEL_TYPE!r}); load it with the library that wrote it"
        )
    model = _build(config, config_path)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} holds {CONFIG_NAME} but no {WEIGHTS_NAME}")
    load_model(model, str(weights), strict=strict, device=str(map_location))
    return model.to(map_location)


def push_to_hub(
    model: GMAE,
    repo_id: str,
    *,
    evaluation: Evaluation | None = None,
    private: bool | None = None,
    token: str | None = None,
    **upload: Any,
) -> str:
    """Save ``model`` (:func:`save_pretrained`) and upload the folder to the Hub repo
    ``repo_id`` (created if missing, ``private`` if asked) with ``HfApi.upload_folder``'s
    keywords ``upload`` (``commit_message``, ``revision``, ``create_pr``); returns the commit's
    URL."""
    api_class = _hub().HfApi
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, evaluation=evaluation, name=repo_id)
        api = api_class(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, **upload)
    return str(commit)


def model_card(config: Mapping[str, Any], evaluation: Evaluation | None, name: str) -> str:
    """The ``README.md`` of a saved GMAE: Hub metadata, how to load it, its settings and its
    evaluation records (one table row per record)."""
    height, width = config["img_size"]
    rows = [
        ("image size", f"{height} x {width}"),
        ("encoder", _encoder_summary(config["encoder"])),
        ("decoder", ", ".join(f"{k}={v}" for k, v in config["decoder"].items())),
        ("mask ratio", config["mask_ratio"]),
        ("loss", config["loss"] + (", norm-pix target" if config["norm_pix_loss"] else "")),
        ("input normalisation", f"mean {config['mean']}, std {config['std']}"),
        ("camera", f"{config['camera']['model']}, {width} x {height} px, scene x, y in (-1, 1)"),
    ]
    lines = [
        "---", "library_name: splathead", "tags:", "- gmae", "- masked-autoencoder",
        "- gaussian-splatting", "---", "",
        "# GMAE", "",
        f"A Gaussian Masked Autoencoder saved by splathead {config['splathead_version']}: a "
        "masked encoder whose decoder predicts 3D Gaussians, rendered into the image.", "",
        "```python", "from splathead import GMAE", "",
        f"model = GMAE.from_pretrained({name!r})", "```", "",
        "## Settings", "", "| setting | value |", "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows), "",
        "## Evaluation", "",
    ]
    records = list(evaluation or [])
    if not records:
        lines.append("No evaluation records were given when this model was saved.")
    else:
        columns = [key for key in dict.fromkeys(k for r in records for k in r) if key != "event"
                   and all(not isinstance(r.get(key), (list, dict)) for r in records)]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(key)) for key in columns) + " |"
                  for r in records]
    return "\n".join(lines) + "\n"


def _encoder_summary(encoder: Mapping[str, Any]) -> str:
    if encoder["kind"] == "timm_vit":
        return "timm ViT, " + ", ".join(f"{k}={v}" for k, v in encoder["settings"].items())
    hf = encoder["config"]
    shown = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size",
             "image_size", "num_register_tokens")
    return f"Hugging Face {hf['model_type']}, " + ", ".join(
        f"{k}={hf[k]}" for k in shown if k in hf)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _encoder_config(encoder: object) -> dict[str, Any]:
    """``config.json``'s ``encoder``: its kind and what rebuilds it."""
    if isinstance(encoder, TimmViTEncoder):
        return {"kind": "timm_vit", "settings": _timm_vit_settings(encoder)}
    if isinstance(encoder, (HFViTMAEEncoder, HFDinov2Encoder)):
        # to_dict's private keys (transformers 4.48's `_attn_implementation_autoset`) would stop
        # from_config choosing the attention; the attention in use is saved by name instead.
        hf_config = {k: v for k, v in encoder.model.config.to_dict().items() if not k.startswith("_")}
        return {"kind": "hf", "config": hf_config,
                "attn_implementation": encoder.model.config._attn_implementation,
                "interpolate_pos_encoding": getattr(encoder, "interpolate_pos_encoding", False)}
    raise ValueError(
        f"save_pretrained rebuilds the encoders of splathead's factories (TimmViTEncoder) and "
        f"the Hugging Face ViTMAE / DINOv2 adapters; this GMAE's encoder is a "
        f"{type(encoder).__name__}"
    )


def _build_encoder(config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised encoder of ``config.json``'s ``encoder``."""
    if config["kind"] == "timm_vit":
        return build_vit_encoder(**config["settings"])
    if config["kind"] == "hf":
        from transformers import AutoConfig, AutoModel  # the hf extra

        settings = dict(config["config"])
        hf_config = AutoConfig.for_model(settings.pop("model_type"), **settings)
        model = AutoModel.from_config(hf_config, attn_implementation=config["attn_implementation"])
        return (HFViTMAEEncoder(model, interpolate_pos_encoding=config["interpolate_pos_encoding"])
                if hf_config.model_type == "vit_mae" else HFDinov2Encoder(model))
    raise ValueError(f"encoder kind {config['kind']!r} is not 'timm_vit' or 'hf'")


def _timm_vit_settings(encoder: TimmViTEncoder) -> dict[str, Any]:
    """The :func:`build_vit_encoder` keywords that rebuild ``encoder``, checked by rebuilding."""
    vit = encoder.vit
    block = vit.blocks[0]
    height, width = vit.patch_embed.img_size
    patch_h, patch_w = vit.patch_embed.patch_size
    settings = {
        "img_size": height,
        "patch_size": patch_h,
        "embed_dim": vit.embed_dim,
        "depth": len(vit.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / vit.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "class_token": vit.cls_token is not None,
        "reg_tokens": vit.num_reg_tokens,
        "no_embed_class": vit.no_embed_class,
        "drop_path_rate": float(getattr(vit.blocks[-1].drop_path1, "drop_prob", 0.0)),
    }
    problem = None
    if (height, patch_h) != (width, patch_w):
        problem = f"its image size {height}x{width} or patch {patch_h}x{patch_w} is not square"
    elif repr(build_vit_encoder(**settings).vit) != repr(vit):
        problem = f"the ViT that {settings} builds differs from it"
    if problem:
        raise ValueError(
            f"save_pretrained rebuilds encoders from build_vit_encoder's settings, and this "
            f"GMAE's timm ViT cannot be described so: {problem}"
        )
    return settings


def _shortest(values: torch.Tensor) -> list[float]:
    """The shortest decimals that give back each float32 value (0.485, not 0.48500001...)."""
    return [float(str(value)) for value in values.flatten().float().numpy()]


def _camera_dict(camera: Camera) -> dict[str, Any]:
    fields = {field.name: getattr(camera, field.name) for field in dataclasses.fields(camera)}
    return {**fields, "viewmat": camera.viewmat.tolist()}


def _build(config: Mapping[str, Any], path: Path) -> GMAE:
    """A randomly initialised GMAE of ``config`` (``ValueError`` naming ``path`` if it cannot
    be built, or its camera is not the one this splathead renders with)."""
    try:
        model = GMAE.from_encoder(
            _build_encoder(config["encoder"]),
            img_size=tuple(config["img_size"]),
            mask_ratio=config["mask_ratio"],
            mean=config["mean"],
            std=config["std"],
            loss=config["loss"],
            norm_pix_loss=config["norm_pix_loss"],
            freeze_encoder=config["freeze_encoder"],
            decoder_settings=DecoderSettings.from_dict(config["decoder"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: cannot build its GMAE: {error!r}") from error
    if _camera_dict(model.camera) != config["camera"]:
        raise ValueError(
            f"{path}: its camera {config['camera']} is not the camera this splathead renders "
            f"a {config['img_size']} image with ({_camera_dict(model.camera)})"
        )
    return model


def _local_folder(name_or_path: str | os.PathLike, **download: Any) -> Path:
    """``name_or_path`` itself if it is a folder, else the Hub repo of that id, downloaded."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or path.is_absolute() or str(name_or_path).startswith("."):
        raise FileNotFoundError(f"{name_or_path} is not a folder (nor a Hub repo id)")
    folder = _hub().snapshot_download(
        str(name_or_path), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME], **download
    )
    return Path(folder)


def _hub():
    try:
        import huggingface_hub
    except ImportError as error:  # the hf extra
        raise ImportError(
            "loading from or pushing to the Hugging Face Hub needs huggingface_hub: "
            "pip install 'splathead[hf]'"
        ) from error
    return huggingface_hub
