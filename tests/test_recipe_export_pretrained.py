"""recipes/export_pretrained.py: a pretraining checkpoint becomes a folder GMAE.from_pretrained
loads, with the run's evaluation records up to the checkpoint's step in its model card."""

import dataclasses
import json

import pytest
import torch

from splathead import GMAE

import export_pretrained
from splathead_recipes.config import Config
from splathead_recipes.models import build_model


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with a step-8 checkpoint and evaluation records at steps 4, 8 and 12."""
    run = tmp_path / "run"
    run.mkdir()
    config = Config(model="gmae_vit_tiny", img_size=32, num_gaussians=16)
    torch.manual_seed(0)
    model = build_model(config)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config), "step": 8},
               run / "checkpoint-00000008.pt")
    lines = [json.dumps({"step": 4, "loss": 0.1})]
    lines += [json.dumps({"event": "eval", "step": step, "psnr_masked": 10.0 + step})
              for step in (4, 8, 12)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run, model


def test_a_checkpoint_exports_to_a_folder_that_loads_the_same_weights(run_dir, tmp_path, capsys):
    run, model = run_dir
    output = tmp_path / "exported"
    argv = ["--checkpoint", str(run / "checkpoint-00000008.pt"), "--output-dir", str(output)]
    assert export_pretrained.main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(output)
    loaded = GMAE.from_pretrained(output)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    card = (output / "README.md").read_text()
    assert "| 4 | 14 |" in card and "| 8 | 18 |" in card and "| 12 |" not in card


def test_an_output_folder_that_holds_files_is_refused(run_dir, tmp_path, capsys):
    run, _ = run_dir
    output = tmp_path / "taken"
    output.mkdir()
    (output / "notes.txt").write_text("another run's file")
    argv = ["--checkpoint", str(run / "checkpoint-00000008.pt"), "--output-dir", str(output)]
    assert export_pretrained.main(argv) == 2
    assert "--output-dir" in capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]


def test_a_file_that_is_no_checkpoint_is_refused_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    argv = ["--checkpoint", str(bad), "--output-dir", str(tmp_path / "out")]
    assert export_pretrained.main(argv) == 2
    error = capsys.readouterr().err
    assert "--checkpoint" in error and str(bad) in error
    assert not (tmp_path / "out").exists()
