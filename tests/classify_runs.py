"""What the linear-probe and fine-tune recipe tests share: a tiny task, the flags of a tiny run
and readers of what a run wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from splathead_recipes.shapes_task import write_shapes_task

LINE = re.compile(r"top1=(\d+\.\d\d) top5=(\d+\.\d\d)")  # a classification recipe's last line


def write_tiny_task(root: Path) -> Path:
    """4 classes x (4 train + 3 val) shapes of 32 px under ``root``."""
    write_shapes_task(root, train_per_class=4, val_per_class=3, img_size=32, seed=0)
    return root


def flags(shapes: Path, output_dir: Path, *more: str) -> list[str]:
    """A demo-preset run of 2 epochs on ``shapes``: tiny encoder, 8 px patches, no workers."""
    return ["--preset", "demo", "--data-path", str(shapes), "--model", "gmae_vit_tiny",
            "--patch-size", "8", "--batch-size", "8", "--num-workers", "0", "--log-every", "1",
            "--epochs", "2", "--warmup-epochs", "1", "--eval-every", "1",
            "--output-dir", str(output_dir), *more]


def records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def newest(output_dir: Path) -> dict:
    return torch.load(sorted(output_dir.glob("checkpoint-*.pt"))[-1], weights_only=True)
