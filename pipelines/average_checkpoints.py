"""Average the weights of several checkpoints of one training run into a new model folder (a "checkpoint soup").

    python pipelines/average_checkpoints.py runs/squad_benchmark/reranker/checkpoints/checkpoint-{320,480,640} \\
        --out runs/squad_benchmark/soup-320-480-640

Uniform averaging of checkpoints along one trajectory (fairseq's ``average_checkpoints.py``; stochastic weight
averaging) often lands in a flatter region than any single checkpoint. Whether it helps this recipe is measured,
not assumed: evaluate the result with ``pipelines/squad_ablation.py`` next to the checkpoint it would replace,
and choose on the synthetic validation split.

The output loads with ``CrossEncoder(out)`` and ``AutoModelForSequenceClassification.from_pretrained(out)``:
every floating-point tensor of ``model.safetensors`` is the mean over the checkpoints (integer tensors, such as
position ids, must be equal and are copied); config, tokenizer and sentence-transformers files come from the
first checkpoint. Training state (optimizer, scheduler, RNG) is not copied. Written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger("average_checkpoints")
SKIP = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin", "README.md",
        "model.safetensors"}


def average(folders: list[Path], out: Path) -> Path:
    """Write the uniform weight average of ``folders`` (same architecture) to ``out``."""
    if len(folders) < 2:
        raise SystemExit("give at least two checkpoints to average")
    states = []
    for f in folders:
        weights = f / "model.safetensors"
        if not weights.is_file():
            raise SystemExit(f"{f}: no model.safetensors (is it a checkpoint of a Hugging Face model?)")
        states.append(load_file(str(weights)))
    keys = set(states[0])
    for f, s in zip(folders[1:], states[1:], strict=True):
        if set(s) != keys:
            raise SystemExit(f"{f}: different tensors from {folders[0]}; only checkpoints of one model average")
    avg = {}
    for k in sorted(keys):
        ts = [s[k] for s in states]
        if ts[0].is_floating_point():
            avg[k] = torch.stack([t.float() for t in ts]).mean(0).to(ts[0].dtype).contiguous()
        else:
            if any(not torch.equal(ts[0], t) for t in ts[1:]):
                raise SystemExit(f"integer tensor {k} differs between checkpoints: not one training run")
            avg[k] = ts[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    for item in folders[0].iterdir():
        if item.name in SKIP or item.name.startswith("."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
    save_file(avg, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "averaged_from.json").write_text(json.dumps([str(f) for f in folders], indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("averaged %d checkpoints (%d tensors) into %s", len(folders), len(avg), out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders of one training run")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    average(args.checkpoints, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
