"""Training losses: :class:`GroupSoftmaxLoss`, the listwise loss of the default recipe.

None of sentence-transformers' losses is exactly FlagEmbedding's grouped softmax: ``MultipleNegativesRankingLoss``
adds in-batch negatives (``num_negatives=0`` crashes in ``torch.multinomial``) and squashes logits through a
scaled sigmoid; ``ListNetLoss`` softmaxes the *labels*, so a 1/0 group gives a soft target (0.40 on the positive
for k=4), not a one-hot one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rag_rerank.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

__all__ = ["GroupSoftmaxLoss", "group_scores"]


def group_scores(labels: Tensor | list, logits: Tensor) -> Tensor:
    """Per-candidate scores from a group batch's ``labels`` (a tensor, or the rows' lists), shaped and placed as
    ``logits`` ``(B, 1 + k)``: the teacher scores of the warm start, the first-stage prior of residual training."""
    rows = labels if isinstance(labels, Tensor) else torch.stack([torch.as_tensor(t) for t in labels])
    return rows.to(logits.device, torch.float32).view_as(logits)


class GroupSoftmaxLoss(nn.Module):
    """Grouped softmax cross-entropy: each query's positive must outscore its own k negatives.

    Inputs are the columns ``(query, positive, negative_1, ..., negative_k)``; all ``B * (1 + k)`` pairs go
    through the model in one forward pass, the logits are reshaped to ``(B, 1 + k)``, divided by
    ``temperature`` and scored with cross-entropy against index 0. Its value for a model that scores every
    pair alike is ``log(1 + k)``, the plateau the sanity gate watches for.

    With ``prior_weight``, ``labels`` are a prior score per candidate (``(B, 1 + k)``: the first stage's z-scored
    score, :func:`rag_rerank.train.groups.add_prior_scores`) and the softmax is over ``logit / temperature +
    prior_weight * prior``: residual training, where the model learns only what the first stage gets wrong, and
    a new head starts where the first stage is instead of on the plateau.

    Example:
        >>> loss = GroupSoftmaxLoss(model)  # doctest: +SKIP
        >>> loss([["q"], ["gold"], ["other"]], None)  # doctest: +SKIP
        tensor(0.6931, grad_fn=...)
    """

    def __init__(self, model: CrossEncoder, temperature: float = 1.0, prior_weight: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.prior_weight = prior_weight
        if model.num_labels != 1:
            raise ConfigError(f"GroupSoftmaxLoss needs a model with 1 output label, got {model.num_labels}")

    def forward(
        self, inputs: list[list[str]], labels: Tensor | None = None, prompt: str | None = None, task: str | None = None
    ) -> Tensor:
        from sentence_transformers.util import batch_to_device

        queries, candidates = inputs[0], inputs[1:]
        if not candidates:
            raise ConfigError("GroupSoftmaxLoss expects columns (query, positive, negative_1, ...)")
        pairs = [(q, col[b]) for b, q in enumerate(queries) for col in candidates]
        features = batch_to_device(self.model.preprocess(pairs, prompt=prompt, task=task), self.model.device)
        logits = self.model(features)["scores"].view(len(queries), len(candidates)).float() / self.temperature
        if self.prior_weight:
            if labels is None:
                raise ConfigError("GroupSoftmaxLoss(prior_weight=...) needs the rows' prior scores as labels")
            logits = logits + self.prior_weight * group_scores(labels, logits)
        target = torch.zeros(len(queries), dtype=torch.long, device=logits.device)
        return nn.functional.cross_entropy(logits, target)

    def get_config_dict(self) -> dict[str, float]:
        return {"temperature": self.temperature, "prior_weight": self.prior_weight}
