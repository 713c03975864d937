"""First stage vs reranked on the same queries: the comparison, ``report.md``, ``report.json`` and PNG plots.

:func:`evaluate_systems` runs ``bm25``, ``dense`` and ``hybrid`` from one index, reranks the hybrid top
``top_k_rerank`` with each reranker (``hybrid+NAME``) and optionally fuses reranker and hybrid scores
(``hybrid+NAME@ALPHA``). Positives are never injected: a query whose gold document is outside the hybrid top
``top_k_rerank`` stays a miss, and the hybrid recall@``top_k_rerank`` is reported as the ceiling.
:func:`write_report` writes the result as JSON, a Markdown table and two plots.

Metrics, paired tests and gold ranks come from :mod:`rag_rerank.evaluation`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag_rerank.errors import DataError, missing_extra
from rag_rerank.evaluation import (
    compare,
    evaluate,
    gold_ranks,
    paired_bootstrap,
    parse_metric,
    per_query,
    rank_histogram,
)
from rag_rerank.io import write_json
from rag_rerank.retrieval.hybrid import normalize_scores
from rag_rerank.types import Corpus, Qrels, Queries, Run, ranked

if TYPE_CHECKING:
    from rag_rerank.reranker import Reranker
    from rag_rerank.retrieval.hybrid import HybridRetriever

logger = logging.getLogger(__name__)

__all__ = [
    "REPORT_METRICS", "apply_scores", "check_index_covers", "evaluate_systems", "interpolate_run", "markdown_table",
    "rerank_run", "score_candidates",
    "sample_query_ids", "write_report",
]

REPORT_METRICS: tuple[str, ...] = ("mrr@10", "ndcg@10", "recall@10", "recall@100", "hit@1")


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


def apply_scores(run: Run, heads: Mapping[str, Mapping[str, float]], top_k: int, alpha: float | None = None) -> Run:
    """Reorder each query's top ``top_k`` by precomputed reranker scores (``alpha=None``) or by their fusion.

    ``heads`` comes from :func:`score_candidates`; with ``alpha`` the order is :func:`interpolate_run`'s.
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
        raise ValueError(f"top_k={top_k} must be >= 1")
    return apply_scores(run, score_candidates(run, queries, corpus, reranker, top_k,
                                              show_progress_bar=show_progress_bar), top_k)


def interpolate_run(run: Run, rerank_scores: Mapping[str, Mapping[str, float]], alpha: float, top_k: int) -> Run:
    """Fuse reranker and first-stage scores over each query's top ``top_k``: ``alpha*z(rr) + (1-alpha)*z(fs)``.

    ``z`` is the z-score over that query's ``top_k`` candidates (a constant score list gives 0). Deeper docs
    follow in first-stage order; scores are rank-based, as in :func:`rerank_run`.

    Example:
        >>> interpolate_run({"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"a": 0.0, "b": 1.0}}, 0.9, 2)["q"]
        {'b': 3.0, 'a': 2.0, 'c': 1.0}
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"interpolation alpha={alpha} must be in [0, 1] (1 = reranker only, 0 = first stage only)")
    out: Run = {}
    for q, scores in run.items():
        cands = dict(ranked(dict(scores), top_k))
        z_fs = normalize_scores(cands, "zscore")
        z_rr = normalize_scores({d: float(rerank_scores[q][d]) for d in cands}, "zscore")
        fused = {d: alpha * z_rr[d] + (1.0 - alpha) * z_fs[d] for d in cands}
        out[q] = _reorder(scores, fused, top_k)
    return out


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
        raise ValueError(f"sample={sample} must be >= 1 (or None for every query)")
    picked = np.random.default_rng(seed).choice(len(usable), size=sample, replace=False)
    return sorted(usable[i] for i in picked)


def _mean_ci(scores: Mapping[str, float], n_resamples: int, seed: int) -> list[float]:
    """95% bootstrap CI of the mean of per-query scores (the paired bootstrap against all zeros)."""
    r = paired_bootstrap(scores, dict.fromkeys(scores, 0.0), n_resamples, seed)
    return [r.ci95_lo, r.ci95_hi]


def check_index_covers(index: HybridRetriever, qrels: Qrels, where: str = "the index") -> None:
    """Raise :class:`DataError` unless every relevant qrels doc id is in the index."""
    ids = set(index.bm25.doc_ids)
    wanted = {d for docs in qrels.values() for d, r in docs.items() if r > 0}
    missing = sorted(wanted - ids)
    if missing:
        raise DataError(
            f"index {where} was built over a different corpus: {len(missing)} of {len(wanted)} relevant doc ids "
            f"in the qrels are not in it (e.g. {missing[:3]}); rebuild it with `rag-rerank index DIR --out IDX` "
            "over the same BEIR folder, or omit --index"
        )


def _load_reranker(model: str | os.PathLike | Reranker, batch_size: int, device: str | None,
                   backend: str) -> tuple[Any, str]:
    """A loaded reranker (anything with ``.predict(pairs)``) and its model id for the report."""
    if hasattr(model, "predict"):
        config = getattr(model, "config", None)
        return model, str(getattr(config, "model", None) or type(model).__name__)
    from rag_rerank.reranker import Reranker

    return Reranker(str(model), batch_size=batch_size, device=device, backend=backend), str(model)


def evaluate_systems(
    corpus: Corpus,
    queries: Queries,
    qrels: Qrels,
    *,
    index: HybridRetriever | None = None,
    index_dir: str | os.PathLike | None = None,
    rerankers: Mapping[str, str | os.PathLike | Reranker] | None = None,
    top_k_rerank: int = 20,
    first_stage_depth: int = 100,
    interpolate: float | Mapping[str, float] | None = None,
    extra_runs: Mapping[str, Run] | None = None,
    metrics: Sequence[str] = REPORT_METRICS,
    baseline: str = "hybrid",
    sample: int | None = None,
    seed: int = 0,
    n_resamples: int = 10000,
    batch_size: int = 32,
    device: str | None = None,
    backend: str = "torch",
    show_progress_bar: bool | None = None,
) -> dict[str, Any]:
    """Compare bm25, dense, hybrid and hybrid + each reranker on the same (sampled) queries.

    Args:
        corpus, queries, qrels: a BEIR dataset (e.g. from :func:`rag_rerank.io.load_beir`).
        index: a loaded :class:`HybridRetriever` over ``corpus``; or ``index_dir`` to load one.
        rerankers: ``{name: model name/path or Reranker}``; each adds the system ``hybrid+NAME``.
        top_k_rerank: hybrid candidates each reranker reorders; deeper docs keep their first-stage order.
        first_stage_depth: docs retrieved per query by every first stage (recall@100 needs 100).
        interpolate: alpha, or ``{name: alpha}`` per reranker (e.g. from each model's ``fusion.json``); adds
            ``hybrid+NAME@ALPHA`` = ``alpha*z(reranker) + (1-alpha)*z(hybrid)``.
        extra_runs: precomputed runs over the same corpus (e.g. from an index with a fine-tuned bi-encoder),
            compared alongside; each must cover the evaluated queries (see :func:`sample_query_ids`).
        metrics: metric names (see :mod:`rag_rerank.evaluation`).
        baseline: the system every delta is measured against.
        sample: evaluate a random sample of this many queries (``None``: all), drawn with ``seed``.
        seed: sampling and bootstrap seed.
        n_resamples: bootstrap / randomisation resamples.
        batch_size, device, backend: reranker settings for models given by name (``backend``: see
            :class:`rag_rerank.reranker.Reranker`; a ``Reranker`` passed in keeps its own).
        show_progress_bar: tqdm bars (``None``: for large jobs).

    Returns:
        :func:`rag_rerank.evaluation.compare`'s dict plus ``systems_ci95`` (bootstrap CI of each mean),
        ``ceiling`` (hybrid recall@/hit@``top_k_rerank``), ``gold_rank_histogram``, ``timings_s`` and ``settings``.

    Example:
        >>> corpus, queries, qrels = load_beir("data/squad/beir")  # doctest: +SKIP
        >>> res = evaluate_systems(corpus, queries, qrels, index_dir="idx/squad",
        ...                        rerankers={"tuned": "models/ce"}, sample=300)  # doctest: +SKIP
        >>> res["delta"]["hybrid+tuned_vs_hybrid"]["mrr@10"]["ci95"]  # doctest: +SKIP
    """
    from rag_rerank.retrieval.store import load_index

    rerankers = dict(rerankers or {})
    metrics = [str(parse_metric(m)) for m in metrics]
    if top_k_rerank < 1 or first_stage_depth < top_k_rerank:
        raise ValueError(f"need 1 <= top_k_rerank ({top_k_rerank}) <= first_stage_depth ({first_stage_depth})")
    alphas = dict(interpolate) if isinstance(interpolate, Mapping) else dict.fromkeys(rerankers, interpolate)
    for name, alpha in alphas.items():
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"interpolate={alpha} (for {name!r}) must be in [0, 1]")
    for m in metrics:
        k = parse_metric(m).k
        if k is None or k > first_stage_depth:
            logger.warning("metric %s looks deeper than first_stage_depth=%d: runs are cut there", m, first_stage_depth)
    if index is None:
        if index_dir is None:
            raise ValueError("give index= (a loaded HybridRetriever) or index_dir= (a folder from `rag-rerank index`)")
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
    runs: dict[str, Run] = index.search_all(
        sub_q, top_k=first_stage_depth, show_progress_bar=show_progress_bar, timings=timings
    )
    models: dict[str, str] = {}
    backends: dict[str, str] = {}
    for name, model in rerankers.items():
        rr, models[name] = _load_reranker(model, batch_size, device, backend)
        backends[name] = str(getattr(getattr(rr, "config", None), "backend", "unknown"))
        start = time.perf_counter()
        heads = score_candidates(runs["hybrid"], sub_q, corpus, rr, top_k_rerank, fallback, show_progress_bar)
        runs[f"hybrid+{name}"] = apply_scores(runs["hybrid"], heads, top_k_rerank)
        timings[f"hybrid+{name}"] = time.perf_counter() - start
        alpha = alphas.get(name)
        if alpha is not None:
            runs[f"hybrid+{name}@{alpha:g}"] = apply_scores(runs["hybrid"], heads, top_k_rerank, alpha)
        n_pairs = sum(map(len, heads.values()))
        logger.info("reranked %d pairs with %s in %.1fs", n_pairs, name, timings[f"hybrid+{name}"])

    for name, run in (extra_runs or {}).items():
        if name in runs:
            raise ValueError(f"extra run name {name!r} clashes with a system evaluate_systems builds")
        missing = [q for q in qids if q not in run]
        if missing:
            raise DataError(f"extra run {name!r} lacks {len(missing)} evaluated queries (e.g. {missing[0]!r})")
        runs[name] = {q: run[q] for q in qids}
    result = compare(runs, sub_qrels, baseline=baseline, metrics=metrics, n_resamples=n_resamples, seed=seed)
    result["systems_ci95"] = {name: {m: _mean_ci(per_query(run, sub_qrels, m), n_resamples, seed) for m in metrics}
                              for name, run in runs.items()}
    ceiling = evaluate(runs["hybrid"], sub_qrels, [f"recall@{top_k_rerank}", f"hit@{top_k_rerank}"])
    result["ceiling"] = {"system": "hybrid", **ceiling}
    result["gold_rank_histogram"] = {name: rank_histogram(gold_ranks(run, sub_qrels)) for name, run in runs.items()}
    result["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    result["settings"] = {
        "index": str(index_dir) if index_dir is not None else None,
        "index_config": index.config(),
        "bi_encoder": index.dense.model_name,
        "rerankers": models, "reranker_backends": backends,
        "top_k_rerank": top_k_rerank, "first_stage_depth": first_stage_depth,
        "interpolate": alphas, "sample": sample, "seed": seed, "queries_available": len(qrels),
        "reranked_text": "passage text field (no title)",
        "timings_note": "reranked systems: reranking time only (the hybrid first stage is timed separately)",
    }
    return result


# --------------------------------------------------------------------------- Markdown


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def markdown_table(result: Mapping[str, Any]) -> str:
    """Two Markdown tables: the metric means per system, then each delta vs the baseline with CI and p.

    Example:
        >>> print(markdown_table(evaluate_systems(...)))  # doctest: +SKIP
    """
    metrics, base = result["metrics"], result["baseline"]
    head = "| system | " + " | ".join(metrics) + " |\n|---|" + "---:|" * len(metrics) + "\n"
    rows = [f"| {name} | " + " | ".join(f"{vals[m]:.4f}" for m in metrics) + " |"
            for name, vals in result["systems"].items()]
    out = head + "\n".join(rows) + "\n"
    if result["delta"]:
        out += f"\n| Δ vs {base} (95% CI, paired bootstrap p) | " + " | ".join(metrics) + " |\n|---|"
        out += "---:|" * len(metrics) + "\n"
        for key, entry in result["delta"].items():
            cells = [f"{e['delta']:+.4f} [{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}] {_p(e['p'])}"
                     for e in (entry[m] for m in metrics)]
            out += f"| {key.removesuffix('_vs_' + base)} | " + " | ".join(cells) + " |\n"
    return out


def _markdown_report(result: Mapping[str, Any]) -> str:
    s, c = result.get("settings", {}), result.get("ceiling", {})
    k = s.get("top_k_rerank")
    lines = ["# rag-rerank evaluation", ""]
    avail = s.get("queries_available")
    sampled = f"random sample, seed {s.get('seed')}, of the {avail}" if s.get("sample") else f"all {avail}"
    lines.append(f"**{result['queries']} queries** ({sampled} queries with qrels). "
                 f"Rerankers reorder the hybrid top {k}; positives are not injected.")
    if c:
        lines.append("")
        lines.append(f"**Ceiling**: hybrid recall@{k} = {c.get(f'recall@{k}', float('nan')):.4f}, "
                     f"hit@{k} = {c.get(f'hit@{k}', float('nan')):.4f}: no reranker of the top {k} can find the "
                     "gold document beyond this.")
    lines += ["", markdown_table(result)]
    lines.append(f"Paired bootstrap and randomisation tests over queries, {result['n_resamples']} resamples, "
                 f"seed {result['seed']}.")
    if result.get("timings_s"):
        lines += ["", "Timings (s): " + ", ".join(f"{n} {t:.1f}" for n, t in result["timings_s"].items())
                  + f" ({s.get('timings_note', '')})."]
    if s.get("rerankers"):
        lines += ["", "Rerankers: " + ", ".join(f"`{n}` = `{m}`" for n, m in s["rerankers"].items())]
    if result.get("command"):
        lines += ["", "Command:", "", "```", str(result["command"]), "```"]
    lines += ["", "![metrics](metrics.png)", "", "![gold rank](gold_rank_hist.png)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise missing_extra("matplotlib", "notebook") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _plot_metrics(result: Mapping[str, Any], path: Path) -> None:
    plt = _pyplot()
    metrics, names = result["metrics"], list(result["systems"])
    cis = result.get("systems_ci95", {})
    k = result.get("settings", {}).get("top_k_rerank")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 0.45 * len(names) + 2), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        vals = np.array([result["systems"][n][m] for n in names])
        lo = np.array([cis.get(n, {}).get(m, [v, v])[0] for n, v in zip(names, vals, strict=True)])
        hi = np.array([cis.get(n, {}).get(m, [v, v])[1] for n, v in zip(names, vals, strict=True)])
        colors = ["tab:gray" if n == result["baseline"] else "tab:blue" if n.startswith("hybrid+") else "tab:olive"
                  for n in names]
        y = np.arange(len(names))
        ax.barh(y, vals, xerr=[np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)], color=colors, capsize=3)
        kind, mk = parse_metric(m)
        ceil_key = f"recall@{k}" if kind == "recall" else f"hit@{k}"
        if k and mk is not None and mk <= k and kind in ("mrr", "hit", "recall"):
            ceil = result.get("ceiling", {}).get(ceil_key)
            if ceil is not None:
                ax.axvline(ceil, color="tab:red", ls="--", lw=1, label=f"ceiling ({ceil_key} hybrid)")
                ax.legend(loc="lower right", fontsize=7)
        ax.set_yticks(y, names if ax is axes[0][0] else [""] * len(names))
        ax.invert_yaxis()
        ax.set_xlim(0, 1.05)
        ax.set_title(m)
    fig.suptitle(f"{result['queries']} queries; bars: 95% bootstrap CI of the mean", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_gold_ranks(result: Mapping[str, Any], path: Path) -> None:
    plt = _pyplot()
    hists = result["gold_rank_histogram"]
    names = [result["baseline"]] + [n for n in hists if n.startswith(result["baseline"] + "+")]
    names = [n for n in names if n in hists]
    buckets = list(hists[names[0]])
    width = 0.8 / len(names)
    x = np.arange(len(buckets))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(buckets) + 2), 3.8))
    for i, n in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [hists[n][b] for b in buckets], width, label=n)
    ax.set_xticks(x, buckets)
    ax.set_xlabel("rank of the first relevant document ('none': not retrieved)")
    ax.set_ylabel("queries")
    ax.set_title(f"Gold document rank, {result['queries']} queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json`` (atomic), ``report.md``, ``metrics.png`` and ``gold_rank_hist.png`` into ``out_dir``.

    Returns:
        ``{"json": path, "markdown": path, "metrics_png": path, "gold_rank_png": path}``.

    Raises:
        ImportError: naming ``rag-rerank[notebook]`` when matplotlib is missing.

    Example:
        >>> write_report(evaluate_systems(...), "reports/squad")  # doctest: +SKIP
    """
    from rag_rerank.io import atomic_write

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md",
             "metrics_png": out / "metrics.png", "gold_rank_png": out / "gold_rank_hist.png"}
    write_json(paths["json"], dict(result))
    with atomic_write(paths["markdown"]) as f:
        f.write(_markdown_report(result))
    for key, plot in (("metrics_png", _plot_metrics), ("gold_rank_png", _plot_gold_ranks)):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp.png")
        plot(result, tmp)
        os.replace(tmp, paths[key])
    logger.info("report written to %s", out)
    return paths
