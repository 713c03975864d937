"""Training-mechanics probe on SQuAD: listwise + fast head LR vs BCE, reranking BM25's top-20.

    .venv/bin/python pipelines/probe_training.py [--train-groups 300] [--val-queries 200] [--steps 75]

This measures the *mechanics* only and uses SQuAD's human questions for training (not the synthetic ones the
product trains on), so it is not a headline number. Train and validation questions come from disjoint
articles. Both losses start from embedded:minilm-ce and see the same groups (gold passage + 3 BM25 negatives
from ranks 2-30 + 1 random) for the same number of steps. Also measures training throughput (pairs/s: forward,
backward and AdamW step) at max_length 128 and 256. Writes pipelines/results/probe_training.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rag_rerank.evaluators import RerankingEvaluator
from rag_rerank.io import load_beir, write_json
from rag_rerank.training import GroupSoftmaxLoss, RerankerTrainingConfig, train_reranker

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "beir"


def tok(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def build(n_train: int, n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    from rank_bm25 import BM25Okapi

    corpus, queries, qrels = load_beir(SQUAD)
    ids = sorted(corpus)
    bm25 = BM25Okapi([tok(corpus[d]["title"] + " " + corpus[d]["text"]) for d in ids])
    titles = sorted({corpus[d]["title"] for d in ids})
    val_titles = set(titles[::4])  # a quarter of the articles are held out
    rng = random.Random(seed)
    qids = sorted(qrels)
    rng.shuffle(qids)
    train, val = [], []
    for qid in qids:
        gold = next(iter(qrels[qid]))
        is_val = corpus[gold]["title"] in val_titles
        if (is_val and len(val) >= n_val) or (not is_val and len(train) >= n_train):
            if len(val) >= n_val and len(train) >= n_train:
                break
            continue
        scores = bm25.get_scores(tok(queries[qid]))
        top = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:30]]
        if is_val:
            val.append({"query": queries[qid], "positive": [corpus[gold]["text"]],
                        "documents": [corpus[d]["text"] for d in top[:20]]})
        else:
            hard = [d for d in top[1:30] if d != gold]
            negs = rng.sample(hard, 3) + [rng.choice([d for d in ids if d != gold and d not in hard])]
            train.append({"query": queries[qid], "positive": corpus[gold]["text"],
                          "negatives": [corpus[d]["text"] for d in negs]})
    return train, val


def throughput(max_length: int, groups: list[dict], n_batches: int = 3, batch: int = 4) -> float:
    """Training pairs/s (forward + backward + AdamW step) of embedded:minilm-ce at ``max_length``."""
    import torch

    from rag_rerank.models import load_cross_encoder

    model = load_cross_encoder("embedded:minilm-ce", device="cpu", max_length=max_length)
    model.train()
    loss, opt = GroupSoftmaxLoss(model), torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(rows: list[dict]) -> None:
        cols = [[r["query"] for r in rows], [r["positive"] for r in rows]]
        cols += [[r["negatives"][j] for r in rows] for j in range(4)]
        opt.zero_grad()
        loss(cols).backward()
        opt.step()

    step(groups[:batch])  # warm-up
    t0 = time.perf_counter()
    for b in range(1, n_batches + 1):
        step(groups[b * batch:(b + 1) * batch])
    return n_batches * batch * 5 / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--train-groups", type=int, default=300)
    p.add_argument("--val-queries", type=int, default=200)
    p.add_argument("--steps", type=int, default=75)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    train, val = build(a.train_groups, a.val_queries, a.seed)
    ev = RerankingEvaluator(val, at_k=10, name="val", write_csv=False, show_progress_bar=False)
    fs = ev.first_stage_metrics()
    print(f"BM25 top-20 on {len(val)} held-out questions: MRR@10 {fs['val_base_mrr@10']:.4f}, "
          f"recall@20 {fs['val_base_recall@20']:.4f}; {len(train)} training groups", flush=True)
    common = dict(max_steps=a.steps, batch_size=a.batch_size, max_length=a.max_length, seed=a.seed,
                  eval_steps=10 ** 6, sanity_gate="warn", load_best_model_at_end=False, show_progress_bar=False)
    arms = {
        "listwise_headlr1e-3": RerankerTrainingConfig(loss="listwise", **common),
        # the failed recipe: pointwise BCE, one learning rate; same pairs (batch x 5) per step
        "bce_lr5e-5": RerankerTrainingConfig(loss="bce", head_learning_rate=None,
                                             **{**common, "batch_size": a.batch_size * 5}),
    }
    results: dict[str, dict] = {}
    for name, cfg in arms.items():
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            res = train_reranker("embedded:minilm-ce", train, output_dir=out, config=cfg, evaluator=ev)
            losses = [v for _, v in res.train_loss]
            results[name] = {
                "mrr@10": res.eval_after["val_mrr@10"], "ndcg@10": res.eval_after["val_ndcg@10"],
                "mrr@10_before": res.eval_before["val_mrr@10"],
                "ratio_mrr_vs_bm25": res.eval_after["val_mrr@10"] / fs["val_base_mrr@10"],
                "steps": res.steps, "train_pairs_seen": res.steps * a.batch_size * 5,
                "first_loss": losses[0], "last5_loss": float(np.mean(losses[-5:])),
                "gate_fired": res.collapsed, "verdict": res.verdict, "wall_s": time.perf_counter() - t,
            }
        print(name, json.dumps(results[name]), flush=True)
    tp = {f"pairs_per_s@{n}": throughput(n, train) for n in (128, 256)}
    print("throughput", tp, flush=True)
    out = {
        "command": "python " + " ".join(sys.argv), "note": "mechanics only; SQuAD human questions used for training",
        "val_queries": len(val), "train_groups": len(train), "max_length": a.max_length,
        "bm25": {"mrr@10": fs["val_base_mrr@10"], "ndcg@10": fs["val_base_ndcg@10"],
                 "recall@20": fs["val_base_recall@20"]},
        "arms": results, "throughput": tp, "wall_time_s": time.perf_counter() - t0,
    }
    write_json(Path(__file__).parent / "results" / "probe_training.json", out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
