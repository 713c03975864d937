"""The headline: a reranker fine-tuned on synthetic questions only, measured on real SQuAD questions.

    python pipelines/squad_benchmark.py            # the full run (make benchmark-quality)
    python pipelines/squad_benchmark.py --quick    # the same chain on a small slice (CI)

SQuAD v1.1 dev (``../shared/data/squad/beir``) plays the user's corpus. No human question or label is used
for training or for choosing any setting: every choice below is made on the *synthetic* validation split.

1. docs: each passage becomes a ``.txt`` file (title from the file name) under ``WORK/docs``.
2. generate: ``create_qa_dataset`` with the embedded LLM (SmolLM2-135M via llama.cpp), resumable.
3. bi-encoder: MultipleNegativesRankingLoss on the synthetic train split (one mined hard negative per
   question). Kept only if its dense MRR@10 on the synthetic validation split beats the base's.
4. reranker: ``finetune`` from ``embedded:minilm-ce`` (listwise loss, negatives mined from the hybrid
   first stage, realistic validation); the fusion alpha with the hybrid is chosen on synthetic validation.
5. evaluate: ``evaluate_systems`` on a seeded sample of SQuAD's human questions (bm25, dense, hybrid,
   hybrid+finetuned and the fused system; with a tuned bi-encoder also its first stage), paired bootstrap
   CIs and randomisation p-values; and the same systems on the synthetic test split.

Every stage is resumable: a rerun skips finished stages (delete ``WORK/<stage>`` to redo one). Writes
``pipelines/results/squad_headline.json`` (``--quick``: ``WORK/squad_headline_quick.json``) and a report
folder ``WORK/report``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rag_rerank.evaluate.compare import evaluate_systems, sample_query_ids
from rag_rerank.evaluate.metrics import evaluate
from rag_rerank.evaluate.report import write_report
from rag_rerank.generate.dataset import create_qa_dataset
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import load_beir, write_json
from rag_rerank.rerank.fusion import load_fusion
from rag_rerank.rerank.reranker import Reranker
from rag_rerank.rerank.runs import apply_scores, score_candidates
from rag_rerank.retrieval import build_index, load_index
from rag_rerank.train.finetune import choose_fusion, finetune, validation_run

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "beir"
METRICS = ("mrr@10", "ndcg@10", "recall@10", "recall@100", "hit@1")
logger = logging.getLogger("squad_benchmark")

# Sizes: the full run fits about 2.5 h on a 2-core CPU (measured: README); --quick is a CI smoke run.
# The reranker recipe follows the README's ablation: 1 + 4 groups, max_length 192, and an LR that stays constant
# after warm-up while the new head leaves its plateau (the first full run's linear decay reached 0 at step 160,
# while validation MRR was still rising fast). About two epochs (640 steps of 8 questions): the LR is constant
# through step 480, the same trajectory as a constant schedule, then a cosine decay to 0 over the last 160
# (warmup-stable-decay). Checkpoints are evaluated every 160 steps on the whole synthetic validation split
# (val_queries None), scored as served (windows), and the best is kept: the checkpoint and the fusion alpha
# are chosen on synthetic questions only.
FULL = {"max_chunks": None, "bi_steps": None, "ce_steps": 640, "ce_group": 5, "ce_batch": 8, "ce_max_length": 192,
        "ce_lr_scheduler": "warmup_stable_decay", "ce_eval_steps": 160, "val_queries": None,
        "eval_queries": 1000, "synthetic_test_queries": 200, "top_k": 20}
QUICK = {"max_chunks": 40, "bi_steps": 4, "ce_steps": 6, "ce_group": 3, "ce_batch": 4, "ce_max_length": 128,
         "ce_lr_scheduler": "warmup_stable_decay", "ce_eval_steps": 3, "val_queries": 8,
         "eval_queries": 40, "synthetic_test_queries": 8, "top_k": 5}


def export_docs(corpus: dict[str, dict[str, str]], out: Path) -> int:
    """Write each passage as ``out/<id>/<title>.txt`` (idempotent); the loader takes the title from the name."""
    n = 0
    for doc_id in sorted(corpus):
        doc = corpus[doc_id]
        folder = out / doc_id
        name = (doc.get("title") or doc_id).replace("/", "_").replace("\\", "_")[:120] + ".txt"
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != doc["text"]:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(doc["text"], encoding="utf-8")
        n += 1
    return n


def synthetic_val_mrr(dataset: Any, index_dir: Path, n: int | None) -> dict[str, float]:
    """Dense and hybrid MRR@10 of an index on the synthetic validation split (the bi-encoder keep/drop test)."""
    _, queries, qrels = dataset.split("validation")
    queries = {q: queries[q] for q in sorted(queries)[:n]}  # n None: all
    runs = load_index(index_dir).search_all(queries, top_k=10)
    return {m: evaluate(runs[m], {q: qrels[q] for q in queries}, ["mrr@10"])["mrr@10"] for m in ("dense", "hybrid")}


def tuned_runs(tuned_index: Any, corpus: dict, queries: dict, qrels: dict, qids: list[str], reranker: Reranker,
               alpha: float | None, top_k: int) -> dict[str, dict]:
    """Runs of the first stage with the tuned bi-encoder, and of the fine-tuned reranker over its candidates."""
    sub_q = {q: queries[q] for q in qids}
    runs = tuned_index.search_all(sub_q, top_k=100)
    out = {"dense[tuned-bi]": runs["dense"], "hybrid[tuned-bi]": runs["hybrid"]}
    heads = score_candidates(runs["hybrid"], sub_q, corpus, reranker, top_k)
    out["hybrid[tuned-bi]+finetuned"] = apply_scores(runs["hybrid"], heads, top_k)
    if alpha is not None:
        out[f"hybrid[tuned-bi]+finetuned@{alpha:g}"] = apply_scores(runs["hybrid"], heads, top_k, alpha)
    return out


def validation_curve(model_dir: Path) -> list[dict[str, float]]:
    """The reranking evaluator's synthetic-validation rows written while training (step, MRR@10, ...)."""
    rows: list[dict[str, float]] = []
    for csv_path in sorted((model_dir / "eval").glob("reranking_evaluation_*.csv")):
        with csv_path.open(encoding="utf-8") as f:
            rows += [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return rows


def _script_path() -> str:
    """``pipelines/squad_benchmark.py`` relative to the repo when it lies inside it (for the recorded command)."""
    path = Path(sys.argv[0]).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else sys.argv[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="The same chain on a small slice (CI smoke run).")
    ap.add_argument("--data", type=Path, default=SQUAD,
                    help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv); default SQuAD dev. Any corpus "
                         "works unchanged: its documents play the user's, its queries the real ones.")
    ap.add_argument("--work", type=Path, default=None, help="Work folder (default runs/squad_benchmark[_quick]).")
    ap.add_argument("--out", type=Path, default=None, help="Result JSON.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-bi-encoder", action="store_true", help="Skip the bi-encoder fine-tune.")
    ap.add_argument("--n-resamples", type=int, default=10000)
    ap.add_argument("--stop-after", choices=("docs", "generate", "bi_encoder", "reranker"), default=None,
                    help="Stop after this stage (a rerun resumes from there; stage times are kept).")
    ap.add_argument("--ce-steps", type=int, default=None,
                    help="Reranker training steps (default: 640, about 2 epochs; a GPU affords more).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    size = dict(QUICK if args.quick else FULL)
    if args.ce_steps:
        size.update(ce_steps=args.ce_steps, ce_eval_steps=min(size["ce_eval_steps"], args.ce_steps))
    work = args.work or REPO / "runs" / ("squad_benchmark_quick" if args.quick else "squad_benchmark")
    out_json = args.out or (work / "squad_headline_quick.json" if args.quick
                            else REPO / "pipelines" / "results" / "squad_headline.json")
    if not (args.data / "corpus.jsonl").is_file():
        raise SystemExit(f"{args.data}: no BEIR folder (corpus.jsonl missing); pass --data DIR")
    t0 = time.perf_counter()
    times_file = work / "stage_times.json"
    # seconds each stage took when it actually ran (a resumed run keeps the time of the run that did the work)
    done_s: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}
    stage_s: dict[str, float] = {}

    def stage(name: str, start: float, did_work: bool = True, accumulate: bool = False) -> None:
        stage_s[name] = round(time.perf_counter() - start, 1)
        if accumulate and did_work:  # e.g. a rerun of generate retries the failed chunks: more work, added
            done_s[name] = round(done_s.get(name, 0.0) + stage_s[name], 1)
        elif did_work or name not in done_s:
            done_s[name] = stage_s[name]
        work.mkdir(parents=True, exist_ok=True)
        write_json(times_file, done_s)
        logger.info("stage %s done in %.0fs", name, stage_s[name])
        if name == args.stop_after:
            logger.info("--stop-after %s: stopping; rerun without it to continue", name)
            raise SystemExit(0)

    corpus, queries, qrels = load_beir(args.data)
    # 1. the user's documents. --quick keeps the passages of a few real questions so that they can be evaluated.
    s = time.perf_counter()
    eval_ids = sample_query_ids(qrels, queries, size["eval_queries"], args.seed)
    if args.quick:
        keep = sorted({d for q in eval_ids for d in qrels[q]} | set(sorted(corpus)[: size["max_chunks"]]))
        corpus = {d: corpus[d] for d in keep}
    export_docs(corpus, work / "docs")
    stage("docs", s)

    # 2. synthetic questions (embedded LLM; resumable: a finished dataset is a no-op). Chunks the LLM answered
    #    without a usable question are not asked again: later stages trained on this exact dataset.
    s = time.perf_counter()
    qa = work / "qa"
    summary = create_qa_dataset(work / "docs", qa, llm="embedded", questions_per_chunk=2, seed=args.seed,
                                max_chunks=size["max_chunks"], retry_failed=False)
    manifest = json.loads((qa / "manifest.json").read_text(encoding="utf-8"))
    stage("generate", s, did_work=summary.requests_this_run > 0 or "generate" not in done_s, accumulate=True)
    dataset = load_qa_dataset(qa)

    # 3. bi-encoder fine-tune, kept only if it helps on synthetic validation
    s = time.perf_counter()
    base_index = qa / "index"
    if not (base_index / "config.json").is_file():
        build_index(dataset.corpus, base_index, bi_encoder="embedded:minilm")
    bi_choice: dict[str, Any] = {"used": False}
    bi_dir = work / "bi_encoder"
    if not args.no_bi_encoder:
        if not (bi_dir / "config.json").is_file():
            finetune(qa, bi_dir, index_dir=base_index, target="bi-encoder", base_model="embedded:minilm",
                     max_steps=size["bi_steps"])
        tuned_index = qa / "index-tuned-bi"
        if not (tuned_index / "config.json").is_file():
            build_index(dataset.corpus, tuned_index, bi_encoder=str(bi_dir))
        n_val = None if size["val_queries"] is None else size["val_queries"] * 3
        base_mrr = synthetic_val_mrr(dataset, base_index, n_val)
        tuned_mrr = synthetic_val_mrr(dataset, tuned_index, n_val)
        bi_choice = {"used": tuned_mrr["hybrid"] > base_mrr["hybrid"],
                     "synthetic_val_mrr@10": {"base": base_mrr, "tuned": tuned_mrr}}
        logger.info("bi-encoder: synthetic validation hybrid MRR@10 base %.4f, tuned %.4f -> %s", base_mrr["hybrid"],
                    tuned_mrr["hybrid"], "use the tuned one" if bi_choice["used"] else "keep the base")
    train_index = qa / "index-tuned-bi" if bi_choice["used"] else base_index
    stage("bi_encoder", s)

    # 4. the reranker, from embedded:minilm-ce, on negatives mined with the (chosen) hybrid first stage
    s = time.perf_counter()
    ce_dir = work / "reranker"
    ce_done = (ce_dir / "config.json").is_file()
    if not ce_done:
        result = finetune(qa, ce_dir, index_dir=train_index, base_model="embedded:minilm-ce", loss="listwise",
                          max_steps=size["ce_steps"], train_group_size=size["ce_group"], batch_size=size["ce_batch"],
                          max_length=size["ce_max_length"], lr_scheduler=size["ce_lr_scheduler"],
                          eval_steps=size["ce_eval_steps"], keep_checkpoints=True,
                          max_eval_queries=size["val_queries"], eval_top_k=size["top_k"], sanity_gate="warn",
                          command="python " + " ".join(map(shlex.quote, sys.argv)))
        logger.info("reranker: %s", result.verdict)
    fusion = load_fusion(ce_dir)
    if fusion is None:  # the model was saved, but the run stopped before fusion.json was written
        val = validation_run(dataset, load_index(train_index), top_k=size["top_k"], max_queries=size["val_queries"])
        choose_fusion(ce_dir, *val, top_k=size["top_k"])
        fusion = load_fusion(ce_dir)
    alpha = float(fusion["alpha"])
    stage("reranker", s, did_work=not ce_done)

    # 5. real questions: the baseline is the untuned hybrid (what the user has without rag-rerank)
    s = time.perf_counter()
    squad_index = work / "index-squad"
    if not (squad_index / "config.json").is_file():
        build_index(corpus, squad_index, bi_encoder="embedded:minilm")
    reranker = Reranker(str(ce_dir), cache_size=200_000)
    extra = {}
    if bi_choice["used"]:
        tuned_squad = work / "index-squad-tuned-bi"
        if not (tuned_squad / "config.json").is_file():
            build_index(corpus, tuned_squad, bi_encoder=str(bi_dir))
        extra = tuned_runs(load_index(tuned_squad), corpus, queries, qrels, eval_ids, reranker, alpha, size["top_k"])
    real_key = {"model": str(ce_dir), "alpha": alpha, "sample": size["eval_queries"], "seed": args.seed,
                "extra": sorted(extra), "n_resamples": args.n_resamples, "top_k": size["top_k"]}
    real_file = work / "report" / "report.json"
    saved = json.loads(real_file.read_text()) if real_file.is_file() else {}
    if saved.get("resume_key") == real_key:  # the evaluation of this model is done: reuse it
        real = saved
    else:
        real = evaluate_systems(corpus, queries, qrels, index=load_index(squad_index), index_dir=squad_index,
                                rerankers={"finetuned": reranker}, interpolate={"finetuned": alpha},
                                extra_runs=extra, top_k_rerank=size["top_k"], metrics=METRICS,
                                sample=size["eval_queries"], seed=args.seed, n_resamples=args.n_resamples)
        real["resume_key"] = real_key
        write_report(real, work / "report")
    stage("evaluate_real", s, did_work=real is not saved)

    # 6. the synthetic test split, same systems (the number a user sees for their own corpus)
    s = time.perf_counter()
    t_corpus, t_queries, t_qrels = dataset.split("test")
    synth = evaluate_systems(t_corpus, t_queries, t_qrels, index=load_index(base_index), index_dir=base_index,
                             rerankers={"finetuned": reranker}, interpolate={"finetuned": alpha},
                             top_k_rerank=size["top_k"], metrics=METRICS, sample=size["synthetic_test_queries"],
                             seed=args.seed, n_resamples=args.n_resamples)
    stage("evaluate_synthetic", s)

    fused = f"hybrid+finetuned@{alpha:g}"
    delta = {}
    for name, d in real["delta"].items():
        delta[name] = {m: d[m]["delta"] for m in d}
        delta[name].update({"ci95": d["mrr@10"]["ci95"], "p": d["mrr@10"]["p"]})
    out = {
        "queries": real["queries"],
        "systems": real["systems"],
        "systems_ci95": real["systems_ci95"],
        "delta": delta,
        "delta_detail": real["delta"],
        "headline_system": fused,
        "fusion": fusion,
        "validation_curve": validation_curve(ce_dir),
        "bi_encoder": bi_choice,
        "ceiling": real["ceiling"],
        "gold_rank_histogram": real["gold_rank_histogram"],
        "synthetic_test": {"queries": synth["queries"], "systems": synth["systems"],
                           "delta": {k: {m: v[m]["delta"] for m in v} for k, v in synth["delta"].items()}},
        "data": {"passages": len(corpus), "chunks": summary.n_chunks, "questions": summary.n_questions,
                 "failed_chunks": len(summary.failed_chunks), "per_split": manifest["counts"].get("per_split"),
                 "dropped_by_reason": manifest["counts"].get("dropped_by_reason"),
                 "generation_timings_s": manifest.get("timings")},
        "settings": {**size, "seed": args.seed, "base_model": "embedded:minilm-ce", "bi_encoder": "embedded:minilm",
                     "llm": "embedded (SmolLM2-135M-Instruct Q4_1)", "questions_per_chunk": 2,
                     "evaluation": real["settings"]},
        "stage_wall_s": done_s,
        "this_invocation_stage_s": stage_s,
        "command": "python " + " ".join(shlex.quote(a) for a in [_script_path(), *sys.argv[1:]]),
        "wall_s": round(sum(done_s.values()), 1),
        "this_invocation_wall_s": round(time.perf_counter() - t0, 1),
        "note": "wall_s sums stage_wall_s: each stage's time in the run that did its work (stages are resumable, "
                "and a rerun skips finished ones). No human question or label was used for training or for any "
                "choice.",
    }
    write_json(out_json, out)
    d = delta.get(f"{fused}_vs_hybrid", {})
    logger.info("hybrid MRR@10 %.4f -> %s %.4f (delta %+.4f, 95%% CI %s, p=%s); wrote %s",
                real["systems"]["hybrid"]["mrr@10"], fused, real["systems"][fused]["mrr@10"], d.get("mrr@10", 0.0),
                d.get("ci95"), d.get("p"), out_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
