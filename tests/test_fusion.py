"""Choosing the reranker/first-stage fusion alpha on validation questions (rag_rerank.rerank.fusion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_rerank.errors import DataError
from rag_rerank.rerank.fusion import FUSION_FILE, choose_alpha, load_fusion, save_fusion, saved_alpha

# two queries; first stage ranks a > b > c for both. The reranker is right on q1 (gold b) and wrong on q2 (gold a).
RUN = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"a": 3.0, "b": 2.0, "c": 1.0}}
RR = {"q1": {"a": 0.0, "b": 1.0, "c": 0.5}, "q2": {"a": 0.0, "b": 1.0, "c": 0.5}}


def test_hand_checked_choice() -> None:
    # z(first stage) = (+1.22, 0, -1.22), z(reranker) = (-1.22, +1.22, 0) for (a, b, c).
    # b overtakes a when alpha > 1/3; a must stay first for q2 -> no alpha wins both; q1 alone: 0.4 first.
    only_q1 = choose_alpha(RUN, RR, {"q1": {"b": 1}}, top_k=3, min_queries=1)
    assert only_q1.alpha == only_q1.best_alpha == 0.4 and only_q1.value == 1.0 and only_q1.queries == 1
    assert only_q1.by_alpha["0.3"] == 0.5 and only_q1.by_alpha["1"] == 1.0
    assert only_q1.gain == 0.5 and only_q1.gain_ci95 == (0.5, 0.5) and only_q1.status == "improved"
    both = choose_alpha(RUN, RR, {"q1": {"b": 1}, "q2": {"a": 1}}, top_k=3, min_queries=1)
    # alpha <= 0.6: one query at rank 1, the other at rank 2 (0.75); above 2/3, c passes a on q2 (a at rank 3).
    # The tie among 0 ... 0.6 goes to the smallest alpha (the first stage).
    assert {a for a, v in both.by_alpha.items() if v == 0.75} == {"0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6"}
    assert both.by_alpha["0.7"] == pytest.approx((1 + 1 / 3) / 2) and both.alpha == 0.0


def _validation(n_right: int, n_wrong: int) -> tuple[dict, dict, dict]:
    """``n_right`` queries where the first stage has the gold doc second and the reranker first, and ``n_wrong``
    mirrored ones (first stage first, reranker second): above alpha 1/3 each query moves by exactly 1/2 in MRR."""
    run, rr, qrels = {}, {}, {}
    for i in range(n_right + n_wrong):
        q = f"q{i}"
        if i < n_right:
            run[q], rr[q] = {"a": 3.0, "g": 2.0, "c": 1.0}, {"a": 0.0, "g": 1.0, "c": 0.5}
        else:
            run[q], rr[q] = {"g": 3.0, "a": 2.0, "c": 1.0}, {"g": 0.0, "a": 1.0, "c": 0.5}
        qrels[q] = {"g": 1}
    return run, rr, qrels


def test_a_reranker_is_trusted_only_with_a_significant_gain_on_enough_questions() -> None:
    # right on 45 of 60: +0.25 MRR@10 (45 up by 1/2, 15 down by 1/2), standard error about 0.06
    good = choose_alpha(*_validation(45, 15), top_k=3)
    assert good.status == "improved" and good.alpha == good.best_alpha > 1 / 3 and good.gain_ci95[0] > 0
    assert good.gain == pytest.approx(0.25) and good.value == good.by_alpha[f"{good.alpha:g}"] == pytest.approx(0.875)
    # right on 32 of 60: the best alpha still looks a little better on these questions (+0.033), but the CI spans 0
    coin = choose_alpha(*_validation(32, 28), top_k=3)
    assert coin.best_alpha > 0 and coin.gain_ci95[0] <= 0 < coin.gain
    assert coin.status == "no_gain" and coin.alpha == 0.0 and coin.value == coin.by_alpha["0"]
    # the good reranker on too few questions is not trusted either
    few = choose_alpha(*_validation(11, 1), top_k=3)
    assert few.status == "not_enough_data" and few.alpha == 0.0 and few.best_alpha > 0 and few.queries == 12


def test_errors() -> None:
    with pytest.raises(DataError, match="cannot choose alpha"):
        choose_alpha(RUN, RR, {"other": {"a": 1}})
    with pytest.raises(ValueError, match="grid"):
        choose_alpha(RUN, RR, {"q1": {"b": 1}}, grid=(1.5,))


def test_save_and_load(tmp_path: Path) -> None:
    assert load_fusion(tmp_path) is None
    choice = choose_alpha(RUN, RR, {"q1": {"b": 1}}, top_k=3, min_queries=1,
                          first_stage_settings={"fusion": "weighted", "norm": "zscore", "weights": [0.4, 0.6]})
    save_fusion(tmp_path, choice)
    assert load_fusion(tmp_path) == choice and load_fusion(tmp_path).alpha == 0.4
    assert saved_alpha(tmp_path) == 0.4 and saved_alpha(tmp_path / "nothing-here") is None
    (tmp_path / FUSION_FILE).write_text(json.dumps({"alpha": 7}))
    with pytest.raises(DataError, match="fusion.json"):
        load_fusion(tmp_path)


def _plateau() -> dict[float, dict[str, float]]:
    """100 questions (MRR 1 or 1/2); the alphas 0.3 ... 0.9 are within one or two questions of each other, and 0.9
    is the single best by one question: a plateau with its best point at the edge."""
    base = {f"q{i}": (1.0 if i % 2 else 0.5) for i in range(100)}

    def moved(first: int, up: int, down: int) -> dict[str, float]:
        d = dict(base)
        d.update({f"q{i}": 1.0 for i in range(first, first + 2 * up, 2)})  # even ids: 1/2 -> 1
        d.update({f"q{i}": 0.5 for i in range(first + 1, first + 2 * down, 2)})  # odd ids: 1 -> 1/2
        return d

    return {0.1: moved(0, 3, 4), 0.3: moved(10, 4, 3), 0.5: moved(20, 4, 3), 0.7: moved(30, 4, 3),
            0.9: moved(40, 5, 3)}


def test_the_bagged_rule_picks_inside_a_plateau_and_the_peak_of_a_sharp_curve() -> None:
    from rag_rerank.rerank.fusion import bagged_alpha

    plateau = _plateau()
    means = {a: sum(v.values()) / 100 for a, v in plateau.items()}
    assert max(means, key=means.get) == 0.9 and means[0.9] - means[0.5] == pytest.approx(0.005)
    assert {bagged_alpha(plateau, n_bags=1000, seed=s) for s in range(3)} == {0.5}
    # a sharp peak: 0.5 is better on 30 questions and worse on none; every resample agrees
    sharp = {**plateau, 0.5: {q: (1.0 if int(q[1:]) < 60 else v) for q, v in plateau[0.5].items()}}
    assert bagged_alpha(sharp, n_bags=200) == 0.5
    with pytest.raises(DataError, match="same, non-empty questions"):
        bagged_alpha({0.1: {"q1": 1.0}, 0.2: {"q2": 1.0}})


def test_choose_alpha_records_its_rule_and_the_verdict_names_the_rules_pick(tmp_path: Path) -> None:
    good = _validation(45, 15)
    best = choose_alpha(*good, top_k=3)
    bagged = choose_alpha(*good, top_k=3, rule="bagged")
    assert best.rule == "best" and best.rule_alpha == best.best_alpha == best.alpha
    # every alpha above 1/3 ranks the same here, so every resample's best is the smallest of them
    assert bagged.rule == "bagged" and bagged.rule_alpha == bagged.alpha == best.alpha
    coin = choose_alpha(*_validation(32, 28), top_k=3, rule="bagged")
    assert coin.status == "no_gain" and f"fusion at alpha {coin.rule_alpha:g}" in coin.verdict()
    save_fusion(tmp_path, bagged)
    assert load_fusion(tmp_path) == bagged
    old = {k: v for k, v in json.loads((tmp_path / FUSION_FILE).read_text()).items() if k not in ("rule", "rule_alpha")}
    (tmp_path / FUSION_FILE).write_text(json.dumps(old))  # a file written before rules existed
    assert load_fusion(tmp_path).rule == "best" and load_fusion(tmp_path).candidate == bagged.best_alpha
    with pytest.raises(ValueError, match="rule='median'"):
        choose_alpha(*good, top_k=3, rule="median")


def test_the_query_guard_serves_a_query_longer_than_the_training_questions_by_the_first_stage() -> None:
    from rag_rerank.rerank.fusion import FusionChoice, guard_limit, query_words

    questions = ["Who founded Rome?", "In which year was the city of Rome founded by Romulus?"]  # 3 and 11 words
    assert query_words(questions[1]) == 11 and guard_limit(questions, 1.5) == 17  # ceil(16.5)
    assert guard_limit(questions, None) is None and guard_limit([], 1.5) is None  # no recipe setting, no questions
    with pytest.raises(ValueError, match="query_guard"):
        guard_limit(questions, 0.5)
    choice = FusionChoice(alpha=0.4, metric="mrr@10", value=0.9, by_alpha={"0": 0.8}, queries=60, gain=0.1,
                          gain_ci95=(0.05, 0.15), max_query_words=17)
    assert choice.alpha_for(" ".join(["word"] * 17)) == 0.4 and not choice.guards(" ".join(["word"] * 17))
    assert choice.alpha_for(" ".join(["word"] * 18)) == 0.0 and choice.guards(" ".join(["word"] * 18))
    assert "more than 17 words" in choice.verdict()
    unguarded = FusionChoice(alpha=0.4, metric="mrr@10", value=0.9, by_alpha={"0": 0.8}, queries=60, gain=0.1,
                             gain_ci95=(0.05, 0.15))
    assert unguarded.alpha_for(" ".join(["word"] * 500)) == 0.4 and "words" not in unguarded.verdict()


def test_a_reranker_trained_on_questions_only_serves_other_queries_by_the_first_stage() -> None:
    from rag_rerank.rerank.fusion import FusionChoice, QueryGuard, guard_form

    questions = ["Who founded Rome?", "In which year was Rome founded", "Is Rome older than Athens?"]
    assert guard_form(questions, True) == "question"
    assert guard_form(questions, None) is None and guard_form([], True) is None  # no recipe setting, no questions
    assert guard_form([*questions, "Rome was founded by twins."], True) is None  # queries in another style: no form
    choice = FusionChoice(alpha=0.4, metric="mrr@10", value=0.9, by_alpha={"0": 0.8}, queries=60, gain=0.1,
                          gain_ci95=(0.05, 0.15), max_query_words=17, query_form="question")
    served = {q: choice.alpha_for(q) for q in ["When did Rome fall", "rome fall date", "Rome fell in 476.",
                                               "Explain why Rome fell", "why rome fell", "Did Rome fall?",
                                               "What " + " ".join(["word"] * 17)]}
    assert served == {"When did Rome fall": 0.4, "rome fall date": 0.0, "Rome fell in 476.": 0.0,
                      "Explain why Rome fell": 0.0, "why rome fell": 0.4, "Did Rome fall?": 0.4,
                      "What " + " ".join(["word"] * 17): 0.0}  # the last: 18 words
    assert "more than 17 words, or not a question" in choice.verdict()
    assert choice.guard == QueryGuard(17, "question") and QueryGuard(17, "question").counts(served) == {
        "max_query_words": 17, "query_form": "question", "guarded": 4, "too_long": 1, "not_a_question": 3,
        "queries": 7}
    assert not QueryGuard() and QueryGuard(form="question").describe() == "not a question"
    with pytest.raises(ValueError, match="query_form='keywords'"):
        FusionChoice(alpha=0.4, metric="mrr@10", value=0.9, query_form="keywords")


def test_the_guard_is_saved_with_the_choice_and_old_files_have_none(tmp_path: Path) -> None:
    choice = choose_alpha(RUN, RR, {"q1": {"b": 1}}, top_k=3, min_queries=1, max_query_words=25,
                          query_form="question")
    save_fusion(tmp_path, choice)
    assert load_fusion(tmp_path).max_query_words == 25 and load_fusion(tmp_path) == choice
    assert load_fusion(tmp_path).query_form == "question"
    old = json.loads((tmp_path / FUSION_FILE).read_text())
    del old["max_query_words"], old["query_form"]  # a fusion.json written before the guards existed
    (tmp_path / FUSION_FILE).write_text(json.dumps(old))
    assert load_fusion(tmp_path).max_query_words is None and load_fusion(tmp_path).query_form is None
    (tmp_path / FUSION_FILE).write_text(json.dumps({**old, "query_form": "claims"}))  # edited by hand
    with pytest.raises(ValueError, match="query_form='claims'"):
        load_fusion(tmp_path)


def test_a_per_query_alpha_fuses_some_queries_and_keeps_the_first_stage_order_of_others() -> None:
    from rag_rerank.rerank.runs import interpolate_run

    run = {"short": {"a": 3.0, "b": 2.0, "c": 1.0}, "long": {"a": 3.0, "b": 2.0, "c": 1.0}}
    heads = {q: {"a": 0.0, "b": 5.0, "c": 1.0} for q in run}
    out = interpolate_run(run, heads, {"short": 1.0, "long": 0.0}, 3)
    assert list(sorted(out["short"], key=lambda d: -out["short"][d])) == ["b", "c", "a"]  # the reranker's order
    assert list(sorted(out["long"], key=lambda d: -out["long"][d])) == ["a", "b", "c"]  # the first stage's
    assert out == {"short": interpolate_run({"short": run["short"]}, heads, 1.0, 3)["short"],
                   "long": interpolate_run({"long": run["long"]}, heads, 0.0, 3)["long"]}
    with pytest.raises(ValueError, match="alpha"):
        interpolate_run(run, heads, {"short": 1.5, "long": 0.0}, 3)


def test_the_guard_note_tells_a_user_whose_example_queries_are_past_the_guard() -> None:
    from rag_rerank.rerank.fusion import FusionChoice

    shipped = FusionChoice(alpha=0.5, metric="mrr@10", value=0.8, max_query_words=3)
    examples = ["a b", "a b c d e", "a b c d e f"]
    assert shipped.guard_note(examples, "of your example queries") == (
        "QUERY GUARD: 2 of 3 of your example queries are past the query guard (more than 3 words), unlike every "
        "question the reranker was trained on: the shipped system serves such queries by the first stage alone")
    assert shipped.guard_note(["a b"]) is None  # none past it
    refused = FusionChoice(alpha=0.0, metric="mrr@10", value=0.8, status="no_gain", max_query_words=3)
    assert refused.guard_note(examples) is None  # the first stage is shipped anyway
    assert FusionChoice(alpha=0.5, metric="mrr@10", value=0.8).guard_note(examples) is None  # no guard
    formed = FusionChoice(alpha=0.5, metric="mrr@10", value=0.8, max_query_words=3, query_form="question")
    assert formed.guard_note(["Who is a?", "a b"], "of your example queries") == (
        "QUERY GUARD: 1 of 2 of your example queries are past the query guard (more than 3 words, or not a "
        "question), unlike every question the reranker was trained on: the shipped system serves such queries by the "
        "first stage alone")
