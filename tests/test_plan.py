"""adapt's plan: chunks and steps sized to a budget never leave a run that cannot train or cannot be judged."""

from __future__ import annotations

import pytest

from rag_rerank.adaptation.plan import BUDGET_MIN_STEPS, make_plan
from rag_rerank.train.recipes import get_recipe

DEFAULT = get_recipe("default")
PLAIN = get_recipe("v6")  # the default before a budget filled its minutes with steps: a budget only shortens it


def test_the_demo_budget_trains_instead_of_one_step() -> None:
    """Regression: `make demo` (187 sample chunks, 13 minutes, 1.96 s/chunk and 7.4 s/step measured on a 2-core
    CPU) was planned at 1 training step: the evaluations' estimate left no room for training."""
    plan = make_plan(187, PLAIN, s_per_chunk=1.96, s_per_step=7.4, budget_minutes=13, chunks_done=8)
    assert plan.steps >= BUDGET_MIN_STEPS
    assert plan.val_questions >= DEFAULT.min_val_queries  # and the verdict can still be judged


@pytest.mark.parametrize("budget", [3, 8, 13, 20, 40, 90])
@pytest.mark.parametrize("n_chunks", [40, 187, 2237])
def test_a_budget_plan_keeps_enough_validation_and_a_floor_of_steps(n_chunks: int, budget: float) -> None:
    plan = make_plan(n_chunks, PLAIN, s_per_chunk=1.5, s_per_step=7.0, budget_minutes=budget)
    everything = make_plan(n_chunks, PLAIN, s_per_chunk=1.5, s_per_step=7.0)
    # validation questions: as many as the recipe needs to judge, whenever the whole corpus gives that many
    assert plan.val_questions >= min(DEFAULT.min_val_queries, everything.val_questions)
    assert 1 <= plan.chunks <= n_chunks and plan.steps <= everything.steps
    assert plan.steps >= min(BUDGET_MIN_STEPS, everything.steps)
    fits = plan.est_total_s <= budget * 60 * 1.0001
    # over budget only at the floor: the fewest chunks that give enough validation questions, the fewest steps
    assert fits or plan.steps == min(BUDGET_MIN_STEPS, everything.steps), plan
    assert ("OVER BUDGET" in plan.describe()) == (plan.est_total_s > budget * 60 * 1.05)


def test_more_budget_never_means_less_training() -> None:
    for recipe in (PLAIN, DEFAULT):
        steps = [make_plan(2237, recipe, s_per_chunk=1.2, s_per_step=7.0, budget_minutes=b).steps
                 for b in (10, 20, 40, 80, 160, 320)]
        assert steps == sorted(steps)
        assert steps[-1] == (recipe.max_steps if recipe.fill_budget else
                             make_plan(2237, recipe, s_per_chunk=1.2, s_per_step=7.0).steps)


def test_without_a_budget_the_plan_is_the_recipe() -> None:
    plan = make_plan(2237, DEFAULT, s_per_chunk=1.2, s_per_step=7.0)
    assert (plan.chunks, plan.steps) == (2237, DEFAULT.steps_for(plan.train_groups))
    assert make_plan(2237, DEFAULT, s_per_chunk=1.2, s_per_step=7.0, max_chunks=100, max_steps=8).steps == 8


def test_the_evaluation_budget_gives_the_demo_more_training_in_the_same_time() -> None:
    """With four checkpoint evaluations (recipe v3) a 13-minute demo spent more time scoring checkpoints than
    training; the default's evaluation budget spends that time on steps (1.40 s/chunk and 3.9 s/step: measured)."""
    kwargs = {"s_per_chunk": 1.40, "s_per_step": 3.9, "budget_minutes": 13, "chunks_done": 8}
    new, old = make_plan(187, DEFAULT, **kwargs), make_plan(187, get_recipe("v3"), **kwargs)
    assert new.chunks == old.chunks and new.steps > old.steps
    assert new.est_total_s <= 13 * 60 * 1.0001


@pytest.mark.parametrize("budget", [8, 13, 20, 40])
@pytest.mark.parametrize("n_chunks", [40, 187, 2237])
def test_the_default_fills_its_budget_trains_at_least_as_long_and_still_fits(n_chunks: int, budget: float) -> None:
    """fill_budget: the minutes a small corpus leaves go to more listwise steps (up to max_steps), never to fewer
    chunks or validation questions, and the plan still fits the budget whenever the shorter one did."""
    kwargs = {"s_per_chunk": 1.5, "s_per_step": 1.5, "budget_minutes": budget, "chunks_done": 8}
    filled, plain = make_plan(n_chunks, DEFAULT, **kwargs), make_plan(n_chunks, PLAIN, **kwargs)
    assert (filled.chunks, filled.val_questions) == (plain.chunks, plain.val_questions)
    assert plain.steps <= filled.steps <= DEFAULT.max_steps
    if plain.est_total_s <= budget * 60:
        assert filled.est_total_s <= budget * 60 * 1.0001
    one_more = make_plan(n_chunks, DEFAULT, **kwargs, max_steps=filled.steps + 1)
    assert filled.steps == DEFAULT.max_steps or one_more.steps == filled.steps  # the next step would not fit
    assert make_plan(n_chunks, DEFAULT, **{**kwargs, "budget_minutes": budget * 2}).steps >= filled.steps


def test_filling_a_budget_respects_the_callers_step_cap_and_a_plan_without_a_budget_is_unchanged() -> None:
    assert make_plan(187, DEFAULT, s_per_chunk=1.5, s_per_step=1.5, budget_minutes=60, max_steps=100).steps == 100
    assert make_plan(187, DEFAULT, s_per_chunk=1.5, s_per_step=1.5, budget_minutes=600).steps == DEFAULT.max_steps
    assert make_plan(187, DEFAULT, s_per_chunk=1.5, s_per_step=1.5) == make_plan(187, PLAIN, s_per_chunk=1.5,
                                                                                  s_per_step=1.5)
    cfg = DEFAULT.training_config(200, steps=165, val_questions=52)  # what adapt passes for a filled plan
    assert cfg.max_steps == 165 > DEFAULT.steps_for(200) and DEFAULT.training_config(200, steps=10_000).max_steps == 640
