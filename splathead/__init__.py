"""splathead: Gaussian Masked Autoencoders for any MAE.

The parts, lowest layer first (each module imports only from the layers above it in this list):

- foundations: :mod:`splathead.typing` (checked shapes), :func:`batched_gather`,
  :mod:`splathead.patches` (:func:`patchify`, :func:`unpatchify`, ``patch_grid``),
  :mod:`splathead.pos_embed`, :mod:`splathead.initialization` (MAE's init)
- data: :class:`Camera`, :class:`Gaussians`; masking: :class:`RandomMasking`,
  :class:`PatchMask` (MAE's algorithm), :mod:`splathead.mask_formats` (MAE's and lightly's)
- rendering: :mod:`splathead.render`: :class:`SplatRenderer` over a :class:`RenderBackend`
  (torch, gsplat, the reference definition, or yours)
- decoder: :class:`QueryDecoder` (GMAE's query transformer), :class:`GaussianHead`
  (tokens -> :class:`Gaussians`), :class:`GMAEDecoder` (both plus the renderer)
- losses: :func:`masked_patch_mse`, :func:`image_mse`
- encoders: :class:`MaskedEncoder` (the protocol), :mod:`splathead.adapters` (timm and Hugging
  Face ViTs on visible patches only; :func:`wrap` picks the adapter)
- model: :class:`GMAE` (encoder + masking + decoder + loss)
- factories: :func:`gmae_vit_base_patch16`, :func:`gmae_vit_large_patch16`,
  :func:`gmae_vit_huge_patch14`, :func:`gmae_vit_tiny` (:mod:`splathead.factories`)
- analysis: :mod:`splathead.zeroshot` (layers, figure-ground, edges), :mod:`splathead.viz`,
  :func:`export_ply` (Gaussians for 3D Gaussian-splatting viewers)
- evaluation: :mod:`splathead.metrics` (PSNR, SSIM; needs torchmetrics, so not imported here),
  :mod:`splathead.probes` (online linear probes)
"""

from splathead import mask_formats, viz, zeroshot
from splathead.adapters import wrap
from splathead.camera import Camera
from splathead.decoder import DecoderOutput, GMAEDecoder, QueryDecoder
from splathead.encoder import MaskedEncoder
from splathead.factories import (
    gmae_vit_base_patch16,
    gmae_vit_huge_patch14,
    gmae_vit_large_patch16,
    gmae_vit_tiny,
)
from splathead.gaussians import Gaussians
from splathead.head import GaussianHead
from splathead.indexing import batched_gather
from splathead.losses import image_mse, masked_patch_mse
from splathead.masking import PatchMask, RandomMasking, gather_tokens, restore_tokens
from splathead.model import GMAE, GMAEOutput
from splathead.patches import patchify, unpatchify
from splathead.ply import export_ply
from splathead.render import RenderBackend, RenderOutput, SplatRenderer

__version__ = "0.1.0"

__all__ = [
    "GMAE",
    "Camera",
    "DecoderOutput",
    "GMAEDecoder",
    "GMAEOutput",
    "GaussianHead",
    "Gaussians",
    "MaskedEncoder",
    "PatchMask",
    "QueryDecoder",
    "RandomMasking",
    "RenderBackend",
    "RenderOutput",
    "SplatRenderer",
    "batched_gather",
    "export_ply",
    "gather_tokens",
    "gmae_vit_base_patch16",
    "gmae_vit_huge_patch14",
    "gmae_vit_large_patch16",
    "gmae_vit_tiny",
    "image_mse",
    "mask_formats",
    "masked_patch_mse",
    "patchify",
    "restore_tokens",
    "unpatchify",
    "viz",
    "wrap",
    "zeroshot",
]
