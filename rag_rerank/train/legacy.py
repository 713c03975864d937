"""The seeds' legacy API: ``CrossEncoder.fit(train_dataloader=..., evaluator=..., output_path=...)``.

sentence-transformers >= 4 still ships ``CrossEncoder.fit``, but it no longer saves the model to
``output_path`` and writes the evaluator CSV into ``output_path/eval``. :func:`legacy_fit` restores the
pre-v4 behaviour on top of ``CrossEncoderTrainer``: replace ``model.fit(`` with ``legacy_fit(model, ``.
"""

from __future__ import annotations

import logging
import tempfile
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback as TrainerCallbackBase

from rag_rerank.errors import DataError
from rag_rerank.train.guards import quiet

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

logger = logging.getLogger(__name__)


class _LegacyEvalCallback(TrainerCallbackBase):
    """Pre-v4 ``fit`` semantics: evaluate every ``evaluation_steps`` and after each epoch, write the
    evaluator's CSV into ``output_path`` itself, save the best model there (or the last, with no evaluator)."""

    def __init__(self, model: CrossEncoder, evaluator: BaseEvaluator | None, output_path: str | None,
                 evaluation_steps: int, save_best_model: bool, callback: Any) -> None:
        self.model, self.evaluator, self.output_path = model, evaluator, output_path
        self.evaluation_steps, self.save_best_model, self.callback = evaluation_steps, save_best_model, callback
        self.best: float | None = None

    def _evaluate(self, epoch: int, steps: int) -> None:
        res = self.evaluator(self.model, output_path=self.output_path, epoch=epoch, steps=steps)
        score = float(res[self.evaluator.primary_metric] if isinstance(res, dict) else res)
        if self.callback is not None:
            self.callback(score, epoch, steps)
        sign = 1 if getattr(self.evaluator, "greater_is_better", True) else -1
        if self.best is None or sign * (score - self.best) > 0:
            self.best = score
            if self.save_best_model and self.output_path:
                self.model.save_pretrained(self.output_path)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.evaluator is not None and self.evaluation_steps > 0 and state.global_step % self.evaluation_steps == 0:
            self._evaluate(int(state.epoch or 0), state.global_step)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.evaluator is not None:
            self._evaluate(max(0, round(state.epoch or 0) - 1), -1)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.output_path and (self.evaluator is None or not self.save_best_model):
            self.model.save_pretrained(self.output_path)


def legacy_fit(
    model: CrossEncoder,
    train_dataloader: Any,
    evaluator: BaseEvaluator | None = None,
    epochs: int = 1,
    warmup_steps: int = 10000,
    output_path: str | None = None,
    *,
    loss_fct: nn.Module | None = None,
    activation_fct: nn.Module | None = None,
    optimizer_params: dict[str, float] | None = None,
    weight_decay: float = 0.01,
    evaluation_steps: int = 0,
    save_best_model: bool = True,
    max_grad_norm: float = 1.0,
    use_amp: bool = False,
    callback: Any = None,
    show_progress_bar: bool = True,
) -> None:
    """The seeds' ``CrossEncoder.fit(...)``, run through ``CrossEncoderTrainer``, with pre-v4 behaviour.

    sentence-transformers 6.2 still ships ``CrossEncoder.fit`` and ``InputExample`` and trains, but its
    ``fit`` never saves the model to ``output_path`` (its epoch-end evaluator callback is never given the
    trainer, so the save-best callback never runs, and nothing saves when there is no evaluator), drops the
    evaluator's CSV into ``output_path/eval`` and leaves an empty ``checkpoints/model`` folder in the working
    directory. This function keeps the seeds' arguments and restores the old contract: CSVs in
    ``output_path``, the best model (by the evaluator, honouring ``greater_is_better``) or the last one saved
    there, no stray folders. Replace ``model.fit(`` with ``legacy_fit(model, `` in seed code.

    Example:
        >>> from sentence_transformers import CrossEncoder, InputExample
        >>> from torch.utils.data import DataLoader
        >>> model = CrossEncoder("embedded-or-local-dir", num_labels=1)  # doctest: +SKIP
        >>> dl = DataLoader([InputExample(texts=["q", "d"], label=0.3)], shuffle=True, batch_size=16)
        >>> legacy_fit(model, train_dataloader=dl, evaluator=MSEEvaluator(...), epochs=1,
        ...            warmup_steps=100, output_path="out")  # doctest: +SKIP
    """

    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.fit_mixin import FitMixinLoss
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, CrossEntropyLoss

    examples = list(train_dataloader.dataset)
    if not examples:
        raise DataError("legacy_fit: the train_dataloader's dataset is empty")
    n_texts = len(examples[0].texts)
    data: dict[str, list] = {f"sentence_{i}": [ex.texts[i] for ex in examples] for i in range(n_texts)}
    data["label"] = [ex.label for ex in examples]
    act = activation_fct if activation_fct is not None else nn.Identity()
    if loss_fct is not None:
        loss: nn.Module = FitMixinLoss(model, loss_fct=loss_fct, activation_fn=act)
    elif model.num_labels == 1:
        loss = BinaryCrossEntropyLoss(model, activation_fn=act)
    else:
        loss = CrossEntropyLoss(model, activation_fn=act)
    with tempfile.TemporaryDirectory(prefix="rag-rerank-fit-") as tmp:
        args = CrossEncoderTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=getattr(train_dataloader, "batch_size", None) or 8,
            num_train_epochs=epochs, warmup_steps=int(warmup_steps), lr_scheduler_type="linear",
            learning_rate=(optimizer_params or {}).get("lr", 2e-5), weight_decay=weight_decay,
            max_grad_norm=max_grad_norm, fp16=bool(use_amp and torch.cuda.is_available()),
            eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=not show_progress_bar,
            dataloader_pin_memory=torch.cuda.is_available(), logging_steps=max(1, len(examples) // 50),
        )
        cb = _LegacyEvalCallback(model, evaluator, output_path, evaluation_steps, save_best_model, callback)
        trainer = quiet(CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(data), loss=loss,
                                            callbacks=[cb]))
        trainer.train()
