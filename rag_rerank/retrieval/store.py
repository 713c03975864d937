"""Index folders: atomic writes, building from a corpus file, loading with a bi-encoder check.

Layout of an index folder::

    IDX/config.json        format, version, bi-encoder name + weights hash, fusion settings
    IDX/corpus.jsonl       the indexed corpus (BEIR)
    IDX/bm25/              weights.npz (terms x docs), idf.npy, doc_len.npy, vocab.json, doc_ids.json, config.json
    IDX/dense/             faiss.index, doc_ids.json, text_keys.json (embedding cache keys), config.json

A folder is written under a temporary name beside the target and renamed into place
(:func:`rag_rerank.io.atomic_dir`), so readers never see a half-written index; an existing index at the target
is replaced only once the new one is complete, and a folder that is not an index is never replaced.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rag_rerank.errors import DataError
from rag_rerank.io import load_corpus
from rag_rerank.retrieval.bm25 import BM25Retriever
from rag_rerank.retrieval.dense import DenseRetriever
from rag_rerank.retrieval.hybrid import HybridRetriever
from rag_rerank.types import Corpus

logger = logging.getLogger(__name__)


def resolve_corpus_path(path: str | os.PathLike) -> Path:
    """A BEIR ``corpus.jsonl`` file, or a folder holding one (a generated dataset or BEIR folder).

    Example:
        >>> resolve_corpus_path("data/mydataset")  # doctest: +SKIP
        PosixPath('data/mydataset/corpus.jsonl')
    """
    p = Path(path)
    if p.is_dir():
        if (p / "corpus.jsonl").is_file():
            return p / "corpus.jsonl"
        raise DataError(f"{p}: folder has no corpus.jsonl; give a BEIR corpus.jsonl or a dataset folder holding one")
    if not p.is_file():
        raise DataError(f"{p}: no such file; give a BEIR corpus.jsonl or a dataset folder holding one")
    return p


def build_index(
    corpus: Corpus | str | os.PathLike,
    out: str | os.PathLike,
    *,
    bi_encoder: str | None = "embedded:minilm",
    faiss_index: str = "flat",
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    bm25: BM25Retriever | None = None,
    show_progress_bar: bool | None = None,
    **hybrid_kwargs: Any,
) -> HybridRetriever:
    """Index a corpus (a ``Corpus`` or a path) with BM25 and a bi-encoder and save it to ``out`` atomically.

    When ``out`` already holds an index built with the same bi-encoder, its embeddings are reused for
    unchanged chunks, so re-indexing after a small edit only encodes the edited chunks.

    Args:
        corpus: a ``Corpus``, a ``corpus.jsonl`` path, or a folder holding one.
        out: the index folder to write.
        bi_encoder: the bi-encoder name; ``None`` builds a BM25-only index.
        faiss_index: ``"flat"`` or ``"hnsw"``.
        batch_size: encoding batch size.
        device: torch device for encoding.
        cache_dir: optional persistent embedding cache folder.
        bm25: a configured :class:`BM25Retriever` (tokenizer, k1, b), default settings otherwise.
        show_progress_bar: progress bars (default: for large jobs).
        **hybrid_kwargs: fusion settings stored in the index (``fusion``, ``rrf_k``, ``weights``, ``norm``, ``depth``).

    Example:
        >>> h = build_index("data/squad/beir", "idx/squad")  # doctest: +SKIP
        >>> run = h.search({"q": "Which team won Super Bowl 50?"}, top_k=10)  # doctest: +SKIP
    """
    if not isinstance(corpus, dict):
        corpus = load_corpus(resolve_corpus_path(corpus))
    dense = None
    if bi_encoder is not None:
        dense = DenseRetriever(bi_encoder, faiss_index=faiss_index, batch_size=batch_size, device=device,
                               cache_dir=cache_dir)
        previous = Path(out) / "dense"
        if (previous / "config.json").is_file():
            try:
                n = dense.seed_cache(DenseRetriever.load(previous))
                logger.info("reusing %d embeddings from the existing index at %s", n, out)
            except Exception as e:  # noqa: BLE001 - a stale or foreign index only means no reuse
                logger.info("not reusing embeddings from %s: %s", previous, e)
    retriever = HybridRetriever(bm25 or BM25Retriever(), dense, **hybrid_kwargs)
    retriever.dense = dense
    retriever.index(corpus, show_progress_bar)
    retriever.save(out)
    logger.info("index written to %s (%d docs)", out, len(corpus))
    return retriever


def load_index(path: str | os.PathLike, bi_encoder: str | None = None, **overrides: Any) -> HybridRetriever:
    """Load an index folder as a :class:`HybridRetriever` (``.search(..., mode=...)``, ``.bm25``, ``.dense``).

    Args:
        path: the folder written by ``rag-rerank index`` or :func:`build_index`.
        bi_encoder: the bi-encoder you expect; a different one is refused with a clear message.
        **overrides: see :meth:`HybridRetriever.load`.

    Example:
        >>> idx = load_index("idx/squad")  # doctest: +SKIP
        >>> run = idx.search({"q": "Who won?"}, top_k=100, mode="bm25")  # doctest: +SKIP
    """
    return HybridRetriever.load(path, bi_encoder=bi_encoder, **overrides)
