"""How much to trust a fine-tuned reranker: the fusion weight ``alpha``, chosen on synthetic validation questions.

A cross-encoder fine-tuned on a few thousand synthetic questions is often best used *fused* with the first
stage it reranks: ``alpha * z(reranker) + (1 - alpha) * z(first stage)`` over each query's top-k (see
:func:`rag_rerank.retrieval.fusion.interpolate_scores`). ``alpha`` is a setting like any other, so it is chosen on
the validation split of the generated dataset (never on human labels) and saved next to the model as
``fusion.json``; :func:`load_fusion` reads it back.

The choice is honest about noise: the gain of the chosen alpha over the first stage (alpha 0) gets a paired
bootstrap CI over the validation questions. With fewer than ``min_queries`` questions, or when that CI does not
exclude 0, the shipped weight is 0: the reranker is not trusted, and the system served is the first stage.

**The query guard.** A reranker trained on short synthetic questions has never seen a 200-word query; its scores
there are an extrapolation that validation cannot check (every validation question is as short as the training
ones). With ``max_query_words`` set (the recipe's ``query_guard`` times the longest question it was trained or
validated on), a longer query is served by the first stage alone (:meth:`FusionChoice.alpha_for`). Words are
whitespace-separated tokens (:func:`query_words`). The same holds for the queries' form: with ``query_form`` set to
``"question"`` (every training and validation query read as a question, as the default question filter makes them;
:func:`guard_form`), a query that does not read as one (a claim, a keyword query, an instruction;
:func:`rag_rerank.generate.questions.reads_as_question`) is served by the first stage alone too. Both limits are one
:class:`QueryGuard`.

Two rules pick the alpha (:data:`RULES`):

- ``"best"``: the alpha with the best validation metric (ties: the smaller);
- ``"bagged"``: the median, over bootstrap resamples of the validation questions, of each resample's best alpha
  (:func:`bagged_alpha`). Where many alphas are within noise of each other (a plateau), the single best one is
  close to a draw among them, and can sit at the plateau's edge; the bagged pick sits where the resamples agree.
  On a sharp peak both rules give the peak.

Example:
    >>> run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    >>> choice = choose_alpha(run, {"q": {"a": 0.0, "b": 1.0, "c": 0.5}}, {"q": {"b": 1}}, top_k=3)
    >>> choice.best_alpha, choice.status, choice.alpha  # one question cannot justify trusting the reranker
    (0.4, 'not_enough_data', 0.0)
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rag_rerank.errors import ConfigError, DataError
from rag_rerank.generate.questions import reads_as_question
from rag_rerank.io import read_json, write_json
from rag_rerank.rerank.runs import interpolate_run
from rag_rerank.types import Qrels, Run

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_GRID", "FUSION_FILE", "MIN_VALIDATION_QUERIES", "RULES", "TUNED", "FusionChoice", "QueryGuard",
           "bagged_alpha", "choose_alpha", "guard_form", "guard_limit", "load_fusion", "query_words",
           "save_fusion", "saved_alpha"]

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
FUSION_FILE = "fusion.json"
MIN_VALIDATION_QUERIES = 50
RULES = ("best", "bagged")
TUNED = "first_stage_tuned"  # the name of the tuned first stage in reports


def query_words(text: str) -> int:
    """The length the query guard counts: whitespace-separated words.

    Example:
        >>> query_words("Who founded  Rome?")
        3
    """
    return len(text.split())


def guard_limit(questions: Iterable[str], factor: float | None) -> int | None:
    """``max_query_words`` for a reranker trained on ``questions``: ``factor`` times the longest (rounded up);
    ``None`` without a factor or without questions (no guard).

    Example:
        >>> guard_limit(["Who founded Rome?", "When was Rome founded by Romulus?"], 1.5)
        9
    """
    if factor is None:
        return None
    if factor < 1:
        raise ConfigError(f"query_guard={factor} must be >= 1 (a multiple of the longest training question)")
    longest = max(map(query_words, questions), default=0)
    return math.ceil(factor * longest) if longest else None


def guard_form(questions: Iterable[str], on: bool | None) -> str | None:
    """``query_form`` for a reranker trained and validated on ``questions``: ``"question"`` when ``on`` and every one
    reads as a question (:func:`rag_rerank.generate.questions.reads_as_question`); ``None`` otherwise (no form
    guard: off, no questions, or queries in another style, e.g. from ``--query-examples``).

    Example:
        >>> guard_form(["Who founded Rome?", "When was Rome founded?"], True)
        'question'
        >>> guard_form(["Who founded Rome?", "Rome was founded by twins."], True) is None
        True
    """
    questions = list(questions)
    return "question" if on and questions and all(map(reads_as_question, questions)) else None


@dataclass(frozen=True)
class QueryGuard:
    """Which queries a fused system serves by the first stage alone: those unlike every query the reranker was
    trained and validated on, so that validation could not vouch for its scores there.

    Attributes:
        max_words: a query with more words (:func:`query_words`) is guarded; ``None``: no length limit.
        form: ``"question"``: a query that does not read as a question is guarded; ``None``: no form limit.

    Example:
        >>> g = QueryGuard(max_words=5, form="question")
        >>> g.reason("Who founded Rome?"), g.reason("rome founding"), g.reason("Who founded Rome and why and when?")
        (None, 'not_a_question', 'too_long')
    """

    max_words: int | None = None
    form: str | None = None

    def __post_init__(self) -> None:
        if self.form not in (None, "question"):
            raise ConfigError(f"query_form={self.form!r}: expected 'question' or None")

    def __bool__(self) -> bool:
        return self.max_words is not None or self.form is not None

    def reason(self, query: str) -> str | None:
        """``"too_long"``, ``"not_a_question"``, or ``None`` when the query is served fused."""
        if self.max_words is not None and query_words(query) > self.max_words:
            return "too_long"
        if self.form == "question" and not reads_as_question(query):
            return "not_a_question"
        return None

    def fires(self, query: str) -> bool:
        """Whether ``query`` is served by the first stage alone."""
        return self.reason(query) is not None

    def describe(self) -> str:
        """What it guards, as a phrase: "more than 44 words, or not a question"."""
        parts = ([] if self.max_words is None else [f"more than {self.max_words} words"]) + (
            [] if self.form is None else ["not a question"])
        return ", or ".join(parts) or "nothing"

    def counts(self, queries: Iterable[str]) -> dict[str, Any]:
        """``{"max_query_words", "query_form", "guarded", "too_long", "not_a_question", "queries"}`` over
        ``queries`` (what reports record)."""
        reasons = [self.reason(q) for q in queries]
        return self.tally(Counter(reasons), len(reasons))

    def tally(self, reasons: Mapping[str | None, int], queries: int) -> dict[str, Any]:
        """The record :meth:`counts` returns, from ``reasons`` (how often each :meth:`reason` came out) over
        ``queries`` queries: for a count kept as queries arrive (the LlamaIndex postprocessor's ``guard_info``)."""
        too_long, not_a_question = reasons.get("too_long", 0), reasons.get("not_a_question", 0)
        return {"max_query_words": self.max_words, "query_form": self.form, "guarded": too_long + not_a_question,
                "too_long": too_long, "not_a_question": not_a_question, "queries": queries}


@dataclass(frozen=True)
class FusionChoice:
    """The shipped ``alpha`` (1 = reranker only, 0 = first stage only), and why.

    Attributes:
        alpha: the weight served (0 when the reranker is not trusted).
        metric, value: the metric maximised on validation, and its value at ``alpha``.
        by_alpha: the validation metric at every alpha of the grid.
        queries, top_k: validation questions used, and the fusion depth.
        best_alpha: the alpha with the best validation metric (ties: the smaller).
        rule, rule_alpha: the rule that picked the candidate alpha (:data:`RULES`) and its pick, before the
            significance check (``rule_alpha is None`` in files written before rules existed: ``best_alpha``).
        gain, gain_ci95: the gain of the candidate over alpha 0 on validation, with its paired bootstrap CI.
        status: ``"improved"`` (the CI excludes 0: ``alpha`` is the candidate), ``"no_gain"`` (it does not:
            ``alpha = 0``) or ``"not_enough_data"`` (fewer than ``min_queries`` questions: ``alpha = 0``).
        first_stage: the tuned first stage's fusion settings the weight was chosen with (``None``: the index's).
        chosen_on: where it was chosen (never on human labels).
        max_query_words: the query guard: a query with more words (:func:`query_words`) is served by the first
            stage alone; ``None``: no guard (files written before it existed, or a recipe without ``query_guard``).
        query_form: ``"question"``: a query that does not read as a question is served by the first stage alone
            (:func:`guard_form`); ``None``: no form guard (files written before it existed, a recipe without
            ``question_guard``, or training queries in another style).
    """

    alpha: float
    metric: str
    value: float
    by_alpha: dict[str, float] = field(default_factory=dict)
    queries: int = 0
    top_k: int = 20
    best_alpha: float | None = None
    rule: str = "best"
    rule_alpha: float | None = None
    gain: float | None = None
    gain_ci95: tuple[float, float] | None = None
    status: str = "improved"
    first_stage: dict[str, Any] | None = None
    chosen_on: str = "synthetic validation split"
    max_query_words: int | None = None
    query_form: str | None = None

    def __post_init__(self) -> None:
        QueryGuard(self.max_query_words, self.query_form)  # checks the form (a hand-edited fusion.json)

    @property
    def guard(self) -> QueryGuard:
        """The query guard recorded with the choice."""
        return QueryGuard(self.max_query_words, self.query_form)

    def alpha_for(self, query: str) -> float:
        """The weight served for ``query``: ``alpha``, or 0 (the first stage alone) past the query guard.

        Example:
            >>> FusionChoice(alpha=0.5, metric="mrr@10", value=0.8, max_query_words=3).alpha_for("a b c d")
            0.0
        """
        return 0.0 if self.guards(query) else self.alpha

    def guards(self, query: str) -> bool:
        """Whether ``query`` is past the query guard (longer than any question the reranker was trusted on, or not
        a question when it was trusted on questions only)."""
        return self.guard.fires(query)

    def guard_note(self, queries: Sequence[str], what: str = "of the queries") -> str | None:
        """One line when the shipped fusion would serve some of ``queries`` (e.g. the user's example queries) by the
        first stage alone, past the guard; ``None`` when none is, or when the reranker is not shipped anyway.

        Example:
            >>> c = FusionChoice(alpha=0.5, metric="mrr@10", value=0.8, max_query_words=3)
            >>> c.guard_note(["a b", "a b c d e"], "of your example queries")[:74]
            'QUERY GUARD: 1 of 2 of your example queries are past the query guard (more'
        """
        n = sum(map(self.guards, queries))
        if not self.improved or not n:
            return None
        return (f"QUERY GUARD: {n} of {len(queries)} {what} are past the query guard ({self.guard.describe()}), "
                "unlike every question the reranker was trained on: the shipped system serves such queries by the "
                "first stage alone")

    @property
    def candidate(self) -> float | None:
        """The alpha the rule picked, before the significance check."""
        return self.best_alpha if self.rule_alpha is None else self.rule_alpha

    @property
    def improved(self) -> bool:
        """Whether the reranker is trusted (a validation gain whose CI excludes 0)."""
        return self.status == "improved"

    def verdict(self, first_stage: str = "first stage") -> str:
        """One line on the shipped system, as the console, the model card and ``summary.json`` state it."""
        first_stage = "tuned first stage" if first_stage == TUNED else first_stage
        lo, hi = self.gain_ci95 or (0.0, 0.0)
        base = self.by_alpha.get("0", float("nan"))
        if self.status == "improved":
            guard = ("" if not self.guard else
                     f"; a query past the query guard ({self.guard.describe()}), unlike any training question, "
                     f"is served by the {first_stage} alone")
            return (f"IMPROVED: on {self.queries} validation questions the shipped system (the reranker fused at alpha "
                    f"{self.alpha:g} with the {first_stage}) scores {self.metric} {self.value:.4f} against {base:.4f} "
                    f"for the {first_stage} alone ({self.gain:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]){guard}")
        if self.status == "not_enough_data":
            return (f"NOT ENOUGH VALIDATION DATA: {self.queries} validation questions (fewer than "
                    f"{MIN_VALIDATION_QUERIES}) cannot show that the reranker helps, so the shipped system is the "
                    f"{first_stage} alone (alpha 0); generate questions for more chunks")
        return (f"DID NOT HELP: on {self.queries} validation questions the reranker's fusion at alpha "
                f"{self.candidate:g} changes {self.metric} by {self.gain:+.4f} over the {first_stage} (95% CI "
                f"[{lo:+.4f}, {hi:+.4f}] includes 0), so the shipped system is the {first_stage} alone (alpha 0)")


def choose_alpha(
    first_stage: Run,
    rerank_scores: Mapping[str, Mapping[str, float]],
    qrels: Qrels,
    *,
    top_k: int = 20,
    metric: str = "mrr@10",
    grid: Sequence[float] = DEFAULT_GRID,
    min_queries: int = MIN_VALIDATION_QUERIES,
    n_resamples: int = 10000,
    seed: int = 0,
    first_stage_settings: Mapping[str, Any] | None = None,
    rule: str | None = "best",
    n_bags: int = 1000,
    max_query_words: int | None = None,
    query_form: str | None = None,
) -> FusionChoice:
    """The ``alpha`` of ``grid`` that ``rule`` picks on mean ``metric``, kept only if its gain over the first stage
    has a paired bootstrap CI that excludes 0 and there are at least ``min_queries`` questions.

    Args:
        first_stage: the first-stage run of the validation questions.
        rerank_scores: ``{qid: {doc_id: score}}`` for each query's top ``top_k``
            (:func:`rag_rerank.rerank.runs.score_candidates`).
        qrels: the validation qrels (synthetic: question -> the chunk it was written from).
        top_k, metric, grid: fusion depth, the metric to maximise, the alphas tried.
        min_queries: below this many validation questions the reranker is not trusted (alpha 0).
        n_resamples, seed: the bootstrap.
        first_stage_settings: the fusion settings of ``first_stage`` (recorded in ``fusion.json``).
        rule, n_bags: ``"best"`` or ``"bagged"`` (over ``n_bags`` resamples, seeded with ``seed``); see the module.
            ``None`` is ``"best"`` (a recipe's unset ``alpha_rule``: the only rule before rules existed).
        max_query_words, query_form: the query guard recorded with the choice (:func:`guard_limit`,
            :func:`guard_form`; ``None``: none).
    """
    from rag_rerank.evaluate.metrics import per_query
    from rag_rerank.evaluate.significance import paired_bootstrap

    qids = [q for q in first_stage if q in qrels and q in rerank_scores]
    if not qids:
        raise DataError("no validation question has both a first-stage run and reranker scores; cannot choose alpha")
    if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
        raise ConfigError(f"grid={list(grid)} must be non-empty alphas in [0, 1]")
    rule = rule or "best"
    if rule not in RULES:
        raise ConfigError(f"rule={rule!r}: expected one of {', '.join(RULES)}")
    run = {q: first_stage[q] for q in qids}
    sub_qrels = {q: qrels[q] for q in qids}
    alphas = sorted(set(grid) | {0.0})
    per_alpha = {a: per_query(interpolate_run(run, rerank_scores, a, top_k), sub_qrels, metric) for a in alphas}
    by_alpha = {f"{a:g}": float(np.mean(list(v.values()))) if v else 0.0 for a, v in per_alpha.items()
                if a in set(grid)}
    best = max(by_alpha.items(), key=lambda kv: (kv[1], -float(kv[0])))
    best_alpha = float(best[0])
    picked = best_alpha if rule == "best" else bagged_alpha({a: per_alpha[a] for a in set(grid)}, n_bags, seed)
    base = per_alpha[0.0]
    boot = paired_bootstrap(per_alpha[picked], base, n_resamples, seed) if base else None
    gain = boot.mean_delta if boot else 0.0
    ci = (boot.ci95_lo, boot.ci95_hi) if boot else (0.0, 0.0)
    if len(qids) < min_queries:
        status, alpha = "not_enough_data", 0.0
    elif picked > 0 and ci[0] > 0:
        status, alpha = "improved", picked
    else:
        status, alpha = "no_gain", 0.0
    value = float(np.mean(list(per_alpha[alpha].values()))) if per_alpha[alpha] else 0.0
    choice = FusionChoice(alpha=alpha, metric=metric, value=value, by_alpha=by_alpha, queries=len(qids),
                          top_k=top_k, best_alpha=best_alpha, rule=rule, rule_alpha=picked, gain=gain,
                          gain_ci95=ci, status=status,
                          first_stage=dict(first_stage_settings) if first_stage_settings else None,
                          max_query_words=max_query_words, query_form=query_form)
    logger.info("fusion (%s rule): alpha %.1f on %d validation questions (%s %.4f vs %.4f for the first stage, "
                "%+.4f [%+.4f, %+.4f]; best alpha %.1f) -> %s, serving alpha %.1f", rule, picked, len(qids), metric,
                by_alpha[f"{picked:g}"], by_alpha.get("0", float("nan")), gain, ci[0], ci[1], best_alpha, status,
                alpha)
    return choice


def bagged_alpha(per_alpha: Mapping[float, Mapping[str, float]], n_bags: int = 1000, seed: int = 0) -> float:
    """The lower median, over ``n_bags`` bootstrap resamples of the questions, of each resample's best alpha (ties:
    the smaller).

    Args:
        per_alpha: ``{alpha: {qid: metric}}``, the same questions for every alpha.

    Example:
        >>> flat = {a: {"q1": 1.0, "q2": 0.5} for a in (0.2, 0.4, 0.6)}  # every alpha ties on every resample
        >>> bagged_alpha(flat, n_bags=10)
        0.2
    """
    alphas = sorted(per_alpha)
    qids = sorted(per_alpha[alphas[0]])
    if not qids or any(set(per_alpha[a]) != set(qids) for a in alphas):
        raise DataError("bagged_alpha needs the same, non-empty questions for every alpha")
    m = np.array([[per_alpha[a][q] for q in qids] for a in alphas])  # (alphas, questions)
    counts = np.random.default_rng(seed).multinomial(len(qids), np.full(len(qids), 1 / len(qids)), size=n_bags)
    sums = np.round(m @ counts.T, 9)  # rounded: equal means stay ties whatever the order of the sums
    picks = np.sort(np.argmax(sums, axis=0))  # each resample's best alpha (argmax: the first, the smaller)
    return alphas[int(picks[(n_bags - 1) // 2])]


def save_fusion(model_dir: str | os.PathLike, choice: FusionChoice) -> Path:
    """Write ``fusion.json`` next to a model (atomically)."""
    path = Path(model_dir) / FUSION_FILE
    data = asdict(choice)
    data["gain_ci95"] = list(choice.gain_ci95) if choice.gain_ci95 is not None else None
    write_json(path, data)
    return path


def load_fusion(model_dir: str | os.PathLike) -> FusionChoice | None:
    """The ``fusion.json`` saved with a model, or ``None`` (a model trained elsewhere, or before fusion existed).

    Raises:
        DataError: when the file is not a fusion file.
    """
    path = Path(model_dir) / FUSION_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    try:
        alpha = float(data["alpha"])
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(alpha)
        names = {f.name for f in fields(FusionChoice)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("gain_ci95") is not None:
            kwargs["gain_ci95"] = tuple(kwargs["gain_ci95"])
        return FusionChoice(**kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a fusion file with an alpha in [0, 1] ({e}); delete it or retrain") from e


def saved_alpha(model: str | os.PathLike, warn: bool = True) -> float | None:
    """The alpha saved with ``model`` (a folder), or ``None`` when it has none (logged; a warning with ``warn``).

    What ``evaluate --alpha auto`` and ``RagRerankPostprocessor(alpha="auto")`` resolve to; a model without
    ``fusion.json`` (a hub id, or one trained elsewhere) is then used unfused.
    """
    saved = load_fusion(model) if Path(model).is_dir() else None
    if saved is None:
        (logger.warning if warn else logger.info)(
            "%s has no fusion.json (not adapted or trained by rag-rerank): it is served unfused (the reranker "
            "score alone)", model)
        return None
    return saved.alpha
