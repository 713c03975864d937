"""LlamaIndex integration: the reranker as a node postprocessor, the hybrid index as a retriever, a query engine.

Imported only when used (``llama-index-core`` is a dependency, the OpenAI-like LLM an extra).

Example:
    >>> from rag_rerank.integrations.llamaindex import RagRerankPostprocessor, open_query_engine, format_answer
"""

from rag_rerank._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rag_rerank.integrations.llamaindex.postprocessor": ("RagRerankPostprocessor",),
    "rag_rerank.integrations.llamaindex.query_engine": ("CitedContextPostprocessor", "build_query_engine",
                                                        "format_answer", "open_query_engine"),
    "rag_rerank.integrations.llamaindex.retriever": ("RagRerankHybridRetriever",),
})
