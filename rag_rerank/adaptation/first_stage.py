"""The tuned first stage: the hybrid's fusion chosen on synthetic validation, before any training.

A user can have it without training anything, so it is the baseline a reranker must beat (``first_stage_tuned``
in every report). The candidates are the RRF default and weighted sums of z-scored or min-max-normalised BM25 and
dense scores over a grid of BM25 weights; all of them fuse the same two component runs (one BM25 pass, one dense
pass), so tuning costs one search of the validation questions.

Example:
    >>> choice = tune_first_stage(index, queries, qrels)  # doctest: +SKIP
    >>> choice.settings  # doctest: +SKIP
    {'fusion': 'weighted', 'norm': 'zscore', 'weights': [0.4, 0.6], 'rrf_k': 60, 'depth': None}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rag_rerank.evaluate.metrics import evaluate
from rag_rerank.types import Qrels, Queries

if TYPE_CHECKING:
    from rag_rerank.generate.store import QADataset
    from rag_rerank.retrieval.hybrid import HybridRetriever
    from rag_rerank.train.recipes import FirstStageSettings

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_FUSION", "FirstStageChoice", "candidate_fusions", "tune_first_stage", "tune_on_validation"]

DEFAULT_FUSION: dict[str, Any] = {"fusion": "rrf", "rrf_k": 60, "weights": [1.0, 1.0]}


@dataclass(frozen=True)
class FirstStageChoice:
    """The chosen fusion settings and the validation metric of every candidate."""

    settings: dict[str, Any]
    name: str
    value: float | None
    by_candidate: dict[str, float] = field(default_factory=dict)
    queries: int = 0
    metric: str = "mrr@10"
    status: str = "tuned"  # or "default" (not tuned, or too few validation questions)


def candidate_fusions(settings: FirstStageSettings) -> dict[str, dict[str, Any]]:
    """``{name: fusion settings}``: RRF first (it wins ties), then each norm x BM25 weight.

    Example:
        >>> from rag_rerank.train.recipes import FirstStageSettings
        >>> list(candidate_fusions(FirstStageSettings(bm25_weights=(0.5,), norms=("zscore",))))
        ['rrf', 'zscore-0.5']
    """
    out = {"rrf": dict(DEFAULT_FUSION)}
    for norm in settings.norms:
        for w in settings.bm25_weights:
            out[f"{norm}-{w:g}"] = {"fusion": "weighted", "norm": norm, "weights": [float(w), round(1.0 - w, 6)]}
    return out


def tune_first_stage(index: HybridRetriever, queries: Queries, qrels: Qrels, settings: FirstStageSettings,
                     *, metric: str = "mrr@10", depth: int = 100) -> FirstStageChoice:
    """The candidate fusion with the best ``metric`` on the validation questions (ties: the earlier candidate).

    With ``settings.tune`` off, or fewer than ``settings.min_queries`` questions, the RRF default is kept.
    """
    if not settings.tune or len(queries) < settings.min_queries:
        why = "tuning is off" if not settings.tune else f"{len(queries)} validation questions < {settings.min_queries}"
        logger.info("first stage: keeping the RRF default (%s)", why)
        return FirstStageChoice(settings=dict(DEFAULT_FUSION), name="rrf", value=None, queries=len(queries),
                                metric=metric, status="default")
    candidates = candidate_fusions(settings)
    runs = index.search_all(queries, top_k=depth, fusions=candidates)
    sub_qrels = {q: qrels[q] for q in queries}
    scores = {name: evaluate(runs[name], sub_qrels, [metric])[metric] for name in candidates}
    best = max(candidates, key=lambda n: (scores[n], -list(candidates).index(n)))
    logger.info("first stage: %s %s %.4f on %d validation questions (RRF default %.4f)", best, metric, scores[best],
                len(queries), scores["rrf"])
    return FirstStageChoice(settings=candidates[best], name=best, value=scores[best], by_candidate=scores,
                            queries=len(queries), metric=metric)


def tune_on_validation(dataset: QADataset, index: HybridRetriever, settings: FirstStageSettings,
                       max_queries: int | None = None) -> FirstStageChoice:
    """:func:`tune_first_stage` on a generated dataset's validation split (a fixed subset of ``max_queries``
    questions; ``None``: all), as ``adapt`` tunes it; an empty split keeps the RRF default."""
    _, queries, qrels = dataset.split("validation")
    if max_queries is not None:
        queries = {q: queries[q] for q in sorted(queries)[:max_queries]}
    if not queries:
        return FirstStageChoice(settings=dict(DEFAULT_FUSION), name="rrf", value=None, status="default")
    return tune_first_stage(index, queries, qrels, settings)
