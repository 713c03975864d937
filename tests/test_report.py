"""evaluate_systems / write_report / `rag-rerank evaluate` on a tiny hand-written BEIR folder with tiny models."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rag_rerank.cli import main
from rag_rerank.errors import DataError
from rag_rerank.evaluate.compare import evaluate_systems, sample_query_ids
from rag_rerank.evaluate.report import markdown_table, write_report
from rag_rerank.evaluate.result import EvaluationResult
from rag_rerank.io import save_corpus, save_qrels, save_queries
from rag_rerank.rerank.reranker import Reranker
from rag_rerank.rerank.runs import interpolate_run, rerank_run
from rag_rerank.retrieval import build_index, load_index
from rag_rerank.types import ranked

DOCS = {
    "d1": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "d2": "Photosynthesis converts light energy into chemical energy in plants.",
    "d3": "The Amazon river flows through Brazil, Peru and Colombia.",
    "d4": "Mount Everest is the highest mountain above sea level, in the Himalayas.",
    "d5": "The violin is a string instrument played with a bow.",
    "d6": "Python is a programming language created by Guido van Rossum.",
    "d7": "The Great Wall of China was built over many centuries.",
    "d8": "Honey bees produce honey from the nectar of flowers.",
}
QUERIES = {
    "q1": "Where is the Eiffel Tower?",
    "q2": "How do plants turn light into energy?",
    "q3": "Which countries does the Amazon river flow through?",
    "q4": "What is the highest mountain?",
    "q5": "Who created the Python programming language?",
    "q6": "What do honey bees make?",
}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}, "q5": {"d6": 1}, "q6": {"d8": 1}}
CORPUS = {d: {"title": "", "text": t} for d, t in DOCS.items()}
METRICS = ("mrr@10", "recall@3", "hit@1")


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("beir")
    save_corpus(folder / "corpus.jsonl", CORPUS)
    save_queries(folder / "queries.jsonl", QUERIES)
    (folder / "qrels").mkdir()
    save_qrels(folder / "qrels" / "test.tsv", QRELS)
    return folder


@pytest.fixture(scope="module")
def index_dir(beir_dir: Path, tiny_bi_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "idx"
    build_index(beir_dir, out, bi_encoder=str(tiny_bi_encoder_dir))
    return out


@pytest.fixture(scope="module")
def sharp_reranker(make_sharp_cross_encoder) -> Reranker:
    pairs = [(q, t) for q in QUERIES.values() for t in DOCS.values()]
    return Reranker(str(make_sharp_cross_encoder(pairs)), cache_size=0)


@pytest.fixture(scope="module")
def result(index_dir: Path, sharp_reranker: Reranker) -> EvaluationResult:
    return evaluate_systems(CORPUS, QUERIES, QRELS, index=load_index(index_dir), index_dir=index_dir,
                            rerankers={"sharp": sharp_reranker}, top_k=3, depth=8,
                            alpha=0.5, metrics=METRICS, n_resamples=500)


class ScriptedReranker:
    """A test double: scores looked up from a table keyed by document text."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def predict(self, pairs, show_progress_bar=None) -> np.ndarray:
        return np.array([self.scores[d] for _, d in pairs], dtype=np.float32)


def test_result_shape_systems_and_ceiling(result: EvaluationResult, index_dir: Path) -> None:
    assert list(result.systems) == ["bm25", "dense", "hybrid", "hybrid+sharp", "hybrid+sharp@0.5"]
    assert result.queries == len(QRELS) and result.metrics == list(METRICS)
    assert set(result.delta) == {f"{s}_vs_hybrid" for s in result.systems if s != "hybrid"}
    entry = result.delta["hybrid+sharp_vs_hybrid"]["mrr@10"]
    assert entry.ci95[0] <= entry.delta <= entry.ci95[1] and 0 < entry.p <= 1
    assert result.get_delta("hybrid+sharp") == entry
    # the ceiling is the hybrid recall@3 recomputed independently from a fresh search
    hybrid = load_index(index_dir).search(QUERIES, top_k=8)
    hits = [any(d in QRELS[q] for d, _ in ranked(hybrid[q], 3)) for q in QRELS]
    assert result.ceiling["recall@3"] == pytest.approx(np.mean(hits))
    for name, hist in result.gold_rank_histogram.items():
        assert sum(hist.values()) == len(QRELS), name
    for name, cis in result.systems_ci95.items():
        for m, (lo, hi) in cis.items():
            assert lo - 1e-9 <= result.systems[name][m] <= hi + 1e-9
    assert set(result.timings_s) == {"bm25", "dense", "hybrid", "hybrid+sharp"}
    data = json.loads(json.dumps(result.to_dict()))  # JSON-serialisable, and reads back
    assert EvaluationResult.from_dict(data) == result


def test_reranked_order_follows_the_reranker_and_keeps_the_tail(
    index_dir: Path, sharp_reranker: Reranker
) -> None:
    hybrid = load_index(index_dir).search(QUERIES, top_k=8)
    run = rerank_run(hybrid, QUERIES, CORPUS, sharp_reranker, top_k=3)
    changed = 0
    for q in QUERIES:
        first = [d for d, _ in ranked(hybrid[q])]
        scores = sharp_reranker.predict([(QUERIES[q], DOCS[d]) for d in first[:3]])
        expected = [d for _, d in sorted(zip(-scores, first[:3], strict=True))] + first[3:]
        assert [d for d, _ in ranked(run[q])] == expected
        changed += expected != first
    assert changed > 0, "the sharp reranker should reorder at least one query (else this test proves nothing)"


def test_positives_are_not_injected(index_dir: Path) -> None:
    index = load_index(index_dir)
    hybrid = index.search(QUERIES, top_k=8)
    # for every query, make the gold doc the one at hybrid rank 5: outside the reranked top 3
    qrels = {q: {[d for d, _ in ranked(hybrid[q])][4]: 1} for q in QUERIES}
    oracle = ScriptedReranker({t: (100.0 if t in {DOCS[d] for g in qrels.values() for d in g} else 0.0)
                               for t in DOCS.values()})
    res = evaluate_systems(CORPUS, QUERIES, qrels, index=index, rerankers={"oracle": oracle}, top_k=3,
                           depth=8, metrics=("mrr@10", "hit@3"), n_resamples=200)
    assert res.systems["hybrid+oracle"]["hit@3"] == 0.0
    assert res.ceiling["recall@3"] == 0.0
    assert res.gold_rank_histogram["hybrid+oracle"]["4-5"] == len(QUERIES)
    assert res.systems["hybrid+oracle"]["mrr@10"] == pytest.approx(0.2)


def test_interpolation_hand_checked() -> None:
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5}}
    rr = {"q": {"a": 0.0, "b": 1.0, "c": 0.5}}
    # over the top 3 (a, b, c): z(first stage) = (+1.22, 0, -1.22); z(reranker) = (-1.22, +1.22, 0)
    # alpha=0.5: a 0, b +0.61, c -0.61 -> b a c; alpha=0.2: a +0.73, b +0.24, c -0.98 -> a b c
    order = {alpha: [d for d, _ in ranked(interpolate_run(run, rr, alpha, 3)["q"])] for alpha in (0, 0.2, 0.5, 1)}
    assert order == {0: ["a", "b", "c", "d"], 0.2: ["a", "b", "c", "d"], 0.5: ["b", "a", "c", "d"],
                     1: ["b", "c", "a", "d"]}
    # alpha=0.8: a -0.73, b +0.98, c -0.24 -> b c a; the fused scores themselves are rank-based (4, 3, 2, 1)
    assert interpolate_run(run, rr, 0.8, 3)["q"] == {"b": 4.0, "c": 3.0, "a": 2.0, "d": 1.0}
    with pytest.raises(ValueError, match="alpha"):
        interpolate_run(run, rr, 1.5, 3)


def test_interpolated_system_matches_its_definition(result: EvaluationResult, index_dir: Path, sharp_reranker) -> None:
    index = load_index(index_dir)
    res = evaluate_systems(CORPUS, QUERIES, QRELS, index=index, rerankers={"s": sharp_reranker}, top_k=3,
                           depth=8, alpha=1.0, metrics=METRICS, n_resamples=200)
    # alpha = 1 is the reranker alone: identical per-query ranks to the plain reranked system
    assert res.systems["hybrid+s@1"] == res.systems["hybrid+s"]
    assert res.gold_rank_histogram["hybrid+s@1"] == res.gold_rank_histogram["hybrid+s"]
    res0 = evaluate_systems(CORPUS, QUERIES, QRELS, index=index, rerankers={"s": sharp_reranker}, top_k=3,
                            depth=8, alpha=0.0, metrics=METRICS, n_resamples=200)
    assert res0.gold_rank_histogram["hybrid+s@0"] == res0.gold_rank_histogram["hybrid"]


def test_sample_is_deterministic_by_seed(index_dir: Path) -> None:
    a = sample_query_ids(QRELS, QUERIES, 3, seed=1)
    assert len(a) == 3 and a == sample_query_ids(QRELS, QUERIES, 3, seed=1)
    assert any(sample_query_ids(QRELS, QUERIES, 3, seed=s) != a for s in range(2, 6))
    assert sample_query_ids(QRELS, QUERIES, 99, seed=1) == sorted(QRELS)
    r1 = evaluate_systems(CORPUS, QUERIES, QRELS, index=load_index(index_dir), sample=3, seed=1,
                          metrics=METRICS, n_resamples=200)
    r2 = evaluate_systems(CORPUS, QUERIES, QRELS, index=load_index(index_dir), sample=3, seed=1,
                          metrics=METRICS, n_resamples=200)
    assert r1.queries == 3
    assert (r1.systems, r1.delta) == (r2.systems, r2.delta)


def test_index_over_another_corpus_is_a_clear_error(index_dir: Path) -> None:
    qrels = {"q1": {"other-doc": 1}}
    with pytest.raises(DataError, match="built over a different corpus"):
        evaluate_systems(CORPUS, QUERIES, qrels, index_dir=index_dir, metrics=METRICS)


def test_write_report_files(result: EvaluationResult, tmp_path: Path) -> None:
    paths = write_report(dataclasses.replace(result, command="rag-rerank evaluate --beir X"), tmp_path / "rep")
    assert json.loads(paths["json"].read_text())["systems"] == result.systems
    md = paths["markdown"].read_text()
    assert "| hybrid+sharp |" in md and "Ceiling" in md and "rag-rerank evaluate --beir X" in md
    assert f"**{len(QRELS)} queries**" in md
    for key in ("metrics_png", "gold_rank_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(paths["metrics_png"]).shape[0] > 100
    assert not list((tmp_path / "rep").glob(".*"))  # no temporary files left


def test_markdown_table_rows_match_numbers(result: EvaluationResult) -> None:
    table = markdown_table(result)
    row = next(line for line in table.splitlines() if line.startswith("| hybrid+sharp |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert [float(c) for c in cells[1:]] == [round(result.systems["hybrid+sharp"][m], 4) for m in METRICS]
    d = result.delta["hybrid+sharp_vs_hybrid"]["mrr@10"]
    assert f"{d.delta:+.4f} [{d.ci95[0]:+.4f}, {d.ci95[1]:+.4f}]" in table


def test_cli_evaluate(beir_dir: Path, index_dir: Path, sharp_reranker: Reranker, tmp_path: Path) -> None:
    model = sharp_reranker.config.model
    out = tmp_path / "report"
    res = CliRunner().invoke(main, [
        "-q", "evaluate", "--beir", str(beir_dir), "--index", str(index_dir), "--reranker", model, "--name", "sharp",
        "--top-k", "3", "--depth", "8", "--alpha", "0.5", "--sample", "4", "--seed", "3",
        "--n-resamples", "200", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["queries"] == 4
    assert list(report["systems"]) == ["bm25", "dense", "hybrid", "hybrid+sharp", "hybrid+sharp@0.5"]
    assert "--sample 4" in report["command"] and "--name sharp" in report["command"]
    assert "| hybrid+sharp |" in res.output and "Ceiling: hybrid recall@3" in res.output
    assert math.isclose(report["systems"]["hybrid"]["mrr@10"],
                        float(next(ln for ln in res.output.splitlines() if ln.startswith("| hybrid |"))
                              .split("|")[2]), abs_tol=1e-4)
    for name in ("report.md", "metrics.png", "gold_rank_hist.png"):
        assert (out / name).stat().st_size > 0


def test_cli_evaluate_backend_reaches_the_reranker(beir_dir: Path, index_dir: Path, sharp_reranker: Reranker,
                                                   tmp_path: Path) -> None:
    """--backend goes through evaluate_systems to each Reranker: ONNX fp32 ranks as torch does, and says so."""
    pytest.importorskip("onnxruntime")
    from word_pairs import private_copy

    from rag_rerank.cli.evaluate import evaluate_cmd
    from rag_rerank.rerank.backends import BACKENDS

    choices = next(p for p in evaluate_cmd.params if p.name == "backend").type.choices
    assert tuple(choices) == ("auto", *BACKENDS)  # the CLI lists exactly the Reranker's backends
    model = str(private_copy(Path(sharp_reranker.config.model), tmp_path / "m"))  # the export writes beside it
    runs = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        res = CliRunner().invoke(main, [
            "-q", "evaluate", "--beir", str(beir_dir), "--index", str(index_dir), "--reranker", model, "--name", "s",
            "--top-k", "3", "--depth", "8", "--n-resamples", "200", "--backend", backend,
            "--out", str(out)])
        assert res.exit_code == 0, res.output
        runs[backend] = json.loads((out / "report.json").read_text())
        assert runs[backend]["settings"]["reranker_backends"] == {"s": backend}
    assert runs["onnx"]["systems"] == runs["torch"]["systems"]
    bad = CliRunner().invoke(main, ["evaluate", "--beir", str(beir_dir), "--index", str(index_dir), "--reranker",
                                    model, "--backend", "onnx", "--device", "cuda", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "runs on CPU" in bad.output, bad.output


def test_cli_name_count_mismatch(beir_dir: Path, index_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["evaluate", "--beir", str(beir_dir), "--index", str(index_dir),
                                    "--reranker", "a", "--reranker", "b", "--name", "x", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "one --name per --reranker" in res.output


def test_cli_mismatched_index_subprocess(beir_dir: Path, tmp_path: Path) -> None:
    other = {"x1": {"title": "", "text": "an unrelated document"}, "x2": {"title": "", "text": "another one"}}
    idx = tmp_path / "other-idx"
    build_index(other, idx, bi_encoder=None)  # BM25-only is enough: the check runs before any search
    proc = subprocess.run(
        [sys.executable, "-m", "rag_rerank", "evaluate", "--beir", str(beir_dir), "--index", str(idx),
         "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "built over a different corpus" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_without_index_builds_one_with_minilm(beir_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["-q", "evaluate", "--beir", str(beir_dir), "--n-resamples", "200",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["settings"]["bi_encoder"] == "embedded:minilm" and report["queries"] == len(QRELS)
    # MiniLM finds these easy, topical questions: a real sanity bar, not a number the code happens to output
    assert report["systems"]["dense"]["hit@1"] >= 0.8


def test_extra_runs_and_per_reranker_alpha(index_dir: Path, sharp_reranker: Reranker) -> None:
    index = load_index(index_dir)
    oracle = {q: {d: (2.0 if d in QRELS[q] else 1.0) for d in DOCS} for q in QUERIES}  # gold first, as a run
    res = evaluate_systems(CORPUS, QUERIES, QRELS, index=index, rerankers={"s": sharp_reranker}, top_k=3,
                           depth=8, alpha={"s": 1.0}, extra_runs={"oracle": oracle},
                           metrics=METRICS, n_resamples=200)
    assert "oracle" in res.systems and res.systems["oracle"]["mrr@10"] == 1.0
    hybrid_mrr = res.systems["hybrid"]["mrr@10"]
    assert res.delta["oracle_vs_hybrid"]["mrr@10"].delta == pytest.approx(1.0 - hybrid_mrr)
    assert res.systems["hybrid+s@1"] == res.systems["hybrid+s"] and res.settings["alpha"] == {"s": 1.0}
    with pytest.raises(DataError, match="lacks"):
        evaluate_systems(CORPUS, QUERIES, QRELS, index=index, extra_runs={"part": {"q1": oracle["q1"]}}, top_k=3,
                         depth=8, metrics=METRICS, n_resamples=100)
    with pytest.raises(ValueError, match="clashes"):
        evaluate_systems(CORPUS, QUERIES, QRELS, index=index, extra_runs={"bm25": oracle}, depth=8,
                         top_k=3, metrics=METRICS, n_resamples=100)


def test_cli_interpolate_auto_reads_fusion_json(beir_dir: Path, index_dir: Path, make_sharp_cross_encoder,
                                                tmp_path: Path) -> None:
    from rag_rerank.rerank.fusion import FusionChoice, save_fusion

    model = make_sharp_cross_encoder([(q, t) for q in QUERIES.values() for t in DOCS.values()])
    save_fusion(model, FusionChoice(alpha=0.3, metric="mrr@10", value=1.0))
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["evaluate", "--beir", str(beir_dir), "--index", str(index_dir), "--reranker",
                                    str(model), "--name", "t", "--alpha", "auto", "--top-k", "3",
                                    "--depth", "8", "--n-resamples", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["shipped_system"] == "hybrid+t@0.3" == next(iter(report["systems"]))  # served, and listed first
    assert "**hybrid+t@0.3** (shipped)" in (out / "report.md").read_text()
    bad = CliRunner().invoke(main, ["evaluate", "--beir", str(beir_dir), "--index", str(index_dir), "--reranker",
                                    str(model), "--alpha", "lots", "--out", str(tmp_path / "r2")])
    assert bad.exit_code != 0 and "neither a number" in bad.output


def test_a_query_guard_serves_the_longer_queries_by_the_first_stage_and_the_report_counts_them(
        index_dir: Path, sharp_reranker, tmp_path: Path) -> None:
    index = load_index(index_dir)

    def run(guard: int | None) -> EvaluationResult:
        return evaluate_systems(CORPUS, QUERIES, QRELS, index=index, rerankers={"s": sharp_reranker}, top_k=3,
                                depth=8, alpha=1.0, query_guard={"s": guard}, metrics=METRICS, n_resamples=200)

    everyone, nobody, some = run(100), run(1), run(5)
    assert everyone.systems["hybrid+s@1"] == everyone.systems["hybrid+s"]  # no query past 100 words
    assert nobody.systems["hybrid+s@1"] == nobody.systems["hybrid"]  # every query past 1 word: the first stage
    assert nobody.gold_rank_histogram["hybrid+s@1"] == nobody.gold_rank_histogram["hybrid"]
    assert nobody.systems["hybrid+s"] == everyone.systems["hybrid+s"]  # the reranker alone is never guarded
    long = sum(len(q.split()) > 5 for q in QUERIES.values())
    assert 0 < long < len(QUERIES)
    assert some.settings["query_guard"] == {"s": {"max_query_words": 5, "query_form": None, "guarded": long,
                                                  "too_long": long, "not_a_question": 0, "queries": len(QUERIES)}}
    assert run(None).settings["query_guard"] == {}
    md = (write_report(some, tmp_path / "rep")["markdown"]).read_text()
    assert f"{long} of {len(QUERIES)} queries have more than 5 words, unlike" in md


def test_a_question_guard_serves_the_queries_that_are_not_questions_by_the_first_stage(
        index_dir: Path, sharp_reranker, tmp_path: Path) -> None:
    from rag_rerank.rerank.fusion import QueryGuard

    index = load_index(index_dir)
    keywords = {"q2": "plants light energy conversion", "q4": "The highest mountain is in the Himalayas."}
    queries = {**QUERIES, **keywords}  # two that a reranker trained on questions has never seen the like of

    def run(guard: QueryGuard, qs: dict[str, str] = queries) -> EvaluationResult:
        return evaluate_systems(CORPUS, qs, QRELS, index=index, rerankers={"s": sharp_reranker}, top_k=3,
                                depth=8, alpha=1.0, query_guard={"s": guard}, metrics=METRICS, n_resamples=200)

    formed, off = run(QueryGuard(form="question")), run(QueryGuard())
    assert formed.settings["query_guard"]["s"] == {"max_query_words": None, "query_form": "question", "guarded": 2,
                                                   "too_long": 0, "not_a_question": 2, "queries": len(queries)}
    assert off.systems["hybrid+s@1"] == off.systems["hybrid+s"]  # no guard: every query fused
    assert formed.systems["hybrid+s"] == off.systems["hybrid+s"]  # the reranker alone is never guarded
    statements = {q: keywords.get(q, t.rstrip("?").replace("Where is", "Find").replace("How do", "Explain how"))
                  for q, t in QUERIES.items()}
    statements = {q: t for q, t in statements.items() if not t.split()[0].lower().startswith(("wh", "how"))}
    none_fused = run(QueryGuard(form="question"), statements)  # no query reads as a question: the first stage
    assert none_fused.systems["hybrid+s@1"] == none_fused.systems["hybrid"]
    both = run(QueryGuard(max_words=5, form="question"))
    long = sum(len(t.split()) > 5 for t in queries.values())
    g = both.settings["query_guard"]["s"]
    assert (g["too_long"], g["not_a_question"]) == (long, 2 - sum(len(t.split()) > 5 for t in keywords.values()))
    md = (write_report(both, tmp_path / "rep")["markdown"]).read_text()
    assert (f"{g['guarded']} of {len(queries)} queries have more than 5 words ({long}) or do not read as a question "
            f"({g['not_a_question']}), unlike") in md


def test_cli_evaluate_auto_applies_and_prints_the_models_query_guard(beir_dir: Path, index_dir: Path,
                                                                     sharp_reranker: Reranker, tmp_path: Path) -> None:
    from word_pairs import private_copy

    from rag_rerank.rerank.fusion import FusionChoice, save_fusion

    model = private_copy(Path(sharp_reranker.config.model), tmp_path / "m")
    save_fusion(model, FusionChoice(alpha=0.5, metric="mrr@10", value=1.0, max_query_words=5))
    res = CliRunner().invoke(main, ["-q", "evaluate", "--beir", str(beir_dir), "--index", str(index_dir),
                                    "--reranker", str(model), "--name", "s", "--top-k", "3", "--depth", "8",
                                    "--n-resamples", "200", "--out", str(tmp_path / "r")])  # --alpha auto
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    long = sum(len(q.split()) > 5 for q in QUERIES.values())
    assert report["shipped_system"] == "hybrid+s@0.5"
    assert report["settings"]["query_guard"] == {"s": {"max_query_words": 5, "query_form": None, "guarded": long,
                                                       "too_long": long, "not_a_question": 0,
                                                       "queries": len(QUERIES)}}
    assert f"Query guard (s): {long} of {len(QUERIES)} queries have more than 5 words" in res.output
