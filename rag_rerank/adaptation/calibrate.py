"""Throughput measured on this machine, for ``adapt --budget-minutes``: seconds per chunk and per training step.

Both measurements do real work with the run's own settings: the chunks asked are the first of the seeded subset the
run asks anyway (subsets are nested, so they are not asked again), and the training steps are the recipe's
(base model, batch, group size, max_length) on groups built from the corpus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag_rerank.train.recipes import Recipe

logger = logging.getLogger(__name__)

__all__ = ["measure_chunks", "measure_step"]


def measure_chunks(docs_dir: Any, dataset_dir: Path, recipe: Recipe, llm: str, base_url: str | None, n: int,
                   seed: int, query_examples: Any = None) -> float:
    """Seconds per chunk of generating the first ``n`` chunks of the run's subset into ``dataset_dir``.

    The chunks' own wall time (``chunks_seconds`` in the dataset's manifest), not the call's: timing the whole call
    counted the embedded LLM server's start (about 7.5 s on 2 cores) and the first imports as generation, and
    `make demo` planned 2.40 s per chunk where it then ran at 1.46.
    """
    from rag_rerank.generate.dataset import create_qa_dataset
    from rag_rerank.generate.store import MANIFEST
    from rag_rerank.io import read_json

    start = time.perf_counter()
    summary = create_qa_dataset(docs_dir, dataset_dir, llm=llm, base_url=base_url, seed=seed, max_chunks=n,
                                show_progress_bar=False, retry_failed=False, query_examples=query_examples,
                                **recipe.generation.kwargs())
    call = time.perf_counter() - start
    asked = summary.requests_this_run
    chunks = read_json(Path(dataset_dir) / MANIFEST).get("timings", {}).get("chunks_seconds", 0.0)
    if not asked or chunks <= 0:  # nothing was asked (all done earlier): the call is the only clock
        return call / max(n, 1)
    logger.info("measured %.2f s per chunk (%d chunks in %.1f s; the whole call took %.1f s)", chunks / asked, asked,
                chunks, call)
    return chunks / asked


def measure_step(base_model: str, recipe: Recipe, texts: Sequence[str], steps: int = 2) -> float:
    """Seconds per optimiser step of the recipe's reranker training (after one warm-up step), in the precision the
    training will use (bf16 autocast where the CPU computes bf16 natively) and with the recipe's attention dropout.
    Measured in fp32, `make demo`'s budget took 8.4 s per step on the AMD AVX-512 machine, where its bf16 training
    takes 4.7 s; measured with the model's own attention dropout (0.1: no fused attention kernel), it took 7.0 s on
    the AMX machine, where the default's training (dropout off) takes 1.5 s."""
    import contextlib

    import torch

    from rag_rerank.train.config import training_precision
    from rag_rerank.train.losses import GroupSoftmaxLoss
    from rag_rerank.train.reranker_trainer import load_training_model

    t = recipe.training
    bf16 = training_precision(t.mixed_precision) == "bf16"
    model = load_training_model(base_model, t, device="cpu")
    model.train()
    loss_fn = GroupSoftmaxLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate)
    texts = [x for x in texts if x.strip()] or ["a passage"]
    k = t.train_group_size

    def batch(i: int) -> list[list[str]]:
        rows = [texts[(i * t.batch_size + b) % len(texts)] for b in range(t.batch_size)]
        cols = [[" ".join(r.split()[:12]) for r in rows], rows]
        cols += [[texts[(i + j + b + 1) % len(texts)] for b in range(t.batch_size)] for j in range(k - 1)]
        return cols

    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = loss_fn(batch(i))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    logger.info("measured %.2f s per training step (%s)", sum(times[1:]) / steps, "bf16" if bf16 else "fp32")
    return sum(times[1:]) / steps
