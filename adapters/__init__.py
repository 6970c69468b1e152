"""Backbone adapters: timm and Hugging Face encoders as `MaskedEncoder`s, Hugging Face VideoMAE as
a `MaskedVideoEncoder` (``splathead.adapters``)."""

from splathead.encoder import MaskedEncoder
from splathead.adapters.export import export_hf, export_timm
from splathead.adapters.hf_dinov2 import HFDinov2Encoder
from splathead.adapters.hf_videomae import HFVideoMAEEncoder
from splathead.adapters.hf_vitmae import HFViTMAEEncoder
from splathead.adapters.timm_eva import TimmEvaEncoder
from splathead.adapters.timm_hiera import TimmHieraEncoder
from splathead.adapters.timm_vit import TimmViTEncoder
from splathead.adapters.wrap import wrap

__all__ = [
    "HFDinov2Encoder",
    "HFVideoMAEEncoder",
    "HFViTMAEEncoder",
    "MaskedEncoder",
    "TimmEvaEncoder",
    "TimmHieraEncoder",
    "TimmViTEncoder",
    "export_hf",
    "export_timm",
    "wrap",
]
