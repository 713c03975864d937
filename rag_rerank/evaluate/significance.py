"""Paired significance tests over queries: the bootstrap (with its CI) and the randomisation (sign-flip) test.

Both take per-query scores of two systems on the same queries (:func:`rag_rerank.evaluate.metrics.per_query`),
are vectorised in blocks and seeded, so the same inputs give the same result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from rag_rerank.errors import ConfigError

__all__ = ["BootstrapResult", "RandomizationResult", "paired_bootstrap", "paired_randomization"]



class BootstrapResult(NamedTuple):
    """Mean paired delta ``mean(a - b)``, its percentile CI and a two-sided p-value."""

    mean_delta: float
    ci95_lo: float
    ci95_hi: float
    p_value: float


class RandomizationResult(NamedTuple):
    """Mean paired delta ``mean(a - b)`` and the two-sided sign-flip p-value."""

    mean_delta: float
    p_value: float


_BLOCK_CELLS = 2_000_000  # resamples are drawn in blocks of about this many cells (16 MB of float64)
_EPS = 1e-12


def _deltas(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    if set(a) != set(b):
        only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
        raise ConfigError(
            f"paired tests need the same queries in both systems: {only_a} only in the first, "
            f"{only_b} only in the second; score both with per_query() on the same qrels"
        )
    if not a:
        raise ConfigError("paired tests need at least one query; both score dicts are empty")
    qids = sorted(a)
    return np.fromiter((a[q] - b[q] for q in qids), dtype=np.float64, count=len(qids))


def _blocks(n_resamples: int, n: int) -> Iterable[tuple[int, int]]:
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    step = max(1, _BLOCK_CELLS // n)
    for start in range(0, n_resamples, step):
        yield start, min(step, n_resamples - start)


def paired_bootstrap(
    a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = 10000, seed: int = 0
) -> BootstrapResult:
    """Paired bootstrap over queries of the delta ``mean(a[q] - b[q])``.

    The CI is the 2.5/97.5 percentile of the resampled means. The two-sided p-value uses the
    shifted bootstrap distribution as the null: ``(1 + #{|mean* - delta| >= |delta|}) / (R + 1)``.

    Args:
        a: per-query scores of the system under test (e.g. from :func:`per_query`).
        b: per-query scores of the baseline, over the same query ids.
        n_resamples: bootstrap resamples R (vectorised in blocks; 10k over 2,000 queries < 1 s).
        seed: numpy seed; the same inputs and seed give the same result.

    Example:
        >>> r = paired_bootstrap({"q1": 1.0, "q2": 0.5}, {"q1": 0.5, "q2": 0.5}, n_resamples=1000)
        >>> r.mean_delta
        0.25
    """
    d = _deltas(a, b)
    n, obs = len(d), float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start, m in _blocks(n_resamples, n):
        means[start : start + m] = d[rng.integers(0, n, size=(m, n), dtype=np.int32)].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    extreme = np.count_nonzero(np.abs(means - obs) >= abs(obs) - _EPS)
    return BootstrapResult(obs, float(lo), float(hi), float((1 + extreme) / (n_resamples + 1)))


def paired_randomization(
    a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = 10000, seed: int = 0
) -> RandomizationResult:
    """Paired randomisation (sign-flip) test of ``mean(a[q] - b[q])``, two-sided.

    Under the null the two systems are exchangeable per query, so each delta's sign is flipped at
    random; ``p = (1 + #{|mean*| >= |delta|}) / (R + 1)``.

    Example:
        >>> paired_randomization({"q1": 0.5}, {"q1": 0.5}, n_resamples=100).p_value
        1.0
    """
    d = _deltas(a, b)
    n, obs = len(d), float(d.mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    for _, m in _blocks(n_resamples, n):
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        extreme += int(np.count_nonzero(np.abs(signs @ d) / n >= abs(obs) - _EPS))
    return RandomizationResult(obs, float((1 + extreme) / (n_resamples + 1)))
