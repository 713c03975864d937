"""The torch backend: the sentence-transformers model's own forward pass (``inference_mode``, CUDA autocast)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from rag_rerank.rerank.backends.base import torch_threads

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder


class TorchBackend:
    """The sentence-transformers model's own forward pass (``inference_mode``, CUDA autocast)."""

    name = "torch"

    def __init__(self, ce: CrossEncoder, *, num_threads: int | None, autocast: bool) -> None:
        import torch

        self._ce = ce
        self._num_threads = num_threads
        self._autocast = autocast
        cuda = ce.device.type == "cuda" and autocast
        self.effective_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"

    def threads(self) -> contextlib.AbstractContextManager[None]:
        return torch_threads(self._num_threads)

    def logits(self, features: dict[str, Any]) -> np.ndarray:
        import torch
        from sentence_transformers.util import batch_to_device

        ce = self._ce
        device = ce.device
        ce.eval()
        with torch.inference_mode():
            features = batch_to_device(features, device)
            use_autocast = self._autocast and device.type == "cuda"
            dtype = torch.bfloat16 if use_autocast and torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=use_autocast):
                scores = ce(features)["scores"]
            return scores.float().reshape(-1).cpu().numpy()
