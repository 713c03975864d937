"""Ranking metrics with trec_eval's definitions: the one implementation every stage uses.

Significance tests are in :mod:`rag_rerank.evaluate.significance`, system comparison in
:mod:`rag_rerank.evaluate.compare`.

Conventions shared by every function here:

- Rankings come from :func:`rag_rerank.types.ranked`, i.e. ``(-score, doc_id)``: ties resolve the
  same way every time. (trec_eval breaks ties by *descending* doc id, so on tied scores the two can
  differ; on distinct scores they agree.)
- Qrels entries with relevance ``<= 0`` are non-relevant. A query whose qrels hold no relevant
  document has no defined score and is left out of every per-query dict and mean.
- A query in the qrels but missing from the run (or with an empty ranking) scores 0 on every metric.
- A query in the run but not in the qrels is ignored.

Metric names: ``mrr@k``, ``ndcg@k``, ``recall@k``, ``hit@k`` (alias ``success@k``), ``p@k`` (alias
``precision@k``), ``map`` / ``map@k``; ``mrr``, ``ndcg`` and ``map`` without ``@k`` use the whole
ranking. Names are case-insensitive and come back in their canonical lower-case form.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from rag_rerank.errors import ConfigError
from rag_rerank.types import Qrels, Run, ranked

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METRICS",
    "Metric",
    "evaluate",
    "gold_ranks",
    "parse_metric",
    "per_query",
    "per_query_many",
    "rank_histogram",
]

DEFAULT_METRICS: tuple[str, ...] = ("mrr@10", "ndcg@10", "recall@10", "recall@100", "hit@1", "map@100")

_ALIASES = {"success": "hit", "precision": "p", "rr": "mrr", "recip_rank": "mrr"}
_KINDS = ("mrr", "ndcg", "recall", "hit", "p", "map")
_NEEDS_K = ("recall", "hit", "p")
_METRIC_RE = re.compile(r"^\s*([a-z_]+)\s*(?:@\s*(\d+))?\s*$")


class Metric(NamedTuple):
    """A parsed metric: its kind (``"mrr"``, ``"ndcg"``, ...) and cutoff (``None``: whole ranking)."""

    kind: str
    k: int | None

    def __str__(self) -> str:
        return self.kind if self.k is None else f"{self.kind}@{self.k}"


def parse_metric(name: str | Metric) -> Metric:
    """Parse a metric name such as ``"NDCG@10"`` or ``"map"``.

    Raises:
        ValueError: for an unknown name, a missing cutoff where one is needed, or ``@0``.

    Example:
        >>> str(parse_metric("NDCG@10")), parse_metric("success@1")
        ('ndcg@10', Metric(kind='hit', k=1))
    """
    if isinstance(name, Metric):
        return name
    m = _METRIC_RE.match(str(name).lower())
    kind = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if m is None or kind not in _KINDS:
        raise ConfigError(
            f"unknown metric {name!r}; use one of mrr@k, ndcg@k, recall@k, hit@k, p@k, map, map@k "
            "(e.g. 'mrr@10', 'recall@100')"
        )
    k = int(m.group(2)) if m.group(2) is not None else None
    if k is not None and k < 1:
        raise ConfigError(f"metric {name!r}: the cutoff must be >= 1, e.g. '{kind}@10'")
    if k is None and kind in _NEEDS_K:
        raise ConfigError(f"metric {name!r} needs a cutoff, e.g. '{kind}@10'")
    return Metric(kind, k)


def _score(ranking: Sequence[str], rels: Mapping[str, int], metric: Metric) -> float:
    """One metric for one query. ``rels`` holds only relevant docs (relevance > 0), at least one."""
    kind, k = metric
    top = ranking if k is None else ranking[:k]
    if kind == "mrr":
        return next((1.0 / i for i, d in enumerate(top, 1) if d in rels), 0.0)
    if kind == "hit":
        return 1.0 if any(d in rels for d in top) else 0.0
    if kind == "recall":
        return sum(1 for d in top if d in rels) / len(rels)
    if kind == "p":
        return sum(1 for d in top if d in rels) / k  # trec_eval P@k: always divides by k
    if kind == "map":
        hits, total = 0, 0.0
        for i, d in enumerate(top, 1):
            if d in rels:
                hits += 1
                total += hits / i
        return total / len(rels)  # trec_eval map_cut: the denominator is every relevant doc
    # ndcg: linear gain (trec_eval), log2(rank + 1) discount, ideal from the qrels
    dcg = sum(rels.get(d, 0) / math.log2(i + 1) for i, d in enumerate(top, 1))
    ideal = sorted(rels.values(), reverse=True)
    ideal = ideal if k is None else ideal[:k]
    idcg = sum(g / math.log2(i + 1) for i, g in enumerate(ideal, 1))
    return dcg / idcg


def _relevant(qrels: Qrels) -> dict[str, dict[str, int]]:
    """Qrels restricted to relevant entries, dropping queries with none."""
    out = {}
    for q, docs in qrels.items():
        rels = {d: r for d, r in docs.items() if r > 0}
        if rels:
            out[q] = rels
    if len(out) < len(qrels):
        n = len(qrels) - len(out)
        logger.debug("%d queries have no relevant document in the qrels; they are not scored", n)
    return out


def per_query_many(run: Run, qrels: Qrels, metrics: Sequence[Metric]) -> dict[str, dict[str, float]]:
    """``{metric_name: {qid: value}}``, ranking each query once (see :func:`per_query` for the rules)."""
    out: dict[str, dict[str, float]] = {str(m): {} for m in metrics}
    for q, rels in _relevant(qrels).items():
        ranking = [d for d, _ in ranked(run.get(q) or {})]
        for m in metrics:
            out[str(m)][q] = _score(ranking, rels, m) if ranking else 0.0
    return out


def per_query(run: Run, qrels: Qrels, metric: str | Metric) -> dict[str, float]:
    """One metric per query, for every query of ``qrels`` with at least one relevant document.

    Queries in the qrels but missing from the run score 0; queries only in the run are ignored;
    relevance ``<= 0`` is non-relevant.

    Example:
        >>> per_query({"q1": {"a": 0.9, "b": 0.5}}, {"q1": {"b": 1}, "q2": {"c": 1}}, "mrr@10")
        {'q1': 0.5, 'q2': 0.0}
    """
    m = parse_metric(metric)
    return per_query_many(run, qrels, [m])[str(m)]


def evaluate(run: Run, qrels: Qrels, metrics: Iterable[str | Metric] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the qrels' queries (same rules as :func:`per_query`).

    Returns:
        ``{canonical_metric_name: mean}``; 0.0 for every metric when no query has a relevant doc.

    Example:
        >>> evaluate({"q1": {"a": 0.9, "b": 0.5}}, {"q1": {"b": 1}}, ["mrr@10", "hit@1", "recall@2"])
        {'mrr@10': 0.5, 'hit@1': 0.0, 'recall@2': 1.0}
    """
    parsed = [parse_metric(m) for m in metrics]
    pq = per_query_many(run, qrels, parsed)
    return {name: (float(np.mean(list(v.values()))) if v else 0.0) for name, v in pq.items()}


# --------------------------------------------------------------------------- rank of the gold doc


def gold_ranks(run: Run, qrels: Qrels) -> dict[str, int | None]:
    """The 1-based rank of the best-ranked relevant doc per query, or ``None`` if the run lacks it.

    Covers every qrels query with a relevant document (a query missing from the run gets ``None``).

    Example:
        >>> gold_ranks({"q1": {"a": 0.9, "b": 0.5}}, {"q1": {"b": 1}, "q2": {"c": 1}})
        {'q1': 2, 'q2': None}
    """
    out: dict[str, int | None] = {}
    for q, rels in _relevant(qrels).items():
        ranking = ranked(run.get(q) or {})
        out[q] = next((i for i, (d, _) in enumerate(ranking, 1) if d in rels), None)
    return out


def rank_histogram(
    ranks: Mapping[str, int | None] | Iterable[int | None],
    edges: Sequence[int] = (1, 2, 3, 5, 10, 20, 50, 100),
) -> dict[str, int]:
    """Bucket gold ranks for a before/after histogram: ``"1"``, ``"4-5"``, ..., ``">100"``, ``"none"``.

    Args:
        ranks: the output of :func:`gold_ranks` (or any iterable of ranks / ``None``).
        edges: increasing upper bounds of the buckets.

    Example:
        >>> rank_histogram([1, 1, 4, None, 300], edges=(1, 5))
        {'1': 2, '2-5': 1, '>5': 1, 'none': 1}
    """
    edges = sorted(set(int(e) for e in edges))
    if not edges or edges[0] < 1:
        raise ConfigError(f"edges must be positive ranks, got {list(edges)}")
    labels, lo = [], 1
    for e in edges:
        labels.append(str(e) if e == lo else f"{lo}-{e}")
        lo = e + 1
    hist = dict.fromkeys([*labels, f">{edges[-1]}", "none"], 0)
    values = ranks.values() if isinstance(ranks, Mapping) else ranks
    for r in values:
        if r is None:
            hist["none"] += 1
            continue
        i = next((j for j, e in enumerate(edges) if r <= e), None)
        hist[labels[i] if i is not None else f">{edges[-1]}"] += 1
    return hist
