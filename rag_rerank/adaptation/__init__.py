"""The whole chain in one call: :func:`adapt` (``rag-rerank adapt DOCS --out RUN``), driven by a recipe
(:mod:`rag_rerank.train.recipes`).

Modules: ``first_stage`` (the hybrid's fusion tuned on validation), ``plan`` and ``calibrate`` (sizing a run to this
machine and a time budget), ``runfolder`` (resume, lock, identity) and ``pipeline`` (:func:`adapt`).
"""

from rag_rerank._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rag_rerank.adaptation.pipeline": ("AdaptResult", "adapt"),
    "rag_rerank.adaptation.first_stage": ("FirstStageChoice", "tune_first_stage"),
})
