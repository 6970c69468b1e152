"""VideoGMAE: VideoMAE encoder, tube masking, Gaussians that move over the frames, one render call."""

import pytest
import torch
from einops import rearrange

transformers = pytest.importorskip("transformers")

from splathead import VideoGMAE, VideoGaussians, wrap  # noqa: E402
from splathead.factories import gmae_vit_tiny  # noqa: E402
from splathead.patches import patchify  # noqa: E402

FRAMES, SIZE, QUERIES, PER_TOKEN = 4, 32, 8, 2


def tiny_videomae():
    config = transformers.VideoMAEConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=SIZE, patch_size=8, num_frames=FRAMES, tubelet_size=2,
    )
    return transformers.VideoMAEModel(config)


def tiny_model(**overrides):
    torch.manual_seed(0)
    settings = dict(
        img_size=SIZE, num_frames=FRAMES, dim=32, depth=1, num_heads=2, num_queries=QUERIES,
        gaussians_per_token=PER_TOKEN, backend="torch", mask_ratio=0.75,
    )
    return VideoGMAE.from_encoder(wrap(tiny_videomae()), **{**settings, **overrides})


def moving(model: VideoGMAE) -> VideoGMAE:
    """The model with a random delta head, so later frames differ from frame 0."""
    with torch.no_grad():
        model.decoder.delta_head.weight.normal_(std=0.5)
    return model


@pytest.fixture
def videos():
    return torch.randn(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_output_shapes_and_tubelet_mask(videos):
    output = tiny_model()(videos)
    assert output.image.shape == (2, FRAMES, 3, SIZE, SIZE)
    assert output.gaussians.means.shape == (2, FRAMES, QUERIES * PER_TOKEN, 3)
    assert output.gaussians.scales.shape == (2, QUERIES * PER_TOKEN, 3)
    assert output.mask.num_patches == 2 * 4 * 4  # (gt, gh, gw) = (2, 4, 4)
    assert output.mask.num_kept == 2 * int(16 * 0.25)
    assert torch.isfinite(output.loss)


def test_frame_zero_is_the_base_set_from_the_first_query_set(videos):
    model = moving(tiny_model())
    mask = model.draw_mask(2, generator=torch.Generator().manual_seed(0))
    latent = model.encode(videos, mask.ids_keep)
    gaussians = model.decode(latent, mask.ids_keep)
    base = model.decoder.head(model.decoder.query_decoder(latent, mask.ids_keep)[:, :QUERIES])
    frame = gaussians.frame(0)
    for name in ("means", "scales", "quats", "colors", "opacities"):
        assert torch.equal(getattr(frame, name), getattr(base, name)), name
    assert not torch.equal(gaussians.means[:, 1], gaussians.means[:, 0])


def test_later_frames_move_by_bounded_steps_and_share_shape_and_opacity(videos):
    model = moving(tiny_model(max_step=0.05))
    gaussians = model(videos).gaussians
    steps = gaussians.means.diff(dim=1)
    # Each step is 0.05 * tanh (at most 0.05); the centres are cumulative sums of the steps, and
    # differencing them back rounds by an ulp of the centre (float32: 0.05000001 where tanh = 1).
    assert steps.abs().max() <= 0.05 + 1e-6
    assert steps.abs().max() > 0.01
    assert not torch.equal(gaussians.colors[:, 2], gaussians.colors[:, 0])
    frame = gaussians.frame(3)
    assert frame.scales is gaussians.scales and frame.opacities is gaussians.opacities


def test_untrained_delta_head_starts_every_frame_as_frame_zero(videos):
    gaussians = tiny_model()(videos).gaussians
    assert torch.equal(gaussians.means, gaussians.means[:, :1].expand_as(gaussians.means))
    # sigmoid(logit + 0) against sigmoid(logit): equal up to the vectorised sigmoid's last bit
    torch.testing.assert_close(
        gaussians.colors, gaussians.colors[:, :1].expand_as(gaussians.colors), atol=1e-7, rtol=0
    )


def test_each_frame_renders_as_its_gaussians_alone(videos):
    model = moving(tiny_model())
    output = model(videos)
    for index in range(FRAMES):
        alone = model.decoder.renderer(output.gaussians.frame(index)).image
        torch.testing.assert_close(output.image[:, index], alone, atol=1e-5, rtol=0)


def test_all_frames_render_in_one_batched_call(videos):
    model = tiny_model()
    batch_sizes = []
    model.decoder.renderer.register_forward_hook(
        lambda module, args, result: batch_sizes.append(args[0].batch_size)
    )
    model(videos)
    assert batch_sizes == [2 * FRAMES]


def test_loss_is_the_mse_over_every_frames_hidden_patches(videos):
    model = moving(tiny_model())
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    output = model(videos, noise=noise)
    target = model.unnormalize(videos)
    errors = []
    for video in range(2):
        for frame in range(FRAMES):
            per_patch = patchify(
                (output.image[video, frame] - target[video, frame]).square()[None], 8
            )[0].mean(-1)
            slot = frame // 2
            hidden = output.mask.mask[video, slot * 16 : (slot + 1) * 16]
            errors.append(per_patch[hidden])
    torch.testing.assert_close(output.loss, torch.cat(errors).mean())


def test_delta_weight_adds_the_l2_penalty_of_the_deltas(videos):
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    plain = moving(tiny_model())(videos, noise=noise)
    weighted = moving(tiny_model(delta_weight=0.5))(videos, noise=noise)
    penalty = plain.gaussians.delta_penalty()
    assert penalty > 0
    torch.testing.assert_close(weighted.loss, plain.loss + 0.5 * penalty)


def test_gradients_reach_encoder_queries_and_delta_head(videos):
    model = tiny_model()
    model(videos).loss.backward()
    for name in ("decoder.delta_head.weight", "decoder.head.proj.weight",
                 "decoder.query_decoder.query_embed", "encoder.model.embeddings.patch_embeddings"
                 ".projection.weight"):
        gradient = model.get_parameter(name).grad
        assert gradient is not None and gradient.abs().sum() > 0, name


def test_random_masking_covers_the_whole_tubelet_grid(videos):
    model = tiny_model(masking="random")
    output = model(videos, noise=torch.rand(2, 32))
    assert output.mask.num_kept == int(32 * 0.25)
    with pytest.raises(ValueError, match=r"noise must be \[b 32\] for random masking"):
        model(videos, noise=torch.rand(2, 16))


def test_displacements_are_relative_to_the_reference_frame(videos):
    gaussians = moving(tiny_model())(videos).gaussians
    shift = gaussians.displacements(reference=1)
    torch.testing.assert_close(shift[:, 3], gaussians.means[:, 3] - gaussians.means[:, 1])
    assert torch.count_nonzero(shift[:, 1]) == 0
    assert isinstance(gaussians[1], VideoGaussians) and gaussians[1].batch_size == 1


def test_bad_inputs_are_named(videos):
    model = tiny_model()
    with pytest.raises(ValueError, match="videos have 6 frames.*num_frames=4"):
        model(torch.randn(1, 6, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="videos are 48x32 pixels.*32x32"):
        model(torch.randn(1, FRAMES, 3, 48, SIZE))
    with pytest.raises(ValueError, match="masking must be 'tube' or 'random'"):
        tiny_model(masking="frame")
    with pytest.raises(ValueError, match="num_frames must be a positive multiple of tubelet_size"):
        tiny_model(num_frames=3)
    with pytest.raises(ValueError, match="cannot take the decoder's 8 frames"):
        tiny_model(num_frames=8)
    with pytest.raises(TypeError, match="MaskedVideoEncoder"):
        VideoGMAE.from_encoder(gmae_vit_tiny(img_size=32).encoder, img_size=32, num_frames=2)


def test_videos_get_the_image_models_named_checks_before_any_work(videos):
    model = tiny_model()
    with pytest.raises(ValueError, match="videos has 1 channels, expected 3"):
        model(videos[:, :, :1])
    with pytest.raises(TypeError, match="videos has dtype torch.float64, expected torch.float32"):
        model(videos.double())
    with pytest.raises(TypeError, match="videos has dtype torch.float16"):
        model.encode(videos.half())
    broken = videos.clone()
    broken[1, 3, 0, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"^videos holds NaN or Inf \(1 of 24576 values\)"):
        model(broken)


def test_adamw_leaves_the_learned_queries_undecayed():
    assert tiny_model().no_weight_decay() == {
        "decoder.query_decoder.query_token", "decoder.query_decoder.query_embed"}
