"""The embedded LLM server's throughput: alone, beside reranker training, and two runs at once, per setting.

    python pipelines/bench_llm_server.py [--chunks 40] [--out pipelines/results/bench_llm_server.json]

llama.cpp's worker threads busy-wait between jobs (``poll``), so two llama.cpp servers, or one beside a torch
training process, can slow each other down by far more than sharing the cores explains. For each server setting
this measures seconds per chunk (the real question-writing request: system prompt, few-shot turns, a SQuAD
passage) on the same chunks:

- ``lone``: the server alone;
- ``beside_training``: while a subprocess runs reranker training steps (MiniLM cross-encoder, batch 8 x 5 pairs,
  192 tokens, the default recipe's shape), whose seconds per step are measured too, alone and beside;
- ``two_runs``: two servers with the same setting, each asked the chunks at the same time.

It also checks that the answers are identical to the default setting's (determinism): with one slot they should
be, whatever the threads and polling. The rule the issue sets: next to other work, each side within 2.5x of its
lone speed. Writes the JSON with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rag_rerank.generate.llm import LLMClient, LLMSettings
from rag_rerank.generate.prompts import build_messages
from rag_rerank.generate.server import EmbeddedLLMServer
from rag_rerank.io import load_corpus, write_json
from rag_rerank.rerank.backends.auto import machine_info

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "beir" / "corpus.jsonl"
SETTINGS = {
    "default": {},
    "poll0": {"poll": 0},
    "poll0-threads1": {"poll": 0, "threads": 1},
    "cache256": {"cache_ram_mib": 256},
    "omp-passive": {"omp_passive": True},
    "omp-passive-poll0": {"omp_passive": True, "poll": 0},
}
TRAINER = """
import sys, time, torch
from rag_rerank.models import load_cross_encoder
from rag_rerank.train.losses import GroupSoftmaxLoss
torch.manual_seed(0)
model = load_cross_encoder("embedded:minilm-ce", max_length=192, device="cpu"); model.train()
loss_fn, opt = GroupSoftmaxLoss(model), torch.optim.AdamW(model.parameters(), lr=5e-5)
texts = [l.strip() for l in open(sys.argv[1], encoding="utf-8")][:64]
steps = 0
while True:
    start = time.perf_counter()
    cols = [[" ".join(t.split()[:12]) for t in texts[:8]]] + [texts[j * 8:(j + 1) * 8] for j in range(5)]
    opt.zero_grad(); loss_fn(cols).backward(); opt.step(); steps += 1
    print(f"{time.perf_counter() - start:.3f}", flush=True)
"""


def ask(server: EmbeddedLLMServer, chunks: list[str]) -> tuple[float, list[str]]:
    client = LLMClient(LLMSettings(model="embedded", base_url=server.base_url, temperature=0.2, max_tokens=120,
                                   seed=0, timeout=300))
    start, texts = time.perf_counter(), []
    for c in chunks:
        texts.append(client.complete(build_messages(c, 2)).text)
    return (time.perf_counter() - start) / len(chunks), texts


class Trainer:
    """Reranker training steps in a subprocess; ``seconds()`` gives the step times seen while it ran."""

    def __init__(self, texts_file: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(texts_file)], stdout=subprocess.PIPE,
                                     text=True)
        self.times: list[float] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.times.append(float(line))

    def warm(self, steps: int = 2) -> None:
        while len(self.times) < steps:
            time.sleep(0.2)

    def stop(self) -> list[float]:
        self.proc.kill()
        self.proc.wait()
        return self.times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=40, help="SQuAD passages asked per measurement.")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "bench_llm_server.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    corpus = load_corpus(SQUAD)
    chunks = [corpus[d]["text"] for d in sorted(corpus)[: args.chunks]]
    texts_file = args.out.with_suffix(".texts.tmp")
    texts_file.write_text("\n".join(corpus[d]["text"].replace("\n", " ") for d in sorted(corpus)[:64]))
    result: dict[str, Any] = {"chunks": len(chunks), "settings": {}}
    trainer = Trainer(texts_file)  # training alone first: its reference step time
    trainer.warm(2)
    time.sleep(30)
    alone = trainer.stop()[2:]
    result["training_lone_s_per_step"] = round(sum(alone) / len(alone), 3)
    reference: list[str] | None = None
    for name in args.settings:
        opts = SETTINGS[name]
        row: dict[str, Any] = {"options": opts}
        with EmbeddedLLMServer(**opts) as server:
            row["lone_s_per_chunk"], texts = ask(server, chunks)
            reference = reference or texts
            row["same_answers_as_default"] = texts == reference
            trainer = Trainer(texts_file)
            trainer.warm(1)
            n0 = len(trainer.times)
            row["beside_training_s_per_chunk"], _ = ask(server, chunks)
            steps = trainer.stop()[n0:]
        row["training_beside_s_per_step"] = round(sum(steps) / max(len(steps), 1), 3)
        with EmbeddedLLMServer(**opts) as a, EmbeddedLLMServer(**opts) as b:
            out: dict[str, float] = {}

            def run(server: EmbeddedLLMServer, key: str, out: dict[str, float] = out) -> None:
                out[key] = ask(server, chunks)[0]

            threads = [threading.Thread(target=run, args=(s, k)) for s, k in ((a, "a"), (b, "b"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        row["two_runs_s_per_chunk"] = [round(out["a"], 3), round(out["b"], 3)]
        lone = row["lone_s_per_chunk"]
        row["slowdown"] = {"beside_training": round(row["beside_training_s_per_chunk"] / lone, 2),
                           "training_beside": round(row["training_beside_s_per_step"]
                                                    / result["training_lone_s_per_step"], 2),
                           "two_runs": round(max(out.values()) / lone, 2)}
        row["within_2.5x"] = all(v <= 2.5 for v in row["slowdown"].values())
        row["lone_s_per_chunk"] = round(lone, 3)
        row["beside_training_s_per_chunk"] = round(row["beside_training_s_per_chunk"], 3)
        result["settings"][name] = row
        print(name, json.dumps(row["slowdown"]), "lone", row["lone_s_per_chunk"], flush=True)
    texts_file.unlink(missing_ok=True)
    result["machine"] = machine_info()
    result["command"] = "python " + " ".join(shlex.quote(a) for a in ["pipelines/bench_llm_server.py", *sys.argv[1:]])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
