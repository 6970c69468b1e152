"""`GMAE`: any masked encoder + the Gaussian decoder + the paper's loss, and ViT factories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from splathead.adapters import MaskedEncoder, wrap
from splathead.decoder import DecoderOutput, GMAEDecoder, init_like_mae
from splathead.gaussians import Gaussians
from splathead.losses import image_mse, masked_patch_mse
from splathead.masking import PatchMask, RandomMasking
from splathead.pos_embed import sincos_pos_embed_2d
from splathead.render.renderer import BackendName
from splathead.typing import Float, Int, Tensor, typecheck

Loss = Literal["masked", "full"]


class GMAEOutput(NamedTuple):
    """What :class:`GMAE` returns."""

    loss: Float[Tensor, ""]
    """MSE between the render and the input in [0, 1] RGB (masked patches only by default)."""
    image: Float[Tensor, "b c h w"]
    """The render in [0, 1] RGB, on a white background."""
    gaussians: Gaussians
    """The decoder's Gaussians, ``num_queries`` per image."""
    mask: PatchMask
    """Which patches the encoder saw (``mask.mask [b l]`` is True where hidden)."""


class GMAE(nn.Module):
    """Gaussian Masked Autoencoder: mask, encode the visible patches, decode Gaussians, render.

    Takes images normalised with ``mean`` / ``std`` (ImageNet's by default), as the encoder
    expects them; the render and the loss target are in [0, 1] RGB (the input de-normalised,
    clamped against rounding). The stable split of the forward pass, for downstream code:
    :meth:`encode` (visible patches to tokens), :meth:`decode` (tokens to Gaussians),
    :meth:`render` (Gaussians to image); :meth:`reconstruct` runs them without masking.

    Args:
        encoder: a :class:`~splathead.adapters.MaskedEncoder`, or a backbone
            :func:`splathead.adapters.wrap` adapts (timm ViT, Hugging Face ViTMAE / DINOv2).
        decoder: a :class:`GMAEDecoder` built for this encoder: same width, patch size, prefix
            tokens and patch grid (checked here).
        mask_ratio: fraction of patches hidden from the encoder, in [0, 1) (paper: 0.75).
        mean, std: per-channel normalisation of the input images.
        loss: "masked" (paper) averages the MSE over hidden patches; "full" over all pixels.
        freeze_encoder: train the decoder only: the encoder's parameters get
            ``requires_grad=False`` and the encoder stays in eval mode through ``train()``
            (no dropout or drop-path on a frozen encoder).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        encoder: MaskedEncoder | nn.Module,
        decoder: GMAEDecoder,
        *,
        mask_ratio: float = 0.75,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        loss: Loss = "masked",
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        encoder = wrap(encoder)
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        _check_compatible(encoder, decoder)
        if loss not in ("masked", "full"):
            raise ValueError(f"loss must be 'masked' or 'full', got {loss!r}")
        self.masking = RandomMasking(mask_ratio)
        if loss == "masked" and mask_ratio == 0:
            raise ValueError(
                "loss='masked' averages over hidden patches, but mask_ratio=0 hides none; use "
                "loss='full' (or GMAE.reconstruct for inference)"
            )
        if len(mean) != decoder.head.num_channels or len(std) != decoder.head.num_channels:
            raise ValueError(
                f"mean and std need one value per rendered channel ({decoder.head.num_channels}),"
                f" got {len(mean)} and {len(std)}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.loss = loss
        self.freeze_encoder = freeze_encoder
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @classmethod
    def from_encoder(
        cls,
        encoder: MaskedEncoder | nn.Module,
        *,
        img_size: int | Sequence[int],
        mask_ratio: float = 0.75,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        loss: Loss = "masked",
        freeze_encoder: bool = False,
        **decoder_kwargs: Any,
    ) -> GMAE:
        """A GMAE whose decoder is sized from ``encoder`` (width, patch size, prefix tokens).

        ``decoder_kwargs`` go to :class:`GMAEDecoder` (paper defaults otherwise), e.g.
        ``GMAE.from_encoder(timm.create_model("vit_base_patch16_224.mae"), img_size=224)``.
        """
        encoder = wrap(encoder)
        decoder = GMAEDecoder(
            encoder_dim=encoder.embed_dim,
            img_size=img_size,
            patch_size=encoder.patch_size,
            num_prefix_tokens=encoder.num_prefix_tokens,
            **decoder_kwargs,
        )
        return cls(
            encoder,
            decoder,
            mask_ratio=mask_ratio,
            mean=mean,
            std=std,
            loss=loss,
            freeze_encoder=freeze_encoder,
        )

    @property
    def mask_ratio(self) -> float:
        return self.masking.ratio

    @property
    def img_size(self) -> tuple[int, int]:
        return self.decoder.img_size

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.decoder.patch_size

    @property
    def num_patches(self) -> int:
        return self.decoder.num_patches

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters AdamW leaves undecayed: what each part's own
        ``no_weight_decay()`` (timm's protocol: tokens, position and query embeddings) names.
        """
        names: set[str] = set()

        def collect(module: nn.Module, prefix: str) -> None:
            for name, child in module.named_children():
                if hasattr(child, "no_weight_decay"):
                    names.update(f"{prefix}{name}.{leaf}" for leaf in child.no_weight_decay())
                else:
                    collect(child, f"{prefix}{name}.")

        collect(self, "")
        return names

    def train(self, mode: bool = True) -> GMAE:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    @typecheck
    def encode(
        self, images: Float[Tensor, "b c h w"], ids_keep: Int[Tensor, "b v"] | None = None
    ) -> Float[Tensor, "b t e"]:
        """Encoder tokens ``[b prefix+v e]`` of the patches ``ids_keep`` (all when ``None``)."""
        self._check_images(images)
        return self.encoder(images, ids_keep)

    @typecheck
    def decode(self, latent: Float[Tensor, "b t e"], ids_keep: Int[Tensor, "b v"]) -> Gaussians:
        """Gaussians from the encoder tokens of the visible patches ``ids_keep``."""
        return self.decoder.decode(latent, ids_keep)

    @typecheck
    def render(self, gaussians: Gaussians) -> Float[Tensor, "b c h w"]:
        """Render ``gaussians`` in [0, 1] RGB under the GMAE camera on the white background."""
        return self.decoder.render(gaussians)

    @typecheck
    def unnormalize(self, images: Float[Tensor, "b c h w"]) -> Float[Tensor, "b c h w"]:
        """Normalised input back to [0, 1] RGB (clamped: rounding can leave [0, 1] slightly)."""
        return (images * self.std + self.mean).clamp(0, 1)

    @typecheck
    def forward(
        self,
        images: Float[Tensor, "b c h w"],
        *,
        mask: PatchMask | None = None,
        noise: Float[Tensor, "b l"] | None = None,
    ) -> GMAEOutput:
        """Mask, encode, decode, render and score a batch of normalised images.

        Args:
            images: ``[b c h w]`` normalised with ``mean`` / ``std``, of the decoder's size.
            mask: use this mask instead of drawing one (any ratio; ``loss="masked"`` needs at
                least one hidden patch).
            noise: draw the mask from this noise ``[b l]`` (MAE's ``random_masking``) at
                ``mask_ratio``, for a deterministic mask. Give at most one of the two.
        """
        self._check_images(images)
        batch_size = images.shape[0]
        if mask is not None and noise is not None:
            raise ValueError("give at most one of mask and noise")
        if mask is None:
            if noise is None:
                mask = self.masking(batch_size, self.num_patches, device=images.device)
            else:
                mask = self.masking.from_noise(noise)
        if mask.batch_size != batch_size or mask.num_patches != self.num_patches:
            raise ValueError(
                f"mask is for {mask.batch_size} images of {mask.num_patches} patches, expected "
                f"{batch_size} images of {self.num_patches} patches"
            )
        latent = self.encoder(images, mask.ids_keep)
        gaussians = self.decode(latent, mask.ids_keep)
        image = self.render(gaussians)
        target = self.unnormalize(images)
        if self.loss == "masked":
            loss = masked_patch_mse(image, target, mask.mask, self.patch_size)
        else:
            loss = image_mse(image, target)
        return GMAEOutput(loss=loss, image=image, gaussians=gaussians, mask=mask)

    @typecheck
    def reconstruct(self, images: Float[Tensor, "b c h w"]) -> DecoderOutput:
        """Render normalised ``images`` from all their patches (no masking, no loss)."""
        ids_keep = torch.arange(self.num_patches, device=images.device)
        ids_keep = ids_keep.expand(images.shape[0], -1)
        return self.decoder(self.encode(images, ids_keep), ids_keep=ids_keep)

    def _check_images(self, images: Tensor) -> None:
        channels, height, width = images.shape[1:]
        if channels != self.mean.shape[0]:
            raise ValueError(
                f"images has {channels} channels, expected {self.mean.shape[0]} (len(mean))"
            )
        if (height, width) != self.img_size:
            raise ValueError(
                f"images are {height}x{width} pixels, but this GMAE renders "
                f"{self.img_size[0]}x{self.img_size[1]} (the decoder's img_size)"
            )

    def extra_repr(self) -> str:
        return (
            f"mask_ratio={self.mask_ratio}, loss={self.loss!r}, "
            f"freeze_encoder={self.freeze_encoder}"
        )


def _check_compatible(encoder: MaskedEncoder, decoder: GMAEDecoder) -> None:
    """Raise ``ValueError`` naming the first setting where ``decoder`` doesn't fit ``encoder``."""
    pairs = {
        "embed_dim / encoder_dim": (encoder.embed_dim, decoder.encoder_dim),
        "patch_size": (tuple(encoder.patch_size), decoder.patch_size),
        "num_prefix_tokens": (encoder.num_prefix_tokens, decoder.num_prefix_tokens),
    }
    for name, (encoder_value, decoder_value) in pairs.items():
        if encoder_value != decoder_value:
            raise ValueError(
                f"encoder and decoder disagree on {name}: encoder {encoder_value}, "
                f"decoder {decoder_value}"
            )
    try:
        grid_size = tuple(encoder.grid_size(*decoder.img_size))
    except ValueError as error:
        raise ValueError(
            f"the encoder cannot take the decoder's img_size {decoder.img_size}: {error}"
        ) from error
    if grid_size != decoder.grid_size:
        raise ValueError(
            f"encoder's patch grid {grid_size} for img_size {decoder.img_size} differs from the "
            f"decoder's {decoder.grid_size}"
        )


def init_vit_like_mae(vit: VisionTransformer) -> VisionTransformer:
    """Initialise a timm ViT for pretraining as MAE does, in place; returns ``vit``.

    Fixed 2D sin-cos positions (MAE layout, zero rows for prefix tokens, ``requires_grad``
    False), xavier-uniform Linear and patch-projection weights, zero biases, cls token normal
    with std 0.02.
    """
    grid_size = tuple(vit.patch_embed.grid_size)
    num_position_prefix = vit.pos_embed.shape[1] - grid_size[0] * grid_size[1]
    table = sincos_pos_embed_2d(vit.embed_dim, grid_size, num_prefix_tokens=num_position_prefix)
    with torch.no_grad():
        vit.pos_embed.copy_(table[None])
    vit.pos_embed.requires_grad_(False)
    vit.apply(init_like_mae)
    nn.init.xavier_uniform_(vit.patch_embed.proj.weight.view(vit.embed_dim, -1))
    if vit.cls_token is not None:
        nn.init.normal_(vit.cls_token, std=0.02)
    return vit


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
    max_scale: float = 1 / 8,
    mask_ratio: float = 0.75,
    loss: Loss = "masked",
    freeze_encoder: bool = False,
    backend: BackendName = "auto",
    **vit_kwargs: Any,
) -> GMAE:
    """A GMAE with an MAE-initialised timm ``VisionTransformer`` encoder (cls token, fixed sin-cos
    positions; :func:`init_vit_like_mae`). Defaults: the paper's ViT-B/16 model.

    ``vit_kwargs`` go to timm's ``VisionTransformer`` (e.g. ``drop_path_rate``, ``mlp_ratio``).
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
        init_vit_like_mae(vit),
        img_size=img_size,
        mask_ratio=mask_ratio,
        loss=loss,
        freeze_encoder=freeze_encoder,
        dim=decoder_embed_dim,
        depth=decoder_depth,
        num_heads=decoder_num_heads,
        num_queries=num_queries,
        max_scale=max_scale,
        backend=backend,
    )


def gmae_vit_base_patch16(**overrides: Any) -> GMAE:
    """The paper's GMAE: ViT-B/16 encoder (768 wide, 12 blocks, 12 heads) at 224 px, decoder
    512 wide, 8 blocks, 16 heads, 256 Gaussians, ``max_scale`` 1/8 (c = 1), mask ratio 0.75.

    ``overrides``: any keyword of :func:`build_gmae_vit`.
    """
    return build_gmae_vit(**overrides)


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
