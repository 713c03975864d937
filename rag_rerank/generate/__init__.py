"""Stage 1, generate: documents -> chunks -> LLM questions -> a filtered, split, resumable QA dataset.

Modules: ``documents`` (load a folder), ``chunking`` (chunks in the reranker's tokenizer), ``llm`` (the ``openai``
client every LLM goes through), ``server`` (the embedded llama.cpp server), ``prompts``, ``questions`` (parsing
and filters), ``dataset`` (:func:`create_qa_dataset`) and ``store`` (the files on disk, :func:`load_qa_dataset`).
"""

from rag_rerank._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rag_rerank.generate.chunking": ("chunk_documents", "chunk_text", "load_chunks"),
    "rag_rerank.generate.dataset": ("create_qa_dataset",),
    "rag_rerank.generate.documents": ("Document", "LoadReport", "load_documents"),
    "rag_rerank.generate.llm": ("LLMClient", "LLMSettings", "open_llm"),
    "rag_rerank.generate.prompts": ("FEW_SHOT", "QUESTION_PROMPT", "SYSTEM_PROMPT", "build_messages"),
    "rag_rerank.generate.questions": ("FilterConfig", "filter_questions", "parse_questions"),
    "rag_rerank.generate.server": ("EmbeddedLLMServer",),
    "rag_rerank.generate.store": ("QADataset", "QADatasetSummary", "load_qa_dataset"),
})
