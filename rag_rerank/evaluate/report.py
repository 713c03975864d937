"""The report of an evaluation: ``report.json``, ``report.md`` (Markdown tables) and two PNG plots."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rag_rerank.errors import DataError
from rag_rerank.evaluate.plots import plot_gold_ranks, plot_metrics
from rag_rerank.evaluate.result import EvaluationResult
from rag_rerank.io import atomic_write, write_json

logger = logging.getLogger(__name__)

__all__ = ["markdown_table", "query_guard_lines", "write_report"]


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def markdown_table(result: EvaluationResult) -> str:
    """Markdown tables: the metric means per system (the shipped one first, marked), then each baseline's deltas
    with CI and p.

    Example:
        >>> print(markdown_table(evaluate_systems(...)))  # doctest: +SKIP
    """
    metrics = result.metrics
    head = "| system | " + " | ".join(metrics) + " |\n|---|" + "---:|" * len(metrics) + "\n"
    rows = [f"| {_name(result, name)} | " + " | ".join(f"{v[m]:.4f}" for m in metrics) + " |"
            for name, v in result.systems.items()]
    out = head + "\n".join(rows) + "\n"
    for base in result.baselines:
        keys = [k for k in result.delta if k.endswith("_vs_" + base)]
        if not keys:
            continue
        out += f"\n| Δ vs {base} (95% CI, paired bootstrap p) | " + " | ".join(metrics) + " |\n|---|"
        out += "---:|" * len(metrics) + "\n"
        for key in keys:
            cells = [f"{e.delta:+.4f} [{e.ci95[0]:+.4f}, {e.ci95[1]:+.4f}] {_p(e.p)}"
                     for e in (result.delta[key][m] for m in metrics)]
            out += f"| {_name(result, key.removesuffix('_vs_' + base))} | " + " | ".join(cells) + " |\n"
    return out


def query_guard_lines(result: EvaluationResult) -> list[str]:
    """One line per guarded reranker: how many evaluated queries its fused system served by the first stage."""
    reranked = result.settings.get("reranked_first_stage", "hybrid")
    return [f"Query guard ({name}): {g['guarded']} of {g['queries']} queries have {_guarded_what(g)}, unlike any "
            f"question the reranker was trained on; its fused system serves them in {reranked} order (the reranker "
            "alone is not guarded)."
            for name, g in (result.settings.get("query_guard") or {}).items()]


def _guarded_what(g: dict) -> str:
    """What a guard's counts served by the first stage: ``more than 44 words``, or both limits with their counts."""
    parts = [] if g.get("max_query_words") is None else [f"more than {g['max_query_words']} words"]
    if g.get("query_form") == "question":
        parts.append("do not read as a question")
    if len(parts) == 2:
        parts = [f"{parts[0]} ({g['too_long']})", f"{parts[1]} ({g['not_a_question']})"]
    return " or ".join(parts)


def _name(result: EvaluationResult, system: str) -> str:
    return f"**{system}** (shipped)" if system == result.shipped_system else system


def _markdown_report(result: EvaluationResult) -> str:
    s, c = result.settings, result.ceiling
    k = s.get("top_k")
    reranked = s.get("reranked_first_stage", "hybrid")
    lines = ["# rag-rerank evaluation", ""]
    avail = s.get("queries_available")
    sampled = f"random sample, seed {s.get('seed')}, of the {avail}" if s.get("sample") else f"all {avail}"
    lines.append(f"**{result.queries} queries** ({sampled} queries with qrels). "
                 f"Rerankers reorder the {reranked} top {k}; positives are not injected.")
    if result.shipped_system:
        lines += ["", f"**Shipped system**: `{result.shipped_system}` (what the adapted model serves)."]
    for line in query_guard_lines(result):
        lines += ["", line]
    if c:
        lines.append("")
        lines.append(f"**Ceiling**: {c.get('system', reranked)} recall@{k} = {c.get(f'recall@{k}', float('nan')):.4f}, "
                     f"hit@{k} = {c.get(f'hit@{k}', float('nan')):.4f}: no reranker of the top {k} can find the "
                     "gold document beyond this.")
    lines += ["", markdown_table(result)]
    lines.append(f"Paired bootstrap and randomisation tests over queries, {result.n_resamples} resamples, "
                 f"seed {result.seed}.")
    if result.timings_s:
        lines += ["", "Timings (s): " + ", ".join(f"{n} {t:.1f}" for n, t in result.timings_s.items())
                  + f" ({s.get('timings_note', '')})."]
    if s.get("rerankers"):
        lines += ["", "Rerankers: " + ", ".join(f"`{n}` = `{m}`" for n, m in s["rerankers"].items())]
    if result.command:
        lines += ["", "Command:", "", "```", str(result.command), "```"]
    lines += ["", "![metrics](metrics.png)", "", "![gold rank](gold_rank_hist.png)", ""]
    return "\n".join(lines)


def write_report(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json`` (atomic), ``report.md``, ``metrics.png`` and ``gold_rank_hist.png`` into ``out_dir``.

    Returns:
        ``{"json": path, "markdown": path, "metrics_png": path, "gold_rank_png": path}``.

    Raises:
        ImportError: naming ``rag-rerank[notebook]`` when matplotlib is missing.

    Example:
        >>> write_report(evaluate_systems(...), "reports/squad")  # doctest: +SKIP
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md",
             "metrics_png": out / "metrics.png", "gold_rank_png": out / "gold_rank_hist.png"}
    write_json(paths["json"], result.to_dict())
    with atomic_write(paths["markdown"]) as f:
        f.write(_markdown_report(result))
    for key, plot in (("metrics_png", plot_metrics), ("gold_rank_png", plot_gold_ranks)):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp.png")
        plot(result, tmp)
        os.replace(tmp, paths[key])
    logger.info("report written to %s", out)
    return paths
