"""Score fusion: reciprocal rank fusion, weighted sums of normalised scores, and the reranker interpolation.

One implementation per concept, used everywhere:

- :func:`rrf` and :func:`weighted_fusion` fuse first-stage runs (the hybrid's BM25 + dense);
- :func:`normalize_scores` normalises one query's scores (min-max or z-score);
- :func:`interpolate_scores` fuses a reranker's scores with the first stage's over the same candidates,
  ``alpha * z(reranker) + (1 - alpha) * z(first stage)``: what ``evaluate`` measures, what ``adapt`` chooses on
  validation and what the LlamaIndex postprocessor serves.

Fusion functions work on any ``Run``s, so they also fuse runs read from TREC files. Every output ranking is
ordered by ``(-score, doc_id)`` and holds only documents some input returned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rag_rerank.errors import ConfigError
from rag_rerank.types import Run, ranked

FUSIONS: tuple[str, ...] = ("rrf", "weighted")
NORMS: tuple[str, ...] = ("minmax", "zscore")


def _weights(runs: Sequence[Run], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ConfigError(f"got {len(weights)} weights for {len(runs)} runs; give one weight per run")
    return [float(w) for w in weights]


def _qids(runs: Sequence[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run))
    return list(seen)


def rrf(runs: Sequence[Run], k: int = 60, weights: Sequence[float] | None = None, top_k: int | None = None) -> Run:
    """Reciprocal rank fusion: ``score(d) = sum_r w_r / (k + rank_r(d))`` with 1-based ranks by ``(-score, id)``.

    Example:
        >>> rrf([{"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 0.9, "c": 0.1}}], k=60)["q"]
        {'b': 0.03252247488101534, 'a': 0.01639344262295082, 'c': 0.016129032258064516}
    """
    if k < 0:
        raise ConfigError(f"rrf k must be >= 0, got {k}")
    ws = _weights(runs, weights)
    fused: Run = {}
    for qid in _qids(runs):
        acc: dict[str, float] = {}
        for run, w in zip(runs, ws, strict=False):
            for rank, (doc, _) in enumerate(ranked(run.get(qid, {})), 1):
                acc[doc] = acc.get(doc, 0.0) + w / (k + rank)
        fused[qid] = dict(ranked(acc, top_k))
    return fused


def normalize_scores(scores: dict[str, float], norm: str = "minmax") -> dict[str, float]:
    """Normalise one query's scores: ``"minmax"`` to [0, 1] (all-equal -> 1.0) or ``"zscore"`` (std 0 -> 0.0).

    Example:
        >>> normalize_scores({"a": 3.0, "b": 1.0, "c": 2.0})
        {'a': 1.0, 'b': 0.0, 'c': 0.5}
    """
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r}: use 'minmax' or 'zscore'")
    if not scores:
        return {}
    vals = list(scores.values())
    if norm == "minmax":
        lo, hi = min(vals), max(vals)
        return {d: (s - lo) / (hi - lo) if hi > lo else 1.0 for d, s in scores.items()}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    return {d: (s - mean) / std if std > 0 else 0.0 for d, s in scores.items()}


def weighted_fusion(
    runs: Sequence[Run], weights: Sequence[float] | None = None, norm: str = "minmax", top_k: int | None = None
) -> Run:
    """Weighted sum of per-query normalised scores.

    A document missing from one run gets that run's lowest normalised score for the query (0 for min-max,
    the minimum z for z-score), i.e. it is treated as no better than the worst candidate that run returned.

    Example:
        >>> weighted_fusion([{"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 0.9, "c": 0.1}}], weights=[1, 1])["q"]
        {'a': 1.0, 'b': 1.0, 'c': 0.0}
    """
    ws = _weights(runs, weights)
    fused: Run = {}
    for qid in _qids(runs):
        acc: dict[str, float] = {}
        parts = [normalize_scores(run.get(qid, {}), norm) for run in runs]
        docs = {d for p in parts for d in p}
        for part, w in zip(parts, ws, strict=False):
            floor = min(part.values()) if part and norm == "zscore" else 0.0
            for d in docs:
                acc[d] = acc.get(d, 0.0) + w * part.get(d, floor)
        fused[qid] = dict(ranked(acc, top_k))
    return fused


def interpolate_scores(
    first_stage: Mapping[str, float], reranker: Mapping[str, float], alpha: float
) -> dict[str, float]:
    """``alpha * z(reranker) + (1 - alpha) * z(first stage)`` per candidate: the fused score of a reranked list.

    Both score lists are z-scored over the same candidates (the keys of ``first_stage``; a constant list gives
    0). ``alpha = 1`` is the reranker alone, ``alpha = 0`` the first stage alone.

    Raises:
        ConfigError: for an ``alpha`` outside [0, 1].
        KeyError: when ``reranker`` lacks a candidate of ``first_stage``.

    Example:
        >>> interpolate_scores({"a": 3.0, "b": 2.0}, {"a": 0.0, "b": 1.0}, 0.9)
        {'a': -0.8, 'b': 0.8}
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha} must be in [0, 1] (1 = reranker only, 0 = first stage only)")
    z_fs = normalize_scores(dict(first_stage), "zscore")
    z_rr = normalize_scores({d: float(reranker[d]) for d in first_stage}, "zscore")
    return {d: alpha * z_rr[d] + (1.0 - alpha) * z_fs[d] for d in first_stage}
