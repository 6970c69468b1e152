"""`GMAE`: a masked encoder + the Gaussian decoder + the paper's loss.

Built by :mod:`splathead.factories` (ViT models from scratch) or :meth:`GMAE.from_encoder` (an
encoder of yours, e.g. ``splathead.adapters.wrap(timm_vit)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from splathead.camera import Camera
from splathead.checks import check_pixels, check_settings_agree
from splathead.decoder import DecoderOutput, DecoderSettings, GMAEDecoder
from splathead.encoder import MaskedEncoder, MaskedVideoEncoder
from splathead.gaussians import Gaussians
from splathead.losses import image_mse, masked_patch_mse
from splathead.masking import PatchMask, RandomMasking
from splathead.render import SplatRenderer
from splathead.typing import Float, Int, Tensor, typecheck

Loss = Literal["masked", "full"]


class GMAEOutput(NamedTuple):
    """What :class:`GMAE` returns."""

    loss: Float[Tensor, ""]
    """MSE between the render and the input in [0, 1] RGB (masked patches only by default)."""
    image: Float[Tensor, "b c h w"]
    """The render in [0, 1] RGB, on a white background."""
    gaussians: Gaussians
    """The decoder's Gaussians, ``num_queries * gaussians_per_token`` per image."""
    mask: PatchMask
    """Which patches the encoder saw (``mask.mask [b l]`` is True where hidden)."""


class GMAE(nn.Module):
    """Gaussian Masked Autoencoder: mask, encode the visible patches, decode Gaussians, render.

    Takes images normalised with ``mean`` / ``std`` (ImageNet's by default), as the encoder
    expects them; the render and the loss target are in [0, 1] RGB (the input de-normalised,
    clamped against rounding). Images are checked before any work: channels, size, the
    encoder's dtype and, while the renderer checks its inputs (``check_inputs``, one device sync),
    finite values. The stable split of the forward pass, for downstream code:
    :meth:`encode` (visible patches to tokens), :meth:`decode` (tokens to Gaussians),
    :meth:`render` (Gaussians to image); :meth:`reconstruct` runs them under a seeded mask (the
    training ratio by default) or none.

    Args:
        encoder: a :class:`~splathead.encoder.MaskedEncoder` module, e.g. a timm ViT or a
            Hugging Face ViTMAE / DINOv2 adapted by :func:`splathead.adapters.wrap`.
        decoder: a :class:`GMAEDecoder` built for this encoder: same width, patch size, prefix
            tokens and patch grid (checked here).
        mask_ratio: fraction of patches hidden from the encoder, in [0, 1) (paper: 0.75).
        mean: per-channel mean of the input images' normalisation.
        std: per-channel standard deviation of the input images' normalisation.
        loss: "masked" (paper) averages the MSE over hidden patches; "full" over all pixels.
        norm_pix_loss: MAE's normalised-pixel target: each patch of the render and of the input
            normalised by the input patch's mean and unbiased variance (``masked_patch_mse``'s
            ``norm_pix``); with ``loss="full"`` averaged over every patch. The paper trained
            without it.
        freeze_encoder: train the decoder only: the encoder's parameters get
            ``requires_grad=False`` and the encoder stays in eval mode through ``train()``
            (no dropout or drop-path on a frozen encoder).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        encoder: MaskedEncoder,
        decoder: GMAEDecoder,
        *,
        mask_ratio: float = 0.75,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        loss: Loss = "masked",
        norm_pix_loss: bool = False,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        _check_encoder(encoder)
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
        self.norm_pix_loss = norm_pix_loss
        self.freeze_encoder = freeze_encoder
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @classmethod
    def from_encoder(
        cls,
        encoder: MaskedEncoder,
        *,
        img_size: int | Sequence[int],
        mask_ratio: float = 0.75,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        loss: Loss = "masked",
        norm_pix_loss: bool = False,
        freeze_encoder: bool = False,
        decoder_settings: DecoderSettings = DecoderSettings(),
        **decoder_overrides: Any,
    ) -> GMAE:
        """A GMAE whose decoder is sized from ``encoder`` (width, patch size, prefix tokens).

        The decoder has ``decoder_settings`` (the paper's by default) with
        ``decoder_overrides`` of its fields, e.g.
        ``GMAE.from_encoder(wrap(timm.create_model("vit_base_patch16_224.mae")), img_size=224)``
        or ``GMAE.from_encoder(encoder, img_size=64, dim=64, depth=2, num_queries=64)``.
        """
        _check_encoder(encoder)
        decoder = GMAEDecoder(
            encoder_dim=encoder.embed_dim,
            img_size=img_size,
            patch_size=encoder.patch_size,
            num_prefix_tokens=encoder.num_prefix_tokens,
            settings=decoder_settings,
            **decoder_overrides,
        )
        return cls(
            encoder,
            decoder,
            mask_ratio=mask_ratio,
            mean=mean,
            std=std,
            loss=loss,
            norm_pix_loss=norm_pix_loss,
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

    @property
    def renderer(self) -> SplatRenderer:
        """The decoder's renderer (e.g. for :mod:`splathead.zeroshot`'s layer renders)."""
        return self.decoder.renderer

    @property
    def camera(self) -> Camera:
        """The camera the Gaussians are rendered with (scene x, y in (-1, 1) span the image)."""
        return self.decoder.camera

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters AdamW leaves undecayed (:func:`no_weight_decay_names`)."""
        return no_weight_decay_names(self)

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
        mask = self._mask(images, mask=mask, noise=noise)
        latent = self.encoder(images, mask.ids_keep)
        gaussians = self.decode(latent, mask.ids_keep)
        image = self.render(gaussians)
        target = self.unnormalize(images)
        if self.loss == "masked":
            loss = masked_patch_mse(
                image, target, mask.mask, self.patch_size, norm_pix=self.norm_pix_loss
            )
        elif self.norm_pix_loss:
            every_patch = torch.ones_like(mask.mask)
            loss = masked_patch_mse(image, target, every_patch, self.patch_size, norm_pix=True)
        else:
            loss = image_mse(image, target)
        return GMAEOutput(loss=loss, image=image, gaussians=gaussians, mask=mask)

    @typecheck
    def reconstruct(
        self,
        images: Float[Tensor, "b c h w"],
        mask_ratio: float | None = None,
        *,
        mask: PatchMask | None = None,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput:
        """Render normalised ``images`` from part or all of their patches (no loss).

        By default the encoder sees what it saw in training: a random mask at the model's own
        ``mask_ratio``, drawn on the CPU from ``generator`` (a fresh one seeded with 0 when
        ``None``, so the same images give the same render). ``mask_ratio=0.0`` shows every patch
        in grid order; ``mask`` gives the mask itself (then ``mask_ratio`` must be ``None``).
        :func:`splathead.masking.covering_masks` draws masks that together show every patch.
        """
        self._check_images(images)
        if mask is not None and mask_ratio is not None:
            raise ValueError("give at most one of mask_ratio and mask")
        noise = None
        if mask is None and mask_ratio == 0:
            ids_keep = torch.arange(self.num_patches, device=images.device).expand(len(images), -1)
            mask = PatchMask(ids_keep=ids_keep, ids_restore=ids_keep)
        elif mask is None:
            if generator is None:
                generator = torch.Generator().manual_seed(0)
            noise = torch.rand(len(images), self.num_patches, generator=generator)
            noise = noise.to(images.device)
        mask = self._mask(images, mask=mask, noise=noise, ratio=mask_ratio)
        return self.decoder(self.encode(images, mask.ids_keep), ids_keep=mask.ids_keep)

    def _mask(
        self,
        images: Tensor,
        *,
        mask: PatchMask | None = None,
        noise: Tensor | None = None,
        ratio: float | None = None,
    ) -> PatchMask:
        """The mask :meth:`forward` and :meth:`reconstruct` run ``images`` under: ``mask``
        itself, or one drawn at ``ratio`` (``mask_ratio`` when None) from ``noise`` (from the
        global generator on the images' device when None); checked against the batch and the
        patch grid."""
        if mask is not None and noise is not None:
            raise ValueError("give at most one of mask and noise")
        if mask is None:
            masking = self.masking if ratio is None else RandomMasking(ratio)
            if noise is None:
                mask = masking(len(images), self.num_patches, device=images.device)
            else:
                mask = masking.from_noise(noise)
        if mask.batch_size != len(images) or mask.num_patches != self.num_patches:
            raise ValueError(
                f"mask is for {mask.batch_size} images of {mask.num_patches} patches, expected "
                f"{len(images)} images of {self.num_patches} patches"
            )
        return mask

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        evaluation: Sequence[Mapping[str, Any]] | None = None,
    ) -> Path:
        """Save this model as a Hub-style folder (:mod:`splathead.pretrained`): ``config.json``
        with every setting that rebuilds it, ``model.safetensors`` and a model card
        ``README.md`` with the settings and ``evaluation``'s records (e.g. the ``eval`` records
        of a recipe's ``metrics.jsonl``). Returns the folder.

        Encoders are rebuilt from settings, so the factories' timm ViTs
        (:func:`~splathead.factories.build_vit_encoder`) and the Hugging Face ViTMAE / DINOv2
        encoders of :func:`~splathead.adapters.wrap` can be saved; another encoder is refused
        by name before anything is written.
        """
        # splathead.pretrained builds encoders (factories, adapters): imported on use, since the
        # model's module sits below both.
        from splathead.pretrained import save_pretrained

        return save_pretrained(self, save_directory, evaluation=evaluation)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
    ) -> GMAE:
        """The GMAE saved by :meth:`save_pretrained` in the folder ``name_or_path`` (no network),
        or in the Hugging Face Hub repo of that id (``huggingface_hub``, the ``hf`` extra, with
        the other arguments). A folder written by another model type is refused by name."""
        from splathead.pretrained import load_pretrained

        return load_pretrained(
            name_or_path, revision=revision, cache_dir=cache_dir, force_download=force_download,
            token=token, local_files_only=local_files_only, map_location=map_location,
            strict=strict,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        evaluation: Sequence[Mapping[str, Any]] | None = None,
        commit_message: str = "Upload GMAE",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Upload this model's :meth:`save_pretrained` folder to the Hub repo ``repo_id``
        (created if missing) with ``huggingface_hub``; returns the commit's URL."""
        from splathead.pretrained import push_to_hub

        return push_to_hub(
            self, repo_id, evaluation=evaluation, commit_message=commit_message, private=private,
            token=token, revision=revision, create_pr=create_pr,
        )

    def _check_images(self, images: Tensor) -> None:
        weight = next(self.encoder.parameters(), None)
        check_pixels(
            "images", images, dtype=None if weight is None else weight.dtype,
            num_channels=self.mean.shape[0], size=self.img_size, model="GMAE",
            finite=self.decoder.renderer.check_inputs,
        )

    def extra_repr(self) -> str:
        return (
            f"mask_ratio={self.mask_ratio}, loss={self.loss!r}, "
            f"norm_pix_loss={self.norm_pix_loss}, freeze_encoder={self.freeze_encoder}"
        )


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of what each part's own ``no_weight_decay()`` (timm's protocol: tokens,
    position and query embeddings) names, searched through ``model``'s children."""
    names: set[str] = set()

    def collect(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if hasattr(child, "no_weight_decay"):
                names.update(f"{prefix}{name}.{leaf}" for leaf in child.no_weight_decay())
            else:
                collect(child, f"{prefix}{name}.")

    collect(model, "")
    return names


def _check_encoder(encoder: object) -> None:
    """Raise ``TypeError`` unless ``encoder`` is a module implementing :class:`MaskedEncoder`."""
    if isinstance(encoder, MaskedVideoEncoder):
        raise TypeError(
            f"encoder {type(encoder).__name__} is a video encoder (tubelet_size "
            f"{encoder.tubelet_size}); use splathead.VideoGMAE"
        )
    if not (isinstance(encoder, nn.Module) and isinstance(encoder, MaskedEncoder)):
        raise TypeError(
            f"encoder must be a MaskedEncoder module, got {type(encoder).__name__}; adapt a timm "
            "or Hugging Face backbone with splathead.adapters.wrap(backbone)"
        )


def _check_compatible(encoder: MaskedEncoder, decoder: GMAEDecoder) -> None:
    """Raise ``ValueError`` naming the first setting where ``decoder`` doesn't fit ``encoder``."""
    pairs = {
        "embed_dim / encoder_dim": (encoder.embed_dim, decoder.encoder_dim),
        "patch_size": (tuple(encoder.patch_size), decoder.patch_size),
        "num_prefix_tokens": (encoder.num_prefix_tokens, decoder.num_prefix_tokens),
    }
    check_settings_agree(pairs)
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
