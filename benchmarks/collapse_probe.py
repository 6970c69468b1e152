"""The collapse of docs/pretraining.md ("A collapse in the first steps"), measured.

The drop-in GMAE of docs/drop_in.md on the MAE-structured stand-in of tests/test_drop_in.py
(MAE's encoder and masking), with MAE's optimiser (timm's weight-decay groups, AdamW (0.9,
0.95), wd 0.05, no clipping) on random crops of scikit-image's photos, batch 4, fp32, CPU.
Every step records the loss, the head's pre-activations (centre x, y and opacity, before their
sigmoids), the gradient reaching them, and the Gaussian health shares (splathead.health).

    python benchmarks/collapse_probe.py run --out nowarmup.json     # lr 1.56e-4, no warmup
    python benchmarks/collapse_probe.py run --warmup 20 --out warmup.json
    python benchmarks/collapse_probe.py first-step                  # which weights move it
    python benchmarks/collapse_probe.py plot nowarmup.json warmup.json \\
        --png docs/images/collapse.png

``--width 512`` (the default) is the paper's decoder (512 wide, 8 blocks, 256 Gaussians) after a
4-block 768-wide encoder at 32 px in 4 px patches; ``--width 128`` the doc's laptop model.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "recipes")]

import test_drop_in  # noqa: E402  (the MAE stand-in)
from splathead import masked_patch_mse  # noqa: E402
from splathead.health import gaussian_health  # noqa: E402
from splathead.masking import PatchMask  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
GROUPS = {"centre_xy": (0, 2), "scale": (3, 6), "rotation": (6, 10), "colour": (10, 13),
          "opacity": (13, 14)}


def build(width: int, head_init: str, seed: int) -> torch.nn.Module:
    models_mae = types.ModuleType("models_mae")
    models_mae.MaskedAutoencoderViT = test_drop_in.MaskedAutoencoderViT
    sys.modules["models_mae"] = models_mae
    module = types.ModuleType("models_gmae")
    code = test_drop_in.python_block(test_drop_in.DOC.read_text())
    exec(compile(code, str(test_drop_in.DOC), "exec"), module.__dict__)
    torch.manual_seed(seed)
    if width == 512:
        model = module.mae_vit_tiny_patch4(
            img_size=32, embed_dim=768, depth=4, num_heads=12,
            decoder_kwargs=dict(backend="torch", dim=512, depth=8, num_heads=16,
                                num_queries=256, max_scale=0.125))
    else:
        model = module.mae_vit_tiny_patch4(img_size=32, decoder_kwargs={"backend": "torch"})
    if head_init == "default":  # PyTorch's Linear init, as the authors' head keeps
        model.gmae_decoder.head.proj.reset_parameters()
    return model


class PhotoBatches:
    def __init__(self, batch_size: int, seed: int) -> None:
        import skimage.data
        from splathead_recipes.data import PHOTOS
        from torchvision.transforms import v2

        self.photos = [torch.from_numpy(getattr(skimage.data, name)()[..., :3])
                       .permute(2, 0, 1).contiguous() for name in PHOTOS]
        self.crop = v2.Compose([v2.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True),
                                v2.RandomHorizontalFlip()])
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> torch.Tensor:
        crops = [self.crop(self.photos[self.rng.integers(len(self.photos))]).float() / 255
                 for _ in range(self.batch_size)]
        return (torch.stack(crops).clamp(0, 1) - MEAN) / STD


def run(args) -> None:
    from timm.optim import param_groups_weight_decay

    model = build(args.width, args.head_init, args.seed)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=args.lr,
                                  betas=(0.9, 0.95))
    batches, records = PhotoBatches(args.batch, args.seed), []
    decoder = model.gmae_decoder
    weight = decoder.head.proj.weight
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = batches()
        latent, mask, ids_restore = model.forward_encoder(images, 0.75)
        ids_keep = PatchMask.from_ids_restore(ids_restore, latent.shape[1] - 1).ids_keep
        tokens = decoder.query_decoder(latent, ids_keep)
        gaussians = decoder.head(tokens)
        render = decoder.renderer(gaussians)
        target = (images * STD + MEAN).clamp(0, 1)
        loss = masked_patch_mse(render.image, target, mask, model.patch_embed.patch_size)
        optimizer.zero_grad()
        loss.backward()
        raw = F.linear(tokens.detach(), weight.detach())  # the head's pre-activations
        health = gaussian_health(gaussians.detach(), render.alpha.detach(), decoder.camera)
        record = {"step": step, "lr": lr, "loss": loss.item(),
                  "centre_preact": raw[..., :2].abs().mean().item(),
                  "opacity_preact": raw[..., 13].mean().item(),
                  **{name: share.mean().item() for name, share in health._asdict().items()},
                  **{f"grad_{name}": weight.grad[i:j].norm().item()
                     for name, (i, j) in GROUPS.items()},
                  "grad_norm": torch.nn.utils.get_total_norm(
                      [p.grad for p in model.parameters() if p.grad is not None]).item()}
        records.append(record)
        optimizer.step()
        print(json.dumps({k: round(v, 5) for k, v in record.items()}), flush=True)
    Path(args.out).write_text(json.dumps(records))


def group_of(name: str) -> str:
    if not name.startswith("gmae_decoder."):
        return "encoder"
    name = name.removeprefix("gmae_decoder.")
    if name.startswith("query_decoder.blocks."):
        part = name.split(".")[3]
        return {"attn": "decoder attention", "mlp": "decoder MLPs"}.get(part, "decoder block norms")
    return {"head": "head", "query_decoder": "decoder " + name.split(".")[1]}[name.split(".")[0]]


def first_step(args) -> None:
    """AdamW's first step (bias-corrected: ``lr g / (|g| + eps)``, a sign step) applied to one
    group of weights at a time; the head's pre-activations on the same batch and mask after it."""
    model = build(args.width, args.head_init, args.seed)
    images = PhotoBatches(4, args.seed)()
    decoder = model.gmae_decoder

    def preactivations() -> torch.Tensor:
        torch.manual_seed(1)
        with torch.no_grad():
            latent, _, ids_restore = model.forward_encoder(images, 0.75)
            ids_keep = PatchMask.from_ids_restore(ids_restore, latent.shape[1] - 1).ids_keep
            return F.linear(decoder.query_decoder(latent, ids_keep), decoder.head.proj.weight)

    before = preactivations()
    torch.manual_seed(1)
    model(images, 0.75)[0].backward()
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = sorted({group_of(name) for name in saved}) + ["all"]
    print(f"| weights stepped | mean shift of centre x, y pre-activation | of opacity's |")
    print("|---|---|---|")
    for chosen in groups:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved[name])
                if p.grad is not None and chosen in ("all", group_of(name)):
                    p.sub_(args.lr * p.grad / (p.grad.abs() + 1e-8))
        after = preactivations()
        shift = (after - before)
        print(f"| {chosen} | {shift[..., :2].abs().mean():.3f} | {shift[..., 13].mean():+.3f} |")


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "masked MSE loss"), ("centre_preact", "|centre x, y pre-activation|"),
              ("border", "gauss_border"), ("coverage", "gauss_coverage"),
              ("grad_centre_xy", "gradient norm, centre x, y rows of the head")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for path, label in zip(args.runs, args.labels or args.runs):
        records = json.loads(Path(path).read_text())
        steps = [record["step"] for record in records]
        for axis, (key, title) in zip(axes, panels):
            axis.plot(steps, [record[key] for record in records], label=label)
            axis.set_title(title, fontsize=10)
            axis.set_xlabel("step")
    axes[-1].set_yscale("log")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.png, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "first-step"):
        command = commands.add_parser(name)
        command.add_argument("--lr", type=float, default=1.56e-4)
        command.add_argument("--width", type=int, choices=(128, 512), default=512)
        command.add_argument("--head-init", choices=("xavier", "default"), default="xavier")
        command.add_argument("--seed", type=int, default=0)
        if name == "run":
            command.add_argument("--steps", type=int, default=40)
            command.add_argument("--warmup", type=int, default=0)
            command.add_argument("--batch", type=int, default=4)
            command.add_argument("--out", required=True)
    drawing = commands.add_parser("plot")
    drawing.add_argument("runs", nargs="+")
    drawing.add_argument("--labels", nargs="+")
    drawing.add_argument("--png", required=True)
    args = parser.parse_args()
    {"run": run, "first-step": first_step, "plot": plot}[args.command](args)


if __name__ == "__main__":
    main()
