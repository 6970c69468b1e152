"""Typed contracts: jaxtyping shape annotations checked at run time by beartype.

Every public function and ``forward`` in splathead is decorated with :func:`typecheck`, so a
wrong shape or dtype fails at the call with a message that names the argument, the expected
annotation and the actual shape, e.g.::

    @typecheck
    def render(means: Float[Tensor, "b n 3"]) -> Float[Tensor, "b 3 h w"]: ...

Set ``SPLATHEAD_TYPECHECK=0`` in the environment to turn the checks off (before import).
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from beartype import beartype
from jaxtyping import Bool, Float, Int, Integer, Real, Shaped, jaxtyped
from torch import Tensor

__all__ = ["Bool", "Float", "Int", "Integer", "Real", "Shaped", "Tensor", "typecheck"]

_F = TypeVar("_F", bound=Callable)

_ENABLED = os.environ.get("SPLATHEAD_TYPECHECK", "1") != "0"


def typecheck(fn: _F) -> _F:
    """Check ``fn``'s jaxtyping annotations with beartype on every call (a no-op when disabled)."""
    if not _ENABLED:
        return fn
    return jaxtyped(typechecker=beartype)(fn)
