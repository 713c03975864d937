"""First stage vs reranked on the same queries: :func:`evaluate_systems`.

It runs ``bm25``, ``dense`` and ``hybrid`` from one index (and ``first_stage_tuned``, the hybrid with the fusion
chosen on synthetic validation, when given), reranks the top ``top_k`` of the tuned first stage (else of the
hybrid) with each reranker (``<first stage>+NAME``) and fuses reranker and first-stage scores at ``alpha``
(``<first stage>+NAME@ALPHA``, :func:`rag_rerank.retrieval.fusion.interpolate_scores`). Positives are never
injected: a query whose gold document is outside the top ``top_k`` stays a miss, and that first stage's
recall@``top_k`` is reported as the ceiling. :func:`rag_rerank.evaluate.report.write_report` writes the result.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.evaluate.metrics import evaluate, gold_ranks, parse_metric, per_query, rank_histogram
from rag_rerank.evaluate.result import EvaluationResult, compare
from rag_rerank.evaluate.significance import paired_bootstrap
from rag_rerank.rerank.fusion import TUNED, QueryGuard, load_fusion
from rag_rerank.rerank.runs import apply_scores, score_candidates
from rag_rerank.types import Corpus, Qrels, Queries, Run

if TYPE_CHECKING:
    from rag_rerank.rerank.reranker import Reranker
    from rag_rerank.retrieval.hybrid import HybridRetriever

logger = logging.getLogger(__name__)

__all__ = ["REPORT_METRICS", "TUNED", "check_index_covers", "evaluate_systems", "sample_query_ids"]

REPORT_METRICS: tuple[str, ...] = ("mrr@10", "ndcg@10", "recall@10", "recall@100", "hit@1")


def sample_query_ids(qrels: Qrels, queries: Queries, sample: int | None, seed: int) -> list[str]:
    """The evaluated query ids: those with a text and a relevant doc, or a seeded sample of ``sample`` of them.

    Example:
        >>> sample_query_ids({"q1": {"d": 1}, "q2": {"d": 1}}, {"q1": "a", "q2": "b"}, 1, seed=0)  # doctest: +SKIP
        ['q2']
    """
    usable = sorted(q for q, docs in qrels.items() if any(r > 0 for r in docs.values()) and q in queries)
    missing = sum(1 for q in qrels if q not in queries)
    if missing:
        logger.warning("%d qrels queries have no text in queries.jsonl; they are skipped", missing)
    if not usable:
        raise DataError("no query has both a text and a relevant document in the qrels; check the BEIR folder/split")
    if sample is None or sample >= len(usable):
        if sample is not None:
            logger.info("sample=%d >= %d usable queries: evaluating all of them", sample, len(usable))
        return usable
    if sample < 1:
        raise ConfigError(f"sample={sample} must be >= 1 (or None for every query)")
    picked = np.random.default_rng(seed).choice(len(usable), size=sample, replace=False)
    return sorted(usable[i] for i in picked)


def _mean_ci(scores: Mapping[str, float], n_resamples: int, seed: int) -> list[float]:
    """95% bootstrap CI of the mean of per-query scores (the paired bootstrap against all zeros)."""
    r = paired_bootstrap(scores, dict.fromkeys(scores, 0.0), n_resamples, seed)
    return [r.ci95_lo, r.ci95_hi]


def check_index_covers(index: HybridRetriever, qrels: Qrels, where: str = "the index") -> None:
    """Raise :class:`DataError` unless every relevant qrels doc id is in the index (ids missing from the
    corpus itself, as in some official releases, are left to score as misses)."""
    ids = set(index.bm25.doc_ids)
    wanted = {d for docs in qrels.values() for d, r in docs.items() if r > 0}
    missing = sorted(wanted - ids)
    if missing and len(missing) > 0.05 * len(wanted):
        raise DataError(
            f"index {where} was built over a different corpus: {len(missing)} of {len(wanted)} relevant doc ids "
            f"in the qrels are not in it (e.g. {missing[:3]}); rebuild it with `rag-rerank index DIR --out IDX` "
            "over the same BEIR folder, or omit --index"
        )
    if missing:
        logger.warning("%d of %d relevant doc ids are not in the index (e.g. %s): those queries count as misses",
                       len(missing), len(wanted), missing[:3])


def _load_reranker(model: str | os.PathLike | Reranker, batch_size: int, device: str | None,
                   backend: str | None) -> tuple[Any, str]:
    """A loaded reranker (anything with ``.predict(pairs)``) and its model id for the report."""
    if hasattr(model, "predict"):
        config = getattr(model, "config", None)
        return model, str(getattr(config, "model", None) or type(model).__name__)
    from rag_rerank.rerank.reranker import Reranker

    return Reranker(str(model), batch_size=batch_size, device=device, backend=backend), str(model)


def _resolve_alphas(alpha: float | str | Mapping[str, float | None] | None,
                    rerankers: Mapping[str, Any]) -> dict[str, float | None]:
    """``{reranker name: alpha or None}``; ``"auto"`` reads each model folder's ``fusion.json``."""
    if isinstance(alpha, Mapping):
        alphas = dict(alpha)
    elif isinstance(alpha, str):
        if alpha != "auto":
            raise ConfigError(f"alpha={alpha!r}: give a number in [0, 1], 'auto' or None")
        from rag_rerank.rerank.fusion import saved_alpha

        alphas = {n: (None if hasattr(m, "predict") else saved_alpha(m)) for n, m in rerankers.items()}
    else:
        alphas = dict.fromkeys(rerankers, alpha)
    for name, a in alphas.items():
        if a is not None and not 0.0 <= a <= 1.0:
            raise ConfigError(f"alpha={a} (for {name!r}) must be in [0, 1]")
    return alphas


def _resolve_guards(guard: Mapping[str, QueryGuard | int | None] | None, alpha: Any,
                    rerankers: Mapping[str, Any]) -> dict[str, QueryGuard]:
    """``{reranker name: QueryGuard}`` (an integer is a length limit; ``None``: no guard); with ``alpha="auto"`` and
    no ``guard``, each model folder's ``fusion.json`` gives it (the system the model ships)."""
    if guard is not None:
        given = {n: guard.get(n) for n in rerankers}
        return {n: g if isinstance(g, QueryGuard) else QueryGuard(max_words=g) for n, g in given.items()}
    if alpha != "auto":
        return {n: QueryGuard() for n in rerankers}
    saved = {n: (None if hasattr(m, "predict") or not Path(str(m)).is_dir() else load_fusion(m))
             for n, m in rerankers.items()}
    return {n: (c.guard if c is not None else QueryGuard()) for n, c in saved.items()}


def _guarded_alphas(queries: Queries, alpha: float, guard: QueryGuard) -> float | dict[str, float]:
    """One weight, or one per query when a query guard serves some queries by the first stage alone."""
    if not guard:
        return alpha
    return {q: (0.0 if guard.fires(t) else alpha) for q, t in queries.items()}


def _guard_counts(queries: Queries, guards: Mapping[str, QueryGuard]) -> dict[str, dict[str, Any]]:
    """Per guarded reranker: its limits, and how many of the evaluated queries it served by the first stage."""
    return {n: g.counts(queries.values()) for n, g in guards.items() if g}


def _drop_self(run: Run, depth: int) -> Run:
    """Each query's ranking without the document whose id is the query's own (BEIR's ``ignore_identical_ids``)."""
    return {q: dict(list((d, s) for d, s in docs.items() if d != q)[:depth]) for q, docs in run.items()}


def evaluate_systems(
    corpus: Corpus,
    queries: Queries,
    qrels: Qrels,
    *,
    index: HybridRetriever | None = None,
    index_dir: str | os.PathLike | None = None,
    rerankers: Mapping[str, str | os.PathLike | Reranker] | None = None,
    top_k: int = 20,
    depth: int = 100,
    alpha: float | str | Mapping[str, float | None] | None = None,
    query_guard: Mapping[str, QueryGuard | int | None] | None = None,
    first_stage_tuned: Mapping[str, Any] | None = None,
    extra_runs: Mapping[str, Run] | None = None,
    metrics: Sequence[str] = REPORT_METRICS,
    sample: int | None = None,
    seed: int = 0,
    n_resamples: int = 10000,
    exclude_self: bool = False,
    shipped_system: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    backend: str | None = None,
    show_progress_bar: bool | None = None,
) -> EvaluationResult:
    """Compare bm25, dense, hybrid (and the tuned first stage) with each reranker on the same (sampled) queries.

    Args:
        corpus, queries, qrels: a BEIR dataset (e.g. from :func:`rag_rerank.io.load_beir`).
        index: a loaded :class:`HybridRetriever` over ``corpus``; or ``index_dir`` to load one.
        rerankers: ``{name: model name/path or Reranker}``; each adds the system ``<first stage>+NAME``.
        top_k: first-stage candidates each reranker reorders; deeper docs keep their first-stage order.
        depth: docs retrieved per query by every first stage (recall@100 needs 100).
        alpha: the fusion weight, ``{name: alpha}`` per reranker, or ``"auto"`` (each model folder's
            ``fusion.json``); adds ``<first stage>+NAME@ALPHA`` = ``alpha*z(reranker) + (1-alpha)*z(first stage)``.
        query_guard: ``{name: QueryGuard}`` (or an integer, ``max_query_words``): that fused system serves a query
            the guard fires on (too long, or not a question when the reranker knows only questions) by the first
            stage alone (:mod:`rag_rerank.rerank.fusion`); ``None`` with ``alpha="auto"``: each model's
            ``fusion.json``.
            The reranker alone is never guarded (it shows what the guard keeps away).
        first_stage_tuned: fusion settings of the hybrid chosen on synthetic validation (``fusion``, ``norm``,
            ``weights``, ...; see :meth:`HybridRetriever.with_fusion`): adds the system ``first_stage_tuned``, which
            the rerankers then rerank and fuse with, and which becomes a second baseline.
        extra_runs: precomputed runs over the same corpus (e.g. from an index with a fine-tuned bi-encoder),
            compared alongside; each must cover the evaluated queries (see :func:`sample_query_ids`).
        metrics: metric names (see :mod:`rag_rerank.evaluate.metrics`).
        sample: evaluate a random sample of this many queries (``None``: all), drawn with ``seed``.
        seed: sampling and bootstrap seed.
        n_resamples: bootstrap / randomisation resamples.
        exclude_self: drop a document whose id is the query's id from every first-stage run before anything
            else (BEIR's ``ignore_identical_ids``, for corpora such as ArguAna whose queries are corpus documents).
        shipped_system: the system a user gets; it is listed first and named in the report.
        batch_size, device, backend: reranker settings for models given by name (``backend``: ``None`` is the
            Reranker's default, ``auto``; see :class:`rag_rerank.rerank.Reranker`; a ``Reranker`` passed in keeps
            its own).
        show_progress_bar: tqdm bars (``None``: for large jobs).

    Returns:
        An :class:`~rag_rerank.evaluate.result.EvaluationResult`; deltas against ``hybrid`` and, with
        ``first_stage_tuned``, against it too.

    Example:
        >>> corpus, queries, qrels = load_beir("data/squad/beir")  # doctest: +SKIP
        >>> res = evaluate_systems(corpus, queries, qrels, index_dir="idx/squad",
        ...                        rerankers={"tuned": "models/ce"}, sample=300)  # doctest: +SKIP
        >>> res.get_delta("hybrid+tuned").ci95  # doctest: +SKIP
    """
    from rag_rerank.retrieval.store import load_index

    rerankers = dict(rerankers or {})
    metrics = [str(parse_metric(m)) for m in metrics]
    if top_k < 1 or depth < top_k:
        raise ConfigError(f"need 1 <= top_k ({top_k}) <= depth ({depth})")
    alphas = _resolve_alphas(alpha, rerankers)
    guards = _resolve_guards(query_guard, alpha, rerankers)
    for m in metrics:
        k = parse_metric(m).k
        if k is None or k > depth:
            logger.warning("metric %s looks deeper than depth=%d: runs are cut there", m, depth)
    if index is None:
        if index_dir is None:
            raise ConfigError("give index= (a loaded HybridRetriever) or index_dir= (a folder from `rag-rerank index`)")
        index = load_index(index_dir)
    where = str(index_dir) if index_dir is not None else "the index"
    qids = sample_query_ids(qrels, queries, sample, seed)
    sub_q = {q: queries[q] for q in qids}
    sub_qrels = {q: dict(qrels[q]) for q in qids}
    check_index_covers(index, sub_qrels, where)
    fallback = index.corpus if set(index.bm25.doc_ids) - set(corpus) else None
    logger.info("evaluating %d queries (of %d with qrels)", len(qids), len(qrels))

    if index.dense is None:
        raise DataError(f"index {where} is BM25-only (built with --no-dense); evaluate compares against the hybrid "
                        "first stage: rebuild it with `rag-rerank index DIR --out IDX` (no --no-dense)")
    index.dense.model  # noqa: B018 - load (and check) the bi-encoder before timing the searches
    timings: dict[str, float] = {}
    fusions = {TUNED: dict(first_stage_tuned)} if first_stage_tuned else None
    runs: dict[str, Run] = index.search_all(sub_q, top_k=depth + int(exclude_self), fusions=fusions,
                                            show_progress_bar=show_progress_bar, timings=timings)
    runs = {n: (_drop_self(r, depth) if exclude_self else r) for n, r in runs.items()}
    reranked = TUNED if first_stage_tuned else "hybrid"
    models: dict[str, str] = {}
    backends: dict[str, str] = {}
    for name, model in rerankers.items():
        rr, models[name] = _load_reranker(model, batch_size, device, backend)
        backends[name] = str(getattr(getattr(rr, "config", None), "backend", "unknown"))
        start = time.perf_counter()
        heads = score_candidates(runs[reranked], sub_q, corpus, rr, top_k, fallback, show_progress_bar)
        runs[f"{reranked}+{name}"] = apply_scores(runs[reranked], heads, top_k)
        timings[f"{reranked}+{name}"] = time.perf_counter() - start
        a = alphas.get(name)
        if a is not None:
            runs[f"{reranked}+{name}@{a:g}"] = apply_scores(runs[reranked], heads, top_k,
                                                            _guarded_alphas(sub_q, a, guards[name]))
        n_pairs = sum(map(len, heads.values()))
        logger.info("reranked %d pairs with %s in %.1fs", n_pairs, name, timings[f"{reranked}+{name}"])

    for name, run in (extra_runs or {}).items():
        if name in runs:
            raise ConfigError(f"extra run name {name!r} clashes with a system evaluate_systems builds")
        missing = [q for q in qids if q not in run]
        if missing:
            raise DataError(f"extra run {name!r} lacks {len(missing)} evaluated queries (e.g. {missing[0]!r})")
        runs[name] = {q: run[q] for q in qids}
    if shipped_system is not None and shipped_system not in runs:
        raise ConfigError(f"shipped_system={shipped_system!r} is not one of the systems {sorted(runs)}")
    if shipped_system is not None:  # the shipped system's row comes first
        runs = {shipped_system: runs[shipped_system], **{n: r for n, r in runs.items() if n != shipped_system}}
    baselines = ["hybrid", TUNED] if first_stage_tuned else ["hybrid"]
    shipped_pairs = [(shipped_system, b) for b in baselines] if shipped_system else []
    result = compare(runs, sub_qrels, baseline=baselines, metrics=metrics, n_resamples=n_resamples, seed=seed,
                     pairs=shipped_pairs)
    result.shipped_system = shipped_system
    result.systems_ci95 = {name: {m: _mean_ci(per_query(run, sub_qrels, m), n_resamples, seed) for m in metrics}
                           for name, run in runs.items()}
    result.ceiling = {"system": reranked, **evaluate(runs[reranked], sub_qrels, [f"recall@{top_k}", f"hit@{top_k}"])}
    result.gold_rank_histogram = {name: rank_histogram(gold_ranks(run, sub_qrels)) for name, run in runs.items()}
    result.timings_s = {k: round(v, 3) for k, v in timings.items()}
    result.settings = {
        "index": str(index_dir) if index_dir is not None else None,
        "index_config": index.config(), "first_stage_tuned": dict(first_stage_tuned or {}) or None,
        "reranked_first_stage": reranked,
        "bi_encoder": index.dense.model_name,
        "rerankers": models, "reranker_backends": backends,
        "top_k": top_k, "depth": depth, "exclude_self": exclude_self,
        "alpha": alphas, "query_guard": _guard_counts(sub_q, guards), "sample": sample, "seed": seed,
        "queries_available": len(qrels),
        "reranked_text": "passage text field (no title)",
        "timings_note": "reranked systems: reranking time only (the first stage is timed separately)",
    }
    return result
