"""Time to quality: validation MRR@10 against training step and wall time, for several recipes on the same data.

    python pipelines/quality_benchmark.py --stop-after mine          # the synthetic SQuAD data, index, groups
    python pipelines/time_to_quality.py --run runs/squad_default/default --variant v1 --variant default

Every variant trains from the same base model on the same mined groups (``RUN/train_groups.jsonl``, from the
tuned first stage; a variant with mining overrides mines the same training questions again, with the same learning
rate schedule) and is evaluated every ``--eval-every`` steps on the same fixed subset of the synthetic
validation questions, reranking the tuned first stage's top 20, as ``adapt`` does. Recorded per variant: the curve
(step, training seconds, wall seconds including the warm start and evaluations, validation MRR@10), training
pairs/s (excluding evaluations), the training precision, and the first evaluation whose MRR@10 beats the RRF hybrid
and the tuned first stage. A variant is a named recipe, optionally with training overrides (``VARIANTS`` below).
Resumable per variant (on the same machine, run and schedule; otherwise the file is started anew).
Writes ``pipelines/results/time_to_quality.json`` and a PNG of the curves beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rag_rerank.adaptation.runfolder import tuned_first_stage
from rag_rerank.cli import run_script
from rag_rerank.evaluate.metrics import evaluate
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import iter_jsonl, read_json, write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.retrieval.store import load_index
from rag_rerank.train.finetune import samples_from_run, validation_run
from rag_rerank.train.groups import add_teacher_scores
from rag_rerank.train.recipes import get_recipe
from rag_rerank.train.reranker_trainer import train_reranker

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("time_to_quality")
# name -> (recipe, training overrides[, mining overrides]); "v1" is the 0.1 headline recipe, trained here for its
# first --max-steps steps. A variant with mining overrides re-mines the run's training questions with them. The
# "default*" names predate the promotion of the positives pool: they are the 0.2 default, now recipe "v2", so the
# committed results' commands still run what they measured ("default-pospool" is today's default recipe).
VARIANTS: dict[str, tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]] = {
    "v1": ("v1", {}),
    "default": ("v2", {}),
    "default-nowarm": ("v2", {"warm_start_steps": 0}),
    "default-fp32": ("v2", {"mixed_precision": "no"}),  # without bf16 autocast
    "default-noattndrop": ("v2", {"attention_dropout": 0.0}),  # fused attention kernels while training
    "default-consistent30": ("v2", {}, {"max_positive_rank": 30}),  # the consistency filter at top 30
    "default-consistent10": ("v2", {}, {"max_positive_rank": 10}),
    # negatives only among chunks that are some training question's positive: no chunk seen only as a negative
    "default-pospool": ("v2", {}, {"negative_pool": "positives"}),
    "warm60-96": ("v2", {"warm_start_steps": 60, "warm_start_max_length": 96}),
    "warm60-96-lr1e-4": ("v2", {"warm_start_steps": 60, "warm_start_max_length": 96,
                                "warm_start_learning_rate": 1e-4}),
    # the 0.3 default ("v3", which trains as today's default here: --eval-every sets the evaluations) on the run's
    # own groups (mined by that recipe), and with a higher encoder rate
    "pospool": ("v3", {}),
    "pospool-lr1e-4": ("v3", {"learning_rate": 1e-4}),
    "pospool-lr2e-4": ("v3", {"learning_rate": 2e-4}),
    "pospool-warm150-lr1e-4": ("v3", {"warm_start_steps": 150, "learning_rate": 1e-4}),  # a longer warm start
    "pospool-warmlr1e-4": ("v3", {"warm_start_learning_rate": 1e-4}),  # the higher rate in the warm start only
    # the consistency filter (InPars, Promptagator) on the positives pool: a training question is kept only when
    # its own chunk is in the tuned first stage's top 10 (top 5); at top 30 it keeps 99.7% of SQuAD's questions
    # (consistency_filter.json), so only these depths can change anything
    "pospool-consistent10": ("v3", {}, {"max_positive_rank": 10}),
    "pospool-consistent5": ("v3", {}, {"max_positive_rank": 5}),
    # negatives: a group holds group_size - 1 = 4 negatives, and the recipe mines 4 hard ones (ranks 2-30, the best
    # ranked survivors) then 1 random one, so build_groups keeps the 4 hard ones and the random one only pads a short
    # list (18 of SQuAD's 2,578 groups). These give the random negative its slot (3 hard + 1 random), or sample the
    # hard ones among the window's survivors (FlagEmbedding samples its negatives from a rank range)
    "pospool-3hard1random": ("v3", {}, {"num_negatives": 3}),
    "pospool-sampled": ("v3", {}, {"sampling_strategy": "random"}),
    # today's default with another training seed (data order, dropout, warm-start sampling; the head's init is
    # fixed): a replicate whose real-question grid nobody has seen, to test a fusion-weight rule fixed in advance
    "pospool-seed1": ("v3", {"seed": 1}),
    # today's default without dropout on the attention probabilities: PyTorch's fused attention kernel can then run
    # in training (the speed knob of issue 17's "less wasted compute"); measured for quality at SQuAD scale
    "pospool-noattndrop": ("v3", {"attention_dropout": 0.0}),
}


def remine(run: Path, recipe: Any, first_stage: dict[str, Any], mining: dict[str, Any]) -> tuple[list[dict], dict]:
    """The run's training groups mined again with ``mining`` overrides (and the mining report)."""
    from rag_rerank.train.finetune import mine_split

    mined = mine_split(load_qa_dataset(run / "dataset"), load_index(run / "index").with_fusion(**first_stage),
                       "train", mining=dataclasses.replace(recipe.mining, **mining),
                       group_size=recipe.training.train_group_size)
    return mined.groups, mined.mining.report


class Clock(TrainerCallback):
    """Training seconds (steps only) and wall seconds at each evaluation."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at, self.train_s, self.started, self.step_start = stop_at, 0.0, time.perf_counter(), 0.0
        self.marks: dict[int, tuple[float, float]] = {}

    def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN003
        self.step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
        self.train_s += time.perf_counter() - self.step_start
        if state.global_step >= self.stop_at:
            control.should_evaluate, control.should_training_stop = True, True

    def on_evaluate(self, args, state, control, **kw):  # noqa: ANN001, ANN003
        self.marks[state.global_step] = (round(self.train_s, 1), round(time.perf_counter() - self.started, 1))


def run_variant(name: str, rows: list[dict], samples: list[dict], n_groups: int, args: argparse.Namespace,
                fs: dict[str, float], first_stage: dict[str, Any], teacher: Any) -> dict[str, Any]:
    recipe_name, overrides, *more = VARIANTS[name]
    mining = more[0] if more else {}
    recipe = get_recipe(recipe_name)
    mining_report = None
    if mining:
        rows, mining_report = remine(args.run, recipe, first_stage, mining)
        add_teacher_scores(rows, teacher)
        logger.info("%s: %d training groups after re-mining with %s", name, len(rows), mining)
    cfg = dataclasses.replace(recipe.training_config(n_groups), eval_steps=args.eval_every, keep_checkpoints=False,
                              sanity_gate="off", load_best_model_at_end=False, **overrides)
    clock = Clock(args.max_steps)
    t0 = clock.started = time.perf_counter()  # wall time counts from here: warm start and evaluations included
    res = train_reranker(recipe.base_model, rows, out_dir=args.work / name, config=cfg, eval_samples=samples,
                         callbacks=[clock], command="pipelines/time_to_quality.py")
    warm = (res.data_summary.get("warm_start") or {}).get("seconds", 0.0)
    curve = [{"step": 0, "train_s": warm, "wall_s": warm, "mrr@10": res.eval_before.get("val_mrr@10")}]
    csv = args.work / name / "eval" / "reranking_evaluation_val_results@10.csv"
    import csv as csvlib

    with csv.open(encoding="utf-8") as f:
        for r in csvlib.DictReader(f):
            step = int(float(r["steps"]))
            if step in clock.marks:
                train_s, wall_s = clock.marks[step]
                curve.append({"step": step, "train_s": round(train_s + warm, 1), "wall_s": wall_s,
                              "mrr@10": float(r["MRR@10"])})
    pairs = cfg.batch_size * cfg.train_group_size
    steps = curve[-1]["step"]
    first = {k: next((c for c in curve[1:] if c["mrr@10"] > v), None) for k, v in fs.items()}
    return {"recipe": recipe_name, "overrides": overrides, "mining_overrides": mining or None,
            "train_groups": len(rows), "mining_report": mining_report, "training": dataclasses.asdict(cfg),
            "precision": res.data_summary.get("precision"), "curve": curve,
            "steps": steps, "train_pairs_per_s": round(pairs * steps / max(clock.train_s, 1e-9), 2),
            "s_per_step": round(clock.train_s / max(steps, 1), 2), "warm_start": res.data_summary.get("warm_start"),
            "first_beats": first, "wall_s": round(time.perf_counter() - t0, 1)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, v in result["variants"].items():
        c = v["curve"]
        axes[0].plot([p["step"] for p in c], [p["mrr@10"] for p in c], marker="o", label=name)
        axes[1].plot([p["wall_s"] / 60 for p in c], [p["mrr@10"] for p in c], marker="o", label=name)
    for ax, xlabel in zip(axes, ("training step", "wall minutes (warm start and evaluations included)"), strict=True):
        for k, v in result["first_stage"].items():
            ax.axhline(v, ls="--", lw=1, color="gray" if k == "hybrid" else "tab:red", label=f"{k} (no training)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("synthetic validation MRR@10")
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['val_queries']} synthetic validation questions; {result['machine']['cpu']}, "
                 f"{result['machine']['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "squad_default" / "default",
                    help="An adapt run folder finished through its mine stage.")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="Variants to train (repeatable).")
    ap.add_argument("--val-queries", type=int, default=200, help="Fixed subset of the validation questions.")
    ap.add_argument("--eval-every", type=int, default=40, help="Steps between evaluations.")
    ap.add_argument("--max-steps", type=int, default=320, help="Steps per variant.")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "time_to_quality")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "time_to_quality.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    first_stage = tuned_first_stage(args.run, through="mine")  # its train_groups.jsonl too
    dataset = load_qa_dataset(args.run / "dataset")
    index = load_index(args.run / "index")
    val = validation_run(dataset, index.with_fusion(**first_stage), top_k=20, max_queries=args.val_queries)
    samples = samples_from_run(*val, top_k=20)
    queries, qrels = val[0], val[1]
    runs = index.search_all(queries, top_k=100, fusions={"first_stage_tuned": first_stage})
    fs = {k: evaluate(runs[k], qrels, ["mrr@10"])["mrr@10"] for k in ("hybrid", "first_stage_tuned")}
    rows = list(iter_jsonl(args.run / "train_groups.jsonl"))
    add_teacher_scores(rows, index.dense)
    result = read_json(args.out) if args.out.is_file() else {}
    if result and (result.get("machine") != machine_info() or result.get("run") != str(args.run)
                   or result.get("max_steps") != args.max_steps or result.get("eval_every") != args.eval_every):
        logger.warning("%s holds variants of another machine, run or schedule: starting a new file", args.out)
        result = {}
    result.update({"run": str(args.run), "val_queries": len(samples), "first_stage": fs,
                   "first_stage_settings": first_stage, "train_groups": len(rows), "max_steps": args.max_steps,
                   "eval_every": args.eval_every, "machine": machine_info()})
    result.setdefault("variants", {})
    for name in args.variant or list(VARIANTS):
        if name in result["variants"]:
            logger.info("%s: done earlier, kept", name)
            continue
        result["variants"][name] = run_variant(name, rows, samples, len(rows), args, fs, first_stage, index.dense)
        result["command"] = "python " + " ".join(shlex.quote(a) for a in ["pipelines/time_to_quality.py",
                                                                            *sys.argv[1:]])
        write_json(args.out, result)
        plot(result, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    run_script(main)
