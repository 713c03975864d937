"""The report's plots: metric means with CIs per system, and a histogram of the gold document's rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rag_rerank.errors import missing_extra
from rag_rerank.evaluate.metrics import parse_metric
from rag_rerank.evaluate.result import EvaluationResult

__all__ = ["plot_gold_ranks", "plot_metrics"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise missing_extra("matplotlib", "notebook") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(result: EvaluationResult, path: Path) -> None:
    """Bars of each metric per system, with the bootstrap CI of each mean and the ceiling."""
    plt = _pyplot()
    metrics, names = result.metrics, list(result.systems)
    cis = result.systems_ci95
    k = result.settings.get("top_k")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 0.45 * len(names) + 2), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        vals = np.array([result.systems[n][m] for n in names])
        lo = np.array([cis.get(n, {}).get(m, [v, v])[0] for n, v in zip(names, vals, strict=True)])
        hi = np.array([cis.get(n, {}).get(m, [v, v])[1] for n, v in zip(names, vals, strict=True)])
        colors = ["tab:gray" if n in result.baselines else "tab:blue" if "+" in n else "tab:olive"
                  for n in names]
        y = np.arange(len(names))
        ax.barh(y, vals, xerr=[np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)], color=colors, capsize=3)
        kind, mk = parse_metric(m)
        ceil_key = f"recall@{k}" if kind == "recall" else f"hit@{k}"
        if k and mk is not None and mk <= k and kind in ("mrr", "hit", "recall"):
            ceil = result.ceiling.get(ceil_key)
            if ceil is not None:
                ax.axvline(ceil, color="tab:red", ls="--", lw=1, label=f"ceiling ({ceil_key} hybrid)")
                ax.legend(loc="lower right", fontsize=7)
        ax.set_yticks(y, names if ax is axes[0][0] else [""] * len(names))
        ax.invert_yaxis()
        ax.set_xlim(0, 1.05)
        ax.set_title(m)
    fig.suptitle(f"{result.queries} queries; bars: 95% bootstrap CI of the mean", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gold_ranks(result: EvaluationResult, path: Path) -> None:
    """The rank of the gold document per query, bucketed, for the baseline and its reranked systems."""
    plt = _pyplot()
    hists = result.gold_rank_histogram
    reranked = result.settings.get("reranked_first_stage", result.baseline)
    names = [reranked] + [n for n in hists if n.startswith(reranked + "+")]
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
    ax.set_title(f"Gold document rank, {result.queries} queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
