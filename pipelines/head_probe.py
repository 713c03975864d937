"""Can a fitted head skip the plateau? Rank with heads fitted on the new cross-encoder's frozen features (LP-FT).

    python pipelines/head_probe.py --run runs/demo_base

Linear probing before fine-tuning (LP-FT, Kumar et al. 2022) fits a new head on frozen features first. Here the
features are those of ``embedded:minilm-ce`` (the MiniLM bi-encoder's weights, new head) on each training group's
(question, positive) and (question, negative) pairs, from an ``adapt`` run folder: the last layer's CLS vector
(what the sequence-classification head reads), the pooler's output, and the mean of the pair's tokens with the mean
of its passage tokens (which the head cannot read; an upper bound on what pooling could find). On each, a linear
head is fitted with the listwise loss on the groups (L-BFGS, three L2 weights), and for CLS also a pooler +
classifier head (AdamW, full batch). Each ranks the tuned first stage's top 20 of every synthetic validation
question; recorded: validation MRR@10 against the first stage's and a random head's. If the frozen features carry
little relevance signal, no fitted head removes the plateau and the encoder itself has to learn the interaction.
Writes ``pipelines/results/head_probe.json``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rag_rerank.adaptation.runfolder import tuned_first_stage
from rag_rerank.cli import run_script
from rag_rerank.evaluate.metrics import evaluate
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import iter_jsonl, write_json
from rag_rerank.models import load_cross_encoder
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.retrieval.store import load_index
from rag_rerank.train.finetune import validation_run
from rag_rerank.types import ranked

REPO = Path(__file__).resolve().parents[1]
GROUP = 5  # 1 positive + 4 negatives, the recipe's train_group_size


def features(ce, pairs: list[tuple[str, str]], max_length: int) -> dict[str, torch.Tensor]:
    """CLS, pooler output and [pair mean, passage mean] of the frozen encoder, per pair."""
    out: dict[str, list[torch.Tensor]] = {"cls": [], "pooler": [], "mean": []}
    bert = ce.model.base_model
    with torch.no_grad():  # not inference_mode: the heads are fitted with autograd on these tensors
        for i in range(0, len(pairs), 32):
            batch = pairs[i:i + 32]
            enc = ce.tokenizer([q for q, _ in batch], [d for _, d in batch], truncation="longest_first",
                               max_length=max_length, padding=True, return_tensors="pt")
            o = bert(**enc)
            h = o.last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            second = mask * enc["token_type_ids"].unsqueeze(-1).float()
            out["cls"].append(h[:, 0])
            out["pooler"].append(o.pooler_output.float())
            out["mean"].append(torch.cat([(h * mask).sum(1) / mask.sum(1),
                                          (h * second).sum(1) / second.sum(1).clamp(min=1)], 1))
    return {k: torch.cat(v) for k, v in out.items()}


def fit_linear(x: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear listwise head on standardised features: ``(weights, mean, std)``."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xn = ((x - mu) / sd).view(-1, GROUP, x.shape[1])
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")
    target = torch.zeros(xn.shape[0], dtype=torch.long)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xn @ w, target) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), mu, sd


def fit_head(x: torch.Tensor, epochs: int = 300) -> Callable[[torch.Tensor], torch.Tensor]:
    """A pooler (dense + tanh) + classifier head on standardised CLS features, listwise loss."""
    torch.manual_seed(0)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    head = torch.nn.Sequential(torch.nn.Linear(x.shape[1], x.shape[1]), torch.nn.Tanh(), torch.nn.Linear(x.shape[1], 1))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    xn = ((x - mu) / sd).view(-1, GROUP, x.shape[1])
    target = torch.zeros(xn.shape[0], dtype=torch.long)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(xn).squeeze(-1), target).backward()
        opt.step()
    return lambda v: head((v - mu) / sd).squeeze(-1)


def mrr_at_10(ranking: dict[str, list[str]], qrels: dict[str, dict[str, int]], scores: np.ndarray) -> float:
    """MRR@10 of ``scores`` (one per candidate, in ``ranking``'s order of questions and candidates), scored by the
    library's metrics (``rag_rerank.evaluate.metrics``) on the questions' qrels."""
    run, i = {}, 0
    for q, docs in ranking.items():
        run[q] = {d: float(scores[i + j]) for j, d in enumerate(docs)}
        i += len(docs)
    return evaluate(run, {q: qrels[q] for q in ranking}, ["mrr@10"])["mrr@10"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="An adapt run folder that has reached its mine stage.")
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "head_probe.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    first_stage = tuned_first_stage(args.run, through="mine")  # its train_groups.jsonl too
    index = load_index(args.run / "index").with_fusion(**first_stage)
    queries, qrels, corpus, run = validation_run(load_qa_dataset(args.run / "dataset"), index, top_k=20,
                                                 max_queries=None)
    # the first stage's top 20 of each validation question, in its order (questions with fewer are left out)
    ranking = {q: [d for d, _ in ranked(run.get(q, {}), 20)] for q in sorted(queries)}
    ranking = {q: docs for q, docs in ranking.items() if len(docs) == 20}
    samples = [{"query": queries[q], "documents": [corpus[d]["text"] for d in docs]} for q, docs in ranking.items()]
    groups = [r for r in iter_jsonl(args.run / "train_groups.jsonl") if len(r.get("negatives") or []) >= GROUP - 1]
    train_pairs = [(r["query"], d) for r in groups for d in [r["positive"], *r["negatives"][:GROUP - 1]]]
    ce = load_cross_encoder("embedded:minilm-ce", max_length=args.max_length)
    train = features(ce, train_pairs, args.max_length)
    valf = features(ce, [(s["query"], d) for s in samples for d in s["documents"]], args.max_length)
    first = mrr_at_10(ranking, qrels, -np.arange(20.0 * len(samples)))  # the first stage's own order
    with torch.inference_mode():
        random_head = ce.model.classifier(valf["pooler"]).squeeze(-1).numpy()
    rows = {"random_head": round(mrr_at_10(ranking, qrels, random_head), 4)}
    for name, x in train.items():
        for l2 in (1e-4, 1e-3, 1e-2):
            w, mu, sd = fit_linear(x, l2)
            fitted = (((valf[name] - mu) / sd) @ w).numpy()
            rows[f"{name}_linear_l2_{l2:g}"] = round(mrr_at_10(ranking, qrels, fitted), 4)
    head = fit_head(train["cls"])
    with torch.no_grad():
        rows["cls_pooler_classifier_head"] = round(mrr_at_10(ranking, qrels, head(valf["cls"]).numpy()), 4)
    result = {"run": str(args.run), "train_groups": len(groups), "val_questions": len(samples),
              "first_stage_mrr@10": round(first, 4), "val_mrr@10": rows,
              "best_fitted_vs_first_stage": round(max(v for k, v in rows.items() if k != "random_head") - first, 4),
              "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info(),
              "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/head_probe.py", *sys.argv[1:]])}
    write_json(args.out, result)
    sys.stdout.write(f"{rows}\nfirst stage {first:.4f}; wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    run_script(main)
