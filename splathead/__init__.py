"""splathead: Gaussian Masked Autoencoders for any MAE.

The parts, in the order data flows through them:

- masking: :class:`RandomMasking`, :class:`PatchMask` (MAE's algorithm and index formats)
- encoders: :mod:`splathead.adapters` (timm and Hugging Face ViTs on visible patches only)
- decoder: :class:`QueryDecoder` (GMAE's query transformer), :class:`GaussianHead`
  (tokens -> :class:`Gaussians`), :class:`GMAEDecoder` (both plus the renderer)
- rendering: :class:`Camera`, :class:`SplatRenderer` (torch or gsplat backend)
- losses: :func:`masked_patch_mse`, :func:`image_mse`, :func:`patchify`, :func:`unpatchify`
- model: :class:`GMAE`, :func:`gmae_vit_base_patch16`, :func:`gmae_vit_tiny`
- analysis: :mod:`splathead.zeroshot` (layers, figure-ground, edges), :mod:`splathead.viz`
- evaluation: :mod:`splathead.metrics` (PSNR, SSIM; needs torchmetrics, so not imported here),
  :mod:`splathead.probes` (online linear probes)
"""

from splathead import viz, zeroshot
from splathead.camera import Camera
from splathead.decoder import DecoderOutput, GMAEDecoder, QueryDecoder
from splathead.gaussians import Gaussians
from splathead.head import GaussianHead
from splathead.losses import image_mse, masked_patch_mse, patchify, unpatchify
from splathead.masking import PatchMask, RandomMasking, gather_tokens, restore_tokens
from splathead.model import GMAE, GMAEOutput, gmae_vit_base_patch16, gmae_vit_tiny
from splathead.render import RenderOutput, SplatRenderer

__version__ = "0.1.0"

__all__ = [
    "GMAE",
    "Camera",
    "DecoderOutput",
    "GMAEDecoder",
    "GMAEOutput",
    "GaussianHead",
    "Gaussians",
    "PatchMask",
    "QueryDecoder",
    "RandomMasking",
    "RenderOutput",
    "SplatRenderer",
    "gather_tokens",
    "gmae_vit_base_patch16",
    "gmae_vit_tiny",
    "image_mse",
    "masked_patch_mse",
    "patchify",
    "restore_tokens",
    "unpatchify",
    "viz",
    "zeroshot",
]
