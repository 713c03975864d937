"""Stage 5, evaluate: metrics (one implementation), paired significance tests, system comparison and reports.

Modules: ``metrics`` (trec_eval definitions), ``significance`` (paired bootstrap and randomisation),
``result`` (:class:`EvaluationResult`, :func:`compare`), ``compare`` (:func:`evaluate_systems`), ``report`` and
``plots``.
"""

from rag_rerank._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rag_rerank.evaluate.compare": ("REPORT_METRICS", "evaluate_systems", "sample_query_ids"),
    "rag_rerank.evaluate.metrics": ("evaluate", "gold_ranks", "parse_metric", "per_query", "rank_histogram"),
    "rag_rerank.evaluate.report": ("markdown_table", "write_report"),
    "rag_rerank.evaluate.result": ("Delta", "EvaluationResult", "compare"),
    "rag_rerank.evaluate.significance": ("paired_bootstrap", "paired_randomization"),
})
