"""`host_scalars`: several 0-dim tensors (check flags, counts) read with one device sync."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splathead.typing import Tensor

__all__ = ["host_scalars"]


def host_scalars(scalars: Mapping[str, Tensor]) -> dict[str, bool | int | float]:
    """``{name: value}`` of 0-dim tensors, fetched together: one ``tolist``, so one
    device-to-host sync however many checks an input gets. Dtypes are promoted together
    (bool < int < float), so a flag may come back as ``1`` or ``1.0``: test its truth."""
    values = torch.stack([value.reshape(()) for value in scalars.values()]).tolist()
    return dict(zip(scalars, values))
