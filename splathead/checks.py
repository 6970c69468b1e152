"""Argument checks shared by the library: each raises naming the argument, what it holds and
what is expected; `host_scalars` reads several 0-dim tensors (check flags, counts) in one sync;
`check_pixels` checks a model's input images or frames; `check_settings_agree` compares an
encoder with the decoder built for it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from splathead.typing import Tensor

__all__ = [
    "check_pixels", "check_settings_agree", "host_scalars", "require_finite", "require_positive_finite",
    "require_positive_int",
]


def host_scalars(scalars: Mapping[str, Tensor]) -> dict[str, bool | int | float]:
    """``{name: value}`` of 0-dim tensors, fetched together: one ``tolist``, so one
    device-to-host sync however many checks an input gets. Dtypes are promoted together
    (bool < int < float), so a flag may come back as ``1`` or ``1.0``: test its truth."""
    values = torch.stack([value.reshape(()) for value in scalars.values()]).tolist()
    return dict(zip(scalars, values))


def require_positive_int(owner: str, **values: object) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the first of ``values`` that is not an
    integer >= 1 (``bool`` is refused: ``True`` is no count). ``owner`` names the caller."""
    for name, value in values.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"{owner}: {name} must be an int >= 1, got {name}={value!r} "
                            f"({type(value).__name__})")
        if value < 1:
            raise ValueError(f"{owner}: {name} must be an int >= 1, got {name}={value!r}")


def require_positive_finite(owner: str, **values: object) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the first of ``values`` that is not a finite
    real number > 0. ``owner`` names the caller."""
    for name, value in values.items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{owner}: {name} must be a finite number > 0, got {name}={value!r} "
                            f"({type(value).__name__})")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{owner}: {name} must be a finite number > 0, got {name}={value!r}")


def require_finite(**tensors: Tensor) -> None:
    """Raise ``ValueError`` naming the first tensor that holds NaN or Inf, with how many of its
    values do (one device-to-host sync for all)."""
    bad = host_scalars({name: (~torch.isfinite(t)).sum() for name, t in tensors.items()})
    for name, count in bad.items():
        if count:
            raise ValueError(f"{name} holds NaN or Inf ({int(count)} of "
                             f"{tensors[name].numel()} values); expected finite values")


def check_pixels(
    name: str,
    pixels: Tensor,
    *,
    dtype: torch.dtype | None,
    num_channels: int,
    size: tuple[int, int],
    model: str,
    finite: bool,
) -> None:
    """Check a model's input ``pixels [... c h w]`` (images or frames) named ``name``: the
    ``dtype`` of the encoder's weights (``TypeError``; ``None``: any), ``num_channels``, the
    ``size`` ``(h, w)`` that ``model`` renders and, when ``finite``, no NaN or Inf (one sync;
    checked here rather than left to the render: NaN in a hidden patch reaches only the loss
    target)."""
    if dtype is not None and pixels.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {pixels.dtype}, expected {dtype} (the encoder's weights): pass "
            f"{name}.to({dtype}); for mixed precision keep both in float32 and run under "
            "torch.autocast"
        )
    channels, height, width = pixels.shape[-3:]
    if channels != num_channels:
        raise ValueError(f"{name} has {channels} channels, expected {num_channels} (len(mean))")
    if (height, width) != tuple(size):
        raise ValueError(
            f"{name} are {height}x{width} pixels, but this {model} renders {size[0]}x{size[1]} "
            "(the decoder's img_size)"
        )
    if finite:
        require_finite(**{name: pixels})


def check_settings_agree(settings: Mapping[str, tuple[object, object]]) -> None:
    """Raise ``ValueError`` naming the first ``{name: (encoder's, decoder's)}`` pair that differs."""
    for name, (encoder_value, decoder_value) in settings.items():
        if encoder_value != decoder_value:
            raise ValueError(
                f"encoder and decoder disagree on {name}: encoder {encoder_value}, "
                f"decoder {decoder_value}"
            )
