"""Metrics against hand-computed cases and pytrec_eval; paired significance tests; run comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rag_rerank.evaluate.metrics import Metric, evaluate, gold_ranks, parse_metric, per_query, rank_histogram
from rag_rerank.evaluate.result import compare
from rag_rerank.evaluate.significance import paired_bootstrap, paired_randomization

# q1 ranking: d1 d2 d3 d4 d5 (scores .9 .. .5); relevant: d2 (rank 2), d4 (rank 4), d9 (not retrieved)
RUN = {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6, "d5": 0.5}}
QRELS = {"q1": {"d2": 1, "d4": 1, "d9": 1}}


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("mrr@10", 1 / 2),  # first relevant at rank 2
        ("mrr@1", 0.0),  # rank 1 is d1, not relevant
        ("mrr", 1 / 2),
        ("recall@5", 2 / 3),  # d2, d4 of {d2, d4, d9}
        ("recall@3", 1 / 3),  # only d2 in the top 3
        ("hit@1", 0.0),
        ("hit@2", 1.0),
        ("p@5", 2 / 5),
        ("p@10", 2 / 10),  # trec_eval P@k divides by k even when fewer are retrieved
        ("map", (1 / 2 + 2 / 4) / 3),  # precision at rank 2 and 4, over all 3 relevant docs
        ("map@3", (1 / 2) / 3),  # only rank 2 within the cutoff
        ("map@2", (1 / 2) / 3),  # trec_eval map_cut divides by all 3 relevant docs, not min(k, 3)
        # dcg = 1/log2(3) + 1/log2(5); ideal has 3 relevant docs: 1 + 1/log2(3) + 1/log2(4)
        ("ndcg@5", (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / 2)),
        # top 2: dcg = 1/log2(3); ideal top 2 = 1 + 1/log2(3)
        ("ndcg@2", (1 / math.log2(3)) / (1 + 1 / math.log2(3))),
    ],
)
def test_hand_computed_binary(metric: str, expected: float) -> None:
    assert per_query(RUN, QRELS, metric)["q1"] == pytest.approx(expected, abs=1e-12)


def test_graded_ndcg_and_zero_relevance() -> None:
    run = {"q": {"a": 0.9, "b": 0.8, "c": 0.7}}
    qrels = {"q": {"a": 1, "b": 0, "c": 3, "z": 2}}  # b judged non-relevant; z not retrieved
    # linear gain (trec_eval): dcg@3 = 1/log2(2) + 0 + 3/log2(4) = 2.5
    # ideal gains 3, 2, 1: 3 + 2/log2(3) + 1/log2(4)
    expected = 2.5 / (3 + 2 / math.log2(3) + 0.5)
    assert per_query(run, qrels, "ndcg@3")["q"] == pytest.approx(expected, abs=1e-12)
    assert per_query(run, qrels, "recall@3")["q"] == pytest.approx(2 / 3)  # a, c of {a, c, z}; b does not count
    # b (relevance 0) at rank 1 must not count as a hit
    assert per_query({"q": {"b": 1.0, "a": 0.5}}, qrels, "mrr@10")["q"] == 0.5


def test_ties_break_by_doc_id_whatever_the_insertion_order() -> None:
    qrels = {"q": {"b": 1}}
    for scores in ({"b": 1.0, "a": 1.0, "c": 0.5}, {"a": 1.0, "c": 0.5, "b": 1.0}):
        # (-score, doc_id): a before b on equal scores, so b is at rank 2
        assert per_query({"q": scores}, qrels, "mrr@10")["q"] == 0.5
        assert per_query({"q": scores}, qrels, "hit@1")["q"] == 0.0
    assert gold_ranks({"q": {"b": 1.0, "a": 1.0}}, qrels) == {"q": 2}


def test_missing_and_extra_queries() -> None:
    run = {"q1": {"a": 1.0}, "only_in_run": {"a": 1.0}, "q3": {}}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}, "no_relevant": {"a": 0}}
    pq = per_query(run, qrels, "mrr@10")
    # q2 missing from the run and q3 with an empty ranking score 0; only_in_run and no_relevant are ignored
    assert pq == {"q1": 1.0, "q2": 0.0, "q3": 0.0}
    assert evaluate(run, qrels, ["mrr@10", "recall@10"]) == {"mrr@10": pytest.approx(1 / 3),
                                                            "recall@10": pytest.approx(1 / 3)}
    assert evaluate({}, {}, ["mrr@10"]) == {"mrr@10": 0.0}


def test_evaluate_is_the_mean_of_per_query_and_does_not_mutate() -> None:
    run = {"q1": {"a": 0.3, "b": 0.2}, "q2": {"c": 0.9, "d": 0.1}}
    qrels = {"q1": {"b": 2}, "q2": {"c": 1, "d": 1}}
    snapshot = json.dumps([run, qrels])
    res = evaluate(run, qrels, ["NDCG@10", "success@1", "map"])
    assert list(res) == ["ndcg@10", "hit@1", "map"]
    for m, v in res.items():
        assert v == pytest.approx(np.mean(list(per_query(run, qrels, m).values())))
    assert res["hit@1"] == 0.5  # q1 misses at rank 1, q2 hits
    assert json.dumps([run, qrels]) == snapshot


def test_parse_metric() -> None:
    assert parse_metric("MRR@10") == Metric("mrr", 10)
    assert str(parse_metric(" precision @ 5 ")) == "p@5"
    assert parse_metric("map") == Metric("map", None)
    for bad, needle in [("foo@10", "unknown metric"), ("recall", "needs a cutoff"), ("mrr@0", ">= 1"),
                        ("ndcg@x", "unknown metric"), ("", "unknown metric")]:
        with pytest.raises(ValueError, match=needle):
            parse_metric(bad)


def _random_case(seed: int, n_queries: int = 30, n_docs: int = 40) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    run, qrels = {}, {}
    for i in range(n_queries):
        docs = [f"d{j}" for j in rng.choice(80, size=n_docs, replace=False)]
        scores = rng.permutation(n_docs) + rng.random()  # distinct scores: trec_eval breaks ties differently
        run[f"q{i}"] = {d: float(s) for d, s in zip(docs, scores, strict=True)}
        judged = rng.choice(80, size=int(rng.integers(1, 8)), replace=False)
        rels = {f"d{j}": int(rng.integers(0, 4)) for j in judged}
        rels[f"d{judged[0]}"] = int(rng.integers(1, 4))  # at least one relevant
        qrels[f"q{i}"] = rels
    return run, qrels


@pytest.mark.parametrize("seed", range(5))
def test_matches_pytrec_eval_on_random_runs(seed: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run, qrels = _random_case(seed)
    measures = {"recip_rank", "ndcg", "ndcg_cut.5,10", "recall.5,10,100", "success.1,5", "map", "map_cut.10", "P.5"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    pairs = {"mrr": "recip_rank", "ndcg": "ndcg", "ndcg@5": "ndcg_cut_5", "ndcg@10": "ndcg_cut_10",
             "recall@5": "recall_5", "recall@10": "recall_10", "recall@100": "recall_100", "hit@1": "success_1",
             "hit@5": "success_5", "map": "map", "map@10": "map_cut_10", "p@5": "P_5"}
    for ours, theirs in pairs.items():
        pq = per_query(run, qrels, ours)
        for q in qrels:
            assert pq[q] == pytest.approx(ref[q][theirs], abs=1e-9), (ours, q)
    # mrr@10 is recip_rank over the top 10
    top10 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:10]) for q, d in run.items()}
    ref10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    pq = per_query(run, qrels, "mrr@10")
    assert all(pq[q] == pytest.approx(ref10[q]["recip_rank"]) for q in qrels)


# --------------------------------------------------------------------------- significance


def _scores(values: np.ndarray) -> dict[str, float]:
    return {f"q{i:04d}": float(v) for i, v in enumerate(values)}


def test_bootstrap_ci_contains_the_sample_delta_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(400)
    noise = rng.normal(0, 0.3, 200)
    a = base + 0.1 + np.concatenate([noise, -noise])  # mean delta is exactly 0.1
    r = paired_bootstrap(_scores(a), _scores(base), n_resamples=5000, seed=1)
    assert r.mean_delta == pytest.approx(0.1)
    assert r.ci95_lo < 0.1 < r.ci95_hi
    se = np.std(a - base) / math.sqrt(400)
    assert r.ci95_hi - r.ci95_lo == pytest.approx(2 * 1.96 * se, rel=0.1)  # matches the normal approximation
    assert r.p_value < 0.001
    assert paired_bootstrap(_scores(a), _scores(base), n_resamples=5000, seed=1) == r
    flipped = paired_bootstrap(_scores(base), _scores(a), n_resamples=5000, seed=1)
    assert flipped.mean_delta == pytest.approx(-0.1)


def test_bootstrap_ci_covers_the_true_delta_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(42)
    covered = 0
    for trial in range(200):
        d = 0.05 + rng.normal(0, 0.2, 100)  # the population delta is 0.05
        r = paired_bootstrap(_scores(d), _scores(np.zeros(100)), n_resamples=1000, seed=trial)
        covered += r.ci95_lo <= 0.05 <= r.ci95_hi
    assert 0.88 <= covered / 200 <= 0.99


def test_identical_systems_and_symmetric_noise_give_large_p() -> None:
    x = _scores(np.random.default_rng(3).random(300))
    r = paired_bootstrap(x, dict(x), n_resamples=2000)
    assert (r.mean_delta, r.ci95_lo, r.ci95_hi, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert paired_randomization(x, dict(x), n_resamples=2000).p_value == 1.0
    noise = np.random.default_rng(4).normal(0, 0.3, 150)
    d = _scores(np.concatenate([noise, -noise]))  # mean delta exactly 0
    zeros = _scores(np.zeros(300))
    assert paired_bootstrap(d, zeros, n_resamples=2000).p_value > 0.5
    assert paired_randomization(d, zeros, n_resamples=2000).p_value > 0.5


def test_clearly_better_system_gives_small_p() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(200)
    better = base + 0.15 + rng.normal(0, 0.1, 200)
    assert paired_bootstrap(_scores(better), _scores(base), n_resamples=2000).p_value < 0.01
    rt = paired_randomization(_scores(better), _scores(base), n_resamples=2000)
    assert rt.p_value == pytest.approx(1 / 2001)  # no sign flip reaches the observed delta


def test_randomization_matches_exact_enumeration() -> None:
    d = np.array([0.3, -0.1, 0.2, 0.05, 0.4, -0.2, 0.1, 0.0])
    obs = abs(d.mean())
    signs = np.array(np.meshgrid(*[[-1, 1]] * len(d))).reshape(len(d), -1).T  # all 256 sign patterns
    exact = np.mean(np.abs(signs @ d / len(d)) >= obs - 1e-12)
    r = paired_randomization(_scores(d), _scores(np.zeros(len(d))), n_resamples=40000, seed=7)
    assert r.p_value == pytest.approx(exact, abs=0.01)


def test_paired_tests_reject_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap({"a": 1.0, "b": 0.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="at least one query"):
        paired_randomization({}, {})
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap({"a": 1.0}, {"a": 0.0}, n_resamples=0)


def test_compare_structure_and_json() -> None:
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(40)}
    hybrid = {f"q{i}": {"x": 1.0, f"d{i}": 0.5} for i in range(40)}  # gold at rank 2 everywhere: mrr 0.5
    tuned = {f"q{i}": {f"d{i}": 1.0, "x": 0.5} for i in range(30)}  # gold at rank 1 for 30; 10 missing -> 0
    out = compare({"hybrid": hybrid, "tuned": tuned}, qrels, metrics=["mrr@10", "hit@1"], n_resamples=500)
    assert json.loads(json.dumps(out.to_dict()))["baseline"] == "hybrid"  # JSON-serialisable
    assert out.queries == 40 and out.baseline == "hybrid" and out.metrics == ["mrr@10", "hit@1"]
    assert out.systems["hybrid"]["mrr@10"] == 0.5
    assert out.systems["tuned"]["mrr@10"] == pytest.approx(30 / 40)
    d = out.get_delta("tuned")
    assert set(out.delta) == {"tuned_vs_hybrid"}
    assert d.delta == pytest.approx(30 / 40 - 0.5)
    assert d.ci95[0] <= d.delta <= d.ci95[1] and d.excludes_zero
    assert 0 < d.p <= 1 and 0 < d.p_randomization <= 1
    with pytest.raises(ValueError, match="bm25"):
        compare({"hybrid": hybrid}, qrels, baseline="bm25")
    # a second baseline: every system against each, and the second against the first (not the reverse)
    two = compare({"hybrid": hybrid, "tuned": tuned, "other": hybrid}, qrels, baseline=["hybrid", "other"],
                  metrics=["mrr@10"], n_resamples=200)
    assert set(two.delta) == {"tuned_vs_hybrid", "other_vs_hybrid", "tuned_vs_other"}
    assert two.get_delta("tuned", "other").delta == pytest.approx(30 / 40 - 0.5)


def test_gold_ranks_and_histogram() -> None:
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"x": 1.0}}
    qrels = {"q1": {"c": 1, "b": 2}, "q2": {"y": 1}, "q3": {"z": 1}, "q4": {"a": 0}}
    assert gold_ranks(run, qrels) == {"q1": 2, "q2": None, "q3": None}
    hist = rank_histogram([1, 2, 3, 4, 5, 6, 10, 11, 100, 101, None], edges=(1, 2, 3, 5, 10, 100))
    assert hist == {"1": 1, "2": 1, "3": 1, "4-5": 2, "6-10": 2, "11-100": 2, ">100": 1, "none": 1}
    assert sum(rank_histogram(gold_ranks(run, qrels)).values()) == 3
    with pytest.raises(ValueError, match="edges"):
        rank_histogram([1], edges=(0, 5))
