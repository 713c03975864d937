"""Query style from examples (--query-examples): loading, the prompt, style filters, generation, query truncation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag_rerank.cli import main as cli
from rag_rerank.errors import ConfigError
from rag_rerank.generate.dataset import create_qa_dataset
from rag_rerank.generate.prompts import FEW_SHOT, STYLE_SYSTEM_PROMPT, SYSTEM_PROMPT, build_messages, check_prompt
from rag_rerank.generate.questions import FilterConfig, parse_questions, question_problem
from rag_rerank.generate.store import load_qa_dataset
from rag_rerank.generate.style import EXAMPLE_WORDS, PROMPT_EXAMPLES, QueryStyle, load_query_examples

sys.path.insert(0, str(Path(__file__).parent))
from openai_stub_server import Action, StubOpenAIServer  # noqa: E402

CHUNK = ("Zoos keep endangered animals in captivity. Critics say captivity causes stress and shortens lives, "
         "while breeding programmes in zoos have saved species such as the Arabian oryx and the California condor "
         "from extinction.")
CLAIMS = (
    "zoos should be banned because captivity harms animals",
    "animal testing is necessary for medical progress",
    "school uniforms reduce bullying among pupils",
    "nuclear power is the safest low carbon energy source",
    "voting should be compulsory in democracies",
    "social media does more harm than good to teenagers",
)


@pytest.fixture()
def style() -> QueryStyle:
    return QueryStyle(CLAIMS, source="claims.txt")


# ------------------------------------------------------------------------------------------ loading


def test_load_query_examples_txt_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "q.txt"
    txt.write_text("\n".join([CLAIMS[0], "", f"  {CLAIMS[0]}  ", *CLAIMS[1:]]) + "\n", encoding="utf-8")
    s = load_query_examples(txt)
    assert s.examples == CLAIMS and s.source == str(txt)  # blank lines and duplicates skipped, spaces normalised
    jl = tmp_path / "q.jsonl"
    jl.write_text("\n".join(json.dumps({"text" if i % 2 else "query": c}) for i, c in enumerate(CLAIMS)),
                  encoding="utf-8")
    assert load_query_examples(jl).examples == CLAIMS
    assert load_query_examples(jl).fingerprint == s.fingerprint


@pytest.mark.parametrize(
    ("content", "name", "needle"),
    [
        ("\n".join(CLAIMS[:3]), "few.txt", "3 example queries"),
        ("\n".join(f"query number {i}" for i in range(60)), "many.txt", "60 example queries"),
        ('{"text": "a"}\n{"nope": 1}\n', "bad.jsonl", "bad.jsonl:2"),
    ],
)
def test_bad_query_example_files_get_one_clear_line(tmp_path: Path, content: str, name: str, needle: str) -> None:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_query_examples(p)
    assert needle in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no such file"):
        load_query_examples(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------ prompt


def test_style_prompt_uses_the_examples_instead_of_question_turns(style: QueryStyle) -> None:
    from rag_rerank.generate.prompts import STYLE_PROMPT

    long = QueryStyle(("word " * 300,) + CLAIMS[1:])
    msgs = build_messages(CHUNK, 2, prompt=STYLE_PROMPT, system=STYLE_SYSTEM_PROMPT, few_shot=(),
                          examples=long.prompt_examples())
    assert [m["role"] for m in msgs] == ["system", "user"]
    last = msgs[-1]["content"]
    assert CHUNK in last and CLAIMS[1] in last and CLAIMS[PROMPT_EXAMPLES] not in last
    assert last.count("word") == EXAMPLE_WORDS  # a long example is cut in the prompt
    assert "question" not in msgs[0]["content"].lower() or "need not be questions" in msgs[0]["content"]
    plain = build_messages(CHUNK, 2)
    assert plain[0]["content"] == SYSTEM_PROMPT and len(plain) == 2 + 2 * len(FEW_SHOT)  # unchanged without examples
    with pytest.raises(ConfigError, match="--query-examples"):
        check_prompt("Passage: {chunk} like {examples}")
    check_prompt("Passage: {chunk} like {examples}", style=True)


# ------------------------------------------------------------------------------------------ filters


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("zoos save endangered species like the arabian oryx from extinction", None),  # a claim, kept
        ("captivity in zoos causes stress to endangered animals", None),
        ("what is the main idea of this passage about zoos", "generic"),
        ("zoos should be banned because captivity harms animals", "copies_example"),
        ("nuclear power plants are safe and cheap to run everywhere", "off_topic"),
        ("zoos", "too_short"),
        ("the passage says zoos save the arabian oryx", "generic"),
        ("zoos keep animals and zoos keep animals and zoos keep animals safe", "repetitive"),
        ("captivity causes stress and shortens lives, while breeding programmes in zoos", "verbatim_span"),
    ],
)
def test_style_filters_judge_by_style_not_wh_words(style: QueryStyle, query: str, reason: str | None) -> None:
    assert question_problem(query, CHUNK, style.filter_config()) == reason


def test_without_examples_a_claim_is_still_not_a_question(style: QueryStyle) -> None:
    claim = "zoos save endangered species like the arabian oryx from extinction"
    assert question_problem(claim, CHUNK, FilterConfig()) == "not_a_question"
    low, high = style.word_bounds()
    assert low == 3 and high >= 12  # half the shortest example, 1.5x the longest


def test_the_length_floor_counts_examples_as_the_prompt_shows_them() -> None:
    """Regression: long examples (ArguAna's arguments) made a floor above the cut examples the LLM is shown."""
    from rag_rerank.generate.style import EXAMPLE_WORDS

    long_args = QueryStyle(tuple(" ".join(f"w{i}{j}" for j in range(150 + 10 * i)) for i in range(5)))
    low, high = long_args.word_bounds()
    shown = max(len(e.split()) for e in long_args.prompt_examples())
    assert low == EXAMPLE_WORDS // 2 and low < shown and high >= EXAMPLE_WORDS


def test_relative_copy_check_lets_long_queries_quote_a_little() -> None:
    cfg = FilterConfig(max_verbatim_share=0.4)
    assert cfg.verbatim_limit(10) == 9 and cfg.verbatim_limit(100) == 40
    assert FilterConfig().verbatim_limit(100) == 9


def test_line_parsing_keeps_an_argument_with_question_marks_whole() -> None:
    text = "Here are 2 queries:\n1. Zoos protect species. Why close them? They save the oryx.\n2) ban zoo breeding"
    assert parse_questions(text, by_line=True) == ["Zoos protect species. Why close them? They save the oryx.",
                                                   "Ban zoo breeding"]
    assert len(parse_questions(text)) == 2  # question mode splits at '?' and drops the rest


# ------------------------------------------------------------------------------------------ generation


def _docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "zoos.txt").write_text(CHUNK, encoding="utf-8")
    return d


def test_generation_with_examples_writes_style_queries(tmp_path: Path, minilm_dir: Path, style: QueryStyle) -> None:
    answer = ("1. zoos save endangered species like the arabian oryx from extinction\n"
              "2. What is the main idea of this passage about zoos?")
    with StubOpenAIServer(script=[Action.text(answer)]) as srv:
        s = create_qa_dataset(_docs(tmp_path), tmp_path / "out", llm="openai:stub", base_url=srv.base_url,
                              tokenizer=str(minilm_dir), show_progress_bar=False, query_examples=list(CLAIMS))
        req = srv.requests[0]
    assert req["messages"][0]["content"] == STYLE_SYSTEM_PROMPT and CLAIMS[0] in req["messages"][-1]["content"]
    assert req["max_tokens"] >= 120
    ds = load_qa_dataset(tmp_path / "out")
    assert list(ds.queries.values()) == ["Zoos save endangered species like the arabian oryx from extinction"]
    assert s.counts["dropped_by_reason"] == {"generic": 1}
    m = ds.manifest
    assert m["settings"]["query_style"]["examples"] == len(CLAIMS)
    assert m["prompt"]["examples"] == list(CLAIMS[:PROMPT_EXAMPLES])
    assert m["settings"]["filter"]["require_question"] is False


def test_cli_generate_query_examples_and_bad_file(tmp_path: Path, minilm_dir: Path) -> None:
    ex = tmp_path / "ex.txt"
    ex.write_text("\n".join(CLAIMS), encoding="utf-8")
    docs = _docs(tmp_path)
    with StubOpenAIServer(script=[Action.text("zoos save the california condor from extinction")]) as srv:
        base = ["generate", str(docs), "--llm", "openai:stub", "--base-url", srv.base_url, "--tokenizer",
                str(minilm_dir)]
        r = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "o"), "--query-examples", str(ex)])
        assert r.exit_code == 0, r.output
        assert "kept 1" in r.output
        few = tmp_path / "few.txt"
        few.write_text(CLAIMS[0], encoding="utf-8")
        r2 = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "o2"), "--query-examples", str(few)])
    assert r2.exit_code == 1 and str(few) in r2.output and "Traceback" not in r2.output


# ------------------------------------------------------------------------------------------ truncation


def test_long_queries_are_cut_to_half_the_pair_when_served(tiny_cross_encoder_dir: Path) -> None:
    from rag_rerank.rerank import Reranker
    from rag_rerank.rerank.windows import truncate_query

    rr = Reranker(str(tiny_cross_encoder_dir), backend="torch", max_length=64, cache_size=0)
    tok = rr.cross_encoder.tokenizer
    assert rr.max_query_tokens == 32
    query = " ".join(f"argument{i} about zoos" for i in range(60))
    doc = "Zoos keep endangered animals. " * 20
    cut = truncate_query(tok, query, 32)
    assert query.startswith(cut) and len(tok(cut, add_special_tokens=False)["input_ids"]) == 32
    assert truncate_query(tok, "short query", 32) == "short query"
    windows = rr.windows(query, doc)
    assert len(windows) > 1  # the document still gets windows next to the cut query, not a truncated pair
    assert rr.predict([(query, doc)])[0] == pytest.approx(rr.predict([(cut, doc)])[0], abs=1e-6)
    wide = Reranker(str(tiny_cross_encoder_dir), backend="torch", max_length=64, max_query_tokens=48, cache_size=0)
    assert wide.max_query_tokens == 48
    with pytest.raises(ConfigError):
        Reranker(str(tiny_cross_encoder_dir), backend="torch", max_query_tokens=0)


def test_training_cuts_long_queries_like_serving(tmp_path: Path, tiny_cross_encoder_dir: Path) -> None:
    from rag_rerank.train.config import RerankerTrainingConfig
    from rag_rerank.train.reranker_trainer import train_reranker

    long_q = " ".join(f"claim{i} on zoos" for i in range(80))
    rows = [{"query": long_q if i % 2 else f"zoo question {i}", "positive": f"zoo passage {i}",
             "negatives": [f"other passage {i} {j}" for j in range(3)]} for i in range(8)]
    cfg = RerankerTrainingConfig(max_steps=1, batch_size=4, train_group_size=3, max_length=48, sanity_gate="off")
    res = train_reranker(str(tiny_cross_encoder_dir), rows, out_dir=tmp_path / "m", config=cfg)
    assert res.data_summary["queries_cut"] == 4 and res.data_summary["max_query_tokens"] == 24
