"""The seeds' legacy path on STS-b: InputExample(label=score/5) + fit + MSEEvaluator, as the source material does.

    .venv/bin/python pipelines/sts_legacy_fit.py [--base-model embedded:minilm-ce] [--train-n 2000] [--out DIR]

Uses rag_rerank.train.legacy.legacy_fit (sentence-transformers 6.2's own CrossEncoder.fit trains but never saves
to output_path). Writes {out}/mse_evaluation_sts-dev_results.csv and pipelines/results/sts_legacy_fit.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from sentence_transformers import InputExample
from torch.utils.data import DataLoader

from rag_rerank.io import write_json
from rag_rerank.models import load_cross_encoder
from rag_rerank.train.evaluators import MSEEvaluator
from rag_rerank.train.legacy import legacy_fit

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark"


def read_sts(path: Path) -> list[InputExample]:
    """Tab-separated, no header: genre, file, year, id, score (0-5), s1, s2 (later columns ignored)."""
    out = []
    with path.open(encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                out.append(InputExample(texts=[row[5], row[6]], label=float(row[4]) / 5.0))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-model", default="embedded:minilm-ce")
    p.add_argument("--train-n", type=int, default=2000)
    p.add_argument("--dev-n", type=int, default=500)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", default="/tmp/rag-rerank-sts-legacy")
    a = p.parse_args()
    t0 = time.perf_counter()
    train, dev = read_sts(STSB / "sts-train.csv")[: a.train_n], read_sts(STSB / "sts-dev.csv")[: a.dev_n]
    model = load_cross_encoder(a.base_model, max_length=a.max_length)
    evaluator = MSEEvaluator([ex.texts for ex in dev], [ex.label for ex in dev], name="sts-dev")
    before = evaluator(model)["sts-dev_mse"]
    dl = DataLoader(train, shuffle=True, batch_size=16)
    legacy_fit(model, train_dataloader=dl, evaluator=evaluator, epochs=a.epochs,
               warmup_steps=int(0.1 * len(dl) * a.epochs), output_path=a.out, evaluation_steps=max(1, len(dl) // 2))
    after = evaluator(load_cross_encoder(a.out))["sts-dev_mse"]
    res = {"command": " ".join(["python"] + sys.argv), "base_model": a.base_model, "train_pairs": len(train),
           "dev_pairs": len(dev), "dev_mse_before": before, "dev_mse_after_best": after,
           "ratio_after_vs_before": after / before, "csv": str(Path(a.out) / "mse_evaluation_sts-dev_results.csv"),
           "wall_time_s": time.perf_counter() - t0}
    write_json(Path(__file__).parent / "results" / "sts_legacy_fit.json", res)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
