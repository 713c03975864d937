"""The distilled student against its teacher: validation decision, then quality on the headline's real questions.

    python pipelines/quality_benchmark.py --corpus squad --work runs/squad_next     # the headline (teacher) first
    python pipelines/distill_benchmark.py --layers 3       # distil, decide on validation, measure on real questions
    python pipelines/bench_rerank.py --minilm-model runs/squad_next/default/reranker \\
        --student-model runs/squad_next/student-3 --backends st-predict torch auto student-torch student-auto

1. ``distill_reranker`` trains an N-layer student on the headline reranker's scores over its training groups
   (``train_groups.jsonl``), as ``rag-rerank distill`` and ``adapt --distill`` do;
2. the decision, on synthetic validation only: both models rerank the tuned first stage's top 20 of every
   validation question and are fused at the teacher's alpha; the student is kept when it loses at most 0.005 MRR@10;
3. the real questions (the headline's 1,000, same seed, same index): teacher and student, alone and fused at that
   alpha, with paired CIs; real questions choose nothing.

Speed is measured by ``pipelines/bench_rerank.py`` (third command above), in one process with the teacher's
``CrossEncoder.predict`` as the baseline. Writes ``pipelines/results/distill.json``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from rag_rerank.evaluate.compare import evaluate_systems
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import load_beir, read_json, write_json
from rag_rerank.rerank.fusion import TUNED, load_fusion
from rag_rerank.retrieval.store import load_index
from rag_rerank.train.distill import DistillConfig, compare_on_validation, distill_reranker
from rag_rerank.train.finetune import validation_run
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "beir"
logger = logging.getLogger("distill_benchmark")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "squad_next", help="quality_benchmark's folder")
    ap.add_argument("--student-dir", type=Path, action="append", default=[],
                    help="A student distilled elsewhere (e.g. on a GPU: bench_rerank_device.sh distill), judged the "
                         "same way (repeatable).")
    ap.add_argument("--layers", type=int, action="append", help="Student layers (repeatable; default 3).")
    ap.add_argument("--max-pairs", type=int, default=8000, help="Teacher-scored training pairs (a seeded sample).")
    ap.add_argument("--data", type=Path, default=SQUAD)
    ap.add_argument("--n-resamples", type=int, default=10000)
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "distill.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    run_dir = args.work / "default"
    teacher = run_dir / "reranker"
    headline_path = REPO / "pipelines" / "results" / "squad_headline.json"
    headline = read_json(headline_path)
    if "recipe" not in headline.get("settings", {}) or not (teacher / "config.json").is_file():
        raise SystemExit(f"{headline_path} or {teacher} is not from an adapt run (no settings.recipe or no model): "
                         "run `python pipelines/quality_benchmark.py --corpus squad` first")
    fusion = load_fusion(teacher)
    alpha = fusion.alpha if fusion.improved else fusion.best_alpha
    recipe = get_recipe(headline["settings"]["recipe"]["name"])
    val = validation_run(load_qa_dataset(run_dir / "dataset"),
                         load_index(run_dir / "index").with_fusion(**fusion.first_stage),
                         top_k=recipe.top_k, max_queries=recipe.max_eval_queries)
    students, rerankers = {}, {"teacher": str(teacher)}
    outs = []
    for layers in args.layers or [3]:
        out = args.work / f"student-{layers}"
        if not (out / "config.json").is_file():
            res = distill_reranker(teacher, out, config=DistillConfig(layers=layers, max_pairs=args.max_pairs))
            write_json(out / "distill.json", res.to_dict())
        outs.append(out)
    for out in outs + args.student_dir:
        check = compare_on_validation(teacher, out, *val, alpha=alpha, top_k=recipe.top_k)
        students[out.name] = {"distill": read_json(out / "distill.json"), "validation": check}
        rerankers[out.name] = str(out)
        logger.info("%s: validation fused MRR@10 %.4f vs teacher %.4f -> %s", out.name, check["student_mrr@10"],
                    check["teacher_mrr@10"], "kept" if check["kept"] else "not kept")
    corpus, queries, qrels = load_beir(args.data)
    settings = headline["settings"]
    real = evaluate_systems(corpus, queries, qrels, index=load_index(args.work / "index-real"),
                            index_dir=args.work / "index-real", rerankers=rerankers,
                            alpha=dict.fromkeys(rerankers, alpha), first_stage_tuned=fusion.first_stage,
                            top_k=recipe.top_k, metrics=("mrr@10", "ndcg@10", "hit@1"),
                            sample=settings["eval_queries"], seed=settings["seed"], n_resamples=args.n_resamples,
                            backend="torch")
    if abs(real.systems["hybrid"]["mrr@10"] - headline["systems"]["hybrid"]["mrr@10"]) > 1e-9:
        raise SystemExit("the hybrid's MRR@10 differs from the headline's: not the same questions or index")
    fused = f"@{alpha:g}"
    teacher_fused = real.systems[f"{TUNED}+teacher{fused}"]["mrr@10"]
    for name, row in students.items():
        row["real"] = {
            "alone": real.systems[f"{TUNED}+{name}"], "fused": real.systems[f"{TUNED}+{name}{fused}"],
            "fused_loss_vs_teacher": teacher_fused - real.systems[f"{TUNED}+{name}{fused}"]["mrr@10"],
        }
    write_json(args.out, {
        "teacher": str(teacher.relative_to(REPO)) if teacher.is_relative_to(REPO) else str(teacher), "alpha": alpha,
        "queries": real.queries, "teacher_real": {"alone": real.systems[f"{TUNED}+teacher"],
                                                  "fused": real.systems[f"{TUNED}+teacher{fused}"]},
        "first_stage_tuned": real.systems[TUNED], "students": students,
        "rule": "a student is kept when its fused validation MRR@10 is within 0.005 of the teacher's",
        "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/distill_benchmark.py", *sys.argv[1:]]),
        "wall_s": round(time.perf_counter() - t0, 1),
    })
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
