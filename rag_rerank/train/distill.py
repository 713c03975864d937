"""A distilled student for serving: fewer layers of the adapted reranker, trained to copy its scores.

The student starts as a copy of the teacher that keeps ``layers`` of its encoder layers, evenly spaced (the first and
the last always kept, as DistilBERT initialises from its teacher's layers). It is then trained with MSE on the
teacher's logits (pointwise, so the student keeps the teacher's scale and a sigmoid means the same) over the pairs
the teacher was trained on: each synthetic question with its positive and its mined hard and random negatives
(``train_groups.jsonl`` in the teacher's folder, written by ``finetune``). No label is needed beyond the teacher.

Whether to serve it is a measured choice, never a default: :func:`compare_on_validation` reranks the synthetic
validation questions' first-stage candidates with both models, fuses each at the teacher's weight, and the student is
kept only when its fused MRR@10 is within ``max_loss`` (0.005) of the teacher's. ``pipelines/distill_benchmark.py``
adds its speed and its quality on real questions.

Example:
    >>> res = distill_reranker("runs/mydocs/reranker", "runs/mydocs/student", layers=3)  # doctest: +SKIP
    >>> res.kept_layers  # doctest: +SKIP
    [0, 2, 5]
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag_rerank.errors import ConfigError, DataError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

__all__ = ["DistillConfig", "DistillResult", "compare_on_validation", "distill_reranker", "shrink_layers"]

GROUPS_FILE = "train_groups.jsonl"
MAX_LOSS = 0.005  # the largest fused MRR@10 a student may lose on validation and still be served


@dataclass(frozen=True)
class DistillConfig:
    """Student training settings.

    Attributes:
        layers: encoder layers the student keeps.
        epochs: passes over the teacher's training pairs.
        max_steps: caps the optimiser steps (``None``: ``epochs`` decides).
        batch_size: pairs per step.
        learning_rate: AdamW learning rate (linear decay after ``warmup_ratio`` warm-up).
        warmup_ratio: the share of steps spent warming up.
        max_pairs: use at most this many teacher pairs (a seeded sample; ``None``: all).
        seed: seeds sampling and training.
    """

    layers: int = 3
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    max_pairs: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class DistillResult:
    """What :func:`distill_reranker` made."""

    out_dir: Path
    teacher: str
    kept_layers: list[int]
    teacher_layers: int
    pairs: int
    steps: int
    seconds: float
    teacher_params: int
    student_params: int
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


def _layer_list(model: Any) -> Any:
    """The ``nn.ModuleList`` of encoder layers of a BERT-style HF model (BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise ConfigError(f"cannot distil a {type(model).__name__}: no encoder.layer list (BERT-style encoders only)")
    return base.encoder


def shrink_layers(teacher: CrossEncoder, layers: int) -> tuple[CrossEncoder, list[int]]:
    """A copy of ``teacher`` keeping ``layers`` evenly spaced encoder layers (first and last included)."""
    from torch import nn

    encoder = _layer_list(teacher.model)
    n = len(encoder.layer)
    if not 1 <= layers < n:
        raise ConfigError(f"layers={layers}: the student must keep between 1 and {n - 1} of the teacher's {n} layers")
    keep = sorted({round(i * (n - 1) / max(layers - 1, 1)) for i in range(layers)}) if layers > 1 else [n - 1]
    student = copy.deepcopy(teacher)
    s_encoder = _layer_list(student.model)
    s_encoder.layer = nn.ModuleList([s_encoder.layer[i] for i in keep])
    student.model.config.num_hidden_layers = len(keep)
    return student, keep


def _pairs(groups: Sequence[dict[str, Any]], max_pairs: int | None, seed: int) -> list[tuple[str, str]]:
    import random

    pairs = list(dict.fromkeys((g["query"], d) for g in groups for d in [g["positive"], *g.get("negatives", [])]))
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = random.Random(seed).sample(pairs, max_pairs)
    return pairs


def distill_reranker(
    teacher: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: DistillConfig | None = None,
    groups: str | os.PathLike | Sequence[dict[str, Any]] | None = None,
    show_progress_bar: bool | None = None,
) -> DistillResult:
    """Distil a fine-tuned reranker into a smaller one and save it (a plain sentence-transformers ``CrossEncoder``).

    Args:
        teacher: the fine-tuned reranker's folder (or any name :func:`rag_rerank.models.load_cross_encoder` takes).
        out_dir: where the student goes (overwritten).
        config: student settings.
        groups: training groups ``{"query", "positive", "negatives"}`` (a ``.jsonl`` path or rows); default: the
            teacher folder's ``train_groups.jsonl``.
        show_progress_bar: progress bars (default: at INFO logging).

    Raises:
        DataError: no training pairs. ConfigError: a bad setting, or a teacher that is not BERT-style.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MSELoss

    from rag_rerank.io import iter_jsonl
    from rag_rerank.models import load_cross_encoder, resolve_model_path
    from rag_rerank.rerank.reranker import Reranker
    from rag_rerank.train.config import precision_args
    from rag_rerank.train.guards import quiet

    cfg = config or DistillConfig()
    out = Path(out_dir)
    t0 = time.perf_counter()
    if groups is None:
        groups = resolve_model_path(str(teacher), role="cross-encoder") / GROUPS_FILE
        if not Path(groups).is_file():
            raise DataError(f"{teacher}: no {GROUPS_FILE} to distil on; pass groups= (rows or a .jsonl file)")
    rows = list(iter_jsonl(groups)) if isinstance(groups, (str, os.PathLike)) else list(groups)
    pairs = _pairs(rows, cfg.max_pairs, cfg.seed)
    if not pairs:
        raise DataError(f"no (query, passage) pairs in the {len(rows)} training groups given")
    model = load_cross_encoder(str(teacher))
    scorer = Reranker(model, activation="none", backend="torch")  # the teacher as served: cut queries, windows
    labels = scorer.predict(pairs, show_progress_bar=show_progress_bar).tolist()
    student, keep = shrink_layers(model, cfg.layers)
    n_teacher = len(_layer_list(model.model).layer)
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(pairs) / cfg.batch_size))
    show = show_progress_bar if show_progress_bar is not None else logger.getEffectiveLevel() <= logging.INFO
    logger.info("distilling %s (%d layers) into %d layers %s on %d teacher-scored pairs, %d steps", teacher,
                n_teacher, len(keep), keep, len(pairs), steps)
    args = CrossEncoderTrainingArguments(
        output_dir=str(out / "checkpoints"), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio, lr_scheduler_type="linear", seed=cfg.seed,
        data_seed=cfg.seed, save_strategy="no", report_to="none", disable_tqdm=not show,
        logging_steps=max(1, steps // 10), dataloader_pin_memory=torch.cuda.is_available(), **precision_args("auto"),
    )
    data = Dataset.from_dict({"query": [q for q, _ in pairs], "passage": [d for _, d in pairs], "label": labels})
    quiet(CrossEncoderTrainer(model=student, args=args, train_dataset=data, loss=MSELoss(student))).train()
    if out.exists():
        shutil.rmtree(out)
    student.save_pretrained(str(out))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    result = DistillResult(
        out_dir=out, teacher=str(teacher), kept_layers=keep, teacher_layers=n_teacher, pairs=len(pairs), steps=steps,
        seconds=round(time.perf_counter() - t0, 1), teacher_params=sum(p.numel() for p in model.model.parameters()),
        student_params=sum(p.numel() for p in student.model.parameters()),
    )
    logger.info("student saved to %s (%.1fM parameters, teacher %.1fM) in %.0f s", out,
                result.student_params / 1e6, result.teacher_params / 1e6, result.seconds)
    return result


def compare_on_validation(
    teacher: str | os.PathLike, student: str | os.PathLike, queries: Any, qrels: Any, corpus: Any, run: Any,
    alpha: float, top_k: int = 20, max_loss: float = MAX_LOSS,
) -> dict[str, Any]:
    """Both models rerank the same first-stage ``run`` (top ``top_k``), each fused with it at ``alpha``.

    Returns both fused MRR@10 values on ``qrels``, the student's loss, and ``kept`` (the loss is at most
    ``max_loss``): the rule that decides whether the student is served.
    """
    from rag_rerank.evaluate.metrics import evaluate
    from rag_rerank.rerank.reranker import Reranker
    from rag_rerank.rerank.runs import interpolate_run, score_candidates

    def fused(model: str | os.PathLike) -> float:
        heads = score_candidates(run, queries, corpus, Reranker(str(model), backend="torch", cache_size=0), top_k)
        return evaluate(interpolate_run(run, heads, alpha, top_k), qrels, ["mrr@10"])["mrr@10"]

    t, s = fused(teacher), fused(student)
    return {"queries": len(queries), "alpha": alpha, "teacher_mrr@10": round(t, 6), "student_mrr@10": round(s, 6),
            "loss": round(t - s, 6), "max_loss": max_loss, "kept": t - s <= max_loss}
