"""docs/drop_in.md: its code turns an MAE-structured model into a GMAE that trains unchanged.

The doc's python block runs as written, against a small model with the structure and the
interface of MAE's ``models_mae.MaskedAutoencoderViT`` (written here from MAE's published
algorithm; its ``random_masking`` returns MAE's float mask) standing in for ``models_mae``.
"""

import argparse
import re
import sys
import textwrap
import types
from functools import partial
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Block, PatchEmbed, VisionTransformer
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


def doc_block(language: str, containing: str) -> str:
    """The one ``language`` block of drop_in.md holding ``containing``, dedented (blocks inside
    list items are indented)."""
    pattern = rf"^( *)```{language}\n(.*?)^\1```"
    blocks = [textwrap.dedent(body) for _, body in
              re.findall(pattern, DOC.read_text(), flags=re.DOTALL | re.MULTILINE)]
    matching = [block for block in blocks if containing in block]
    assert len(matching) == 1, f"drop_in.md should hold one {language} block with {containing!r}"
    return matching[0]


def diff_hunks(diff: str) -> list[str]:
    """The new side of each hunk (hunks separated by ``...``) of a diff block, dedented."""
    hunks = diff.split("...\n")
    return [textwrap.dedent("".join(line[1:] + "\n" for line in hunk.splitlines()
                                    if line[:1] in (" ", "+")))
            for hunk in hunks]


def run_block(source: str, namespace: dict) -> dict:
    exec(compile(source, str(DOC), "exec"), namespace)
    return namespace


@pytest.fixture
def models_gmae(monkeypatch):
    """The doc's code, run as the module ``models_gmae`` on top of our ``models_mae``."""
    models_mae = types.ModuleType("models_mae")
    models_mae.MaskedAutoencoderViT = MaskedAutoencoderViT
    monkeypatch.setitem(sys.modules, "models_mae", models_mae)
    module = types.ModuleType("models_gmae")
    run_block(doc_block("python", "class GaussianMAE("), module.__dict__)
    monkeypatch.setitem(sys.modules, "models_gmae", module)
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


# --- main_pretrain.py's dispatch, as the doc's diff edits it ---------------------------------


def test_main_pretrains_edited_dispatch_passes_input_size_and_norm_pix_loss(models_gmae):
    hunks = diff_hunks(doc_block("diff", "models_gmae.__dict__"))
    args = argparse.Namespace(model="mae_vit_tiny_patch4", input_size=16, norm_pix_loss=True)
    namespace = {"args": args}
    for hunk in hunks:
        run_block(hunk, namespace)
    model = namespace["model"]
    assert namespace["models_gmae"] is models_gmae
    assert model.gmae_decoder.img_size == (16, 16) and model.norm_pix_loss is True


# --- resuming: MAE's misc.save_model / load_model ---------------------------------------------


def mae_save_model(path, args, epoch, model, optimizer):
    """``misc.save_model``'s checkpoint (no grad scaler on the CPU)."""
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "args": args}, path)


def mae_load_model(path, args, model, optimizer):
    """``misc.load_model`` with the doc's ``weights_only=False``: strict, then the optimiser."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    args.start_epoch = checkpoint["epoch"] + 1


def tiny_gmae_and_optimizer(models_gmae):
    torch.manual_seed(0)
    model = models_gmae.GaussianMAE(**TINY_GMAE, decoder_kwargs=TINY_DECODER)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def mae_step(model, optimizer, images, seed):
    torch.manual_seed(seed)  # MAE's masking draws from the global generator
    loss, _, _ = model(images, mask_ratio=0.75)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_resuming_with_maes_load_model_continues_the_same_run(models_gmae, tmp_path):
    images = normalised_images(2)
    straight, straight_optimizer = tiny_gmae_and_optimizer(models_gmae)
    mae_step(straight, straight_optimizer, images, seed=1)
    mae_step(straight, straight_optimizer, images, seed=2)

    first, first_optimizer = tiny_gmae_and_optimizer(models_gmae)
    mae_step(first, first_optimizer, images, seed=1)
    args = argparse.Namespace(input_size=32, model="mae_vit_tiny_patch4")
    mae_save_model(tmp_path / "checkpoint-0.pth", args, 0, first, first_optimizer)
    torch.manual_seed(7)  # a fresh model, initialised differently
    resumed = models_gmae.GaussianMAE(**TINY_GMAE, decoder_kwargs=TINY_DECODER)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    mae_load_model(tmp_path / "checkpoint-0.pth", args, resumed, resumed_optimizer)
    mae_step(resumed, resumed_optimizer, images, seed=2)

    assert args.start_epoch == 1
    for (name, value), resumed_value in zip(straight.state_dict().items(),
                                            resumed.state_dict().values()):
        torch.testing.assert_close(resumed_value, value, msg=name)


# --- the notebook: prepare_model -----------------------------------------------------------


def saved_pretraining(models_gmae, path, input_size):
    """A GMAE trained a step at ``input_size``, saved as main_pretrain.py saves it."""
    torch.manual_seed(0)
    model = models_gmae.mae_vit_tiny_patch4(img_size=input_size,
                                            decoder_kwargs=dict(backend="torch"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mae_step(model, optimizer, normalised_images(2, input_size), seed=1)
    args = argparse.Namespace(input_size=input_size, model="mae_vit_tiny_patch4", blr=8e-3)
    mae_save_model(path, args, 19, model, optimizer)
    return model


def test_prepare_model_builds_the_checkpoints_input_size_and_loads_strictly(models_gmae, tmp_path):
    trained = saved_pretraining(models_gmae, tmp_path / "checkpoint-19.pth", input_size=16)
    namespace = run_block(doc_block("python", "def prepare_model("), {})
    model = namespace["prepare_model"](str(tmp_path / "checkpoint-19.pth"), "mae_vit_tiny_patch4")
    assert model.gmae_decoder.img_size == (16, 16) and not model.training
    images = normalised_images(1, 16)
    with torch.no_grad():
        torch.manual_seed(3)
        expected = trained.eval().forward_gaussians(images)[0].image
        torch.manual_seed(3)
        torch.testing.assert_close(model.forward_gaussians(images)[0].image, expected)
    with pytest.raises(RuntimeError, match="size mismatch"):  # strict: a wrong arch fails
        namespace["prepare_model"](str(tmp_path / "checkpoint-19.pth"), "mae_vit_base_patch16")


def test_maes_checkpoints_need_weights_only_false_or_the_namespace_allowed(models_gmae, tmp_path):
    path = tmp_path / "checkpoint-19.pth"
    saved_pretraining(models_gmae, path, input_size=16)
    with pytest.raises(Exception, match="argparse.Namespace"):
        torch.load(path, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["args"].input_size == 16


# --- fine-tuning: MAE's models_vit and main_finetune.py on timm 1.x ----------------------------


class MAEFineTuneViT(VisionTransformer):
    """MAE's ``models_vit.VisionTransformer``: timm's ViT, MAE's own ``forward_features``
    (global average pooling over the patches and ``fc_norm``, or the normed cls token)."""

    def __init__(self, global_pool=False, **kwargs):
        super().__init__(**kwargs)
        self.global_pool = global_pool
        if self.global_pool:
            self.fc_norm = kwargs["norm_layer"](kwargs["embed_dim"])
            del self.norm

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:].mean(dim=1))
        return self.norm(x)[:, 0]


FINETUNE_ENCODER = dict(patch_size=16, embed_dim=64, depth=1, num_heads=2)


def saved_finetune_pretraining(models_gmae, path, input_size):
    """A small GMAE (MAE's ViT-B/16 factory, shrunk) trained a step and saved by main_pretrain."""
    torch.manual_seed(0)
    model = models_gmae.mae_vit_base_patch16(
        img_size=input_size, **FINETUNE_ENCODER, decoder_embed_dim=32, decoder_depth=1,
        decoder_num_heads=2, decoder_kwargs=dict(num_queries=8, backend="torch"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mae_step(model, optimizer, normalised_images(2, input_size), seed=1)
    mae_save_model(path, argparse.Namespace(input_size=input_size), 19, model, optimizer)
    return model


def models_vit_module(with_doc_edit):
    """``models_vit`` with a factory for the encoder of :func:`saved_finetune_pretraining`;
    with the doc's edit the class gets the doc's ``forward``."""
    cls = MAEFineTuneViT
    if with_doc_edit:
        edit = run_block(doc_block("python", "def forward(self, x):"), {})
        cls = type("VisionTransformer", (MAEFineTuneViT,), {"forward": edit["forward"]})
    module = types.ModuleType("models_vit")
    module.VisionTransformer = cls
    module.vit_small_test = lambda **kwargs: cls(
        **FINETUNE_ENCODER, mlp_ratio=4, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
    return module


def finetune_args(input_size, path):
    return argparse.Namespace(model="vit_small_test", input_size=input_size, nb_classes=5,
                              drop_path=0.1, global_pool=True, finetune=str(path))


def load_as_main_finetune_does(models_vit, args):
    """main_finetune.py's model set-up after the doc's edits (the diff's new lines, run as
    written), then its loading: drop a mismatched head, load non-strictly, check what is
    missing."""
    namespace = {"models_vit": models_vit, "args": args, "torch": torch}
    model_lines, load_line = diff_hunks(doc_block("diff", "models_vit.__dict__"))
    run_block(model_lines, namespace)
    run_block(load_line, namespace)
    model, checkpoint_model = namespace["model"], namespace["checkpoint"]["model"]
    message = model.load_state_dict(checkpoint_model, strict=False)
    assert set(message.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight",
                                         "fc_norm.bias"}
    assert all(key.startswith(("gmae_decoder.", "norm.")) for key in message.unexpected_keys)
    return model


@pytest.mark.parametrize("input_size", [224, 112])
def test_fine_tuning_a_gmae_checkpoint_with_maes_script_after_the_doc_edits(
    models_gmae, tmp_path, input_size
):
    path = tmp_path / "checkpoint-19.pth"
    pretrained = saved_finetune_pretraining(models_gmae, path, input_size)
    model = load_as_main_finetune_does(models_vit_module(with_doc_edit=True),
                                       finetune_args(input_size, path))
    for name, value in pretrained.state_dict().items():
        if name.startswith(("blocks.", "patch_embed.", "cls_token", "pos_embed")):
            assert torch.equal(model.state_dict()[name], value), name
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    samples = normalised_images(2, input_size)
    outputs = model(samples)  # engine_finetune's step
    loss = nn.functional.cross_entropy(outputs, torch.tensor([0, 3]))
    loss.backward()
    optimizer.step()
    assert outputs.shape == (2, 5) and torch.isfinite(loss)


def test_without_the_forward_edit_timm_1_stops_maes_fine_tuning(models_gmae, tmp_path):
    path = tmp_path / "checkpoint-19.pth"
    saved_finetune_pretraining(models_gmae, path, 32)
    model = load_as_main_finetune_does(models_vit_module(with_doc_edit=False),
                                       finetune_args(32, path))
    with pytest.raises((TypeError, AssertionError, ValueError),
                       match="attn_mask|Unknown pool type True"):
        model(normalised_images(2, 32))


# --- lightly -----------------------------------------------------------------------------------


@pytest.fixture
def lightly_block(monkeypatch):
    """The doc's lightly block, run on top of our lightly stand-in."""
    import lightly_like

    modules = {name: types.ModuleType(name) for name in
               ("lightly", "lightly.models", "lightly.models.modules")}
    modules["lightly.models.modules"].MaskedVisionTransformerTIMM = (
        lightly_like.MaskedVisionTransformerTIMM)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return run_block(doc_block("python", "class LightlyGMAE("), {})


def test_lightly_model_with_registers_never_hides_a_prefix_token_and_trains(lightly_block):
    import timm

    from splathead.adapters import wrap

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28,
                            depth=1, embed_dim=32, num_heads=2, init_values=1.0)
    model = lightly_block["LightlyGMAE"](vit, dim=32, depth=1, num_heads=2, num_queries=8,
                                         backend="torch")
    assert model.num_prefix_tokens == 5
    images, target = normalised_images(2, 28), torch.rand(2, 3, 28, 28)
    torch.manual_seed(1)
    loss, output = model(images, target)
    loss.backward()
    assert torch.isfinite(loss) and output.image.shape == (2, 3, 28, 28)
    assert vit.reg_token.grad.abs().sum() > 0  # the registers were encoded, never hidden
    # the tokens the decoder read are the adapter's for the same visible patches
    torch.manual_seed(1)
    mask = model.masking(2, 4)
    idx_keep, _ = lightly_block["to_lightly"](mask, num_prefix_tokens=5)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.encode(images, idx_keep=idx_keep),
                                   wrap(vit)(images, mask.ids_keep))


def test_lightlys_own_token_mask_reads_for_a_cls_only_model_and_is_refused_with_registers():
    from lightly_like import random_token_mask

    from splathead.mask_formats import from_lightly

    idx_keep, idx_mask = random_token_mask(4, 1 + 16, 0.75, torch.Generator().manual_seed(0))
    assert from_lightly(idx_keep, idx_mask, num_prefix_tokens=1).num_patches == 16
    hides_a_register = None
    for seed in range(100):
        idx_keep, idx_mask = random_token_mask(1, 5 + 16, 0.5, torch.Generator().manual_seed(seed))
        if (idx_mask < 5).any():
            hides_a_register = (idx_keep, idx_mask)
            break
    assert hides_a_register is not None
    with pytest.raises(ValueError, match="must not hold any prefix token"):
        from_lightly(*hides_a_register, num_prefix_tokens=5)

def test_the_docs_health_check_runs_on_the_gmae_and_calls_a_fresh_one_healthy(models_gmae,
                                                                              capsys):
    snippet = re.search(r"## Is it healthy\?.*?```\n(.*?)```", DOC.read_text(), re.S).group(1)
    torch.manual_seed(0)
    model = models_gmae.GaussianMAE(**TINY, decoder_kwargs=TINY_DECODER)
    exec(snippet, {"model": model, "imgs": normalised_images(2)})
    printed = capsys.readouterr().out
    assert "'border': 0.0" in printed and printed.strip().endswith("healthy")
