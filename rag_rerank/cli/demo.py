"""``rag-rerank demo``: the main job on the embedded defaults, end to end, on sample_docs/.

Everything runs offline: the SmolLM2 GGUF writes the questions (llama.cpp on loopback), MiniLM is
the bi-encoder, and the reranker is fine-tuned from ``embedded:minilm-ce``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

DEFAULT_DOCS = Path(__file__).resolve().parents[2] / "sample_docs"


@click.command("demo")
@click.option(
    "--docs", type=click.Path(path_type=Path), default=DEFAULT_DOCS, show_default=True, help="Folder of documents."
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--llm", default="embedded", show_default=True, help="embedded | openai:MODEL")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint for --llm openai:MODEL.")
@click.option(
    "--max-chunks",
    type=int,
    default=40,
    show_default=True,
    help="Chunks to write questions for (a deterministic subset keeps the demo to minutes on a CPU).",
)
@click.option("--questions-per-chunk", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo_cmd(
    docs: Path, out: Path, llm: str, base_url: str | None, max_chunks: int, questions_per_chunk: int, seed: int
) -> None:
    """Run the pipeline on sample_docs with the embedded defaults and show what it made."""
    from rag_rerank.qa_generation import create_qa_dataset, load_qa_dataset

    t0 = time.monotonic()
    dataset_dir = out / "dataset"
    click.echo(
        f"[1/1] generate: {docs} -> {dataset_dir} ({max_chunks} chunks, {questions_per_chunk} q/chunk, --llm {llm})"
    )
    create_qa_dataset(
        docs,
        dataset_dir,
        llm=llm,
        base_url=base_url,
        questions_per_chunk=questions_per_chunk,
        max_chunks=max_chunks,
        seed=seed,
    )
    data = load_qa_dataset(dataset_dir)
    click.echo("\nSample of the synthetic questions:")
    for qid, text in list(data.queries.items())[:8]:
        chunk_id = next(iter(data.qrels_all[qid]))
        title = data.corpus[chunk_id].get("title", "")
        click.echo(f"  - [{title}] {text}")
    click.echo(f"\ndone in {time.monotonic() - t0:.0f}s; outputs under {out}")


COMMANDS = [demo_cmd]
