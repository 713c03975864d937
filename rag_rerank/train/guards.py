"""Guards around hours of training: a preflight before it starts, a stop on a non-finite loss, the sanity gate
that stops a run stuck on the uniform-loss plateau, and the verdict on the result.

- :func:`preflight` checks, before any model is loaded, that the output folder can be written and that its
  disk has room for the checkpoints (weights + AdamW moments, ``save_total_limit`` of them, plus the final
  model). It raises a :class:`~rag_rerank.errors.RagRerankError` naming the folder and what to do.
- :class:`NonFiniteLossCallback` stops training at the first logged NaN/inf loss; the trainer's caller raises
  :class:`TrainingDivergedError` with the step and the levers (a lower learning rate, fp32, the data).
- :class:`SanityGateCallback` stops (or warns about) a reranker that is not learning, and :func:`verdict_for`
  judges the result against the first stage and the base model.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from rag_rerank.errors import DataError, RagRerankError

logger = logging.getLogger(__name__)

__all__ = [
    "LEVERS", "DeadlineCallback", "NonFiniteLossCallback", "SanityGateCallback", "TrainingCollapsedError",
    "TrainingDivergedError", "checkpoint_bytes", "constant_bce_loss", "model_bytes", "preflight", "quiet",
    "verdict_for",
]


def quiet(trainer: Any) -> Any:
    """``trainer`` without transformers' ``PrinterCallback``, which prints every log dict to stdout when the progress
    bar is off (library code does not print; the losses still reach the model card and ``trainer.state``)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


class TrainingDivergedError(RagRerankError):
    """The training loss became NaN or infinite; the run was stopped."""


def model_bytes(model: Any) -> int:
    """Bytes of a torch model's parameters (what one saved copy of the weights takes)."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def checkpoint_bytes(weights: int, keep: int = 2) -> int:
    """Disk for ``keep`` checkpoints (weights + two AdamW moments each) plus the final model, with 10% slack."""
    return int(weights * (3 * keep + 1) * 1.1)


def preflight(out_dir: str | os.PathLike, *, model_bytes: int, rows: int, keep_checkpoints: int = 2) -> dict:
    """Fail fast, before hours of work, on an unwritable output folder, a full disk or no training rows.

    Args:
        out_dir: the model folder (created if missing).
        model_bytes: size of the model's weights (:func:`model_bytes`).
        rows: training rows (groups or pairs) that will be used.
        keep_checkpoints: checkpoints kept at once (``save_total_limit``).

    Returns:
        ``{"out_dir", "free_bytes", "need_bytes"}``.

    Raises:
        DataError: no training rows. RagRerankError: the folder cannot be created or written, or the disk
            lacks room for the checkpoints.
    """
    out = Path(out_dir)
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
    return {"out_dir": str(out), "free_bytes": free, "need_bytes": need}


class DeadlineCallback(TrainerCallback):
    """Stop training when the wall clock passes ``deadline`` (``time.time()`` seconds): a time budget.

    The trainer then keeps the best evaluated checkpoint (``load_best_model_at_end``), so the run ends with a usable
    model rather than none.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired_at: int | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        import time

        if time.time() >= self.deadline and self.fired_at is None:
            self.fired_at = int(state.global_step)
            logger.warning("time budget spent at step %d: stopping training with the best checkpoint so far",
                           self.fired_at)
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control


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


# --- the sanity gate: a TrainerCallback that reads the evaluators' metrics -------------------------------

LEVERS = (
    "levers, in order: use loss='listwise' (grouped softmax cannot settle on a constant); raise "
    "head_learning_rate (1e-3 for a new head); train more steps (max_steps/epochs; the plateau can last ~45 "
    "steps); shorten max_length; generate more/better questions or mine harder negatives"
)


class TrainingCollapsedError(RagRerankError):
    """Raised by ``train_reranker(..., config.sanity_gate='raise')`` when the sanity gate fired."""


def constant_bce_loss(labels: Sequence[float], pos_weight: float | None = None) -> float:
    """The BCE of the best *constant* prediction: the level a collapsed pointwise model sits at.

    Example:
        >>> round(constant_bce_loss([1, 0, 0, 0, 0]), 4)  # 1:4 base rate
        0.5004
    """
    y = np.asarray(labels, dtype=np.float64)
    w = 1.0 if pos_weight is None else float(pos_weight)
    ybar = float(y.mean())
    p = min(max(w * ybar / (w * ybar + 1 - ybar), 1e-7), 1 - 1e-7)
    return float(-np.mean(w * y * math.log(p) + (1 - y) * math.log(1 - p)))


class SanityGateCallback(TrainerCallback):
    """Stop a run that is not learning, and say which lever to pull.

    At the first evaluation at or after ``check_after_step`` (or at that step, when there is no evaluator)
    it fires when either:

    - the validation ranking metric is below the first stage's plus ``min_delta``; or
    - the mean training loss logged since half-way to the check is within ``plateau_tol`` of
      ``loss_floor`` (``log(group size)`` for listwise; the constant-prediction BCE for bce), unless the
      validation metric is above both the first stage's and its own value before training (``before_value``):
      a small logit scale can rank well near the plateau.

    ``mode``: ``"stop"``/``"raise"`` stop training (the caller raises for ``"raise"``), ``"warn"`` only logs,
    ``"off"`` does nothing. ``fired`` and ``message`` hold the outcome.
    """

    def __init__(
        self, *, loss_floor: float, floor_name: str, check_after_step: int, primary_key: str | None = None,
        first_stage_key: str | None = None, min_delta: float = -0.10, plateau_tol: float = 0.05,
        mode: str = "stop", loss_kind: str = "listwise",
    ) -> None:
        self.loss_floor = loss_floor
        self.floor_name = floor_name
        self.check_after_step = check_after_step
        self.primary_key = primary_key
        self.first_stage_key = first_stage_key
        self.min_delta = min_delta
        self.plateau_tol = plateau_tol
        self.mode = mode
        self.loss_kind = loss_kind
        self.before_value: float | None = None  # the primary metric before training, set by the caller
        self.losses: list[tuple[int, float]] = []
        self.checked = False
        self.fired = False
        self.message = ""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.primary_key is None and not self.checked and state.global_step >= self.check_after_step:
            self._check(state, control, {})

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        if not self.checked and state.global_step >= self.check_after_step:
            self._check(state, control, metrics or {})

    def _check(self, state: Any, control: Any, metrics: dict) -> None:
        if self.mode == "off":
            self.checked = True
            return
        problems, ranking_good = [], False
        if self.primary_key in metrics and self.first_stage_key in metrics:
            got, fs = float(metrics[self.primary_key]), float(metrics[self.first_stage_key])
            ranking_good = got > max(fs, self.before_value if self.before_value is not None else fs)
            if got < fs + self.min_delta:
                problems.append(f"validation {self.primary_key}={got:.4f} is below the first stage's {fs:.4f}"
                                f" {self.min_delta:+.2f}")
        recent = [v for s, v in self.losses if s > self.check_after_step // 2] or [v for _, v in self.losses[-3:]]
        if recent and not ranking_good:  # a small logit scale can rank well near the plateau
            mean = float(np.mean(recent))
            if mean >= (1 - self.plateau_tol) * self.loss_floor:
                problems.append(f"training loss {mean:.4f} sits at the {self.floor_name} = {self.loss_floor:.4f}")
        self.checked = True
        if not problems:
            logger.info("sanity gate passed at step %d", state.global_step)
            return
        self.fired = True
        self.message = (f"SANITY GATE at step {state.global_step}: the reranker is not learning: "
                        + "; ".join(problems) + f".\n{LEVERS}")
        logger.error(self.message)
        if self.mode in ("stop", "raise"):
            control.should_training_stop = True


def verdict_for(
    gate: SanityGateCallback, evaluator: Any, first_stage: dict[str, float], before: dict[str, float],
    after: dict[str, float],
) -> tuple[bool | None, str]:
    """The regression guard: fine-tuned vs the better of the first stage and the base model.

    For a random-head base (``embedded:minilm-ce``) the first stage is the bar; for a trained reranker the
    base model usually is. Returns ``(improved, one-line verdict)``; ``improved`` is None with no evaluator.
    """
    if gate.fired and gate.mode != "warn":
        return False, "COLLAPSED (sanity gate): " + gate.message.splitlines()[0]
    improved, verdict = _final_verdict(evaluator, first_stage, before, after)
    if gate.fired:  # "warn": training went on, so judge the final model, and say the gate fired on the way
        verdict += " (the sanity gate warned mid-run: " + gate.message.splitlines()[0] + ")"
    return improved, verdict


def _final_verdict(evaluator: Any, first_stage: dict[str, float], before: dict[str, float],
                   after: dict[str, float]) -> tuple[bool | None, str]:
    key = getattr(evaluator, "primary_metric", None)
    if key is None or key not in after:
        return None, "NOT VALIDATED: no validation samples were given, so nothing shows this model helps"
    sign = 1 if getattr(evaluator, "greater_is_better", True) else -1
    refs = {"base model": before.get(key)}
    fs_key = key.replace("mrr@", "base_mrr@")
    if fs_key in first_stage:
        refs["first stage"] = first_stage[fs_key]
    refs = {k: v for k, v in refs.items() if v is not None}
    best_name, best = max(refs.items(), key=lambda kv: sign * kv[1])
    if sign * (after[key] - best) > 0:
        return True, f"IMPROVED: {key} {after[key]:.4f} vs {best:.4f} for the {best_name}"
    return False, (f"DID NOT HELP: {key} {after[key]:.4f} is not better than {best:.4f} for the {best_name}; "
                   f"do not deploy it alone. {LEVERS}")
