"""Where today's default's faster training step comes from: bf16 autocast and attention dropout off, apart.

    python pipelines/step_shares.py          # -> pipelines/results/step_shares.json

The default trains in bf16 (where the CPU computes bf16 natively) with no dropout on attention probabilities (so
PyTorch's fused attention kernel runs). Its step is several times faster than the 0.1 recipe's fp32 step with the
model's own attention dropout (0.1), and ``time_to_quality.json`` measured the two changes only together. This
times the four combinations of the same step, each as the budget probe times it (``calibrate.measure_step``: the
recipe's base model, batch of 8 groups of 1 + 4, 192 tokens, one warm-up step then ``--steps`` timed steps), on the
packaged sample documents' chunks, in ``--rounds`` rounds whose order alternates so that a drifting machine hits
every variant alike. Ratios are against the fp32 step with dropout (what a user gets without these two settings).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from rag_rerank.adaptation.calibrate import measure_step
from rag_rerank.generate.chunking import load_chunks
from rag_rerank.io import write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.train.config import training_precision
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "rag_rerank" / "data" / "sample_docs"
logger = logging.getLogger("step_shares")

VARIANTS = {  # name: (mixed_precision, attention_dropout); None keeps the model's own 0.1
    "fp32, dropout 0.1": ("no", None),
    "bf16, dropout 0.1": ("auto", None),
    "fp32, dropout off": ("no", 0.0),
    "bf16, dropout off (today's default)": ("auto", 0.0),
}
BASELINE = "fp32, dropout 0.1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="Timed steps per variant and round (after one warm-up).")
    ap.add_argument("--rounds", type=int, default=2, help="Rounds; the variants' order alternates between rounds.")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "step_shares.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    default = get_recipe("default")
    if training_precision("auto") != "bf16":
        raise SystemExit("this CPU has no native bf16 (AVX512_BF16 or AMX): the bf16 variants would run in fp32; "
                         "run this on a CPU that has it")
    base_model = default.base_model
    chunks, _ = load_chunks(DOCS, chunk_tokens=default.generation.chunk_tokens)
    texts = [c.text for c in chunks[:64]]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            precision, dropout = VARIANTS[name]
            recipe = replace(default, training=replace(default.training, mixed_precision=precision,
                                                       attention_dropout=dropout))
            s = measure_step(base_model, recipe, texts, steps=args.steps)
            times[name].append(round(s, 3))
            logger.info("round %d, %s: %.2f s/step", r + 1, name, s)
    base = statistics.mean(times[BASELINE])
    rows = {}
    for name, ts in times.items():
        mean = statistics.mean(ts)
        rows[name] = {"s_per_step": round(mean, 3), "rounds": ts,
                      "pairs_per_s": round(default.training.batch_size * default.training.train_group_size / mean, 2),
                      f"speedup_vs_{BASELINE}": round(base / mean, 2)}
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/step_shares.py", *sys.argv[1:]]),
        "what": "seconds per training step of today's default's reranker step (calibrate.measure_step), in the four "
                "combinations of precision and attention dropout, on the packaged sample documents' chunks",
        "base_model": default.base_model,
        "batch": {"groups": default.training.batch_size, "group_size": default.training.train_group_size,
                  "max_length": default.training.max_length},
        "steps_per_round": args.steps,
        "variants": rows,
        "machine": machine_info(),
    }
    write_json(args.out, result)
    for name, row in rows.items():
        sys.stdout.write(f"{name:38s} {row['s_per_step']:6.2f} s/step  {row[f'speedup_vs_{BASELINE}']:5.2f}x\n")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
