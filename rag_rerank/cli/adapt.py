"""``rag-rerank adapt DOCS_DIR --out RUN_DIR`` (the whole chain) and ``rag-rerank recipe show [NAME]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rag_rerank.train.recipes import RECIPES


@click.command("adapt")
@click.argument("docs_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: dataset/, index/, reranker/ (with fusion.json and a card), report/, summary.json. "
                   "Rerun the same command to resume.")
@click.option("--recipe", default="default", show_default=True, type=click.Choice(sorted(RECIPES)),
              help="Every setting of the chain (see `rag-rerank recipe show NAME`).")
@click.option("--llm", default="embedded", show_default=True,
              help="Question writer: 'embedded' (SmolLM2 via llama.cpp, offline) or 'openai:MODEL'.")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint for --llm openai:MODEL (vLLM, Ollama...).")
@click.option("--base-model", default=None,
              help="Reranker to start from (default: the recipe's, embedded:minilm-ce; online e.g. "
                   "BAAI/bge-reranker-base).")
@click.option("--bi-encoder", default=None,
              help="The first stage's bi-encoder (default: the recipe's, embedded:minilm).")
@click.option("--max-chunks", type=click.IntRange(min=1), default=None,
              help="Ask questions for at most N chunks (a seeded subset): small runs and tests.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Train at most N steps (the recipe scales steps with the questions otherwise).")
@click.option("--budget-minutes", type=click.FloatRange(min=1), default=None,
              help="Measure this machine's throughput, size chunks and steps to fit (the default recipe fills "
                   f"the time left with more training steps, up to {RECIPES['default'].max_steps}), and stop "
                   "training with the best checkpoint when the time is spent.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of generation, splits and training.")
@click.option("--query-examples", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="5-50 example queries of the kind your system receives (.txt, one a line, or .jsonl): synthetic "
                   "queries are written in their style.")
@click.option("--distill", type=click.IntRange(min=1), default=None, metavar="LAYERS",
              help="Distil the reranker into a student with LAYERS layers; serve it when its fused validation "
                   "MRR@10 is within 0.005 of the teacher's.")
def adapt_cmd(docs_dir: Path, out_dir: Path, recipe: str, llm: str, base_url: str | None, base_model: str | None,
              bi_encoder: str | None, max_chunks: int | None, max_steps: int | None, budget_minutes: float | None,
              seed: int, query_examples: Path | None, distill: int | None) -> None:
    """Adapt a reranker to the documents in DOCS_DIR, with no human labels.

    \b
    Writes synthetic questions, indexes the chunks, tunes the first stage on validation, mines hard negatives,
    fine-tunes the reranker, chooses how much to trust it (the fusion weight, with a CI), and reports the shipped
    system against the tuned first stage on held-out synthetic questions. Resumable: rerun after a crash or Ctrl-C.
    Example:
      rag-rerank adapt my_docs/ --out runs/my_docs --budget-minutes 60
    """
    from rag_rerank.adaptation.pipeline import adapt

    result = adapt(docs_dir, out_dir, recipe=recipe, llm=llm, base_url=base_url, base_model=base_model,
                   bi_encoder=bi_encoder, max_chunks=max_chunks, max_steps=max_steps, budget_minutes=budget_minutes,
                   seed=seed, query_examples=query_examples, distill=distill,
                   echo=lambda line: click.echo(line, err=True))
    click.echo(f"shipped system: {result.shipped_system} (alpha {result.alpha:g}); reranker in {result.reranker_dir}; "
               f"report {result.report_dir / 'report.md'}; summary {result.summary_path} ({result.wall_s:.0f} s)")


@click.group("recipe")
def recipe_cmd() -> None:
    """The recipes: every setting of the adaptation chain, named."""


@recipe_cmd.command("show")
@click.argument("name", default="default", type=click.Choice(sorted(RECIPES)))
def recipe_show_cmd(name: str) -> None:
    """Print recipe NAME (default: default) as JSON, resolved: what adapt, train, demo and the benchmark use."""
    json.dump(RECIPES[name].to_dict(), sys.stdout, indent=2)
    click.echo()


@recipe_cmd.command("list")
def recipe_list_cmd() -> None:
    """List the recipes with one line each."""
    for name, r in sorted(RECIPES.items()):
        click.echo(f"{name:<10} {r.description}")


COMMANDS = [adapt_cmd, recipe_cmd]
