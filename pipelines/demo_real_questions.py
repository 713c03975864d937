"""Real questions for a small run: SQuAD's own questions about the demo's articles, against the run's first stage.

    python pipelines/demo_real_questions.py --run runs/demo_check \
        --model default=runs/ttq_amd/default --model pospool=runs/ttq_amd/default-pospool

``make demo`` adapts to ``sample_docs/``: 12 SQuAD v1.1 dev articles (``pipelines/make_sample_docs.py``). SQuAD
holds human-written questions about those same articles, so a small run can be checked on real questions in
minutes instead of the SQuAD headline's hours. Each question's relevant chunks are those of its article whose text
contains the answer with up to 40 characters of the text before it (whitespace-normalised); a question whose
answer no chunk holds whole (it straddles a chunk boundary), or more than two chunks hold (a short answer at the
start of a paragraph), is left out and counted. Every reranker reranks the
run's tuned first stage (its ``stages.json``) top 20 and is scored alone: no fusion weight is chosen here, and
nothing here chooses a setting (these questions only measure). Paired bootstrap CIs come from ``evaluate_systems``.
Writes ``pipelines/results/demo_real_questions.json`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rag_rerank.adaptation.runfolder import tuned_first_stage
from rag_rerank.cli import run_script
from rag_rerank.evaluate.compare import evaluate_systems
from rag_rerank.io import iter_jsonl, write_json
from rag_rerank.rerank.backends.auto import machine_info

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "dev-v1.1.json"
_SPACE = re.compile(r"\s+")


def norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def real_questions(squad: Path, corpus: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict[str, int]]:
    """``(queries, qrels, counts)``: SQuAD's questions about the articles in ``corpus`` (matched by title)."""
    by_title: dict[str, list[tuple[str, str]]] = {}
    for cid, doc in corpus.items():
        by_title.setdefault(norm(doc.get("title") or ""), []).append((cid, norm(doc["text"])))
    queries, qrels = {}, {}
    counts = {"articles": 0, "questions": 0, "straddling": 0, "ambiguous": 0}
    for article in json.loads(squad.read_text(encoding="utf-8"))["data"]:
        chunks = by_title.get(norm(article["title"].replace("_", " ")))
        if not chunks:
            continue
        counts["articles"] += 1
        for para in article["paragraphs"]:
            context = para["context"]
            for qa in para["qas"]:
                counts["questions"] += 1
                answer = qa["answers"][0]
                start = answer["answer_start"]
                window = norm(context[max(0, start - 40): start + len(answer["text"])])
                relevant = {cid: 1 for cid, text in chunks if window in text}
                if not relevant:
                    counts["straddling"] += 1
                    continue
                if len(relevant) > 2:  # a short answer at a paragraph's start, found in many chunks
                    counts["ambiguous"] += 1
                    continue
                queries[qa["id"]], qrels[qa["id"]] = qa["question"], relevant
    counts["kept"] = len(queries)
    return queries, qrels, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="An adapt/demo run folder.")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="Rerankers (repeatable).")
    ap.add_argument("--sample", type=int, default=500, help="Questions evaluated (a seeded sample).")
    ap.add_argument("--squad", type=Path, default=SQUAD)
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "demo_real_questions.json")
    args = ap.parse_args()
    bad = [m for m in args.model if "=" not in m or not m.split("=", 1)[0]]
    if bad:
        ap.error(f"--model {bad[0]!r}: give NAME=PATH, e.g. --model default=runs/demo/reranker")
    models = dict(m.split("=", 1) for m in args.model)
    t0 = time.perf_counter()
    corpus = {d["_id"]: d for d in iter_jsonl(args.run / "index" / "corpus.jsonl")}
    queries, qrels, counts = real_questions(args.squad, corpus)
    if not queries:
        ap.error(f"no SQuAD question matches the articles of {args.run} (is it a run over sample_docs/?)")
    first_stage = tuned_first_stage(args.run)
    result = evaluate_systems(corpus, queries, qrels, index_dir=args.run / "index", rerankers=models,
                              first_stage_tuned=first_stage, sample=args.sample, seed=0, backend="torch")
    data = result.to_dict()
    data.update({"run": str(args.run), "models": models, "counts": counts, "first_stage_settings": first_stage,
                 "machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 1),
                 "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/demo_real_questions.py",
                                                                            *sys.argv[1:]])})
    write_json(args.out, data)
    for name, metrics in data["systems"].items():
        print(f"{name:40s} mrr@10 {metrics['mrr@10']:.4f}")
    return 0


if __name__ == "__main__":
    run_script(main)
