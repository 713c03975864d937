"""Stage 4, rerank: the :class:`Reranker`, its backends, the score cache, run operations and fusion weights.

Modules: ``reranker`` (:class:`Reranker`: bucketing, windows, cache), ``windows``, ``backends/`` (one registry:
torch, onnx, openvino), ``score_cache``, ``runs`` (rerank and fuse a first-stage run) and ``fusion`` (the
fusion weight ``alpha`` chosen on validation, ``fusion.json``).
"""

from rag_rerank._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rag_rerank.rerank.backends": ("BACKENDS", "BackendNotAvailableError"),
    "rag_rerank.rerank.fusion": ("FusionChoice", "choose_alpha", "load_fusion", "save_fusion", "saved_alpha"),
    "rag_rerank.rerank.reranker": ("Reranker", "RerankerConfig", "sigmoid"),
    "rag_rerank.rerank.runs": ("apply_scores", "interpolate_run", "rerank_run", "score_candidates"),
    "rag_rerank.rerank.score_cache": ("CacheInfo",),
})
