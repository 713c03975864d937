"""Evaluators against hand-computed values, the sanity gate's rules, and the MSE CSV through both fit paths."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from rag_rerank.train.evaluators import MSEEvaluator, RerankingEvaluator
from rag_rerank.train.guards import SanityGateCallback, constant_bce_loss


class FixedScorer:
    """A stand-in *model* (not the unit under test): scores a pair from a lookup table of logits."""

    def __init__(self, table: dict[tuple[str, str], float], default: float = 0.0) -> None:
        self.table, self.default = table, default
        self.model_card_data = None

    def predict(self, pairs, **kwargs):  # noqa: ANN001, ANN003
        return np.array([self.table.get(tuple(p), self.default) for p in pairs], dtype=np.float32)


def test_reranking_evaluator_counts_a_missed_positive_in_ndcg_and_an_empty_one_as_zero() -> None:
    # two positives, one retrieved and put first: DCG = 1, IDCG = 1 + 1/log2(3) (the missed one counts)
    samples = [{"query": "q", "positive": ["g", "lost"], "documents": ["g", "x", "y"]},
               {"query": "r", "positive": [], "documents": ["z"]}]
    m = RerankingEvaluator(samples, at_k=10, name="v", write_csv=False)(FixedScorer({("q", "g"): 3.0}))
    assert m["v_ndcg@10"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 0.0) / 2)
    assert m["v_mrr@10"] == pytest.approx((1.0 + 0.0) / 2)
    # the positive at rank 2 of 3: MRR 1/2 and NDCG 1/log2(3) against one relevant
    one = [{"query": "q", "positive": ["g"], "documents": ["x", "g", "y"]}]
    m = RerankingEvaluator(one, at_k=10, name="v", write_csv=False)(FixedScorer({("q", "x"): 9.0, ("q", "g"): 1.0}))
    assert m["v_mrr@10"] == pytest.approx(0.5) and m["v_ndcg@10"] == pytest.approx(1 / math.log2(3))
    m = RerankingEvaluator(one, at_k=1, name="v", write_csv=False)(FixedScorer({("q", "x"): 9.0, ("q", "g"): 1.0}))
    assert m["v_mrr@1"] == 0.0


def _samples() -> list[dict]:
    return [
        # positive at first-stage rank 3; the model puts it first
        {"query": "q1", "positive": ["g1"], "documents": ["a", "b", "g1"]},
        # positive at first-stage rank 1; the model puts it second
        {"query": "q2", "positive": ["g2"], "documents": ["g2", "c"]},
        # positive missed by the first stage: scores 0 whatever the model does (not injected)
        {"query": "q3", "positive": ["g3"], "documents": ["d", "e"]},
    ]


def test_reranking_evaluator_hand_computed() -> None:
    model = FixedScorer({("q1", "g1"): 5.0, ("q1", "a"): 1.0, ("q1", "b"): 0.0, ("q2", "g2"): 0.0, ("q2", "c"): 2.0,
                         ("q3", "d"): 1.0, ("q3", "e"): 0.5})
    ev = RerankingEvaluator(_samples(), at_k=10, name="val", write_csv=False)
    m = ev(model)
    assert m["val_mrr@10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert m["val_base_mrr@10"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert m["val_ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 0) / 3)
    assert m["val_base_ndcg@10"] == pytest.approx((1 / math.log2(4) + 1 + 0) / 3)
    assert m["val_base_recall@3"] == pytest.approx(2 / 3)
    assert ev.primary_metric == "val_mrr@10" and ev.greater_is_better


def test_reranking_evaluator_with_a_prior_ranks_by_logit_plus_weighted_prior() -> None:
    from rag_rerank.errors import ConfigError

    samples = [{**s, "prior": [1.0] + [0.0] * (len(s["documents"]) - 1)} for s in _samples()]
    model = FixedScorer({("q1", "g1"): 1.5, ("q2", "c"): 1.5})  # the logits alone: g1 first, c above g2
    # weight 1: g1 at 1.5 beats a at 1.0; in q2, c at 1.5 beats g2 at 1.0
    m = RerankingEvaluator(samples, at_k=10, name="v", write_csv=False, prior_weight=1.0)(model)
    assert m["v_mrr@10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    # weight 2: the prior outweighs the logits: a (2.0) above g1 (1.5), g2 (2.0) above c (1.5)
    m = RerankingEvaluator(samples, at_k=10, name="v", write_csv=False, prior_weight=2.0)(model)
    assert m["v_mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    with pytest.raises(ConfigError, match="prior"):
        RerankingEvaluator(_samples(), prior_weight=1.0)


def test_reranking_evaluator_ties_keep_first_stage_order_and_cutoff() -> None:
    # all scores equal: the reranked order is the input order, so reranked == first stage
    ev = RerankingEvaluator(_samples(), at_k=2, write_csv=False)
    m = ev(FixedScorer({}, default=0.0))
    assert m["mrr@2"] == pytest.approx(m["base_mrr@2"]) == pytest.approx((0 + 1 + 0) / 3)


def test_reranking_evaluator_rejects_bad_samples() -> None:
    with pytest.raises(ValueError, match="documents"):
        RerankingEvaluator([{"query": "q", "positive": ["p"]}])
    with pytest.raises(ValueError, match="no samples"):
        RerankingEvaluator([])


def test_reranking_evaluator_csv(tmp_path: Path) -> None:
    ev = RerankingEvaluator(_samples(), name="v")
    ev(FixedScorer({}), output_path=str(tmp_path), epoch=1, steps=5)
    ev(FixedScorer({}), output_path=str(tmp_path), epoch=2, steps=10)
    rows = list(csv.reader((tmp_path / "reranking_evaluation_v_results@10.csv").open()))
    assert rows[0][:3] == ["epoch", "steps", "MRR@10"] and len(rows) == 3 and rows[2][:2] == ["2", "10"]


def test_mse_evaluator_hand_computed_and_csv(tmp_path: Path) -> None:
    pairs = [("a", "b"), ("c", "d")]
    model = FixedScorer({("a", "b"): 0.0, ("c", "d"): math.log(3)})  # sigmoid -> 0.5, 0.75
    ev = MSEEvaluator(pairs, [1.0, 0.25], name="sts")
    res = ev(model, output_path=str(tmp_path), epoch=0, steps=7)
    expected = ((0.5 - 1.0) ** 2 + (0.75 - 0.25) ** 2) / 2
    assert res == {"sts_mse": pytest.approx(expected)}
    assert ev.primary_metric == "sts_mse" and ev.greater_is_better is False
    ev(model, output_path=str(tmp_path), epoch=1, steps=14)
    rows = list(csv.reader((tmp_path / "mse_evaluation_sts_results.csv").open()))
    assert rows[0] == ["epoch", "steps", "mse"]
    assert [r[:2] for r in rows[1:]] == [["0", "7"], ["1", "14"]]
    assert float(rows[1][2]) == pytest.approx(expected)


def test_mse_evaluator_validates() -> None:
    with pytest.raises(ValueError, match="1 labels"):
        MSEEvaluator([("a", "b"), ("c", "d")], [1.0])


def test_constant_bce_loss_is_the_base_rate_entropy() -> None:
    p = 0.2
    assert constant_bce_loss([1, 0, 0, 0, 0]) == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)))
    # pos_weight 4 balances 1:4, so the best constant is 0.5 and the loss is 4*0.2*ln2 + 0.8*ln2
    assert constant_bce_loss([1, 0, 0, 0, 0], pos_weight=4.0) == pytest.approx(1.6 * math.log(2))


class _State:
    def __init__(self, step: int) -> None:
        self.global_step = step


class _Control:
    should_training_stop = False


def _gate(**kw) -> SanityGateCallback:  # noqa: ANN003
    base = dict(loss_floor=math.log(5), floor_name="log(5)", check_after_step=10, primary_key="eval_mrr",
                first_stage_key="eval_base_mrr", min_delta=-0.1, mode="stop")
    return SanityGateCallback(**{**base, **kw})


@pytest.mark.parametrize(
    ("losses", "mrr", "fires"),
    [
        ([1.60, 1.61, 1.60], 0.20, True),   # plateau and far below the first stage: the probe's collapse
        ([1.60, 1.61, 1.60], 0.70, True),   # plateau, not above the first stage (0.75)
        ([0.90, 0.60, 0.40], 0.60, True),   # learning, but far below the first stage
        ([0.90, 0.60, 0.40], 0.72, False),  # learning, near the first stage: fusion will still help
        ([1.60, 1.61, 1.60], 0.80, False),  # plateau level but ranks above the first stage (small logit scale)
    ],
)
def test_sanity_gate_rules(losses: list[float], mrr: float, fires: bool) -> None:
    gate, control = _gate(), _Control()
    for step, loss in zip([6, 8, 10], losses, strict=True):
        gate.on_log(None, _State(step), control, logs={"loss": loss})
    gate.on_evaluate(None, _State(4), control, metrics={"eval_mrr": 0.0, "eval_base_mrr": 0.75})  # too early
    assert not gate.checked
    gate.on_evaluate(None, _State(10), control, metrics={"eval_mrr": mrr, "eval_base_mrr": 0.75})
    assert gate.fired is fires and control.should_training_stop is fires
    if fires:
        assert "head_learning_rate" in gate.message and "listwise" in gate.message


def test_sanity_gate_warn_and_off_do_not_stop() -> None:
    for mode, fired in (("warn", True), ("off", False)):
        gate, control = _gate(mode=mode, primary_key=None, first_stage_key=None), _Control()
        gate.on_log(None, _State(10), control, logs={"loss": 1.61})
        gate.on_step_end(None, _State(10), control)
        assert gate.fired is fired and not control.should_training_stop


def test_sanity_gate_plateau_fires_when_ranking_did_not_move_from_its_start() -> None:
    """A random model can beat a weak first stage by chance; at the plateau it must also beat its start."""
    gate, control = _gate(), _Control()
    gate.before_value = 0.80
    for step in (6, 8, 10):
        gate.on_log(None, _State(step), control, logs={"loss": 1.61})
    gate.on_evaluate(None, _State(10), control, metrics={"eval_mrr": 0.80, "eval_base_mrr": 0.75})
    assert gate.fired and "sits at" in gate.message


def test_window_mode_scores_like_the_served_reranker(tiny_cross_encoder_dir: Path) -> None:
    """long_documents='window' ranks with Reranker's windows (as the model is served), None with truncation."""
    from sentence_transformers import CrossEncoder

    from rag_rerank.rerank.reranker import Reranker

    words = [f"w{i}x" for i in range(400)]
    docs = [" ".join(words[i * 7: i * 7 + 90]) for i in range(6)]  # each far past 32 tokens
    samples = [{"query": f"{words[i * 7 + 60]} {words[i * 7 + 70]}", "positive": [docs[i]], "documents": docs}
               for i in range(6)]
    ce = CrossEncoder(str(tiny_cross_encoder_dir), max_length=32)

    def mrr_from(scores: np.ndarray) -> float:
        rr = []
        for i in range(len(samples)):
            sc = scores[i * 6: (i + 1) * 6]
            order = sorted(range(6), key=lambda j, sc=sc: (-sc[j], j))
            rr.append(1.0 / (order.index(i) + 1) if order.index(i) < 10 else 0.0)
        return float(np.mean(rr))

    pairs = [(s["query"], d) for s in samples for d in s["documents"]]
    # the same batch size as the evaluator's: identical batches give bit-identical scores (a tiny random model's
    # scores are close together, so the ranking must not depend on batching noise)
    served = Reranker(str(tiny_cross_encoder_dir), max_length=32, activation="none", batch_size=64).predict(pairs)
    cut = ce.predict(pairs, batch_size=64, activation_fn=__import__("torch").nn.Identity())
    assert np.abs(served - cut).max() > 1e-6  # windows see past token 32: the two policies differ here
    window = RerankingEvaluator(samples, name="v", write_csv=False, long_documents="window")(ce)
    plain = RerankingEvaluator(samples, name="v", write_csv=False)(ce)
    assert window["v_mrr@10"] == pytest.approx(mrr_from(served))
    assert plain["v_mrr@10"] == pytest.approx(mrr_from(cut))
    with pytest.raises(ValueError, match="long_documents"):
        RerankingEvaluator(samples, long_documents="max")


def test_reranker_over_an_in_memory_model_equals_the_folder_and_caches_nothing(tiny_cross_encoder_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    from rag_rerank.rerank.reranker import Reranker

    pairs = [("q one", "a short passage"), ("q two", " ".join(["long"] * 200)), ("q one", "a short passage")]
    in_memory = Reranker(CrossEncoder(str(tiny_cross_encoder_dir)), max_length=48)
    from_folder = Reranker(str(tiny_cross_encoder_dir), max_length=48)
    np.testing.assert_allclose(in_memory.predict(pairs), from_folder.predict(pairs), atol=1e-6)
    assert in_memory.cache_info().size == 0 and from_folder.cache_info().size == 2
    with pytest.raises(ValueError, match="pass its folder"):
        Reranker(CrossEncoder(str(tiny_cross_encoder_dir)), backend="onnx")
    with pytest.raises(TypeError, match="CrossEncoder"):
        Reranker(object())  # type: ignore[arg-type]
