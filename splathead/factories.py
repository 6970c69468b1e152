"""Factories: GMAE models with a timm ViT encoder trained from scratch, named like timm's.

``gmae_vit_base_patch16()`` is the paper's model; ``gmae_vit_large_patch16`` and
``gmae_vit_huge_patch14`` are MAE's larger encoders with the same decoder (the paper trained
ViT-B only). Every keyword of :func:`build_gmae_vit` overrides a setting, e.g.
``gmae_vit_tiny(img_size=32, backend="torch")`` or
``gmae_vit_large_patch16(decoder_kwargs={"background": 0.0})``.
"""

from __future__ import annotations

from typing import Any

from timm.models.vision_transformer import VisionTransformer

from splathead.adapters import wrap
from splathead.initialization import init_vit_like_mae
from splathead.model import GMAE, Loss
from splathead.render import BackendName
from splathead.typing import typecheck

__all__ = [
    "build_gmae_vit",
    "gmae_vit_base_patch16",
    "gmae_vit_huge_patch14",
    "gmae_vit_large_patch16",
    "gmae_vit_tiny",
]


@typecheck
def build_gmae_vit(
    *,
    img_size: int = 224,
    patch_size: int = 16,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    decoder_embed_dim: int = 512,
    decoder_depth: int = 8,
    decoder_num_heads: int = 16,
    num_queries: int = 256,
    gaussians_per_token: int = 1,
    max_scale: float = 1 / 8,
    mask_ratio: float = 0.75,
    loss: Loss = "masked",
    freeze_encoder: bool = False,
    backend: BackendName = "auto",
    decoder_kwargs: dict[str, Any] | None = None,
    **vit_kwargs: Any,
) -> GMAE:
    """A GMAE with an MAE-initialised timm ``VisionTransformer`` encoder (cls token, fixed sin-cos
    positions; :func:`init_vit_like_mae`). Defaults: the paper's ViT-B/16 model.

    ``decoder_kwargs`` go to :class:`~splathead.decoder.GMAEDecoder` beside the named decoder
    settings (e.g. ``background``, ``rotation``, ``center_range``); ``vit_kwargs`` go to timm's
    ``VisionTransformer`` (e.g. ``drop_path_rate``, ``mlp_ratio``).
    """
    vit = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        num_classes=0,
        **vit_kwargs,
    )
    return GMAE.from_encoder(
        wrap(init_vit_like_mae(vit)),
        img_size=img_size,
        mask_ratio=mask_ratio,
        loss=loss,
        freeze_encoder=freeze_encoder,
        dim=decoder_embed_dim,
        depth=decoder_depth,
        num_heads=decoder_num_heads,
        num_queries=num_queries,
        gaussians_per_token=gaussians_per_token,
        max_scale=max_scale,
        backend=backend,
        **(decoder_kwargs or {}),
    )


def gmae_vit_base_patch16(**overrides: Any) -> GMAE:
    """The paper's GMAE: ViT-B/16 encoder (768 wide, 12 blocks, 12 heads) at 224 px, decoder
    512 wide, 8 blocks, 16 heads, 256 Gaussians, ``max_scale`` 1/8 (c = 1), mask ratio 0.75.

    ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    return build_gmae_vit(**overrides)


def gmae_vit_large_patch16(**overrides: Any) -> GMAE:
    """MAE's ViT-L/16 encoder (1024 wide, 24 blocks, 16 heads) with the paper's GMAE decoder.

    ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    return build_gmae_vit(**{**dict(embed_dim=1024, depth=24, num_heads=16), **overrides})


def gmae_vit_huge_patch14(**overrides: Any) -> GMAE:
    """MAE's ViT-H/14 encoder (1280 wide, 32 blocks, 16 heads, 14 px patches) with the paper's
    GMAE decoder. ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    return build_gmae_vit(
        **{**dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16), **overrides}
    )


def gmae_vit_tiny(img_size: int = 64, **overrides: Any) -> GMAE:
    """A small GMAE for tests and laptops: 8 px patches, 96-wide 3-block encoder, 64-wide
    2-block decoder, 64 Gaussians. ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    config = dict(
        patch_size=8,
        embed_dim=96,
        depth=3,
        num_heads=3,
        decoder_embed_dim=64,
        decoder_depth=2,
        decoder_num_heads=4,
        num_queries=64,
    )
    return build_gmae_vit(img_size=img_size, **{**config, **overrides})
