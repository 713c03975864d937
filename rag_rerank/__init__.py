"""rag-rerank: adapt a RAG system's reranker to your own documents, with no human labels.

The public API, imported lazily (``import rag_rerank`` loads neither torch nor transformers)::

    import rag_rerank as rr

    run = rr.adapt("docs/", "runs/mydocs")          # questions, index, tuned first stage, fine-tune, fusion, report
    print(run.verdict)                              # IMPROVED / DID NOT HELP, decided on validation with a CI
    print(rr.Reranker(run.reranker_dir).rank("my question", ["passage one", "passage two"]))

The stages are also separate calls: ``create_qa_dataset``, ``build_index``, ``finetune``, ``evaluate_systems``.

Stages live in packages: ``generate``, ``retrieval``, ``train``, ``rerank``, ``evaluate`` and
``integrations.llamaindex`` (the postprocessor, retriever and query engine).
"""

from rag_rerank._lazy import attach

__version__ = "0.2.0"

__getattr__, __dir__, _names = attach(__name__, {
    "rag_rerank.adaptation.pipeline": ("adapt",),
    "rag_rerank.train.recipes": ("Recipe", "get_recipe"),
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
