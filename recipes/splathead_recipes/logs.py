"""What rank 0 shows and writes: a progress bar, TensorBoard events, metrics.jsonl, PNG grids."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from splathead_recipes.checkpoint import write_text_atomic


log = logging.getLogger("gmae")

_ONCE_PER_RUN = ("end", "result")  # records of the end of a run slice, rewritten by the next


def setup_logging(is_main: bool) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout)


class MetricsLog:
    """Per-step metrics to ``metrics.jsonl`` and TensorBoard, a tqdm bar on the terminal.

    Resuming from step ``s`` drops records after ``s`` (written after the checkpoint by the run
    that was interrupted) and the ``end`` / ``result`` records of earlier slices, so the file
    holds each step once.
    """

    def __init__(self, output_dir: Path, *, start_step: int, total_steps: int,
                 images_per_step: int, steps_per_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = output_dir / "metrics.jsonl"
        self._drop_records_after(start_step)
        self.jsonl = open(self.path, "a", buffering=1)
        self.tensorboard = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step)
        self.postfix: dict[str, str] = {}
        self.images_per_step = images_per_step
        self.steps_per_epoch = steps_per_epoch
        self._clock, self._clock_step = time.perf_counter(), start_step
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)

    def _drop_records_after(self, step: int) -> None:
        """Keep the records up to ``step``; drop a line torn by a kill during its write (cut
        inside a multi-byte character too: the file is read as bytes, line by line)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        kept = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError, or UnicodeDecodeError for a torn character
                log.warning("%s line %d is not a complete record (a write cut short?); "
                            "dropped: %r", self.path, number, line[:80])
                continue
            if record.get("event") not in _ONCE_PER_RUN and record["step"] <= step:
                kept.append(line.decode())
        rewritten = "".join(line + "\n" for line in kept)
        if rewritten.encode() != data:
            write_text_atomic(rewritten, self.path)

    def log_step(self, step: int, *, loss: float, lr: float, grad_norm: float,
                 skipped_images: int, extra: dict[str, float], full: bool) -> None:
        """After optimiser step ``step``: move the bar; write a record with the training
        metrics when ``full`` (a logging step), and whenever hooks measured ``extra`` metrics.
        """
        record = dict(extra)
        if full:
            now = time.perf_counter()
            images_per_s = ((step - self._clock_step) * self.images_per_step
                            / max(now - self._clock, 1e-9))
            self._clock, self._clock_step = now, step
            record = {"loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "images_per_s": images_per_s, "skipped_images": skipped_images, **record}
            self.advance(0, img_s=f"{images_per_s:.0f}")
        if record:
            self.write({"step": step, "epoch": step / self.steps_per_epoch, **record})
        self.advance(1, loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    def advance(self, steps: int, **postfix: str) -> None:
        """Move the bar on by ``steps`` and update (some of) its loss / lr / img_s fields."""
        self.postfix.update(postfix)
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(steps)

    def event(self, name: str, step: int, **fields: Any) -> None:
        """A record that is not a metric, e.g. the end of the run."""
        self.jsonl.write(json.dumps({"event": name, "step": step, **fields}) + "\n")

    def evaluation(self, step: int, results: dict[str, Any]) -> None:
        """One ``{"event": "eval", "step": step, **results}`` record; the same values to
        TensorBoard under ``eval/`` (a list as ``eval/<name>/<index>``)."""
        self.event("eval", step, **results)
        self._clock, self._clock_step = time.perf_counter(), step  # images/s: training only
        for name, value in results.items():
            values = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
            for index, number in values:
                if isinstance(number, (int, float)):
                    tag = f"eval/{name}" if index is None else f"eval/{name}/{index}"
                    self.tensorboard.add_scalar(tag, number, step)

    def write(self, record: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        step = record["step"]
        for name, value in record.items():
            if name not in ("step", "epoch") and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self.bar.close()
        self.jsonl.close()
        self.tensorboard.close()
