"""Inverse-cloze pseudo-queries on a small run: does corpus-only training data lift a new reranker head?

    python pipelines/ict_probe.py --run runs/demo_s38 --seed 42 --seed 7 --real

A small run (``make demo``) has about 200 training groups: its 188 listwise steps are about 7.5 passes over
them, and the reranker alone ends below the tuned first stage on validation (0.72-0.76 against 0.84), so fusion
has nothing to add and the demo ships the first stage. The questions are the scarce part, not the corpus. The
inverse cloze task (ICT; Lee et al., 2019, ORQA) makes label-free pairs from the corpus alone: a sentence of a
chunk is the query, and the chunk with that sentence removed is its positive (so the match is by meaning and
context, not by copying). Here the ICT queries get hard negatives from the same tuned first stage and mining
settings as the synthetic questions, and their groups join the run's own training groups; the training length
(steps, evaluations, schedule) is the run's own plan either way, so each arm costs the same.

Arms: ``base`` (the run's ``train_groups.jsonl``) and ``ict`` (those plus ``--per-chunk`` ICT groups per chunk of
the corpus), each with every ``--seed`` (the training seed; the recipe's is 42). Each runs
``rag_rerank.train.finetune`` (the user path: the recipe's warm start, evaluations and fusion choice on synthetic
validation), and is then scored on the synthetic test split and, with ``--real`` (runs over ``sample_docs/``), on
SQuAD's human questions about the same articles, by ``residual_training.measure_splits``. Test and real numbers report
only.

Decision rule, fixed before any number of this probe existed (the commit that adds this file): ICT groups are
adopted into the default recipe iff, with every seed, the ``ict`` arm's reranker alone beats the ``base`` arm's by
at least +0.02 validation MRR@10 and its fused validation gain (the recipe's alpha rule) is at least the ``base``
arm's. Otherwise it is recorded as measured, not adopted. ``--per-chunk`` is 3 and is not tuned.

Resumable per arm and seed. Writes ``pipelines/results/ict_probe.json`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from residual_training import fusion_record, measure_splits, real_split

from rag_rerank.adaptation.runfolder import tuned_first_stage
from rag_rerank.cli import run_script
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import iter_jsonl, read_json, write_json, write_jsonl
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.retrieval.store import load_index
from rag_rerank.train.finetune import finetune, mining_depth
from rag_rerank.train.groups import build_groups
from rag_rerank.train.mining import mine_hard_negatives
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("ict_probe")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
MIN_WORDS, MAX_WORDS = 8, 40


def ict_queries(corpus: dict[str, dict[str, Any]], per_chunk: int, seed: int) -> tuple[dict, dict, dict]:
    """``(queries, qrels, positives)``: up to ``per_chunk`` sentences of 8-40 words per chunk (seeded per chunk) as
    queries, each judged relevant to its chunk, whose text without the sentence is the group's positive. A chunk
    with fewer than two such sentences gives none (nothing would be left to match)."""
    queries, qrels, positives = {}, {}, {}
    for cid in sorted(corpus):
        text, title = corpus[cid]["text"], corpus[cid].get("title") or ""
        body = text[len(title):] if title and text.startswith(title) else text
        sentences = [s.strip() for s in SENTENCE_END.split(body) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]
        if len(sentences) < 2:
            continue
        rng = random.Random(f"{seed}:{cid}")
        for i, sentence in enumerate(rng.sample(sentences, min(per_chunk, len(sentences)))):
            qid = f"ict:{cid}:{i}"
            queries[qid], qrels[qid] = sentence, {cid: 1}
            positives[qid] = re.sub(r"[ \t]{2,}", " ", text.replace(sentence, " ", 1)).strip()
    return queries, qrels, positives


def ict_groups(run: Path, first_stage: dict[str, Any], per_chunk: int, recipe_name: str) -> list[dict[str, Any]]:
    """Listwise groups of ICT queries, mined as ``adapt`` mines its questions (the tuned first stage, the recipe's
    rank window, guards and negative pool); the positive is the chunk without the query's sentence."""
    recipe = get_recipe(recipe_name)
    dataset = load_qa_dataset(run / "dataset")
    corpus = dataset.split("train")[0]
    queries, qrels, positives = ict_queries(corpus, per_chunk, recipe.mining.seed)
    index = load_index(run / "index").with_fusion(**first_stage)
    runs = index.search_all(queries, top_k=mining_depth(recipe.mining))
    meta = {cid: {**dataset.chunks.get(cid, {}), "text": corpus[cid]["text"]} for cid in corpus}
    mined = mine_hard_negatives(runs["hybrid"], qrels, meta, recipe.mining, margin_scores=runs["dense"])
    rows = build_groups(queries, qrels, mined.negatives, corpus, group_size=recipe.training.train_group_size,
                        seed=recipe.mining.seed)
    for row in rows:
        row["positive"] = positives[row["query_id"]]
    return rows


def run_arm(arm: str, seed: int, args: argparse.Namespace, first_stage: dict[str, Any], plan: dict[str, Any],
            real: tuple | None) -> dict[str, Any]:
    out = args.work / f"{arm}-seed{seed}"
    t0 = time.perf_counter()
    trained = out / "arm_training.json"  # an arm trained before a crash is measured, not trained again
    if trained.is_file():
        entry: dict[str, Any] = read_json(trained)
    else:
        rows = list(iter_jsonl(args.run / "train_groups.jsonl"))
        if arm == "ict":
            rows += list(iter_jsonl(args.work / "ict_groups.jsonl"))
        recipe = get_recipe(args.recipe)
        training = replace(recipe.training_config(len(rows), val_questions=plan["val_questions"],
                                                  steps=plan["steps"]), seed=seed, keep_checkpoints=False)
        res = finetune(args.run / "dataset", out, recipe=recipe, index_dir=args.run / "index", groups=rows,
                       training=training, first_stage=first_stage, command="pipelines/ict_probe.py")
        entry = {
            "arm": arm, "seed": seed, "groups": len(rows), "steps": res.steps, "eval_steps": training.eval_steps,
            "train_wall_s": round(time.perf_counter() - t0, 1), "s_per_step": res.step_seconds,
            "validation": {"reranker_alone": res.eval_after, "eval_before": res.eval_before,
                           "first_stage": res.first_stage,
                           "fusion": fusion_record(res.fusion)},
        }
        write_json(trained, entry)
    measure_splits(entry, args.run, first_stage, out, None, real, args.sample)
    entry["wall_s"] = round(time.perf_counter() - t0, 1)
    return entry


def decide(arms: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """The rule fixed in advance (module docstring), on validation numbers only."""
    per_seed = {}
    for s in seeds:
        base, ict = arms.get(f"base-seed{s}"), arms.get(f"ict-seed{s}")
        if base is None or ict is None:
            return {"adopt": None, "why": f"seed {s} is not finished"}
        alone = ict["validation"]["reranker_alone"]["val_mrr@10"] - base["validation"]["reranker_alone"]["val_mrr@10"]
        fused = (ict["validation"]["fusion"]["gain"] or 0.0) - (base["validation"]["fusion"]["gain"] or 0.0)
        per_seed[str(s)] = {"alone_delta": alone, "fused_gain_delta": fused, "pass": alone >= 0.02 and fused >= 0}
    return {"adopt": all(v["pass"] for v in per_seed.values()), "per_seed": per_seed,
            "rule": "every seed: ict alone >= base alone + 0.02 val MRR@10, and ict fused gain >= base fused gain"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo_check",
                    help="An adapt run folder finished through its train stage (its plan sets the length).")
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--seed", type=int, action="append", help="Training seeds (repeatable; default 42).")
    ap.add_argument("--per-chunk", type=int, default=3, help="ICT queries per chunk at most.")
    ap.add_argument("--real", action="store_true", help="Also score SQuAD's human questions (sample_docs runs).")
    ap.add_argument("--sample", type=int, default=500, help="Real questions scored (a seeded sample).")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "ict_probe")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "ict_probe.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    seeds = args.seed or [42]
    first_stage = tuned_first_stage(args.run, through="train")
    plan = read_json(args.run / "plan.json")
    plan["steps"] = read_json(args.run / "summary.json")["training"]["steps"]  # what the run trained
    args.work.mkdir(parents=True, exist_ok=True)
    ict_path = args.work / "ict_groups.jsonl"
    if not ict_path.is_file():
        write_jsonl(ict_path, ict_groups(args.run, first_stage, args.per_chunk, args.recipe))
    real = real_split(args.run) if args.real else None
    result = read_json(args.out) if args.out.is_file() else {}
    if result and (result.get("machine") != machine_info() or result.get("run") != str(args.run)):
        logger.warning("%s holds arms of another machine or run: starting a new file", args.out)
        result = {}
    result.update({"run": str(args.run), "recipe": args.recipe, "plan": {"steps": plan["steps"],
                   "val_questions": plan["val_questions"]}, "first_stage_settings": first_stage,
                   "ict_groups": sum(1 for _ in iter_jsonl(ict_path)), "per_chunk": args.per_chunk,
                   "machine": machine_info()})
    result.setdefault("arms", {})
    for seed in seeds:
        for arm in ("base", "ict"):
            key = f"{arm}-seed{seed}"
            if key in result["arms"]:
                logger.warning("%s: done earlier, kept", key)
                continue
            result["arms"][key] = run_arm(arm, seed, args, first_stage, plan, real)
            result["decision"] = decide(result["arms"], seeds)
            result["command"] = "python " + " ".join(shlex.quote(a) for a in ["pipelines/ict_probe.py", *sys.argv[1:]])
            write_json(args.out, result)
            v = result["arms"][key]
            logger.warning("%s: validation alone %.4f, fusion %s; test %s; real %s", key,
                           v["validation"]["reranker_alone"]["val_mrr@10"], v["validation"]["fusion"], v["test"],
                           v.get("real"))
    logger.warning("decision: %s", result["decision"])
    return 0


if __name__ == "__main__":
    run_script(main)
