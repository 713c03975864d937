"""What more questions per chunk cost and yield: the embedded LLM asked for 2 and for 4 questions per chunk.

    python pipelines/questions_per_chunk.py --max-chunks 120 --n 2 --n 4

A chunk's generation time is mostly the LLM reading the passage (70%, ``bench_llm_prompt.json``); the questions
are one answer to one prompt. Asking for more questions per chunk should then add only decoding time while it
multiplies the training data, which a small corpus (``make demo``'s 176 training questions) lacks. For each ``--n``
the same seeded chunks of ``sample_docs/`` are asked with the default recipe's other generation settings, in one
process, one after the other, with a seed no cached answer holds (so every chunk is really asked). Recorded per
``n``: LLM seconds per chunk, the questions kept (and per split), the chunks that got none, kept questions per LLM
second, and why candidates were dropped. Nothing here trains or chooses; it measures the generation lever.
Writes ``pipelines/results/questions_per_chunk.json`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rag_rerank.data import SAMPLE_DOCS
from rag_rerank.generate.dataset import create_qa_dataset
from rag_rerank.io import read_json, write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default=str(SAMPLE_DOCS), help="Documents (default: the demo's sample_docs/).")
    ap.add_argument("--n", type=int, action="append", help="Questions per chunk (repeatable; default 2 and 4).")
    ap.add_argument("--max-chunks", type=int, default=120, help="Seeded chunks asked per setting.")
    ap.add_argument("--seed", type=int, default=7, help="A seed no earlier run cached answers for.")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "questions_per_chunk")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "questions_per_chunk.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    generation = get_recipe("default").generation
    rows: dict[str, Any] = {}
    for n in args.n or [2, 4]:
        out = args.work / f"n{n}"
        shutil.rmtree(out, ignore_errors=True)  # every chunk asked now, in this run
        summary = create_qa_dataset(args.docs, out, llm="embedded", seed=args.seed, max_chunks=args.max_chunks,
                                    show_progress_bar=False, retry_failed=False,
                                    **replace(generation, questions_per_chunk=n).kwargs())
        manifest = read_json(out / "manifest.json")
        counts, timings = manifest["counts"], manifest["timings"]
        asked = timings["requests_this_run"]
        rows[f"n{n}"] = {
            "questions_per_chunk": n, "chunks": summary.n_chunks, "requests": asked,
            "llm_s_per_chunk": round(timings["llm_seconds"] / max(summary.n_chunks, 1), 3),
            "kept": counts["kept"], "kept_per_chunk": round(counts["kept"] / max(summary.n_chunks, 1), 3),
            "kept_per_llm_s": round(counts["kept"] / max(timings["llm_seconds"], 1e-9), 3),
            "chunks_without_question": len(summary.failed_chunks), "per_split": counts["per_split"],
            "dropped_by_reason": counts["dropped_by_reason"], "llm_seconds": timings["llm_seconds"]}
        sys.stdout.write(f"n={n}: {rows[f'n{n}']}\n")
    base = rows.get("n2")
    if base:
        for row in rows.values():
            row["time_ratio_vs_n2"] = round(row["llm_s_per_chunk"] / base["llm_s_per_chunk"], 3)
            row["kept_ratio_vs_n2"] = round(row["kept"] / max(base["kept"], 1), 3)
    write_json(args.out, {"docs": args.docs, "seed": args.seed, "max_chunks": args.max_chunks,
                          "generation": generation.kwargs() | {"split_ratios": list(generation.split_ratios)},
                          "settings": rows, "machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 1),
                          "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/questions_per_chunk.py",
                                                                                   *sys.argv[1:]])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
