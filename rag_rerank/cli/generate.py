"""``rag-rerank generate DOCS_DIR --out OUT``: a synthetic QA dataset from a folder of documents (issue 3).

Exit status: 0 when every chunk got questions, 3 when some chunks failed (a rerun retries only
those), 1 on a user error (one clean line, no traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_PARTIAL = 3


@click.command("generate")
@click.argument("docs_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (BEIR files, hf_dataset/, llamaindex_qa.json, manifest.json).")
@click.option("--llm", default="embedded", show_default=True,
              help="'embedded' (SmolLM2 via llama.cpp), 'openai:MODEL', or a .gguf path.")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint for openai:MODEL (vLLM, Ollama...).")
@click.option("--questions-per-chunk", default=2, show_default=True, type=click.IntRange(1, 20),
              help="Questions asked for (and kept at most) per chunk.")
@click.option("--concurrency", default=None, type=click.IntRange(1, 256),
              help="Requests in flight [default: 1 for embedded (reproducible), 8 for remote].")
@click.option("--prompt-file", default=None, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="User-message template with {chunk} (and optionally {n}, {title}, and {examples} with "
                   "--query-examples).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Sampling seed sent with every request; also seeds the chunk subset and the splits.")
@click.option("--chunk-tokens", default=256, show_default=True, type=click.IntRange(8, 8192),
              help="Chunk size in tokens of --tokenizer (whole sentences are packed up to it).")
@click.option("--chunk-overlap", default=0, show_default=True, type=click.IntRange(0, 4096),
              help="Tokens of whole sentences shared by consecutive chunks.")
@click.option("--tokenizer", default="embedded:minilm-ce", show_default=True,
              help="Tokenizer that counts chunk tokens (the reranker's).")
@click.option("--max-chunks", default=None, type=click.IntRange(1), help="Ask for a deterministic subset only.")
@click.option("--timeout", "request_timeout", default=60.0, show_default=True, type=float,
              help="Seconds per LLM request.")
@click.option("--max-retries", default=4, show_default=True, type=click.IntRange(0, 20),
              help="Retries of a request on 429, 5xx, timeouts and garbled answers (exponential backoff, jitter).")
@click.option("--retry-failed/--keep-failed", default=True, show_default=True,
              help="On a rerun, ask again for chunks that got no usable question (--keep-failed leaves a finished "
                   "dataset as it is; request errors are always retried).")
@click.option("--query-examples", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="5-50 example queries of the kind your system receives (.txt, one a line, or .jsonl): write "
                   "queries in their style (claims, keywords, arguments) instead of WH-questions.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: when 10+ chunks].")
def generate_cmd(
    docs_dir: Path, out_dir: Path, llm: str, base_url: str | None, questions_per_chunk: int,
    concurrency: int | None, prompt_file: Path | None, seed: int, chunk_tokens: int, chunk_overlap: int,
    tokenizer: str, max_chunks: int | None, request_timeout: float, max_retries: int, retry_failed: bool,
    query_examples: Path | None, progress: bool | None,
) -> None:
    """Create a synthetic QA dataset from DOCS_DIR (.txt, .md, .html, .pdf) into OUT.

    \b
    Resumable: rerun the same command after a crash; a finished OUT is a no-op.
    Example:
      rag-rerank generate sample_docs --out out/qa --max-chunks 20
    """
    from rag_rerank.generate.dataset import create_qa_dataset

    prompt = prompt_file.read_text(encoding="utf-8") if prompt_file else None
    s = create_qa_dataset(
        docs_dir, out_dir, llm=llm, base_url=base_url, questions_per_chunk=questions_per_chunk,
        concurrency=concurrency, prompt=prompt, seed=seed, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap,
        tokenizer=tokenizer, max_chunks=max_chunks, request_timeout=request_timeout, max_retries=max_retries,
        show_progress_bar=progress, retry_failed=retry_failed, query_examples=query_examples,
    )
    c = s.counts
    if s.no_op:
        click.echo(f"{out_dir}: already complete ({s.n_questions} questions, {s.n_chunks} chunks); nothing to do.")
        return
    dropped = ", ".join(f"{k} {v}" for k, v in c.get("dropped_by_reason", {}).items()) or "none"
    split = ", ".join(f"{k} {v}" for k, v in c.get("per_split", {}).items())
    click.echo(
        f"chunks: {s.n_chunks} asked of {c.get('chunks_total')} ({s.n_documents} documents); "
        f"{c.get('chunks_with_questions')} with questions\n"
        f"questions: asked {c.get('asked')}, returned {c.get('returned')}, kept {s.n_questions} ({split})\n"
        f"dropped: {dropped}\n"
        f"tokens: prompt {s.prompt_tokens}, completion {s.completion_tokens}; "
        f"requests this run: {s.requests_this_run}; time {s.seconds:.1f}s\n"
        f"wrote {out_dir}/ (corpus.jsonl, queries.jsonl, qrels/, hf_dataset/, llamaindex_qa.json, manifest.json)"
    )
    if s.failed_chunks:
        first = s.failed_chunks[0]
        click.echo(
            f"Partial: {len(s.failed_chunks)} chunk(s) failed (e.g. {first[0]}: {first[1]}); see failed_chunks in "
            f"{out_dir}/manifest.json. Rerun the same command to retry only those (--keep-failed: keep them).",
            err=True,
        )
        sys.exit(EXIT_PARTIAL)


COMMANDS = [generate_cmd]
