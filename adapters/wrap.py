"""`wrap`: the `MaskedEncoder` (or `MaskedVideoEncoder`) adapter for a timm or Hugging Face backbone."""

from __future__ import annotations

import sys

from timm.models.eva import Eva
from timm.models.hiera import Hiera
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from splathead.encoder import MaskedEncoder, MaskedVideoEncoder
from splathead.adapters.hf_dinov2 import HFDinov2Encoder
from splathead.adapters.hf_videomae import HFVideoMAEEncoder
from splathead.adapters.hf_vitmae import HFViTMAEEncoder
from splathead.adapters.timm_eva import TimmEvaEncoder
from splathead.adapters.timm_hiera import TimmHieraEncoder
from splathead.adapters.timm_vit import TimmViTEncoder

SUPPORTED = (
    "timm VisionTransformer (MAE, DeiT, DINO, DINOv2 with or without registers), "
    "timm Eva (EVA02, DINOv3, RoPE ViTs), timm Hiera (mask units as patches), "
    "transformers ViTMAEModel / ViTMAEForPreTraining, Dinov2Model, Dinov2WithRegistersModel, "
    "VideoMAEModel / VideoMAEForPreTraining, or any MaskedEncoder or MaskedVideoEncoder"
)


def wrap(model: nn.Module) -> MaskedEncoder | MaskedVideoEncoder:
    """The adapter that runs ``model`` on visible patches (tubelets for a video model) only; a
    `MaskedEncoder` or `MaskedVideoEncoder` comes back as is.

    The adapter holds ``model`` itself (no copy, no re-initialisation). For options (e.g. HF
    ViTMAE's ``interpolate_pos_encoding``) build the adapter directly.

    Raises:
        TypeError: for any other model, listing the supported ones.
    """
    if isinstance(model, VisionTransformer):
        return TimmViTEncoder(model)
    if isinstance(model, Eva):
        return TimmEvaEncoder(model)
    if isinstance(model, Hiera):
        return TimmHieraEncoder(model)
    # A Hugging Face model means transformers is already imported; never import it here.
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        if isinstance(model, (transformers.ViTMAEModel, transformers.ViTMAEForPreTraining)):
            return HFViTMAEEncoder(model)
        if isinstance(model, (transformers.Dinov2Model, transformers.Dinov2WithRegistersModel)):
            return HFDinov2Encoder(model)
        if isinstance(model, (transformers.VideoMAEModel, transformers.VideoMAEForPreTraining)):
            return HFVideoMAEEncoder(model)
    if isinstance(model, (MaskedEncoder, MaskedVideoEncoder)):
        return model
    raise TypeError(f"cannot wrap a {type(model).__name__}; supported: {SUPPORTED}")
