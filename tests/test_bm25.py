"""BM25 (parity with rank_bm25, ranking rules, persistence) and the BM25 tokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rank_bm25 import BM25Okapi

from rag_rerank.errors import DataError
from rag_rerank.io import atomic_dir
from rag_rerank.retrieval import BM25Retriever, Tokenizer
from rag_rerank.retrieval.common import replaceable_index


def _random_corpus(seed: int, n_docs: int, vocab: int, common: tuple[str, ...] = ()) -> list[list[str]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    docs = []
    for _ in range(n_docs):
        doc = [rng.choice(words) for _ in range(rng.randint(0, 30))]
        doc += [c for c in common if rng.random() < 0.8]  # in ~80% of docs: idf < 0 before the floor
        rng.shuffle(doc)
        docs.append(doc)
    return docs


@pytest.mark.parametrize(
    ("seed", "n_docs", "vocab", "common", "params"),
    [
        (0, 50, 40, ("the", "a"), {}),
        (1, 7, 10, ("the",), {"k1": 0.9, "b": 0.4}),
        (2, 200, 500, (), {"k1": 1.2, "b": 0.9, "epsilon": 0.5}),
        (3, 3, 4, ("x", "y"), {"b": 0.0}),
    ],
)
def test_scores_equal_rank_bm25(seed, n_docs, vocab, common, params):
    docs = _random_corpus(seed, n_docs, vocab, common)
    ref = BM25Okapi(docs, **params)
    ours = BM25Retriever(**params).index_tokens(docs, [f"d{i}" for i in range(n_docs)])
    if common:  # the epsilon floor is really exercised
        assert any(ref.idf[c] == ref.epsilon * ref.average_idf for c in common if c in ref.idf)
    rng = random.Random(seed + 100)
    pool = [w for d in docs for w in d] + ["unseen"]
    for _ in range(20):
        q = [rng.choice(pool) for _ in range(rng.randint(1, 6))] + list(common[:1])  # repeats count twice
        np.testing.assert_allclose(ours.get_scores(q), ref.get_scores(q), rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    docs=st.lists(st.lists(st.sampled_from("abcdefg"), max_size=8), min_size=1, max_size=12),
    query=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=5),
)
def test_scores_equal_rank_bm25_property(docs, query):
    assume(any(docs))  # rank_bm25 divides by zero when every document is empty
    ref = BM25Okapi(docs)
    ours = BM25Retriever().index_tokens(docs, [f"d{i:02d}" for i in range(len(docs))])
    np.testing.assert_allclose(ours.get_scores(query), ref.get_scores(query), rtol=1e-9, atol=1e-12)


def test_search_ranks_like_rank_bm25_and_only_returns_matches():
    docs = _random_corpus(5, 120, 80, ("the",))
    ids = [f"doc{i:03d}" for i in range(len(docs))]
    corpus = {d: {"title": "", "text": " ".join(t)} for d, t in zip(ids, docs, strict=False)}
    ours = BM25Retriever().index(corpus)
    ref = BM25Okapi([Tokenizer()(corpus[d]["text"]) for d in ids])
    queries = {f"q{i}": " ".join(random.Random(i).sample(docs[i], min(3, len(docs[i])))) or "w1" for i in range(30)}
    run = ours.search(queries, top_k=10)
    for qid, text in queries.items():
        scores = ref.get_scores(Tokenizer()(text))
        expect = sorted(((-s, d) for d, s in zip(ids, scores, strict=False) if s != 0))[:10]
        assert [d for _, d in expect] == list(run[qid])
        assert all(isinstance(s, float) for s in run[qid].values())
        np.testing.assert_allclose([-s for s, _ in expect], list(run[qid].values()), rtol=1e-9)


def test_no_padding_and_unknown_query():
    r = BM25Retriever().index({"a": {"text": "red fox"}, "b": {"text": "blue whale"}, "c": {"text": "green owl"}})
    run = r.search({"q1": "fox", "q2": "nothing matches", "q3": ""}, top_k=100)
    assert list(run["q1"]) == ["a"]
    assert run["q2"] == {} and run["q3"] == {}


def test_ties_break_by_doc_id_even_at_the_cutoff():
    # Identical texts get identical scores; insertion order is deliberately not id order.
    corpus = {d: {"text": "same words here"} for d in ["d9", "d3", "d7", "d1", "d5"]}
    corpus["z"] = {"text": "other"}
    corpus["y"] = {"text": "more other stuff"}
    r = BM25Retriever().index(corpus)
    assert list(r.search({"q": "same words"}, top_k=3)["q"]) == ["d1", "d3", "d5"]
    assert list(r.search({"q": "same words"}, top_k=10)["q"]) == ["d1", "d3", "d5", "d7", "d9"]


def test_title_is_indexed_unless_disabled():
    corpus = {"a": {"title": "Zanzibar", "text": "an island"}, "b": {"title": "", "text": "a city"}, "c": {"text": "x"}}
    assert list(BM25Retriever().index(corpus).search({"q": "zanzibar"})["q"]) == ["a"]
    assert BM25Retriever(include_title=False).index(corpus).search({"q": "zanzibar"})["q"] == {}


def test_errors_name_the_problem():
    with pytest.raises(DataError, match="empty corpus"):
        BM25Retriever().index({})
    with pytest.raises(DataError, match="duplicate"):
        BM25Retriever().index_tokens([["a"], ["b"]], ["x", "x"])
    with pytest.raises(RuntimeError, match="index"):
        BM25Retriever().search({"q": "a"})
    with pytest.raises(ValueError, match="top_k"):
        BM25Retriever().index({"a": {"text": "a"}}).search({"q": "a"}, top_k=0)


def test_save_load_round_trip(tmp_path):
    docs = _random_corpus(7, 60, 50, ("the",))
    corpus = {f"d{i}": {"title": "", "text": " ".join(t)} for i, t in enumerate(docs)}
    r = BM25Retriever(k1=1.2, b=0.6, tokenizer=Tokenizer(stopwords=["w1"])).index(corpus)
    r.save(tmp_path / "bm25")
    loaded = BM25Retriever.load(tmp_path / "bm25")
    queries = {f"q{i}": " ".join(docs[i][:4]) for i in range(20)}
    assert loaded.search(queries, top_k=15) == r.search(queries, top_k=15)
    assert (loaded.k1, loaded.b, loaded.tokenizer) == (1.2, 0.6, r.tokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no BM25 index"):
        BM25Retriever.load(tmp_path / "empty")


def test_atomic_dir_keeps_old_index_on_failure_and_refuses_foreign_folders(tmp_path):
    r = BM25Retriever().index({"a": {"text": "x y"}, "b": {"text": "y z"}, "c": {"text": "q"}})
    r.save(tmp_path / "idx")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "idx", replaceable=replaceable_index) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("boom")
    assert BM25Retriever.load(tmp_path / "idx").doc_ids == ["a", "b", "c"]
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp folders left behind
    foreign = tmp_path / "mydocs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite"):
        r.save(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", ["hello", "world"]),
        ("", []),
        ("   \n\t ", []),
        ("😀🎉 hi👍there", ["hi", "there"]),
        ("cafe\u0301 Café", ["café", "café"]),  # decomposed and composed accents agree (NFKC)
        ("ｆｕｌｌ　ｗｉｄｔｈ ﬁne", ["full", "width", "fine"]),
        ("東京都", ["東京", "京都"]),
        ("日本語abc", ["日本", "本語", "abc"]),
        ("한국어 텍스트", ["한국어", "텍스트"]),
        ("\x00\ud800 ok", ["ok"]),
    ],
)
def test_tokenizer_unicode(text, expected):
    assert Tokenizer()(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_tokenizer_never_crashes(text):
    for tok in (Tokenizer(), Tokenizer(cjk="char", strip_accents=True, stopwords="english")):
        out = tok(text)
        assert all(isinstance(t, str) and t for t in out)


def test_tokenizer_options():
    assert Tokenizer(cjk="char")("東京 x") == ["東", "京", "x"]
    assert Tokenizer(cjk="none")("東京都") == ["東京都"]
    assert Tokenizer(strip_accents=True)("Crème BRÛLÉE") == ["creme", "brulee"]
    assert Tokenizer(stopwords="english")("The cat and THE hat") == ["cat", "hat"]
    assert Tokenizer(stopwords=["Cat"])("the cat") == ["the"]
    assert Tokenizer(stemmer=lambda w: w.rstrip("s"))("cats dogs") == ["cat", "dog"]
    assert Tokenizer(pattern=r"(\w)+")("ab cd") == ["ab", "cd"]
    assert Tokenizer(min_length=2)("a bb c") == ["bb"]
    assert Tokenizer(lowercase=False)("Ab") == ["Ab"]
    assert Tokenizer()(None) == []


def test_tokenizer_config_round_trip_and_errors():
    tok = Tokenizer(stopwords=["a", "b"], cjk="char", strip_accents=True)
    assert Tokenizer.from_config(tok.to_config()) == tok
    with pytest.raises(ValueError, match="callable stemmer"):
        Tokenizer(stemmer=str.lower).to_config()
    with pytest.raises(ValueError, match="cjk"):
        Tokenizer(cjk="words")
    with pytest.raises(ValueError, match="regex"):
        Tokenizer(pattern="(")


def test_stemmer_needs_pystemmer():
    try:
        import Stemmer  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"rag-rerank\[stemming\]"):
            Tokenizer(stemmer="english")
    else:
        assert Tokenizer(stemmer="english")("running runs") == ["run", "run"]
