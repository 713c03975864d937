"""The embedded LLM's weights as packaged (Q4_1) against a Q8_0 copy of them: speed and questions (not adopted).

    python pipelines/bench_llm_quant.py --max-chunks 300

llama.cpp has fast CPU matrix kernels (llamafile's sgemm) for Q8_0 and none for Q4_1, and reading the prompt is 70%
of a generated chunk's time (``bench_llm_prompt.json``), so serving a Q8_0 copy of ``embedded:smollm2`` looked like
a free speed-up of generation. The copy (:func:`requantise_q8_0`, into ``--work``) holds the same model to within
rounding, but the answers differ token by token, so this measures what it does to the questions as well as to the
time.

For each file, the same seeded chunks of SQuAD v1.1 dev (``../shared/data/squad/beir``, exported as documents) are
asked with the default recipe's generation settings, one file after the other, each into a fresh folder (every chunk
really asked). Recorded per file: LLM seconds per chunk (the chunks' own time, not the server's start), the
questions kept and the chunks that got none, why candidates were dropped, and a label-free check of the kept
questions: the MRR@10 of each question's own chunk under BM25 over the whole corpus (a question specific to its
chunk finds it). Paired by chunk: kept questions per chunk, Q8_0 minus Q4_1, with a bootstrap CI. Nothing here
trains. Writes ``pipelines/results/bench_llm_quant.json`` with the machine and the command. Needs ``gguf`` (in the
``dev`` extra).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rag_rerank.evaluate.metrics import per_query
from rag_rerank.evaluate.significance import paired_bootstrap
from rag_rerank.generate.dataset import create_qa_dataset
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import export_documents, load_corpus, write_json
from rag_rerank.models import resolve_model_path
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.retrieval.bm25 import BM25Retriever
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "beir"


def requantise_q8_0(source: Path, target: Path) -> Path:
    """Dequantise every Q4_1 tensor of a GGUF file and requantise it to Q8_0; copy the rest and all metadata.

    Every Q4_1 weight is ``d * q + m`` with 16 levels per block of 32; Q8_0 stores the block with 255 levels, so the
    copy's rounding error is a small fraction of the packaged file's own. Written to a temporary file and renamed.
    """
    import gguf
    import numpy as np
    from gguf import quants

    kinds = gguf.GGMLQuantizationType
    reader = gguf.GGUFReader(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    writer = gguf.GGUFWriter(tmp, reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    for f in reader.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    for t in reader.tensors:
        if t.tensor_type == kinds.Q4_1:
            weights = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            writer.add_tensor(t.name, quants.quantize(weights, kinds.Q8_0), raw_dtype=kinds.Q8_0)
        else:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(target)
    return target


def _measure(name: str, gguf: Path, docs: Path, out: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    shutil.rmtree(out, ignore_errors=True)  # every chunk asked now, in this run
    summary = create_qa_dataset(docs, out, llm=str(gguf), seed=args.seed, max_chunks=args.max_chunks,
                                show_progress_bar=False, retry_failed=False,
                                **get_recipe("default").generation.kwargs())
    data = load_qa_dataset(out)
    counts, timings = data.manifest["counts"], data.manifest["timings"]
    qrels = {q: t for split in data.qrels.values() for q, t in split.items()}
    kept_by_chunk = {chunk: 0.0 for chunk, _ in summary.failed_chunks}  # every selected chunk, with or without
    for q in qrels:
        chunk = next(iter(qrels[q]))
        kept_by_chunk[chunk] = kept_by_chunk.get(chunk, 0.0) + 1.0
    bm25 = BM25Retriever().index(data.corpus, show_progress_bar=False)
    own = per_query(bm25.search({q: data.queries[q] for q in qrels}, top_k=10, show_progress_bar=False),
                    qrels, "mrr@10")
    n = summary.n_chunks
    row = {"file": gguf.name, "chunks": n, "requests": timings["requests_this_run"],
           "llm_s_per_chunk": round(timings["chunks_seconds"] / max(timings["requests_this_run"], 1), 3),
           "kept": counts["kept"], "kept_per_chunk": round(counts["kept"] / max(n, 1), 3),
           "chunks_without_question": len(summary.failed_chunks),
           "dropped_by_reason": counts["dropped_by_reason"], "per_split": counts["per_split"],
           "own_chunk_bm25_mrr@10": round(sum(own.values()) / max(len(own), 1), 4),
           "chunks_seconds": timings["chunks_seconds"]}
    sys.stdout.write(f"{name}: {row}\n")
    return row, kept_by_chunk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chunks", type=int, default=300, help="Seeded chunks asked per file.")
    ap.add_argument("--seed", type=int, default=7, help="A seed no earlier run cached answers for.")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_llm_quant")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "bench_llm_quant.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    docs = args.work / "docs"
    export_documents(load_corpus(SQUAD / "corpus.jsonl"), docs)
    packaged = resolve_model_path("embedded:smollm2", "llm")
    files = {"q4_1_packaged": packaged, "q8_0_copy": requantise_q8_0(packaged, args.work / "smollm2-q8_0.gguf")}
    rows: dict[str, Any] = {}
    kept: dict[str, dict[str, float]] = {}
    for name, gguf in files.items():
        rows[name], kept[name] = _measure(name, gguf, docs, args.work / name, args)
    base, new = rows["q4_1_packaged"], rows["q8_0_copy"]
    chunks = sorted(set(kept["q4_1_packaged"]) | set(kept["q8_0_copy"]))  # the same seeded selection
    paired = paired_bootstrap({c: kept["q8_0_copy"].get(c, 0.0) for c in chunks},
                              {c: kept["q4_1_packaged"].get(c, 0.0) for c in chunks})
    comparison = {
        "speedup_per_chunk": round(base["llm_s_per_chunk"] / max(new["llm_s_per_chunk"], 1e-9), 3),
        "kept_per_chunk_delta": round(paired.mean_delta, 4),
        "kept_per_chunk_delta_ci95": [round(paired.ci95_lo, 4), round(paired.ci95_hi, 4)],
        "chunks_paired": len(chunks), "chunks_asked": base["chunks"],
        "own_chunk_bm25_mrr@10_delta": round(new["own_chunk_bm25_mrr@10"] - base["own_chunk_bm25_mrr@10"], 4),
    }
    sys.stdout.write(f"comparison: {comparison}\n")
    write_json(args.out, {"corpus": str(SQUAD.relative_to(REPO.parent)), "seed": args.seed,
                          "max_chunks": args.max_chunks, "generation": get_recipe("default").generation.kwargs(),
                          "files": rows, "comparison": comparison, "machine": machine_info(),
                          "wall_s": round(time.perf_counter() - t0, 1),
                          "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/bench_llm_quant.py",
                                                                                   *sys.argv[1:]])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
