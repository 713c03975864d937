"""Bi-encoder fine-tuning with (Cached)MultipleNegativesRankingLoss on synthetic (query, positive[, negative]) rows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rag_rerank.errors import DataError
from rag_rerank.training import _precision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BiEncoderTrainingConfig:
    """Settings for :func:`train_bi_encoder`.

    Attributes:
        epochs, max_steps, learning_rate, warmup_ratio, seed: as for the reranker.
        batch_size: rows per step; every other row's positive (and negative) is an in-batch negative, so
            bigger is better.
        cached: use ``CachedMultipleNegativesRankingLoss`` (GradCache): big batches in bounded memory.
        mini_batch_size: the cached loss's chunk size.
        scale: the MNRL temperature inverse (20 = sentence-transformers' default).
        show_progress_bar: tqdm bars (``None``: when logging is at INFO or below).
    """

    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    batch_size: int = 32
    cached: bool = False
    mini_batch_size: int = 32
    scale: float = 20.0
    seed: int = 42
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    show_progress_bar: bool | None = None


def train_bi_encoder(
    base_model: str,
    train_rows: Sequence[dict[str, Any]],
    *,
    output_dir: str | Path,
    config: BiEncoderTrainingConfig | None = None,
) -> Path:
    """Fine-tune a sentence-transformers bi-encoder with (Cached)MultipleNegativesRankingLoss.

    Args:
        base_model: ``embedded:minilm``, a local directory or a hub id.
        train_rows: ``{"query", "positive"}`` rows, optionally with ``"negative"`` (one hard negative; with
            ``"negatives": [...]`` the first is used). All rows must agree on having a negative or not.
        output_dir: where the model is saved; it loads with ``SentenceTransformer(output_dir)``.
        config: training settings.

    Returns:
        ``output_dir`` as a ``Path``.

    Example:
        >>> rows = [{"query": "who wrote hamlet", "positive": "Hamlet is by Shakespeare."}]
        >>> train_bi_encoder("embedded:minilm", rows, output_dir="bi")  # doctest: +SKIP
    """
    import tempfile

    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    from rag_rerank.models import load_bi_encoder
    from rag_rerank.training_guards import NonFiniteLossCallback, TrainingDivergedError, model_bytes, preflight

    cfg = config or BiEncoderTrainingConfig()
    rows = list(train_rows)
    if not rows:
        raise DataError("train_bi_encoder: no training rows")
    data: dict[str, list[str]] = {"anchor": [], "positive": []}

    def negative(r: dict[str, Any]) -> str | None:
        return r.get("negative") or (r.get("negatives") or [None])[0]

    with_neg = negative(rows[0]) is not None
    for i, r in enumerate(rows):
        if "query" not in r or "positive" not in r:
            raise DataError(f"bi-encoder row {i} lacks 'query'/'positive'")
        if (negative(r) is not None) != with_neg:
            raise DataError(f"bi-encoder row {i}: some rows have a negative and some do not; make them agree")
        data["anchor"].append(r["query"])
        data["positive"].append(r["positive"])
        if with_neg:
            data.setdefault("negative", []).append(negative(r))
    model = load_bi_encoder(base_model)
    preflight(output_dir, model_bytes=model_bytes(model), rows=len(rows), keep_checkpoints=0)
    loss = (CachedMultipleNegativesRankingLoss(model, scale=cfg.scale, mini_batch_size=cfg.mini_batch_size)
            if cfg.cached else MultipleNegativesRankingLoss(model, scale=cfg.scale))
    show = cfg.show_progress_bar if cfg.show_progress_bar is not None else logger.getEffectiveLevel() <= logging.INFO
    with tempfile.TemporaryDirectory(prefix="rag-rerank-bi-") as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
            per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
            warmup_steps=cfg.warmup_ratio, seed=cfg.seed, data_seed=cfg.seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none",
            logging_nan_inf_filter=False,
            disable_tqdm=not show, dataloader_pin_memory=torch.cuda.is_available(),
            logging_steps=max(1, len(rows) // cfg.batch_size // 10), **_precision(cfg.mixed_precision),
        )
        nonfinite = NonFiniteLossCallback()
        SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(data), loss=loss,
                                   callbacks=[nonfinite]).train()
    if nonfinite.fired:
        raise TrainingDivergedError(nonfinite.message(f"bi-encoder training of {base_model}"))
    out = Path(output_dir)
    model.save_pretrained(str(out))
    return out
