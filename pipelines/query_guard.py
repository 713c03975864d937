"""Where the query guard would fire: the limit an adapt run's questions give, against a corpus's real queries.

    python pipelines/query_guard.py \\
        --case squad=runs/squad_v6/default:../shared/data/squad/beir:1000 \\
        --case arguana=runs/arguana_guard/default:../shared/data/arguana:500 \\
        --case arguana_seed1=runs/arguana_guard_seed1/default:../shared/data/arguana:500:1
    # -> pipelines/results/query_guard.json

For each case (``NAME=RUN:BEIR:SAMPLE[:SEED]``): the limit the default recipe's ``query_guard`` sets from the run's
training and validation questions (:func:`rag_rerank.rerank.fusion.guard_limit`, as ``finetune`` computes it), and
how many of the real queries that ``pipelines/quality_benchmark.py`` evaluates (the same seeded sample) have more
words, so that their fused system serves them by the tuned first stage. Query texts only: no label is read except to
draw the same sample, and nothing here chooses a setting. Runs made before the guard (no ``max_query_words`` in
their ``fusion.json``) show what it would have done.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from rag_rerank.evaluate.compare import sample_query_ids
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import iter_jsonl, load_beir, write_json
from rag_rerank.rerank.fusion import guard_limit, load_fusion, past_guard, query_words
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]


def _lengths(texts: list[str]) -> dict[str, float]:
    words = np.array([query_words(t) for t in texts])
    return {"n": len(words), "min": int(words.min()), "median": float(np.median(words)), "max": int(words.max())}


def measure(run: Path, beir: Path, sample: int, seed: int, factor: float) -> dict:
    """The guard's limit from ``run``'s questions and its effect on ``beir``'s evaluated real queries."""
    trained = [row["query"] for row in iter_jsonl(run / "reranker" / "train_groups.jsonl")]
    validated = list(load_qa_dataset(run / "dataset").split("validation")[1].values())
    limit = guard_limit(trained + validated, factor)
    _, queries, qrels = load_beir(beir)
    real = [queries[q] for q in sample_query_ids(qrels, queries, sample, seed)]
    saved = load_fusion(run / "reranker")
    return {"run": str(run), "real_queries": str(beir), "sample": sample, "seed": seed, "max_query_words": limit,
            "saved_max_query_words": saved.max_query_words if saved else None,
            "training_questions": _lengths(trained), "validation_questions": _lengths(validated),
            "real": _lengths(real), "guarded": sum(past_guard(t, limit) for t in real)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", required=True, help="NAME=RUN:BEIR:SAMPLE[:SEED] (repeatable).")
    ap.add_argument("--recipe", default="default", help="The recipe whose query_guard factor is applied.")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "query_guard.json")
    args = ap.parse_args()
    factor = get_recipe(args.recipe).query_guard
    cases = {}
    for case in args.case:
        name, _, spec = case.partition("=")
        run, beir, sample, *seed = spec.split(":")
        cases[name] = measure(Path(run), Path(beir), int(sample), int(seed[0]) if seed else 0, factor)
        print(name, json.dumps({k: cases[name][k] for k in ("max_query_words", "guarded", "sample")}))
    command = "python " + " ".join(shlex.quote(a) for a in ["pipelines/query_guard.py", *sys.argv[1:]])
    write_json(args.out, {"command": command, "recipe": args.recipe, "query_guard": factor, "cases": cases,
                          "note": "Words are whitespace-separated tokens. guarded: real queries with more words than "
                                  "max_query_words, which the fused system serves by the tuned first stage."})
    return 0


if __name__ == "__main__":
    sys.exit(main())
