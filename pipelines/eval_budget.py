"""The evaluation budget at the same budget: a small run's minutes spent on training steps, not checkpoint scoring.

    python pipelines/eval_budget.py --run runs/demo_base --s-per-chunk 1.40 --s-per-step 3.9 --budget-minutes 13

For one ``adapt`` run folder (its dataset, index, tuned first stage and mined groups: ``make demo``'s), each recipe
is planned for the same budget and throughput as ``adapt --budget-minutes`` would plan it. The throughput is
given, so the step counts are those of the machine that measured it (default: the AMD AVX-512 machine's, in
``demo.json``), whatever machine trains them. ``v3`` evaluates 4 checkpoints whatever they cost; ``default`` evaluates
only as many as cost a quarter of its training, and spends the rest on steps. Each is then trained from the same
base on the same groups as ``adapt``'s train stage does it: warm start, listwise steps, checkpoint choice, and the
fusion weight chosen on validation with its CI (the gate that decides what ships).

Recorded per recipe: planned steps, checkpoint evaluations, the plan's training estimate, this machine's training
seconds (the warm start, the steps and the evaluations) and the whole stage's, the reranker's validation MRR@10
alone, and the shipped system's validation gain over the tuned first stage with its CI. Writes
``pipelines/results/eval_budget.json``.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

from rag_rerank.adaptation.plan import make_plan
from rag_rerank.adaptation.runfolder import tuned_first_stage
from rag_rerank.cli import run_script
from rag_rerank.io import read_json, write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.train.finetune import finetune
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("eval_budget")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="An adapt run folder that has reached its mine stage.")
    ap.add_argument("--recipes", default="v3,default", help="Comma-separated recipes.")
    ap.add_argument("--s-per-chunk", type=float, default=1.40, help="Throughput the plan uses (demo.json's).")
    ap.add_argument("--s-per-step", type=float, default=3.9, help="Throughput the plan uses (demo.json's).")
    ap.add_argument("--budget-minutes", type=float, default=13.0, help="The demo's budget.")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "eval_budget")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "eval_budget.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    run = args.run
    plan0 = read_json(run / "plan.json")
    manifest = read_json(run / "dataset" / "manifest.json")
    n_val = manifest["counts"]["per_split"]["validation"]
    n_groups = sum(1 for line in (run / "train_groups.jsonl").open(encoding="utf-8") if line.strip())
    first_stage = tuned_first_stage(run)
    result = {"run": str(run), "data": {"per_split": manifest["counts"]["per_split"], "train_groups": n_groups},
              "plan_throughput": {"s_per_chunk": args.s_per_chunk, "s_per_step": args.s_per_step,
                                  "budget_minutes": args.budget_minutes},
              "first_stage": first_stage, "machine": machine_info(), "recipes": {}}
    for name in args.recipes.split(","):
        recipe = get_recipe(name)
        plan = make_plan(plan0["chunks_total"], recipe, s_per_chunk=args.s_per_chunk, s_per_step=args.s_per_step,
                         budget_minutes=args.budget_minutes, chunks_done=8)
        training = recipe.training_config(n_groups, plan.steps, val_questions=n_val)
        out = args.work / name
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = finetune(run / "dataset", out, recipe=recipe, index_dir=run / "index", training=training,
                       groups=run / "train_groups.jsonl", first_stage=first_stage, command="pipelines/eval_budget.py")
        stage_s = round(time.perf_counter() - t0, 1)
        fusion = res.fusion
        result["recipes"][name] = {
            "steps": training.max_steps, "warm_start_steps": training.warm_start_steps,
            "evaluations": math.ceil(training.max_steps / training.eval_steps),
            "planned_training_s": round(plan.est_training_s, 1), "planned_total_s": round(plan.est_total_s, 1),
            "training_wall_s": round(res.wall_time_s, 1), "stage_wall_s": stage_s,
            "s_per_step": res.step_seconds, "precision": res.data_summary.get("precision"),
            "val_reranker_mrr@10": res.eval_after.get("val_mrr@10"),
            "val_first_stage_mrr@10": res.first_stage.get("val_base_mrr@10"),
            "fusion": {"alpha": fusion.alpha, "best_alpha": fusion.best_alpha, "status": fusion.status,
                       "gain_over_first_stage": fusion.gain, "gain_ci95": fusion.gain_ci95,
                       "queries": fusion.queries},
        }
        result["command"] = "python " + " ".join(shlex.quote(a) for a in ["pipelines/eval_budget.py", *sys.argv[1:]])
        write_json(args.out, result)
        logger.warning("%s: %s", name, result["recipes"][name])
    return 0


if __name__ == "__main__":
    run_script(main)
