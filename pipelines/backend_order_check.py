"""Does the order of rows in one process change a backend's measured speed? (the `auto` row puzzle in bench_rerank)

    python pipelines/backend_order_check.py --model runs/demo_check/reranker \\
        --order openvino-int8 auto openvino-int8 auto
    # -> pipelines/results/backend_order_check.json

``bench_rerank.py`` times every backend one after another in one process, and its ``auto`` row came out slower than
the row of the backend ``auto`` chose. This builds a fresh ``Reranker`` per entry of ``--order`` (the same backend
may appear twice), times ``predict`` on the same pairs (the model's own training pairs, best of 3 after a warm-up),
and records what ``auto`` chose and why. A fresh rag-rerank cache is used, so ``auto`` measures instead of reading an
earlier choice. ``st-predict`` in ``--order`` times ``CrossEncoder.predict`` itself (the baseline users would pick);
``--device cuda`` runs every row on the GPU (``bash pipelines/bench_rerank_device.sh order`` on the lent machine).
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from rag_rerank.io import iter_jsonl, write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.rerank.reranker import Reranker

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="A fine-tuned model folder with train_groups.jsonl.")
    ap.add_argument("--order", nargs="+", default=["openvino-int8", "auto", "openvino-int8", "auto"])
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--device", default="cpu", help="cpu (2 threads), or cuda")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "backend_order_check.json")
    args = ap.parse_args()
    os.environ["RAG_RERANK_CACHE"] = tempfile.mkdtemp(prefix="rag-rerank-cache-")
    rows = list(iter_jsonl(args.model / "train_groups.jsonl"))
    pairs = [(r["query"], d) for r in rows for d in [r["positive"], *r["negatives"]]][: args.pairs]
    settings = {"device": args.device, "max_length": 256, "long_documents": "truncate", "cache_size": 0,
                "num_threads": 2 if args.device == "cpu" else None, "batch_size": 32}
    measured = []
    for name in args.order:
        if name == "st-predict":
            from sentence_transformers import CrossEncoder

            rr = _Predict(CrossEncoder(str(args.model), device=args.device, max_length=settings["max_length"]))
        else:
            rr = Reranker(str(args.model), backend=name, **settings)
        rr.predict(pairs)  # warm-up at the timed size (a GPU tunes its kernels per batch shape)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            rr.predict(pairs)
            best = min(best, time.perf_counter() - start)
        row = {"asked": name, "ran": rr.config.backend, "pairs_per_s": round(len(pairs) / best, 1)}
        if rr.backend_choice is not None:
            row["auto_reason"] = rr.backend_choice.reason()
        measured.append(row)
        sys.stdout.write(f"{name} -> {row['ran']}: {row['pairs_per_s']} pairs/s\n")
        del rr
        gc.collect()
    write_json(args.out, {"command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/backend_order_check.py",
                                                                                   *sys.argv[1:]]),
                          "model": str(args.model), "pairs": len(pairs), "settings": settings, "rows": measured,
                          "machine": machine_info(args.device)})
    return 0


class _Predict:
    """``CrossEncoder.predict`` with the Reranker's batch size, timed like the rows."""

    config = SimpleNamespace(backend="st-predict")
    backend_choice = None

    def __init__(self, ce: object) -> None:
        self.ce = ce

    def predict(self, pairs: list[tuple[str, str]]) -> object:
        return self.ce.predict(pairs, batch_size=32, show_progress_bar=False)


if __name__ == "__main__":
    sys.exit(main())
