"""Guards around hours of training: preflight checks before it starts, and a stop on a non-finite loss.

- :func:`preflight` checks, before any model is loaded, that the output folder can be written and that its
  disk has room for the checkpoints (weights + AdamW moments, ``save_total_limit`` of them, plus the final
  model). It raises a :class:`~rag_rerank.errors.RagRerankError` naming the folder and what to do.
- :class:`NonFiniteLossCallback` stops training at the first logged NaN/inf loss; the trainer's caller raises
  :class:`TrainingDivergedError` with the step and the levers (a lower learning rate, fp32, the data).

Example:
    >>> import tempfile
    >>> preflight(tempfile.mkdtemp(), model_bytes=1_000, rows=10)["free_bytes"] > 0
    True
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rag_rerank.errors import DataError, RagRerankError

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossCallback", "TrainingDivergedError", "checkpoint_bytes", "model_bytes", "preflight"]


class TrainingDivergedError(RagRerankError):
    """The training loss became NaN or infinite; the run was stopped."""


def model_bytes(model: Any) -> int:
    """Bytes of a torch model's parameters (what one saved copy of the weights takes)."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def checkpoint_bytes(weights: int, keep: int = 2) -> int:
    """Disk for ``keep`` checkpoints (weights + two AdamW moments each) plus the final model, with 10% slack."""
    return int(weights * (3 * keep + 1) * 1.1)


def preflight(output_dir: str | os.PathLike, *, model_bytes: int, rows: int, keep_checkpoints: int = 2) -> dict:
    """Fail fast, before hours of work, on an unwritable output folder, a full disk or no training rows.

    Args:
        output_dir: the model folder (created if missing).
        model_bytes: size of the model's weights (:func:`model_bytes`).
        rows: training rows (groups or pairs) that will be used.
        keep_checkpoints: checkpoints kept at once (``save_total_limit``).

    Returns:
        ``{"output_dir", "free_bytes", "need_bytes"}``.

    Raises:
        DataError: no training rows. RagRerankError: the folder cannot be created or written, or the disk
            lacks room for the checkpoints.
    """
    out = Path(output_dir)
    if rows <= 0:
        raise DataError("no training rows: the dataset (or its train split) is empty; generate questions for more "
                        "chunks (rag-rerank generate) and mine negatives (rag-rerank mine)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise RagRerankError(f"output folder {out} cannot be written ({e.strerror or e}).\n"
                             "Fix: pass --out to a folder you can write to.") from e
    free = shutil.disk_usage(out).free
    need = checkpoint_bytes(model_bytes, keep_checkpoints)
    if free < need:
        raise RagRerankError(
            f"{out} has {free / 1e9:.2f} GB free; training needs about {need / 1e9:.2f} GB for {keep_checkpoints} "
            f"checkpoints (weights + optimizer state) and the final model.\n"
            "Fix: free disk space or pass --out on a bigger disk."
        )
    logger.info("preflight ok: %s writable, %.1f GB free, %.2f GB needed", out, free / 1e9, need / 1e9)
    return {"output_dir": str(out), "free_bytes": free, "need_bytes": need}


class NonFiniteLossCallback(TrainerCallback):
    """Stop training at the first logged loss (or gradient norm) that is NaN or infinite; ``step``/``loss`` say where.

    Use it with ``logging_nan_inf_filter=False`` in the training arguments (see ``on_log``).
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self.loss: float | None = None

    @property
    def fired(self) -> bool:
        return self.step is not None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> Any:
        # transformers' default logging_nan_inf_filter=True logs a NaN loss as the running mean (0.0 at the
        # start), so a diverged run looks healthy; the trainers here turn that filter off, and the gradient
        # norm is checked too.
        logs = logs or {}
        bad = {k: logs[k] for k in ("loss", "grad_norm") if k in logs and not math.isfinite(float(logs[k]))}
        if bad and not self.fired:
            self.step, self.loss = int(state.global_step), float(bad.get("loss", bad.get("grad_norm")))
            logger.error("training %s at step %d: stopping", bad, self.step)
            control.should_training_stop = True
        return control

    def message(self, what: str = "training") -> str:
        return (f"{what} diverged: the loss was {self.loss} at step {self.step}, so the run was stopped.\n"
                "Fix: lower --lr (and the head learning rate), train in fp32 (--precision no), and check the "
                "training rows for empty or garbage texts.")
