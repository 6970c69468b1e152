"""Differentiable splatting: `SplatRenderer` with a pure-torch and a gsplat backend."""

from splathead.render.renderer import RenderOutput, SplatRenderer

__all__ = ["RenderOutput", "SplatRenderer"]
