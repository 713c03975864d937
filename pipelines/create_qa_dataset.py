"""Step 1: a synthetic QA dataset from a folder of documents (thin wrapper over the library).

Usage:
    python pipelines/create_qa_dataset.py [DOCS_DIR] [--out out/qa] [--llm embedded] [--max-chunks 20]

Same as ``rag-rerank generate DOCS_DIR --out OUT``; rerun it to resume after a crash.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rag_rerank.qa_generation import create_qa_dataset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("docs_dir", nargs="?", default="sample_docs")
    ap.add_argument("--out", default="out/qa")
    ap.add_argument("--llm", default="embedded")
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--questions-per-chunk", type=int, default=2)
    ap.add_argument("--max-chunks", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    s = create_qa_dataset(
        args.docs_dir, args.out, llm=args.llm, base_url=args.base_url,
        questions_per_chunk=args.questions_per_chunk, max_chunks=args.max_chunks, seed=args.seed,
    )
    print(f"{s.n_questions} questions from {s.n_chunks} chunks; dropped {s.counts.get('dropped_by_reason')}")
    print(f"failed chunks: {len(s.failed_chunks)}; wrote {args.out}/")
    return 3 if s.failed_chunks else 0


if __name__ == "__main__":
    sys.exit(main())
