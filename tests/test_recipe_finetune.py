"""recipes/gmae_finetune.py end to end on CPU: a tiny encoder on a tiny shapes task."""

from __future__ import annotations

import dataclasses

import gmae_finetune as recipe
import pytest
import torch
from classify_runs import LINE, flags, newest, records
from splathead.adapters import export_timm
from splathead_recipes.finetune import build_optimizer
from test_finetune import _mae_layer_id
from test_recipe_encoders import pretraining_checkpoint
from torch import nn


def test_fine_tune_of_a_pretraining_checkpoint_trains_everything_and_prints_the_final_epoch(
        tiny_task, tmp_path, capsys):
    gmae = pretraining_checkpoint(tmp_path / "pre" / "checkpoint-00000007.pt")
    output = tmp_path / "finetune"
    args = flags(tiny_task, output, "--checkpoint",
                 str(tmp_path / "pre" / "checkpoint-00000007.pt"),
                 "--model-ema", "--model-ema-warmup")
    args.remove("--model"), args.remove("gmae_vit_tiny")  # the checkpoint's
    assert recipe.main(args) == 0
    *_, before_last, last = capsys.readouterr().out.strip().splitlines()
    assert LINE.fullmatch(last), last
    result = records(output)[-1]
    assert result["event"] == "result" and result["line"] == last
    evals = [record for record in records(output) if record.get("event") == "eval"]
    assert [record["step"] for record in evals] == [2, 4]  # 16 images, batch 8: 2 steps/epoch
    assert (result["step"], result["top1"], result["top5"]) == (
        4, evals[-1]["top1"], evals[-1]["top5"])
    best = max(evals, key=lambda record: record["top1"])  # the first of equals, as TopKEvaluation
    assert (result["best_step"], result["best_top1"], result["best_top5"]) == (
        best["step"], best["top1"], best["top5"])
    assert before_last == (f"best epoch (step {best['step']}): top1={best['top1']:.2f} "
                           f"top5={best['top5']:.2f}; final epoch:")
    assert all(0 <= record["ema_top1"] <= 100 for record in evals)
    state = newest(output)
    encoder = {name.removeprefix("encoder.vit."): tensor
               for name, tensor in gmae.state_dict().items() if name.startswith("encoder.vit.")}
    changed = {name for name, tensor in state["model"].items()
               if name in encoder and not torch.equal(tensor, encoder[name])}
    assert {"pos_embed", "cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
            "blocks.2.mlp.fc2.weight"} <= changed
    assert "norm.weight" not in state["model"]  # MAE's avg pooling: a fresh fc_norm instead
    ema = state["extras"]["model_ema"]
    assert set(ema) == {f"module.{name}" for name in state["model"]}
    assert not torch.equal(ema["module.head.weight"], state["model"]["head.weight"])


def test_resume_is_bit_exact_with_mixup_randaugment_erasing_and_ema(tiny_task, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    ema = ("--model-ema", "--model-ema-decay", "0.5")
    assert recipe.main(flags(tiny_task, straight, *ema)) == 0
    assert recipe.main(flags(tiny_task, resumed, *ema, "--max-steps", "3")) == 0
    assert recipe.main(flags(tiny_task, resumed, *ema, "--resume", "auto")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if LINE.fullmatch(line)]
    assert lines[0] == lines[-1]
    for part in ("model", "optimizer"):
        torch.testing.assert_close(newest(resumed)[part], newest(straight)[part], rtol=0, atol=0)
    torch.testing.assert_close(newest(resumed)["extras"], newest(straight)["extras"], rtol=0,
                               atol=0)

    def comparable(output_dir, stop_step=None):  # the stopped slice evaluated at its last step
        return [{k: v for k, v in record.items() if k not in ("images_per_s", "param_checksums")}
                for record in records(output_dir)
                if not (record.get("event") == "eval" and record["step"] == stop_step)]

    assert comparable(resumed, stop_step=3) == comparable(straight)


@pytest.mark.parametrize("source", ["none", "pretraining", "export"])
def test_every_encoder_source_gives_maes_fine_tuning_model(tiny_task, tmp_path, source):
    more, pretrained = [], None
    if source != "none":
        pretrained = pretraining_checkpoint(tmp_path / "checkpoint-00000007.pt").encoder.vit
        path = tmp_path / "checkpoint-00000007.pt"
        if source == "export":
            path = export_timm(pretrained, tmp_path / "encoder.safetensors")
        more = ["--checkpoint", str(path)]
    config = recipe.parse_finetune(flags(tiny_task, tmp_path / "unused", *more))
    if source == "pretraining":
        config = dataclasses.replace(config, model=None)  # the checkpoint's
    model = recipe.build_classifier(config, num_classes=4)
    if pretrained is not None:
        assert torch.equal(model.blocks[1].attn.qkv.weight, pretrained.blocks[1].attn.qkv.weight)
        assert torch.equal(model.pos_embed, pretrained.pos_embed)
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(model.norm, nn.Identity) and model.global_pool == "avg"
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])  # timm's linear rule up to --drop-path
    assert model.head.weight.std() < 1e-4 and not model.head.bias.any()  # MAE's N(0, 2e-5)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    scales = {id(p): group["lr_scale"] for group in optimizer.param_groups
              for p in group["params"]}
    for name, param in model.named_parameters():
        assert scales[id(param)] == pytest.approx(0.65 ** (4 - _mae_layer_id(name, 4))), name


def test_bad_flags_exit_2_before_work(tiny_task, tmp_path, capsys):
    assert recipe.main(flags(tiny_task, tmp_path / "a", "--batch-size", "6", "--accum-steps",
                             "2")) == 2
    assert "even" in capsys.readouterr().err
    assert recipe.main(flags(tiny_task, tmp_path / "b", "--layer-decay", "0")) == 2
    assert "--layer-decay" in capsys.readouterr().err
    assert recipe.main(flags(tiny_task, tmp_path / "c", "--auto-augment", "bogus")) == 2
    assert "--auto-augment 'bogus'" in capsys.readouterr().err
    assert recipe.main(flags(tiny_task, tmp_path / "e", "--crop-style", "tf")) == 2
    assert "--crop-style tf: the fine-tune crops with timm's" in capsys.readouterr().err
    no_file = str(tmp_path / "no.pt")
    assert recipe.main(flags(tiny_task, tmp_path / "d", "--checkpoint", no_file)) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcd")
