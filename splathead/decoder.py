"""The GMAE decoder: learned queries read the visible tokens and become Gaussians."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, NamedTuple

import torch
from beartype.door import is_bearable
from einops import repeat
from timm.models.vision_transformer import Block
from torch import nn

from splathead.camera import Camera, Footprint
from splathead.gaussians import Gaussians
from splathead.head import GaussianHead, HeadInit, Rotation
from splathead.initialization import init_like_mae
from splathead.masking import PatchMask
from splathead.patches import as_pair, patch_grid
from splathead.pos_embed import sincos_pos_embed_2d, sincos_pos_embed_3d
from splathead.render import BackendName, SplatRenderer
from splathead.typing import Float, Int, Tensor, typecheck


class QueryDecoder(nn.Module):
    """Transformer over ``[prefix, visible + position, queries]``; returns the query outputs.

    The visible encoder tokens are projected to ``dim`` and get the fixed sin-cos position of
    their patch (MAE's 2D layout, :func:`sincos_pos_embed_2d`; MAE-ST's 3D one,
    :func:`sincos_pos_embed_3d`, for a tubelet grid); prefix tokens (cls, registers) get none,
    as MAE's zero cls row. Each of the ``num_queries`` queries is one shared learned token
    (normal, std 0.02) plus its own learned embedding, uniform in [0, 1) as in the authors' code
    (``torch.rand``): the queries, and so the Gaussians, start spread out rather than all alike.
    Unlike MAE there are no mask tokens:
    the decoder's length is ``prefix + visible + num_queries`` whatever the mask. Blocks are
    timm's ViT ``Block`` with MAE's settings (qkv bias, LayerNorm eps 1e-6 unless ``norm_eps``
    says otherwise) and MAE's init.

    Args:
        encoder_dim: width ``e`` of the encoder tokens.
        grid_size: patch grid ``(gh, gw)`` of the encoder, or ``(gt, gh, gw)`` for a video
            encoder's tubelets (indices then run time slowest); need not be square.
        num_prefix_tokens: encoder tokens before the patches (0 for none).
        dim: width of the decoder transformer (paper: 512).
        depth: its number of blocks (paper: 8).
        num_heads: its attention heads (paper: 16).
        mlp_ratio: its MLP width over ``dim`` (paper: 4).
        num_queries: number ``q`` of query tokens, one Gaussian each (paper: 256).
        norm_eps: ``eps`` of the blocks' and the final LayerNorm (MAE's models: 1e-6).
    """

    def __init__(
        self,
        encoder_dim: int,
        *,
        grid_size: tuple[int, int] | tuple[int, int, int],
        num_prefix_tokens: int = 1,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_queries: int = 256,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        if num_queries < 1 or depth < 0:
            raise ValueError(f"need num_queries >= 1 and depth >= 0, got {num_queries}, {depth}")
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.encoder_dim = encoder_dim
        self.grid_size = tuple(grid_size)
        self.num_patches = math.prod(self.grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.dim = dim
        self.num_queries = num_queries

        self.embed = nn.Linear(encoder_dim, dim)
        # Fixed, so a buffer; not saved, since it is a function of the grid.
        pos_embed = sincos_pos_embed_2d if len(self.grid_size) == 2 else sincos_pos_embed_3d
        self.register_buffer("pos_embed", pos_embed(dim, self.grid_size), persistent=False)
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.query_embed = nn.Parameter(torch.zeros(1, num_queries, dim))
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.Sequential(
            *[
                Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(depth)
            ]
        )
        self.norm = norm_layer(dim)

        nn.init.normal_(self.query_token, std=0.02)
        nn.init.uniform_(self.query_embed, 0.0, 1.0)
        self.embed.apply(init_like_mae)
        self.blocks.apply(init_like_mae)
        self.norm.apply(init_like_mae)

    def no_weight_decay(self) -> set[str]:
        """The learned query token and embeddings, which AdamW leaves undecayed (timm's protocol)."""
        return {"query_token", "query_embed"}

    @typecheck
    def forward(
        self, latent: Float[Tensor, "b t e"], ids_keep: Int[Tensor, "b v"]
    ) -> Float[Tensor, "b q dim"]:
        """Query outputs ``[b num_queries dim]``.

        Args:
            latent: encoder output ``[b prefix+v e]``, prefix tokens first.
            ids_keep: row-major patch index of each of the ``v`` visible tokens, in
                ``[0, num_patches)``.
        """
        batch, num_tokens, width = latent.shape
        num_visible = ids_keep.shape[1]
        if width != self.encoder_dim:
            raise ValueError(
                f"latent has width {width}, expected encoder_dim={self.encoder_dim}"
            )
        if num_tokens != self.num_prefix_tokens + num_visible:
            raise ValueError(
                f"latent has {num_tokens} tokens but num_prefix_tokens={self.num_prefix_tokens} "
                f"+ ids_keep's {num_visible} visible patches = "
                f"{self.num_prefix_tokens + num_visible}"
            )
        if num_visible > self.num_patches:
            raise ValueError(
                f"ids_keep has {num_visible} entries, more than the grid's "
                f"{self.num_patches} patches"
            )
        tokens = self.embed(latent)
        prefix, visible = tokens.split([self.num_prefix_tokens, num_visible], dim=1)
        visible = visible + self.pos_embed[ids_keep]
        queries = repeat(self.query_token + self.query_embed, "1 q d -> b q d", b=batch)
        sequence = torch.cat([prefix, visible, queries], dim=1)
        sequence = self.norm(self.blocks(sequence))
        return sequence[:, -self.num_queries :]

    def extra_repr(self) -> str:
        return (
            f"encoder_dim={self.encoder_dim}, grid_size={self.grid_size}, "
            f"num_prefix_tokens={self.num_prefix_tokens}, num_queries={self.num_queries}"
        )


@dataclass(frozen=True)
class DecoderSettings:
    """Every setting of the GMAE decoder, in one place; the defaults are the paper's (ViT-B/16).

    :class:`GMAEDecoder` takes one (and keyword overrides of its fields), the factories and
    :meth:`~splathead.model.GMAE.from_encoder` pass one on, and ``model.decoder.settings`` says
    what a decoder was built with. Plain values only: ``dataclasses.asdict(settings)`` is
    JSON-able and :meth:`from_dict` reads it back.

    Attributes:
        dim: decoder width, see :class:`QueryDecoder` (paper: 512).
        depth: decoder blocks, see :class:`QueryDecoder` (paper: 8).
        num_heads: decoder attention heads, see :class:`QueryDecoder` (paper: 16).
        mlp_ratio: decoder MLP ratio, see :class:`QueryDecoder` (paper: 4).
        num_queries: query tokens, see :class:`QueryDecoder` (paper: 256).
        norm_eps: the decoder's LayerNorm ``eps``, see :class:`QueryDecoder` (MAE: 1e-6).
        gaussians_per_token: ``m`` Gaussians per query (:class:`GaussianHead`): the decoder's
            sequence (and cost) stays, the render's cost grows with ``m``.
        num_channels: colour channels of the Gaussians, see :class:`GaussianHead`.
        max_scale: largest standard deviation, scene units, see :class:`GaussianHead`.
        center_range: range of the centres, see :class:`GaussianHead`.
        rotation: the rotation parameterisation, see :class:`GaussianHead`.
        background: render background, one value or one per channel, see
            :class:`SplatRenderer` (white, as in the paper).
        backend: render backend, "auto" (gsplat on CUDA when installed), "torch" or "gsplat".
        footprint: the camera's footprints (:meth:`Camera.gmae`): "ortho", independent of depth,
            or "authors", sized by depth as in the GMAE authors' renderer (torch backend only).
        head_init: the head's initial weight, see :class:`GaussianHead`: "xavier" (MAE's
            decoder) or "torch" (PyTorch's default, the GMAE authors').
    """

    dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_queries: int = 256
    norm_eps: float = 1e-6
    gaussians_per_token: int = 1
    num_channels: int = 3
    max_scale: float = 1 / 8
    center_range: float = 1.0
    rotation: Rotation = "shoemake"
    background: float | tuple[float, ...] = 1.0
    backend: BackendName = "auto"
    footprint: Footprint = "ortho"
    head_init: HeadInit = "xavier"

    def __post_init__(self) -> None:
        # Whole numbers stand for floats, a background sequence or tensor becomes plain floats;
        # then every field must have its annotated type.
        for name in ("mlp_ratio", "norm_eps", "max_scale", "center_range"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        if isinstance(self.background, (int, Sequence, Tensor)) and not isinstance(
            self.background, (bool, str)
        ):
            values = torch.as_tensor(self.background, dtype=torch.float64)
            object.__setattr__(
                self, "background", tuple(values.tolist()) if values.dim() else values.item()
            )
        hints = typing.get_type_hints(DecoderSettings)
        for spec in fields(self):
            if not is_bearable(getattr(self, spec.name), hints[spec.name]):
                raise TypeError(
                    f"DecoderSettings.{spec.name} must be {hints[spec.name]}, got "
                    f"{getattr(self, spec.name)!r}"
                )

    @property
    def num_gaussians(self) -> int:
        """Gaussians per image: ``num_queries * gaussians_per_token``."""
        return self.num_queries * self.gaussians_per_token

    def replace(self, **changes: Any) -> DecoderSettings:
        """These settings with ``changes``; a ``TypeError`` names any that is not a setting."""
        names = [spec.name for spec in fields(self)]
        if unknown := sorted(changes.keys() - set(names)):
            raise TypeError(f"{unknown} are not decoder settings; DecoderSettings has {names}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderSettings:
        """Settings from their ``dataclasses.asdict`` / JSON form."""
        return cls().replace(**data)


class DecoderOutput(NamedTuple):
    """What :class:`GMAEDecoder` returns."""

    image: Float[Tensor, "b c h w"]
    """The render, in [0, 1] for colours in [0, 1] on a background in [0, 1]."""
    gaussians: Gaussians
    """``num_queries * gaussians_per_token`` Gaussians per image, in the GMAE camera's scene
    coordinates, the Gaussians of one query consecutive."""


class GMAEDecoder(nn.Module):
    """The whole GMAE decoder: :class:`QueryDecoder`, :class:`GaussianHead`, :class:`SplatRenderer`.

    A drop-in for the decoder of an MAE codebase: ``decoder(latent, ids_restore)`` takes what
    MAE's ``forward_encoder`` returns (``latent [b prefix+k e]``, ``ids_restore [b l]``) and
    renders ``[b c h w]`` images with :meth:`Camera.gmae` on a white background. Defaults are the
    paper's (ViT-B/16): a 512-wide, 8-block, 16-head decoder, 256 Gaussians (one per query),
    ``max_scale`` 1/8.
    The stable parts: :meth:`decode` (tokens to Gaussians) and :meth:`render`.

    Args:
        encoder_dim: width ``e`` of the encoder tokens.
        img_size: ``(h, w)`` (or one int) of the images; fixes the camera and the patch grid.
        patch_size: encoder patch size ``(ph, pw)`` (or one int); must divide ``img_size``.
        num_prefix_tokens: encoder tokens before the patches (cls, registers).
        settings: the decoder's :class:`DecoderSettings` (the paper's by default).
        overrides: fields of ``settings`` to change, by name (e.g. ``dim=64, backend="torch"``).
    """

    def __init__(
        self,
        *,
        encoder_dim: int,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        num_prefix_tokens: int = 1,
        settings: DecoderSettings = DecoderSettings(),
        **overrides: Any,
    ) -> None:
        super().__init__()
        settings = settings.replace(**overrides)
        self.settings = settings
        self.img_size = as_pair("img_size", img_size)
        self.patch_size = as_pair("patch_size", patch_size)
        height, width = self.img_size
        self.grid_size = patch_grid(height, width, self.patch_size)
        self.query_decoder = QueryDecoder(
            encoder_dim,
            grid_size=self.grid_size,
            num_prefix_tokens=num_prefix_tokens,
            dim=settings.dim,
            depth=settings.depth,
            num_heads=settings.num_heads,
            mlp_ratio=settings.mlp_ratio,
            num_queries=settings.num_queries,
            norm_eps=settings.norm_eps,
        )
        self.head = GaussianHead(
            settings.dim,
            num_channels=settings.num_channels,
            max_scale=settings.max_scale,
            center_range=settings.center_range,
            rotation=settings.rotation,
            gaussians_per_token=settings.gaussians_per_token,
            init=settings.head_init,
        )
        self.renderer = SplatRenderer(
            Camera.gmae(height, width, footprint=settings.footprint),
            backend=settings.backend,
            background=settings.background,
        )

    @property
    def num_gaussians(self) -> int:
        """Gaussians per image: ``num_queries * gaussians_per_token``."""
        return self.query_decoder.num_queries * self.head.gaussians_per_token

    @property
    def encoder_dim(self) -> int:
        return self.query_decoder.encoder_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.query_decoder.num_prefix_tokens

    @property
    def num_patches(self) -> int:
        return self.query_decoder.num_patches

    @property
    def camera(self) -> Camera:
        """The camera the Gaussians are rendered with (:meth:`Camera.gmae` for ``img_size``)."""
        return self.renderer.camera

    @typecheck
    def decode(self, latent: Float[Tensor, "b t e"], ids_keep: Int[Tensor, "b v"]) -> Gaussians:
        """Gaussians from the encoder's tokens ``[b prefix+v e]`` of the patches ``ids_keep``."""
        return self.head(self.query_decoder(latent, ids_keep))

    @typecheck
    def render(self, gaussians: Gaussians) -> Float[Tensor, "b c h w"]:
        """The image of ``gaussians`` under the GMAE camera, on the decoder's background."""
        return self.renderer(gaussians).image

    @typecheck
    def forward(
        self,
        latent: Float[Tensor, "b t e"],
        ids_restore: Int[Tensor, "b l"] | None = None,
        *,
        ids_keep: Int[Tensor, "b v"] | None = None,
    ) -> DecoderOutput:
        """Decode and render; give exactly one of ``ids_restore`` (MAE) or ``ids_keep``.

        Args:
            latent: encoder output ``[b prefix+v e]``, prefix tokens first.
            ids_restore: MAE's ``ids_restore [b l]``; the visible patches are the first ``v``
                of its inverse permutation (MAE's ``ids_shuffle``).
            ids_keep: row-major index of each visible patch ``[b v]``, as
                :class:`splathead.masking.PatchMask` holds it.
        """
        if (ids_restore is None) == (ids_keep is None):
            raise ValueError("give exactly one of ids_restore (MAE's) or ids_keep")
        if ids_restore is not None:
            if ids_restore.shape[1] != self.num_patches:
                raise ValueError(
                    f"ids_restore has {ids_restore.shape[1]} columns, expected one per patch "
                    f"({self.num_patches} for grid {self.grid_size}); pass visible patch "
                    "indices as ids_keep=..."
                )
            num_visible = latent.shape[1] - self.num_prefix_tokens
            ids_keep = PatchMask.from_ids_restore(ids_restore, num_visible).ids_keep
        gaussians = self.decode(latent, ids_keep)
        return DecoderOutput(image=self.render(gaussians), gaussians=gaussians)
