"""Choosing the reranker/first-stage fusion alpha on validation questions (rag_rerank.fusion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_rerank.errors import DataError
from rag_rerank.evaluation import evaluate
from rag_rerank.fusion import FUSION_FILE, choose_alpha, load_fusion, save_fusion
from rag_rerank.report import interpolate_run

# two queries; first stage ranks a > b > c for both. The reranker is right on q1 (gold b) and wrong on q2 (gold a).
RUN = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"a": 3.0, "b": 2.0, "c": 1.0}}
RR = {"q1": {"a": 0.0, "b": 1.0, "c": 0.5}, "q2": {"a": 0.0, "b": 1.0, "c": 0.5}}


def test_hand_checked_choice() -> None:
    # z(first stage) = (+1.22, 0, -1.22), z(reranker) = (-1.22, +1.22, 0) for (a, b, c).
    # b overtakes a when alpha > 1/3; a must stay first for q2 -> no alpha wins both; q1 alone: 0.4 first.
    only_q1 = choose_alpha(RUN, RR, {"q1": {"b": 1}}, top_k=3)
    assert only_q1.alpha == 0.4 and only_q1.value == 1.0 and only_q1.queries == 1
    assert only_q1.by_alpha["0.3"] == 0.5 and only_q1.by_alpha["1"] == 1.0
    both = choose_alpha(RUN, RR, {"q1": {"b": 1}, "q2": {"a": 1}}, top_k=3)
    # alpha <= 0.6: one query at rank 1, the other at rank 2 (0.75); above 2/3, c passes a on q2 (a at rank 3).
    # The tie among 0 ... 0.6 goes to the smallest alpha (the first stage).
    assert {a for a, v in both.by_alpha.items() if v == 0.75} == {"0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6"}
    assert both.by_alpha["0.7"] == pytest.approx((1 + 1 / 3) / 2) and both.alpha == 0.0


def test_choice_is_the_argmax_of_the_recomputed_metric() -> None:
    qrels = {"q1": {"c": 1}, "q2": {"b": 1}}
    choice = choose_alpha(RUN, RR, qrels, top_k=3, grid=(0.0, 0.25, 0.5, 0.75, 1.0))
    for a, v in choice.by_alpha.items():
        assert v == pytest.approx(evaluate(interpolate_run(RUN, RR, float(a), 3), qrels, ["mrr@10"])["mrr@10"])
    assert choice.value == max(choice.by_alpha.values())


def test_errors() -> None:
    with pytest.raises(DataError, match="cannot choose alpha"):
        choose_alpha(RUN, RR, {"other": {"a": 1}})
    with pytest.raises(ValueError, match="grid"):
        choose_alpha(RUN, RR, {"q1": {"b": 1}}, grid=(1.5,))


def test_save_and_load(tmp_path: Path) -> None:
    assert load_fusion(tmp_path) is None
    choice = choose_alpha(RUN, RR, {"q1": {"b": 1}}, top_k=3)
    save_fusion(tmp_path, choice)
    assert load_fusion(tmp_path)["alpha"] == 0.4
    (tmp_path / FUSION_FILE).write_text(json.dumps({"alpha": 7}))
    with pytest.raises(DataError, match="fusion.json"):
        load_fusion(tmp_path)
