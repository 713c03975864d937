"""Should our hand-written BM25 and metrics/significance code be replaced by libraries? Same-process measurements.

1. BM25: ``rag_rerank.retrieval.BM25Retriever`` against every ``bm25s`` method (robertson, lucene, atire, bm25l,
   bm25+; plus atire term weights with robertson idf, the nearest bm25s gets to rank_bm25) on the SQuAD BEIR corpus
   (2,067 passages, ``title + " " + text``), everyone fed our ``Tokenizer()`` tokens. Reports (a) score parity with
   ``rank_bm25.BM25Okapi`` on the first 200 sampled queries (max abs diff of the full score vectors, top-10 set
   overlap and identical ordered top-10, both ranked by (-score, doc_id)), (b) index seconds (tokenization excluded)
   and top-100 queries/s (query tokenization and building the ``{qid: {doc_id: score}}`` run included for all),
   best of ``--repeats``, (c) MRR@10 / nDCG@10 / recall@100 with ``rag_rerank.evaluate.metrics.evaluate``.
2. Metrics: our ``per_query_many`` vs ``pytrec_eval`` and ``ranx`` on our BM25 run and the bm25s lucene run (per-query
   max abs diff, disagreeing queries, queries with tied scores in the top 10) and seconds per call. trec_eval breaks
   ties by descending doc id, ranx by an unstable argsort, ours by ascending doc id. pytrec_eval has no MRR cutoff, so
   its ``recip_rank`` gets the run cut to our top 10.
3. Significance: our ``paired_randomization`` / ``paired_bootstrap`` vs ranx's Fisher randomization test (ranx has no
   bootstrap; its paired t-test is shown for reference) on the same per-query scores, with p-values and seconds.

Queries: ``random.Random(0).sample(sorted(query_ids), n)``. Writes JSON with the command, machine and wall time.
Usage: python pipelines/bench_libraries.py [--n-queries 2000] [--out pipelines/results/library_choices.json]
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

try:
    import bm25s
    import pytrec_eval
    import ranx
    from rank_bm25 import BM25Okapi
    from ranx.statistical_tests import fisher_randomization_test, paired_student_t_test
except ImportError as e:
    sys.exit(f"bench_libraries needs {e.name}: pip install bm25s ranx (and rank-bm25 pytrec-eval-terrier)")

from rag_rerank.evaluate.metrics import evaluate, parse_metric, per_query_many
from rag_rerank.evaluate.significance import paired_bootstrap, paired_randomization
from rag_rerank.io import load_beir, write_json
from rag_rerank.retrieval import BM25Retriever, Tokenizer, doc_text
from rag_rerank.retrieval.common import tie_ranks

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "squad" / "beir"
METRICS = ["mrr@10", "ndcg@10", "recall@100"]
VARIANTS = {m: {"method": m} for m in ("robertson", "lucene", "atire", "bm25l", "bm25+")}
VARIANTS["atire+robertson_idf"] = {"method": "atire", "idf_method": "robertson"}
VARIANTS["atire+robertson_idf_f64"] = {"method": "atire", "idf_method": "robertson", "dtype": "float64"}


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def bm25s_index(tokens, kw):
    r = bm25s.BM25(**kw)
    r.index(tokens, show_progress=False)
    return r


def bm25s_search(r, queries, doc_ids, tok, k=100):
    qids = list(queries)
    qtoks = [[t for t in tok(queries[q]) if t in r.vocab_dict] or [""] for q in qids]  # "" = bm25s empty token
    docs, scores = r.retrieve(qtoks, k=k, show_progress=False)
    ids = np.asarray(doc_ids, dtype=object)
    return {q: {d: s for d, s in zip(ids[docs[i]].tolist(), scores[i].tolist(), strict=True) if s != 0}
            for i, q in enumerate(qids)}


def bm25s_scores(r, toks):
    ids = r.get_tokens_ids(toks)
    return r.get_scores_from_ids(ids).astype(np.float64) if ids else np.zeros(r.scores["num_docs"])


def top10(scores, tie):
    return np.lexsort((tie, -scores))[:10]


def max_diff(xs, ys) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(xs, ys, strict=True))


def parity(ref, ref_eps0, other, tie):
    diff, diff0 = max_diff(ref, other), max_diff(ref_eps0, other)
    tops = [(top10(a, tie), top10(b, tie)) for a, b in zip(ref, other, strict=True)]
    return {"max_abs_diff": diff, "max_abs_diff_vs_eps0": diff0,
            "top10_overlap": float(np.mean([len(set(a) & set(b)) / 10 for a, b in tops])),
            "top10_identical_frac": float(np.mean([np.array_equal(a, b) for a, b in tops]))}


def tied_top10(run) -> set[str]:
    out = set()
    for q, docs in run.items():
        s = sorted(docs.values(), reverse=True)[:11]
        if len(s) != len(set(s)):
            out.add(q)
    return out


def pytrec_per_query(run, qrels):
    cut = {q: dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:10]) for q, d in run.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    pick = (("mrr@10", rr, "recip_rank"), ("ndcg@10", full, "ndcg_cut_10"), ("recall@100", full, "recall_100"))
    return {m: {q: res.get(q, {}).get(key, 0.0) for q in qrels} for m, res, key in pick}  # missing query: 0


def ranx_per_query(run, qrels):
    qids = sorted(qrels)
    rrun = ranx.Run({q: run.get(q) or {"__none__": 0.0} for q in qids})  # ranx rejects empty rankings
    res = ranx.evaluate(ranx.Qrels(qrels), rrun, METRICS, return_mean=False, save_results_in_run=False)
    ids = rrun.get_query_ids()
    return {m: dict(zip(ids, map(float, res[m]), strict=True)) for m in METRICS}


def agreement(ours, theirs, tied):
    out = {}
    for m in METRICS:
        d = {q: abs(ours[m][q] - theirs[m][q]) for q in ours[m]}
        bad = {q for q, v in d.items() if v > 1e-9}
        out[m] = {"max_abs_diff": max(d.values()), "n_disagree": len(bad), "n_disagree_untied": len(bad - tied)}
    return out


def significance(pa, pb, n, repeats):
    ks = sorted(pa)
    a, b = np.array([pa[q] for q in ks]), np.array([pb[q] for q in ks])
    t_rand, rand = best_of(lambda: paired_randomization(pa, pb, n, 0), 1)
    t_boot, boot = best_of(lambda: paired_bootstrap(pa, pb, n, 0), 1)
    t_first, _ = best_of(lambda: fisher_randomization_test(a, b, n, 0.05, 42), 1)  # numba JIT on first call
    fisher = [best_of(lambda: fisher_randomization_test(a, b, n, 0.05, 42), 1) for _ in range(repeats)]
    return {"mean_delta": rand.mean_delta, "ours_randomization_p": rand.p_value, "ours_bootstrap_p": boot.p_value,
            "ours_bootstrap_ci95": [boot.ci95_lo, boot.ci95_hi],
            "ranx_fisher_p_seed42_each_repeat": [float(p) for _, (p, _) in fisher],
            "ranx_student_t_p": None if np.isnan(t_p := float(paired_student_t_test(a, b)[0])) else t_p,
            "seconds": {"ours_randomization": t_rand, "ours_bootstrap": t_boot,
                        "ranx_fisher": min(t for t, _ in fisher), "ranx_fisher_first_call_incl_jit": t_first}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-queries", type=int, default=2000)
    ap.add_argument("--parity-queries", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    ap.add_argument("--resamples", type=int, default=10000)
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "library_choices.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    corpus, all_queries, all_qrels = load_beir(DATA)
    qids = random.Random(0).sample(sorted(all_queries), args.n_queries)
    queries, qrels = {q: all_queries[q] for q in qids}, {q: all_qrels[q] for q in qids}
    tok, doc_ids = Tokenizer(), list(corpus)
    tokens = [tok(doc_text(corpus[d], True)) for d in doc_ids]
    tie = tie_ranks(doc_ids)

    # ---- 1. BM25: index time, queries/s, parity with rank_bm25, quality
    ours_idx_s, ours = best_of(lambda: BM25Retriever().index_tokens(tokens, doc_ids), args.repeats)
    ours_q_s, ours_run = best_of(lambda: ours.search(queries, top_k=100, show_progress_bar=False), args.repeats)
    ptoks = [tok(queries[q]) for q in qids[: args.parity_queries]]
    okapi = BM25Okapi(tokens)
    ref = [okapi.get_scores(t) for t in ptoks]
    okapi0 = BM25Okapi(tokens, epsilon=0.0)  # negative idf -> 0, as bm25s's robertson idf does
    ref0 = [okapi0.get_scores(t) for t in ptoks]
    bm25 = {"ours": {"index_s": ours_idx_s, "qps": len(qids) / ours_q_s,
                     "parity_vs_rank_bm25": parity(ref, ref0, [ours.get_scores(t) for t in ptoks], tie),
                     **evaluate(ours_run, qrels, METRICS)}}
    runs = {}
    for name, kw in VARIANTS.items():
        idx_s, r = best_of(lambda kw=kw: bm25s_index(tokens, kw), args.repeats)
        q_s, runs[name] = best_of(lambda r=r: bm25s_search(r, queries, doc_ids, tok), args.repeats)
        bm25[f"bm25s:{name}"] = {
            "index_s": idx_s, "qps": len(qids) / q_s,
            "index_ratio_ours_over_lib": ours_idx_s / idx_s, "qps_ratio_ours_over_lib": q_s / ours_q_s,
            "parity_vs_rank_bm25": parity(ref, ref0, [bm25s_scores(r, t) for t in ptoks], tie),
            **evaluate(runs[name], qrels, METRICS)}
    # numba backend (a dependency of ranx, so present): JIT compile on first use is timed separately.
    numba_idx_s, r = best_of(lambda: bm25s_index(tokens, {"method": "lucene", "backend": "numba"}), 1)
    first_s, _ = best_of(lambda: bm25s_search(r, queries, doc_ids, tok), 1)
    q_s, _ = best_of(lambda: bm25s_search(r, queries, doc_ids, tok), args.repeats)
    bm25["bm25s:lucene_numba"] = {"init_index_incl_jit_s": numba_idx_s, "first_call_s": first_s, "qps": len(qids) / q_s,
                                  "qps_ratio_ours_over_lib": q_s / ours_q_s}
    query_tok_s, _ = best_of(lambda: [tok(queries[q]) for q in qids], args.repeats)

    # ---- 2. Metrics agreement and time per call (same runs for all three libraries)
    metric_objs, pqs = [parse_metric(m) for m in METRICS], {}
    metrics = {"tie_note": "ours (-score, doc_id asc); trec_eval (-score, doc_id desc); ranx unstable argsort"}
    for label, run in (("ours_bm25", ours_run), ("bm25s_lucene", runs["lucene"])):
        tied = tied_top10(run)
        t_ours, pq = best_of(lambda run=run: per_query_many(run, qrels, metric_objs), args.repeats)
        t_trec, pq_trec = best_of(lambda run=run: pytrec_per_query(run, qrels), args.repeats)
        t_ranx_first, _ = best_of(lambda run=run: ranx_per_query(run, qrels), 1)
        t_ranx, pq_ranx = best_of(lambda run=run: ranx_per_query(run, qrels), args.repeats)
        metrics[label] = {
            "n_queries_with_ties_in_top10": len(tied),
            "pytrec_eval_vs_ours": agreement(pq, pq_trec, tied), "ranx_vs_ours": agreement(pq, pq_ranx, tied),
            "seconds_per_call": {"ours": t_ours, "pytrec_eval": t_trec, "ranx": t_ranx,
                                 "ranx_first_call_incl_jit": t_ranx_first},
            "time_ratio_ours_over_pytrec_eval": t_ours / t_trec, "time_ratio_ours_over_ranx": t_ours / t_ranx}
        pqs[label] = pq

    # ---- 3. Significance: ours vs ranx on the same per-query scores (a = our BM25, b = a bm25s variant)
    sig, n = {}, args.resamples
    pairs = [(m, "lucene") for m in METRICS] + [("mrr@10", v) for v in VARIANTS if v != "lucene"]
    for metric, variant in pairs:
        pq_b = per_query_many(runs[variant], qrels, [parse_metric(metric)])[metric]
        sig[f"ours_bm25 vs bm25s:{variant} {metric}"] = significance(pqs["ours_bm25"][metric], pq_b, n, args.repeats)

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    pkgs = ("bm25s", "ranx", "rank-bm25", "pytrec-eval-terrier", "numba", "numpy", "scipy", "rag-rerank")
    write_json(args.out, {
        "command": shlex.join(["python", *sys.argv]), "n_queries": len(qids), "parity_queries": len(ptoks),
        "n_docs": len(doc_ids), "top_k": 100, "repeats": args.repeats, "resamples": n,
        "timing_note": "best of repeats; index excludes doc tokenization; qps includes query tokenization and "
                       "building the run dict for every system; ratios are same-run; machine shared with another job",
        "query_tokenization_s": query_tok_s,
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
        "versions": {p: version(p) for p in pkgs},
        "bm25": bm25, "metrics": metrics, "significance": sig,
        "wall_s": round(time.perf_counter() - t0, 1)})
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
