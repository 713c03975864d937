"""``rag-rerank demo``: the main job on the embedded defaults, end to end, on sample_docs/.

Everything runs offline: the SmolLM2 GGUF writes the questions (llama.cpp on loopback), MiniLM is
the bi-encoder, the reranker is fine-tuned from ``embedded:minilm-ce``, and the same SmolLM2 answers
one question through a LlamaIndex query engine (hybrid retriever -> reranker -> LLM, with sources).
Each step reuses what an earlier run left in ``--out``, so a rerun is quick.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from rag_rerank.data import SAMPLE_DOCS as DEFAULT_DOCS


def _step(i: int, n: int, text: str) -> None:
    click.secho(f"\n[{i}/{n}] {text}", bold=True)


@click.command("demo")
@click.option("--docs", type=click.Path(path_type=Path), default=DEFAULT_DOCS, show_default=True,
              help="Folder of documents.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Run folder (a rerun reuses what is there).")
@click.option("--llm", default="embedded", show_default=True, help="embedded | openai:MODEL")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint for --llm openai:MODEL.")
@click.option("--max-chunks", type=int, default=40, show_default=True,
              help="Chunks to write questions for (a deterministic subset keeps the demo to minutes on a CPU).")
@click.option("--questions-per-chunk", type=int, default=2, show_default=True, help="Questions asked per chunk.")
@click.option("--train-steps", type=int, default=60, show_default=True, help="Reranker optimiser steps.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of generation, splits and training.")
@click.option("--question", default=None, help="The question to answer at the end (default: one from the test split).")
def demo_cmd(docs: Path, out: Path, llm: str, base_url: str | None, max_chunks: int, questions_per_chunk: int,
             train_steps: int, seed: int, question: str | None) -> None:
    """Run generate -> index -> train -> evaluate -> answer on sample_docs with the embedded defaults."""
    from rag_rerank.evaluate.compare import evaluate_systems
    from rag_rerank.evaluate.report import markdown_table, write_report
    from rag_rerank.generate.dataset import create_qa_dataset
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.retrieval import build_index, load_index
    from rag_rerank.train.finetune import finetune

    t0, n = time.monotonic(), 5
    dataset_dir, index_dir, model_dir = out / "dataset", out / "index", out / "reranker"

    _step(1, n, f"generate: {docs} -> {dataset_dir} ({max_chunks} chunks x {questions_per_chunk} questions, "
                f"--llm {llm})")
    create_qa_dataset(docs, dataset_dir, llm=llm, base_url=base_url, questions_per_chunk=questions_per_chunk,
                      max_chunks=max_chunks, seed=seed)
    data = load_qa_dataset(dataset_dir)
    click.echo("Some of the synthetic questions:")
    for qid in sorted(data.queries)[:6]:
        chunk_id = data.query_info[qid]["chunk_id"]
        click.echo(f"  - [{data.corpus[chunk_id]['title']}] {data.queries[qid]}")

    _step(2, n, f"index: BM25 + embedded:minilm/FAISS over {len(data.corpus)} chunks -> {index_dir}")
    index = load_index(index_dir) if (index_dir / "config.json").is_file() else build_index(data.corpus, index_dir)

    _step(3, n, f"train: mine hard negatives, fine-tune embedded:minilm-ce for {train_steps} steps -> {model_dir}")
    if (model_dir / "config.json").is_file():
        click.echo(f"  reusing {model_dir} (delete it to retrain)")
    else:
        result = finetune(dataset_dir, model_dir, index_dir=index_dir, max_steps=train_steps, max_length=192,
                          sanity_gate="warn", command="rag-rerank demo")
        click.echo(f"  {result.verdict}")

    _step(4, n, "evaluate on the synthetic test split (held-out documents): first stage vs reranked")
    corpus, queries, qrels = data.split("test")
    if not queries:
        corpus, queries, qrels = data.split("validation")
    report = evaluate_systems(corpus, queries, qrels, index=index, rerankers={"finetuned": model_dir},
                              alpha="auto", n_resamples=2000, seed=seed)
    write_report(report, out / "report")
    click.echo(markdown_table(report))
    click.echo(f"  report: {out / 'report' / 'report.md'}")

    _step(5, n, "answer a question: hybrid retriever -> fine-tuned reranker -> SmolLM2, with sources")
    from rag_rerank.integrations.llamaindex import format_answer, open_query_engine

    question = question or queries[sorted(queries)[0]]
    click.echo(f"  Q: {question}")
    with open_query_engine(index, reranker=str(model_dir), top_k=3, similarity_top_k=20, llm=llm,
                           base_url=base_url) as engine:
        response = engine.query(question)
    click.echo(format_answer(response))
    click.echo(f"\ndone in {time.monotonic() - t0:.0f}s; outputs under {out}")


COMMANDS = [demo_cmd]
