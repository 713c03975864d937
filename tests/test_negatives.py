"""Hard-negative mining: each guard on hand-built cases, determinism, invariants, training rows."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag_rerank.errors import DataError
from rag_rerank.io import load_beir
from rag_rerank.train.groups import build_groups, load_chunk_meta, to_pairs
from rag_rerank.train.mining import MiningConfig, mine_hard_negatives

OFF = dict(relative_margin=None, exclude_same_doc_neighbors=0, exclude_overlap=False, num_random=0)  # no guards
REMOVED = ("removed_positive", "removed_outside_window", "removed_outside_pool", "removed_neighbor", "removed_overlap",
           "removed_margin")


def _meta(ids, **fields) -> dict:
    """Chunk meta with distinct one-word texts (no overlap) unless overridden."""
    return {d: {"doc_id": None, "position": None, "text": f"word{d}", **fields.get(d, {})} for d in ids}


def _run(ids, top: float = 1.0, step: float = 0.01) -> dict[str, float]:
    """Scores strictly decreasing in the given order."""
    return {d: top - i * step for i, d in enumerate(ids)}


def _check_accounting(report: dict) -> None:
    assert report["candidates_considered"] == sum(report[k] for k in REMOVED) + report["candidates_kept"]


def test_positive_guard_and_window() -> None:
    ids = [f"c{i}" for i in range(1, 11)]  # ranks 1..10
    qrels = {"q": {"c3": 1, "c9": 2, "c5": 0}}  # c5 judged non-relevant: a fine negative
    res = mine_hard_negatives({"q": _run(ids)}, qrels, _meta(ids), MiningConfig(rank_min=2, rank_max=6,
                                                                                num_negatives=10, **OFF))
    # window = ranks 2..6 = c2 c3 c4 c5 c6; c3 is a positive
    assert res.negatives["q"] == ["c2", "c4", "c5", "c6"]
    assert res.num_hard["q"] == 4
    r = res.report
    assert r["removed_positive"] == 2  # c3 in the window, c9 outside it
    assert r["removed_outside_window"] == 4  # c1, c7, c8, c10
    assert r["candidates_kept"] == 4 and r["queries_short_of_hard"] == 1
    _check_accounting(r)


def test_positives_pool_never_shows_a_chunk_only_as_a_negative() -> None:
    ids = [f"c{i}" for i in range(1, 21)]
    qrels = {"a": {"c1": 1}, "b": {"c4": 1}, "c": {"c7": 1}, "d": {"c15": 1}}  # the other chunks got no question
    run = {q: _run(ids) for q in qrels}
    cfg = MiningConfig(rank_min=1, rank_max=20, num_negatives=10, **{**OFF, "num_random": 2})
    corpus = mine_hard_negatives(run, qrels, _meta(ids), cfg)
    pooled = mine_hard_negatives(run, qrels, _meta(ids), dataclasses.replace(cfg, negative_pool="positives"))
    positives = {"c1", "c4", "c7", "c15"}
    assert any(set(n) - positives for n in corpus.negatives.values())  # the default shows question-less chunks
    for q, negs in pooled.negatives.items():
        assert set(negs) <= positives - set(qrels[q]) and negs  # only other questions' positives
    assert pooled.negatives["a"][:3] == ["c4", "c7", "c15"]  # still in the first stage's rank order
    assert pooled.report["removed_outside_pool"] == 4 * 16  # 16 question-less chunks in each query's window
    _check_accounting(pooled.report)
    _check_accounting(corpus.report)
    with pytest.raises(Exception, match="negative_pool"):
        MiningConfig(negative_pool="everything")  # type: ignore[arg-type]


def test_num_negatives_takes_the_best_ranked_survivors() -> None:
    ids = [f"c{i}" for i in range(1, 11)]
    res = mine_hard_negatives({"q": _run(ids)}, {"q": {"c1": 1}}, _meta(ids), MiningConfig(num_negatives=3, **OFF))
    assert res.negatives["q"] == ["c2", "c3", "c4"]
    assert res.report["queries_short_of_hard"] == 0


def test_consistency_filter_drops_queries_whose_positive_the_first_stage_misses() -> None:
    ids = [f"c{i}" for i in range(1, 11)]
    run = {"near": _run(ids), "far": _run(ids), "gone": _run(ids)}
    qrels = {"near": {"c3": 1}, "far": {"c7": 1}, "gone": {"x": 1}}  # positive at rank 3, rank 7, not retrieved
    meta = _meta([*ids, "x"])
    res = mine_hard_negatives(run, qrels, meta, MiningConfig(max_positive_rank=5, num_negatives=2, **OFF))
    assert res.inconsistent == {"far", "gone"} and res.report["dropped_inconsistent"] == 2
    assert res.negatives["near"] == ["c2", "c4"] and res.negatives["far"] == res.negatives["gone"] == []
    _check_accounting(res.report)  # a dropped query's candidates are not counted as considered
    assert "consistency filter dropped 2" in res.summary()
    keep_all = mine_hard_negatives(run, qrels, meta, MiningConfig(num_negatives=2, **OFF))
    assert keep_all.inconsistent == frozenset() and keep_all.report["dropped_inconsistent"] == 0
    assert keep_all.negatives["far"] == ["c2", "c3"]
    with pytest.raises(ValueError, match="max_positive_rank"):
        MiningConfig(max_positive_rank=0)


def test_neighbor_guard() -> None:
    ids = ["p", "d4", "d6", "d7", "e5", "nometa", "d5b"]
    fields = {"p": {"doc_id": "D", "position": 5}, "d4": {"doc_id": "D", "position": 4},
              "d6": {"doc_id": "D", "position": 6}, "d7": {"doc_id": "D", "position": 7},
              "e5": {"doc_id": "E", "position": 5}, "d5b": {"doc_id": "D", "position": None}}
    meta = _meta(ids, **fields)
    run, qrels = {"q": _run(ids)}, {"q": {"p": 1}}
    base = dict(OFF, rank_min=1, num_negatives=10)
    expected = {0: ["d4", "d6", "d7", "e5", "nometa", "d5b"], 1: ["d7", "e5", "nometa", "d5b"],
                2: ["e5", "nometa", "d5b"]}
    for n, negs in expected.items():
        res = mine_hard_negatives(run, qrels, meta, MiningConfig(**{**base, "exclude_same_doc_neighbors": n}))
        assert res.negatives["q"] == negs, n
        assert res.report["removed_neighbor"] == 6 - len(negs)
        _check_accounting(res.report)


def test_overlap_guard() -> None:
    words = [f"w{i}" for i in range(40)]
    pos_text = " ".join(words[:20])
    meta = {
        "p": {"text": pos_text},
        "dup": {"text": pos_text.upper()},  # same tokens after lower-casing: Jaccard 1
        "span12": {"text": " ".join(words[8:20] + [f"x{i}" for i in range(30)])},  # shares 12 consecutive words
        "span11": {"text": " ".join(words[9:20] + [f"x{i}" for i in range(30)])},  # shares only 11
        "jac": {"text": " ".join(words[:14:2] + words[1:14:2][::-1] + ["y1", "y2"])},  # 14/22 >= 0.6, no 12-span
        "far": {"text": "completely different text here"},
        "notext": {},
    }
    ids = ["p", "dup", "span12", "span11", "jac", "far", "notext"]
    cfg = dict(OFF, rank_min=1, num_negatives=10, exclude_overlap=True)
    res = mine_hard_negatives({"q": _run(ids)}, {"q": {"p": 1}}, meta, MiningConfig(**cfg))
    assert res.negatives["q"] == ["span11", "far", "notext"]
    assert res.report["removed_overlap"] == 3
    _check_accounting(res.report)
    no_guard = MiningConfig(**{**cfg, "exclude_overlap": False})
    off = mine_hard_negatives({"q": _run(ids)}, {"q": {"p": 1}}, meta, no_guard)
    assert off.report["removed_overlap"] == 0 and len(off.negatives["q"]) == 6
    no_span = MiningConfig(**{**cfg, "overlap_ngram": 0})
    assert "span12" in mine_hard_negatives({"q": _run(ids)}, {"q": {"p": 1}}, meta, no_span).negatives["q"]


def test_margin_guard_cosine_and_negative_scores() -> None:
    # cosine-like: positive 0.8 -> threshold 0.8 - 0.8 * 0.05 = 0.76
    run = {"q": {"above": 0.9, "p": 0.8, "close": 0.78, "ok1": 0.70, "ok2": 0.5}}
    meta = _meta(run["q"])
    cfg = MiningConfig(**{**OFF, "rank_min": 1, "num_negatives": 10, "relative_margin": 0.05})
    res = mine_hard_negatives(run, {"q": {"p": 1}}, meta, cfg)
    assert res.negatives["q"] == ["ok1", "ok2"]
    assert res.report["removed_margin"] == 2  # "above" (scores higher than the positive) and "close"
    # negative scores (e.g. logits): threshold = -2.0 - |-2.0| * 0.1 = -2.2
    run2 = {"q": {"p": -2.0, "a": -2.1, "b": -2.3}}
    res2 = mine_hard_negatives(run2, {"q": {"p": 1}}, _meta(run2["q"]),
                               MiningConfig(**{**OFF, "rank_min": 1, "relative_margin": 0.1}))
    assert res2.negatives["q"] == ["b"] and res2.report["removed_margin"] == 1
    _check_accounting(res2.report)


def test_margin_guard_skipped_when_positive_unscored_and_margin_scores() -> None:
    run = {"q": {"a": 0.9, "b": 0.8, "c": 0.7}}
    meta = _meta(["a", "b", "c", "p"])
    cfg = MiningConfig(**{**OFF, "rank_min": 1, "num_negatives": 10, "relative_margin": 0.05})
    res = mine_hard_negatives(run, {"q": {"p": 1}}, meta, cfg)
    assert res.negatives["q"] == ["a", "b", "c"]
    assert res.report["removed_margin"] == 0 and res.report["queries_positive_not_in_run"] == 1
    # rank by `run`, apply the margin on other scores: positive 0.5 -> threshold 0.475
    dense = {"q": {"p": 0.5, "a": 0.2, "b": 0.49, "c": 0.1}}
    res = mine_hard_negatives(run, {"q": {"p": 1}}, meta, cfg, margin_scores=dense)
    assert res.negatives["q"] == ["a", "c"] and res.report["removed_margin"] == 1


def test_random_negatives_pass_the_guards_and_are_disjoint() -> None:
    # pool: the positive, its neighbours and a duplicate of it, and exactly one safe chunk
    meta = {"p": {"doc_id": "D", "position": 3, "text": "alpha beta"},
            "n2": {"doc_id": "D", "position": 2, "text": "gamma"},
            "n4": {"doc_id": "D", "position": 4, "text": "delta"},
            "dup": {"text": "beta alpha"},
            "safe": {"doc_id": "E", "position": 0, "text": "epsilon"}}
    cfg = MiningConfig(num_negatives=0, num_random=3, relative_margin=None)
    res = mine_hard_negatives({}, {"q": {"p": 1}}, meta, cfg)
    assert res.negatives["q"] == ["safe"] and res.num_hard["q"] == 0
    r = res.report
    assert r["random_rejected"] == 3 and r["queries_short_of_random"] == 1 and r["queries_missing_from_run"] == 1


def test_rank_one_and_margin_removed_are_not_drawn_as_random() -> None:
    ids = ["top", "p", "close"]
    run = {"q": {"top": 0.9, "p": 0.8, "close": 0.79}}
    cfg = MiningConfig(num_negatives=1, num_random=5, relative_margin=0.05, exclude_overlap=False)
    res = mine_hard_negatives(run, {"q": {"p": 1}}, _meta([*ids, "r1", "r2"]), cfg)
    assert sorted(res.negatives["q"]) == ["r1", "r2"]  # "top" (rank 1, outside window) and "close" are suspect


def test_determinism_and_seed() -> None:
    ids = [f"c{i:03d}" for i in range(200)]
    meta = _meta(ids)
    run = {f"q{j}": _run(ids[j : j + 40]) for j in range(20)}
    qrels = {f"q{j}": {ids[j + 5]: 1} for j in range(20)}
    cfg = MiningConfig(num_random=3, sampling_strategy="random", num_negatives=3)
    a = mine_hard_negatives(run, qrels, meta, cfg)
    b = mine_hard_negatives(json.loads(json.dumps(run)), qrels, dict(reversed(meta.items())), cfg)
    assert a.negatives == b.negatives and a.report == b.report
    c = mine_hard_negatives(run, qrels, meta, MiningConfig(num_random=3, sampling_strategy="random",
                                                           num_negatives=3, seed=1))
    assert c.negatives != a.negatives
    # a query's negatives do not depend on which other queries are mined
    solo = mine_hard_negatives({"q7": run["q7"]}, {"q7": qrels["q7"]}, meta, cfg)
    assert solo.negatives["q7"] == a.negatives["q7"]
    # random sampling keeps rank order among the chosen hard negatives
    for q, negs in a.negatives.items():
        hard = negs[: a.num_hard[q]]
        assert hard == sorted(hard, key=lambda d: -run[q][d])


def test_run_shorter_than_window_and_empty_inputs() -> None:
    res = mine_hard_negatives({"q": {"p": 1.0, "a": 0.5, "b": 0.4}}, {"q": {"p": 1}}, _meta(["p", "a", "b"]),
                              MiningConfig(**{**OFF, "num_negatives": 4}))
    assert res.negatives["q"] == ["a", "b"] and res.report["queries_short_of_hard"] == 1
    empty = mine_hard_negatives({}, {}, {})
    assert empty.negatives == {} and set(empty.report.values()) == {0}
    res = mine_hard_negatives({"other": {"a": 1.0}}, {"q": {"p": 1}, "neg_only": {"a": 0}}, {})
    assert res.negatives == {"q": []}
    assert res.report["run_queries_ignored"] == 1 and res.report["queries_without_positive"] == 1
    assert res.report["queries_short_of_random"] == 1


def test_inputs_are_not_mutated() -> None:
    run, qrels, meta = {"q": {"p": 1.0, "a": 0.5}}, {"q": {"p": 1}}, _meta(["p", "a", "r"])
    snapshot = json.dumps([run, qrels, meta])
    mine_hard_negatives(run, qrels, meta)
    assert json.dumps([run, qrels, meta]) == snapshot


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_invariants_on_random_inputs(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 40))
    ids = [f"c{i}" for i in range(n)]
    meta = {d: {"doc_id": f"D{i % 3}", "position": i // 3, "text": f"t{i % 7} u{i}"} for i, d in enumerate(ids)}
    run = {f"q{j}": {d: data.draw(st.floats(-1, 1)) for d in data.draw(st.lists(st.sampled_from(ids), max_size=25))}
           for j in range(data.draw(st.integers(0, 4)))}
    qrels = {f"q{j}": {d: data.draw(st.integers(0, 2)) for d in data.draw(st.lists(st.sampled_from(ids), max_size=3))}
             for j in range(data.draw(st.integers(0, 5)))}
    cfg = MiningConfig(rank_min=data.draw(st.integers(1, 3)), rank_max=data.draw(st.integers(3, 30)),
                       num_negatives=data.draw(st.integers(0, 5)), num_random=data.draw(st.integers(0, 3)),
                       relative_margin=data.draw(st.sampled_from([None, 0.0, 0.05])),
                       exclude_same_doc_neighbors=data.draw(st.integers(0, 2)),
                       sampling_strategy=data.draw(st.sampled_from(["top", "random"])))
    res = mine_hard_negatives(run, qrels, meta, cfg)
    for q, negs in res.negatives.items():
        positives = {d for d, r in qrels[q].items() if r > 0}
        assert positives and not positives & set(negs)
        assert len(negs) == len(set(negs))
        h = res.num_hard[q]
        assert h <= cfg.num_negatives and len(negs) - h <= cfg.num_random
        window = [d for d, _ in sorted((run.get(q) or {}).items(), key=lambda kv: (-kv[1], kv[0]))][
            cfg.rank_min - 1 : cfg.rank_max]
        assert set(negs[:h]) <= set(window)
    assert res.report["hard_negatives"] == sum(res.num_hard.values())
    _check_accounting(res.report)


def test_config_validation() -> None:
    for bad in [dict(rank_min=0), dict(rank_min=5, rank_max=4), dict(num_negatives=-1), dict(relative_margin=2.0),
                dict(overlap_jaccard=0.0), dict(sampling_strategy="best")]:
        with pytest.raises(ValueError):
            MiningConfig(**bad)


def test_load_chunk_meta(tmp_path: Path) -> None:
    p = tmp_path / "corpus.jsonl"
    rows = [{"_id": "a", "title": "T", "text": "x", "doc_id": "D", "position": 2, "source": "f.md"},
            {"_id": "b", "text": "y", "metadata": {"doc_id": "E", "position": "3"}},
            {"_id": "c", "text": "z"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = load_chunk_meta(p)
    assert meta["a"] == {"doc_id": "D", "position": 2, "text": "x", "title": "T", "source": "f.md"}
    assert (meta["b"]["doc_id"], meta["b"]["position"]) == ("E", 3)
    assert (meta["c"]["doc_id"], meta["c"]["position"]) == (None, None)
    p.write_text(json.dumps({"_id": "a", "text": "x", "position": "second"}) + "\n")
    with pytest.raises(DataError, match="line 1.*position"):
        load_chunk_meta(p)
    p.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match="_id"):
        load_chunk_meta(p)


CORPUS = {d: {"title": "", "text": f"text of {d}"} for d in ["p1", "p2", "a", "b", "c", "d", "e", "f"]}


def test_build_groups() -> None:
    queries = {"q1": "why?", "q2": "how?", "q3": "no qrels", "q4": "all non-relevant"}
    qrels = {"q1": {"p1": 1, "p2": 2, "a": 0}, "q2": {"p1": 1}, "q4": {"a": 0}, "q_no_text": {"p1": 1}}
    negatives = {"q1": ["a", "b", "p1", "b"], "q2": ["c", "d", "e", "f", "a"]}
    rows = build_groups(queries, qrels, negatives, CORPUS, group_size=4)
    assert [(r["query"], r["positive"]) for r in rows] == [("why?", "text of p2"), ("why?", "text of p1"),
                                                           ("how?", "text of p1")]
    for r in rows:
        assert len(r["negatives"]) == 3 and len(set(r["negatives"])) == 3
        assert not {"text of p1", "text of p2"} & set(r["negatives"])
    assert rows[0]["negatives"][:2] == ["text of a", "text of b"]  # mined first (duplicate b and positive p1 dropped)
    assert rows[2]["negatives"] == ["text of c", "text of d", "text of e"]
    assert build_groups(queries, qrels, negatives, CORPUS, group_size=4) == rows  # deterministic padding
    with pytest.raises(ValueError, match="group_size"):
        build_groups(queries, qrels, negatives, CORPUS, group_size=1)
    with pytest.raises(DataError, match="'zzz'"):
        build_groups(queries, {"q1": {"p1": 1}}, {"q1": ["zzz"]}, CORPUS, group_size=2)


def test_build_groups_skips_when_corpus_too_small(caplog: pytest.LogCaptureFixture) -> None:
    small = {d: CORPUS[d] for d in ["p1", "a"]}
    with caplog.at_level(logging.WARNING, logger="rag_rerank.train.mining"):
        assert build_groups({"q": "?"}, {"q": {"p1": 1}}, {}, small, group_size=3) == []
    assert "too few chunks" in caplog.text
    assert len(build_groups({"q": "?"}, {"q": {"p1": 1}}, {}, small, group_size=2)) == 1


def test_to_pairs() -> None:
    rows = to_pairs({"q1": "why?"}, {"q1": {"p1": 1, "p2": 2, "a": 0}}, {"q1": ["a", "p1", "b", "c"]}, CORPUS,
                    max_negatives=2)
    assert rows == [{"query": "why?", "text": "text of p2", "label": 1.0},
                    {"query": "why?", "text": "text of p1", "label": 1.0},
                    {"query": "why?", "text": "text of a", "label": 0.0},
                    {"query": "why?", "text": "text of b", "label": 0.0}]
    assert to_pairs({}, {"q1": {"p1": 1}}, {}, CORPUS) == []


@pytest.mark.slow
def test_real_squad_bm25_mining(squad_beir: Path) -> None:
    """Mine from a BM25 run over the real SQuAD corpus: invariants hold and the guards fire."""
    from rank_bm25 import BM25Okapi

    corpus, queries, qrels = load_beir(squad_beir)
    meta = load_chunk_meta(squad_beir / "corpus.jsonl")
    ids = sorted(corpus)
    bm25 = BM25Okapi([corpus[d]["text"].lower().split() for d in ids])
    qids = sorted(queries)[:150]
    run = {}
    for q in qids:
        scores = bm25.get_scores(queries[q].lower().split())
        top = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:50]
        run[q] = {ids[i]: float(scores[i]) for i in top}
    sub = {q: qrels[q] for q in qids}
    res = mine_hard_negatives(run, sub, meta, MiningConfig(), show_progress_bar=False)
    r = res.report
    assert r["queries"] == 150 and r["removed_positive"] > 100 and r["removed_margin"] > 0
    assert r["random_negatives"] == 150
    for q, negs in res.negatives.items():
        assert not set(negs) & set(sub[q]) and len(negs) == len(set(negs))
    _check_accounting(r)
    groups = build_groups(queries, sub, res.negatives, corpus, group_size=5)
    assert len(groups) == 150 and all(len(g["negatives"]) == 4 for g in groups)
