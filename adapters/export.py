"""Save a pretrained encoder so others load it with their own tools (timm or Hugging Face).

Both formats are safetensors: loading them never unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file
from timm.models.eva import Eva
from timm.models.hiera import Hiera
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from splathead.adapters.hf_dinov2 import HFDinov2Encoder
from splathead.adapters.hf_vitmae import HFViTMAEEncoder
from splathead.adapters.timm_eva import TimmEvaEncoder
from splathead.adapters.timm_hiera import TimmHieraEncoder
from splathead.adapters.timm_vit import TimmViTEncoder
from splathead.typing import typecheck

__all__ = ["export_hf", "export_timm"]


@typecheck
def export_timm(encoder: nn.Module, path: str | Path) -> Path:
    """Write the timm model's ``state_dict`` as a timm checkpoint ``path`` (``*.safetensors``).

    ``encoder``: a timm ``VisionTransformer``, ``Eva`` or ``Hiera``, or its adapter
    (``wrap(model)``).

    Load it back, offline, with the architecture and overrides it was built with; the overlay's
    ``num_classes`` is the exported ViT's, so that timm knows whether the file holds a head::

        timm.create_model("vit_base_patch16_224", pretrained=True, num_classes=10,
                          pretrained_cfg_overlay=dict(file=path, num_classes=0))

    Every tensor is written, the classifier head included when the ViT has one (GMAE does not
    train it; build pretraining backbones with ``num_classes=0``). Returns ``path``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        # timm picks the safetensors loader by this suffix, and torch.load (pickle) otherwise
        raise ValueError(f"path must end in .safetensors, got {str(path)!r}")
    vit = _timm_model(encoder)
    metadata = {"format": "pt"}
    architecture = (getattr(vit, "pretrained_cfg", None) or {}).get("architecture")
    if architecture:
        metadata["architecture"] = architecture
    state_dict = {name: tensor.contiguous() for name, tensor in vit.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, path, metadata=metadata)
    return path


def _timm_model(encoder: nn.Module) -> nn.Module:
    """The timm model ``encoder`` is or adapts; ``TypeError`` naming its class otherwise (the
    message never prints the module, which can run to thousands of lines)."""
    if isinstance(encoder, TimmViTEncoder):
        return encoder.vit
    if isinstance(encoder, TimmEvaEncoder):
        return encoder.eva
    if isinstance(encoder, TimmHieraEncoder):
        return encoder.hiera
    if isinstance(encoder, (VisionTransformer, Eva, Hiera)):
        return encoder
    raise TypeError(
        f"export_timm needs a timm VisionTransformer, Eva or Hiera or its adapter, got "
        f"{type(encoder).__name__}; use export_hf for Hugging Face models"
    )


@typecheck
def export_hf(
    encoder: HFViTMAEEncoder | HFDinov2Encoder | nn.Module, directory: str | Path
) -> Path:
    """``save_pretrained`` the wrapped Hugging Face model (config and safetensors) to ``directory``.

    Load it back with the model's class, e.g. ``ViTMAEModel.from_pretrained(directory)``; a
    ViTMAE encoder also loads into ``ViTMAEForPreTraining`` (with a fresh pixel decoder). Accepts
    the adapter or the model itself. Returns ``directory``.
    """
    model = encoder.model if isinstance(encoder, (HFViTMAEEncoder, HFDinov2Encoder)) else encoder
    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(
            f"export_hf needs a Hugging Face model or its adapter, got {type(encoder).__name__}; "
            "use export_timm for timm ViTs"
        )
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory
