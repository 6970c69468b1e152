"""HFVideoMAEEncoder: Hugging Face VideoMAE encoding visible tubelets only, equal to HF's own forward."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from splathead import GMAE, MaskedEncoder, MaskedVideoEncoder, wrap  # noqa: E402
from splathead.video_masking import TubeMasking  # noqa: E402
from splathead.adapters import HFVideoMAEEncoder  # noqa: E402
from splathead.masking import PatchMask, RandomMasking  # noqa: E402


def tiny_config(**overrides):
    return transformers.VideoMAEConfig(
        **{
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
            "num_frames": 4,
            "tubelet_size": 2,
            **overrides,
        }
    )


@pytest.fixture(params=[True, False], ids=["mean-pooling", "final-norm"])
def model(request):
    torch.manual_seed(0)
    return transformers.VideoMAEModel(tiny_config(use_mean_pooling=request.param)).eval()


def test_is_a_masked_video_encoder_with_the_model_geometry(model):
    encoder = wrap(model)
    assert isinstance(encoder, HFVideoMAEEncoder) and isinstance(encoder, MaskedVideoEncoder)
    assert (encoder.embed_dim, encoder.patch_size, encoder.tubelet_size) == (32, (8, 8), 2)
    assert encoder.num_prefix_tokens == 0
    assert encoder.grid_size(4, 32, 32) == (2, 4, 4)


@pytest.mark.parametrize("masking", ["tube", "random"])
def test_kept_tubelets_equal_hf_forward_with_bool_masked_pos(model, masking):
    torch.manual_seed(1)
    videos = torch.randn(3, 4, 3, 32, 32)
    if masking == "tube":
        mask = TubeMasking(0.75)(3, (2, 4, 4))
    else:
        mask = RandomMasking(0.75)(3, 32)
    expected = model(videos, bool_masked_pos=mask.mask).last_hidden_state
    with torch.no_grad():
        # HF keeps the visible tubelets in grid order; from_bool_mask lists them so.
        tokens = wrap(model)(videos, PatchMask.from_bool_mask(mask.mask).ids_keep)
        shuffled = wrap(model)(videos, mask.ids_keep)
    torch.testing.assert_close(tokens, expected)
    # Any other order of the same tubelets permutes the tokens alike.
    order = torch.argsort(mask.ids_keep, dim=1)
    torch.testing.assert_close(torch.gather(shuffled, 1, order[..., None].expand_as(shuffled)),
                               expected)


def test_every_tubelet_equals_hf_without_masking(model):
    videos = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrap(model)(videos), model(videos).last_hidden_state)


def test_pretraining_model_uses_its_encoder():
    torch.manual_seed(0)
    pretraining = transformers.VideoMAEForPreTraining(tiny_config()).eval()
    encoder = wrap(pretraining)
    assert encoder.model is pretraining.videomae
    videos = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(videos), pretraining.videomae(videos).last_hidden_state)


def test_wrong_frame_count_and_size_are_named(model):
    encoder = wrap(model)
    with pytest.raises(ValueError, match="6 frames.*num_frames=4"):
        encoder(torch.randn(1, 6, 3, 32, 32))
    with pytest.raises(ValueError, match="48x32.*32x32"):
        encoder(torch.randn(1, 4, 3, 48, 32))


def test_image_gmae_refuses_a_video_encoder(model):
    encoder = wrap(model)
    assert isinstance(encoder, MaskedEncoder)  # the attributes overlap; GMAE must still refuse
    with pytest.raises(TypeError, match="video encoder.*VideoGMAE"):
        GMAE.from_encoder(encoder, img_size=32)
