"""Bi-encoder fine-tuning with (Cached)MultipleNegativesRankingLoss on synthetic (query, positive[, negative]) rows,
and the choice to keep it: only when it helps the hybrid first stage on synthetic validation."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rag_rerank.errors import DataError
from rag_rerank.train.config import precision_args

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
    out_dir: str | Path,
    config: BiEncoderTrainingConfig | None = None,
) -> Path:
    """Fine-tune a sentence-transformers bi-encoder with (Cached)MultipleNegativesRankingLoss.

    Args:
        base_model: ``embedded:minilm``, a local directory or a hub id.
        train_rows: ``{"query", "positive"}`` rows, optionally with ``"negative"`` (one hard negative; with
            ``"negatives": [...]`` the first is used). All rows must agree on having a negative or not.
        out_dir: where the model is saved; it loads with ``SentenceTransformer(out_dir)``.
        config: training settings.

    Returns:
        ``out_dir`` as a ``Path``.

    Example:
        >>> rows = [{"query": "who wrote hamlet", "positive": "Hamlet is by Shakespeare."}]
        >>> train_bi_encoder("embedded:minilm", rows, out_dir="bi")  # doctest: +SKIP
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
    from rag_rerank.train.guards import NonFiniteLossCallback, TrainingDivergedError, model_bytes, preflight, quiet

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
    preflight(out_dir, model_bytes=model_bytes(model), rows=len(rows), keep_checkpoints=0)
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
            logging_steps=max(1, len(rows) // cfg.batch_size // 10), **precision_args(cfg.mixed_precision),
        )
        nonfinite = NonFiniteLossCallback()
        quiet(SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(data), loss=loss,
                                         callbacks=[nonfinite])).train()
    if nonfinite.fired:
        raise TrainingDivergedError(nonfinite.message(f"bi-encoder training of {base_model}"))
    out = Path(out_dir)
    model.save_pretrained(str(out))
    return out


@dataclass(frozen=True)
class BiEncoderResult:
    """What :func:`finetune_bi_encoder` did: the model folder and the rows it trained on."""

    out_dir: Path
    rows: int
    steps: int | None


def finetune_bi_encoder(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    index_dir: str | os.PathLike | None = None,
    base_model: str = "embedded:minilm",
    mining: Any = None,
    training: BiEncoderTrainingConfig | None = None,
    max_train_queries: int | None = None,
    show_progress_bar: bool | None = None,
    **training_overrides: Any,
) -> BiEncoderResult:
    """Fine-tune the first stage's bi-encoder on a generated dataset: MNRL with one mined hard negative per question.

    Args:
        dataset_dir: a dataset written by ``rag-rerank generate``.
        out_dir: the model folder (loads with ``SentenceTransformer(out_dir)``).
        index_dir: the index the negatives are mined with (built into ``DATASET/index`` if None).
        base_model: the bi-encoder to start from.
        mining: a :class:`~rag_rerank.train.mining.MiningConfig`.
        training: a :class:`BiEncoderTrainingConfig`; ``**training_overrides`` change its fields.
        max_train_queries: cap on training questions (a deterministic subset).

    Example:
        >>> finetune_bi_encoder("data/qa", "models/bi", max_steps=100)  # doctest: +SKIP
    """
    from dataclasses import replace

    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.train.finetune import mine_split, open_index

    dataset_dir = Path(dataset_dir)
    dataset = load_qa_dataset(dataset_dir)
    index = open_index(dataset, dataset_dir, index_dir, None)
    cfg = replace(training or BiEncoderTrainingConfig(), **training_overrides)
    mined = mine_split(dataset, index, "train", mining=mining, group_size=2, max_queries=max_train_queries,
                       show_progress_bar=show_progress_bar)
    path = train_bi_encoder(base_model, mined.groups, out_dir=out_dir, config=cfg)
    return BiEncoderResult(out_dir=path, rows=len(mined.groups), steps=cfg.max_steps)


def first_stage_validation_mrr(dataset: Any, index_dir: str | os.PathLike, max_queries: int | None = None,
                               split: str = "validation") -> dict[str, float]:
    """Dense and hybrid MRR@10 of an index on a split of a generated dataset (a fixed subset of ``max_queries``)."""
    from rag_rerank.evaluate.metrics import evaluate
    from rag_rerank.retrieval.store import load_index

    _, queries, qrels = dataset.split(split)
    queries = {q: queries[q] for q in sorted(queries)[:max_queries]}
    if not queries:
        raise DataError(f"split {split!r} has no questions; cannot compare first stages")
    runs = load_index(index_dir).search_all(queries, top_k=10)
    return {m: evaluate(runs[m], {q: qrels[q] for q in queries}, ["mrr@10"])["mrr@10"] for m in ("dense", "hybrid")}


@dataclass(frozen=True)
class BiEncoderChoice:
    """Whether the fine-tuned bi-encoder is kept: only when its hybrid beats the base's on synthetic validation."""

    used: bool
    base: dict[str, float]
    tuned: dict[str, float]


def choose_bi_encoder(dataset: Any, base_index: str | os.PathLike, tuned_index: str | os.PathLike,
                      max_queries: int | None = None) -> BiEncoderChoice:
    """Keep the tuned bi-encoder only if the hybrid over it has a higher validation MRR@10 than the base's.

    Example:
        >>> choose_bi_encoder(load_qa_dataset("data/qa"), "idx/base", "idx/tuned").used  # doctest: +SKIP
    """
    base = first_stage_validation_mrr(dataset, base_index, max_queries)
    tuned = first_stage_validation_mrr(dataset, tuned_index, max_queries)
    used = tuned["hybrid"] > base["hybrid"]
    logger.info("bi-encoder: synthetic validation hybrid MRR@10 base %.4f, tuned %.4f -> %s", base["hybrid"],
                tuned["hybrid"], "use the tuned one" if used else "keep the base")
    return BiEncoderChoice(used=used, base=base, tuned=tuned)
