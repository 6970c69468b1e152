"""The Video-GMAE decoder: per-frame query sets read the visible tubelets and become one set of
Gaussians for the first frame plus, for each later frame, their displacements and colour changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn

from splathead.camera import Camera
from splathead.decoder import DecoderSettings, QueryDecoder
from splathead.head import GaussianHead, full_precision_linear
from splathead.patches import as_pair, patch_grid
from splathead.render import SplatRenderer
from splathead.typing import Float, Int, Tensor, typecheck
from splathead.video_gaussians import VideoGaussians


class VideoGMAEDecoder(nn.Module):
    """:class:`QueryDecoder` with one query set per frame, :class:`GaussianHead` for frame 0, a
    delta head for the later frames, and :class:`SplatRenderer`.

    The decoder's sequence is ``[prefix, visible tubelets + 3D position, t * num_queries
    queries]`` (each query its own learned embedding, as the authors' per-frame query sets). The
    first frame's ``num_queries`` outputs give the base Gaussians through the image GMAE's head
    (``num_queries * gaussians_per_token`` of them). Frame ``f``'s outputs give, per Gaussian, a
    step of its centre ``max_step * tanh(raw)`` (each axis, scene units) added to frame
    ``f - 1``'s centre, and a colour offset added to the base colour's logit:
    ``colour_f = sigmoid(logit_0 + offset_f)``. Scales, rotations and opacities are frame 0's in
    every frame. This is the authors' ``mean_deltas`` / ``rgb_deltas`` parameterisation (their
    step is ``5 tanh / 10`` scene units at camera distance 8 of a 90-degree view, a sixteenth of
    the half-image; ``max_step`` 1/16 is that under :meth:`Camera.gmae`). The delta head starts
    at zero, so every frame starts as frame 0.

    Args:
        encoder_dim: width of the encoder tokens.
        img_size: ``(h, w)`` (or one int) of the frames.
        num_frames: frames ``t`` per video; a multiple of ``tubelet_size``.
        patch_size: the encoder's tubelet side in pixels.
        tubelet_size: the encoder's tubelet length in frames.
        num_prefix_tokens: encoder tokens before the tubelets (0 for VideoMAE).
        max_step: bound of each centre step between consecutive frames, scene units.
        settings: the image decoder's :class:`~splathead.decoder.DecoderSettings`
            (``num_queries`` per frame); ``overrides`` change its fields by name.
    """

    def __init__(
        self,
        *,
        encoder_dim: int,
        img_size: int | Sequence[int],
        num_frames: int,
        patch_size: int | Sequence[int] = 16,
        tubelet_size: int = 2,
        num_prefix_tokens: int = 0,
        max_step: float = 1 / 16,
        settings: DecoderSettings = DecoderSettings(),
        **overrides: Any,
    ) -> None:
        super().__init__()
        settings = settings.replace(**overrides)
        self.settings = settings
        if tubelet_size < 1 or num_frames < 1 or num_frames % tubelet_size:
            raise ValueError(
                f"num_frames must be a positive multiple of tubelet_size, got "
                f"num_frames={num_frames}, tubelet_size={tubelet_size}"
            )
        if not max_step > 0:
            raise ValueError(f"max_step must be > 0, got {max_step}")
        self.img_size = as_pair("img_size", img_size)
        self.patch_size = as_pair("patch_size", patch_size)
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.max_step = max_step
        self.grid_size = (
            num_frames // tubelet_size,
            *patch_grid(*self.img_size, self.patch_size),
        )
        self.num_queries = settings.num_queries
        self.query_decoder = QueryDecoder(
            encoder_dim,
            grid_size=self.grid_size,
            num_prefix_tokens=num_prefix_tokens,
            dim=settings.dim,
            depth=settings.depth,
            num_heads=settings.num_heads,
            mlp_ratio=settings.mlp_ratio,
            norm_eps=settings.norm_eps,
            num_queries=num_frames * settings.num_queries,
        )
        self.head = GaussianHead(
            settings.dim,
            num_channels=settings.num_channels,
            max_scale=settings.max_scale,
            center_range=settings.center_range,
            rotation=settings.rotation,
            gaussians_per_token=settings.gaussians_per_token,
        )
        # Per Gaussian: 3 centre steps, then one offset per colour channel.
        self.delta_head = nn.Linear(
            settings.dim, settings.gaussians_per_token * (3 + settings.num_channels), bias=False
        )
        nn.init.zeros_(self.delta_head.weight)
        self.renderer = SplatRenderer(
            Camera.gmae(*self.img_size), backend=settings.backend, background=settings.background
        )

    @property
    def num_gaussians(self) -> int:
        """Gaussians per video: ``num_queries * gaussians_per_token``, the same ones each frame."""
        return self.num_queries * self.head.gaussians_per_token

    @property
    def encoder_dim(self) -> int:
        return self.query_decoder.encoder_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.query_decoder.num_prefix_tokens

    @property
    def num_patches(self) -> int:
        """Tubelets per video, ``gt * gh * gw``."""
        return self.query_decoder.num_patches

    @property
    def camera(self) -> Camera:
        return self.renderer.camera

    @typecheck
    def decode(
        self, latent: Float[Tensor, "b n e"], ids_keep: Int[Tensor, "b v"]
    ) -> VideoGaussians:
        """Gaussians over the frames from the encoder tokens ``[b prefix+v e]`` of the visible
        tubelets ``ids_keep``."""
        tokens = rearrange(
            self.query_decoder(latent, ids_keep), "b (t q) d -> b t q d", t=self.num_frames
        )
        raw = self.head.project(tokens[:, 0])
        base = self.head.activate(raw)
        deltas = rearrange(
            full_precision_linear(tokens[:, 1:], self.delta_head.weight),
            "b t q (m p) -> b t (q m) p",
            m=self.head.gaussians_per_token,
        )
        steps, offsets = deltas.split([3, self.head.num_channels], dim=-1)
        steps = self.max_step * torch.tanh(steps)
        means = base.means.unsqueeze(1) + torch.cat(
            [torch.zeros_like(base.means).unsqueeze(1), steps.cumsum(dim=1)], dim=1
        )
        later_colors = torch.sigmoid(self.head.color_logits(raw).unsqueeze(1) + offsets)
        colors = torch.cat([base.colors.unsqueeze(1), later_colors], dim=1)
        return VideoGaussians(
            means=means,
            colors=colors,
            scales=base.scales,
            quats=base.quats,
            opacities=base.opacities,
        )

    @typecheck
    def render(self, gaussians: VideoGaussians) -> Float[Tensor, "b t c h w"]:
        """Every frame of every video in one renderer call (``b * t`` images)."""
        images = self.renderer(gaussians.flatten()).image
        return rearrange(images, "(b t) c h w -> b t c h w", b=gaussians.batch_size)

    def extra_repr(self) -> str:
        return (
            f"img_size={self.img_size}, num_frames={self.num_frames}, "
            f"tubelet_size={self.tubelet_size}, max_step={self.max_step}"
        )
