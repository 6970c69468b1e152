"""`VideoGMAE`: a masked video encoder + the Video-GMAE decoder (Gaussians that move over time) +
the masked-patch loss over every frame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from splathead.camera import Camera
from splathead.checks import check_pixels, check_settings_agree
from splathead.decoder import DecoderSettings
from splathead.encoder import MaskedVideoEncoder
from splathead.losses import masked_patch_mse
from splathead.masking import PatchMask, RandomMasking
from splathead.render import SplatRenderer
from splathead.model import no_weight_decay_names
from splathead.typing import Float, Int, Tensor, typecheck
from splathead.video_decoder import VideoGMAEDecoder
from splathead.video_gaussians import VideoGaussians
from splathead.video_masking import TubeMasking, frame_patch_mask

VideoMasking = Literal["tube", "random"]


class VideoGMAEOutput(NamedTuple):
    """What :class:`VideoGMAE` returns."""

    loss: Float[Tensor, ""]
    """Masked-patch MSE over every frame's hidden patches, plus ``delta_weight`` times the
    Gaussians' :meth:`~splathead.VideoGaussians.delta_penalty`."""
    image: Float[Tensor, "b t c h w"]
    """The render of every frame in [0, 1] RGB, on the decoder's background."""
    gaussians: VideoGaussians
    """The Gaussians of every frame."""
    mask: PatchMask
    """Which tubelets the encoder saw, over the tubelet grid ``(gt, gh, gw)``, time slowest."""


class VideoGMAE(nn.Module):
    """Video Gaussian Masked Autoencoder (Video-GMAE): mask tubelets, encode the visible ones,
    decode Gaussians for the first frame and their motion and colour change over the later
    frames, render every frame.

    Takes videos ``[b t c h w]`` normalised with ``mean`` / ``std``; renders and the loss target
    are in [0, 1] RGB. Videos are checked before any work, as :class:`~splathead.GMAE` checks
    images: frames, channels, size, the encoder's dtype and, while the renderer checks its inputs
    (``check_inputs``), finite values. Stable parts: :meth:`encode`, :meth:`decode` (tokens to
    :class:`VideoGaussians`), :meth:`render`.

    Args:
        encoder: a :class:`~splathead.encoder.MaskedVideoEncoder` module, e.g.
            ``splathead.wrap(transformers.VideoMAEModel(...))``.
        decoder: a :class:`VideoGMAEDecoder` built for this encoder (checked).
        masking: "tube" (VideoMAE: one spatial mask in every time slot) or "random" (MAE-ST:
            random over the whole tubelet grid).
        mask_ratio: fraction of tubelets hidden, in [0, 1) (the authors: 0.9).
        mean: per-channel mean of the input frames' normalisation.
        std: per-channel standard deviation of the input frames' normalisation.
        delta_weight: weight of the L2 penalty on the Gaussians' steps and colour changes
            (the authors' ``deltas_reg_weight``, 0 by default as theirs).
        freeze_encoder: train the decoder only (encoder without gradients, kept in eval mode).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        encoder: MaskedVideoEncoder,
        decoder: VideoGMAEDecoder,
        *,
        masking: VideoMasking = "tube",
        mask_ratio: float = 0.9,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        delta_weight: float = 0.0,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        _check_encoder(encoder)
        _check_compatible(encoder, decoder)
        if masking not in ("tube", "random"):
            raise ValueError(f"masking must be 'tube' or 'random', got {masking!r}")
        if mask_ratio == 0:
            raise ValueError("mask_ratio=0 hides no tubelet, so the masked-patch loss is undefined")
        self.masking = TubeMasking(mask_ratio) if masking == "tube" else RandomMasking(mask_ratio)
        self.masking_name = masking
        if not delta_weight >= 0:
            raise ValueError(f"delta_weight must be >= 0, got {delta_weight}")
        if len(mean) != decoder.head.num_channels or len(std) != decoder.head.num_channels:
            raise ValueError(
                f"mean and std need one value per rendered channel ({decoder.head.num_channels}),"
                f" got {len(mean)} and {len(std)}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.delta_weight = delta_weight
        self.freeze_encoder = freeze_encoder
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @classmethod
    def from_encoder(
        cls,
        encoder: MaskedVideoEncoder,
        *,
        img_size: int | Sequence[int],
        num_frames: int,
        masking: VideoMasking = "tube",
        mask_ratio: float = 0.9,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        delta_weight: float = 0.0,
        freeze_encoder: bool = False,
        max_step: float = 1 / 16,
        decoder_settings: DecoderSettings = DecoderSettings(),
        **decoder_overrides: Any,
    ) -> VideoGMAE:
        """A VideoGMAE whose decoder is sized from ``encoder`` (width, patch and tubelet size,
        prefix tokens): the image decoder's ``decoder_settings`` (``num_queries`` per frame)
        with ``decoder_overrides`` of its fields (``dim``, ``depth``, ``num_heads``,
        ``num_queries``, ``gaussians_per_token``, ``max_scale``, ``backend``, ...), and
        ``max_step`` (:class:`VideoGMAEDecoder`)."""
        _check_encoder(encoder)
        decoder = VideoGMAEDecoder(
            encoder_dim=encoder.embed_dim,
            img_size=img_size,
            num_frames=num_frames,
            patch_size=encoder.patch_size,
            tubelet_size=encoder.tubelet_size,
            num_prefix_tokens=encoder.num_prefix_tokens,
            max_step=max_step,
            settings=decoder_settings,
            **decoder_overrides,
        )
        return cls(
            encoder,
            decoder,
            masking=masking,
            mask_ratio=mask_ratio,
            mean=mean,
            std=std,
            delta_weight=delta_weight,
            freeze_encoder=freeze_encoder,
        )

    @property
    def mask_ratio(self) -> float:
        return self.masking.ratio

    @property
    def img_size(self) -> tuple[int, int]:
        return self.decoder.img_size

    @property
    def num_frames(self) -> int:
        return self.decoder.num_frames

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.decoder.patch_size

    @property
    def tubelet_size(self) -> int:
        return self.decoder.tubelet_size

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Tubelet grid ``(gt, gh, gw)``."""
        return self.decoder.grid_size

    @property
    def num_patches(self) -> int:
        """Tubelets per video."""
        return self.decoder.num_patches

    @property
    def camera(self) -> Camera:
        return self.decoder.camera

    @property
    def renderer(self) -> SplatRenderer:
        """The decoder's renderer (every frame of every video is one of its images)."""
        return self.decoder.renderer

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters AdamW leaves undecayed (the decoder's learned queries,
        and what the encoder names; :func:`~splathead.model.no_weight_decay_names`)."""
        return no_weight_decay_names(self)

    def train(self, mode: bool = True) -> VideoGMAE:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def draw_mask(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> PatchMask:
        """A fresh mask at ``mask_ratio`` with the model's masking."""
        if isinstance(self.masking, TubeMasking):
            return self.masking(batch_size, self.grid_size, device=device, generator=generator)
        return self.masking(batch_size, self.num_patches, device=device, generator=generator)

    @property
    def noise_length(self) -> int:
        """Noise values per video a mask is drawn from: ``gh * gw`` for tube masking (one
        spatial mask), ``gt * gh * gw`` for random masking."""
        if isinstance(self.masking, TubeMasking):
            return self.grid_size[1] * self.grid_size[2]
        return self.num_patches

    def mask_from_noise(self, noise: Tensor) -> PatchMask:
        """MAE's mask for ``noise [b noise_length]`` (see :attr:`noise_length`)."""
        expected = self.noise_length
        if noise.dim() != 2 or noise.shape[1] != expected:
            raise ValueError(
                f"noise must be [b {expected}] for {self.masking_name} masking over the tubelet "
                f"grid {self.grid_size}, got shape {tuple(noise.shape)}"
            )
        if isinstance(self.masking, TubeMasking):
            return self.masking.from_noise(noise, self.grid_size[0])
        return self.masking.from_noise(noise)

    @typecheck
    def encode(
        self, videos: Float[Tensor, "b t c h w"], ids_keep: Int[Tensor, "b v"] | None = None
    ) -> Float[Tensor, "b n e"]:
        """Encoder tokens ``[b prefix+v e]`` of the tubelets ``ids_keep`` (all when ``None``)."""
        self._check_videos(videos)
        return self.encoder(videos, ids_keep)

    @typecheck
    def decode(self, latent: Float[Tensor, "b n e"], ids_keep: Int[Tensor, "b v"]) -> VideoGaussians:
        return self.decoder.decode(latent, ids_keep)

    @typecheck
    def render(self, gaussians: VideoGaussians) -> Float[Tensor, "b t c h w"]:
        return self.decoder.render(gaussians)

    @typecheck
    def unnormalize(self, videos: Float[Tensor, "b t c h w"]) -> Float[Tensor, "b t c h w"]:
        """Normalised input back to [0, 1] RGB (clamped against rounding)."""
        return (videos * self.std + self.mean).clamp(0, 1)

    @typecheck
    def forward(
        self,
        videos: Float[Tensor, "b t c h w"],
        *,
        mask: PatchMask | None = None,
        noise: Float[Tensor, "b l"] | None = None,
    ) -> VideoGMAEOutput:
        """Mask, encode, decode, render every frame and score a batch of normalised videos.

        Args:
            videos: ``[b t c h w]`` normalised, ``num_frames`` frames of ``img_size``.
            mask: use this tubelet mask (it must hide at least one tubelet).
            noise: draw the mask from this noise (see :meth:`mask_from_noise`). At most one.
        """
        self._check_videos(videos)
        batch_size = videos.shape[0]
        if mask is not None and noise is not None:
            raise ValueError("give at most one of mask and noise")
        if mask is None:
            if noise is None:
                mask = self.draw_mask(batch_size, device=videos.device)
            else:
                mask = self.mask_from_noise(noise)
        if mask.batch_size != batch_size or mask.num_patches != self.num_patches:
            raise ValueError(
                f"mask is for {mask.batch_size} videos of {mask.num_patches} tubelets, expected "
                f"{batch_size} videos of {self.num_patches} tubelets (grid {self.grid_size})"
            )
        latent = self.encoder(videos, mask.ids_keep)
        gaussians = self.decode(latent, mask.ids_keep)
        image = self.render(gaussians)
        hidden = frame_patch_mask(mask.mask, self.grid_size[0], self.tubelet_size)
        loss = masked_patch_mse(
            rearrange(image, "b t c h w -> (b t) c h w"),
            rearrange(self.unnormalize(videos), "b t c h w -> (b t) c h w"),
            rearrange(hidden, "b t p -> (b t) p"),
            self.patch_size,
        )
        if self.delta_weight:
            loss = loss + self.delta_weight * gaussians.delta_penalty()
        return VideoGMAEOutput(loss=loss, image=image, gaussians=gaussians, mask=mask)

    def _check_videos(self, videos: Tensor) -> None:
        frames = videos.shape[1]
        if frames != self.num_frames:
            raise ValueError(
                f"videos have {frames} frames, but this VideoGMAE takes num_frames="
                f"{self.num_frames}"
            )
        weight = next(self.encoder.parameters(), None)
        check_pixels(
            "videos", videos, dtype=None if weight is None else weight.dtype,
            num_channels=self.mean.shape[0], size=self.img_size, model="VideoGMAE",
            finite=self.decoder.renderer.check_inputs,
        )

    def extra_repr(self) -> str:
        return (
            f"masking={self.masking_name!r}, mask_ratio={self.mask_ratio}, "
            f"delta_weight={self.delta_weight}, freeze_encoder={self.freeze_encoder}"
        )


def _check_encoder(encoder: object) -> None:
    """Raise ``TypeError`` unless ``encoder`` is a module implementing MaskedVideoEncoder."""
    if not (isinstance(encoder, nn.Module) and isinstance(encoder, MaskedVideoEncoder)):
        raise TypeError(
            f"encoder must be a MaskedVideoEncoder module (with tubelet_size), got "
            f"{type(encoder).__name__}; adapt a Hugging Face VideoMAE with splathead.wrap(model)"
        )


def _check_compatible(encoder: MaskedVideoEncoder, decoder: VideoGMAEDecoder) -> None:
    """Raise ``ValueError`` naming the first setting where ``decoder`` doesn't fit ``encoder``."""
    pairs = {
        "embed_dim / encoder_dim": (encoder.embed_dim, decoder.encoder_dim),
        "patch_size": (tuple(encoder.patch_size), decoder.patch_size),
        "tubelet_size": (encoder.tubelet_size, decoder.tubelet_size),
        "num_prefix_tokens": (encoder.num_prefix_tokens, decoder.num_prefix_tokens),
    }
    check_settings_agree(pairs)
    try:
        grid_size = tuple(encoder.grid_size(decoder.num_frames, *decoder.img_size))
    except ValueError as error:
        raise ValueError(
            f"the encoder cannot take the decoder's {decoder.num_frames} frames of "
            f"{decoder.img_size}: {error}"
        ) from error
    if grid_size != decoder.grid_size:
        raise ValueError(
            f"encoder's tubelet grid {grid_size} differs from the decoder's {decoder.grid_size}"
        )
