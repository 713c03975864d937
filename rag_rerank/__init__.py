"""rag-rerank: adapt a RAG system's reranker to your own documents, with no human labels.

The public API, imported lazily (``import rag_rerank`` loads neither torch nor transformers)::

    import rag_rerank as rr

    rr.create_qa_dataset("docs/", "data/qa", max_chunks=50)            # synthetic questions, resumable
    index = rr.build_index("data/qa", "idx/qa")                         # BM25 + bi-encoder hybrid
    result = rr.finetune("data/qa", "models/reranker", index_dir="idx/qa")
    print(rr.Reranker("models/reranker").rank("my question", ["passage one", "passage two"]))

Stages live in packages: ``generate``, ``retrieval``, ``train``, ``rerank``, ``evaluate`` and
``integrations.llamaindex`` (the postprocessor, retriever and query engine).
"""

from rag_rerank._lazy import attach

__version__ = "0.2.0"

__getattr__, __dir__, _names = attach(__name__, {
    "rag_rerank.errors": ("ConfigError", "DataError", "LLMError", "ModelUnavailableError", "RagRerankError"),
    "rag_rerank.evaluate.compare": ("evaluate_systems",),
    "rag_rerank.evaluate.result": ("EvaluationResult",),
    "rag_rerank.generate.dataset": ("create_qa_dataset",),
    "rag_rerank.generate.store": ("load_qa_dataset",),
    "rag_rerank.rerank.reranker": ("Reranker",),
    "rag_rerank.retrieval.store": ("build_index", "load_index"),
    "rag_rerank.train.config": ("RerankerTrainingConfig", "TrainResult"),
    "rag_rerank.train.finetune": ("finetune",),
    "rag_rerank.train.mining": ("MiningConfig",),
})
__all__ = ["__version__", *_names]
