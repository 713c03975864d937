"""Training settings: :class:`RerankerTrainingConfig` (mapped onto ``CrossEncoderTrainingArguments``),
:class:`TrainResult`, and mixed precision.

The default recipe is the one that learned in the issue-5 probe, where the sentence-transformers defaults
(pointwise BCE, one learning rate) collapsed to a constant on a new, randomly initialised head:

- ``loss="listwise"``: FlagEmbedding-style grouped softmax cross-entropy over (1 positive + k negatives)
  (:class:`rag_rerank.train.losses.GroupSoftmaxLoss`);
- a fast learning rate (1e-3) for a *new* classifier/pooler head, 5e-5 for the encoder; a base whose head is
  already trained (``BAAI/bge-reranker-base``) keeps one rate (``head_learning_rate="auto"`` decides);
- a sanity gate that stops a run stuck at the uniform-loss plateau, and a regression guard that compares the
  result with the first stage and the base model (:mod:`rag_rerank.train.guards`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag_rerank.errors import ConfigError
from rag_rerank.rerank.backends.base import native_cpu_bf16

logger = logging.getLogger(__name__)

__all__ = ["HEAD_PARAM_PATTERN", "NEW_HEAD_LEARNING_RATE", "RerankerTrainingConfig", "TrainResult",
           "has_new_head", "native_cpu_bf16", "precision_args", "resolve_head_learning_rate",
           "training_precision", "warm_start_applies"]

HEAD_PARAM_PATTERN = r"(^|\.)(classifier|pooler|score)\."
"""Parameters matching this regex (BERT ``classifier``/``pooler``, RoBERTa/XLM-R ``classifier.dense`` and
``classifier.out_proj``, decoder ``score``) get ``head_learning_rate``."""
NEW_HEAD_LEARNING_RATE = 1e-3
COMMON_SCHEDULERS = ("constant_with_warmup", "warmup_stable_decay", "linear", "cosine", "constant")


@dataclass(frozen=True)
class RerankerTrainingConfig:
    """Settings for :func:`train_reranker`, mapped onto ``CrossEncoderTrainingArguments``.

    Attributes:
        loss: ``"listwise"`` (grouped softmax CE, the default) or ``"bce"`` (pointwise).
        epochs: passes over the groups (ignored when ``max_steps`` is set).
        max_steps: stop after this many optimiser steps (``None``: use ``epochs``).
        learning_rate: encoder learning rate.
        head_learning_rate: learning rate of the classifier/pooler head. ``"auto"`` (default) gives a new head
            (``embedded:minilm-ce``, a plain encoder) ``NEW_HEAD_LEARNING_RATE`` (1e-3) and a trained one
            (``BAAI/bge-reranker-base``) the encoder's ``learning_rate`` (:func:`has_new_head` decides);
            ``None`` uses ``learning_rate``; a number is used as is. Keep
            it high (1e-3) for a new head (``embedded:minilm-ce``, a plain encoder); set ``None`` when the base
            is already a trained reranker (``BAAI/bge-reranker-base``), whose head a high rate would damage.
        warmup_ratio: share of steps with linear warm-up.
        lr_scheduler: a transformers scheduler name after warm-up: ``"constant_with_warmup"`` (default),
            ``"warmup_stable_decay"`` (constant, then a cosine decay to 0 over the last ``decay_ratio`` of the
            steps) or ``"linear"`` decay. A new head leaves the uniform-loss plateau late (after 100-odd steps);
            linear decay to 0 within half an epoch gave +0.000 on real SQuAD questions, a constant rate +0.041
            (the README's headline ablation).
        decay_ratio: share of the steps in the final decay of ``"warmup_stable_decay"`` (ignored otherwise).
        batch_size: groups per step for ``listwise`` (each is ``train_group_size`` pairs); pairs per step for
            ``bce``.
        train_group_size: 1 positive + k negatives per group. Rows with fewer negatives are topped up by
            resampling theirs (FlagEmbedding does the same); rows with none are dropped.
        max_length: tokens of query + passage; chunks are 256 tokens by default, shorter is faster.
            A query keeps half of them, as the served ``Reranker`` does (:mod:`rag_rerank.rerank.windows`).
        seed: seeds the trainer and the negative sampling.
        mixed_precision: ``"auto"`` uses bf16 (or fp16) on a CUDA GPU, bf16 autocast on a CPU that computes bf16
            natively (AVX512_BF16 or AMX: 1.6x faster steps on a 2-core AMX CPU, same validation MRR within noise;
            ``pipelines/time_to_quality.py``), fp32 on other CPUs; ``"no"`` is fp32 everywhere.
        gradient_checkpointing: trade compute for memory.
        eval_steps: evaluate every N steps; ``None``: about 5 times per run.
        early_stopping_patience: stop after N evaluations without improvement (``None``: off).
        load_best_model_at_end: keep the best checkpoint by the evaluator's primary metric.
        resume_from_checkpoint: ``True`` (latest in ``out_dir/checkpoints``) or a checkpoint path.
        keep_checkpoints: keep every checkpoint (one per evaluation) in ``out_dir/checkpoints`` after a
            successful run; otherwise at most 2 are kept while training and removed at the end.
        pos_weight: BCE weight of positives (``None``: 1). A lever against the base-rate collapse.
        sanity_gate: ``"stop"`` (stop early, mark the result collapsed), ``"raise"`` (also raise
            :class:`TrainingCollapsedError` after saving), ``"warn"`` (log only) or ``"off"``.
        sanity_after: the gate checks at the first evaluation after this share of the steps.
        sanity_min_delta: the gate fires when the validation MRR@10 is below the first stage's plus this
            (default -0.10: a cross-encoder at par with a strong hybrid is normal and still helps in fusion;
            one far below it has collapsed).
        warm_start_steps: optimiser steps of a label-free warm start before the listwise training: the new head and
            the encoder learn to reproduce the first stage's bi-encoder similarities (MarginMSE on each group's
            positive-negative margins, GPL-style), so the listwise stage starts off the uniform-loss plateau. 0: off.
            Needs groups with ``teacher`` scores (:func:`rag_rerank.train.groups.add_teacher_scores`).
        warm_start_max_length: tokens per pair during the warm start (shorter is cheaper; ``None``: ``max_length``).
        warm_start_learning_rate: encoder learning rate of the warm start (``None``: ``learning_rate``).
        warm_start_scale: teacher margins are multiplied by this to become logit margins (cosine margins of a few
            tenths -> logit margins of a few units).
        attention_dropout: dropout on the attention probabilities while training (``None``: the model's own, 0.1
            for BERT-style models). 0 lets PyTorch's fused attention kernel run in training too, which drops the
            materialised attention matrix and its random mask: a quarter of a MiniLM step on a 2-core CPU.
        prior_weight: residual training (listwise only): the loss scores ``logit + prior_weight * prior``, where
            ``prior`` is the first stage's z-scored score of each candidate (rows' ``prior``,
            :func:`rag_rerank.train.groups.add_prior_scores`), and checkpoints are evaluated the same way. The
            reranker then learns what the first stage misses, which is what the served fusion adds to it. ``"auto"``:
            the weight at which the first stage alone best explains the training groups
            (:func:`rag_rerank.train.groups.fit_prior_weight`); ``None``: off, in every recipe (on the demo's data it
            starts at the first stage but ends no better, and worse on held-out questions:
            ``pipelines/residual_training.py``).
        logging_steps: log the training loss every N steps (``None``: about 25 times per run).
        show_progress_bar: tqdm bars (``None``: when logging is at INFO or below).
    """

    loss: Literal["listwise", "bce"] = "listwise"
    epochs: float = 2.0
    max_steps: int | None = None
    learning_rate: float = 5e-5
    head_learning_rate: float | Literal["auto"] | None = "auto"
    warmup_ratio: float = 0.1
    lr_scheduler: str = "constant_with_warmup"
    decay_ratio: float = 0.25
    batch_size: int = 8
    train_group_size: int = 5
    max_length: int = 256
    seed: int = 42
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    eval_steps: int | None = None
    early_stopping_patience: int | None = None
    load_best_model_at_end: bool = True
    resume_from_checkpoint: bool | str | None = None
    keep_checkpoints: bool = False
    pos_weight: float | None = None
    sanity_gate: Literal["stop", "raise", "warn", "off"] = "stop"
    sanity_after: float = 0.5
    sanity_min_delta: float = -0.10
    warm_start_steps: int = 0
    warm_start_max_length: int | None = None
    warm_start_learning_rate: float | None = None
    warm_start_scale: float = 10.0
    attention_dropout: float | None = None
    prior_weight: float | Literal["auto"] | None = None
    logging_steps: int | None = None
    show_progress_bar: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.head_learning_rate, str) and self.head_learning_rate != "auto":
            raise ConfigError(f"head_learning_rate={self.head_learning_rate!r}: use 'auto', a number or None")
        if self.loss not in ("listwise", "bce"):
            raise ConfigError(f"loss={self.loss!r}: use 'listwise' or 'bce'")
        if self.train_group_size < 2:
            raise ConfigError(f"train_group_size={self.train_group_size}: needs 1 positive + at least 1 negative")
        if self.sanity_gate not in ("stop", "raise", "warn", "off"):
            raise ConfigError(f"sanity_gate={self.sanity_gate!r}: use 'stop', 'raise', 'warn' or 'off'")
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError(f"attention_dropout={self.attention_dropout}: must be in [0, 1) or None")
        if isinstance(self.prior_weight, str) and self.prior_weight != "auto":
            raise ConfigError(f"prior_weight={self.prior_weight!r}: use 'auto', a number or None")
        if not 0.0 < self.decay_ratio < 1.0:
            raise ConfigError(f"decay_ratio={self.decay_ratio}: must be in (0, 1)")
        if self.lr_scheduler in COMMON_SCHEDULERS:
            return
        from transformers import SchedulerType  # only for a rarer name: importing transformers loads torch

        names = sorted(t.value for t in SchedulerType)
        if self.lr_scheduler not in names:
            raise ConfigError(f"lr_scheduler={self.lr_scheduler!r}: use 'constant_with_warmup' or 'linear' "
                             f"(any of {', '.join(names)})")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_reranker` did. ``collapsed`` is True when the sanity gate fired."""

    out_dir: Path
    train_loss: list[tuple[int, float]]
    first_stage: dict[str, float]
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    steps: int
    wall_time_s: float
    collapsed: bool
    verdict: str
    improved: bool | None = None
    data_summary: dict[str, Any] = field(default_factory=dict)
    fusion_alpha: float | None = None  # set by rag_rerank.train.finetune.finetune (fusion.json), None otherwise
    fusion: Any = None  # the rag_rerank.rerank.fusion.FusionChoice behind fusion_alpha
    shipped_verdict: str | None = None  # the verdict on the system served (fused, or the first stage alone)
    step_seconds: float | None = None  # per optimiser step of this call, without evaluations, saving or warm start


def resolve_head_learning_rate(head_learning_rate: float | str | None, base_model: str) -> float | None:
    """The head learning rate for ``base_model``: ``"auto"`` -> 1e-3 for a new head, ``None`` for a trained one."""
    if head_learning_rate != "auto":
        return None if head_learning_rate is None else float(head_learning_rate)
    return NEW_HEAD_LEARNING_RATE if has_new_head(base_model) else None


def warm_start_applies(cfg: RerankerTrainingConfig, base_model: str) -> bool:
    """Whether ``cfg``'s warm start runs for ``base_model``: it teaches a new head, so with
    ``head_learning_rate="auto"`` a base whose head is already trained (``BAAI/bge-reranker-base``) skips it."""
    return bool(cfg.warm_start_steps) and (cfg.head_learning_rate != "auto" or has_new_head(base_model))


def has_new_head(base_model: str) -> bool:
    """True when the base's classification head is untrained, so it needs a fast head learning rate.

    ``embedded:minilm-ce`` (a seeded random head) and plain encoders (no ``classifier``/``score``
    weights in the checkpoint) have a new head; a trained reranker such as ``BAAI/bge-reranker-base``
    does not, and a 1e-3 head learning rate would damage it.
    """
    if base_model == "embedded:minilm-ce":
        return True
    from rag_rerank.models import resolve_model_path

    path = resolve_model_path(base_model, role="cross-encoder")
    keys: list[str] = []
    for f in sorted(path.glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as st:
            keys.extend(st.keys())
    if not keys:
        for f in sorted(path.glob("pytorch_model*.bin")):
            import torch

            keys.extend(torch.load(f, map_location="cpu", weights_only=True).keys())
    return not any(re.search(r"(^|\.)(classifier|score)\.", k) for k in keys)


def precision_args(mode: str) -> dict[str, bool]:
    """Mixed-precision training arguments for ``mode``.

    ``auto``: bf16 (or fp16) on a CUDA GPU; on CPU, bf16 autocast where the CPU has native bf16 (AVX512_BF16 or
    AMX), fp32 elsewhere (emulated bf16 is slower than fp32). ``bf16`` on CPU: the same, with a warning where the
    CPU has no native bf16. ``no``: fp32.
    """
    import torch

    if mode == "no":
        return {}
    if not torch.cuda.is_available():
        from rag_rerank.train.distributed import world_size

        if mode in ("auto", "bf16") and world_size() > 1:  # measured: DDP's backward then fails ("mark a variable
            logger.warning("bf16 autocast is not available for multi-process CPU training (torchrun): training in "
                           "fp32")  # ready only once") with transformers 5 / accelerate on CPU
            return {}
        if mode in ("auto", "bf16") and native_cpu_bf16():
            return {"bf16": True, "use_cpu": True}  # transformers asks for use_cpu to allow bf16 without a GPU
        if mode in ("bf16", "fp16"):
            logger.warning("mixed_precision=%r: this CPU has no native bf16 (AVX512_BF16/AMX) and no fp16 training; "
                           "training in fp32", mode)
        return {}
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return {"bf16": True}
    return {"fp16": True}


def training_precision(mode: str) -> str:
    """What :func:`precision_args` gives for ``mode`` here, as a name: ``"bf16"``, ``"fp16"`` or ``"fp32"``."""
    args = precision_args(mode)
    return "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else "fp32"
