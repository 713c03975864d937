"""Average the weights of several checkpoints of one training run into a new model folder (a "checkpoint soup").

    python pipelines/average_checkpoints.py runs/squad_default/default/reranker/checkpoints/checkpoint-{320,480,640} \
        --out runs/squad_default/soup-320-480-640

A thin wrapper over :func:`rag_rerank.train.soup.average_checkpoints` (see there for what is averaged). Evaluate
the result with ``pipelines/squad_ablation.py`` next to the checkpoint it would replace, and choose on the
synthetic validation split.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rag_rerank.train.soup import average_checkpoints


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders of one training run")
    ap.add_argument("--out", type=Path, required=True, help="the averaged model folder to write")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    average_checkpoints(args.checkpoints, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
