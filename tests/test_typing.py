import pytest
import torch
from jaxtyping import TypeCheckError

from splathead.gaussians import Gaussians
from splathead.typing import Float, Tensor, typecheck


@typecheck
def _pair(points: Float[Tensor, "b n 3"], weights: Float[Tensor, "b n"]) -> Float[Tensor, "b"]:
    return (points.sum(-1) * weights).sum(-1)


def test_wrong_shape_names_argument_and_both_shapes():
    with pytest.raises(TypeCheckError) as error:
        _pair(torch.zeros(2, 5, 3), torch.zeros(2, 4))
    message = str(error.value)
    assert "parameter 'weights'" in message
    assert "f32[2,4]" in message  # the actual shape
    assert "Float[Tensor, 'b n']" in message  # the expected annotation
    assert "n=5" in message  # the size bound by the earlier argument


def test_wrong_dtype_is_rejected():
    with pytest.raises(TypeCheckError, match="parameter 'points'"):
        _pair(torch.zeros(2, 5, 3, dtype=torch.long), torch.zeros(2, 5))


def test_gaussians_fields_must_agree_on_n():
    with pytest.raises(TypeCheckError, match="parameter 'opacities'"):
        Gaussians(
            means=torch.zeros(1, 3, 3),
            scales=torch.zeros(1, 3, 3),
            quats=torch.zeros(1, 3, 4),
            colors=torch.zeros(1, 3, 3),
            opacities=torch.zeros(1, 2),
        )
