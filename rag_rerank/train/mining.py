"""Hard-negative mining from a first-stage ``Run``, with false-negative guards.

For every query with a relevant chunk, the first stage's ranking (``(-score, doc_id)``) is walked and
each candidate is removed by the *first* guard that applies, in this order:

1. ``positive``: it is relevant in the qrels (at any rank);
2. ``outside_window``: its rank is outside ``[rank_min, rank_max]`` (1-based, inclusive);
   ``outside_pool``: with ``negative_pool="positives"``, it is no query's positive (see below);
3. ``neighbor``: same ``doc_id`` as a positive and ``|position - positive position| <= N``;
4. ``overlap``: its text near-duplicates a positive's (token-set Jaccard, or a shared run of
   ``overlap_ngram`` words: sliding-window chunking makes such pairs);
5. ``margin``: its score is above ``positive_score - |positive_score| * relative_margin``
   (TopK-PercPos, as in sentence-transformers' ``mine_hard_negatives`` and NV-Retriever).

The survivors are the hard negatives; ``num_random`` random chunks from the rest of the corpus are
appended (training only on hard negatives hurts, sentence-transformers#3085).

``negative_pool="positives"`` takes negatives (hard and random) only among chunks that are some mined query's
positive. A chunk that got no question (a held-out split's chunk, one outside ``--max-chunks``, one whose
questions were all filtered) is then never shown to the reranker at all, rather than only ever as a negative:
otherwise the model can learn a prior against those chunks themselves, whatever the question. The report counts what
each guard removed, so ``candidates_considered == sum(removed_*) + candidates_kept`` (over the queries kept: the
optional consistency filter, ``max_positive_rank``, drops a whole query before its candidates are considered).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tqdm.auto import tqdm

from rag_rerank.errors import ConfigError
from rag_rerank.types import Qrels, Run, ranked

logger = logging.getLogger(__name__)

__all__ = ["MiningConfig", "MiningResult", "mine_hard_negatives"]

ChunkMeta = Mapping[str, Mapping[str, Any]]
_WORD = re.compile(r"\w+")
_REPORT_KEYS = (
    "queries", "queries_without_positive", "queries_missing_from_run", "run_queries_ignored",
    "queries_positive_not_in_run", "candidates_considered", "removed_positive", "removed_outside_window",
    "removed_outside_pool", "removed_neighbor", "removed_overlap", "removed_margin", "candidates_kept",
    "hard_negatives", "random_negatives", "random_rejected", "queries_short_of_hard", "queries_short_of_random",
    "dropped_inconsistent",
)


@dataclass(frozen=True)
class MiningConfig:
    """Settings of :func:`mine_hard_negatives`.

    Attributes:
        rank_min: first rank (1-based, inclusive) of the first-stage ranking to take negatives from;
            the default 2 skips rank 1, the most likely unlabeled positive.
        rank_max: last rank (inclusive). A run shorter than this simply yields fewer candidates.
        num_negatives: hard negatives per query (fewer when the guards leave fewer).
        num_random: random negatives per query, drawn from the rest of the corpus and passed through
            the positive/neighbor/overlap guards. They follow the hard ones, and a training group keeps its first
            ``group_size - 1`` negatives (:func:`rag_rerank.train.groups.build_groups`): with ``num_negatives >=
            group_size - 1`` they only pad a query left with fewer hard ones.
        relative_margin: drop candidates scoring above ``p - |p| * relative_margin``, where ``p`` is
            the lowest known positive score (``None`` disables). On cosine scores 0.05 means "at least
            5% below the positive". On RRF scores, which are rank-based and packed in a narrow band,
            the guard drops every candidate ranked above the positive plus those a few ranks below it;
            pass ``margin_scores`` (e.g. the dense run) to apply the margin on cosine scores instead.
            When the positive is not in the scored list the guard does nothing for that query.
        exclude_same_doc_neighbors: drop chunks within +/- N positions of a positive in the same
            document (0 disables; chunks without ``doc_id``/``position`` are never dropped).
        exclude_overlap: apply the text-overlap guard.
        overlap_jaccard: token-set Jaccard at or above which a chunk counts as a near-duplicate.
        overlap_ngram: a shared run of this many consecutive words counts as overlap (0 disables).
        sampling_strategy: ``"top"`` takes the best-ranked survivors, ``"random"`` samples among them
            (then keeps rank order).
        seed: seed of every random choice; each query has its own generator, so a query's
            negatives do not depend on which other queries are mined.
        max_positive_rank: the consistency filter (InPars, Promptagator): a query none of whose positives is in
            the first stage's top ``max_positive_rank`` is dropped from training (``inconsistent`` in the result,
            ``dropped_inconsistent`` in the report). A synthetic question its own chunk does not answer (off
            topic, garbled, copied from a prompt example) is rarely retrieved for it; ``None`` keeps every query.
        negative_pool: ``None``: negatives from every chunk; ``"positives"``: only from chunks that are some
            mined query's positive, so no chunk is seen only as a negative (see the module docstring).

    Example:
        >>> MiningConfig(rank_max=50, num_negatives=7).rank_min
        2
    """

    rank_min: int = 2
    rank_max: int = 30
    num_negatives: int = 4
    num_random: int = 1
    relative_margin: float | None = 0.05
    exclude_same_doc_neighbors: int = 1
    exclude_overlap: bool = True
    overlap_jaccard: float = 0.6
    overlap_ngram: int = 12
    sampling_strategy: Literal["top", "random"] = "top"
    seed: int = 0
    max_positive_rank: int | None = None
    negative_pool: Literal["positives"] | None = None

    def __post_init__(self) -> None:
        if self.rank_min < 1 or self.rank_max < self.rank_min:
            raise ConfigError(
                f"rank window [{self.rank_min}, {self.rank_max}] is invalid; need 1 <= rank_min <= rank_max"
            )
        for name in ("num_negatives", "num_random", "exclude_same_doc_neighbors", "overlap_ngram"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.relative_margin is not None and not 0 <= self.relative_margin <= 1:
            raise ConfigError(f"relative_margin must be in [0, 1] or None, got {self.relative_margin}")
        if not 0 < self.overlap_jaccard <= 1:
            raise ConfigError(f"overlap_jaccard must be in (0, 1], got {self.overlap_jaccard}")
        if self.max_positive_rank is not None and self.max_positive_rank < 1:
            raise ConfigError(f"max_positive_rank must be >= 1 or None, got {self.max_positive_rank}")
        if self.negative_pool not in (None, "positives"):
            raise ConfigError(f"negative_pool must be None (the whole corpus) or 'positives', got "
                              f"{self.negative_pool!r}")
        if self.sampling_strategy not in ("top", "random"):
            raise ConfigError(f"sampling_strategy must be 'top' or 'random', got {self.sampling_strategy!r}")


@dataclass(frozen=True)
class MiningResult:
    """What :func:`mine_hard_negatives` found.

    Attributes:
        negatives: ``{qid: [chunk_id, ...]}``, hard negatives in rank order then random ones; no
            duplicates, never a positive. Every mined query is present (possibly with ``[]``).
        num_hard: ``{qid: number of leading entries of negatives[qid] that are hard}``.
        report: counts per guard and per shortfall (see the module docstring).
        config: the settings used.
        inconsistent: queries the consistency filter dropped (``config.max_positive_rank``); they get no
            negatives and must not be trained on.
    """

    negatives: dict[str, list[str]]
    num_hard: dict[str, int]
    report: dict[str, int]
    config: MiningConfig = field(default_factory=MiningConfig)
    inconsistent: frozenset[str] = frozenset()

    def summary(self) -> str:
        """A few lines for logs and the CLI."""
        r = self.report
        return (
            f"mined {r['hard_negatives']} hard + {r['random_negatives']} random negatives for {r['queries']} "
            f"queries; of {r['candidates_considered']} candidates the guards removed: "
            f"positive {r['removed_positive']}, outside window {r['removed_outside_window']}, "
            + (f"outside pool {r['removed_outside_pool']}, " if self.config.negative_pool else "")
            + f"neighbor {r['removed_neighbor']}, overlap {r['removed_overlap']}, margin {r['removed_margin']}; "
            f"{r['queries_short_of_hard']} queries got fewer than {self.config.num_negatives} hard negatives"
            + (f"; the consistency filter dropped {r['dropped_inconsistent']} queries whose positive is not in the "
               f"first stage's top {self.config.max_positive_rank}" if self.config.max_positive_rank else "")
        )


class _Guards:
    """Neighbor and overlap checks against a query's positives, with per-chunk text features cached."""

    def __init__(self, chunk_meta: ChunkMeta, config: MiningConfig) -> None:
        self.meta, self.cfg = chunk_meta, config
        self._features: dict[str, tuple[frozenset, frozenset] | None] = {}

    def _feat(self, cid: str) -> tuple[frozenset, frozenset] | None:
        if cid not in self._features:
            text = (self.meta.get(cid) or {}).get("text")
            if not text:
                self._features[cid] = None
            else:
                toks = _WORD.findall(str(text).lower())
                n = self.cfg.overlap_ngram
                grams = frozenset(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)) if n else frozenset()
                self._features[cid] = (frozenset(toks), grams)
        return self._features[cid]

    def neighbor(self, cid: str, positives: list[str]) -> bool:
        n = self.cfg.exclude_same_doc_neighbors
        m = self.meta.get(cid) or {}
        if n == 0 or m.get("doc_id") is None or m.get("position") is None:
            return False
        for p in positives:
            pm = self.meta.get(p) or {}
            if pm.get("doc_id") == m["doc_id"] and pm.get("position") is not None:
                if abs(int(pm["position"]) - int(m["position"])) <= n:
                    return True
        return False

    def overlap(self, cid: str, positives: list[str]) -> bool:
        if not self.cfg.exclude_overlap or (f := self._feat(cid)) is None:
            return False
        for p in positives:
            if (pf := self._feat(p)) is None:
                continue
            union = len(f[0] | pf[0])
            if union and len(f[0] & pf[0]) / union >= self.cfg.overlap_jaccard:
                return True
            if f[1] and not f[1].isdisjoint(pf[1]):
                return True
        return False


def mine_hard_negatives(
    run: Run,
    qrels: Qrels,
    chunk_meta: ChunkMeta,
    config: MiningConfig | None = None,
    margin_scores: Run | None = None,
    show_progress_bar: bool | None = None,
) -> MiningResult:
    """Mine hard (and random) negatives per query from a first-stage run.

    Args:
        run: first-stage ``{qid: {chunk_id: score}}`` over the dataset's corpus (e.g. hybrid top-100).
        qrels: ``{qid: {chunk_id: relevance}}``; relevance > 0 is a positive. Queries with no
            positive are skipped; run queries absent from the qrels are ignored; qrels queries
            absent from the run get random negatives only.
        chunk_meta: ``{chunk_id: {"doc_id", "position", "text", ...}}``
            (see :func:`rag_rerank.train.groups.load_chunk_meta`); its keys are the pool for random negatives.
            Missing fields only disable the guard needing them.
        config: mining settings (defaults: ranks 2-30, 4 hard + 1 random, 5% margin).
        margin_scores: optional run whose scores the margin guard uses instead of ``run``'s (e.g.
            dense cosine scores while ranking by RRF). Candidates it lacks are not margin-filtered.
        show_progress_bar: show a tqdm bar; ``None`` shows it when logging is at INFO or lower.

    Returns:
        A :class:`MiningResult`.

    Example:
        >>> run = {"q": {"p": 0.9, "a": 0.8, "b": 0.7, "c": 0.1}}
        >>> meta = {d: {"text": t} for d, t in [("p", "x"), ("a", "y"), ("b", "z"), ("c", "w"), ("r", "v")]}
        >>> res = mine_hard_negatives(run, {"q": {"p": 1}}, meta, MiningConfig(num_negatives=2, num_random=1))
        >>> res.negatives["q"][:2], res.num_hard["q"]
        (['a', 'b'], 2)
    """
    cfg = config or MiningConfig()
    guards = _Guards(chunk_meta, cfg)
    pool = sorted(chunk_meta)
    allowed: set[str] | None = None
    if cfg.negative_pool == "positives":
        allowed = {d for rels in qrels.values() for d, r in rels.items() if r > 0}
        pool = sorted(d for d in pool if d in allowed)
    report = dict.fromkeys(_REPORT_KEYS, 0)
    report["run_queries_ignored"] = sum(1 for q in run if q not in qrels)
    negatives: dict[str, list[str]] = {}
    num_hard: dict[str, int] = {}
    inconsistent: set[str] = set()
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
    for q in tqdm(qrels, desc="Mining negatives", disable=not show_progress_bar):
        positives = sorted(d for d, r in qrels[q].items() if r > 0)
        if not positives:
            report["queries_without_positive"] += 1
            continue
        report["queries"] += 1
        pos_set = set(positives)
        ranking = [d for d, _ in ranked(run.get(q) or {})]
        if not ranking:
            report["queries_missing_from_run"] += 1
        if cfg.max_positive_rank is not None and pos_set.isdisjoint(ranking[: cfg.max_positive_rank]):
            report["dropped_inconsistent"] += 1
            inconsistent.add(q)
            negatives[q], num_hard[q] = [], 0
            continue
        window = ranking[cfg.rank_min - 1 : cfg.rank_max]
        n_pos = sum(1 for d in ranking if d in pos_set)
        n_pos_window = sum(1 for d in window if d in pos_set)
        report["candidates_considered"] += len(ranking)
        report["removed_positive"] += n_pos
        report["removed_outside_window"] += (len(ranking) - len(window)) - (n_pos - n_pos_window)

        scores = (margin_scores.get(q) or {}) if margin_scores is not None else (run.get(q) or {})
        threshold = None
        known = [scores[p] for p in positives if p in scores]
        if not known:
            report["queries_positive_not_in_run"] += 1
        elif cfg.relative_margin is not None:
            p = min(known)
            threshold = p - abs(p) * cfg.relative_margin

        suspect = set(ranking[: cfg.rank_min - 1]) - pos_set  # too high to trust as negatives
        kept: list[str] = []
        for d in window:
            if d in pos_set:
                continue
            if allowed is not None and d not in allowed:
                report["removed_outside_pool"] += 1
                continue
            if guards.neighbor(d, positives):
                report["removed_neighbor"] += 1
            elif guards.overlap(d, positives):
                report["removed_overlap"] += 1
            elif threshold is not None and d in scores and scores[d] > threshold:
                report["removed_margin"] += 1
            else:
                kept.append(d)
                continue
            suspect.add(d)
        report["candidates_kept"] += len(kept)

        rng = random.Random(f"{cfg.seed}\x1f{q}")
        if cfg.sampling_strategy == "random" and len(kept) > cfg.num_negatives:
            order = {d: i for i, d in enumerate(kept)}
            hard = sorted(rng.sample(kept, cfg.num_negatives), key=order.__getitem__)
        else:
            hard = kept[: cfg.num_negatives]
        rand = _draw_random(pool, cfg.num_random, rng, pos_set | suspect | set(hard), guards, positives, report)
        negatives[q] = hard + rand
        num_hard[q] = len(hard)
        report["hard_negatives"] += len(hard)
        report["random_negatives"] += len(rand)
        report["queries_short_of_hard"] += len(hard) < cfg.num_negatives
        report["queries_short_of_random"] += len(rand) < cfg.num_random
    result = MiningResult(negatives, num_hard, report, cfg, frozenset(inconsistent))
    logger.info(result.summary())
    return result


def _draw_random(
    pool: list[str], k: int, rng: random.Random, exclude: set[str], guards: _Guards,
    positives: list[str], report: dict[str, int],
) -> list[str]:
    """Up to ``k`` distinct random chunks outside ``exclude`` that pass the neighbor/overlap guards."""
    chosen: list[str] = []
    seen = set(exclude)

    def accept(d: str) -> None:
        seen.add(d)
        if guards.neighbor(d, positives) or guards.overlap(d, positives):
            report["random_rejected"] += 1
        else:
            chosen.append(d)

    for _ in range(20 * k + 20):  # rejection sampling: uniform over the pool
        if len(chosen) >= k or not pool:
            return chosen
        d = pool[rng.randrange(len(pool))]
        if d not in seen:
            accept(d)
    start = rng.randrange(len(pool)) if pool else 0  # small or crowded pool: scan once from a random offset
    for i in range(len(pool)):
        if len(chosen) >= k:
            break
        d = pool[(start + i) % len(pool)]
        if d not in seen:
            accept(d)
    return chosen
