import pytest
import torch

from splathead.decoder import DecoderOutput, GMAEDecoder, QueryDecoder
from splathead.gaussians import Gaussians
from splathead.masking import RandomMasking
from splathead.pos_embed import sincos_pos_embed_2d

ENCODER_DIM = 24


def small_query_decoder(grid_size=(3, 5), num_prefix_tokens=1, num_queries=6) -> QueryDecoder:
    torch.manual_seed(0)
    return QueryDecoder(
        ENCODER_DIM,
        grid_size=grid_size,
        num_prefix_tokens=num_prefix_tokens,
        dim=32,
        depth=2,
        num_heads=4,
        num_queries=num_queries,
    ).eval()


def small_gmae_decoder(img_size=(16, 24), patch_size=8) -> GMAEDecoder:
    torch.manual_seed(0)
    return GMAEDecoder(
        encoder_dim=ENCODER_DIM,
        img_size=img_size,
        patch_size=patch_size,
        dim=32,
        depth=1,
        num_heads=4,
        num_queries=8,
        backend="torch",
    ).eval()


def visible_inputs(num_prefix_tokens, num_patches, ratio=0.6, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    patch_mask = RandomMasking(ratio)(batch, num_patches, generator=generator)
    num_tokens = num_prefix_tokens + patch_mask.num_kept
    latent = torch.randn(batch, num_tokens, ENCODER_DIM, generator=generator)
    return latent, patch_mask


def decoder_input(decoder: torch.nn.Module) -> list[torch.Tensor]:
    """Capture the sequence entering the transformer blocks on the next call."""
    captured = []
    decoder.blocks.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    return captured


@pytest.mark.parametrize("grid_size", [(4, 4), (3, 5), (6, 2)])
@pytest.mark.parametrize("num_prefix_tokens", [0, 1, 5])
def test_query_decoder_returns_one_output_per_query(grid_size, num_prefix_tokens):
    decoder = small_query_decoder(grid_size, num_prefix_tokens, num_queries=6)
    latent, patch_mask = visible_inputs(num_prefix_tokens, grid_size[0] * grid_size[1])
    assert decoder(latent, patch_mask.ids_keep).shape == (2, 6, 32)


def test_sequence_is_prefix_then_positioned_visible_tokens_then_queries():
    decoder = small_query_decoder(num_prefix_tokens=2)
    latent, patch_mask = visible_inputs(2, 15)
    captured = decoder_input(decoder)
    decoder(latent, patch_mask.ids_keep)
    sequence = captured[0]
    projected = decoder.embed(latent)
    positions = sincos_pos_embed_2d(32, (3, 5))[patch_mask.ids_keep]
    num_visible = patch_mask.num_kept
    assert sequence.shape == (2, 2 + num_visible + 6, 32)
    torch.testing.assert_close(sequence[:, :2], projected[:, :2])  # prefix: no position
    torch.testing.assert_close(sequence[:, 2 : 2 + num_visible], projected[:, 2:] + positions)
    queries = (decoder.query_token + decoder.query_embed).expand(2, -1, -1)
    torch.testing.assert_close(sequence[:, 2 + num_visible :], queries)


def test_query_outputs_do_not_depend_on_the_order_of_visible_tokens():
    decoder = small_query_decoder()
    latent, patch_mask = visible_inputs(1, 15)
    permutation = torch.randperm(patch_mask.num_kept, generator=torch.Generator().manual_seed(3))
    permuted_latent = torch.cat([latent[:, :1], latent[:, 1:][:, permutation]], dim=1)
    permuted_ids = patch_mask.ids_keep[:, permutation]
    torch.testing.assert_close(
        decoder(permuted_latent, permuted_ids), decoder(latent, patch_mask.ids_keep)
    )


def test_query_outputs_depend_on_which_patches_are_visible():
    decoder = small_query_decoder()
    latent, patch_mask = visible_inputs(1, 15)
    shifted_ids = (patch_mask.ids_keep + 1) % 15
    assert not torch.allclose(decoder(latent, shifted_ids), decoder(latent, patch_mask.ids_keep))


def test_queries_start_as_shared_normal_token_plus_own_uniform_embedding():
    """The authors' init: shared token N(0, 0.02), per-query embedding uniform [0, 1)."""
    decoder = QueryDecoder(ENCODER_DIM, grid_size=(14, 14), dim=512, depth=0, num_heads=16)
    token, embed = decoder.query_token, decoder.query_embed
    assert token.shape == (1, 1, 512)
    assert embed.shape == (1, 256, 512)
    assert token.requires_grad and embed.requires_grad
    assert 0.015 < token.std().item() < 0.025
    assert 0.0 <= embed.min().item() and embed.max().item() < 1.0
    assert abs(embed.mean().item() - 0.5) < 0.01
    assert abs(embed.std().item() - 12**-0.5) < 0.01  # the uniform's standard deviation
    assert (embed.std(dim=1) > 0.2).all()  # every channel differs across queries


@pytest.mark.parametrize("seed", range(3))
def test_gaussians_start_spread_over_the_image(seed):
    """With distinct queries the Gaussians' centres start spread over the image, not on one spot.

    Measured (seeds 0-9, this decoder): per-image std of the x and y centres 0.25-0.48 scene
    units, ranges 1.1-1.9 of the image's 2; N(0, 0.02) query embeddings gave 0.002-0.10 and
    0.01-0.48. The paper's decoder (encoder_dim 768): std 0.31-0.32 against 0.005-0.017.
    """
    torch.manual_seed(seed)
    decoder = GMAEDecoder(
        encoder_dim=ENCODER_DIM, img_size=64, patch_size=8, dim=128, depth=2, num_heads=4,
        num_queries=64, backend="torch",
    ).eval()
    latent, patch_mask = visible_inputs(1, decoder.num_patches, ratio=0.75, seed=seed)
    with torch.no_grad():
        centres = decoder.decode(latent, patch_mask.ids_keep).means[..., :2]
    assert centres.abs().max() < 1.0
    assert (centres.std(dim=1) > 0.18).all(), centres.std(dim=1)
    span = centres.amax(dim=1) - centres.amin(dim=1)
    assert (span > 0.8).all(), span


def test_query_decoder_positions_are_fixed_buffers_not_parameters():
    decoder = small_query_decoder()
    assert "pos_embed" not in dict(decoder.named_parameters())
    assert "pos_embed" not in decoder.state_dict()
    torch.testing.assert_close(decoder.pos_embed, sincos_pos_embed_2d(32, (3, 5)))


def test_query_decoder_rejects_latent_and_ids_keep_of_different_lengths():
    decoder = small_query_decoder()
    latent, patch_mask = visible_inputs(1, 15)
    with pytest.raises(ValueError, match="num_prefix_tokens=1"):
        decoder(latent[:, :-1], patch_mask.ids_keep)


def test_query_decoder_rejects_latent_of_the_wrong_width():
    decoder = small_query_decoder()
    latent, patch_mask = visible_inputs(1, 15)
    with pytest.raises(ValueError, match=f"encoder_dim={ENCODER_DIM}"):
        decoder(latent[..., :-1], patch_mask.ids_keep)


def test_query_decoder_rejects_ids_of_another_batch_size():
    decoder = small_query_decoder()
    latent, patch_mask = visible_inputs(1, 15)
    with pytest.raises(TypeError, match="ids_keep"):
        decoder(latent, patch_mask.ids_keep[:1])


def test_query_decoder_rejects_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match="num_heads"):
        QueryDecoder(ENCODER_DIM, grid_size=(2, 2), dim=30, num_heads=4)


@pytest.mark.parametrize("img_size", [(16, 24), (32, 16)])
def test_gmae_decoder_renders_images_in_unit_range(img_size):
    decoder = small_gmae_decoder(img_size=img_size)
    latent, patch_mask = visible_inputs(1, decoder.num_patches)
    output = decoder(latent, patch_mask.ids_restore)
    assert isinstance(output, DecoderOutput)
    assert isinstance(output.gaussians, Gaussians)
    assert output.image.shape == (2, 3, *img_size)
    assert output.gaussians.num_gaussians == 8
    assert output.image.min() >= 0 and output.image.max() <= 1


def test_gmae_decoder_ids_restore_and_ids_keep_give_the_same_render():
    decoder = small_gmae_decoder()
    latent, patch_mask = visible_inputs(1, decoder.num_patches)
    from_restore = decoder(latent, patch_mask.ids_restore)
    from_keep = decoder(latent, ids_keep=patch_mask.ids_keep)
    torch.testing.assert_close(from_restore.image, from_keep.image)


def test_gmae_decoder_accepts_maes_own_random_masking_output():
    decoder = small_gmae_decoder()
    noise = torch.rand(2, decoder.num_patches)
    # MAE's random_masking, as published.
    num_kept = int(decoder.num_patches * (1 - 0.5))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_kept]
    latent = torch.randn(2, 1 + num_kept, ENCODER_DIM)
    torch.testing.assert_close(
        decoder(latent, ids_restore).image, decoder(latent, ids_keep=ids_keep).image
    )


def test_gmae_decoder_decode_then_render_equals_forward():
    decoder = small_gmae_decoder()
    latent, patch_mask = visible_inputs(1, decoder.num_patches)
    gaussians = decoder.decode(latent, patch_mask.ids_keep)
    torch.testing.assert_close(
        decoder.render(gaussians), decoder(latent, ids_keep=patch_mask.ids_keep).image
    )


def test_gmae_decoder_background_is_white_where_nothing_is_drawn():
    decoder = small_gmae_decoder()
    latent, patch_mask = visible_inputs(1, decoder.num_patches)
    gaussians = decoder.decode(latent, patch_mask.ids_keep)
    invisible = gaussians.replace(opacities=torch.zeros_like(gaussians.opacities))
    torch.testing.assert_close(decoder.render(invisible), torch.ones(2, 3, 16, 24))


def test_gmae_decoder_needs_exactly_one_index_format():
    decoder = small_gmae_decoder()
    latent, patch_mask = visible_inputs(1, decoder.num_patches)
    with pytest.raises(ValueError, match="exactly one"):
        decoder(latent)
    with pytest.raises(ValueError, match="exactly one"):
        decoder(latent, patch_mask.ids_restore, ids_keep=patch_mask.ids_keep)


def test_gmae_decoder_points_to_ids_keep_when_given_visible_indices_as_ids_restore():
    decoder = small_gmae_decoder()
    latent, patch_mask = visible_inputs(1, decoder.num_patches)
    with pytest.raises(ValueError, match="ids_keep="):
        decoder(latent, patch_mask.ids_keep)


def test_gmae_decoder_rejects_image_size_not_divisible_by_patch_size():
    with pytest.raises(ValueError, match="not divisible"):
        GMAEDecoder(encoder_dim=ENCODER_DIM, img_size=(20, 24), patch_size=8)


def test_gmae_decoder_gradients_reach_every_parameter():
    decoder = small_gmae_decoder().train()
    latent, patch_mask = visible_inputs(1, decoder.num_patches)
    latent.requires_grad_(True)
    decoder(latent, patch_mask.ids_restore).image.mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


def test_gmae_decoder_renders_several_gaussians_per_query_with_the_same_sequence():
    torch.manual_seed(0)
    kwargs = dict(encoder_dim=ENCODER_DIM, img_size=16, patch_size=8, dim=32, depth=1,
                  num_heads=4, num_queries=8, backend="torch")
    single, triple = GMAEDecoder(**kwargs), GMAEDecoder(gaussians_per_token=3, **kwargs)
    assert set(single.state_dict()) == set(triple.state_dict())
    assert (single.num_gaussians, triple.num_gaussians) == (8, 24)
    latent, patch_mask = visible_inputs(1, 4, ratio=0.5)
    captured = decoder_input(triple.query_decoder)
    output = triple(latent, ids_keep=patch_mask.ids_keep)
    assert captured[0].shape == (2, 1 + patch_mask.num_kept + 8, 32)  # 8 queries, not 24
    assert output.gaussians.means.shape == (2, 24, 3)
    assert output.image.shape == (2, 3, 16, 16)
