"""A pretraining checkpoint as a Hub-style model folder that ``GMAE.from_pretrained`` loads.

    python recipes/export_pretrained.py --checkpoint runs/demo/checkpoint-00000384.pt \\
        --output-dir runs/demo_pretrained
    python recipes/export_pretrained.py --checkpoint runs/demo/checkpoint-00000384.pt \\
        --output-dir runs/demo_pretrained --push-to-hub you/gmae-demo

Writes ``config.json`` (every setting that rebuilds the model), ``model.safetensors`` and a model
card ``README.md`` whose evaluation table holds the run's ``eval`` records up to the
checkpoint's step (from the ``metrics.jsonl`` beside it). ``--output-dir`` must not exist or be
empty. ``--push-to-hub`` also uploads the folder (needs ``huggingface_hub`` and a login). The
last line printed is the folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splathead_recipes.checkpoint import CheckpointError
from splathead_recipes.hub import export_pretrained


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 written, 2 for a checkpoint or output folder that cannot be used."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint of recipes/gmae_imagenet.py")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="new (or empty) folder for config.json, model.safetensors, README.md")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                        help="also upload the folder to this Hugging Face Hub repo")
    args = parser.parse_args(argv)
    try:
        folder = export_pretrained(args.checkpoint, args.output_dir, repo_id=args.push_to_hub)
    except CheckpointError as error:
        print(f"error: --checkpoint {error}", file=sys.stderr)
        return 2
    except FileExistsError as error:
        print(f"error: --output-dir {error}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
