"""First-stage retrieval: BM25 (rank_bm25 semantics, sparse matrix), dense (bi-encoder + FAISS), hybrid fusion.

Every retriever has ``.index(corpus) -> self``, ``.search(queries, top_k) -> Run``, ``.save(dir)`` and
``.load(dir)``. ``load_index(dir)`` opens a folder written by ``rag-rerank index``.

Example:
    >>> from rag_rerank.retrieval import BM25Retriever
    >>> run = BM25Retriever().index({"d1": {"title": "", "text": "the red fox"}}).search({"q": "fox"})
    >>> list(run["q"])
    ['d1']
"""

from __future__ import annotations

from rag_rerank.retrieval.bm25 import BM25Retriever, doc_text
from rag_rerank.retrieval.dense import BiEncoderMismatchError, DenseRetriever, model_fingerprint
from rag_rerank.retrieval.hybrid import HybridRetriever, normalize_scores, rrf, weighted_fusion
from rag_rerank.retrieval.store import atomic_dir, build_index, load_index, resolve_corpus_path
from rag_rerank.retrieval.tokenize import ENGLISH_STOPWORDS, Tokenizer

__all__ = [
    "ENGLISH_STOPWORDS",
    "BM25Retriever",
    "BiEncoderMismatchError",
    "DenseRetriever",
    "HybridRetriever",
    "Tokenizer",
    "atomic_dir",
    "build_index",
    "doc_text",
    "load_index",
    "model_fingerprint",
    "normalize_scores",
    "resolve_corpus_path",
    "rrf",
    "weighted_fusion",
]
