"""CLI stage(s): ``index`` builds a first-stage index folder; ``retrieve`` writes a TREC run from it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

logger = logging.getLogger(__name__)


@click.command("index")
@click.argument("corpus", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Index folder to write.")
@click.option("--bi-encoder", default="embedded:minilm", show_default=True, help="Bi-encoder name or path.")
@click.option("--no-dense", is_flag=True, help="BM25 only: no bi-encoder, no FAISS index.")
@click.option("--faiss", "faiss_index", type=click.Choice(["flat", "hnsw"]), default="flat", show_default=True,
              help="flat: exact search; hnsw: approximate, for large corpora.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Encoding batch size.")
@click.option("--device", default=None, help="Torch device for encoding (default: cuda/mps if present, else cpu).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Persistent embedding cache shared across indexes (optional).")
def index_cmd(
    corpus: Path, out: Path, bi_encoder: str, no_dense: bool, faiss_index: str, batch_size: int,
    device: str | None, cache_dir: Path | None,
) -> None:
    """Index CORPUS (a BEIR corpus.jsonl, or a dataset folder holding one) with BM25 and a bi-encoder.

    \b
    Re-indexing into the same --out reuses the embeddings of unchanged chunks.
    Example:  rag-rerank index data/squad/beir/corpus.jsonl --out idx/squad
    """
    from rag_rerank.retrieval.store import build_index

    start = time.perf_counter()
    h = build_index(
        corpus, out, bi_encoder=None if no_dense else bi_encoder, faiss_index=faiss_index,
        batch_size=batch_size, device=device, cache_dir=cache_dir,
    )
    kind = "BM25 only" if h.dense is None else f"BM25 + {h.dense.model_name} ({faiss_index})"
    click.echo(f"Indexed {len(h.corpus)} docs [{kind}] into {out} in {time.perf_counter() - start:.1f}s", err=True)


@click.command("retrieve")
@click.argument("index_dir", metavar="IDX", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--queries", "-q", "queries_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="BEIR queries.jsonl (or a dataset folder holding one).")
@click.option("--top-k", "-k", default=100, show_default=True, type=click.IntRange(min=1), help="Docs per query.")
@click.option("--mode", type=click.Choice(["bm25", "dense", "hybrid"]), default="hybrid", show_default=True,
              help="Which first stage: BM25, the bi-encoder, or their fusion.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="TREC run file to write.")
@click.option("--bi-encoder", default=None, help="Refuse unless the index was built with this bi-encoder.")
@click.option("--fusion", type=click.Choice(["rrf", "weighted"]), default=None, help="Override the index's fusion.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Query encoding batch size.")
@click.option("--device", default=None, help="Torch device for query encoding.")
@click.option("--tag", default=None, help="Run tag (last TREC column); default rag-rerank-MODE.")
def retrieve_cmd(
    index_dir: Path, queries_path: Path, top_k: int, mode: str, out: Path, bi_encoder: str | None,
    fusion: str | None, batch_size: int | None, device: str | None, tag: str | None,
) -> None:
    """Retrieve the top-k docs for each query from index IDX; write a TREC run (qid Q0 docid rank score tag).

    \b
    Example:  rag-rerank retrieve idx/squad --queries data/squad/beir/queries.jsonl --top-k 100 \\
                  --mode hybrid --out runs/squad-hybrid.trec
    """
    from rag_rerank.errors import DataError
    from rag_rerank.io import load_queries, save_run
    from rag_rerank.retrieval.store import load_index

    if queries_path.is_dir():
        queries_path = queries_path / "queries.jsonl"
        if not queries_path.is_file():
            raise DataError(f"{queries_path.parent}: folder has no queries.jsonl; give a BEIR queries.jsonl")
    queries = load_queries(queries_path)
    if not queries:
        raise DataError(f"{queries_path}: no queries found")
    overrides = {k: v for k, v in {"fusion": fusion, "batch_size": batch_size, "device": device}.items() if v}
    index = load_index(index_dir, bi_encoder=bi_encoder, **overrides)
    if mode != "bm25" and index.dense is not None:
        index.dense.model  # noqa: B018 - load (and check) the bi-encoder before timing the search
    start = time.perf_counter()
    run = index.search(queries, top_k=top_k, mode=mode)
    elapsed = time.perf_counter() - start
    save_run(out, run, tag=tag or f"rag-rerank-{mode}", top_k=top_k)
    empty = sum(1 for r in run.values() if not r)
    note = f" ({empty} with no match)" if empty else ""
    click.echo(
        f"Retrieved top-{top_k} ({mode}) for {len(run)} queries{note} in {elapsed:.1f}s "
        f"({len(run) / max(elapsed, 1e-9):.0f} q/s); run written to {out}", err=True,
    )


COMMANDS = [index_cmd, retrieve_cmd]
