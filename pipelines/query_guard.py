"""Where the query guard would fire: the limits an adapt run's questions give, against a corpus's real queries.

    python pipelines/query_guard.py \\
        --case squad=runs/squad_v6/default:../shared/data/squad/beir:1000 \\
        --case arguana=runs/arguana_guard/default:../shared/data/arguana:500 \\
        --case arguana_seed1=runs/arguana_guard_seed1/default:../shared/data/arguana:500:1 --evaluate
    # -> pipelines/results/query_guard.json

For each case (``NAME=RUN:BEIR:SAMPLE[:SEED]``): the guard the default recipe sets from the run's training and
validation questions, as ``finetune`` computes it: the length limit (``query_guard`` times the longest,
:func:`rag_rerank.rerank.fusion.guard_limit`) and the form (``question_guard``: ``"question"`` when every one reads
as a question, :func:`rag_rerank.rerank.fusion.guard_form`); and how many of the real queries that
``pipelines/quality_benchmark.py`` evaluates (the same seeded sample) it serves by the tuned first stage, by reason.
Query texts only: no label is read except to draw the same sample, and nothing here chooses a setting. Runs made
before the guards (none in their ``fusion.json``) show what they would have done.

``--evaluate`` also measures it on the real labels (reporting only): the run's reranker fused as its
``fusion.json`` says, served with today's default guard (``default``: length and form) and with the length guard
alone (``v8``), against the tuned first stage, through :func:`rag_rerank.evaluate.evaluate_systems` on the run's
``index-real`` (beside the run folder, built by ``quality_benchmark.py``). ``--cut-words N`` first cuts every real
query to its first N words: a probe of short queries in the corpus's own style (for ArguAna, the opening of an
argument), which the length guard lets through.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from rag_rerank.evaluate.compare import evaluate_systems, sample_query_ids
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import iter_jsonl, load_beir, write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.rerank.fusion import QueryGuard, guard_form, guard_limit, load_fusion, query_words
from rag_rerank.retrieval.store import load_index
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@10", "mrr@10")


def _lengths(texts: list[str]) -> dict[str, float]:
    words = np.array([query_words(t) for t in texts])
    return {"n": len(words), "min": int(words.min()), "median": float(np.median(words)), "max": int(words.max())}


def _evaluate(run: Path, beir: tuple[dict, dict, dict], sample: int, seed: int, guard: QueryGuard,
              top_k: int) -> dict:
    """The run's fused system with ``guard`` (``default``) and with its length limit alone (``v8``), on real labels."""
    from rag_rerank.rerank.reranker import Reranker

    corpus, queries, qrels = beir
    fusion = load_fusion(run / "reranker")
    shown = fusion.alpha if fusion.improved else fusion.best_alpha
    model = Reranker(str(run / "reranker"), cache_size=200_000)  # one model: the second system reuses its scores
    guards = {"default": guard, "v8": QueryGuard(max_words=guard.max_words)}
    index_dir = run.parent / "index-real"
    result = evaluate_systems(corpus, queries, qrels, index=load_index(index_dir), index_dir=index_dir,
                              rerankers=dict.fromkeys(guards, model), alpha=dict.fromkeys(guards, shown),
                              query_guard=guards, first_stage_tuned=fusion.first_stage, top_k=top_k,
                              metrics=METRICS, exclude_self=bool(set(queries) & set(corpus)), sample=sample,
                              seed=seed, show_progress_bar=True)
    out = {"alpha": shown, "fusion_status": fusion.status, "exclude_self": result.settings["exclude_self"],
           "systems": result.systems, "query_guard": result.settings["query_guard"],
           "delta": {key: {m: {"delta": d.delta, "ci95": list(d.ci95)} for m, d in by_metric.items()}
                     for key, by_metric in result.delta.items()}}
    return out


def measure(run: Path, beir: Path, sample: int, seed: int, recipe_name: str, evaluate: bool,
            cut_words: int | None) -> dict:
    """The guard from ``run``'s questions and its effect on ``beir``'s evaluated real queries."""
    recipe = get_recipe(recipe_name)
    trained = [row["query"] for row in iter_jsonl(run / "reranker" / "train_groups.jsonl")]
    validated = list(load_qa_dataset(run / "dataset").split("validation")[1].values())
    guard = QueryGuard(guard_limit(trained + validated, recipe.query_guard),
                       guard_form(trained + validated, recipe.question_guard))
    corpus, queries, qrels = load_beir(beir)
    if cut_words:
        queries = {q: " ".join(t.split()[:cut_words]) for q, t in queries.items()}
    real = [queries[q] for q in sample_query_ids(qrels, queries, sample, seed)]
    saved = load_fusion(run / "reranker")
    out = {"run": str(run), "real_queries": str(beir), "sample": sample, "seed": seed, "cut_words": cut_words,
           "max_query_words": guard.max_words, "query_form": guard.form,
           "saved_max_query_words": saved.max_query_words if saved else None,
           "saved_query_form": saved.query_form if saved else None,
           "training_questions": _lengths(trained), "validation_questions": _lengths(validated),
           "real": _lengths(real), **{k: v for k, v in guard.counts(real).items() if k not in ("max_query_words",
                                                                                            "query_form", "queries")}}
    if evaluate:
        out["evaluation"] = _evaluate(run, (corpus, queries, qrels), sample, seed, guard, recipe.top_k)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", required=True, help="NAME=RUN:BEIR:SAMPLE[:SEED] (repeatable).")
    ap.add_argument("--recipe", default="default", help="The recipe whose query_guard and question_guard apply.")
    ap.add_argument("--evaluate", action="store_true", help="Also measure the guards on the real labels.")
    ap.add_argument("--cut-words", type=int, default=None, help="Cut every real query to its first N words.")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "query_guard.json")
    args = ap.parse_args()
    recipe = get_recipe(args.recipe)
    cases = {}
    for case in args.case:
        name, _, spec = case.partition("=")
        run, beir, sample, *seed = spec.split(":")
        cases[name] = measure(Path(run), Path(beir), int(sample), int(seed[0]) if seed else 0, args.recipe,
                              args.evaluate, args.cut_words)
        print(name, json.dumps({k: cases[name][k] for k in ("max_query_words", "query_form", "guarded", "too_long",
                                                            "not_a_question", "sample")}))
        if args.evaluate:
            ev = cases[name]["evaluation"]
            print(name, json.dumps({k: v for k, v in ev["delta"].items() if "@" in k}))
    command = "python " + " ".join(shlex.quote(a) for a in ["pipelines/query_guard.py", *sys.argv[1:]])
    write_json(args.out, {"command": command, "recipe": args.recipe, "query_guard": recipe.query_guard,
                          "question_guard": recipe.question_guard, "cases": cases, "machine": machine_info(),
                          "note": "Words are whitespace-separated tokens. guarded: real queries that the fused "
                                  "system serves by the tuned first stage: too_long (more than max_query_words) or "
                                  "not_a_question (query_form 'question': the reranker was trained and validated on "
                                  "questions only, and the query does not read as one)."})
    return 0


if __name__ == "__main__":
    sys.exit(main())
