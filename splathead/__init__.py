"""splathead: Gaussian Masked Autoencoders for any MAE.

The parts, lowest layer first (each module imports only from the layers above it in this list):

- foundations: :mod:`splathead.typing` (checked shapes), :mod:`splathead.indexing`
  (``batched_gather``), :mod:`splathead.patches` (``patchify``, ``unpatchify``,
  ``patch_grid``), :mod:`splathead.pos_embed`, :mod:`splathead.initialization` (MAE's init)
- data: :class:`Camera`, :class:`Gaussians`; :mod:`splathead.masking` (``RandomMasking``,
  ``PatchMask``: MAE's algorithm; ``gather_tokens``, ``restore_tokens``),
  :mod:`splathead.mask_formats` (MAE's and lightly's)
- rendering: :mod:`splathead.render`: :class:`SplatRenderer` over a ``RenderBackend``
  (torch, gsplat, the reference definition, or yours)
- decoder: :mod:`splathead.decoder`: ``QueryDecoder`` (GMAE's query transformer),
  :class:`GaussianHead` (tokens -> :class:`Gaussians`), :class:`GMAEDecoder` (both plus the
  renderer), built from one :class:`DecoderSettings`
- losses: :func:`masked_patch_mse`, :mod:`splathead.losses` (``image_mse``)
- encoders: :class:`MaskedEncoder` (the protocol), :mod:`splathead.adapters` (timm and Hugging
  Face ViTs on visible patches only; :func:`wrap` picks the adapter)
- model: :class:`GMAE` (encoder + masking + decoder + loss)
- video: :class:`VideoGMAE` (:mod:`splathead.video_model`): a :class:`MaskedVideoEncoder`
  (VideoMAE through :func:`wrap`), :mod:`splathead.video_masking` (``TubeMasking``),
  :mod:`splathead.video_decoder` (``VideoGMAEDecoder``), :class:`VideoGaussians` (Gaussians
  that move over time)
- factories: :func:`gmae_vit_base_patch16`, :func:`gmae_vit_large_patch16`,
  :func:`gmae_vit_huge_patch14`, :func:`gmae_vit_tiny`, and a named model's encoder alone:
  :func:`gmae_encoder` (:mod:`splathead.factories`)
- analysis: :mod:`splathead.zeroshot` (layers, figure-ground, edges), :mod:`splathead.tracking`
  (zero-shot point tracks from a :class:`VideoGMAE`'s Gaussians, TAP-Vid metrics), :mod:`splathead.viz`,
  :func:`export_ply` (Gaussians for 3D Gaussian-splatting viewers), :mod:`splathead.health`
  (:func:`gaussian_health`: border, invisible and coverage shares; :func:`collapse_warning`)
- evaluation: :mod:`splathead.metrics` (PSNR, SSIM; needs torchmetrics, so not imported here),
  :mod:`splathead.probes` (online linear probes)
"""

from splathead import tracking, viz, zeroshot
from splathead.adapters import wrap
from splathead.camera import Camera
from splathead.decoder import DecoderSettings, GMAEDecoder
from splathead.encoder import MaskedEncoder, MaskedVideoEncoder
from splathead.factories import (
    gmae_encoder,
    gmae_vit_base_patch16,
    gmae_vit_huge_patch14,
    gmae_vit_large_patch16,
    gmae_vit_tiny,
)
from splathead.gaussians import Gaussians, InvalidGaussiansError
from splathead.head import GaussianHead
from splathead.health import gaussian_health
from splathead.losses import masked_patch_mse
from splathead.model import GMAE
from splathead.ply import export_ply
from splathead.render import SplatRenderer
from splathead.video_gaussians import VideoGaussians
from splathead.video_model import VideoGMAE

__version__ = "0.1.0"

# What the README's user needs; every other part is imported from its module (the map above).
__all__ = [
    "GMAE",
    "Camera",
    "DecoderSettings",
    "GMAEDecoder",
    "GaussianHead",
    "Gaussians",
    "InvalidGaussiansError",
    "MaskedEncoder",
    "MaskedVideoEncoder",
    "SplatRenderer",
    "VideoGMAE",
    "VideoGaussians",
    "export_ply",
    "gaussian_health",
    "gmae_encoder",
    "gmae_vit_base_patch16",
    "gmae_vit_huge_patch14",
    "gmae_vit_large_patch16",
    "gmae_vit_tiny",
    "masked_patch_mse",
    "tracking",
    "viz",
    "wrap",
    "zeroshot",
]
