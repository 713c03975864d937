"""Stage 2, the first stage: BM25 (rank_bm25 semantics, sparse matrix), dense (bi-encoder + FAISS), hybrid fusion.

Every retriever has ``.index(corpus) -> self``, ``.search(queries, top_k) -> Run``, ``.save(dir)`` and
``.load(dir)``. :func:`build_index` writes an index folder and :func:`load_index` opens one.

Example:
    >>> from rag_rerank.retrieval import BM25Retriever
    >>> run = BM25Retriever().index({"d1": {"title": "", "text": "the red fox"}}).search({"q": "fox"})
    >>> list(run["q"])
    ['d1']
"""

from rag_rerank._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rag_rerank.retrieval.bm25": ("BM25Retriever",),
    "rag_rerank.retrieval.common": ("doc_text",),
    "rag_rerank.retrieval.dense": ("BiEncoderMismatchError", "DenseRetriever", "model_fingerprint"),
    "rag_rerank.retrieval.fusion": ("interpolate_scores", "normalize_scores", "rrf", "weighted_fusion"),
    "rag_rerank.retrieval.hybrid": ("HybridRetriever",),
    "rag_rerank.retrieval.store": ("build_index", "load_index", "resolve_corpus_path"),
    "rag_rerank.retrieval.tokenize": ("ENGLISH_STOPWORDS", "Tokenizer"),
})
