"""The usage examples in the README and docs run as written."""

import re
from pathlib import Path

import pytest
import torch

from splathead.render import numba_available

ROOT = Path(__file__).parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def run(code: str, filename: str) -> dict:
    namespace: dict = {}
    exec(compile(code, filename, "exec"), namespace)
    return namespace


def test_readme_usage_example_runs(capsys):
    run(python_blocks(ROOT / "README.md")[0], "README.md")
    backend = "numba" if numba_available() else "torch"
    assert capsys.readouterr().out.startswith(f"{backend} torch.Size([2, 3, 224, 224])")


def test_renderer_doc_example_runs():
    namespace = run(python_blocks(ROOT / "docs/renderer.md")[0], "docs/renderer.md")
    out = namespace["out"]
    assert out.image.shape == (2, 3, 64, 64)
    assert out.depth.shape == (2, 1, 64, 64)


def test_zeroshot_doc_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = run(python_blocks(ROOT / "docs/zeroshot.md")[0], "docs/zeroshot.md")
    assert namespace["edges"].shape == (2, 64, 64)
    assert (tmp_path / "layers.png").stat().st_size > 0


def test_evaluation_doc_example_runs(capsys):
    namespace = run(python_blocks(ROOT / "docs/evaluation.md")[0], "docs/evaluation.md")
    assert namespace["scores"].shape == (8,)
    assert all(p.grad is not None for p in namespace["probes"].parameters())


def test_pretraining_doc_recipe_example_trains_and_logs_its_hook(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    run(python_blocks(ROOT / "docs/pretraining.md")[0], "docs/pretraining.md")
    output = tmp_path / "runs/classifier_example"
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "train/accuracy" in record] == [1, 2]
    assert (output / "checkpoint-00000002.pt").is_file()


def test_ply_doc_example_writes_both_images(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    namespace = run(python_blocks(ROOT / "docs/ply.md")[0], "docs/ply.md")
    for index, name in enumerate(["first.ply", "second.ply"]):
        vertices = plyfile.PlyData.read(str(tmp_path / name))["vertex"]
        x = torch.from_numpy(vertices["x"].copy())
        assert torch.equal(x, namespace["out"].gaussians.means[index, :, 0])


def test_pretrained_doc_example_round_trips_a_model(tmp_path):
    namespace = run(python_blocks(ROOT / "docs/pretrained.md")[0], "docs/pretrained.md")
    assert sorted(path.name for path in (tmp_path / "tiny-gmae").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    assert namespace["loaded"].num_patches == namespace["model"].num_patches


def test_video_doc_example_runs(capsys):
    pytest.importorskip("transformers")
    namespace = run(python_blocks(ROOT / "docs/video.md")[0], "docs/video.md")
    assert namespace["out"].image.shape == (2, 4, 3, 32, 32)
    assert namespace["flow"].shape == (2, 4, 16, 3)
    assert capsys.readouterr().out.startswith("torch.Size([2, 4, 3, 32, 32])")


def test_tracking_doc_example_runs(capsys):
    pytest.importorskip("transformers")
    blocks = python_blocks(ROOT / "docs/zeroshot.md")
    (block,) = [code for code in blocks if "track_points" in code]
    namespace = run(block, "docs/zeroshot.md")
    assert namespace["result"].tracks.shape == (2, 2, 4, 2)
    assert namespace["metrics"].average_jaccard.tolist() == [1.0, 1.0]
