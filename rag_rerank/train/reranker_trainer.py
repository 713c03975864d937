"""Reranker (cross-encoder) fine-tuning on sentence-transformers' ``CrossEncoderTrainer``: :func:`train_reranker`.

The settings are :class:`rag_rerank.train.config.RerankerTrainingConfig`; the loss is
:class:`rag_rerank.train.losses.GroupSoftmaxLoss` (listwise, the default) or sentence-transformers'
``BinaryCrossEntropyLoss``; the guards (preflight, NaN stop, sanity gate, verdict) are in
:mod:`rag_rerank.train.guards`.

Scores: the saved model is a ``num_labels=1`` sequence classifier. ``CrossEncoder(path).predict`` returns
``sigmoid(logit)``; ``AutoModelForSequenceClassification`` returns the logit. Rankings are identical.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback as TrainerCallbackBase

from rag_rerank.errors import ConfigError, DataError, RagRerankError
from rag_rerank.rerank.windows import query_budget, truncate_query
from rag_rerank.train.config import (
    HEAD_PARAM_PATTERN,
    RerankerTrainingConfig,
    TrainResult,
    precision_args,
    resolve_head_learning_rate,
    training_precision,
    warm_start_applies,
)
from rag_rerank.train.distributed import barrier, broadcast_from_main, is_main_process, per_process_batch
from rag_rerank.train.groups import fit_prior_weight
from rag_rerank.train.guards import (
    NonFiniteLossCallback,
    SanityGateCallback,
    TrainingCollapsedError,
    TrainingDivergedError,
    constant_bce_loss,
    model_bytes,
    preflight,
    quiet,
    verdict_for,
)
from rag_rerank.train.losses import GroupSoftmaxLoss
from rag_rerank.train.model_card import render_model_card, write_model_card
from rag_rerank.train.warm_start import warm_start

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

logger = logging.getLogger(__name__)

__all__ = ["load_training_model", "train_reranker"]


class _StepTimer(TrainerCallbackBase):
    """Wall time inside optimiser steps only (between ``on_step_begin`` and ``on_step_end``): evaluations, checkpoint
    saving and logging run after ``on_step_end`` and are left out, so ``adapt``'s plan learns a step's real cost."""

    def __init__(self) -> None:
        self.seconds, self.steps, self._start = 0.0, 0, None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.steps, self._start = self.steps + 1, None

    def per_step(self) -> float | None:
        return round(self.seconds / self.steps, 3) if self.steps else None


def _group_columns(rows: Sequence[dict[str, Any]], group_size: int, seed: int,
                   label: str | None = None) -> tuple[dict[str, list[Any]], int]:
    """Turn group rows into columns ``query, positive, negative_1..k`` (k = group_size - 1); with ``label`` (a row
    field: ``"teacher"`` or ``"prior"``), also a ``label`` column: that field's scores ``[positive, negative_1..k]``,
    aligned with the sampled negatives."""
    rng = random.Random(seed)
    k = group_size - 1
    cols: dict[str, list[Any]] = {"query": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(k)}}
    if label:
        cols["label"] = []
    dropped = 0
    for i, row in enumerate(rows):
        if "query" not in row or "positive" not in row:
            raise DataError(f"training row {i} lacks 'query'/'positive'; group rows are "
                            "{'query', 'positive', 'negatives': [...]} (see rag_rerank.train.groups.build_groups)")
        negs = list(row.get("negatives") or [])
        if not negs:
            dropped += 1
            continue
        idx = list(range(len(negs)))
        picked = rng.sample(idx, k) if len(negs) >= k else idx + rng.choices(idx, k=k - len(negs))
        cols["query"].append(row["query"])
        cols["positive"].append(row["positive"])
        for j, n in enumerate(picked):
            cols[f"negative_{j + 1}"].append(negs[n])
        if label:
            scores = row[label]
            cols["label"].append([float(scores[0])] + [float(scores[1 + n]) for n in picked])
    return cols, dropped


def _pair_columns(rows: Sequence[dict[str, Any]], group_size: int, seed: int) -> tuple[dict[str, list], int]:
    """Pointwise ``query, text, label`` columns from pair rows, or from group rows (1 pos + k negs each)."""
    if rows and "text" in rows[0] and "label" in rows[0]:
        bad = [i for i, r in enumerate(rows) if not {"query", "text", "label"} <= r.keys()]
        if bad:
            raise DataError(f"pair rows {bad[:5]} lack 'query'/'text'/'label'")
        return {"query": [r["query"] for r in rows], "text": [r["text"] for r in rows],
                "label": [float(r["label"]) for r in rows]}, 0
    groups, dropped = _group_columns(rows, group_size, seed)
    out: dict[str, list] = {"query": [], "text": [], "label": []}
    negs = [c for c in groups if c.startswith("negative_")]
    for b, q in enumerate(groups["query"]):
        for col, lab in [("positive", 1.0)] + [(c, 0.0) for c in negs]:
            out["query"].append(q)
            out["text"].append(groups[col][b])
            out["label"].append(lab)
    return out, dropped


def load_training_model(base_model: str, cfg: RerankerTrainingConfig, device: str | None = None) -> CrossEncoder:
    """``base_model`` as training runs it: one output label, and the config's attention dropout (the budget probe
    times its step on this model, so that what it plans is what trains)."""
    from rag_rerank.models import load_cross_encoder

    model = load_cross_encoder(base_model, max_length=cfg.max_length, device=device)
    if model.num_labels != 1:
        raise RagRerankError(f"{base_model!r} has {model.num_labels} output labels; a reranker needs 1")
    if cfg.attention_dropout is not None:
        _set_attention_dropout(model.model, cfg.attention_dropout)
    return model


def _set_attention_dropout(model: nn.Module, p: float) -> None:
    """Set the dropout on attention probabilities of every attention block (and in the config the model is saved
    with), for BERT-, RoBERTa- and XLM-R-style models; warn when the model has none to set."""
    n = 0
    for module in model.modules():
        if "attention" in type(module).__name__.lower() and isinstance(getattr(module, "dropout", None), nn.Dropout):
            module.dropout.p = p
            n += 1
    for key in ("attention_probs_dropout_prob", "attention_dropout"):
        if hasattr(model.config, key):
            setattr(model.config, key, p)
    if n:
        logger.info("attention dropout %g in %d attention blocks", p, n)
    else:
        logger.warning("attention_dropout=%g: no attention block with a dropout found in %s; left as it is", p,
                       type(model).__name__)


def _scheduler_kwargs(cfg: RerankerTrainingConfig, total_steps: int) -> dict[str, Any]:
    """Extra scheduler arguments: the decay length of ``warmup_stable_decay`` (transformers requires it)."""
    if cfg.lr_scheduler != "warmup_stable_decay":
        return {}
    return {"num_decay_steps": max(1, round(cfg.decay_ratio * total_steps)), "decay_type": "cosine"}


def _checkpointing(enabled: bool, args_cls: type) -> dict[str, bool]:
    """transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing``; pass what exists."""
    if not enabled:
        return {}
    names = {f.name for f in dataclasses.fields(args_cls)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": True}


def _resume_point(resume: bool | str | None, checkpoints: Path) -> bool | str | None:
    """Where ``resume_from_checkpoint=True`` resumes: the latest *complete* checkpoint, or a fresh start.

    A SIGKILL during a save leaves a checkpoint folder without ``trainer_state.json`` (transformers writes it
    last); transformers would pick that folder and crash, so it is skipped with a warning.
    """
    if resume is not True:
        return resume or None
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
                   key=lambda p: int(p.name[11:]))
    complete = []
    for p in found:
        if (p / "trainer_state.json").is_file():
            complete.append(p)
        else:
            logger.warning("checkpoint %s is incomplete (killed while saving?): skipped", p)
    if not complete:
        logger.info("resume requested but %s has no complete checkpoint: starting from the base model", checkpoints)
        return None
    logger.info("resuming from %s", complete[-1])
    return str(complete[-1])


def _best_eval(trainer: Any, evaluator: Any, keys: set[str]) -> dict[str, float]:
    """The evaluation of the checkpoint ``load_best_model_at_end`` restored, read from the log history.

    Those are the weights the trainer now holds, already scored on the same validation samples, so scoring
    them again would only repeat the work. ``keys`` are the evaluator's metric names to return. Empty when
    no best checkpoint was loaded or its evaluation is not in the history.
    """
    state = trainer.state
    if not trainer.args.load_best_model_at_end or not state.best_model_checkpoint or not keys:
        return {}
    step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    for entry in state.log_history:
        if entry.get("step") == step and f"eval_{evaluator.primary_metric}" in entry:
            found = {k: float(entry[f"eval_{k}"]) for k in keys if f"eval_{k}" in entry}
            return found if len(found) == len(keys) else {}
    return {}


def _query_cutter(tok: Any, budget: int) -> Callable[[str], str]:
    """Cut queries to ``budget`` tokens, as the served :class:`rag_rerank.rerank.Reranker` does (cached)."""
    return functools.lru_cache(maxsize=None)(lambda q: truncate_query(tok, q, budget))


def train_reranker(
    base_model: str,
    train_groups: Sequence[dict[str, Any]],
    *,
    out_dir: str | Path,
    config: RerankerTrainingConfig | None = None,
    eval_samples: Sequence[dict[str, Any]] | None = None,
    evaluator: BaseEvaluator | None = None,
    callbacks: Sequence[TrainerCallbackBase] | None = None,
    command: str | None = None,
) -> TrainResult:
    """Fine-tune a cross-encoder on group rows and save it, with a model card, to ``out_dir``.

    Args:
        base_model: ``embedded:minilm-ce``, a local directory or a hub id (resolved by
            :func:`rag_rerank.models.load_cross_encoder`; offline errors say what to do).
        train_groups: ``{"query", "positive", "negatives": [...]}`` rows (``rag_rerank.train.groups.build_groups``);
            for ``loss="bce"`` also ``{"query", "text", "label"}`` pair rows.
        out_dir: the model directory (checkpoints go to ``out_dir/checkpoints``).
        config: training settings (defaults: :class:`RerankerTrainingConfig`).
        eval_samples: validation samples ``{"query", "positive": [...], "documents": [first-stage top-k]}``;
            builds a :class:`rag_rerank.train.evaluators.RerankingEvaluator` (realistic mode) named ``val``.
        evaluator: any sentence-transformers evaluator instead of ``eval_samples``.
        callbacks: extra ``transformers.TrainerCallback`` objects.
        command: the command line recorded in the model card (default: ``sys.argv``).

    Returns:
        A :class:`TrainResult`; read its ``verdict`` and ``collapsed``.

    Raises:
        TrainingCollapsedError: only with ``sanity_gate="raise"``, after the model and card are saved.

    Example:
        >>> groups = [{"query": "who wrote hamlet", "positive": "Hamlet is by Shakespeare.",
        ...            "negatives": ["Paris is in France.", "Water boils at 100 C."]}]
        >>> res = train_reranker("embedded:minilm-ce", groups, out_dir="model")  # doctest: +SKIP
        >>> res.verdict  # doctest: +SKIP
    """
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import EarlyStoppingCallback

    from rag_rerank.train.evaluators import RerankingEvaluator

    cfg = config or RerankerTrainingConfig()
    out = Path(out_dir)
    if evaluator is not None and eval_samples is not None:
        raise ConfigError("pass eval_samples or evaluator, not both")
    precision = training_precision(cfg.mixed_precision)
    logger.info("training precision: %s (mixed_precision=%r%s)", precision, cfg.mixed_precision,
                "; bf16 autocast on a CPU with native bf16" if precision == "bf16" and not torch.cuda.is_available()
                else "")
    residual = cfg.loss == "listwise" and cfg.prior_weight is not None
    if residual and not all("prior" in r for r in train_groups):
        raise DataError("prior_weight is set but some training groups have no 'prior' scores; add them with "
                        "rag_rerank.train.groups.add_prior_scores (finetune does)")
    prior_weight = (fit_prior_weight(train_groups) if cfg.prior_weight == "auto" else float(cfg.prior_weight)) \
        if residual else None
    if evaluator is None and eval_samples:
        # windows, like Reranker: the checkpoint kept is the best one as it will be served (README: ablation)
        # and in the training's precision (bf16 autocast where the CPU computes bf16 natively)
        evaluator = RerankingEvaluator(eval_samples, at_k=10, name="val", show_progress_bar=False,
                                       long_documents="window", prior_weight=prior_weight,
                                       backend="torch-bf16" if precision == "bf16" else "torch")
    if residual:
        columns, dropped = _group_columns(list(train_groups), cfg.train_group_size, cfg.seed, label="prior")
    else:
        builder = _group_columns if cfg.loss == "listwise" else _pair_columns
        columns, dropped = builder(list(train_groups), cfg.train_group_size, cfg.seed)
    if not columns["query"]:
        raise DataError(f"no usable training rows out of {len(train_groups)} ({dropped} had no negatives); "
                        "mine negatives first (rag-rerank mine)")
    if dropped:
        logger.warning("dropped %d of %d rows with no negatives", dropped, len(train_groups))
    model = load_training_model(base_model, cfg)
    budget = query_budget(cfg.max_length)
    cut = _query_cutter(model.tokenizer, budget)
    cut_queries = [cut(q) for q in columns["query"]]
    n_cut = sum(a != b for a, b in zip(cut_queries, columns["query"], strict=True))
    if n_cut:
        logger.info("cut %d of %d training queries to %d tokens (max_query_tokens)", n_cut, len(cut_queries), budget)
    columns["query"] = cut_queries
    dataset = Dataset.from_dict(columns)
    n_rows = len(dataset)
    head_lr = resolve_head_learning_rate(cfg.head_learning_rate, base_model)
    warm: dict[str, Any] = {}
    if cfg.warm_start_steps and not warm_start_applies(cfg, base_model):
        logger.info("no warm start: %s has a trained head (the warm start is for a new one)", base_model)
    elif cfg.warm_start_steps and _resume_point(cfg.resume_from_checkpoint, out / "checkpoints") is None:
        columns_w, _ = _group_columns(list(train_groups), cfg.train_group_size, cfg.seed,
                                      label="teacher" if all("teacher" in r for r in train_groups) else None)
        columns_w["query"] = [cut(q) for q in columns_w["query"]]
        warm = warm_start(model, columns_w, cfg, head_lr)
    if cfg.loss == "listwise":
        loss: nn.Module = GroupSoftmaxLoss(model, prior_weight=prior_weight)
        loss_floor = math.log(cfg.train_group_size)
        floor_name = f"uniform level log({cfg.train_group_size})"
    else:
        pw = None if cfg.pos_weight is None else torch.tensor(cfg.pos_weight)
        loss = BinaryCrossEntropyLoss(model, pos_weight=pw)
        loss_floor = constant_bce_loss(columns["label"], cfg.pos_weight)
        floor_name = "base-rate BCE"

    steps_per_epoch = max(1, math.ceil(n_rows / cfg.batch_size))
    total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    eval_steps = cfg.eval_steps or max(1, total // 5)
    saves = math.ceil(total / eval_steps) if cfg.keep_checkpoints else 2  # checkpoints on disk at once
    preflight(out, model_bytes=model_bytes(model), rows=n_rows, keep_checkpoints=saves)
    head_params = [n for n, _ in loss.named_parameters() if re.search(HEAD_PARAM_PATTERN, n)]
    lr_mapping = {HEAD_PARAM_PATTERN: head_lr} if head_lr is not None else {}
    if lr_mapping and not head_params:
        logger.warning("no head parameters match %s in %s; using one learning rate", HEAD_PARAM_PATTERN, base_model)
        lr_mapping = {}
    show = cfg.show_progress_bar if cfg.show_progress_bar is not None else logger.getEffectiveLevel() <= logging.INFO
    has_eval = evaluator is not None
    args = CrossEncoderTrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=per_process_batch(cfg.batch_size),
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        learning_rate_mapping=lr_mapping,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        lr_scheduler_kwargs=_scheduler_kwargs(cfg, total),
        seed=cfg.seed,
        data_seed=cfg.seed,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=None if cfg.keep_checkpoints else 2,  # keep: one checkpoint per evaluation
        save_only_model=False,
        load_best_model_at_end=bool(has_eval and cfg.load_best_model_at_end),
        metric_for_best_model=f"eval_{evaluator.primary_metric}" if has_eval else None,
        greater_is_better=bool(getattr(evaluator, "greater_is_better", True)) if has_eval else None,
        logging_steps=cfg.logging_steps or max(1, total // 25),
        report_to="none", logging_nan_inf_filter=False,
        disable_tqdm=not show,
        dataloader_pin_memory=torch.cuda.is_available(),
        **precision_args(cfg.mixed_precision),
        **_checkpointing(cfg.gradient_checkpointing, CrossEncoderTrainingArguments),
    )
    gate = SanityGateCallback(
        loss_floor=loss_floor, floor_name=floor_name, check_after_step=max(1, int(cfg.sanity_after * total)),
        primary_key=f"eval_{evaluator.primary_metric}" if isinstance(evaluator, RerankingEvaluator) else None,
        first_stage_key=f"eval_{evaluator.primary_metric.replace('mrr@', 'base_mrr@')}"
        if isinstance(evaluator, RerankingEvaluator) else None,
        min_delta=cfg.sanity_min_delta, mode=cfg.sanity_gate, loss_kind=cfg.loss,
    )
    nonfinite = NonFiniteLossCallback()
    timer = _StepTimer()
    cbs: list[Any] = [nonfinite, gate, timer, *(callbacks or [])]
    if has_eval and cfg.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))

    first_stage: dict[str, float] = {}
    eval_before: dict[str, float] = {}
    if has_eval:
        if isinstance(evaluator, RerankingEvaluator):
            first_stage = evaluator.first_stage_metrics()
        eval_before = {k: v for k, v in evaluator(model).items() if k not in first_stage}
        gate.before_value = eval_before.get(evaluator.primary_metric)
    logger.info("training %s on %d rows (%s loss, group %d, %d steps, head lr %s)", base_model, n_rows,
                cfg.loss, cfg.train_group_size, total, head_lr)
    t0 = time.perf_counter()
    class _Trainer(CrossEncoderTrainer):  # under torchrun, every process gets the metrics (train/distributed.py)
        def evaluation_loop(self, *a: Any, **k: Any) -> Any:
            output = super().evaluation_loop(*a, **k)
            output.metrics.update(broadcast_from_main(output.metrics))
            return output

    trainer = quiet(_Trainer(model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator,
                             callbacks=cbs))
    trainer.train(resume_from_checkpoint=_resume_point(cfg.resume_from_checkpoint, out / "checkpoints"))
    wall = time.perf_counter() - t0 + warm.get("seconds", 0.0)
    if nonfinite.fired:
        raise TrainingDivergedError(nonfinite.message(f"training {base_model}") +
                                    f"\n(checkpoints before the divergence, if any, are in {out / 'checkpoints'})")
    eval_after = _best_eval(trainer, evaluator, set(eval_before)) if has_eval else {}
    if has_eval and not eval_after:  # the final weights were never evaluated: do it now
        eval_after = {k: v for k, v in evaluator(model).items() if k not in first_stage}

    if is_main_process():  # under torchrun, one process writes (rag_rerank.train.distributed)
        model.save_pretrained(str(out))
        if (out / "checkpoints" / "eval").is_dir():  # the evaluators' CSVs outlive the checkpoints
            shutil.copytree(out / "checkpoints" / "eval", out / "eval", dirs_exist_ok=True)
        if not cfg.keep_checkpoints and not gate.fired:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    improved, verdict = verdict_for(gate, evaluator, first_stage, eval_before, eval_after)
    (logger.info if improved else logger.warning)("VERDICT: %s", verdict)
    summary = {"rows": len(train_groups), "used_rows": n_rows, "dropped_no_negatives": dropped,
               "loss": cfg.loss, "train_group_size": cfg.train_group_size,
               "eval_queries": len(eval_samples) if eval_samples else None, "head_params": head_params,
               "warm_start": warm or None, "queries_cut": n_cut, "max_query_tokens": budget,
               "precision": precision, "prior_weight": prior_weight}
    history = [(int(h["step"]), float(h["loss"])) for h in trainer.state.log_history if "loss" in h]
    card = render_model_card(
        base_model=base_model, data_summary=summary, config=dataclasses.replace(cfg, head_learning_rate=head_lr),
        first_stage=first_stage,
        eval_before=eval_before, eval_after=eval_after, verdict=verdict, train_loss=history,
        steps=trainer.state.global_step, wall_time_s=wall, command=command,
    )
    if is_main_process():
        write_model_card(out, card)
    barrier()  # the other processes return once the model is on disk
    result = TrainResult(
        out_dir=out, train_loss=history, first_stage=first_stage, eval_before=eval_before,
        eval_after=eval_after, steps=trainer.state.global_step, wall_time_s=wall, collapsed=gate.fired,
        verdict=verdict, improved=improved, data_summary=summary, step_seconds=timer.per_step(),
    )
    if gate.fired and cfg.sanity_gate == "raise":
        raise TrainingCollapsedError(f"{gate.message}\n(model and card saved in {out} for inspection)")
    return result

