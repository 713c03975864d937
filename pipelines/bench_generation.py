"""Benchmark question generation: questions/s with the embedded LLM, and concurrency 8 vs 1.

1. Embedded SmolLM2 (llama.cpp, 1 slot, seeded) on a few sample_docs chunks: questions/s asked and
   kept, tokens/s, kept/asked.
2. The scripted local OpenAI-compatible server (tests/openai_stub_server.py) with a fixed artificial
   latency per request: chunks/s at concurrency 1 and 8, and the speed-up (ideal: 8x).

Usage:
    python pipelines/bench_generation.py [--chunks 8] [--stub-chunks 40] [--latency 0.25]

Writes pipelines/results/bench_generation.json (with the command and wall time).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from openai_stub_server import StubOpenAIServer  # noqa: E402

from rag_rerank.data import SAMPLE_DOCS  # noqa: E402
from rag_rerank.generate.dataset import create_qa_dataset  # noqa: E402
from rag_rerank.io import write_json  # noqa: E402


def _run(docs: str, out: Path, **kw) -> dict:
    t = time.perf_counter()
    s = create_qa_dataset(docs, out, show_progress_bar=False, **kw)
    wall = time.perf_counter() - t
    llm_s = json.loads((out / "manifest.json").read_text())["timings"]["llm_seconds"]
    return {
        "chunks": s.n_chunks, "asked": s.counts["asked"], "returned": s.counts["returned"], "kept": s.n_questions,
        "kept_per_asked": round(s.n_questions / max(1, s.counts["asked"]), 3),
        "dropped_by_reason": s.counts["dropped_by_reason"], "failed_chunks": len(s.failed_chunks),
        "completion_tokens": s.completion_tokens, "llm_seconds": round(llm_s, 2), "wall_seconds": round(wall, 2),
        "chunks_per_s": round(s.n_chunks / llm_s, 3), "kept_questions_per_s": round(s.n_questions / llm_s, 3),
        "completion_tokens_per_s": round(s.completion_tokens / llm_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default=str(SAMPLE_DOCS))
    ap.add_argument("--chunks", type=int, default=8, help="chunks for the embedded LLM run (0: skip it)")
    ap.add_argument("--stub-chunks", type=int, default=40)
    ap.add_argument("--latency", type=float, default=0.25, help="stub server seconds per request")
    ap.add_argument("--out", default=str(REPO / "pipelines" / "results" / "bench_generation.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    res: dict = {"command": "python " + " ".join(sys.argv), "machine": platform.platform()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.chunks:
            r = _run(args.docs, Path(tmp) / "emb", llm="embedded", max_chunks=args.chunks, seed=0)
            res["embedded_smollm2"] = r
            print(f"embedded SmolLM2, {r['chunks']} chunks: {r['kept_questions_per_s']:.2f} kept questions/s, "
                  f"{r['chunks_per_s']:.2f} chunks/s, {r['completion_tokens_per_s']:.0f} tokens/s, "
                  f"kept/asked {r['kept']}/{r['asked']} = {r['kept_per_asked']:.2f}; dropped {r['dropped_by_reason']}")
        with StubOpenAIServer(delay=args.latency) as srv:
            runs = {}
            for c in (1, 8):
                runs[c] = _run(args.docs, Path(tmp) / f"stub{c}", llm="openai:stub", base_url=srv.base_url,
                               concurrency=c, max_chunks=args.stub_chunks, seed=0)
        speedup = runs[8]["chunks_per_s"] / runs[1]["chunks_per_s"]
        res["stub_server"] = {"latency_s": args.latency, "concurrency_1": runs[1], "concurrency_8": runs[8],
                              "speedup_8_vs_1": round(speedup, 2)}
        print(f"stub server ({args.latency}s/request, {args.stub_chunks} chunks): concurrency 1 "
              f"{runs[1]['chunks_per_s']:.2f} chunks/s, concurrency 8 {runs[8]['chunks_per_s']:.2f} chunks/s "
              f"-> {speedup:.2f}x (ideal 8x)")
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, res)
    print(f"wrote {args.out} ({res['wall_seconds']}s)")


if __name__ == "__main__":
    main()
