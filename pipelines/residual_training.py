"""Residual training on a small run: does a reranker trained to correct the first stage give a fused gain?

    python pipelines/residual_training.py --run runs/demo_base --max-steps 45 \
        --variant default --variant residual --variant residual-nowarm

A new head starts far below the first stage, and a small run (``make demo``) ends before the reranker alone catches
up, so fusion has nothing to add. Residual training (``RerankerTrainingConfig.prior_weight``) scores each training
group with ``logit + w * prior``, where ``prior`` is the tuned first stage's z-scored score: the system starts
where the first stage is, and the cross-encoder learns only what it misses, which is what the served fusion adds.

Every variant runs ``rag_rerank.train.finetune`` (the user path: the recipe's evaluation budget, the fusion weight
chosen on synthetic validation, ``fusion.json``) on the run's own training groups for ``--max-steps`` steps, and
is then scored on the synthetic test split: the reranker fused at the validation's best alpha (as ``adapt`` serves
it; the shipped system is the first stage alone unless that alpha's validation gain is significant) and, for a
residual model, ``logit + w * z(first stage)``, the system it was trained as; each against the tuned first stage,
with a paired bootstrap CI. With ``--real`` (the run is over ``sample_docs/``), SQuAD's human questions about the
same articles are scored too (a seeded sample); they measure only and choose nothing.
Resumable per variant. Writes ``pipelines/results/residual_training.json`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from demo_real_questions import SQUAD, real_questions

from rag_rerank.adaptation.runfolder import tuned_first_stage
from rag_rerank.cli import run_script
from rag_rerank.evaluate.compare import sample_query_ids
from rag_rerank.evaluate.metrics import per_query
from rag_rerank.evaluate.significance import paired_bootstrap
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import iter_jsonl, read_json, write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.rerank.reranker import Reranker, sigmoid
from rag_rerank.rerank.runs import interpolate_run, score_candidates
from rag_rerank.retrieval.store import load_index
from rag_rerank.train.finetune import finetune
from rag_rerank.train.groups import prior_scores
from rag_rerank.types import ranked

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("residual_training")
TUNED = "first_stage_tuned"
# name -> (recipe, training overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("default", {}),
    "residual": ("default", {"prior_weight": "auto"}),
    "residual-nowarm": ("default", {"prior_weight": "auto", "warm_start_steps": 0}),
    "residual-lr1e-4": ("default", {"prior_weight": "auto", "learning_rate": 1e-4}),
    "residual-nowarm-lr1e-4": ("default", {"prior_weight": "auto", "warm_start_steps": 0, "learning_rate": 1e-4}),
}


def measure(queries: dict, qrels: dict, corpus: dict, index: Any, model: Path, alpha: float,
            prior_weight: float | None, sample: int | None = None) -> dict[str, Any]:
    """MRR@10 of the tuned first stage, the reranker fused at ``alpha`` (as served: z-scores of its sigmoid scores)
    and, for a residual model, ``logit + prior_weight * z(first stage)`` (what it was trained as), with paired
    bootstrap CIs of each against the tuned first stage; ``queries`` sampled as ``evaluate_systems`` samples."""
    if sample is not None and len(queries) > sample:
        keep = sample_query_ids(qrels, queries, sample, seed=0)
        queries = {q: queries[q] for q in keep}
    qrels = {q: qrels[q] for q in queries}
    run = index.search(queries, top_k=20, mode="hybrid")
    logits = score_candidates(run, queries, corpus, Reranker(str(model), activation="none"), 20)
    probs = {q: dict(zip(s, sigmoid(np.array(list(s.values()))).tolist(), strict=True)) for q, s in logits.items()}
    systems = {TUNED: run, f"{TUNED}+reranker@{alpha:g}": interpolate_run(run, probs, alpha, 20)}
    if prior_weight is not None:
        tops = {q: [d for d, _ in ranked(s, 20)] for q, s in run.items()}  # the prior as training computed it
        systems[f"{TUNED}+residual@{prior_weight:g}"] = {
            q: {d: logits[q][d] + prior_weight * z for d, z in zip(top, prior_scores(run[q], top, 20), strict=True)}
            for q, top in tops.items()}
    per = {name: per_query(r, qrels, "mrr@10") for name, r in systems.items()}
    out: dict[str, Any] = {"queries": len(queries), "mrr@10": {k: float(np.mean(list(v.values()))) for k, v in
                                                               per.items()}, "vs_first_stage_tuned": {}}
    for name in list(per)[1:]:
        b = paired_bootstrap(per[name], per[TUNED], 10000, 0)
        out["vs_first_stage_tuned"][name] = {"delta": b.mean_delta, "ci95": [b.ci95_lo, b.ci95_hi]}
    return out


def fusion_record(choice: Any) -> dict[str, Any]:
    """A ``FusionChoice`` as the result files record it."""
    return {"status": choice.status, "alpha": choice.alpha, "best_alpha": choice.best_alpha, "gain": choice.gain,
            "gain_ci95": list(choice.gain_ci95 or ()), "by_alpha": choice.by_alpha}


def real_split(run: Path) -> tuple[dict, dict, dict]:
    """``(queries, qrels, corpus)``: SQuAD's human questions about the articles of ``run`` (over ``sample_docs/``)."""
    corpus_all = {d["_id"]: d for d in iter_jsonl(run / "index" / "corpus.jsonl")}
    rq, rqrels, _ = real_questions(SQUAD, corpus_all)
    return rq, rqrels, corpus_all


def measure_splits(entry: dict[str, Any], run: Path, first_stage: dict[str, Any], model: Path,
                   prior_weight: float | None, real: tuple | None, sample: int) -> None:
    """``entry["test"]`` (the run's synthetic test split) and, with ``real``, ``entry["real"]``: :func:`measure` of
    ``model`` fused at the weight validation chose, or at its best weight when validation refused it."""
    fusion = entry["validation"]["fusion"]
    shown = fusion["alpha"] if fusion["status"] == "improved" else fusion["best_alpha"]  # fused, even if not shipped
    index = load_index(run / "index").with_fusion(**first_stage)
    corpus, queries, qrels = load_qa_dataset(run / "dataset").split("test")
    entry["test"] = measure(queries, qrels, corpus, index, model, shown, prior_weight)
    if real is not None:
        entry["real"] = measure(*real, index, model, shown, prior_weight, sample=sample)


def run_variant(name: str, args: argparse.Namespace, first_stage: dict[str, Any], real: tuple | None) -> dict:
    recipe, overrides = VARIANTS[name]
    out = args.work / name
    t0 = time.perf_counter()
    trained = out / "variant_training.json"  # a variant trained before a crash is measured, not trained again
    if trained.is_file() and read_json(trained).get("max_steps") == args.max_steps:
        entry: dict[str, Any] = read_json(trained)
    else:
        rows = list(iter_jsonl(args.run / "train_groups.jsonl"))
        res = finetune(args.run / "dataset", out, recipe=recipe, index_dir=args.run / "index", groups=rows,
                       first_stage=first_stage, max_steps=args.max_steps, keep_checkpoints=False,
                       command="pipelines/residual_training.py", **overrides)
        entry = {
            "recipe": recipe, "overrides": overrides, "max_steps": args.max_steps, "steps": res.steps,
            "train_wall_s": round(time.perf_counter() - t0, 1), "prior_weight": res.data_summary.get("prior_weight"),
            "warm_start": res.data_summary.get("warm_start"),
            "validation": {"checkpoint_metric": res.eval_after, "eval_before": res.eval_before,
                           "first_stage": res.first_stage,
                           "fusion": fusion_record(res.fusion)},
        }
        write_json(trained, entry)
    measure_splits(entry, args.run, first_stage, out, entry["prior_weight"], real, args.sample)
    entry["wall_s"] = round(time.perf_counter() - t0, 1)
    return entry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo_base",
                    help="An adapt run folder finished through its mine stage.")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="Variants (repeatable).")
    ap.add_argument("--max-steps", type=int, default=45, help="Listwise steps per variant.")
    ap.add_argument("--real", action="store_true", help="Also score SQuAD's human questions (sample_docs runs).")
    ap.add_argument("--sample", type=int, default=500, help="Real questions scored (a seeded sample).")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "residual_training")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "residual_training.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    first_stage = tuned_first_stage(args.run, through="mine")  # its train_groups.jsonl too
    real = real_split(args.run) if args.real else None
    result = read_json(args.out) if args.out.is_file() else {}
    if result and (result.get("machine") != machine_info() or result.get("run") != str(args.run)
                   or result.get("max_steps") != args.max_steps):
        logger.warning("%s holds variants of another machine, run or length: starting a new file", args.out)
        result = {}
    result.update({"run": str(args.run), "max_steps": args.max_steps, "first_stage_settings": first_stage,
                   "machine": machine_info()})
    result.setdefault("variants", {})
    for name in args.variant or list(VARIANTS):
        if name in result["variants"]:
            logger.warning("%s: done earlier, kept", name)
            continue
        result["variants"][name] = run_variant(name, args, first_stage, real)
        result["command"] = "python " + " ".join(shlex.quote(a) for a in ["pipelines/residual_training.py",
                                                                            *sys.argv[1:]])
        write_json(args.out, result)
        v = result["variants"][name]
        logger.warning("%s: validation %s; test %s; real %s", name, v["validation"]["fusion"], v["test"],
                       v.get("real"))
    return 0


if __name__ == "__main__":
    run_script(main)
