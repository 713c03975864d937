"""Do the fast CPU backends keep the headline's quality? MRR@10 on the headline's real questions, per backend.

    python pipelines/backend_parity.py                      # after pipelines/quality_benchmark.py
    python pipelines/backend_parity.py --backends openvino-bf16 openvino-int8 onnx-int8 --with-torch

Issue 8's bar: on the headline benchmark, a fast backend's MRR@10 is within 0.005 of fp32 torch's. This script
reranks the same 1,000 real SQuAD questions (same seed, same index, the same tuned first stage) with the headline's
fine-tuned reranker through each backend, alone and fused at the model's saved alpha, and compares with fp32 torch:
the torch figures come from the 0.1 headline, ``pipelines/results/squad_headline_v1.json`` (checked to be the same
questions: the hybrid's MRR@10 must match to 1e-9), or are recomputed here with ``--with-torch``.

Writes ``pipelines/results/backend_parity.json`` with the command and wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from rag_rerank.evaluate.compare import evaluate_systems
from rag_rerank.io import load_beir, write_json
from rag_rerank.rerank.fusion import load_fusion
from rag_rerank.rerank.reranker import Reranker
from rag_rerank.retrieval import load_index

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "beir"
METRICS = ("mrr@10", "ndcg@10", "hit@1")
logger = logging.getLogger("backend_parity")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "squad_default", help="quality_benchmark's folder")
    ap.add_argument("--headline", type=Path, default=REPO / "pipelines" / "results" / "squad_headline_v1.json")
    ap.add_argument("--data", type=Path, default=SQUAD)
    ap.add_argument("--backends", nargs="+", default=["openvino-bf16", "openvino-int8"])
    ap.add_argument("--with-torch", action="store_true", help="recompute fp32 torch here instead of reading it")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "backend_parity.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("rag_rerank", logger.name):
        logging.getLogger(name).setLevel(logging.INFO)
    t0 = time.perf_counter()
    headline = json.loads(args.headline.read_text())
    model = args.work / "default" / "reranker"
    fusion = load_fusion(model)
    alpha = fusion.alpha if fusion.improved else fusion.best_alpha
    if alpha != float(headline["fusion"]["best_alpha" if not fusion.improved else "alpha"]):
        raise SystemExit(f"{model} is not the headline's model (alpha {alpha} vs {headline['fusion']['alpha']})")
    settings = headline["settings"]
    corpus, queries, qrels = load_beir(args.data)
    backends = (["torch"] if args.with_torch else []) + list(args.backends)
    rerankers = {b: Reranker(str(model), backend=b, cache_size=0) for b in backends}
    res = evaluate_systems(corpus, queries, qrels, index=load_index(args.work / "index-real"),
                           index_dir=args.work / "index-real", rerankers=rerankers,
                           alpha=dict.fromkeys(backends, alpha), top_k=settings["recipe"]["top_k"],
                           first_stage_tuned=fusion.first_stage, metrics=METRICS, sample=settings["eval_queries"],
                           seed=settings["seed"], n_resamples=1000)
    hybrid = res.systems["hybrid"]["mrr@10"]
    if abs(hybrid - headline["systems"]["hybrid"]["mrr@10"]) > 1e-9:
        raise SystemExit(f"hybrid MRR@10 {hybrid} differs from the headline's: not the same questions or index")
    fused, base = f"@{alpha:g}", "first_stage_tuned+"
    reference = {"alone": headline["systems"][f"{base}reranker"],
                 "fused": headline["systems"][f"{base}reranker{fused}"]}
    if args.with_torch:
        reference = {"alone": res.systems[f"{base}torch"], "fused": res.systems[f"{base}torch{fused}"]}
    rows = {}
    for b in backends:
        alone, fus = res.systems[f"{base}{b}"], res.systems[f"{base}{b}{fused}"]
        rows[b] = {
            "reranker_alone": alone, "fused": fus,
            "mrr@10_diff_vs_torch": {"alone": alone["mrr@10"] - reference["alone"]["mrr@10"],
                                     "fused": fus["mrr@10"] - reference["fused"]["mrr@10"]},
            "rerank_s": res.timings_s.get(f"hybrid+{b}"),
        }
        rows[b]["within_0.005"] = all(abs(v) <= 0.005 for v in rows[b]["mrr@10_diff_vs_torch"].values())
        logger.info("%s: MRR@10 alone %.4f (%+.4f vs torch), fused %.4f (%+.4f)", b, alone["mrr@10"],
                    rows[b]["mrr@10_diff_vs_torch"]["alone"], fus["mrr@10"], rows[b]["mrr@10_diff_vs_torch"]["fused"])
    write_json(args.out, {
        "queries": res.queries, "model": str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model),
        "alpha": alpha, "hybrid": res.systems["hybrid"],
        "torch_reference": "recomputed here" if args.with_torch else f"{args.headline.name} (same questions)",
        "torch": reference, "backends": rows,
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *sys.argv[1:]]),
        "wall_s": round(time.perf_counter() - t0, 1),
    })
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
