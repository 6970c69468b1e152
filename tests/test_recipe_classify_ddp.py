"""The linear-probe and fine-tune recipes on two gloo ranks: under torchrun, and the evaluation."""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from classify_runs import LINE, flags, records
from splathead_recipes import distributed
from splathead_recipes.classify import TopKEvaluation
from splathead_recipes.crops import CentreCrop
from splathead_recipes.data import SafeImageFolder
from splathead_recipes.distributed import Runtime
from test_recipe_train import ROOT, _output, _spawn
from torch import nn


@pytest.mark.parametrize("script", ["gmae_linprobe.py", "gmae_finetune.py"])
def test_two_gloo_ranks_keep_one_model_and_print_the_result(tiny_task, tmp_path, script):
    process = _spawn("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     str(ROOT / "recipes" / script),
                     *flags(tiny_task, tmp_path, "--checkpoint", "none"))
    output = _output(process, timeout=180)
    assert process.returncode == 0, output
    assert LINE.fullmatch(output.strip().splitlines()[-1]), output
    evaluations = [record for record in records(tmp_path) if record.get("event") == "eval"]
    assert [record["step"] for record in evaluations] == [2, 4]
    assert all(0 <= record["top1"] <= record["top5"] <= 100 for record in evaluations)
    (end,) = [record for record in records(tmp_path) if record.get("event") == "end"]
    assert end["param_checksums"][0] == end["param_checksums"][1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scores(root: Path, runtime: Runtime) -> dict[str, float]:
    """TopKEvaluation of one fixed classifier on ``root/val`` (12 images, batches of 4)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    dataset = SafeImageFolder(root / "val", CentreCrop(32))
    evaluation = TopKEvaluation(model, dataset, runtime=runtime, batch_size=4, num_workers=0,
                                seed=0, steps_per_epoch=1)
    return evaluation(1)


def _rank(rank: int, port: int, root: Path, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    runtime = distributed.setup("cpu", "gloo")
    try:
        results.put((rank, _scores(root, runtime)))
    finally:
        distributed.teardown()


def test_two_ranks_score_every_val_image_once_as_one_process_does(tiny_task):
    """Each rank scores every other image and the counts are summed: the same top-1 / top-5 as
    one process scoring all 12 (an image counted twice or left out would move them)."""
    single = _scores(tiny_task, Runtime(rank=0, local_rank=0, world_size=1,
                                     device=torch.device("cpu")))
    scores = two_gloo_ranks(_rank, tiny_task)
    assert scores[0] == scores[1] == single


def two_gloo_ranks(target, *args) -> dict[int, Any]:
    """``{rank: result}`` of ``target(rank, port, *args, results)`` run by 2 spawned processes,
    each putting ``(rank, result)`` on ``results``; both must exit 0."""
    context = multiprocessing.get_context("spawn")
    results, port = context.Queue(), _free_port()
    ranks = [context.Process(target=target, args=(rank, port, *args, results), daemon=True)
             for rank in range(2)]
    for process in ranks:
        process.start()
    try:
        found = dict(results.get(timeout=120) for _ in ranks)
        for process in ranks:
            process.join(timeout=60)
            assert process.exitcode == 0
    finally:  # a failed or stuck rank never outlives the test
        for process in ranks:
            process.kill()
            process.join()
    return found
