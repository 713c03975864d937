"""Evaluators for cross-encoder training, usable in two places.

1. ``CrossEncoderTrainer(evaluator=...)`` (what :func:`rag_rerank.training.train_reranker` uses);
2. the legacy ``CrossEncoder.fit(train_dataloader=..., evaluator=..., output_path=...)`` path that the seeds' users
   write, and :func:`rag_rerank.training.legacy_fit`.

Both follow sentence-transformers' ``BaseEvaluator`` contract: ``evaluator(model, output_path=None, epoch=-1,
steps=-1) -> dict``, with ``primary_metric`` naming the key used for model selection and ``greater_is_better``
saying which way is better.

Note where the CSV lands: sentence-transformers' trainer (and its ``CrossEncoder.fit``) hands evaluators
``{output_dir}/eval``; :func:`rag_rerank.training.legacy_fit` hands them ``output_path`` itself, as pre-v4
``fit`` did. The evaluator writes into whatever folder it is given.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from transformers import TrainerCallback

from rag_rerank.errors import RagRerankError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)


def _append_csv(output_path: str | None, filename: str, header: list[str], row: list[Any]) -> None:
    """Append one row to ``output_path/filename``, writing the header only when the file is new."""
    if output_path is None:
        return
    os.makedirs(output_path, exist_ok=True)
    path = os.path.join(output_path, filename)
    is_new = not os.path.isfile(path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if is_new:
            writer.writerow(header)
        writer.writerow(row)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


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
            raise ValueError(f"MSEEvaluator: {len(pairs)} pairs but {len(labels)} labels; pass one label per pair")
        if not pairs:
            raise ValueError("MSEEvaluator: no pairs given; pass at least one (text_a, text_b) pair")
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
        mse = float(np.mean((_sigmoid(np.asarray(logits, dtype=np.float64).reshape(-1)) - self.labels) ** 2))
        logger.info("MSEEvaluator %s (epoch %s, steps %s): mse=%.5f", self.name or "", epoch, steps, mse)
        if self.write_csv:
            _append_csv(output_path, self.csv_file, self.csv_headers, [epoch, steps, mse])
        return {self.primary_metric: mse}

    def get_config_dict(self) -> dict[str, Any]:
        return {"n_pairs": len(self.pairs)}


def reciprocal_rank(is_relevant: Sequence[int], k: int) -> float:
    """``1 / rank`` of the first relevant item within the top ``k`` (0 when none).

    Example:
        >>> reciprocal_rank([0, 0, 1, 1], k=10)
        0.3333333333333333
    """
    for i, rel in enumerate(is_relevant[:k]):
        if rel:
            return 1.0 / (i + 1)
    return 0.0


def ndcg_binary(is_relevant: Sequence[int], n_relevant: int, k: int) -> float:
    """NDCG@k with binary gains; the ideal ranking holds ``min(n_relevant, k)`` relevant items.

    ``n_relevant`` counts *all* relevant documents of the query (as in trec_eval), including those the
    candidate list missed, so a first stage that lost the positive is not rewarded.

    Example:
        >>> round(ndcg_binary([0, 1], n_relevant=1, k=10), 4)
        0.6309
    """
    dcg = sum(1.0 / math.log2(i + 2) for i, rel in enumerate(is_relevant[:k]) if rel)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n_relevant, k)))
    return dcg / idcg if idcg > 0 else 0.0


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
    :class:`rag_rerank.reranker.Reranker` with that policy, i.e. exactly as the saved model will be served.
    ``train_reranker`` uses ``"window"``, the ``Reranker`` default.

    Returns ``mrr@k``, ``ndcg@k`` (reranked), ``base_mrr@k``, ``base_ndcg@k`` (first-stage order, computed
    once and cached) and ``base_recall@n`` (the share of queries with a positive among the candidates: the
    ceiling any reranker can reach). ``primary_metric`` is ``mrr@k`` (prefixed with ``name``).

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
    ) -> None:
        super().__init__()
        if long_documents not in (None, "window", "truncate"):
            raise ValueError(f"long_documents={long_documents!r}; use None, 'window' or 'truncate'")
        self.long_documents = long_documents
        if not samples:
            raise ValueError("RerankingEvaluator: no samples; pass [{'query', 'positive', 'documents'}, ...]")
        checked = []
        for i, s in enumerate(samples):
            missing = [k for k in ("query", "positive", "documents") if k not in s]
            if missing:
                raise ValueError(
                    f"RerankingEvaluator: sample {i} lacks {missing}; each sample needs 'query', 'positive' "
                    "(list of relevant texts) and 'documents' (candidates in first-stage order)"
                )
            pos = [s["positive"]] if isinstance(s["positive"], str) else list(s["positive"])
            checked.append({"query": s["query"], "positive": pos, "documents": list(s["documents"])})
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
        """Mean MRR@k and NDCG@k; ``rankings[i]`` lists candidate indices of sample i, best first."""
        mrr, ndcg = [], []
        for sample, order in zip(self.samples, rankings, strict=True):
            pos = set(sample["positive"])
            rel = [int(sample["documents"][j] in pos) for j in order]
            mrr.append(reciprocal_rank(rel, self.at_k))
            ndcg.append(ndcg_binary(rel, len(pos), self.at_k))
        return float(np.mean(mrr)), float(np.mean(ndcg))

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
            from rag_rerank.reranker import Reranker

            raw = Reranker(model, batch_size=self.batch_size, activation="none",
                           long_documents=self.long_documents).predict(pairs, show_progress_bar=show)
        scores = np.asarray(raw, dtype=np.float64).reshape(-1)
        rankings, offset = [], 0
        for s in self.samples:
            n = len(s["documents"])
            sc = scores[offset: offset + n]
            offset += n
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
        return {"at_k": self.at_k, "n_queries": len(self.samples)}


# --- the sanity gate: a TrainerCallback that reads the evaluators' metrics -------------------------------

LEVERS = (
    "levers, in order: use loss='listwise' (grouped softmax cannot settle on a constant); raise "
    "head_learning_rate (1e-3 for a new head); train more steps (max_steps/epochs; the plateau can last ~45 "
    "steps); shorten max_length; generate more/better questions or mine harder negatives"
)


class TrainingCollapsedError(RagRerankError):
    """Raised by ``train_reranker(..., config.sanity_gate='raise')`` when the sanity gate fired."""


def constant_bce_loss(labels: Sequence[float], pos_weight: float | None = None) -> float:
    """The BCE of the best *constant* prediction: the level a collapsed pointwise model sits at.

    Example:
        >>> round(constant_bce_loss([1, 0, 0, 0, 0]), 4)  # 1:4 base rate
        0.5004
    """
    y = np.asarray(labels, dtype=np.float64)
    w = 1.0 if pos_weight is None else float(pos_weight)
    ybar = float(y.mean())
    p = min(max(w * ybar / (w * ybar + 1 - ybar), 1e-7), 1 - 1e-7)
    return float(-np.mean(w * y * math.log(p) + (1 - y) * math.log(1 - p)))


class SanityGateCallback(TrainerCallback):
    """Stop a run that is not learning, and say which lever to pull.

    At the first evaluation at or after ``check_after_step`` (or at that step, when there is no evaluator)
    it fires when either:

    - the validation ranking metric is below the first stage's plus ``min_delta``; or
    - the mean training loss logged since half-way to the check is within ``plateau_tol`` of
      ``loss_floor`` (``log(group size)`` for listwise; the constant-prediction BCE for bce), unless the
      validation metric is above both the first stage's and its own value before training (``before_value``):
      a small logit scale can rank well near the plateau.

    ``mode``: ``"stop"``/``"raise"`` stop training (the caller raises for ``"raise"``), ``"warn"`` only logs,
    ``"off"`` does nothing. ``fired`` and ``message`` hold the outcome.
    """

    def __init__(
        self, *, loss_floor: float, floor_name: str, check_after_step: int, primary_key: str | None = None,
        first_stage_key: str | None = None, min_delta: float = -0.10, plateau_tol: float = 0.05,
        mode: str = "stop", loss_kind: str = "listwise",
    ) -> None:
        self.loss_floor = loss_floor
        self.floor_name = floor_name
        self.check_after_step = check_after_step
        self.primary_key = primary_key
        self.first_stage_key = first_stage_key
        self.min_delta = min_delta
        self.plateau_tol = plateau_tol
        self.mode = mode
        self.loss_kind = loss_kind
        self.before_value: float | None = None  # the primary metric before training, set by the caller
        self.losses: list[tuple[int, float]] = []
        self.checked = False
        self.fired = False
        self.message = ""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.primary_key is None and not self.checked and state.global_step >= self.check_after_step:
            self._check(state, control, {})

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        if not self.checked and state.global_step >= self.check_after_step:
            self._check(state, control, metrics or {})

    def _check(self, state: Any, control: Any, metrics: dict) -> None:
        if self.mode == "off":
            self.checked = True
            return
        problems, ranking_good = [], False
        if self.primary_key in metrics and self.first_stage_key in metrics:
            got, fs = float(metrics[self.primary_key]), float(metrics[self.first_stage_key])
            ranking_good = got > max(fs, self.before_value if self.before_value is not None else fs)
            if got < fs + self.min_delta:
                problems.append(f"validation {self.primary_key}={got:.4f} is below the first stage's {fs:.4f}"
                                f" {self.min_delta:+.2f}")
        recent = [v for s, v in self.losses if s > self.check_after_step // 2] or [v for _, v in self.losses[-3:]]
        if recent and not ranking_good:  # a small logit scale can rank well near the plateau
            mean = float(np.mean(recent))
            if mean >= (1 - self.plateau_tol) * self.loss_floor:
                problems.append(f"training loss {mean:.4f} sits at the {self.floor_name} = {self.loss_floor:.4f}")
        self.checked = True
        if not problems:
            logger.info("sanity gate passed at step %d", state.global_step)
            return
        self.fired = True
        self.message = (f"SANITY GATE at step {state.global_step}: the reranker is not learning: "
                        + "; ".join(problems) + f".\n{LEVERS}")
        logger.error(self.message)
        if self.mode in ("stop", "raise"):
            control.should_training_stop = True


def verdict_for(
    gate: SanityGateCallback, evaluator: Any, first_stage: dict[str, float], before: dict[str, float],
    after: dict[str, float],
) -> tuple[bool | None, str]:
    """The regression guard: fine-tuned vs the better of the first stage and the base model.

    For a random-head base (``embedded:minilm-ce``) the first stage is the bar; for a trained reranker the
    base model usually is. Returns ``(improved, one-line verdict)``; ``improved`` is None with no evaluator.
    """
    if gate.fired and gate.mode != "warn":
        return False, "COLLAPSED (sanity gate): " + gate.message.splitlines()[0]
    improved, verdict = _final_verdict(evaluator, first_stage, before, after)
    if gate.fired:  # "warn": training went on, so judge the final model, and say the gate fired on the way
        verdict += " (the sanity gate warned mid-run: " + gate.message.splitlines()[0] + ")"
    return improved, verdict


def _final_verdict(evaluator: Any, first_stage: dict[str, float], before: dict[str, float],
                   after: dict[str, float]) -> tuple[bool | None, str]:
    key = getattr(evaluator, "primary_metric", None)
    if key is None or key not in after:
        return None, "NOT VALIDATED: no validation samples were given, so nothing shows this model helps"
    sign = 1 if getattr(evaluator, "greater_is_better", True) else -1
    refs = {"base model": before.get(key)}
    fs_key = key.replace("mrr@", "base_mrr@")
    if fs_key in first_stage:
        refs["first stage"] = first_stage[fs_key]
    refs = {k: v for k, v in refs.items() if v is not None}
    best_name, best = max(refs.items(), key=lambda kv: sign * kv[1])
    if sign * (after[key] - best) > 0:
        return True, f"IMPROVED: {key} {after[key]:.4f} vs {best:.4f} for the {best_name}"
    return False, (f"DID NOT HELP: {key} {after[key]:.4f} is not better than {best:.4f} for the {best_name}; "
                   f"do not deploy it alone. {LEVERS}")
