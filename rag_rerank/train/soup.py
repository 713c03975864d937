"""Checkpoint soup: the uniform weight average of several checkpoints of one training run, or of several fine-tunes
of one base model.

Averaging checkpoints along one trajectory (fairseq's ``average_checkpoints.py``; stochastic weight averaging)
often lands in a flatter region than any single checkpoint; averaging fine-tunes of one pretrained model that
differ only in their seed or settings is a "model soup" (Wortsman et al., 2022). Whether it helps a recipe is
measured, not assumed: choose it on the synthetic validation split.

The output loads with ``CrossEncoder(out)`` and ``AutoModelForSequenceClassification.from_pretrained(out)``:
every floating-point tensor of ``model.safetensors`` is the mean over the checkpoints (integer tensors, such as
position ids, must be equal and are copied); config, tokenizer and sentence-transformers files come from the
first checkpoint. Training state (optimizer, scheduler, RNG), checkpoints, evaluations, exported models and a
``fusion.json`` (each belongs to the weights it was made from) are not copied. Written atomically.

Example:
    >>> average_checkpoints(["ckpt-320", "ckpt-480", "ckpt-640"], "soup")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.io import atomic_dir

logger = logging.getLogger(__name__)

__all__ = ["average_checkpoints"]

_SKIP = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin", "README.md",
         "model.safetensors", "checkpoints", "eval", "onnx", "openvino", "fusion.json", "train_groups.jsonl"}


def _replaceable_model(path: Path) -> bool:
    return (path / "averaged_from.json").is_file()


def average_checkpoints(folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write the uniform weight average of ``folders`` (checkpoints of one model) to ``out_dir``.

    Raises:
        ConfigError: fewer than two checkpoints.
        DataError: a folder without ``model.safetensors``, or checkpoints of different models.
    """
    import torch
    from safetensors.torch import load_file, save_file

    paths = [Path(f) for f in folders]
    if len(paths) < 2:
        raise ConfigError(f"give at least two checkpoints to average, got {len(paths)}")
    states = []
    for f in paths:
        weights = f / "model.safetensors"
        if not weights.is_file():
            raise DataError(f"{f}: no model.safetensors (is it a checkpoint of a Hugging Face model?)")
        states.append(load_file(str(weights)))
    keys = set(states[0])
    for f, s in zip(paths[1:], states[1:], strict=True):
        if set(s) != keys:
            raise DataError(f"{f}: different tensors from {paths[0]}; only checkpoints of one model average")
    avg = {}
    for k in sorted(keys):
        ts = [s[k] for s in states]
        if ts[0].is_floating_point():
            avg[k] = torch.stack([t.float() for t in ts]).mean(0).to(ts[0].dtype).contiguous()
        else:
            if any(not torch.equal(ts[0], t) for t in ts[1:]):
                raise DataError(f"integer tensor {k} differs between checkpoints: not one training run")
            avg[k] = ts[0]
    out = Path(out_dir)
    with atomic_dir(out, replaceable=_replaceable_model, what="checkpoint soup") as tmp:
        for item in paths[0].iterdir():
            if item.name in _SKIP or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        save_file(avg, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "averaged_from.json").write_text(json.dumps([str(f) for f in paths], indent=2) + "\n")
    logger.info("averaged %d checkpoints (%d tensors) into %s", len(paths), len(avg), out)
    return out
