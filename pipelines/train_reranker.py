"""Train a reranker from a JSONL of group rows ({"query", "positive", "negatives": [...]}).

    .venv/bin/python pipelines/train_reranker.py GROUPS.jsonl --out MODEL_DIR \
        [--base-model embedded:minilm-ce] [--val VAL.jsonl] [--loss listwise|bce] [--max-steps N]

VAL.jsonl rows are {"query", "positive": [...], "documents": [first-stage top-k, in order]}.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rag_rerank.io import iter_jsonl
from rag_rerank.training import RerankerTrainingConfig, train_reranker


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groups")
    p.add_argument("--out", required=True)
    p.add_argument("--base-model", default="embedded:minilm-ce")
    p.add_argument("--val")
    p.add_argument("--loss", choices=["listwise", "bce"], default="listwise")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--head-lr", type=float, default=1e-3)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = RerankerTrainingConfig(loss=a.loss, epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size,
                                 max_length=a.max_length, head_learning_rate=a.head_lr)
    res = train_reranker(a.base_model, list(iter_jsonl(a.groups)), output_dir=a.out, config=cfg,
                         eval_samples=list(iter_jsonl(a.val)) if a.val else None, command=" ".join(sys.argv))
    print(f"saved {res.output_dir} after {res.steps} steps ({res.wall_time_s:.0f} s)")
    print(f"VERDICT: {res.verdict}")
    return 1 if res.collapsed else 0


if __name__ == "__main__":
    sys.exit(main())
