"""The plan of an ``adapt`` run: how many chunks to ask, how many steps to train, and how long it should take.

Estimates come from throughput: seconds per generated chunk and per training step. They are measured on this
machine when a run has them (``throughput.json`` in the rag-rerank cache is updated after every run), else taken
from the priors below, measured on a 2-core CPU (AVX512_BF16) with the embedded models. ``--budget-minutes``
measures both first (a few chunks and two training steps) and sizes the run to fit.

Example:
    >>> p = make_plan(n_chunks=2237, recipe=get_recipe("default"), s_per_chunk=1.2, s_per_step=7.0)
    >>> p.chunks, p.val_questions, p.steps
    (2237, 322, 323)
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from rag_rerank.generate.store import split_targets
from rag_rerank.io import read_json, write_json
from rag_rerank.models import cache_dir
from rag_rerank.train.recipes import EVAL_STEP_EQUIVALENT, Recipe, get_recipe

logger = logging.getLogger(__name__)

__all__ = ["Plan", "Throughput", "load_throughput", "make_plan", "save_throughput"]

KEPT_PER_ASKED = 0.72  # questions kept per question asked (SQuAD, embedded SmolLM2: 3,226 of 4,474)
BACKEND_PROBE_S = 90.0  # ``backend="auto"`` measures the installed backends once for the trained model (exports)
BUDGET_MIN_STEPS = 20  # a budget never plans fewer listwise steps: fewer cannot leave a new head's plateau
PRIOR_S_PER_CHUNK = {"embedded": 1.2, "remote": 0.5}
PRIOR_S_PER_STEP = 7.0  # MiniLM-L6, 8 groups of 1 + 4, 192 tokens, fp32, 2 cores


@dataclass(frozen=True)
class Throughput:
    """Seconds per generated chunk and per training step, and where the numbers come from."""

    s_per_chunk: float
    s_per_step: float
    source: str


@dataclass(frozen=True)
class Plan:
    """What a run will do, and how long it should take."""

    chunks_total: int
    chunks: int
    questions: int
    train_groups: int
    val_questions: int
    steps: int
    est_generation_s: float
    est_training_s: float
    est_other_s: float
    throughput: str
    budget_minutes: float | None = None

    @property
    def est_total_s(self) -> float:
        return self.est_generation_s + self.est_training_s + self.est_other_s

    def describe(self) -> str:
        """A few lines for the console."""
        budget = f" (budget {self.budget_minutes:g} min)" if self.budget_minutes else ""
        if self.budget_minutes and self.est_total_s > self.budget_minutes * 60 * 1.05:
            budget += " - OVER BUDGET: the fewest chunks and steps that can show anything"
        return (f"plan: {self.chunks} of {self.chunks_total} chunks -> about {self.questions} questions "
                f"({self.train_groups} train, {self.val_questions} validation); {self.steps} training steps\n"
                f"      estimated {self.est_total_s / 60:.0f} min{budget}: "
                f"generation {self.est_generation_s / 60:.0f}, training {self.est_training_s / 60:.0f}, "
                f"index + evaluation {self.est_other_s / 60:.0f} [{self.throughput}]")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "est_total_s": self.est_total_s}


def _throughput_file() -> os.PathLike:
    return cache_dir() / "throughput.json"


def load_throughput(llm_kind: str, train_key: str) -> Throughput:
    """This machine's last measured throughput for an LLM kind and a training setup, else the priors."""
    path = _throughput_file()
    data: dict[str, Any] = {}
    if os.path.isfile(path):
        try:
            data = read_json(path)
        except Exception:  # noqa: BLE001 - a damaged cache only means priors
            data = {}
    chunk = data.get("s_per_chunk", {}).get(llm_kind)
    step = data.get("s_per_step", {}).get(train_key)
    source = "measured here" if chunk and step else ("partly measured here" if chunk or step else "priors")
    return Throughput(chunk or PRIOR_S_PER_CHUNK.get(llm_kind, 1.0), step or PRIOR_S_PER_STEP, source)


def save_throughput(llm_kind: str, train_key: str, s_per_chunk: float | None, s_per_step: float | None) -> None:
    """Record measured throughput for the next plan (best effort: a read-only cache is not an error)."""
    path = _throughput_file()
    try:
        data = read_json(path) if os.path.isfile(path) else {}
        if s_per_chunk:
            data.setdefault("s_per_chunk", {})[llm_kind] = round(float(s_per_chunk), 3)
        if s_per_step:
            data.setdefault("s_per_step", {})[train_key] = round(float(s_per_step), 3)
        write_json(path, data)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        logger.debug("throughput not recorded: %s", e)


def make_plan(n_chunks: int, recipe: Recipe | str, *, s_per_chunk: float, s_per_step: float,
              max_chunks: int | None = None, max_steps: int | None = None, budget_minutes: float | None = None,
              chunks_done: int = 0, source: str = "priors") -> Plan:
    """Chunks and steps for a run (capped by ``max_chunks`` / ``max_steps``, or sized to ``budget_minutes``).

    The training estimate counts the warm start (at its shorter length), the listwise steps, every scored question
    (the checkpoint evaluations, the fusion choice and the test report) and ``auto``'s one-off backend probe.

    With a budget, generation gets up to half of it and training the rest. Training is never planned below the
    recipe's floor (``min_steps``, or the data's one epoch if smaller) while fewer chunks can make room for it, and
    chunks are only dropped down to the count that still gives ``min_val_queries`` validation questions. When even
    that does not fit, the plan keeps at least ``BUDGET_MIN_STEPS`` listwise steps and says that it is over budget
    (``est_total_s`` > the budget): a run that cannot train is no use at any size. Once chunks are set, a recipe with
    ``fill_budget`` (the default) gives the minutes left to more listwise steps, past the data's own length, up to
    the recipe's ``max_steps`` (and the ``max_steps`` passed here).

    Example:
        >>> p = make_plan(187, "default", s_per_chunk=1.6, s_per_step=7.4, budget_minutes=13)
        >>> p.chunks, p.val_questions, p.steps >= BUDGET_MIN_STEPS
        (173, 50, True)
    """
    recipe = get_recipe(recipe)
    chunks = n_chunks if max_chunks is None else min(n_chunks, max_chunks)
    chunks_done = min(chunks_done, chunks)

    def shape(c: int) -> tuple[int, int, int, int, int]:
        questions = int(c * recipe.generation.questions_per_chunk * KEPT_PER_ASKED)
        val, test = split_targets(questions, recipe.generation.split_ratios)
        train_groups = max(0, questions - val - test)
        steps = recipe.steps_for(train_groups)
        return questions, val, test, train_groups, steps if max_steps is None else min(steps, max_steps)

    def other_s(c: int) -> float:
        return 60.0 + 0.05 * c + BACKEND_PROBE_S  # index, mining, reports (linear in the corpus), the backend probe

    def training_s(steps: int, val: int, test: int) -> float:
        t = recipe.training
        warm = min(t.warm_start_steps, steps) * t.warm_start_max_length / t.max_length
        per_eval = recipe.checkpoint_questions(val)
        scored = ((1 + recipe.evaluations_for(steps, val)) * per_eval  # before training, then each checkpoint
                  + min(val, recipe.max_eval_queries or val) + test)
        return (warm + steps + scored * EVAL_STEP_EQUIVALENT) * s_per_step

    def steps_that_fit(c: int, budget: float, ceiling: int | None = None) -> int:
        _, val, test, _, steps = shape(c)
        steps = steps if ceiling is None else ceiling
        room = budget - (c - chunks_done) * s_per_chunk - other_s(c)
        while steps > 0 and training_s(steps, val, test) > room:
            steps -= 1
        return steps

    if budget_minutes is not None:
        budget = budget_minutes * 60.0
        fewest = chunks  # the fewest chunks that still give enough validation questions (or all there are)
        while fewest > chunks_done and shape(fewest - 1)[1] >= recipe.min_val_queries:
            fewest -= 1
        gen_room = max(0.0, 0.5 * budget - other_s(chunks) / 2)
        chunks = min(chunks, max(fewest, chunks_done, int(gen_room / s_per_chunk) + chunks_done))
        floor = min(recipe.min_steps, shape(chunks)[4])
        while steps_that_fit(chunks, budget) < floor and chunks > fewest:
            chunks = max(fewest, chunks - max(1, chunks // 20))
        questions, val, test, train_groups, steps = shape(chunks)
        ceiling = steps
        if recipe.fill_budget:  # the budget's room, past the data's epochs, up to the recipe's (and caller's) cap
            ceiling = recipe.max_steps if max_steps is None else min(recipe.max_steps, max_steps)
        steps = min(ceiling, max(steps_that_fit(chunks, budget, ceiling), min(steps, BUDGET_MIN_STEPS)))
    else:
        questions, val, test, train_groups, steps = shape(chunks)
    return Plan(
        chunks_total=n_chunks, chunks=chunks, questions=questions, train_groups=train_groups, val_questions=val,
        steps=steps, est_generation_s=max(0, chunks - chunks_done) * s_per_chunk,
        est_training_s=training_s(steps, val, test), est_other_s=other_s(chunks),
        throughput=f"{s_per_chunk:.2f} s/chunk, {s_per_step:.1f} s/step, {source}", budget_minutes=budget_minutes,
    )


def training_key(recipe: Recipe, base_model: str) -> str:
    """What a training step's cost depends on (the throughput cache key)."""
    from rag_rerank.train.config import training_precision

    t = recipe.training
    return (f"{base_model}|bs{t.batch_size}|g{t.train_group_size}|len{t.max_length}|threads{os.cpu_count()}"
            f"|{training_precision(t.mixed_precision)}")


def chunks_to_ask(plan: Plan) -> int:
    """The ``max_chunks`` to pass to generation for a plan."""
    return max(1, math.floor(plan.chunks))
