"""Factories: GMAE models with a timm ViT encoder trained from scratch, named like timm's.

``gmae_vit_base_patch16()`` is the paper's model; ``gmae_vit_large_patch16`` and
``gmae_vit_huge_patch14`` are MAE's larger encoders with the same decoder (the paper trained
ViT-B only). Every keyword of :func:`build_gmae_vit` overrides a setting, e.g.
``gmae_vit_tiny(img_size=32, backend="torch")`` or ``gmae_vit_large_patch16(background=0.0)``.
:func:`gmae_encoder` builds a named model's encoder alone (no decoder, no renderer), e.g. for
fine-tuning or linear probing it from scratch.
"""

from __future__ import annotations

from typing import Any

from timm.models.vision_transformer import VisionTransformer

from splathead.adapters import TimmViTEncoder, wrap
from splathead.decoder import DecoderSettings
from splathead.initialization import init_vit_like_mae
from splathead.model import GMAE, Loss
from splathead.patches import as_pair, patch_grid
from splathead.typing import typecheck

__all__ = [
    "ENCODERS",
    "build_gmae_vit",
    "build_vit_encoder",
    "gmae_encoder",
    "gmae_vit_base_patch16",
    "gmae_vit_huge_patch14",
    "gmae_vit_large_patch16",
    "gmae_vit_tiny",
]

# The encoder settings of each named model, on top of :func:`build_vit_encoder`'s defaults.
ENCODERS: dict[str, dict[str, Any]] = {
    "gmae_vit_base_patch16": {},
    "gmae_vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16),
    "gmae_vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    "gmae_vit_tiny": dict(img_size=64, patch_size=8, embed_dim=96, depth=3, num_heads=3),
}

TINY_DECODER = DecoderSettings(dim=64, depth=2, num_heads=4, num_queries=64)

# Factory keywords naming a decoder setting whose plain name is the encoder's (depth, ...).
_DECODER_ALIASES = {"decoder_embed_dim": "dim", "decoder_depth": "depth",
                    "decoder_num_heads": "num_heads", "decoder_mlp_ratio": "mlp_ratio"}


@typecheck
def build_vit_encoder(
    *,
    img_size: int = 224,
    patch_size: int = 16,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    **vit_kwargs: Any,
) -> TimmViTEncoder:
    """The encoder GMAE trains: an MAE-initialised timm ``VisionTransformer`` (cls token, fixed
    sin-cos positions, no head; :func:`init_vit_like_mae`) as a
    :class:`~splathead.encoder.MaskedEncoder`. Defaults: ViT-B/16 at 224 px.

    ``vit_kwargs`` go to timm's ``VisionTransformer`` (e.g. ``drop_path_rate``, ``mlp_ratio``);
    the ViT is ``encoder.vit``.
    """
    # Before timm builds a ViT with an empty patch grid (its error names neither setting).
    patch_grid(*as_pair("img_size", img_size), as_pair("patch_size", patch_size), name="img_size")
    vit = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        num_classes=0,
        **vit_kwargs,
    )
    return wrap(init_vit_like_mae(vit))


def gmae_encoder(name: str, **overrides: Any) -> TimmViTEncoder:
    """The encoder of the factory ``name`` (a key of :data:`ENCODERS`, e.g. ``"gmae_vit_tiny"``)
    alone, with the same random initialisation; ``overrides``: keywords of
    :func:`build_vit_encoder`."""
    if name not in ENCODERS:
        raise ValueError(f"name {name!r} is not one of {list(ENCODERS)}")
    return build_vit_encoder(**{**ENCODERS[name], **overrides})


def _split_decoder_settings(
    overrides: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(decoder settings, ViT keywords)`` of a factory's keywords: the decoder's fields by name
    (``decoder_depth`` etc. where the name is also the encoder's), the rest to the ViT."""
    decoder_names = set(DecoderSettings.__dataclass_fields__) - set(_DECODER_ALIASES.values())
    decoder, vit = {}, {}
    for name, value in overrides.items():
        if name in _DECODER_ALIASES:
            decoder[_DECODER_ALIASES[name]] = value
        elif name in decoder_names:
            decoder[name] = value
        else:
            vit[name] = value
    return decoder, vit


@typecheck
def build_gmae_vit(
    *,
    img_size: int = 224,
    mask_ratio: float = 0.75,
    loss: Loss = "masked",
    norm_pix_loss: bool = False,
    freeze_encoder: bool = False,
    decoder_settings: DecoderSettings = DecoderSettings(),
    decoder_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> GMAE:
    """A GMAE with the encoder of :func:`build_vit_encoder` and a decoder with
    ``decoder_settings``. Defaults: the paper's ViT-B/16 model.

    ``overrides`` name an encoder keyword of :func:`build_vit_encoder` (``patch_size``,
    ``embed_dim``, ``depth``, ``num_heads``, or timm ``VisionTransformer``'s, e.g.
    ``drop_path_rate``) or a decoder setting (:class:`~splathead.decoder.DecoderSettings`:
    ``num_queries``, ``max_scale``, ``backend``, ``background``...; the decoder's ``dim``,
    ``depth``, ``num_heads`` and ``mlp_ratio`` as ``decoder_embed_dim``, ``decoder_depth``,
    ``decoder_num_heads``, ``decoder_mlp_ratio``). ``decoder_kwargs``: more decoder settings by
    their own names.
    """
    decoder, vit = _split_decoder_settings(overrides)
    encoder = build_vit_encoder(img_size=img_size, **vit)
    return GMAE.from_encoder(
        encoder,
        img_size=img_size,
        mask_ratio=mask_ratio,
        loss=loss,
        norm_pix_loss=norm_pix_loss,
        freeze_encoder=freeze_encoder,
        decoder_settings=decoder_settings.replace(**decoder, **(decoder_kwargs or {})),
    )


def gmae_vit_base_patch16(**overrides: Any) -> GMAE:
    """The paper's GMAE: ViT-B/16 encoder (768 wide, 12 blocks, 12 heads) at 224 px, decoder
    512 wide, 8 blocks, 16 heads, 256 Gaussians, ``max_scale`` 1/8 (c = 1), mask ratio 0.75.

    ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    return build_gmae_vit(**{**ENCODERS["gmae_vit_base_patch16"], **overrides})


def gmae_vit_large_patch16(**overrides: Any) -> GMAE:
    """MAE's ViT-L/16 encoder (1024 wide, 24 blocks, 16 heads) with the paper's GMAE decoder.

    ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    return build_gmae_vit(**{**ENCODERS["gmae_vit_large_patch16"], **overrides})


def gmae_vit_huge_patch14(**overrides: Any) -> GMAE:
    """MAE's ViT-H/14 encoder (1280 wide, 32 blocks, 16 heads, 14 px patches) with the paper's
    GMAE decoder. ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    return build_gmae_vit(**{**ENCODERS["gmae_vit_huge_patch14"], **overrides})


def gmae_vit_tiny(img_size: int = 64, **overrides: Any) -> GMAE:
    """A small GMAE for tests and laptops: 8 px patches, 96-wide 3-block encoder, 64-wide
    2-block decoder, 64 Gaussians. ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    return build_gmae_vit(
        **{**ENCODERS["gmae_vit_tiny"], "img_size": img_size, "decoder_settings": TINY_DECODER,
           **overrides}
    )
