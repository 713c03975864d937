"""What ``make demo`` costs and ships on this machine: one fresh run of ``rag-rerank demo``, timed end to end.

    python pipelines/demo_check.py          # -> pipelines/results/demo.json

The demo's run folder is emptied first, so nothing is reused from an earlier run (the packaged models and the
embedding cache are setup, as after ``make setup``). Recorded: the wall time of the whole command (adapt and the
answer), adapt's stage times, the shipped system, the validation verdict and the held-out synthetic test split's
gains of the shipped system over the tuned first stage and over the RRF hybrid, with their 95% CIs, and the machine.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rag_rerank.io import read_json, write_json
from rag_rerank.rerank.backends.auto import machine_info

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "demo_check", help="The demo's run folder (emptied).")
    ap.add_argument("--out", type=Path, default=REPO / "pipelines" / "results" / "demo.json")
    ap.add_argument("--recipe", default="default", help="The recipe the demo runs (rag-rerank demo --recipe).")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rag_rerank", "demo", "--out", str(args.work), "--recipe",
                           args.recipe], capture_output=True, text=True, check=False)
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"rag-rerank demo failed with exit status {proc.returncode} (output above)")
    summary = read_json(args.work / "summary.json")
    test = summary["test"]
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["pipelines/demo_check.py", *sys.argv[1:]]),
        "wall_s": wall,
        "recipe": args.recipe,
        "stage_wall_s": summary["stage_wall_s"],
        "shipped_system": summary["shipped_system"],
        "verdict": summary["verdict"],
        "data": summary["data"],
        "training": summary["training"],
        "test_queries": test["queries"],
        "shipped_vs_first_stage": test.get("shipped_vs_first_stage"),
        "shipped_vs_hybrid": test.get("shipped_vs_hybrid"),
        "test_systems": test["systems"],
        "machine": machine_info(),
        "last_lines": proc.stdout.strip().splitlines()[-4:],
    }
    write_json(args.out, result)
    sys.stdout.write(f"demo: {wall:.0f} s; shipped {result['shipped_system']}; {result['verdict']}\nwrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
