"""recipes/gmae_linprobe.py end to end on CPU: a tiny encoder on a tiny shapes task."""

from __future__ import annotations


import gmae_linprobe as recipe
import torch
from classify_runs import LINE, flags, newest, records
from splathead_recipes.classify import cross_entropy
from splathead_recipes.data import Batch
from test_recipe_encoders import pretraining_checkpoint


def test_probe_of_a_pretraining_checkpoint_trains_the_head_only_and_prints_the_best(
        tiny_task, tmp_path, capsys):
    gmae = pretraining_checkpoint(tmp_path / "pre" / "checkpoint-00000007.pt")
    output = tmp_path / "probe"
    args = flags(tiny_task, output, "--checkpoint",
                 str(tmp_path / "pre" / "checkpoint-00000007.pt"))
    args.remove("--model"), args.remove("gmae_vit_tiny")  # the checkpoint's
    assert recipe.main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert LINE.fullmatch(last), last
    result = records(output)[-1]
    assert result["event"] == "result" and result["line"] == last
    evals = [record for record in records(output) if record.get("event") == "eval"]
    assert [record["step"] for record in evals] == [2, 4]  # 16 images, batch 8: 2 steps/epoch
    assert result["top1"] == max(record["top1"] for record in evals)
    state = newest(output)["model"]
    encoder = {name.removeprefix("encoder.vit."): tensor
               for name, tensor in gmae.state_dict().items() if name.startswith("encoder.vit.")}
    for name, tensor in state.items():
        if not name.startswith(("head.", "fc_norm.")):
            assert torch.equal(tensor, encoder[name]), f"{name} changed"
    assert not torch.equal(state["head.1.weight"], torch.zeros_like(state["head.1.weight"]))
    assert "head.0.running_mean" in state and "head.0.weight" not in state  # BN, affine off


def test_only_the_head_gets_gradients(tiny_task):
    config = recipe.parse_linprobe(flags(tiny_task, "unused"))
    probe = recipe.build_probe(config, num_classes=4)
    before = {name: p.detach().clone() for name, p in probe.named_parameters()}
    loss, _ = cross_entropy(probe, Batch(torch.randn(4, 3, 32, 32), torch.arange(4), 0))
    loss.backward()
    trainable = {name for name, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    assert all(p.grad is None for name, p in probe.named_parameters() if name not in trainable)
    recipe.build_lars(probe, config).step()
    for name, p in probe.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name


def test_one_lars_step_trust_scales_the_weight_and_moves_the_bias_by_plain_sgd(tiny_task):
    """MAE's LARS: the weight matrix steps by ``lr * 0.001 |w| / |g| * g`` (trust ratio), the
    bias (1-D, left out of the adaptation) by ``lr * g``. The bias starts non-zero: timm's
    trust ratio is 1 for a zero parameter, which would hide an adapted bias."""
    config = recipe.parse_linprobe(flags(tiny_task, "unused"))
    probe = recipe.build_probe(config, num_classes=4)
    linear = probe.head[1]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        linear.bias.copy_(torch.randn(4, generator=generator))
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    linear.weight.grad = torch.randn(weight.shape, generator=generator)
    linear.bias.grad = 10 * torch.randn(4, generator=generator)
    recipe.build_lars(probe, config).step()
    lr = config.learning_rate
    trust = 0.001 * weight.norm() / linear.weight.grad.norm()
    torch.testing.assert_close(linear.weight.detach(), weight - lr * trust * linear.weight.grad)
    torch.testing.assert_close(linear.bias.detach(), bias - lr * linear.bias.grad)


def test_resume_is_bit_exact(tiny_task, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert recipe.main(flags(tiny_task, straight, "--checkpoint", "none")) == 0
    assert recipe.main(flags(tiny_task, resumed, "--checkpoint", "none", "--max-steps", "3")) == 0
    assert recipe.main(flags(tiny_task, resumed, "--checkpoint", "none", "--resume", "auto")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if LINE.fullmatch(line)]
    assert lines[0] == lines[-1]
    for name, tensor in newest(straight)["model"].items():
        assert torch.equal(tensor, newest(resumed)["model"][name]), name
    def comparable(output_dir, stop_step=None):  # the stopped slice evaluated at its last step
        return [{k: v for k, v in record.items() if k not in ("images_per_s", "param_checksums")}
                for record in records(output_dir)
                if not (record.get("event") == "eval" and record["step"] == stop_step)]

    assert comparable(resumed, stop_step=3) == comparable(straight)


def test_bad_flags_exit_2_before_work(tiny_task, tmp_path, capsys):
    no_file = str(tmp_path / "no.pt")
    assert recipe.main(flags(tiny_task, tmp_path / "a", "--checkpoint", no_file)) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert recipe.main(flags(tiny_task, tmp_path / "b", "--model", "no_such_vit")) == 2
    assert "--model 'no_such_vit'" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.jsonl").write_text("{}\n")
    assert recipe.main(flags(tiny_task, tmp_path / "c")) == 2
    assert "another run's files" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
