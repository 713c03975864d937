"""rag-rerank: adapt a RAG system's reranker to your own documents, with no human labels.

The public API is small; everything else lives in its module (see the README).
"""

from __future__ import annotations

__version__ = "0.1.0"

from rag_rerank.errors import DataError, LLMError, ModelUnavailableError, RagRerankError
from rag_rerank.models import resolve_model_path
from rag_rerank.types import Chunk, Corpus, QAExample, Qrels, Queries, Run

__all__ = [
    "__version__",
    "Chunk",
    "Corpus",
    "DataError",
    "LLMError",
    "ModelUnavailableError",
    "QAExample",
    "Qrels",
    "Queries",
    "RagRerankError",
    "Run",
    "resolve_model_path",
]
