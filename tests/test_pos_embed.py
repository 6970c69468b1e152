import numpy as np
import pytest
import torch

from splathead.pos_embed import sincos_pos_embed_2d, sincos_pos_embed_3d


def mae_sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE's get_1d_sincos_pos_embed_from_grid: [sin | cos] of positions times 1/10000^(i/(d/2))."""
    omega = np.arange(embed_dim // 2, dtype=np.float32) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def mae_sincos_2d(embed_dim: int, grid_h: int, grid_w: int, cls_token: bool) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed, with the square grid generalised to (grid_h, grid_w)."""
    grid = np.meshgrid(
        np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32)
    )  # w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_h, grid_w])
    table = np.concatenate(
        [mae_sincos_1d(embed_dim // 2, grid[0]), mae_sincos_1d(embed_dim // 2, grid[1])], axis=1
    )
    if cls_token:
        table = np.concatenate([np.zeros([1, embed_dim]), table], axis=0)
    return table


@pytest.mark.parametrize("grid", [(14, 14), (4, 4), (3, 7), (9, 2), (1, 5)])
@pytest.mark.parametrize("cls_token", [False, True])
def test_table_equals_maes_definition(grid, cls_token):
    ours = sincos_pos_embed_2d(64, grid, num_prefix_tokens=int(cls_token))
    reference = torch.from_numpy(mae_sincos_2d(64, *grid, cls_token)).float()
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)


def test_table_equals_maes_definition_at_paper_size():
    ours = sincos_pos_embed_2d(512, (14, 14), num_prefix_tokens=1)
    reference = torch.from_numpy(mae_sincos_2d(512, 14, 14, cls_token=True)).float()
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)


def test_first_half_encodes_the_column_and_second_half_the_row():
    table = sincos_pos_embed_2d(16, (3, 5)).reshape(3, 5, 16)
    column_half, row_half = table[..., :8], table[..., 8:]
    assert torch.equal(column_half, column_half[:1].expand(3, -1, -1))  # same in every row
    assert torch.equal(row_half, row_half[:, :1].expand(-1, 5, -1))  # same in every column
    assert not torch.equal(column_half[:, 0], column_half[:, 1])


def test_prefix_rows_are_zero_and_patches_follow():
    table = sincos_pos_embed_2d(16, (2, 3), num_prefix_tokens=5)
    assert table.shape == (5 + 6, 16)
    assert torch.count_nonzero(table[:5]) == 0
    torch.testing.assert_close(table[5:], sincos_pos_embed_2d(16, (2, 3)))


@pytest.mark.parametrize("embed_dim", [0, 6, 30])
def test_embed_dim_must_be_a_multiple_of_4(embed_dim):
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed_2d(embed_dim, (2, 2))


def mae_st_sincos_3d(embed_dim: int, grid_t: int, grid_h: int, grid_w: int) -> np.ndarray:
    """MAE-ST's get_3d_sincos_pos_embed, with the square grid generalised to (grid_h, grid_w):
    [time (d/4) | 2D patch position (3d/4)], time slowest."""
    spatial = mae_sincos_2d(embed_dim // 4 * 3, grid_h, grid_w, cls_token=False)
    temporal = mae_sincos_1d(embed_dim // 4, np.arange(grid_t, dtype=np.float32))
    temporal = np.repeat(temporal[:, None], grid_h * grid_w, axis=1)
    spatial = np.repeat(spatial[None], grid_t, axis=0)
    return np.concatenate([temporal, spatial], axis=-1).reshape(-1, embed_dim)


@pytest.mark.parametrize("grid", [(8, 14, 14), (2, 4, 4), (3, 2, 5), (1, 3, 3)])
def test_3d_table_equals_mae_st_definition(grid):
    ours = sincos_pos_embed_3d(64, grid)
    reference = torch.from_numpy(mae_st_sincos_3d(64, *grid)).float()
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)


def test_3d_table_at_the_video_decoder_width():
    ours = sincos_pos_embed_3d(512, (16, 14, 14))
    reference = torch.from_numpy(mae_st_sincos_3d(512, 16, 14, 14)).float()
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)


@pytest.mark.parametrize("embed_dim", [0, 8, 24])
def test_3d_embed_dim_must_be_a_multiple_of_16(embed_dim):
    with pytest.raises(ValueError, match="multiple of 16"):
        sincos_pos_embed_3d(embed_dim, (2, 3, 3))
