"""docs/drop_in.md: its code turns an MAE-structured model into a GMAE that trains unchanged.

The doc's python block runs as written, against a small model with the structure and the
interface of MAE's ``models_mae.MaskedAutoencoderViT`` (written here from MAE's published
algorithm; its ``random_masking`` returns MAE's float mask) standing in for ``models_mae``.
"""

import re
import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Block, PatchEmbed
from torch import nn

from splathead.decoder import GMAEDecoder
from splathead.losses import masked_patch_mse
from splathead.pos_embed import sincos_pos_embed_2d

DOC = Path(__file__).parent.parent / "docs" / "drop_in.md"


class MaskedAutoencoderViT(nn.Module):
    """MAE's model, small: ViT encoder on visible patches, pixel decoder, normalised-pixel loss."""

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.0,
        norm_layer=nn.LayerNorm,
        norm_pix_loss=False,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        table = sincos_pos_embed_2d(embed_dim, grid_size, num_prefix_tokens=1)
        self.pos_embed = nn.Parameter(table[None], requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        table = sincos_pos_embed_2d(decoder_embed_dim, grid_size, num_prefix_tokens=1)
        self.decoder_pos_embed = nn.Parameter(table[None], requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.norm_pix_loss = norm_pix_loss

    def random_masking(self, x, mask_ratio):
        batch_size, num_patches, dim = x.shape
        num_kept = int(num_patches * (1 - mask_ratio))
        noise = torch.rand(batch_size, num_patches, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :num_kept]
        x_masked = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, dim))
        mask = torch.ones(batch_size, num_patches, device=x.device)
        mask[:, :num_kept] = 0
        return x_masked, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, x, mask_ratio):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls_token = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        hidden = self.mask_token.expand(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], hidden], dim=1)
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs, pred, mask):
        patch = self.patch_embed.patch_size[0]
        target = imgs.unfold(2, patch, patch).unfold(3, patch, patch)  # b c gh gw p p
        target = target.permute(0, 2, 3, 4, 5, 1).flatten(3).flatten(1, 2)
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio=0.75):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_GMAE = dict(TINY, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
TINY_DECODER = dict(num_queries=16, backend="torch")


def python_block(markdown: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)
    assert len(blocks) == 1, "drop_in.md should hold exactly one python block (the code)"
    return blocks[0]


@pytest.fixture
def models_gmae(monkeypatch):
    """The doc's code, run as the module ``models_gmae`` on top of our ``models_mae``."""
    models_mae = types.ModuleType("models_mae")
    models_mae.MaskedAutoencoderViT = MaskedAutoencoderViT
    monkeypatch.setitem(sys.modules, "models_mae", models_mae)
    module = types.ModuleType("models_gmae")
    exec(compile(python_block(DOC.read_text()), str(DOC), "exec"), module.__dict__)
    return module


def normalised_images(batch_size, size=32):
    rgb = torch.rand(batch_size, 3, size, size)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (rgb - mean) / std


def test_gmae_from_the_doc_trains_a_step_in_mae_training_loop(models_gmae):
    torch.manual_seed(0)
    model = models_gmae.GaussianMAE(**TINY_GMAE, decoder_kwargs=TINY_DECODER)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    loss, image, mask = model(normalised_images(2), mask_ratio=0.75)  # MAE's loop line
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    assert image.shape == (2, 3, 32, 32)
    assert image.min() >= 0 and image.max() <= 1
    assert mask.shape == (2, 16) and mask.sum(dim=1).tolist() == [12, 12]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("blocks.") for name in changed)
    assert any(name.startswith("gmae_decoder.") for name in changed)


@pytest.mark.parametrize(
    ("name", "width", "patch"),
    [("mae_vit_base_patch16", 768, 16), ("mae_vit_large_patch16", 1024, 16),
     ("mae_vit_huge_patch14", 1280, 14), ("mae_vit_tiny_patch4", 192, 4)],
)
def test_maes_model_dispatch_builds_the_gmae_of_that_name_at_the_input_size(
    models_gmae, name, width, patch
):
    # main_pretrain.py's line after the doc's edit; one encoder block keeps the test small.
    size = 2 * patch
    model = models_gmae.__dict__[name](img_size=size, depth=1, decoder_depth=1,
                                       decoder_kwargs=dict(backend="torch"))
    assert model.cls_token.shape[-1] == width
    assert tuple(model.patch_embed.patch_size) == (patch, patch)
    assert model.gmae_decoder.img_size == (size, size)
    loss, image, mask = model(normalised_images(1, size), mask_ratio=0.5)
    assert image.shape == (1, 3, size, size) and torch.isfinite(loss)


def test_laptop_model_takes_maes_float_mask_as_it_is_and_trains(models_gmae):
    torch.manual_seed(0)
    model = models_gmae.mae_vit_tiny_patch4(img_size=32, decoder_kwargs={"backend": "torch"})
    assert model.gmae_decoder.num_gaussians == 64
    loss, _, mask = model(normalised_images(2), mask_ratio=0.75)
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, 1.0}
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_save_one_image_writes_input_masked_render_and_gaussians(models_gmae, tmp_path):
    from PIL import Image

    model = models_gmae.GaussianMAE(**TINY_GMAE, decoder_kwargs=TINY_DECODER)
    path = tmp_path / "one_image.png"
    models_gmae.save_one_image(path, model, normalised_images(2))
    width, height = Image.open(path).size
    assert width > 4 * 32 and height > 2 * 32  # 4 panels side by side, 2 rows


def test_gmae_from_the_doc_has_no_mae_pixel_decoder_left(models_gmae):
    model = models_gmae.GaussianMAE(**TINY_GMAE, decoder_kwargs=TINY_DECODER)
    names = [name for name, _ in model.named_parameters()]
    assert not any(name.startswith(("decoder_", "mask_token")) for name in names)
    encoder_names = {name for name, _ in MaskedAutoencoderViT(**TINY).named_parameters()}
    assert {name for name in names if not name.startswith("gmae_decoder.")} <= encoder_names


def test_gmae_from_the_doc_keeps_the_mae_checkpoint_names_of_the_encoder(models_gmae):
    # MAE's fine-tuning loads the encoder by name with strict=False.
    model = models_gmae.GaussianMAE(**TINY_GMAE, decoder_kwargs=TINY_DECODER)
    state = model.state_dict()
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"} <= state.keys()
    assert not {"mean", "std"} & state.keys()


def test_decoder_reads_mae_ids_restore_as_the_visible_patches_in_latent_order():
    mae = MaskedAutoencoderViT(**TINY).eval()
    decoder = GMAEDecoder(encoder_dim=32, img_size=32, patch_size=8, dim=32, depth=1,
                          num_heads=2, **TINY_DECODER).eval()
    images = normalised_images(2)
    with torch.no_grad():
        torch.manual_seed(0)
        latent, _, ids_restore = mae.forward_encoder(images, 0.75)
        torch.manual_seed(0)
        ids_keep = torch.argsort(torch.rand(2, 16), dim=1)[:, :4]  # what MAE's masking kept
        from_mae = decoder(latent, ids_restore)
        from_ids_keep = decoder(latent, ids_keep=ids_keep)
        shuffled = decoder(latent, ids_keep=ids_keep.flip(1))
    torch.testing.assert_close(from_mae.image, from_ids_keep.image)
    torch.testing.assert_close(from_mae.gaussians.means, from_ids_keep.gaussians.means)
    assert not torch.allclose(from_mae.gaussians.means, shuffled.gaussians.means)


def tiny_from_factory(models_gmae, **keywords):
    """MAE's ViT-B/16 factory at 32 px with one encoder block, plus ``keywords``."""
    torch.manual_seed(0)
    keywords.setdefault("decoder_kwargs", dict(num_queries=8, backend="torch"))
    return models_gmae.mae_vit_base_patch16(img_size=32, depth=1, **keywords)


def test_the_issues_example_gets_its_decoder_depth_and_norm_pix_loss(models_gmae):
    model = models_gmae.mae_vit_base_patch16(img_size=112, depth=1, norm_pix_loss=True,
                                             decoder_depth=2)
    assert len(model.gmae_decoder.query_decoder.blocks) == 2
    assert model.norm_pix_loss is True
    assert model.gmae_decoder.img_size == (112, 112)


def test_decoder_width_depth_and_heads_come_from_maes_keywords(models_gmae):
    model = tiny_from_factory(models_gmae, decoder_embed_dim=64, decoder_depth=3,
                              decoder_num_heads=4)
    query_decoder = model.gmae_decoder.query_decoder
    assert query_decoder.dim == 64 and len(query_decoder.blocks) == 3
    assert all(block.attn.num_heads == 4 for block in query_decoder.blocks)


def test_mae_defaults_give_the_papers_decoder(models_gmae):
    query_decoder = tiny_from_factory(models_gmae).gmae_decoder.query_decoder
    assert (query_decoder.dim, len(query_decoder.blocks)) == (512, 8)
    assert query_decoder.blocks[0].attn.num_heads == 16
    assert query_decoder.blocks[0].mlp.fc1.out_features == 4 * 512


def test_mlp_ratio_sizes_encoder_and_decoder_blocks(models_gmae):
    model = tiny_from_factory(models_gmae, mlp_ratio=2, decoder_embed_dim=32,
                              decoder_depth=1, decoder_num_heads=2)
    assert model.blocks[0].mlp.fc1.out_features == 2 * 768
    assert model.gmae_decoder.query_decoder.blocks[0].mlp.fc1.out_features == 2 * 32


def test_norm_layer_builds_encoder_and_decoder_norms(models_gmae):
    model = tiny_from_factory(models_gmae, norm_layer=partial(nn.LayerNorm, eps=1e-3),
                              decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    query_decoder = model.gmae_decoder.query_decoder
    norms = [model.norm, model.blocks[0].norm1, query_decoder.norm,
             query_decoder.blocks[0].norm1, query_decoder.blocks[0].norm2]
    assert [norm.eps for norm in norms] == [1e-3] * 5


def test_a_norm_layer_other_than_layer_norm_is_refused_by_name(models_gmae):
    with pytest.raises(ValueError, match="norm_layer=.*RMSNorm"):
        tiny_from_factory(models_gmae, norm_layer=nn.RMSNorm)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_norm_pix_loss_normalises_render_and_input_patches(models_gmae, norm_pix_loss):
    model = tiny_from_factory(models_gmae, norm_pix_loss=norm_pix_loss, decoder_embed_dim=32,
                              decoder_depth=1, decoder_num_heads=2)
    images = normalised_images(2)
    torch.manual_seed(1)
    loss, image, mask = model(images, mask_ratio=0.75)
    target = (images * model.std + model.mean).clamp(0, 1)
    expected = masked_patch_mse(image, target, mask, 16, norm_pix=norm_pix_loss)
    other = masked_patch_mse(image, target, mask, 16, norm_pix=not norm_pix_loss)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, other)


def test_in_chans_other_than_three_is_refused_by_name(models_gmae):
    with pytest.raises(ValueError, match="in_chans=1"):
        tiny_from_factory(models_gmae, in_chans=1)


def test_an_unknown_keyword_is_refused_by_name(models_gmae):
    with pytest.raises(TypeError, match="decoder_width"):
        tiny_from_factory(models_gmae, decoder_width=64)


def test_decoder_kwargs_may_not_repeat_an_mae_keywords_setting(models_gmae):
    with pytest.raises(ValueError, match=r"\['depth'\].*\['decoder_depth'\]"):
        tiny_from_factory(models_gmae, decoder_kwargs=dict(depth=2, backend="torch"))


@pytest.mark.parametrize("name", ["mae_vit_base_patch16", "mae_vit_large_patch16",
                                  "mae_vit_huge_patch14", "mae_vit_tiny_patch4"])
def test_every_factory_passes_maes_keywords_on(models_gmae, name):
    patch = 14 if name.endswith("14") else 4 if name.endswith("4") else 16
    model = models_gmae.__dict__[name](img_size=2 * patch, depth=1, decoder_depth=1,
                                       decoder_embed_dim=16, decoder_num_heads=2,
                                       norm_pix_loss=True, decoder_kwargs=dict(backend="torch"))
    assert model.norm_pix_loss is True and len(model.blocks) == 1
    assert model.gmae_decoder.query_decoder.dim == 16
