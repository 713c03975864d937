"""Data-parallel training under ``torchrun``: which process writes, and the per-process batch.

``torchrun --nproc_per_node N -m rag_rerank train ...`` (gloo on CPU, NCCL on GPUs) runs N copies of the command.
The Hugging Face Trainer under :func:`rag_rerank.train.reranker_trainer.train_reranker` (and under the warm start)
joins them by itself: each process trains on its share of every batch and the gradients are averaged. This module
adds the rest:

- **the same training**: each process takes ``batch_size / N`` groups per step, so the global batch, the number of
  steps and the schedule are the recipe's, whatever N;
- **the same decisions**: the validation metrics (which sentence-transformers computes on the main process only, and
  whose broadcast returns nothing on CPU, measured with sentence-transformers 5 and accelerate) reach every process,
  so the best checkpoint, the sanity gate and early stopping decide alike everywhere;
- **one writer**: only the main process (rank 0) writes the model, its card, the evaluators' CSVs, the training
  groups and ``fusion.json``; the others wait for it at a barrier and then return.

Example:
    >>> per_process_batch(8, world=2)
    4
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["barrier", "broadcast_from_main", "is_main_process", "per_process_batch", "world_size"]


def world_size() -> int:
    """Processes in this run (``WORLD_SIZE``, set by torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def per_process_batch(batch_size: int, world: int | None = None) -> int:
    """Groups per process per step so that the global batch stays ``batch_size`` (rounded down, at least 1)."""
    world = world or world_size()
    per = max(1, batch_size // world)
    if per * world != batch_size:
        logger.warning("batch_size=%d is not a multiple of %d processes: each takes %d (global batch %d)",
                       batch_size, world, per, per * world)
    return per


def barrier() -> None:
    """Wait for every process (a no-op in a single process or before the process group exists)."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def broadcast_from_main(obj: Any) -> Any:
    """``obj`` as the main process holds it (``obj`` itself in a single process)."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]
    return obj
