"""Evaluators for cross-encoder training, usable in two places.

1. ``CrossEncoderTrainer(evaluator=...)`` (what :func:`rag_rerank.train.reranker_trainer.train_reranker` uses);
2. the legacy ``CrossEncoder.fit(train_dataloader=..., evaluator=..., output_path=...)`` path that the seeds' users
   write, and :func:`rag_rerank.train.legacy.legacy_fit`.

Both follow sentence-transformers' ``BaseEvaluator`` contract: ``evaluator(model, output_path=None, epoch=-1,
steps=-1) -> dict``, with ``primary_metric`` naming the key used for model selection and ``greater_is_better``
saying which way is better.

Note where the CSV lands: sentence-transformers' trainer (and its ``CrossEncoder.fit``) hands evaluators
``{output_dir}/eval``; :func:`rag_rerank.train.legacy.legacy_fit` hands them ``output_path`` itself, as pre-v4
``fit`` did. The evaluator writes into whatever folder it is given.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from rag_rerank.errors import ConfigError
from rag_rerank.evaluate.metrics import evaluate
from rag_rerank.rerank.reranker import Reranker, sigmoid
from rag_rerank.train.distributed import is_main_process

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)


def _append_csv(output_path: str | None, filename: str, header: list[str], row: list[Any]) -> None:
    """Append one row to ``output_path/filename``, writing the header only when the file is new (under torchrun, the
    main process writes)."""
    if output_path is None or not is_main_process():
        return
    os.makedirs(output_path, exist_ok=True)
    path = os.path.join(output_path, filename)
    is_new = not os.path.isfile(path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if is_new:
            writer.writerow(header)
        writer.writerow(row)


class MSEEvaluator(BaseEvaluator):
    """Mean squared error between ``sigmoid(logits)`` and continuous labels in [0, 1].

    The model's raw logits are read (``activation_fn=Identity``) and squashed with a sigmoid here, so the
    result does not depend on the activation the model was saved with. ``greater_is_better`` is ``False``:
    the trainer's ``load_best_model_at_end`` keeps the lowest MSE.

    Args:
        pairs: ``[(text_a, text_b), ...]``.
        labels: one target per pair, in [0, 1] (STS-b scores divided by 5, say).
        name: a suffix for the metric keys and the CSV file name.
        write_csv: append ``epoch,steps,mse`` to ``{output_path}/mse_evaluation_{name}_results.csv``.
        batch_size: prediction batch size.
        show_progress_bar: tqdm bar while predicting; ``None`` follows the logging level.

    Example:
        >>> ev = MSEEvaluator([("a cat", "a cat sat")], [0.9], name="sts-dev")
        >>> ev(model, output_path="out")  # doctest: +SKIP
        {'sts-dev_mse': 0.16}
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[str]],
        labels: Sequence[float],
        name: str = "",
        write_csv: bool = True,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        super().__init__()
        if len(pairs) != len(labels):
            raise ConfigError(f"MSEEvaluator: {len(pairs)} pairs but {len(labels)} labels; pass one label per pair")
        if not pairs:
            raise ConfigError("MSEEvaluator: no pairs given; pass at least one (text_a, text_b) pair")
        self.pairs = [(str(a), str(b)) for a, b in pairs]
        self.labels = np.asarray(labels, dtype=np.float64)
        self.name = name
        self.write_csv = write_csv
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.csv_file = f"mse_evaluation_{name}_results.csv"
        self.csv_headers = ["epoch", "steps", "mse"]
        self.greater_is_better = False
        self.primary_metric = f"{name}_mse" if name else "mse"

    def __call__(
        self, model: CrossEncoder, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        import torch

        show = self.show_progress_bar
        if show is None:
            show = logger.getEffectiveLevel() <= logging.INFO
        logits = model.predict(
            self.pairs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
            convert_to_numpy=True, show_progress_bar=show,
        )
        mse = float(np.mean((sigmoid(np.asarray(logits, dtype=np.float64).reshape(-1)) - self.labels) ** 2))
        logger.info("MSEEvaluator %s (epoch %s, steps %s): mse=%.5f", self.name or "", epoch, steps, mse)
        if self.write_csv:
            _append_csv(output_path, self.csv_file, self.csv_headers, [epoch, steps, mse])
        return {self.primary_metric: mse}

    def get_config_dict(self) -> dict[str, Any]:
        return {"n_pairs": len(self.pairs)}


class RerankingEvaluator(BaseEvaluator):
    """Realistic reranking evaluation: rerank the first stage's candidates, positives not injected.

    Each sample is ``{"query": str, "positive": [str, ...], "documents": [str, ...]}`` with ``documents`` in
    first-stage order. The model rescores ``documents``; a query whose positive is not among them scores 0,
    just as it would in production. Ties in the model's scores keep first-stage order (a stable sort), so
    results are deterministic. Relevance is binary (a document is relevant when its text is in ``positive``).

    Sentence-transformers' ``CrossEncoderRerankingEvaluator`` is not reused: even with
    ``always_rerank_positives=False`` its reranked NDCG divides by the positives *present* in the list (a
    missed positive is not penalised), and sklearn's ``ndcg_score`` averages over ties.

    ``long_documents=None`` scores pairs with ``model.predict`` (a long passage is cut at ``max_length``, as
    in sentence-transformers); ``"window"`` or ``"truncate"`` scores them through
    :class:`rag_rerank.rerank.Reranker` with that policy, i.e. exactly as the saved model will be served.
    ``train_reranker`` uses ``"window"``, the ``Reranker`` default.

    Returns ``mrr@k``, ``ndcg@k`` (reranked), ``base_mrr@k``, ``base_ndcg@k`` (first-stage order, computed
    once and cached) and ``base_recall@n`` (the share of queries with a positive among the candidates: the
    ceiling any reranker can reach). ``primary_metric`` is ``mrr@k`` (prefixed with ``name``).

    With ``prior_weight`` (residual training, ``RerankerTrainingConfig.prior_weight``), each sample also holds
    ``prior`` (the first stage's z-scored score of each document) and documents are ranked by the model's logit
    plus ``prior_weight * prior``: the system the residual model was trained to be.

    Example:
        >>> samples = [{"query": "q", "positive": ["gold"], "documents": ["x", "gold", "y"]}]
        >>> ev = RerankingEvaluator(samples, at_k=10, name="val")
        >>> ev(model)["val_base_mrr@10"]  # doctest: +SKIP
        0.5
    """

    def __init__(
        self,
        samples: Sequence[dict[str, Any]],
        at_k: int = 10,
        name: str = "",
        write_csv: bool = True,
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        long_documents: str | None = None,
        backend: str = "torch",
        prior_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.prior_weight = prior_weight
        if long_documents not in (None, "window", "truncate"):
            raise ConfigError(f"long_documents={long_documents!r}; use None, 'window' or 'truncate'")
        self.long_documents = long_documents
        if not samples:
            raise ConfigError("RerankingEvaluator: no samples; pass [{'query', 'positive', 'documents'}, ...]")
        checked = []
        for i, s in enumerate(samples):
            missing = [k for k in ("query", "positive", "documents") if k not in s]
            if missing:
                raise ConfigError(
                    f"RerankingEvaluator: sample {i} lacks {missing}; each sample needs 'query', 'positive' "
                    "(list of relevant texts) and 'documents' (candidates in first-stage order)"
                )
            pos = [s["positive"]] if isinstance(s["positive"], str) else list(s["positive"])
            if prior_weight is not None and len(s.get("prior") or []) != len(s["documents"]):
                raise ConfigError(f"RerankingEvaluator: sample {i} needs a 'prior' score per document with "
                                  "prior_weight (rag_rerank.train.finetune.samples_from_run adds them)")
            checked.append({"query": s["query"], "positive": pos, "documents": list(s["documents"]),
                            "prior": list(s.get("prior") or [])})
        self.samples = checked
        self.at_k = at_k
        self.name = name
        self.write_csv = write_csv
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.primary_metric = self._key(f"mrr@{at_k}")
        self.csv_file = f"reranking_evaluation_{name}_results@{at_k}.csv"
        self.csv_headers = ["epoch", "steps", f"MRR@{at_k}", f"NDCG@{at_k}", f"base_MRR@{at_k}", f"base_NDCG@{at_k}"]
        self._base: dict[str, float] | None = None

    def _key(self, metric: str) -> str:
        return f"{self.name}_{metric}" if self.name else metric

    def _metrics(self, rankings: list[list[int]]) -> tuple[float, float]:
        """Mean MRR@k and NDCG@k (:mod:`rag_rerank.evaluate.metrics`); ``rankings[i]`` lists the candidate
        indices of sample i, best first.

        Each sample becomes a query whose run scores its candidates by rank, and whose qrels hold the candidates
        whose text is a positive plus one entry per positive the candidates missed (so a lost positive still
        counts in NDCG's ideal, as in trec_eval).
        """
        run: dict[str, dict[str, float]] = {}
        qrels: dict[str, dict[str, int]] = {}
        for i, (sample, order) in enumerate(zip(self.samples, rankings, strict=True)):
            qid, pos = f"s{i}", set(sample["positive"])
            run[qid] = {f"{j:06d}": float(len(order) - r) for r, j in enumerate(order)}
            rels = {f"{j:06d}": 1 for j, d in enumerate(sample["documents"]) if d in pos}
            found = {d for d in sample["documents"] if d in pos}
            rels.update({f"missing-{m}": 1 for m, p in enumerate(sorted(pos - found))})
            qrels[qid] = rels or {"missing-none": 1}  # no positive at all: the sample scores 0, as it counts
        scores = evaluate(run, qrels, [f"mrr@{self.at_k}", f"ndcg@{self.at_k}"])
        return scores[f"mrr@{self.at_k}"], scores[f"ndcg@{self.at_k}"]

    def first_stage_metrics(self) -> dict[str, float]:
        """The metrics of the input (first-stage) order, computed once; keys carry the ``base_`` prefix."""
        if self._base is None:
            mrr, ndcg = self._metrics([list(range(len(s["documents"]))) for s in self.samples])
            n = max(len(s["documents"]) for s in self.samples)
            recall = float(np.mean([any(d in set(s["positive"]) for d in s["documents"]) for s in self.samples]))
            self._base = {
                self._key(f"base_mrr@{self.at_k}"): mrr,
                self._key(f"base_ndcg@{self.at_k}"): ndcg,
                self._key(f"base_recall@{n}"): recall,
            }
            logger.info(
                "RerankingEvaluator %s: first stage MRR@%d=%.4f NDCG@%d=%.4f recall@%d=%.4f (the ceiling)",
                self.name, self.at_k, mrr, self.at_k, ndcg, n, recall,
            )
        return dict(self._base)

    def __call__(
        self, model: CrossEncoder, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        import torch

        pairs = [(s["query"], d) for s in self.samples for d in s["documents"]]
        show = self.show_progress_bar
        if show is None:
            show = logger.getEffectiveLevel() <= logging.INFO
        if not pairs:
            raw: Any = []
        elif self.long_documents is None:
            raw = model.predict(pairs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                convert_to_numpy=True, show_progress_bar=show)
        else:  # score as rag_rerank.Reranker serves the model, so checkpoints are chosen the way they are used
            raw = Reranker(model, batch_size=self.batch_size, activation="none", backend=self.backend,
                           long_documents=self.long_documents).predict(pairs, show_progress_bar=show)
        scores = np.asarray(raw, dtype=np.float64).reshape(-1)
        rankings, offset = [], 0
        for s in self.samples:
            n = len(s["documents"])
            sc = scores[offset: offset + n]
            offset += n
            if self.prior_weight is not None:
                sc = sc + self.prior_weight * np.asarray(s["prior"], dtype=np.float64)
            rankings.append(sorted(range(n), key=lambda j, sc=sc: (-sc[j], j)))
        mrr, ndcg = self._metrics(rankings)
        base = self.first_stage_metrics()
        metrics = {self._key(f"mrr@{self.at_k}"): mrr, self._key(f"ndcg@{self.at_k}"): ndcg, **base}
        logger.info(
            "RerankingEvaluator %s (epoch %s, steps %s): MRR@%d %.4f -> %.4f, NDCG@%d %.4f -> %.4f",
            self.name, epoch, steps, self.at_k, base[self._key(f"base_mrr@{self.at_k}")], mrr,
            self.at_k, base[self._key(f"base_ndcg@{self.at_k}")], ndcg,
        )
        if self.write_csv:
            _append_csv(
                output_path, self.csv_file, self.csv_headers,
                [epoch, steps, mrr, ndcg, base[self._key(f"base_mrr@{self.at_k}")],
                 base[self._key(f"base_ndcg@{self.at_k}")]],
            )
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        return {"at_k": self.at_k, "n_queries": len(self.samples), "prior_weight": self.prior_weight}
