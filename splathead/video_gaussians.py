"""`VideoGaussians`: one set of Gaussians per video that moves and changes colour over its frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat

from splathead.gaussians import Gaussians
from splathead.typing import Float, Tensor, typecheck


@typecheck
@dataclass(frozen=True)
class VideoGaussians:
    """``n`` Gaussians for each of ``b`` videos over ``t`` frames, Gaussian ``i`` the same one in
    every frame (so its path across frames is a track).

    Attributes:
        means: ``[b t n 3]`` centres in each frame (scene coordinates).
        colors: ``[b t n c]`` colours (or feature channels) in each frame.
        scales: ``[b n 3]``, quats: ``[b n 4]``, opacities: ``[b n]``: shared by all frames (the
            Video-GMAE authors move and recolour Gaussians; shape and opacity stay frame 0's).

    Frame ``f``'s Gaussians are :meth:`frame`; :meth:`displacements` gives each Gaussian's motion
    between frames, e.g. to render as a flow field (``frame(f).replace(colors=...)``).
    """

    means: Float[Tensor, "b t n 3"]
    colors: Float[Tensor, "b t n c"]
    scales: Float[Tensor, "b n 3"]
    quats: Float[Tensor, "b n 4"]
    opacities: Float[Tensor, "b n"]

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_frames(self) -> int:
        return self.means.shape[1]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[2]

    def frame(self, index: int) -> Gaussians:
        """Frame ``index``'s Gaussians ``[b n]``."""
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range for {self.num_frames} frames")
        return Gaussians(
            means=self.means[:, index],
            scales=self.scales,
            quats=self.quats,
            colors=self.colors[:, index],
            opacities=self.opacities,
        )

    def flatten(self) -> Gaussians:
        """Every frame as one batch of ``b * t`` Gaussian sets, video by video (``(b t)``): what
        a single renderer call takes."""
        frames = self.num_frames
        return Gaussians(
            means=rearrange(self.means, "b t n d -> (b t) n d"),
            scales=repeat(self.scales, "b n d -> (b t) n d", t=frames),
            quats=repeat(self.quats, "b n d -> (b t) n d", t=frames),
            colors=rearrange(self.colors, "b t n c -> (b t) n c"),
            opacities=repeat(self.opacities, "b n -> (b t) n", t=frames),
        )

    @typecheck
    def displacements(self, reference: int = 0) -> Float[Tensor, "b t n 3"]:
        """Each Gaussian's centre in every frame minus its centre in frame ``reference``."""
        return self.means - self.means[:, reference].unsqueeze(1)

    def detach(self) -> VideoGaussians:
        return VideoGaussians(
            **{name: getattr(self, name).detach() for name in self.__dataclass_fields__}
        )

    def __getitem__(self, index: int | slice) -> VideoGaussians:
        """Select videos of the batch (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return VideoGaussians(
            **{name: getattr(self, name)[index] for name in self.__dataclass_fields__}
        )

    def delta_penalty(self) -> Float[Tensor, ""]:
        """Mean squared frame-to-frame step of the centres plus mean squared colour change from
        frame 0 (per Gaussian and frame after the first, summed over channels); 0 for one frame."""
        if self.num_frames == 1:
            return self.means.new_zeros(())
        steps = self.means.diff(dim=1).square().sum(-1).mean()
        recolor = (self.colors[:, 1:] - self.colors[:, :1]).square().sum(-1).mean()
        return steps + recolor
