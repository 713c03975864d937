"""Ablation of the headline's reranker recipe: every saved checkpoint, on synthetic validation and real questions.

    python pipelines/squad_ablation.py --model default=runs/squad_default/default/reranker --real-queries 300

Reuses the headline's work folder (``runs/squad_default``: ``default/dataset``, ``default/index`` and the SQuAD index
``index-real``, as ``pipelines/quality_benchmark.py`` leaves them). The first stage is the one the first model was
adapted with (its ``fusion.json``: the tuned first stage), else the index's hybrid. For each model folder it
evaluates each checkpoint in ``MODEL/checkpoints`` (``finetune`` with
``keep_checkpoints=True`` keeps one per evaluation), or the folder itself when it has none:

- **synthetic validation** (the only thing any choice is made on): MRR@10 of the reranker alone over the
  hybrid top-k, and the fusion alpha chosen there (:func:`rag_rerank.rerank.fusion.choose_alpha`), with why: the
  rule's pick, its gain over the first stage with the CI the significance check reads, every alpha's score;
- **real SQuAD questions** (a seeded sample; never used for a choice): hybrid, reranker alone, and the fusion
  at the validation-chosen alpha, with paired bootstrap CIs against the hybrid; the whole alpha grid is also
  reported, marked as an oracle view.

The alpha is chosen by ``--alpha-rule`` (:data:`rag_rerank.rerank.fusion.RULES`). Each row also checks every rule
(``alpha_rules``):

- on validation only, out of sample: over ``--splits`` seeded random halves of the validation questions, the rule
  picks on one half and the other half scores its pick; ``split_half_val_mrr@10`` is the mean over the splits;
- its pick on all the validation questions, that alpha's real MRR@10, and each rule's shipped system against
  the first rule's on the real questions (paired).

``rule_choice`` pools the split-half means over the rows: the rule a choice made on validation alone would take.
The real questions report each rule's pick; they choose nothing. Each later row's shipped system is also paired
with the first row's (``vs_first_row``), on validation (where a choice between recipes is made) and on the real
questions (which report).

Scores are cached per checkpoint under ``WORK/ablation/scores`` and the result is rewritten after each
checkpoint, so an interrupted run resumes; a row already in ``--out`` with the same settings is reused with its
time (``wall_s`` sums the rows' times; ``this_invocation_wall_s`` is this run's). Writes
``pipelines/results/squad_ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rag_rerank.cli import run_script
from rag_rerank.evaluate.compare import sample_query_ids
from rag_rerank.evaluate.metrics import evaluate
from rag_rerank.evaluate.result import compare
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import load_beir, read_json, write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.rerank.fusion import DEFAULT_GRID, RULES, choose_alpha, load_fusion
from rag_rerank.rerank.reranker import Reranker
from rag_rerank.rerank.runs import apply_scores, score_candidates
from rag_rerank.retrieval import load_index
from rag_rerank.train.finetune import validation_run
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "beir"
METRICS = ("mrr@10", "ndcg@10")
logger = logging.getLogger("squad_ablation")


def card_settings(model_dir: Path) -> dict[str, Any]:
    """The training settings recorded in a rag-rerank model card (the JSON block under ``## Settings``)."""
    card = model_dir / "README.md"
    if not card.is_file():
        return {}
    m = re.search(r"## Settings\s+```json\s+(\{.*?\})\s+```", card.read_text(encoding="utf-8"), re.S)
    return json.loads(m.group(1)) if m else {}


def checkpoints(model_dir: Path, final_only: bool = False) -> list[tuple[int | None, Path]]:
    """``(step, folder)`` of each complete checkpoint, by step; the folder itself when it has none (or when
    ``final_only``: the model the folder holds, the trainer's choice)."""
    if final_only:
        return [(None, model_dir)]
    found = []
    for ck in (model_dir / "checkpoints").glob("checkpoint-*"):
        if (ck / "trainer_state.json").is_file() and (ck / "config.json").is_file():
            found.append((int(ck.name.split("-")[1]), ck))
    return sorted(found) or [(None, model_dir)]


def step_facts(model_dir: Path, step: int | None) -> dict[str, Any]:
    """Learning rate at ``step`` and whether it is the checkpoint the trainer kept as best (the shipped one)."""
    states = sorted((model_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[1]))
    if step is None or not states:
        return {}
    state = read_json(states[-1])
    lrs = [h["learning_rate"] for h in state.get("log_history", []) if "learning_rate" in h and h["step"] <= step]
    best = state.get("best_model_checkpoint") or ""
    return {"learning_rate_at_step": lrs[-1] if lrs else None, "shipped": best.endswith(f"checkpoint-{step}")}


def cached_scores(path: Path, key: dict[str, Any], make: Any) -> dict[str, dict[str, float]]:
    """Reranker scores from ``path`` when its key matches, else computed by ``make()`` and saved."""
    if path.is_file():
        saved = read_json(path)
        if saved.get("key") == key:
            return saved["scores"]
    scores = make()
    write_json(path, {"key": key, "scores": scores})
    return scores


def _delta_json(d: Any) -> dict[str, Any]:
    return {"delta": d.delta, "ci95": list(d.ci95), "p": d.p}


def gate_facts(choice: Any) -> dict[str, Any]:
    """Why validation shipped ``choice.alpha``: the rule's pick, its gain over the first stage alone with the CI the
    significance check reads, and every alpha's validation score."""
    return {"candidate_alpha": choice.candidate, "gain": choice.gain,
            "gain_ci95": list(choice.gain_ci95) if choice.gain_ci95 else None, "by_alpha": choice.by_alpha}


def paired_with_first_row(rows: list[dict[str, Any]], fused: dict[str, Any], qrels: Any, part: str,
                          args: argparse.Namespace) -> None:
    """Each later row's shipped (fused) system against the first row's, on the same questions (paired bootstrap):
    ``row[part]["vs_first_row"]``, for ``part`` "synthetic_val" (where a choice between rows is made) or "real"
    (which only reports). ``fused``: ``{row id: its shipped run on those questions}``."""
    ref = rows[0]["id"]
    for row in rows[1:]:
        cmp = compare({ref: fused[ref], row["id"]: fused[row["id"]]}, qrels, baseline=ref, metrics=METRICS,
                      n_resamples=args.n_resamples, seed=args.seed)
        row[part]["vs_first_row"] = {"against": ref, **{m: _delta_json(cmp.get_delta(row["id"], ref, m))
                                                        for m in METRICS}}


def rule_check(val_run: Any, vh: Any, val_qrels: Any, real_run: Any, rh: Any, real_qrels: Any,
               args: argparse.Namespace) -> dict[str, Any]:
    """Every alpha rule on one row: out of sample on validation halves, then its pick and the pick's real score
    (see the module docstring)."""
    qids = sorted(q for q in val_qrels if q in val_run and q in vh)
    rng = np.random.default_rng(args.seed)
    held: dict[str, list[float]] = {r: [] for r in RULES}
    picks: dict[str, list[float]] = {r: [] for r in RULES}
    for _ in range(args.splits):
        order = rng.permutation(len(qids))
        halves = [{qids[i]: val_qrels[qids[i]] for i in order[: len(qids) // 2]},
                  {qids[i]: val_qrels[qids[i]] for i in order[len(qids) // 2:]}]
        for r in RULES:
            pick = choose_alpha(val_run, vh, halves[0], top_k=args.top_k, rule=r, min_queries=1,
                                n_resamples=200).candidate
            picks[r].append(pick)
            held[r].append(evaluate(apply_scores({q: val_run[q] for q in halves[1]}, vh, args.top_k, pick),
                                    halves[1], ["mrr@10"])["mrr@10"])
    alphas = {r: choose_alpha(val_run, vh, val_qrels, top_k=args.top_k, rule=r).alpha for r in RULES}
    runs = {r: apply_scores(real_run, rh, args.top_k, alphas[r]) for r in RULES}
    cmp = compare(runs, real_qrels, baseline=RULES[0], metrics=METRICS, n_resamples=args.n_resamples, seed=args.seed)
    out: dict[str, Any] = {}
    for r in RULES:
        out[r] = {"alpha": alphas[r], "split_half_val_mrr@10": float(np.mean(held[r])),
                  "split_half_picks": {f"{a:g}": picks[r].count(a) for a in sorted(set(picks[r]))},
                  "real_mrr@10": cmp.systems[r]["mrr@10"]}
        if r != RULES[0]:
            out[r]["real_vs_" + RULES[0]] = {m: _delta_json(cmp.get_delta(r, RULES[0], m)) for m in METRICS}
    return out


def rule_choice(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule with the best split-half validation MRR@10, pooled (averaged) over the rows (ties: the first)."""
    pooled = {r: float(np.mean([row["alpha_rules"][r]["split_half_val_mrr@10"] for row in rows])) for r in RULES}
    return {"split_half_val_mrr@10": pooled, "chosen": max(RULES, key=lambda r: (pooled[r], -RULES.index(r))),
            "rows": len(rows), "note": "chosen on synthetic validation only"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                    help="A fine-tuned reranker folder (repeatable); each checkpoint in DIR/checkpoints is a row.")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "squad_default",
                    help="The headline's work folder (default/dataset, default/index, index-real).")
    ap.add_argument("--data", type=Path, default=SQUAD, help="SQuAD dev in BEIR format.")
    ap.add_argument("--real-queries", type=int, default=300)
    ap.add_argument("--val-queries", type=int, default=100)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-resamples", type=int, default=10000)
    ap.add_argument("--backend", default="torch",
                    help="Reranker backend for every row (e.g. openvino-bf16: 3x faster, MRR@10 within 0.001 of "
                         "torch on the headline, pipelines/results/backend_parity.json).")
    ap.add_argument("--alpha-rule", choices=RULES, default=get_recipe("default").alpha_rule,
                    help="The rule that picks each row's shipped alpha (default: the default recipe's).")
    ap.add_argument("--splits", type=int, default=200, help="Random validation halves per row for alpha_rules.")
    ap.add_argument("--final-only", action="store_true",
                    help="One row per model: the model its folder holds (the checkpoint its trainer kept).")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "squad_ablation.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    models = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path, "config.json").is_file():
            raise SystemExit(f"--model {spec!r}: expected NAME=DIR with a trained model in DIR")
        models.append((name, Path(path)))
    t0 = time.perf_counter()

    dataset = load_qa_dataset(args.work / "default" / "dataset")
    saved = load_fusion(models[0][1])
    first_stage = dict(saved.first_stage) if saved is not None and saved.first_stage else {}
    val_q, val_qrels, val_corpus, val_run = validation_run(
        dataset, load_index(args.work / "default" / "index").with_fusion(**first_stage), top_k=args.top_k,
        max_queries=args.val_queries)
    corpus, queries, qrels = load_beir(args.data)
    squad_index = load_index(args.work / "index-real").with_fusion(**first_stage)
    indexed = set(squad_index.bm25.doc_ids)  # a --quick work folder indexes a slice: its questions only
    covered = {q: d for q, d in qrels.items() if all(doc in indexed for doc, r in d.items() if r > 0)}
    if len(covered) < len(qrels):
        logger.info("%d of %d questions have their passages in the index; sampling from those",
                    len(covered), len(qrels))
    qids = sample_query_ids(covered, queries, args.real_queries, args.seed)
    real_q = {q: queries[q] for q in qids}
    real_qrels = {q: qrels[q] for q in qids}
    real_run = squad_index.search(real_q, top_k=100, mode="hybrid")
    cache = args.work / "ablation" / "scores"

    previous = read_json(args.out) if args.out.is_file() else {}
    rows: list[dict[str, Any]] = []
    shipped: dict[str, Any] = {}  # row id -> its fused run on the real questions
    shipped_val: dict[str, Any] = {}  # row id -> its fused run on the validation questions
    for name, model_dir in models:
        settings = card_settings(model_dir)
        for step, folder in checkpoints(model_dir, args.final_only):
            row_id = f"{name}@{step}" if step is not None else name
            key = {"model": str(folder.resolve()), "top_k": args.top_k, "val": args.val_queries,
                   "real": args.real_queries, "seed": args.seed, "n_resamples": args.n_resamples,
                   "backend": args.backend}
            row_key = {**key, "alpha_rule": args.alpha_rule, "splits": args.splits}
            old = next((r for r in previous.get("rows", []) if r.get("id") == row_id and r.get("key") == row_key),
                       None)
            if old is not None:
                rows.append(old)
                rh, vh = (read_json(cache / f"{row_id}.{part}.json")["scores"] for part in ("real", "val"))
                shipped[row_id] = apply_scores(real_run, rh, args.top_k, old["synthetic_val"]["chosen_alpha"])
                shipped_val[row_id] = apply_scores(val_run, vh, args.top_k, old["synthetic_val"]["chosen_alpha"])
                if "gain_ci95" not in old["synthetic_val"]:  # a row written before these were recorded
                    old["synthetic_val"].update(gate_facts(choose_alpha(val_run, vh, val_qrels, top_k=args.top_k,
                                                                        rule=args.alpha_rule)))
                continue
            s = time.perf_counter()
            reranker = Reranker(str(folder), backend=args.backend)
            vh = cached_scores(cache / f"{row_id}.val.json", key,
                               lambda r=reranker: score_candidates(val_run, val_q, val_corpus, r, args.top_k))
            choice = choose_alpha(val_run, vh, val_qrels, top_k=args.top_k, rule=args.alpha_rule)
            rh = cached_scores(cache / f"{row_id}.real.json", key,
                               lambda r=reranker: score_candidates(real_run, real_q, corpus, r, args.top_k))
            fused = f"fused@{choice.alpha:g}"
            shipped[row_id] = apply_scores(real_run, rh, args.top_k, choice.alpha)
            shipped_val[row_id] = apply_scores(val_run, vh, args.top_k, choice.alpha)
            runs = {"hybrid": real_run, "reranker": apply_scores(real_run, rh, args.top_k), fused: shipped[row_id]}
            cmp = compare(runs, real_qrels, metrics=METRICS, n_resamples=args.n_resamples, seed=args.seed)
            grid = {f"{a:g}": evaluate(apply_scores(real_run, rh, args.top_k, a), real_qrels, ["mrr@10"])["mrr@10"]
                    for a in DEFAULT_GRID}
            rows.append({
                "id": row_id, "model": name, "step": step, **step_facts(model_dir, step),
                "settings": {k: settings.get(k) for k in ("loss", "train_group_size", "batch_size", "max_length",
                                                          "learning_rate", "head_learning_rate", "warmup_ratio",
                                                          "lr_scheduler", "max_steps") if k in settings},
                "synthetic_val": {"queries": choice.queries, "first_stage_mrr@10": choice.by_alpha["0"],
                                  "reranker_mrr@10": choice.by_alpha["1"], "chosen_alpha": choice.alpha,
                                  "best_alpha": choice.best_alpha, "rule": choice.rule, "status": choice.status,
                                  "fused_mrr@10": choice.value, **gate_facts(choice)},
                "real": {"queries": cmp.queries, "systems": cmp.systems,
                         "delta": {k: {m: _delta_json(d) for m, d in v.items()} for k, v in cmp.delta.items()},
                         "oracle_mrr@10_by_alpha": grid},
                "alpha_rules": rule_check(val_run, vh, val_qrels, real_run, rh, real_qrels, args),
                "key": row_key, "wall_s": round(time.perf_counter() - s, 1),
            })
            logger.info("%s: val reranker %.4f (alpha %.1f -> %.4f); real hybrid %.4f, reranker %.4f, %s %.4f",
                        row_id, choice.by_alpha["1"], choice.alpha, choice.value,
                        cmp.systems["hybrid"]["mrr@10"], cmp.systems["reranker"]["mrr@10"], fused,
                        cmp.systems[fused]["mrr@10"])
            write_json(args.out, {"rows": rows, "partial": True})
    paired_with_first_row(rows, shipped_val, val_qrels, "synthetic_val", args)
    paired_with_first_row(rows, shipped, real_qrels, "real", args)
    write_json(args.out, {
        "rows": rows, "rule_choice": rule_choice(rows), "alpha_rule": args.alpha_rule,
        "real_queries": len(qids), "val_queries": len(val_q), "top_k": args.top_k, "seed": args.seed,
        "backend": args.backend, "machine": machine_info(),
        "note": "Choices (the alpha; the shipped checkpoint) use the synthetic validation split only. The real "
                "questions are a seeded sample of SQuAD dev's human questions; oracle_mrr@10_by_alpha shows every "
                "alpha on them for insight, never for a choice.",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        # the rows' own time (a row reused from an earlier run keeps its time), and this invocation's
        "wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "this_invocation_wall_s": round(time.perf_counter() - t0, 1),
    })
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    run_script(main)
