"""Helpers shared by the reranker backend tests: random (query, passage) pairs, private model copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

WORDS = (
    "the river runs north past the old mill while the capital city of france hosts a summer festival "
    "and farmers bring apples pears cheese bread to the market square every saturday morning"
).split()


def random_pairs(seed: int = 0, n: int = 24) -> list[tuple[str, str]]:
    """``n`` pairs: a 3-word question and a passage of 1 to 119 words, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 120, size=n)
    return [(f"what about {' '.join(rng.choice(WORDS, 3))}?", " ".join(rng.choice(WORDS, k))) for k in lengths]


def private_copy(model_dir: Path, parent: Path) -> Path:
    """Copy a model folder into ``parent/model``, so a test may write export caches beside it."""
    dst = parent / "model"
    shutil.copytree(model_dir, dst)
    return dst
