import pytest
import torch
from einops import repeat
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torchvision.transforms import Normalize

from splathead.adapters import TimmViTEncoder, wrap
from splathead.decoder import GMAEDecoder
from splathead.gaussians import Gaussians
from splathead.masking import PatchMask, RandomMasking
from splathead.factories import (
    gmae_vit_base_patch16,
    gmae_vit_huge_patch14,
    gmae_vit_large_patch16,
    gmae_vit_tiny,
)
from splathead.model import GMAE, GMAEOutput
from splathead.patches import patchify
from splathead.pos_embed import sincos_pos_embed_2d

IMG_SIZE = 32
PATCH_SIZE = 8
NUM_PATCHES = (IMG_SIZE // PATCH_SIZE) ** 2


def tiny(**overrides) -> GMAE:
    torch.manual_seed(0)
    config = dict(
        img_size=IMG_SIZE, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
        decoder_depth=1, num_queries=16, backend="torch",
    )  # fmt: skip
    return gmae_vit_tiny(**{**config, **overrides})


def normalised_images(batch=2, size=IMG_SIZE, seed=0) -> torch.Tensor:
    rgb = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(rgb)


def small_vit(**kwargs) -> VisionTransformer:
    config = dict(img_size=IMG_SIZE, patch_size=PATCH_SIZE, embed_dim=32, depth=1, num_heads=2)
    return VisionTransformer(num_classes=0, **{**config, **kwargs})


def decoder_for(**kwargs) -> GMAEDecoder:
    config = dict(encoder_dim=32, img_size=IMG_SIZE, patch_size=PATCH_SIZE, dim=32, depth=1,
                  num_heads=2, num_queries=8, backend="torch")  # fmt: skip
    return GMAEDecoder(**{**config, **kwargs})


def test_forward_returns_loss_render_gaussians_and_mask():
    model = tiny()
    output = model(normalised_images())
    assert isinstance(output, GMAEOutput)
    assert output.loss.shape == () and torch.isfinite(output.loss)
    assert output.image.shape == (2, 3, IMG_SIZE, IMG_SIZE)
    assert output.image.min() >= 0 and output.image.max() <= 1
    assert isinstance(output.gaussians, Gaussians) and output.gaussians.means.shape == (2, 16, 3)
    assert isinstance(output.mask, PatchMask)
    assert output.mask.mask.shape == (2, NUM_PATCHES)
    assert output.mask.num_hidden == int(0.75 * NUM_PATCHES)


def test_backward_reaches_encoder_decoder_and_head():
    model = tiny()
    model(normalised_images()).loss.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert any(name.startswith("encoder.") for name in trainable)
    assert any(name.startswith("decoder.query_decoder.") for name in trainable)
    assert "decoder.head.proj.weight" in trainable
    for name, parameter in trainable.items():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert model.encoder.vit.patch_embed.proj.weight.grad.abs().sum() > 0


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval_mode():
    model = tiny(freeze_encoder=True).train()
    model(normalised_images()).loss.backward()
    for name, parameter in model.encoder.named_parameters():
        assert parameter.grad is None, name
    assert model.decoder.head.proj.weight.grad is not None
    assert not model.encoder.training and model.decoder.training


def test_masked_loss_is_mse_over_hidden_patches_of_the_unnormalised_input():
    model = tiny()
    images = normalised_images()
    rgb = images * torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1) + torch.tensor(
        IMAGENET_DEFAULT_MEAN
    ).view(3, 1, 1)
    output = model(images)
    grid = IMG_SIZE // PATCH_SIZE
    hidden_pixels = repeat(
        output.mask.mask, "b (gh gw) -> b 3 (gh ph) (gw pw)", gh=grid, ph=PATCH_SIZE, pw=PATCH_SIZE
    )
    squared_error = (output.image - rgb.clamp(0, 1)).square()
    expected = squared_error[hidden_pixels].mean()
    torch.testing.assert_close(output.loss, expected)


def test_full_loss_is_mse_over_every_pixel():
    model = tiny(loss="full")
    images = normalised_images()
    output = model(images)
    expected = (output.image - model.unnormalize(images)).square().mean()
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize("loss", ["masked", "full"])
def test_norm_pix_loss_normalises_each_patch_by_the_inputs_patch(loss):
    model = tiny(loss=loss, norm_pix_loss=True)
    images = normalised_images()
    output = model(images)
    weights = output.mask.mask if loss == "masked" else torch.ones_like(output.mask.mask)
    render = patchify(output.image, PATCH_SIZE)
    target = patchify(model.unnormalize(images), PATCH_SIZE)
    per_patch = (render - target).square().mean(-1) / (target.var(-1) + 1e-6)
    torch.testing.assert_close(output.loss, (per_patch * weights).sum() / weights.sum())
    assert not torch.allclose(output.loss, tiny(loss=loss)(images).loss)


def test_unnormalize_inverts_imagenet_normalisation():
    rgb = torch.rand(2, 3, IMG_SIZE, IMG_SIZE)
    images = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(rgb)
    torch.testing.assert_close(tiny().unnormalize(images), rgb)


def test_same_noise_gives_the_same_mask_and_output():
    model = tiny().eval()
    images = normalised_images()
    noise = torch.rand(2, NUM_PATCHES)
    first, second = model(images, noise=noise), model(images, noise=noise)
    assert torch.equal(first.mask.ids_keep, RandomMasking(0.75).from_noise(noise).ids_keep)
    assert torch.equal(first.mask.ids_keep, second.mask.ids_keep)
    torch.testing.assert_close(first.image, second.image)


def test_given_mask_is_used_as_is():
    model = tiny().eval()
    hidden = torch.zeros(2, NUM_PATCHES, dtype=torch.bool)
    hidden[:, ::2] = True
    mask = PatchMask.from_bool_mask(hidden)
    assert model(normalised_images(), mask=mask).mask is mask


def test_mask_and_noise_together_are_rejected():
    model = tiny()
    noise = torch.rand(2, NUM_PATCHES)
    with pytest.raises(ValueError, match="at most one"):
        model(normalised_images(), mask=RandomMasking(0.5).from_noise(noise), noise=noise)


def test_mask_for_another_grid_is_rejected():
    model = tiny()
    with pytest.raises(ValueError, match=f"{NUM_PATCHES} patches"):
        model(normalised_images(), mask=RandomMasking(0.5)(2, NUM_PATCHES + 1))


def test_reconstruct_at_ratio_zero_equals_forward_with_nothing_hidden():
    model = tiny(loss="full", mask_ratio=0.0).eval()
    images = normalised_images()
    nothing_hidden = PatchMask.from_bool_mask(torch.zeros(2, NUM_PATCHES, dtype=torch.bool))
    reconstruction = model.reconstruct(images, 0.0)
    torch.testing.assert_close(reconstruction.image, model(images, mask=nothing_hidden).image)


def test_reconstruct_defaults_to_the_training_ratio_with_a_seeded_mask():
    model = tiny(mask_ratio=0.75).eval()
    images = normalised_images()
    with torch.no_grad():
        first, again = model.reconstruct(images), model.reconstruct(images)
        # The default mask is RandomMasking(0.75) on noise from a generator seeded with 0.
        noise = torch.rand(2, NUM_PATCHES, generator=torch.Generator().manual_seed(0))
        expected = model(images, noise=noise)
        other = model.reconstruct(images, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first.image, again.image)
    torch.testing.assert_close(first.image, expected.image)
    assert expected.mask.num_kept == NUM_PATCHES // 4
    assert not torch.allclose(first.image, other.image)


def test_reconstruct_with_a_given_mask_equals_forward_with_it():
    model = tiny().eval()
    images = normalised_images()
    mask = RandomMasking(0.5)(2, NUM_PATCHES, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(images, mask=mask).image,
                                   model(images, mask=mask).image)
    with pytest.raises(ValueError, match="at most one"):
        model.reconstruct(images, 0.5, mask=mask)
    with pytest.raises(ValueError, match=f"{NUM_PATCHES} patches"):
        model.reconstruct(images, mask=RandomMasking(0.5)(2, NUM_PATCHES + 1))


def test_encode_decode_render_split_equals_forward():
    model = tiny().eval()
    images = normalised_images()
    noise = torch.rand(2, NUM_PATCHES)
    output = model(images, noise=noise)
    ids_keep = output.mask.ids_keep
    image = model.render(model.decode(model.encode(images, ids_keep), ids_keep))
    torch.testing.assert_close(image, output.image)


@pytest.mark.parametrize("size", [(30, 32), (32, 36), (64, 64)])
def test_images_of_another_size_are_rejected(size):
    images = torch.randn(2, 3, *size)
    with pytest.raises(ValueError, match="img_size"):
        tiny()(images)


@pytest.mark.parametrize("channels", [1, 4])
def test_images_with_other_channel_counts_are_rejected(channels):
    with pytest.raises(ValueError, match="channels"):
        tiny()(torch.randn(2, channels, IMG_SIZE, IMG_SIZE))


def test_images_without_batch_dimension_are_rejected():
    with pytest.raises(TypeError, match="images"):
        tiny()(torch.randn(3, IMG_SIZE, IMG_SIZE))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_images_of_another_dtype_than_the_encoder_are_named_before_any_work(dtype):
    with pytest.raises(TypeError, match=rf"images has dtype {dtype}, expected torch.float32"):
        tiny()(normalised_images().to(dtype))
    with pytest.raises(TypeError, match="images has dtype"):
        tiny().reconstruct(normalised_images().to(dtype))


def test_images_in_the_encoders_own_dtype_are_taken():
    model = tiny().double()
    assert model(normalised_images().double()).loss.dtype == torch.float64


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_are_named_as_the_images_not_as_invalid_gaussians(bad):
    images = normalised_images()
    images[1, 0, 3, 5] = bad
    with pytest.raises(ValueError, match=r"^images holds NaN or Inf \(1 of 6144 values\)"):
        tiny()(images)
    with pytest.raises(ValueError, match=r"^images holds NaN or Inf"):
        tiny().reconstruct(images)


def test_invalid_gaussians_from_finite_images_still_name_the_gaussians():
    model = tiny()
    with torch.no_grad():
        model.decoder.head.proj.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="invalid Gaussians"):
        model(normalised_images())


def test_non_finite_noise_is_rejected_by_name():
    noise = torch.rand(2, NUM_PATCHES)
    noise[0, 1] = float("nan")
    with pytest.raises(ValueError, match="noise holds NaN"):
        tiny()(normalised_images(), noise=noise)


@pytest.mark.parametrize("img_size", [4, 12])
def test_factory_names_an_image_size_the_patch_does_not_divide(img_size):
    with pytest.raises(ValueError, match=rf"img_size is {img_size}x{img_size} .* 8x8 patch size"):
        gmae_vit_tiny(img_size=img_size)


def test_decoder_with_another_patch_size_is_rejected():
    with pytest.raises(ValueError, match="patch_size"):
        GMAE(TimmViTEncoder(small_vit()), decoder_for(patch_size=4))


def test_decoder_with_another_encoder_width_is_rejected():
    with pytest.raises(ValueError, match="embed_dim"):
        GMAE(TimmViTEncoder(small_vit()), decoder_for(encoder_dim=48))


def test_decoder_with_other_prefix_tokens_is_rejected():
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        GMAE(TimmViTEncoder(small_vit(reg_tokens=4)), decoder_for())


def test_decoder_for_another_image_size_is_rejected():
    with pytest.raises(ValueError, match="img_size"):
        GMAE(TimmViTEncoder(small_vit()), decoder_for(img_size=64))


def test_masked_loss_without_masking_is_rejected():
    with pytest.raises(ValueError, match="mask_ratio=0"):
        tiny(mask_ratio=0.0)


def test_timm_vit_is_wrapped_and_decoder_sized_from_it():
    vit = small_vit(reg_tokens=4, embed_dim=48, num_heads=3)
    model = GMAE.from_encoder(wrap(vit), img_size=IMG_SIZE, dim=32, depth=1, num_heads=2, num_queries=8)
    assert isinstance(model.encoder, TimmViTEncoder) and model.encoder.vit is vit
    assert model.decoder.num_prefix_tokens == 5 and model.decoder.encoder_dim == 48
    assert model(normalised_images()).image.shape == (2, 3, IMG_SIZE, IMG_SIZE)


def test_a_backbone_that_is_not_a_masked_encoder_is_rejected_with_the_fix():
    with pytest.raises(TypeError, match=r"MaskedEncoder module, got VisionTransformer; .*wrap\(backbone\)"):
        GMAE.from_encoder(small_vit(), img_size=IMG_SIZE)


def test_callers_reach_the_renderer_and_camera_through_the_model():
    model = tiny()
    assert model.renderer is model.decoder.renderer
    assert model.camera == model.decoder.renderer.camera
    assert (model.camera.width, model.camera.height) == (IMG_SIZE, IMG_SIZE)


def test_forward_and_backward_run_under_bfloat16_autocast():
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(normalised_images())
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    output.loss.backward()
    assert torch.isfinite(model.decoder.head.proj.weight.grad).all()


def test_hugging_face_vitmae_is_wrapped():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(
        image_size=IMG_SIZE, patch_size=PATCH_SIZE, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    model = GMAE.from_encoder(
        wrap(transformers.ViTMAEModel(config)), img_size=IMG_SIZE, dim=32, depth=1, num_heads=2,
        num_queries=8, backend="torch",
    )  # fmt: skip
    output = model(normalised_images())
    assert output.image.shape == (2, 3, IMG_SIZE, IMG_SIZE) and torch.isfinite(output.loss)


def test_tiny_factory_takes_overrides():
    model = gmae_vit_tiny(img_size=48, num_queries=12, mask_ratio=0.5, depth=1)
    assert model.img_size == (48, 48) and model.decoder.query_decoder.num_queries == 12
    assert model.mask_ratio == 0.5 and len(model.encoder.vit.blocks) == 1


@pytest.mark.parametrize(
    ("factory", "width", "heads", "patch"),
    [(gmae_vit_large_patch16, 1024, 16, 16), (gmae_vit_huge_patch14, 1280, 16, 14)],
)
def test_large_and_huge_factories_are_maes_encoders_with_the_papers_decoder(
    factory, width, heads, patch
):
    # One block instead of 24 or 32 keeps the test small; the widths are the real ones.
    model = factory(img_size=patch * 4, depth=1, backend="torch", gaussians_per_token=2,
                    decoder_kwargs={"background": 0.0, "rotation": "quaternion"})
    vit = model.encoder.vit
    assert (vit.embed_dim, vit.blocks[0].attn.num_heads) == (width, heads)
    assert model.patch_size == (patch, patch) and model.img_size == (patch * 4, patch * 4)
    assert model.decoder.query_decoder.dim == 512 and len(model.decoder.query_decoder.blocks) == 8
    assert model.decoder.num_gaussians == 512
    assert model.renderer.background.tolist() == 0.0
    assert model.decoder.head.rotation == "quaternion"


@pytest.fixture(scope="module")
def paper_model() -> GMAE:
    return gmae_vit_base_patch16()


def test_paper_encoder_is_vit_base_16_with_fixed_sincos_positions(paper_model):
    vit = paper_model.encoder.vit
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (768, 12, 12)
    assert paper_model.patch_size == (16, 16) and paper_model.img_size == (224, 224)
    assert vit.cls_token is not None and vit.num_prefix_tokens == 1
    assert not vit.pos_embed.requires_grad
    torch.testing.assert_close(
        vit.pos_embed[0], sincos_pos_embed_2d(768, (14, 14), num_prefix_tokens=1)
    )


def test_paper_decoder_has_512_wide_8_blocks_16_heads_and_256_gaussians(paper_model):
    query_decoder = paper_model.decoder.query_decoder
    assert query_decoder.dim == 512 and len(query_decoder.blocks) == 8
    assert query_decoder.blocks[0].attn.num_heads == 16
    assert query_decoder.num_queries == 256
    assert paper_model.decoder.head.proj.weight.shape == (14, 512)
    assert paper_model.decoder.head.max_scale == 1 / 8
    assert paper_model.mask_ratio == 0.75 and paper_model.loss == "masked"
