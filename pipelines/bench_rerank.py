"""Benchmark reranking backends on CPU: sentence-transformers CrossEncoder.predict vs ours (torch, ONNX, OpenVINO).

Pairs: SQuAD dev queries with their BM25 top-20 / top-100 paragraphs, 256-token budget (pairs longer than
that are truncated exactly like ``CrossEncoder.predict``: ``long_documents="truncate"``).

Figures per model and backend (all in one process, same pairs):
- pairs/s over every timed call, and p50/p95 latency to rerank the top-20 and the top-100 of one query;
- ratio of pairs/s to the CrossEncoder.predict baseline;
- ranking parity vs our fp32 torch scores: Spearman pooled over all top-20 pairs and the per-query mean,
  plus MRR@10 of the reranked top-20 (qrels) and its difference to fp32 torch;
- FLOPs per pair and achieved GFLOP/s vs a torch fp32 GEMM peak measured here. FLOPs of one pair of S
  real (unpadded) tokens in an encoder with L layers, hidden H, intermediate I:
  ``2 * L * (4*H*H + 2*H*I) * S`` (Q, K, V, output and the two FFN matmuls) ``+ 4 * L * S*S * H``
  (Q K^T and attention x V); embeddings, norms, softmax and the head are ignored (< 1%).

Models: a MiniLM-L6 cross-encoder (384-d; ``--minilm-model``, default ``embedded:minilm-ce``, whose head is
untrained: pass a fine-tuned model folder to measure parity on the scores a user really ranks with) and a
bge-reranker-base-shaped model (XLM-R config, 12 layers, 768-d, random weights, MiniLM tokenizer so vocab_size
matches), built once into the rag-rerank cache.

``openvino-int8`` is calibrated on the model folder's ``train_groups.jsonl`` when it has one (what
``rag-rerank train`` writes), else on the BM25 top-16 of 16 SQuAD queries that are not timed.

Run:  .venv/bin/python pipelines/bench_rerank.py            (about 10 minutes on a quiet 2-core CPU)
      .venv/bin/python pipelines/bench_rerank.py --minilm-model runs/squad_default/default/reranker --minilm-queries 20
      python pipelines/bench_rerank.py --device cuda --backends st-predict torch torch-bf16 auto   (a GPU; see
      pipelines/bench_rerank_device.sh for the lent H200 machine's runs)

``auto`` is ``Reranker``'s default: it measures the installed backends on a probe of the model's own pairs and
keeps the fastest at parity; its row says which one it chose (``inference_precision``: "<backend>, <precision>").
The machine (CPU model, SIMD flags, threads, runtime versions) is recorded with the figures: they hold only there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rag_rerank.evaluate.metrics import evaluate
from rag_rerank.io import load_beir, write_json  # noqa: E402
from rag_rerank.models import cache_dir, load_cross_encoder, resolve_model_path  # noqa: E402
from rag_rerank.rerank.backends import BackendNotAvailableError
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.rerank.backends.base import available_cores, torch_threads
from rag_rerank.rerank.reranker import Reranker
from rag_rerank.retrieval import BM25Retriever
from rag_rerank.retrieval.common import doc_text

REPO = Path(__file__).resolve().parents[1]
SQUAD = Path(os.environ.get("RAG_RERANK_SHARED", REPO.parent / "shared")) / "data" / "squad" / "beir"
BACKENDS = ("st-predict", "torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8",
            "auto")
CALIBRATION_QUERIES = 16
BGE_SHAPED_VERSION = "v1"
logger = logging.getLogger("bench_rerank")


def bge_shaped_model() -> Path:
    """An XLM-R-base-shaped (bge-reranker-base dims) cross-encoder with random weights, built once."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    target = cache_dir() / f"bench-bge-reranker-base-shaped-{BGE_SHAPED_VERSION}"
    if (target / "config.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(str(resolve_model_path("embedded:minilm")), local_files_only=True)
    cfg = XLMRobertaConfig(
        vocab_size=tok.vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=2, pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(cfg).eval()
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def flops_per_pair(config: object, tokens: int) -> float:
    """Matmul FLOPs of one forward pass over ``tokens`` real tokens (see the module docstring)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 2.0 * layers * (4 * h * h + 2 * h * inter) * tokens + 4.0 * layers * tokens * tokens * h


def gemm_peak_gflops(threads: int, n: int = 1024, repeats: int = 10, device: str = "cpu") -> float:
    """Best fp32 torch matmul throughput (GFLOP/s) of an n x n x n GEMM with ``threads`` threads (on a GPU: of
    a 4096 GEMM, synchronised, with TF32 off as in the reranker's fp32 reference)."""
    import torch

    if device != "cpu":
        n = 4096
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    best = float("inf")
    with torch_threads(threads):
        torch.mm(a, b)
        sync()
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def squad_candidates(n_queries: int, top_k: int = 100) -> tuple[list[str], list[list[tuple[str, str]]], dict]:
    corpus, queries, qrels = load_beir(SQUAD)
    qids = sorted(queries)[:n_queries]
    run = BM25Retriever().index(corpus).search({q: queries[q] for q in qids}, top_k=top_k)
    lists = [[(d, doc_text(corpus[d])) for d in sorted(run[q], key=lambda d: (-run[q][d], d))] for q in qids]
    return qids, [[(queries[q], text) for _, text in docs] for q, docs in zip(qids, lists, strict=True)], {
        "qrels": qrels, "doc_ids": [[d for d, _ in docs] for docs in lists],
    }


def make_scorer(backend: str, model: str, max_length: int, threads: int, calibration: list | None = None,
                student: str | None = None, device: str = "cpu"):
    """A ``score(pairs) -> np.ndarray`` for ``backend``, and what it runs as: the inference precision (or None), and
    for ``auto`` the backend it chose. ``student-<backend>`` scores with ``student`` (``--student-model``) instead.

    On a GPU (``device="cuda"``), ``torch`` runs in fp32 (autocast off) so that it stays the parity reference;
    ``auto`` is ``Reranker``'s default there too: it measures fp32 torch against bf16 autocast on its probe."""
    if backend.startswith("student-"):
        backend, model = backend.removeprefix("student-"), student
    if backend == "st-predict":
        ce = load_cross_encoder(model, device=device, max_length=max_length)

        def score(pairs: list[tuple[str, str]]) -> np.ndarray:
            with torch_threads(threads):
                return np.asarray(ce.predict(pairs, batch_size=32, show_progress_bar=False), dtype=np.float32)

        return score, None
    rr = Reranker(model, backend=backend, device=device, max_length=max_length, long_documents="truncate",
                  cache_size=0, num_threads=threads, batch_size=32, calibration_pairs=calibration,
                  autocast=backend != "torch")
    # OpenVINO reports the precision it really runs at (bf16 only where the CPU has it natively)
    chose = rr.config.backend if backend == "auto" else None
    return rr.predict, (f"{chose}, {rr.effective_precision}" if chose else rr.effective_precision)


def bench_model(name: str, model: str, args: argparse.Namespace, n_queries: int, n_top100: int) -> dict:
    from scipy.stats import spearmanr
    from transformers import AutoConfig, AutoTokenizer

    n_timed = max(n_queries, n_top100)
    qids, lists, extra = squad_candidates(n_timed + CALIBRATION_QUERIES)
    calib_lists, qids, lists = lists[n_timed:], qids[:n_timed], lists[:n_timed]
    path = resolve_model_path(model, role="cross-encoder")
    own_calibration = (path / "train_groups.jsonl").is_file()
    calibration = None if own_calibration else [p for lst in calib_lists for p in lst[:16]]
    config = AutoConfig.from_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    calls = [("top20", lists[i][:20]) for i in range(n_queries)] + [("top100", lists[i]) for i in range(n_top100)]
    all_pairs = [p for _, pairs in calls for p in pairs]
    lengths = [len(ids) for ids in tok([q for q, _ in all_pairs], [d for _, d in all_pairs], truncation=True,
                                       max_length=args.max_length)["input_ids"]]
    total_flops = sum(flops_per_pair(config, n) for n in lengths)
    out: dict = {"model": model, "queries_top20": n_queries, "queries_top100": n_top100, "pairs_timed": len(all_pairs),
                 "mean_tokens_per_pair": float(np.mean(lengths)),
                 "gflops_per_pair_mean": total_flops / len(all_pairs) / 1e9,
                 "int8_calibration": "the model's train_groups.jsonl" if own_calibration else
                 f"BM25 top-16 of {CALIBRATION_QUERIES} untimed SQuAD queries", "backends": {}}
    top20_scores: dict[str, np.ndarray] = {}
    for backend in args.backends:
        if backend.startswith("student-") and name != "minilm":
            continue  # the student belongs to the MiniLM model
        t = time.perf_counter()
        try:
            score, precision = make_scorer(backend, model, args.max_length, args.threads,
                                           calibration if backend.endswith("openvino-int8") else None,
                                           student=args.student_model, device=args.device)
        except BackendNotAvailableError as e:  # e.g. torch-bf16 on a CPU without native bf16
            out["backends"][backend] = {"not_available": str(e).splitlines()[0]}
            logger.info("%s %s: not available here (%s)", name, backend, str(e).splitlines()[0])
            continue
        except Exception as e:  # noqa: BLE001 - e.g. an int8 quantiser that fails on this runtime's version
            out["backends"][backend] = {"not_available": f"failed: {type(e).__name__}: {str(e).splitlines()[0]}"}
            logger.warning("%s %s: failed here (%s: %s)", name, backend, type(e).__name__, str(e).splitlines()[0])
            continue
        load_s = time.perf_counter() - t
        score(calls[-1][1])  # warm-up on the largest call (every batch shape: a GPU tunes its kernels per shape)
        lat: dict[str, list[float]] = {"top20": [], "top100": []}
        q_scores = []
        for kind, pairs in calls:
            t = time.perf_counter()
            s = score(pairs)
            lat[kind].append(time.perf_counter() - t)
            if kind == "top20":
                q_scores.append(s)
        busy = sum(lat["top20"]) + sum(lat["top100"])
        top20_scores[backend] = np.concatenate(q_scores)
        row = {"load_or_export_s": round(load_s, 2), "pairs_per_s": len(all_pairs) / busy,
               "achieved_gflops": total_flops / busy / 1e9}
        if precision:
            row["inference_precision"] = precision
        for kind, vals in lat.items():
            if vals:
                row[f"{kind}_p50_ms"] = float(np.percentile(vals, 50) * 1e3)
                row[f"{kind}_p95_ms"] = float(np.percentile(vals, 95) * 1e3)
        run = {q: {d: float(x) for d, x in zip(extra["doc_ids"][i][:20], q_scores[i], strict=True)}
               for i, q in enumerate(qids[:n_queries])}
        row["mrr@10"] = evaluate(run, {q: extra["qrels"][q] for q in run}, ["mrr@10"])["mrr@10"]
        out["backends"][backend] = row
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        logger.info("%s %s: %s", name, backend, json.dumps(shown))
    base = out["backends"].get("st-predict", {}).get("pairs_per_s")
    ref = top20_scores.get("torch")
    for backend, row in out["backends"].items():
        if "not_available" in row:
            continue
        if base:
            row["speedup_vs_st_predict"] = row["pairs_per_s"] / base
        row["peak_fraction"] = row["achieved_gflops"] / args.gemm_peak
        if ref is not None:
            s = top20_scores[backend]
            row["spearman_vs_torch_pooled"] = float(spearmanr(ref, s)[0])
            row["spearman_vs_torch_per_query"] = float(np.mean(
                [spearmanr(ref[i : i + 20], s[i : i + 20])[0] for i in range(0, len(ref), 20)]))
            row["mrr@10_diff_vs_torch"] = row["mrr@10"] - out["backends"]["torch"]["mrr@10"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm-queries", type=int, default=5, help="queries timed at top-20 (MiniLM)")
    parser.add_argument("--minilm-top100-queries", type=int, default=1, help="queries timed at top-100 (MiniLM)")
    parser.add_argument("--bge-queries", type=int, default=2, help="queries timed at top-20 (bge-shaped)")
    parser.add_argument("--bge-top100-queries", type=int, default=0, help="queries timed at top-100 (bge-shaped)")
    parser.add_argument("--models", nargs="+", default=["minilm", "bge"], choices=["minilm", "bge"])
    parser.add_argument("--minilm-model", default="embedded:minilm-ce",
                        help="the MiniLM-class model: embedded:minilm-ce (untrained head) or a fine-tuned folder")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS),
                        choices=[*BACKENDS, *(f"student-{b}" for b in BACKENDS[1:])],
                        help="student-<backend>: the --student-model through that backend, timed and compared "
                             "with the MiniLM model's fp32 scores (ratios are against its CrossEncoder.predict)")
    parser.add_argument("--student-model", default=None, help="a distilled student of --minilm-model")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to time the GPU (torch backends only: the "
                        "exported ones serve on CPU)")
    parser.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "bench_rerank.json")
    args = parser.parse_args(argv)
    if any(b.startswith("student-") for b in args.backends) and not args.student_model:
        parser.error("student-* backends need --student-model")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("sentence_transformers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("rag_rerank.rerank.reranker").setLevel(logging.ERROR)  # truncation to 256 tokens is intended here
    started = time.perf_counter()
    args.gemm_peak = gemm_peak_gflops(args.threads, device=args.device)
    logger.info("torch fp32 GEMM peak: %.1f GFLOP/s on %s (%d threads)", args.gemm_peak, args.device, args.threads)
    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "threads": args.threads, "max_length": args.max_length, "gemm_peak_gflops": args.gemm_peak,
        "load_average_at_start": os.getloadavg(), "machine": machine_info(args.device), "device": args.device,
        "models": {},
    }
    if args.device != "cpu":
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
    if "minilm" in args.models:
        result["models"]["minilm"] = bench_model("minilm", args.minilm_model, args, args.minilm_queries,
                                                 args.minilm_top100_queries)
    if "bge" in args.models:
        result["models"]["bge-reranker-base-shaped"] = bench_model(
            "bge", str(bge_shaped_model()), args, args.bge_queries, args.bge_top100_queries)
    result["load_average_at_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - started
    write_json(args.out, result)
    logger.info("wrote %s in %.0f s", args.out, result["wall_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
