"""How much to trust a fine-tuned reranker: the fusion weight ``alpha``, chosen on synthetic validation questions.

A cross-encoder fine-tuned on a few thousand synthetic questions is often best used *fused* with the first
stage it reranks: ``alpha * z(reranker) + (1 - alpha) * z(first stage)`` over each query's top-k (see
:func:`rag_rerank.report.interpolate_run`). ``alpha`` is a setting like any other, so it is chosen on the
validation split of the generated dataset (never on human labels) and saved next to the model as
``fusion.json``; :func:`load_fusion` reads it back.

Example:
    >>> run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    >>> choose_alpha(run, {"q": {"a": 0.0, "b": 1.0, "c": 0.5}}, {"q": {"b": 1}}, top_k=3).alpha
    0.4
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag_rerank.errors import DataError
from rag_rerank.evaluation import evaluate
from rag_rerank.io import read_json, write_json
from rag_rerank.report import interpolate_run
from rag_rerank.types import Qrels, Run

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_GRID", "FUSION_FILE", "FusionChoice", "choose_alpha", "load_fusion", "save_fusion", "saved_alpha"]

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
FUSION_FILE = "fusion.json"


@dataclass(frozen=True)
class FusionChoice:
    """The chosen ``alpha`` (1 = reranker only, 0 = first stage only) and the validation metric per alpha."""

    alpha: float
    metric: str
    value: float
    by_alpha: dict[str, float] = field(default_factory=dict)
    queries: int = 0
    top_k: int = 20
    chosen_on: str = "synthetic validation split"


def choose_alpha(
    first_stage: Run,
    rerank_scores: Mapping[str, Mapping[str, float]],
    qrels: Qrels,
    *,
    top_k: int = 20,
    metric: str = "mrr@10",
    grid: Sequence[float] = DEFAULT_GRID,
) -> FusionChoice:
    """The ``alpha`` of ``grid`` with the best mean ``metric``; ties go to the smaller alpha (the first stage).

    Args:
        first_stage: the first-stage run of the validation questions.
        rerank_scores: ``{qid: {doc_id: score}}`` for each query's top ``top_k``
            (:func:`rag_rerank.report.score_candidates`).
        qrels: the validation qrels (synthetic: question -> the chunk it was written from).
        top_k, metric, grid: fusion depth, the metric to maximise, the alphas tried.
    """
    qids = [q for q in first_stage if q in qrels and q in rerank_scores]
    if not qids:
        raise DataError("no validation question has both a first-stage run and reranker scores; cannot choose alpha")
    if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
        raise ValueError(f"grid={list(grid)} must be non-empty alphas in [0, 1]")
    run = {q: first_stage[q] for q in qids}
    sub_qrels = {q: qrels[q] for q in qids}
    by_alpha = {f"{a:g}": evaluate(interpolate_run(run, rerank_scores, a, top_k), sub_qrels, [metric])[metric]
                for a in sorted(set(grid))}
    best = max(by_alpha.items(), key=lambda kv: (kv[1], -float(kv[0])))
    choice = FusionChoice(alpha=float(best[0]), metric=metric, value=best[1], by_alpha=by_alpha,
                          queries=len(qids), top_k=top_k)
    logger.info("fusion alpha %.1f (%s %.4f on %d validation questions; reranker only %.4f, first stage %.4f)",
                choice.alpha, metric, choice.value, len(qids), by_alpha.get("1", float("nan")),
                by_alpha.get("0", float("nan")))
    return choice


def save_fusion(model_dir: str | os.PathLike, choice: FusionChoice) -> Path:
    """Write ``fusion.json`` next to a model (atomically)."""
    path = Path(model_dir) / FUSION_FILE
    write_json(path, asdict(choice))
    return path


def load_fusion(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``fusion.json`` saved with a model, or ``None`` (a model trained elsewhere, or before fusion existed)."""
    path = Path(model_dir) / FUSION_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not 0.0 <= float(data.get("alpha", -1)) <= 1.0:
        raise DataError(f"{path}: not a fusion file with an alpha in [0, 1]; delete it or retrain")
    return data


def saved_alpha(model: str | os.PathLike) -> float | None:
    """The alpha ``rag-rerank train`` saved with ``model`` (a folder), or ``None`` with a warning when it has none.

    What ``--interpolate auto`` and ``RagRerankPostprocessor(interpolation_alpha="auto")`` resolve to; a model
    without ``fusion.json`` (a hub id, or one trained elsewhere) is then used unfused.
    """
    saved = load_fusion(model) if Path(model).is_dir() else None
    if saved is None:
        logger.warning("%s has no fusion.json (not trained by `rag-rerank train`): no saved fusion alpha, so it "
                       "is used unfused (the reranker score alone)", model)
        return None
    return float(saved["alpha"])
