"""A pretraining checkpoint as a Hub-style model folder (``GMAE.save_pretrained``), with the run's
evaluation records in its model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splathead_recipes import checkpoint
from splathead_recipes.models import model_from_state


def evaluation_records(run_dir: Path, up_to_step: int) -> list[dict[str, Any]]:
    """The ``eval`` records of ``run_dir/metrics.jsonl`` up to ``up_to_step`` (none without the
    file; a line a kill cut short is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "eval" and record.get("step", up_to_step + 1) <= up_to_step:
            records.append(record)
    return records


def export_pretrained(checkpoint_path: Path, output_dir: Path, *,
                      repo_id: str | None = None) -> Path:
    """Write ``checkpoint_path``'s GMAE to ``output_dir`` (which must not exist, or be empty:
    nothing is replaced) with ``save_pretrained``, the model card listing the run's evaluations
    up to the checkpoint's step; with ``repo_id`` also upload it to that Hub repo.

    Raises :class:`~splathead_recipes.checkpoint.CheckpointError` for a file that is no
    pretraining checkpoint, ``FileExistsError`` for an ``output_dir`` that holds files.
    """
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} exists and is not an empty folder; an export never "
                              f"replaces files")
    state = checkpoint.load(checkpoint_path)
    model = model_from_state(state, checkpoint_path)
    records = evaluation_records(checkpoint_path.parent, int(state.get("step", 0)))
    model.save_pretrained(output_dir, evaluation=records)
    if repo_id is not None:
        model.push_to_hub(repo_id, evaluation=records)
    return output_dir
