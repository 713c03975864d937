"""The typed result of a comparison: systems' metric means, paired deltas with CIs, and how it was measured.

:func:`compare` scores runs on the same queries against one or more baselines; :func:`rag_rerank.evaluate_systems`
builds the runs first and fills in the rest of :class:`EvaluationResult`. ``to_dict()`` gives the JSON that
``report.json`` holds and ``from_dict()`` reads it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from rag_rerank.errors import ConfigError
from rag_rerank.evaluate.metrics import DEFAULT_METRICS, Metric, parse_metric, per_query_many
from rag_rerank.evaluate.significance import paired_bootstrap, paired_randomization
from rag_rerank.types import Qrels, Run

__all__ = ["Delta", "EvaluationResult", "compare", "delta_key"]


@dataclass(frozen=True)
class Delta:
    """A paired difference ``mean(system - baseline)`` on one metric, with its bootstrap CI and p-values."""

    delta: float
    ci95: tuple[float, float]
    p: float
    p_randomization: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the 95% CI lies entirely on one side of 0."""
        return self.ci95[0] > 0 or self.ci95[1] < 0


def delta_key(system: str, baseline: str) -> str:
    """The key of a delta in :attr:`EvaluationResult.delta`: ``"<system>_vs_<baseline>"``."""
    return f"{system}_vs_{baseline}"


@dataclass
class EvaluationResult:
    """Systems compared on the same queries.

    Attributes:
        queries: evaluated queries (those with a relevant document).
        baselines: the systems every delta is measured against (the first is the main one).
        metrics: metric names, canonical (``mrr@10``, ...).
        n_resamples, seed: bootstrap / randomisation settings.
        systems: ``{system: {metric: mean}}``, in report order (the shipped system first when set).
        delta: ``{"<system>_vs_<baseline>": {metric: Delta}}``.
        systems_ci95: ``{system: {metric: [lo, hi]}}``, bootstrap CI of each mean.
        ceiling: the reranked first stage's recall@k / hit@k: no reranker of its top k can do better.
        gold_rank_histogram: ``{system: {rank bucket: queries}}``.
        timings_s: seconds per system (first stages: the search; reranked systems: the reranking alone).
        settings: how it was measured (index, models, depths, alphas, sample, seed, ...).
        shipped_system: the system a user gets (the adapted model's fused system), when known.
        command, wall_s: the command that produced it and its wall time, when known.
        extra: anything else a caller records (JSON-serialisable).
    """

    queries: int
    baselines: list[str]
    metrics: list[str]
    n_resamples: int
    seed: int
    systems: dict[str, dict[str, float]]
    delta: dict[str, dict[str, Delta]]
    systems_ci95: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    ceiling: dict[str, Any] = field(default_factory=dict)
    gold_rank_histogram: dict[str, dict[str, int]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    shipped_system: str | None = None
    command: str | None = None
    wall_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> str:
        """The main baseline (the first of :attr:`baselines`)."""
        return self.baselines[0]

    def get_delta(self, system: str, baseline: str | None = None, metric: str = "mrr@10") -> Delta:
        """The delta of ``system`` against ``baseline`` (default: the main one) on ``metric``.

        Raises:
            KeyError: naming the deltas there are.
        """
        key = delta_key(system, baseline or self.baseline)
        if key not in self.delta:
            raise KeyError(f"no delta {key!r}; this result has {sorted(self.delta)}")
        return self.delta[key][str(parse_metric(metric))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (what ``report.json`` holds); ``baseline`` is the main baseline."""
        out = asdict(self)
        out["delta"] = {k: {m: {**asdict(d), "ci95": list(d.ci95)} for m, d in v.items()}
                        for k, v in self.delta.items()}
        out["baseline"] = self.baseline
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationResult:
        """Read back :meth:`to_dict`'s output (e.g. a ``report.json``)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["delta"] = {k: {m: Delta(d["delta"], tuple(d["ci95"]), d["p"], d.get("p_randomization", d["p"]))
                               for m, d in v.items()} for k, v in data["delta"].items()}
        kwargs.setdefault("baselines", [data.get("baseline", "hybrid")])
        return cls(**kwargs)


def compare(
    runs: Mapping[str, Run],
    qrels: Qrels,
    baseline: str | Sequence[str] = "hybrid",
    metrics: Iterable[str | Metric] = DEFAULT_METRICS,
    n_resamples: int = 10000,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] = (),
) -> EvaluationResult:
    """Score several systems on the same queries, with paired deltas against one or more baselines.

    Args:
        runs: ``{system: run}``.
        qrels: the judgements; queries without a relevant document are not scored.
        baseline: the system (or systems) every delta is measured against; a baseline is not compared with
            itself, nor with the baselines listed before it.
        metrics, n_resamples, seed: what to score and the paired tests' settings.
        pairs: extra ``(system, baseline)`` deltas to compute (e.g. a shipped system that *is* a baseline, against
            itself: a delta of exactly 0 with a CI of [0, 0], stated rather than left out).

    Example:
        >>> qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
        >>> runs = {"hybrid": {"q1": {"a": 1.0}}, "tuned": {"q1": {"a": 1.0}, "q2": {"b": 1.0}}}
        >>> out = compare(runs, qrels, metrics=["mrr@10"], n_resamples=200)
        >>> out.systems["tuned"], out.get_delta("tuned").delta
        ({'mrr@10': 1.0}, 0.5)
    """
    baselines = [baseline] if isinstance(baseline, str) else list(baseline)
    missing = [b for b in baselines if b not in runs]
    if not baselines or missing:
        raise ConfigError(f"baseline {missing or baselines} is not among the runs {sorted(runs)}; pass one of them")
    parsed = [parse_metric(m) for m in metrics]
    scores = {name: per_query_many(run, qrels, parsed) for name, run in runs.items()}
    names = [str(m) for m in parsed]
    systems = {
        name: {m: (float(np.mean(list(pq[m].values()))) if pq[m] else 0.0) for m in names}
        for name, pq in scores.items()
    }
    n_queries = len(scores[baselines[0]][names[0]]) if names else 0
    delta: dict[str, dict[str, Delta]] = {}
    todo = [(name, base) for i, base in enumerate(baselines) for name in runs if name not in baselines[: i + 1]]
    todo += [p for p in pairs if p not in todo]
    for name, base in todo if n_queries else ():
        entry = {}
        for m in names:
            bs = paired_bootstrap(scores[name][m], scores[base][m], n_resamples, seed)
            rt = paired_randomization(scores[name][m], scores[base][m], n_resamples, seed)
            entry[m] = Delta(bs.mean_delta, (bs.ci95_lo, bs.ci95_hi), bs.p_value, rt.p_value)
        delta[delta_key(name, base)] = entry
    return EvaluationResult(queries=n_queries, baselines=baselines, metrics=names, n_resamples=n_resamples,
                            seed=seed, systems=systems, delta=delta)
