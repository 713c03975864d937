"""What the consistency filter keeps: the synthetic training questions whose own chunk the first stage finds.

    python pipelines/consistency_filter.py --run runs/demo_base --run runs/squad_new/default

The consistency filter (InPars, Promptagator; ``MiningConfig.max_positive_rank``) keeps a synthetic question only
when one of its positives is in the tuned first stage's top k, on the view that a question its own chunk does not
answer well is noise. For each ``adapt`` run folder (finished through its ``mine`` stage), the training split is
mined again, as ``adapt`` mines it (the recipe's mining, the run's tuned first stage), at each ``--k``, and the
questions kept and dropped are counted, beside the rank histogram of the training questions' positives under the
tuned first stage (``none``: not in its top 30). No label and no real question is read: it measures only what
the filter would remove, which bounds what it can change.
Writes ``pipelines/results/consistency_filter.json`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rag_rerank.adaptation.runfolder import tuned_first_stage
from rag_rerank.cli import run_script
from rag_rerank.evaluate.metrics import gold_ranks, rank_histogram
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.io import write_json
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.retrieval.store import load_index
from rag_rerank.train.finetune import mine_split
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("consistency_filter")


def measure(run_dir: Path, ks: list[int], recipe_name: str) -> dict[str, Any]:
    recipe = get_recipe(recipe_name)
    first_stage = tuned_first_stage(run_dir, through="mine")  # its train_groups.jsonl too
    dataset = load_qa_dataset(run_dir / "dataset")
    index = load_index(run_dir / "index").with_fusion(**first_stage)
    _, _, qrels = dataset.split("train")
    out: dict[str, Any] = {"first_stage": first_stage, "train_questions": len(qrels), "by_k": {}}
    searched = mine_split(dataset, index, "train", mining=recipe.mining, group_size=recipe.training.train_group_size)
    out["rank_of_positive"] = rank_histogram(gold_ranks(searched.run, qrels), edges=(1, 3, 5, 10, 20, 30))
    out["groups_unfiltered"] = len(searched.groups)
    for k in ks:  # the same search, mined again with the filter at each depth
        mined = mine_split(dataset, index, "train", mining=dataclasses.replace(recipe.mining, max_positive_rank=k),
                           group_size=recipe.training.train_group_size, searched=searched)
        dropped = len(mined.mining.inconsistent)
        out["by_k"][str(k)] = {"dropped": dropped, "kept_share": round(1 - dropped / max(len(qrels), 1), 4),
                               "groups": len(mined.groups)}
        logger.info("%s, top %d: %d of %d training questions dropped", run_dir, k, dropped, len(qrels))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, action="append", required=True,
                    help="An adapt run folder finished through its mine stage (repeatable).")
    ap.add_argument("--k", type=int, action="append", help="Filter depths (repeatable; default 3, 5, 10, 20, 30).")
    ap.add_argument("--recipe", default="default", help="The recipe whose mining settings are used.")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "consistency_filter.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    ks = sorted(args.k or [3, 5, 10, 20, 30])
    result = {"recipe": args.recipe, "k": ks, "runs": {str(r): measure(r, ks, args.recipe) for r in args.run},
              "machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 1),
              "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/consistency_filter.py",
                                                                       *sys.argv[1:]])}
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    run_script(main)
