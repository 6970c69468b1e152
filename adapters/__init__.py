"""Backbone adapters: timm and Hugging Face ViTs as `MaskedEncoder`s (``splathead.adapters``)."""

from splathead.adapters.base import MaskedEncoder

__all__ = ["MaskedEncoder"]
