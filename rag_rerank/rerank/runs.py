"""Operations on runs: score a first stage's candidates with a reranker, reorder them, or fuse the two.

Used by training (checkpoint and fusion choice), by evaluation and by ``adapt``; none of them depends on
reporting. Only documents the first stage returned are ranked: positives are never injected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.retrieval.fusion import interpolate_scores
from rag_rerank.types import Corpus, Queries, Run, ranked

if TYPE_CHECKING:
    from rag_rerank.rerank.reranker import Reranker


def _doc_text(doc_id: str, corpus: Corpus, fallback: Corpus | None) -> str:
    """The passage text the reranker scores: the ``text`` field, as in training pairs (no title)."""
    doc = corpus.get(doc_id) or (fallback or {}).get(doc_id)
    if doc is None:
        raise DataError(f"document {doc_id!r} is in the first-stage run but in neither corpus; rebuild the index")
    return doc.get("text") or ""


def _reorder(first: Mapping[str, float], head: Mapping[str, float], top_k: int) -> dict[str, float]:
    """The first ``top_k`` first-stage docs ordered by ``head`` scores, then the rest in first-stage order.

    Scores are rank-based (``n - position``) so that :func:`rag_rerank.types.ranked` reproduces the order.
    """
    order = [d for d, _ in ranked(dict(first))]
    top = [d for d, _ in ranked({d: head[d] for d in order[:top_k]})]
    final = top + order[top_k:]
    return {d: float(len(final) - i) for i, d in enumerate(final)}


def score_candidates(
    run: Run, queries: Queries, corpus: Corpus, reranker: Reranker, top_k: int,
    fallback: Corpus | None = None, show_progress_bar: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Reranker scores of each query's first-stage top ``top_k``: ``{qid: {doc_id: score}}`` (one predict call)."""
    keys = [(q, d) for q in run for d, _ in ranked(run[q], top_k)]
    pairs = [(queries[q], _doc_text(d, corpus, fallback)) for q, d in keys]
    scores = reranker.predict(pairs, show_progress_bar=show_progress_bar) if pairs else np.zeros(0)
    out: dict[str, dict[str, float]] = {q: {} for q in run}
    for (q, d), s in zip(keys, scores, strict=True):
        out[q][d] = float(s)
    return out


def apply_scores(run: Run, heads: Mapping[str, Mapping[str, float]], top_k: int,
                 alpha: float | Mapping[str, float] | None = None) -> Run:
    """Reorder each query's top ``top_k`` by precomputed reranker scores (``alpha=None``) or by their fusion.

    ``heads`` comes from :func:`score_candidates`; with ``alpha`` (one weight, or one per query) the order is
    :func:`interpolate_run`'s.
    """
    if alpha is not None:
        return interpolate_run(run, heads, alpha, top_k)
    return {q: _reorder(run[q], heads[q], top_k) for q in run}


def rerank_run(
    run: Run, queries: Queries, corpus: Corpus, reranker: Reranker, top_k: int = 20,
    show_progress_bar: bool | None = None,
) -> Run:
    """Rerank each query's first-stage top ``top_k`` with ``reranker``; deeper docs follow in first-stage order.

    Only docs the first stage returned are ranked (positives are never injected). Output scores are
    rank-based: the order is ``(-reranker score, doc_id)`` for the head, then the first-stage order.

    Example:
        >>> run = rerank_run(hybrid_run, queries, corpus, Reranker("my-model"), top_k=20)  # doctest: +SKIP
    """
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} must be >= 1")
    return apply_scores(run, score_candidates(run, queries, corpus, reranker, top_k,
                                              show_progress_bar=show_progress_bar), top_k)


def interpolate_run(run: Run, rerank_scores: Mapping[str, Mapping[str, float]], alpha: float | Mapping[str, float],
                    top_k: int) -> Run:
    """Fuse reranker and first-stage scores over each query's top ``top_k``: ``alpha*z(rr) + (1-alpha)*z(fs)``.

    ``alpha`` is one weight, or ``{qid: weight}`` (a query guard serves some queries by the first stage alone:
    :meth:`rag_rerank.rerank.fusion.FusionChoice.alpha_for`).

    ``z`` is the z-score over that query's ``top_k`` candidates (:func:`rag_rerank.retrieval.fusion.interpolate_scores`,
    the function the LlamaIndex postprocessor serves with). Deeper docs
    follow in first-stage order; scores are rank-based, as in :func:`rerank_run`.

    Example:
        >>> interpolate_run({"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"a": 0.0, "b": 1.0}}, 0.9, 2)["q"]
        {'b': 3.0, 'a': 2.0, 'c': 1.0}
    """
    alphas = alpha if isinstance(alpha, Mapping) else dict.fromkeys(run, alpha)
    for a in set(alphas.values()):
        if not 0.0 <= a <= 1.0:
            raise ConfigError(f"alpha={a} must be in [0, 1] (1 = reranker only, 0 = first stage only)")
    out: Run = {}
    for q, scores in run.items():
        cands = dict(ranked(dict(scores), top_k))
        out[q] = _reorder(scores, interpolate_scores(cands, rerank_scores[q], alphas[q]), top_k)
    return out
