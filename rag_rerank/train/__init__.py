"""Stage 3, train: mine hard negatives with the first stage and fine-tune the reranker (or the bi-encoder).

Modules: ``recipes`` (every setting of the chain, named), ``config`` (:class:`RerankerTrainingConfig`,
:class:`TrainResult`), ``mining`` and ``groups`` (hard
negatives and training rows), ``losses``, ``reranker_trainer`` (:func:`train_reranker`), ``bi_encoder``,
``evaluators`` (MSE and realistic reranking), ``guards`` (preflight, NaN stop, sanity gate, verdict),
``model_card``, ``soup`` (checkpoint averaging), ``legacy`` (the seeds' ``fit``), ``distributed`` (torchrun:
the per-process batch and the one writer) and ``finetune`` (the glue: :func:`finetune`).
"""

from rag_rerank._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rag_rerank.train.bi_encoder": ("BiEncoderTrainingConfig", "choose_bi_encoder", "finetune_bi_encoder",
                                    "train_bi_encoder"),
    "rag_rerank.train.config": ("RerankerTrainingConfig", "TrainResult"),
    "rag_rerank.train.evaluators": ("MSEEvaluator", "RerankingEvaluator"),
    "rag_rerank.train.finetune": ("finetune",),
    "rag_rerank.train.groups": ("build_groups", "to_pairs"),
    "rag_rerank.train.guards": ("TrainingCollapsedError", "TrainingDivergedError"),
    "rag_rerank.train.legacy": ("legacy_fit",),
    "rag_rerank.train.losses": ("GroupSoftmaxLoss",),
    "rag_rerank.train.mining": ("MiningConfig", "MiningResult", "mine_hard_negatives"),
    "rag_rerank.train.recipes": ("RECIPES", "Recipe", "get_recipe"),
    "rag_rerank.train.reranker_trainer": ("train_reranker",),
    "rag_rerank.train.soup": ("average_checkpoints",),
})
