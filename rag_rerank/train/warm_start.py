"""A label-free warm start for a new reranker head: distil the first stage's similarities before the listwise stage.

A cross-encoder built from a bi-encoder's weights with a new, random head first sits on the uniform-loss plateau
of the listwise loss for a hundred-odd steps while it learns to compare a query with a passage. The warm start
gives it that skill from a signal that needs no labels: on each training group, the bi-encoder's cosine between
the question and each candidate (the first stage's own judgement, GPL-style distillation from a teacher). The loss
is MarginMSE: the student's logit margins ``s(q, pos) - s(q, neg)`` regress onto ``scale * (t(q, pos) - t(q, neg))``.
It can run on shorter inputs (``warm_start_max_length``) than the listwise stage, which makes each step cheaper.

Example:
    >>> info = warm_start(model, columns, config, head_lr=1e-3)  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rag_rerank.errors import ConfigError
from rag_rerank.train.distributed import per_process_batch
from rag_rerank.train.guards import quiet
from rag_rerank.train.losses import group_scores

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

    from rag_rerank.train.config import RerankerTrainingConfig

logger = logging.getLogger(__name__)

__all__ = ["TeacherMarginLoss", "warm_start"]


class TeacherMarginLoss(nn.Module):
    """MarginMSE over groups: ``mean(((s_pos - s_neg) - scale * (t_pos - t_neg))^2)`` for every negative.

    Inputs are the columns ``(query, positive, negative_1, ..., negative_k)``; ``labels`` holds the teacher scores
    ``(B, 1 + k)`` in the same order.
    """

    def __init__(self, model: CrossEncoder, scale: float = 10.0) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, inputs: list[list[str]], labels: Tensor, prompt: str | None = None,
                task: str | None = None) -> Tensor:
        from sentence_transformers.util import batch_to_device

        queries, candidates = inputs[0], inputs[1:]
        pairs = [(q, col[b]) for b, q in enumerate(queries) for col in candidates]
        features = batch_to_device(self.model.preprocess(pairs, prompt=prompt, task=task), self.model.device)
        logits = self.model(features)["scores"].view(len(queries), len(candidates)).float()
        teacher = group_scores(labels, logits)
        student = logits[:, :1] - logits[:, 1:]
        target = self.scale * (teacher[:, :1] - teacher[:, 1:])
        return nn.functional.mse_loss(student, target)

    def get_config_dict(self) -> dict[str, float]:
        return {"scale": self.scale}


def warm_start(model: CrossEncoder, columns: dict[str, list[Any]], cfg: RerankerTrainingConfig,
               head_lr: float | None) -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.warm_start_steps`` steps of :class:`TeacherMarginLoss`.

    ``columns`` are the listwise columns with a ``label`` column of teacher scores. Without one (groups mined
    before teacher scores existed), the warm start is skipped with a warning. Returns what was done.
    """
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments

    from rag_rerank.train.config import HEAD_PARAM_PATTERN, precision_args

    if "label" not in columns:
        logger.warning("warm start skipped: the training groups have no teacher scores (mine them again)")
        return {}
    if cfg.warm_start_steps < 1:
        raise ConfigError(f"warm_start_steps={cfg.warm_start_steps} must be >= 1")
    length = cfg.warm_start_max_length or cfg.max_length
    full = model.max_seq_length
    model.max_seq_length = length
    tmp = Path(tempfile.mkdtemp(prefix="warm-start-"))
    start = time.perf_counter()
    try:
        args = CrossEncoderTrainingArguments(
            output_dir=str(tmp), max_steps=cfg.warm_start_steps,
            per_device_train_batch_size=per_process_batch(cfg.batch_size),
            learning_rate=cfg.warm_start_learning_rate or cfg.learning_rate,
            learning_rate_mapping={HEAD_PARAM_PATTERN: head_lr} if head_lr is not None else {},
            warmup_steps=cfg.warmup_ratio, lr_scheduler_type="constant_with_warmup", seed=cfg.seed,
            data_seed=cfg.seed, eval_strategy="no", save_strategy="no", report_to="none",
            logging_steps=max(1, cfg.warm_start_steps // 5), logging_nan_inf_filter=False,
            disable_tqdm=not bool(cfg.show_progress_bar), dataloader_pin_memory=torch.cuda.is_available(),
            **precision_args(cfg.mixed_precision),
        )
        loss = TeacherMarginLoss(model, scale=cfg.warm_start_scale)
        trainer = quiet(CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns),
                                            loss=loss))
        trainer.train()
        history = [(int(h["step"]), round(float(h["loss"]), 4)) for h in trainer.state.log_history if "loss" in h]
        # under torchrun this trainer wrapped the model in DistributedDataParallel, whose gradient hooks stay on the
        # parameters while the wrapper lives, and would fire again inside the next training: drop it
        trainer.accelerator.free_memory()
        del trainer
        gc.collect()
    finally:
        model.max_seq_length = full
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = round(time.perf_counter() - start, 1)
    logger.info("warm start: %d steps at %d tokens in %.0f s (loss %s -> %s)", cfg.warm_start_steps, length, seconds,
                history[0][1] if history else "?", history[-1][1] if history else "?")
    return {"steps": cfg.warm_start_steps, "max_length": length, "seconds": seconds, "loss": history}
