"""Does adapting the bi-encoder help the first stage? The optional MNRL stage, on real questions too.

    python pipelines/bi_encoder_stage.py --run runs/demo_base --epochs 1 --epochs 4       # make demo's data
    python pipelines/quality_benchmark.py --work runs/squad_new --stop-after mine        # SQuAD's data, then
    python pipelines/bi_encoder_stage.py --run runs/squad_new/default --epochs 1 --sample 1000 \
        --work runs/bi_encoder_stage_squad --out pipelines/results/bi_encoder_stage_squad.json

For one ``adapt`` run folder over SQuAD articles (``make demo``'s over ``sample_docs/``, or the SQuAD headline's
over all of SQuAD dev: its dataset and index), the first stage's bi-encoder (``embedded:minilm``) is fine-tuned
as the recipe's optional ``bi_encoder_stage`` does it
(``finetune_bi_encoder``: MultipleNegativesRankingLoss, batch 32, one hard negative mined by the run's first stage
with the recipe's mining settings, learning rate 2e-5), for each ``--epochs``. The corpus is indexed again with
each tuned model, and the first stage's fusion is tuned on synthetic validation as ``adapt`` tunes it. Each first
stage (the base, and each tuned bi-encoder) is then scored on the synthetic test split and on SQuAD's own human
questions about the same articles (matched to chunks as in ``demo_real_questions.py``; a seeded sample): BM25,
dense alone, the RRF hybrid and the tuned first stage, with paired CIs of each adapted first stage (and its dense
retriever alone) against the untrained tuned first stage and the RRF hybrid.
Only synthetic validation chooses anything (the fusion); the test and real questions only measure.
Writes ``pipelines/results/bi_encoder_stage.json`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from demo_real_questions import SQUAD, real_questions

from rag_rerank.adaptation.first_stage import tune_on_validation
from rag_rerank.evaluate.compare import evaluate_systems, sample_query_ids
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import iter_jsonl, write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.retrieval.store import build_index, load_index
from rag_rerank.train.bi_encoder import finetune_bi_encoder
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]


def tuned_first_stage(index_dir: Path, dataset: Any, recipe: Any) -> tuple[Any, Any]:
    """The index and its fusion tuned on synthetic validation, as ``adapt`` tunes it."""
    index = load_index(index_dir)
    return index, tune_on_validation(dataset, index, recipe.first_stage, recipe.max_eval_queries)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="An adapt run over SQuAD articles (dataset and index).")
    ap.add_argument("--epochs", type=float, action="append", help="Bi-encoder epochs (repeatable; default 1 and 4).")
    ap.add_argument("--sample", type=int, default=500, help="Real questions evaluated (a seeded sample).")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bi_encoder_stage")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "bi_encoder_stage.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    t0 = time.perf_counter()
    recipe = get_recipe("default")
    settings = recipe.bi_encoder_stage
    dataset = load_qa_dataset(args.run / "dataset")
    corpus = {d["_id"]: d for d in iter_jsonl(args.run / "index" / "corpus.jsonl")}
    real_q, real_qrels, counts = real_questions(SQUAD, corpus)
    if not real_q:
        ap.error(f"no SQuAD question matches the articles of {args.run} (is it a run over SQuAD articles?)")
    _, test_q, test_qrels = dataset.split("test")
    splits = {"test": (dataset.corpus, test_q, test_qrels, None), "real": (corpus, real_q, real_qrels, args.sample)}
    base_index, base_choice = tuned_first_stage(args.run / "index", dataset, recipe)
    fusions = {"base": base_choice.name}
    extra: dict[str, dict[str, Any]] = {split: {} for split in splits}
    tuned: dict[str, Any] = {}
    for epochs in args.epochs or [1.0, 4.0]:
        name = f"bi{epochs:g}ep"
        start = time.perf_counter()
        model_dir, index_dir = args.work / f"{name}-model", args.work / f"{name}-index"
        trained = finetune_bi_encoder(args.run / "dataset", model_dir, index_dir=args.run / "index",
                                      mining=recipe.mining, epochs=epochs, batch_size=settings.batch_size,
                                      learning_rate=settings.learning_rate, seed=recipe.training.seed)
        train_s = time.perf_counter() - start
        build_index(dataset.corpus, index_dir, bi_encoder=str(model_dir))
        index, choice = tuned_first_stage(index_dir, dataset, recipe)
        fusions[name] = choice.name
        tuned[name] = {"epochs": epochs, "train_rows": trained.rows, "train_s": round(train_s, 1),
                       "stage_s": round(time.perf_counter() - start, 1), "fusion": choice.name,
                       "validation_mrr@10": choice.value}
        for split, (_, queries, qrels, sample) in splits.items():
            ids = sample_query_ids(qrels, queries, sample, seed=0)
            sub = {q: queries[q] for q in ids}
            extra[split][f"{name}_first_stage_tuned"] = index.with_fusion(**choice.settings).search(sub, top_k=100)
            extra[split][f"{name}_dense"] = index.search(sub, top_k=100, mode="dense")
    result: dict[str, Any] = {
        "run": str(args.run), "real_question_counts": counts,
        "data": {s: len(dataset.split(s)[1]) for s in ("train", "validation", "test")},
        "settings": {"batch_size": settings.batch_size, "learning_rate": settings.learning_rate,
                     "mining": recipe.to_dict()["mining"]},
        "validation_mrr@10": {"base": base_choice.value, **{n: t["validation_mrr@10"] for n, t in tuned.items()}},
        "fusions": fusions, "bi_encoders": tuned}
    for split, (split_corpus, queries, qrels, sample) in splits.items():
        res = evaluate_systems(split_corpus, queries, qrels, index=base_index, first_stage_tuned=base_choice.settings,
                               extra_runs=extra[split], sample=sample, seed=0, n_resamples=10000)
        data = res.to_dict()
        result[split] = {"queries": data["queries"], "systems": data["systems"], "delta": data["delta"]}
    result.update({"machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 1),
                   "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/bi_encoder_stage.py",
                                                                            *sys.argv[1:]])})
    write_json(args.out, result)
    for split in splits:
        for system, metrics in result[split]["systems"].items():
            sys.stdout.write(f"{split:5s} {system:28s} mrr@10 {metrics['mrr@10']:.4f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
