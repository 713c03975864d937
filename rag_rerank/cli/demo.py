"""``rag-rerank demo``: ``adapt`` on the packaged sample documents with the embedded defaults, then one answer.

Everything runs offline: the SmolLM2 GGUF writes the questions (llama.cpp on loopback), MiniLM is the bi-encoder,
the reranker is fine-tuned from ``embedded:minilm-ce`` with the default recipe (or ``--recipe``), and the same
SmolLM2 answers one held-out question through a LlamaIndex query engine that serves the shipped system (tuned
first stage -> reranker fused as chosen on validation -> LLM, with sources). The run is sized to
``--budget-minutes`` on this machine, and a rerun reuses what ``--out`` holds.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from rag_rerank.data import SAMPLE_DOCS
from rag_rerank.train.recipes import RECIPES


@click.command("demo")
@click.option("--docs", type=click.Path(path_type=Path), default=SAMPLE_DOCS, show_default=True,
              help="Folder of documents (default: the sample documents inside the package).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Run folder (a rerun reuses what is there).")
@click.option("--llm", default="embedded", show_default=True, help="embedded | openai:MODEL")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint for --llm openai:MODEL.")
@click.option("--budget-minutes", type=click.FloatRange(min=1), default=13.0, show_default=True,
              help="Time for adapt (measured throughput sizes the run); the answer takes about a minute more.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of generation, splits and training.")
@click.option("--recipe", default="default", show_default=True, type=click.Choice(sorted(RECIPES)),
              help="The recipe adapt runs (see `rag-rerank recipe show NAME`).")
@click.option("--question", default=None, help="The question to answer at the end (default: one from the test split).")
def demo_cmd(docs: Path, out: Path, llm: str, base_url: str | None, budget_minutes: float, seed: int, recipe: str,
             question: str | None) -> None:
    """Adapt a reranker to the sample documents with the embedded models, then answer a question with sources."""
    from rag_rerank.adaptation.pipeline import adapt
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.integrations.llamaindex import format_answer, open_query_engine

    t0 = time.monotonic()
    click.secho(f"adapt: {docs} -> {out} (recipe {recipe}, --llm {llm}, about {budget_minutes:g} min)", bold=True)
    run = adapt(docs, out, llm=llm, base_url=base_url, budget_minutes=budget_minutes, seed=seed, recipe=recipe,
                echo=lambda line: click.echo(line))
    data = load_qa_dataset(run.dataset_dir)
    click.echo("\nSome of the synthetic questions:")
    for qid in sorted(data.queries)[:5]:
        click.echo(f"  - [{data.corpus[data.query_info[qid]['chunk_id']]['title']}] {data.queries[qid]}")
    report = (run.report_dir / "report.md")
    if report.is_file():
        click.echo(f"\nHeld-out synthetic test split ({run.report_dir}/report.md):")
        table = report.read_text(encoding="utf-8").split("| system |", 1)[-1].split("\n\n", 1)[0]
        click.echo("| system |" + table)

    click.secho("\nanswer a question: shipped first stage -> shipped reranker -> SmolLM2, with sources", bold=True)
    _, test_queries, _ = data.split("test")
    question = question or (test_queries[sorted(test_queries)[0]] if test_queries else "What is this about?")
    click.echo(f"  Q: {question}")
    with open_query_engine(run.index_dir, reranker=str(run.reranker_dir), top_k=3,
                           similarity_top_k=run_top_k(recipe),
                           llm=llm, base_url=base_url) as engine:
        response = engine.query(question)
    click.echo(format_answer(response))
    click.echo(f"\nshipped: {run.shipped_system}. {run.verdict}")
    click.echo(f"done in {time.monotonic() - t0:.0f}s; outputs under {out}")


def run_top_k(recipe: str = "default") -> int:
    """The first-stage depth the recipe reranks (what the query engine retrieves)."""
    return RECIPES[recipe].top_k


COMMANDS = [demo_cmd]
