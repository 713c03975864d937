"""Where a chunk's generation time goes: the prompt (few-shot turns and the passage) against the answer, with and
without llama.cpp's prompt cache (the reuse of the few-shot prefix that every request shares).

    python pipelines/bench_llm_prompt.py [--chunks 24] [--out pipelines/results/bench_llm_prompt.json]

Each setting starts a fresh embedded server (one slot, as ``generate`` runs it) and asks for questions on the same
SQuAD passages with the real request (system prompt, the two few-shot turns, the passage; 2 questions, the default
sampling). The server's own timings give, per chunk, the prompt tokens it evaluated and the milliseconds spent
on them and on the answer's tokens. ``cache_prompt`` is llama.cpp's per-request switch, on by default: with it, a
request evaluates only the tokens after the prefix it shares with the previous one. Writes the JSON with the
machine and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import urllib.request
from pathlib import Path

from rag_rerank.generate.prompts import build_messages
from rag_rerank.generate.server import EmbeddedLLMServer
from rag_rerank.io import write_json
from rag_rerank.rerank.backends.auto import machine_info

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "dev-v1.1.json"


def passages(n: int) -> list[str]:
    data = json.loads(SQUAD.read_text(encoding="utf-8"))["data"]
    return [p["context"] for art in data for p in art["paragraphs"]][:n]


def measure(chunks: list[str], cache_prompt: bool) -> dict[str, float]:
    rows = []
    with EmbeddedLLMServer() as server:
        url = server.base_url + "/chat/completions"
        start = time.perf_counter()
        for chunk in chunks:
            body = {"model": "embedded", "messages": build_messages(chunk, 2), "temperature": 0.2,
                    "max_tokens": 120, "seed": 0, "cache_prompt": cache_prompt}
            req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310 - loopback server we started
                rows.append(json.load(resp).get("timings", {}))
        wall = time.perf_counter() - start
    n = len(chunks)
    mean = {k: sum(r.get(k, 0.0) for r in rows) / n for k in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms")}
    return {"s_per_chunk": round(wall / n, 3), "prompt_tokens_evaluated": round(mean["prompt_n"], 1),
            "prompt_ms": round(mean["prompt_ms"], 1), "answer_tokens": round(mean["predicted_n"], 1),
            "answer_ms": round(mean["predicted_ms"], 1),
            "prompt_tokens_per_s": round(1000 * mean["prompt_n"] / max(mean["prompt_ms"], 1e-9), 1),
            "answer_tokens_per_s": round(1000 * mean["predicted_n"] / max(mean["predicted_ms"], 1e-9), 1),
            "prompt_share": round(mean["prompt_ms"] / max(mean["prompt_ms"] + mean["predicted_ms"], 1e-9), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=24, help="SQuAD passages asked per setting.")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "bench_llm_prompt.json")
    args = ap.parse_args()
    chunks = passages(args.chunks)
    result = {"chunks": len(chunks), "settings": {}}
    for name, cache in (("cache_prompt", True), ("no_cache_prompt", False)):
        result["settings"][name] = measure(chunks, cache)
        sys.stdout.write(f"{name}: {result['settings'][name]}\n")
    on, off = result["settings"]["cache_prompt"], result["settings"]["no_cache_prompt"]
    result["speedup_of_the_cache"] = round(off["s_per_chunk"] / on["s_per_chunk"], 2)
    result["machine"] = machine_info()
    result["command"] = "python " + " ".join(shlex.quote(a) for a in ["pipelines/bench_llm_prompt.py", *sys.argv[1:]])
    write_json(args.out, result)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
