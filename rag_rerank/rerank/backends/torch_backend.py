"""The torch backends: the sentence-transformers model's own forward pass (``inference_mode``).

- ``torch``: fp32 on CPU; bf16 (or fp16) autocast on CUDA when ``autocast`` is on;
- ``torch-bf16``: bf16 autocast on any device. On a CPU it needs native bf16 (AVX512_BF16 or AMX): there oneDNN
  runs the matrix products in bf16 (2.4x fp32 torch for MiniLM-L6 on a 2-core AMX CPU), while emulated bf16 would
  be slower than fp32, so elsewhere it is refused with the fix. ``backend="auto"`` keeps it only when its rankings
  match fp32 on the model's own probe.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from rag_rerank.rerank.backends.base import BackendNotAvailableError, native_cpu_bf16, torch_threads

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder


def check_torch_bf16(device: str) -> None:
    """Raise :class:`BackendNotAvailableError` when bf16 autocast would be emulated here (a CPU without native bf16).

    Raises:
        BackendNotAvailableError: naming the CPU features needed and the fix.
    """
    if device.startswith("cpu") and not native_cpu_bf16():
        raise BackendNotAvailableError(
            "backend='torch-bf16' needs a CPU with native bf16 (AVX512_BF16 or AMX); this one would emulate it, "
            "which is slower than fp32.\nFix: use backend='auto' or 'torch'.")


class TorchBackend:
    """The sentence-transformers model's own forward pass, in fp32 or under bf16/fp16 autocast."""

    def __init__(self, ce: CrossEncoder, *, num_threads: int | None, autocast: bool, bf16: bool = False) -> None:
        import torch

        self._ce = ce
        self._num_threads = num_threads
        device = ce.device.type
        if bf16:
            check_torch_bf16(device)
            self.name, self._dtype = "torch-bf16", torch.bfloat16
        elif device == "cuda" and autocast:
            self.name = "torch"
            self._dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.name, self._dtype = "torch", None
        self.effective_precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self._dtype]

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
            with torch.autocast(device_type=device.type, dtype=self._dtype or torch.float32,
                                enabled=self._dtype is not None):
                scores = ce(features)["scores"]
            return scores.float().reshape(-1).cpu().numpy()
