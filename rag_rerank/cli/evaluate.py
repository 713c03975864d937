"""CLI stage: ``evaluate`` compares first stage vs reranked on a BEIR folder and writes a report."""

from __future__ import annotations

import logging
import re
import shlex
import time
from pathlib import Path

import click

from rag_rerank.rerank.backends import BACKENDS

logger = logging.getLogger(__name__)


def _default_name(model: str) -> str:
    """A short system name from a model name or path: ``embedded:minilm-ce`` -> ``minilm-ce``."""
    base = model.rstrip("/").split(":")[-1].split("/")[-1] or model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base)


def _names(models: tuple[str, ...], names: tuple[str, ...]) -> list[str]:
    if names and len(names) != len(models):
        raise click.UsageError(f"got {len(names)} --name for {len(models)} --reranker; give one --name per --reranker")
    out = list(names) if names else [_default_name(m) for m in models]
    if len(set(out)) != len(out):
        if names:
            raise click.UsageError(f"--name values must be distinct, got {out}")
        out = [f"{n}-{i + 1}" for i, n in enumerate(out)]
    return out


def _command_line(ctx: click.Context) -> str:
    """The command, rebuilt from the parsed options (defaults left out), for the report."""
    parts = ["rag-rerank", ctx.info_name or "evaluate"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == () or value == param.default or not isinstance(param, click.Option):
            continue
        for v in value if param.multiple else [value]:
            parts += [param.opts[0], str(v)]
    return shlex.join(parts)


def _alpha(value: str | None) -> float | str | None:
    """``--alpha``: a number in [0, 1], ``auto`` (each model's fusion.json) or ``none`` (rerankers alone)."""
    if value is None or value.strip().lower() == "auto":
        return "auto"
    if value.strip().lower() == "none":
        return None
    try:
        alpha = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number in [0, 1], 'auto' nor 'none'",
                                 param_hint="--alpha") from None
    if not 0.0 <= alpha <= 1.0:
        raise click.BadParameter(f"{alpha} is not in [0, 1]", param_hint="--alpha")
    return alpha


def _shipped(models: tuple[str, ...], names: list[str], alpha: float | str | None) -> tuple[dict | None, str | None]:
    """The first model's tuned first stage and shipped system, from its fusion.json (what it serves)."""
    from rag_rerank.rerank.fusion import load_fusion

    if not models or not Path(models[0]).is_dir():
        return None, None
    saved = load_fusion(models[0])
    if saved is None:
        return None, None
    first = dict(saved.first_stage) if saved.first_stage else None
    reranked = "first_stage_tuned" if first else "hybrid"
    if alpha != "auto":
        return first, None
    if saved.alpha == 0:
        return first, reranked
    return first, f"{reranked}+{names[0]}@{saved.alpha:g}"


@click.command("evaluate")
@click.option("--beir", "beir_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv (a generated dataset folder works too).")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Index folder from `rag-rerank index` over the same corpus (default: build one in memory).")
@click.option("--reranker", "models", multiple=True, help="Cross-encoder name or folder; repeat for several.")
@click.option("--name", "names", multiple=True, help="System name per --reranker (default: from the model name).")
@click.option("--top-k", default=20, show_default=True, type=click.IntRange(min=1),
              help="First-stage candidates each reranker reorders.")
@click.option("--depth", default=100, show_default=True, type=click.IntRange(min=1),
              help="Docs retrieved per query by each first stage.")
@click.option("--alpha", "alpha_value", default="auto", show_default=True, metavar="ALPHA|auto|none",
              help="Also report ALPHA*z(reranker) + (1-ALPHA)*z(first stage) for each reranker; 'auto' uses the "
                   "alpha, tuned first stage and query guard the model was adapted with (its fusion.json), i.e. the "
                   "system it ships; 'none' reports the rerankers alone.")
@click.option("--exclude-self", is_flag=True,
              help="Drop a document whose id is the query's id from every ranking (BEIR's ignore_identical_ids, "
                   "for corpora such as ArguAna whose queries are corpus documents).")
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Evaluate a random sample of N queries.")
@click.option("--seed", default=0, show_default=True, help="Sampling and bootstrap seed.")
@click.option("--split", default="test", show_default=True, help="Qrels split: qrels/SPLIT.tsv.")
@click.option("--metric", "metrics", multiple=True,
              help="Metric (repeatable); default mrr@10 ndcg@10 recall@10 recall@100 hit@1.")
@click.option("--n-resamples", default=10000, show_default=True, type=click.IntRange(min=100),
              help="Bootstrap / randomisation resamples.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Reranker batch size.")
@click.option("--device", default=None, help="Torch device for the reranker(s).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", *BACKENDS]),
              help="Reranker inference backend: auto (the fastest at ranking parity on this machine, measured once "
                   "per model) or a fixed one (the exported ones run on CPU; see rag_rerank.rerank.backends).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Report folder: report.md, report.json, metrics.png, gold_rank_hist.png.")
def evaluate_cmd(
    beir_dir: Path, index_dir: Path | None, models: tuple[str, ...], names: tuple[str, ...], top_k: int,
    depth: int, alpha_value: str | None, exclude_self: bool, sample: int | None, seed: int, split: str,
    metrics: tuple[str, ...], n_resamples: int, batch_size: int, device: str | None, backend: str, out_dir: Path,
) -> None:
    """Compare bm25, dense, hybrid and hybrid + each reranker on a BEIR folder's queries.

    \b
    A model adapted by rag-rerank is evaluated as it ships: fused with its tuned first stage at the alpha it
    chose on validation (its fusion.json), listed first. Every delta vs hybrid (and vs the tuned first stage)
    gets a paired bootstrap 95% CI and p-value; the first stage's recall@TOP-K is shown as the ceiling
    (positives are never injected into the candidates).
    Example:
      rag-rerank evaluate --beir data/squad/beir --index idx/squad \\
          --reranker models/ce-tuned --name tuned --sample 1000 --seed 0 --out reports/squad
    """
    from rag_rerank.evaluate.compare import REPORT_METRICS, evaluate_systems
    from rag_rerank.evaluate.report import markdown_table, query_guard_lines, write_report
    from rag_rerank.io import load_beir

    start = time.perf_counter()
    corpus, queries, qrels = load_beir(beir_dir, split=split)
    system_names = _names(models, names)
    if index_dir is not None:
        from rag_rerank.retrieval.store import load_index

        index = load_index(index_dir)
    else:
        from rag_rerank.retrieval.hybrid import HybridRetriever

        logger.info("no --index: building a temporary in-memory hybrid index (BM25 + embedded:minilm) over %d docs "
                    "of %s; pass --index to reuse one", len(corpus), beir_dir)
        index = HybridRetriever().index(corpus)
    alpha = _alpha(alpha_value)
    first_stage, shipped = _shipped(models, system_names, alpha)
    result = evaluate_systems(
        corpus, queries, qrels, index=index, index_dir=index_dir,
        rerankers=dict(zip(system_names, models, strict=True)), top_k=top_k, depth=depth, alpha=alpha,
        first_stage_tuned=first_stage, metrics=metrics or REPORT_METRICS, exclude_self=exclude_self,
        shipped_system=shipped, sample=sample, seed=seed, n_resamples=n_resamples, batch_size=batch_size,
        device=device, backend=backend,
    )
    result.settings["beir"] = str(beir_dir)
    result.settings["split"] = split
    result.command = _command_line(click.get_current_context())
    result.wall_s = round(time.perf_counter() - start, 1)
    write_report(result, out_dir)
    click.echo(markdown_table(result))
    k = top_k
    click.echo(f"Ceiling: {result.ceiling['system']} recall@{k} = {result.ceiling[f'recall@{k}']:.4f} "
               f"({result.queries} queries)")
    for line in query_guard_lines(result):
        click.echo(line)
    click.echo(f"Report written to {out_dir} in {result.wall_s:.1f}s", err=True)


COMMANDS = [evaluate_cmd]
