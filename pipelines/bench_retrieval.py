"""Index time and queries/s: our BM25 vs rank_bm25 (same run, same tokens), dense and hybrid, by corpus size.

Corpora: size 2067 is the SQuAD dev passages as they are. Larger sizes are SQuAD dev paragraphs split into
sentences (10,598) and shuffled (seed 0); beyond that, copies of those sentences with their words shuffled
(seed i) are added, which keeps the vocabulary and length statistics (what BM25 and FAISS costs depend on)
but not the meaning. Queries: SQuAD dev questions sampled with random.Random(0).

Usage:
    python pipelines/bench_retrieval.py [--sizes 2067,10000,100000] [--skip-dense-large] [--dense-max 20000]
        [--queries 2000] [--ref-queries 200] [--hnsw-min 10000]

Dense runs only at sizes <= --dense-max (MiniLM encodes a few hundred chunks/s on 2 CPU cores); at larger
sizes --faiss-only-large times FAISS search alone on random unit vectors, labelled as such. The dense index
time includes encoding every chunk with a cold embedding cache. From --hnsw-min chunks up, a FAISS HNSW index
is also built from the same (then cached) embeddings: its build time, queries/s and recall@10 against the
exact flat index, and the hybrid's queries/s over it.
Writes pipelines/results/bench_retrieval.json (with the command and wall time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rank_bm25 import BM25Okapi

from rag_rerank.io import load_corpus, load_queries, write_json
from rag_rerank.retrieval import BM25Retriever, DenseRetriever, HybridRetriever, Tokenizer, doc_text
from rag_rerank.types import ranked

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "squad"


def make_corpus(size: int, passages: dict, squad_json: Path) -> dict:
    if size == len(passages):
        return passages
    paras = [p["context"] for a in json.loads(squad_json.read_text())["data"] for p in a["paragraphs"]]
    sents = [s for p in paras for s in re.split(r"(?<=[.!?])\s+", p) if s.strip()]
    random.Random(0).shuffle(sents)
    out, copy = list(sents[:size]), 1
    while len(out) < size:
        rng = random.Random(copy)
        for s in sents[: size - len(out)]:
            words = s.split()
            rng.shuffle(words)
            out.append(" ".join(words))
        copy += 1
    return {f"s{i:07d}": {"title": "", "text": t} for i, t in enumerate(out)}


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2067,10000,100000")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--ref-queries", type=int, default=200, help="queries timed for rank_bm25 (it is slow)")
    ap.add_argument("--dense-max", type=int, default=20000, help="largest size encoded with the bi-encoder")
    ap.add_argument("--skip-dense-large", action="store_true", help="no dense above 2,067 chunks")
    ap.add_argument("--faiss-only-large", action="store_true",
                    help="time FAISS alone on random vectors above --dense-max")
    ap.add_argument("--hnsw-min", type=int, default=10000, help="also time a dense HNSW index from this size up")
    ap.add_argument("--bi-encoder", default="embedded:minilm")
    ap.add_argument("--out", default=str(REPO / "pipelines" / "results" / "bench_retrieval.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    passages = load_corpus(DATA / "beir" / "corpus.jsonl")
    all_q = load_queries(DATA / "beir" / "queries.jsonl")
    qids = random.Random(0).sample(sorted(all_q), args.queries)
    queries = {q: all_q[q] for q in qids}
    tok = Tokenizer()
    dense_max = len(passages) if args.skip_dense_large else args.dense_max
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        corpus = make_corpus(size, passages, DATA / "dev-v1.1.json")
        row: dict = {"chunks": len(corpus)}
        # ---- BM25: ours vs rank_bm25, same tokenizer, same queries
        bm25, row["bm25_index_s"] = timed(BM25Retriever().index, corpus)
        _, ours_s = timed(bm25.search, queries, 100)
        row["bm25_qps"] = len(queries) / ours_s

        def ref_index(c=corpus):
            return BM25Okapi([tok(doc_text(d)) for d in c.values()])

        ref, row["rank_bm25_index_s"] = timed(ref_index)
        ref_q = list(queries.values())[: args.ref_queries if size <= 20000 else max(10, args.ref_queries // 10)]

        def ref_search(qs=ref_q, ref=ref):
            for q in qs:
                np.argsort(-ref.get_scores(tok(q)), kind="stable")[:100]

        _, ref_s = timed(ref_search)
        row["rank_bm25_qps"] = len(ref_q) / ref_s
        row["rank_bm25_queries_timed"] = len(ref_q)
        row["bm25_speedup"] = row["bm25_qps"] / row["rank_bm25_qps"]
        print(f"[{size}] bm25 index {row['bm25_index_s']:.2f}s vs rank_bm25 {row['rank_bm25_index_s']:.2f}s; "
              f"{row['bm25_qps']:.0f} q/s vs {row['rank_bm25_qps']:.1f} q/s = {row['bm25_speedup']:.0f}x", flush=True)
        del ref
        # ---- dense and hybrid
        if size <= dense_max:
            with tempfile.TemporaryDirectory(prefix="bench-emb-") as emb_cache:
                # flat (exact) with a cold embedding cache: the encode is timed in full
                dense = DenseRetriever(args.bi_encoder, device="cpu", cache_dir=emb_cache)
                dense.model  # noqa: B018 - load outside the timings
                _, row["dense_index_s"] = timed(dense.index, corpus)
                flat_run, dense_s = timed(dense.search, queries, 100)
                row["dense_qps"] = len(queries) / dense_s
                hybrid = HybridRetriever(bm25, dense)
                _, hyb_s = timed(hybrid.search, queries, 100)
                row["hybrid_qps"] = len(queries) / hyb_s
                print(f"[{size}] dense index {row['dense_index_s']:.1f}s, {row['dense_qps']:.0f} q/s; "
                      f"hybrid {row['hybrid_qps']:.0f} q/s", flush=True)
                if size >= args.hnsw_min:
                    # HNSW over the same (now cached) embeddings: graph build + search, and its recall of the
                    # exact top-10 (the price of approximation)
                    hnsw = DenseRetriever(args.bi_encoder, device="cpu", cache_dir=emb_cache, faiss_index="hnsw")
                    hnsw.model  # noqa: B018
                    _, row["dense_hnsw_index_s_cached_embeddings"] = timed(hnsw.index, corpus)
                    hnsw_run, hnsw_s = timed(hnsw.search, queries, 100)
                    row["dense_hnsw_qps"] = len(queries) / hnsw_s
                    row["dense_hnsw_recall@10_vs_flat"] = float(np.mean([
                        len({d for d, _ in ranked(hnsw_run[q], 10)} & {d for d, _ in ranked(flat_run[q], 10)}) / 10
                        for q in queries]))
                    _, hyb_s = timed(HybridRetriever(bm25, hnsw).search, queries, 100)
                    row["hybrid_hnsw_qps"] = len(queries) / hyb_s
                    print(f"[{size}] hnsw index {row['dense_hnsw_index_s_cached_embeddings']:.1f}s (cached "
                          f"embeddings), {row['dense_hnsw_qps']:.0f} q/s, recall@10 vs flat "
                          f"{row['dense_hnsw_recall@10_vs_flat']:.3f}; hybrid {row['hybrid_hnsw_qps']:.0f} q/s",
                          flush=True)
                del dense, hybrid
        elif args.faiss_only_large:
            import faiss

            rng = np.random.default_rng(0)
            vecs = rng.standard_normal((size, 384)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            noise = rng.standard_normal((len(queries), 384)).astype(np.float32)
            qv = vecs[rng.choice(size, len(queries))] + 0.1 * noise
            for kind in ("flat", "hnsw"):
                index = (faiss.IndexFlatIP(384) if kind == "flat"
                         else faiss.IndexHNSWFlat(384, 32, faiss.METRIC_INNER_PRODUCT))
                _, row[f"faiss_{kind}_add_s_random_vectors"] = timed(index.add, vecs)
                _, s = timed(index.search, qv, 100)
                row[f"faiss_{kind}_qps_random_vectors"] = len(queries) / s
            print(f"[{size}] faiss only (random vectors): flat {row['faiss_flat_qps_random_vectors']:.0f} q/s, "
                  f"hnsw {row['faiss_hnsw_qps_random_vectors']:.0f} q/s", flush=True)
        rows.append(row)

    print("\n| chunks | bm25 index s | rank_bm25 index s | bm25 q/s | rank_bm25 q/s | speedup | dense index s "
          "| dense q/s | hybrid q/s | hnsw index s (cached emb.) | hnsw q/s | hnsw recall@10 | hybrid (hnsw) q/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(k, fmt="{:.0f}", r=r):
            return fmt.format(r[k]) if k in r else "-"
        print(f"| {r['chunks']:,} | {f('bm25_index_s', '{:.2f}')} | {f('rank_bm25_index_s', '{:.2f}')} | "
              f"{f('bm25_qps')} | {f('rank_bm25_qps', '{:.1f}')} | {f('bm25_speedup', '{:.0f}x')} | "
              f"{f('dense_index_s', '{:.1f}')} | {f('dense_qps')} | {f('hybrid_qps')} | "
              f"{f('dense_hnsw_index_s_cached_embeddings', '{:.1f}')} | {f('dense_hnsw_qps')} | "
              f"{f('dense_hnsw_recall@10_vs_flat', '{:.3f}')} | {f('hybrid_hnsw_qps')} |")
    wall = time.perf_counter() - t0
    write_json(args.out, {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "n_queries": len(queries), "top_k": 100,
        "machine_note": "2 CPU cores; timings are indicative, ratios are same-run",
        "load_average_at_end": os.getloadavg(),
        "rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        "wall_time_s": round(wall, 1),
    })
    print(f"\nwrote {args.out} in {wall:.0f}s")


if __name__ == "__main__":
    main()
