"""First stage on SQuAD dev: bm25, dense (MiniLM) and hybrid, MRR@10 / NDCG@10 / Recall@100.

2,000 questions sampled with ``random.Random(seed).sample(sorted(qids), 2000)``. The index is built with
``build_index`` (what ``rag-rerank index`` runs) into a cache folder, so a rerun reuses its embeddings.

Usage:
    python pipelines/eval_first_stage.py [--data ../shared/data/squad/beir] [--n 2000] [--seed 0]
        [--index DIR] [--run-file RUN.trec ...]

Writes pipelines/results/first_stage_squad.json (with the command and wall time).
"""

from __future__ import annotations

import argparse
import logging
import random
import shlex
import sys
import time
from pathlib import Path

from rag_rerank.evaluate.metrics import evaluate
from rag_rerank.io import load_beir, load_run, write_json
from rag_rerank.models import cache_dir
from rag_rerank.retrieval import build_index, load_index, rrf, weighted_fusion

REPO = Path(__file__).resolve().parents[1]
METRICS = ["mrr@10", "ndcg@10", "recall@100"]
REFERENCE = {"bm25": {"mrr@10": 0.816}, "dense": {"mrr@10": 0.739}, "hybrid": {"mrr@10": 0.8175, "recall@100": 0.997}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "squad" / "beir"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--bi-encoder", default="embedded:minilm")
    ap.add_argument("--index", default=str(cache_dir() / "indexes" / "squad-dev-minilm"))
    ap.add_argument("--run-file", action="append", default=[], help="also score these TREC runs on the same queries")
    ap.add_argument("--out", default=str(REPO / "pipelines" / "results" / "first_stage_squad.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()

    corpus, queries, qrels = load_beir(args.data)
    qids = random.Random(args.seed).sample(sorted(queries), min(args.n, len(queries)))
    sample = {q: queries[q] for q in qids}
    qrels = {q: qrels[q] for q in qids}
    print(f"{len(corpus)} passages, {len(sample)} questions (seed {args.seed})")

    t = time.perf_counter()
    build_index(corpus, args.index, bi_encoder=args.bi_encoder, show_progress_bar=True)
    index_s = time.perf_counter() - t
    print(f"index built in {index_s:.1f}s at {args.index} (embeddings are reused when unchanged)")

    idx = load_index(args.index)
    idx.dense.model  # noqa: B018 - load the bi-encoder outside the timings
    runs, timings = {}, {}
    for mode in ("bm25", "dense", "hybrid"):
        t = time.perf_counter()
        runs[mode] = idx.search(sample, top_k=args.top_k, mode=mode)
        timings[mode] = time.perf_counter() - t
    # Other fusions of the same two runs (no re-search): weighted min-max and z-score, and RRF at depth top_k.
    both = [runs["bm25"], runs["dense"]]
    runs["hybrid_weighted_minmax"] = weighted_fusion(both, norm="minmax", top_k=args.top_k)
    runs["hybrid_weighted_zscore"] = weighted_fusion(both, norm="zscore", top_k=args.top_k)
    assert rrf(both, top_k=args.top_k) == runs["hybrid"], "hybrid search must equal RRF of the two runs"
    for path in args.run_file:
        runs[f"file:{path}"] = {q: r for q, r in load_run(path).items() if q in qrels}

    results = {name: evaluate(run, qrels, METRICS) for name, run in runs.items()}
    base = results["bm25"]["mrr@10"]
    print(f"\n| retriever | MRR@10 | NDCG@10 | Recall@100 | MRR@10 vs bm25 | search s ({len(sample)} q) |")
    print("|---|---|---|---|---|---|")
    for name, m in results.items():
        secs = f"{timings[name]:.1f}" if name in timings else "-"
        print(f"| {name} | {m['mrr@10']:.4f} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | "
              f"{m['mrr@10'] / base:.3f}x | {secs} |")

    wall = time.perf_counter() - t0
    write_json(args.out, {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "data": args.data, "n_queries": len(sample), "seed": args.seed, "top_k": args.top_k,
        "bi_encoder": args.bi_encoder, "index_build_s": round(index_s, 2),
        "search_s": {k: round(v, 2) for k, v in timings.items()},
        "results": {k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()},
        "reference": REFERENCE, "wall_time_s": round(wall, 1),
    })
    print(f"\nwrote {args.out} in {wall:.0f}s")


if __name__ == "__main__":
    main()
