"""How many chunks get a usable query in the user's style: the filters re-applied to a generation run's answers.

    python pipelines/quality_benchmark.py --corpus arguana --runs examples --stop-after generate   # the answers
    python pipelines/style_yield.py --run runs/arguana_default/examples \\
        --examples runs/arguana_default/examples_query_examples.txt --docs runs/arguana_default/docs
    # -> pipelines/results/style_yield.json

The LLM's raw answers are in the run's ``dataset/checkpoint.jsonl``, so the filters can be judged without asking the
LLM again. For the style filters of this code (:meth:`rag_rerank.generate.style.QueryStyle.filter_config`), and for
lower length floors, this counts the candidates kept and dropped by reason and the chunks left with at least one
query, next to what the run itself kept (its ``manifest.json``, written with the code it ran). No query is judged by
hand and nothing here chooses a setting: it shows whether a run with these examples can train at all.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from rag_rerank.generate.chunking import load_chunks
from rag_rerank.generate.questions import parse_questions, question_problem
from rag_rerank.generate.style import load_query_examples
from rag_rerank.io import iter_jsonl, read_json, write_json
from rag_rerank.rerank.backends.auto import machine_info

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="An adapt run folder (its dataset/ holds the answers).")
    ap.add_argument("--examples", type=Path, required=True, help="The --query-examples file the run used.")
    ap.add_argument("--docs", type=Path, required=True, help="The documents the run chunked.")
    ap.add_argument("--floors", type=int, nargs="*", default=[15, 8], help="Lower word floors to compare.")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "style_yield.json")
    args = ap.parse_args()
    manifest = read_json(args.run / "dataset" / "manifest.json")
    style = load_query_examples(args.examples)
    chunks, _ = load_chunks(args.docs, chunk_tokens=manifest["settings"]["chunk_tokens"])
    text = {c.id: c.text for c in chunks}
    answers = [r for r in iter_jsonl(args.run / "dataset" / "checkpoint.jsonl") if r.get("chunk_id") in text]
    base = style.filter_config()
    configs = {f"this code (min {base.min_words} words)": base}
    configs.update({f"min {n} words": dataclasses.replace(base, min_words=n) for n in args.floors})
    lengths: list[int] = []
    result: dict = {}
    for name, cfg in configs.items():
        reasons: collections.Counter = collections.Counter()
        chunks_ok = set()
        for row in answers:
            for answer in row.get("texts", []):
                for q in parse_questions(answer, by_line=True):
                    if name.startswith("this code"):
                        lengths.append(len(q.split()))
                    problem = question_problem(q, text[row["chunk_id"]], cfg)
                    reasons[problem or "kept"] += 1
                    if problem is None:
                        chunks_ok.add(row["chunk_id"])
        result[name] = {"min_words": cfg.min_words, "max_words": cfg.max_words, "kept": reasons.pop("kept", 0),
                        "dropped_by_reason": dict(reasons.most_common()), "chunks_with_a_query": len(chunks_ok)}
    out = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/style_yield.py", *sys.argv[1:]]),
        "llm": manifest["llm"], "chunks_asked": len(answers),
        "run_kept": {"chunks_with_questions": manifest["counts"]["chunks_with_questions"],
                     "kept": manifest["counts"]["kept"], "dropped_by_reason": manifest["counts"]["dropped_by_reason"],
                     "min_words": manifest["settings"]["filter"]["min_words"]},
        "candidate_words_percentiles": dict(zip(("p10", "p25", "p50", "p75", "p90"),
                                                np.percentile(lengths, [10, 25, 50, 75, 90]).tolist(), strict=True)),
        "example_words": sorted(len(e.split()) for e in style.examples), "filters": result,
        "machine": machine_info(),
    }
    write_json(args.out, out)
    sys.stdout.write(json.dumps({k: out[k] for k in ("chunks_asked", "run_kept")}) + "\n")
    for name, r in result.items():
        sys.stdout.write(f"{name}: {r['chunks_with_a_query']} chunks, {r['kept']} queries kept\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
