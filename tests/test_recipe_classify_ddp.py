"""The linear-probe and fine-tune recipes under torchrun: two gloo ranks on the CPU."""

from __future__ import annotations

import pytest
from classify_runs import LINE, flags, records, write_tiny_task
from test_recipe_train import ROOT, _output, _spawn


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_tiny_task(tmp_path_factory.mktemp("shapes") / "task")


@pytest.mark.parametrize("script", ["gmae_linprobe.py", "gmae_finetune.py"])
def test_two_gloo_ranks_keep_one_model_and_print_the_result(shapes, tmp_path, script):
    process = _spawn("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     str(ROOT / "recipes" / script),
                     *flags(shapes, tmp_path, "--checkpoint", "none"))
    output = _output(process, timeout=180)
    assert process.returncode == 0, output
    assert LINE.fullmatch(output.strip().splitlines()[-1]), output
    evaluations = [record for record in records(tmp_path) if record.get("event") == "eval"]
    assert [record["step"] for record in evaluations] == [2, 4]
    assert all(0 <= record["top1"] <= record["top5"] <= 100 for record in evaluations)
    (end,) = [record for record in records(tmp_path) if record.get("event") == "end"]
    assert end["param_checksums"][0] == end["param_checksums"][1]
