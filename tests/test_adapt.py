"""``adapt``: the whole chain, resumable, refusing bad input, and shipping (and saying) what it measured."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import rag_rerank as rr
from rag_rerank.cli import main
from rag_rerank.data import SAMPLE_DOCS
from rag_rerank.errors import DataError, RagRerankError
from rag_rerank.rerank.fusion import TUNED, load_fusion
from rag_rerank.train.recipes import EVAL_STEP_EQUIVALENT, RECIPES

sys.path.insert(0, str(Path(__file__).parent))
from openai_stub_server import StubOpenAIServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _two_docs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Geology.md", "Black_Death.txt"):
        (folder / name).write_text((SAMPLE_DOCS / name).read_text(encoding="utf-8")[:6000], encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def stub() -> StubOpenAIServer:
    with StubOpenAIServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, stub: StubOpenAIServer, tiny_cross_encoder_dir: Path,
        tiny_bi_encoder_dir: Path) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("adapt")
    lines: list[str] = []
    result = rr.adapt(_two_docs(root / "docs"), root / "run", llm="openai:stub", base_url=stub.base_url,
                      base_model=str(tiny_cross_encoder_dir), bi_encoder=str(tiny_bi_encoder_dir), max_chunks=12,
                      max_steps=8, echo=lines.append)
    return SimpleNamespace(**vars(result), lines=lines)


def test_the_run_folder_holds_everything_and_the_model_loads_everywhere(run) -> None:
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    for name in ("dataset/manifest.json", "index/config.json", "reranker/fusion.json", "reranker/README.md",
                 "report/report.json", "report/report.md", "summary.json", "run.json", "plan.json"):
        assert (run.run_dir / name).is_file(), name
    assert CrossEncoder(str(run.reranker_dir), device="cpu").predict([("q", "d")]).shape == (1,)
    assert AutoModelForSequenceClassification.from_pretrained(str(run.reranker_dir)).config.num_labels == 1
    assert any(line.startswith("plan:") for line in run.lines)  # the plan comes first
    assert run.lines[0].startswith("plan:")


def test_the_report_ships_and_measures_one_of_its_systems_against_the_tuned_first_stage(run) -> None:
    report = json.loads((run.report_dir / "report.json").read_text())
    shipped = report["shipped_system"]
    assert shipped == run.shipped_system and shipped in report["systems"]
    assert next(iter(report["systems"])) == shipped  # listed first
    assert TUNED in report["systems"] and "hybrid" in report["systems"]
    assert f"{shipped}_vs_{TUNED}" in report["delta"] and f"{shipped}_vs_hybrid" in report["delta"]
    summary = json.loads(run.summary_path.read_text())
    assert summary["shipped_system"] == shipped and summary["test"]["shipped_vs_first_stage"] is not None


def test_the_verdict_is_the_same_everywhere_and_never_improved_without_a_significant_gain(run) -> None:
    fusion = load_fusion(run.reranker_dir)
    summary = json.loads(run.summary_path.read_text())
    card = (run.reranker_dir / "README.md").read_text()
    assert run.verdict == summary["verdict"] == fusion.verdict(TUNED)
    assert f"**Shipped system: {run.verdict}**" in card
    assert any(line == f"\nVERDICT (validation): {run.verdict}" for line in run.lines)
    if run.verdict.startswith("IMPROVED"):
        assert fusion.gain_ci95[0] > 0 and run.alpha > 0
    else:
        assert run.alpha == 0.0 and run.shipped_system == TUNED
    # 12 chunks give far fewer than 50 validation questions: the reranker cannot be trusted
    assert fusion.queries < 50 and run.verdict.startswith("NOT ENOUGH VALIDATION DATA")


def test_a_refused_reranker_comes_with_the_levers_that_apply_to_the_run(run) -> None:
    from rag_rerank.adaptation.pipeline import _next_line
    from rag_rerank.rerank.fusion import FusionChoice

    summary = json.loads(run.summary_path.read_text())
    levers = [line for line in run.lines if line.startswith("NEXT:")]
    assert len(levers) == 1 and run.shipped_system == TUNED
    asked, total = summary["data"]["chunks_selected"], summary["data"]["chunks_total"]
    assert asked == total and "ask questions for all" not in levers[0]  # every chunk was asked already
    assert f"({load_fusion(run.reranker_dir).queries} validation questions" in levers[0]
    assert "--llm openai" not in levers[0]  # this run's questions came from an OpenAI-compatible server already
    refused = FusionChoice(alpha=0.0, metric="mrr@10", value=0.8, queries=52, status="no_gain")
    line = _next_line(refused, {"data": {"chunks_total": 187, "chunks_selected": 187}}, "embedded",
                      "embedded:minilm-ce")
    assert "ask questions" not in line and "(52 validation questions" in line
    partial = _next_line(refused, {"data": {"chunks_total": 187, "chunks_selected": 40}}, "openai",
                         "embedded:minilm-ce")
    assert "ask questions for all 187 chunks (this run asked 40: --max-chunks" in partial and "--llm" not in partial
    assert "--llm openai:MODEL" in line and "--base-model BAAI/bge-reranker-base" in line
    shipped = dataclasses.replace(refused, alpha=0.5, status="improved")
    assert _next_line(shipped, {"data": {}}, "embedded", "embedded:minilm-ce") is None


def test_a_rerun_resumes_without_redoing_anything(run, stub: StubOpenAIServer, tiny_cross_encoder_dir: Path,
                                                   tiny_bi_encoder_dir: Path) -> None:
    before = stub.n_requests
    lines: list[str] = []
    # a recipe's name and description are labels: the default renamed (as `next` was promoted) resumes the run
    renamed = dataclasses.replace(RECIPES["default"], name="promoted", description="the same settings")
    again = rr.adapt(run.run_dir.parent / "docs", run.run_dir, recipe=renamed, llm="openai:stub",
                     base_url=stub.base_url, base_model=str(tiny_cross_encoder_dir),
                     bi_encoder=str(tiny_bi_encoder_dir), max_chunks=12, max_steps=8, echo=lines.append)
    assert stub.n_requests == before  # no question asked again
    assert sum("done earlier" in line for line in lines) == 7 and again.verdict == run.verdict


def test_another_recipe_or_setting_is_refused_and_nothing_is_lost(run, stub: StubOpenAIServer,
                                                                  tiny_cross_encoder_dir: Path,
                                                                  tiny_bi_encoder_dir: Path) -> None:
    stamp = (run.reranker_dir / "model.safetensors").stat().st_mtime_ns
    # only the recipe differs: the message names the recipe whose settings made the folder (after an upgrade that
    # changed the default, the old default's name, e.g. v4)
    with pytest.raises(RagRerankError, match="other settings.*recipe.*add --recipe default"):
        rr.adapt(run.run_dir.parent / "docs", run.run_dir, recipe="v1", llm="openai:stub", base_url=stub.base_url,
                 base_model=str(tiny_cross_encoder_dir), bi_encoder=str(tiny_bi_encoder_dir), max_chunks=12,
                 max_steps=8)
    with pytest.raises(RagRerankError, match="max_steps"):
        rr.adapt(run.run_dir.parent / "docs", run.run_dir, llm="openai:stub", base_url=stub.base_url,
                 base_model=str(tiny_cross_encoder_dir), max_chunks=12, max_steps=9)
    with pytest.raises(RagRerankError, match="distill"):
        rr.adapt(run.run_dir.parent / "docs", run.run_dir, llm="openai:stub", base_url=stub.base_url,
                 base_model=str(tiny_cross_encoder_dir), max_chunks=12, max_steps=8, distill=1)
    assert (run.reranker_dir / "model.safetensors").stat().st_mtime_ns == stamp
    # the reranker was not trusted (too little validation data): nothing is distilled, and nothing says otherwise
    assert json.loads(run.summary_path.read_text())["student"] == {} and not (run.run_dir / "student").exists()


def test_a_finished_stage_reads_back_and_a_script_on_an_unfinished_folder_fails_in_one_line(run,
                                                                                          tmp_path: Path) -> None:
    from rag_rerank.adaptation.runfolder import finished_stage, tuned_first_stage

    stages = json.loads((run.run_dir / "stages.json").read_text())
    assert finished_stage(run.run_dir, "first_stage") == stages["first_stage"]["result"]
    assert tuned_first_stage(run.run_dir, through="mine") == stages["first_stage"]["result"]["settings"]
    half = tmp_path / "half"
    half.mkdir()
    (half / "stages.json").write_text(json.dumps({k: stages[k] for k in ("generate", "index", "first_stage")}))
    assert tuned_first_stage(half) == stages["first_stage"]["result"]["settings"]
    for read in (lambda: finished_stage(half, "mine"), lambda: tuned_first_stage(half, through="mine")):
        with pytest.raises(DataError, match="finished through its 'mine' stage"):
            read()
    out = tmp_path / "filter.json"
    script = [sys.executable, str(REPO / "pipelines" / "consistency_filter.py"), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAG_RERANK_DEBUG"}
    bad = subprocess.run([*script, "--run", str(half)], capture_output=True, text=True, cwd=REPO, env=env)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and not out.exists()
    assert bad.stderr.strip().splitlines()[-1].startswith(f"error: {half} is not an adapt run folder")
    ok = subprocess.run([*script, "--run", str(run.run_dir), "--k", "1"], capture_output=True, text=True, cwd=REPO,
                        env=env)
    assert ok.returncode == 0, ok.stderr
    measured = json.loads(out.read_text())["runs"][str(run.run_dir)]
    assert measured["by_k"]["1"]["dropped"] + measured["by_k"]["1"]["groups"] >= measured["groups_unfiltered"]


@pytest.mark.parametrize("kind", ["empty", "unsupported", "missing"])
def test_bad_folders_fail_with_one_line_and_write_nothing(tmp_path: Path, kind: str) -> None:
    docs = tmp_path / "docs"
    if kind != "missing":
        docs.mkdir()
    if kind == "unsupported":
        (docs / "table.xlsx").write_bytes(b"PK\x03\x04 not a document")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["adapt", str(docs), "--out", str(out)])
    assert result.exit_code != 0 and result.output.count("Error:") == 1 and "Traceback" not in result.output
    assert str(docs) in result.output and not out.exists()
    with pytest.raises(DataError):
        rr.adapt(docs, out)


def test_an_unwritable_or_foreign_out_is_refused(tmp_path: Path) -> None:
    docs = _two_docs(tmp_path / "docs")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["adapt", str(docs), "--out", str(blocker / "run")])
    assert result.exit_code != 0 and "cannot be written" in result.output and "Traceback" not in result.output
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["adapt", str(docs), "--out", str(foreign)])
    assert result.exit_code != 0 and "not an adapt run folder" in result.output
    assert (foreign / "notes.txt").read_text() == "keep me"


def _results_with_a_recipe() -> list[str]:
    """Committed results written by a run that records its recipe (quality_benchmark.py, adapt reports)."""
    found = []
    for path in sorted((REPO / "pipelines" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        runs = data["runs"].values() if isinstance(data.get("runs"), dict) else [data]
        if any(isinstance(r, dict) and "recipe" in (r.get("settings") or {}) for r in runs):
            found.append(path.name)
    return found


@pytest.mark.parametrize("result", _results_with_a_recipe())
def test_the_committed_results_ran_the_recipe_that_recipe_show_prints(result: str) -> None:
    """What `rag-rerank recipe show NAME` prints is what produced the committed quality results, field for field."""
    data = json.loads((REPO / "pipelines" / "results" / result).read_text())
    runs = data["runs"].values() if "runs" in data else [data]
    for res in runs:
        recipe = _settings(res["settings"]["recipe"])
        # a setting added after the run counts only when it is on (None keeps the earlier behaviour), the rule
        # adapt's run folders follow too; names and descriptions are labels (a promoted recipe keeps its results)
        shown = [n for n in RECIPES if _without_unset(_settings(json.loads(
            CliRunner().invoke(main, ["recipe", "show", n]).output)), recipe) == recipe]
        assert shown, f"{result}: re-run `{data['command']}` after a recipe change"


def _settings(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k not in ("name", "description")}


def _without_unset(shown: dict, recorded: dict) -> dict:
    """``shown`` without the keys ``recorded`` lacks whose value is ``None`` (recursively)."""
    return {k: _without_unset(v, recorded[k]) if isinstance(v, dict) and isinstance(recorded.get(k), dict) else v
            for k, v in shown.items() if k in recorded or v is not None}


def test_the_default_recipe_warm_starts_a_new_head_never_longer_than_its_training() -> None:
    default, v1 = RECIPES["default"], RECIPES["v1"]
    assert default.training_config(3000).warm_start_steps == 60 and default.training.warm_start_max_length == 96
    small = default.training_config(3000, max_steps=8)
    assert small.max_steps == 8 and small.warm_start_steps == 8
    assert v1.training_config(3000).warm_start_steps == 0  # the 0.1 recipe stays as it was measured


def test_the_default_recipe_is_v3_with_an_evaluation_budget_and_v3_is_v2_with_the_positives_pool() -> None:
    default, v8, v7, v6, v5, v4, v3, v2 = (RECIPES[n].to_dict()
                                           for n in ("default", "v8", "v7", "v6", "v5", "v4", "v3", "v2"))
    assert default.pop("question_guard") is True  # v8: the default before the question guard
    assert {r.pop("question_guard") for r in (v8, v7, v6, v5, v4, v3, v2)} == {None}
    for d in (default, v8):
        d.pop("name"), d.pop("description")
    assert default == v8
    default = RECIPES["v8"].to_dict()  # from here on, each older default against the one after it
    default.pop("question_guard")
    assert default.pop("query_guard") == 1.5  # v7: the default before the query guard
    assert {r.pop("query_guard") for r in (v7, v6, v5, v4, v3, v2)} == {None}
    for d in (default, v7):
        d.pop("name"), d.pop("description")
    assert default == v7
    default = RECIPES["v7"].to_dict()
    default.pop("question_guard"), default.pop("query_guard")
    assert default.pop("fill_budget") is True  # v6: the default before a budget was filled with steps
    assert {r.pop("fill_budget") for r in (v6, v5, v4, v3, v2)} == {None}
    for d in (default, v6):
        d.pop("name"), d.pop("description")
    assert default == v6
    default = RECIPES["v6"].to_dict()
    default.pop("question_guard"), default.pop("query_guard"), default.pop("fill_budget")
    assert default["training"].pop("attention_dropout") == 0.0  # v5: the default before attention dropout was off
    assert {r["training"].pop("attention_dropout") for r in (v5, v4, v3, v2)} == {None}
    for d in (default, v5):
        d.pop("name"), d.pop("description")
    assert default == v5
    assert default.pop("alpha_rule") == "bagged" and {r.pop("alpha_rule") for r in (v4, v3, v2)} == {None}
    v4.pop("name"), v4.pop("description")
    assert default == v4  # v4: the default before the bagged fusion-weight rule
    assert default.pop("eval_share") == 0.25 and v3.pop("eval_share") is None and v2.pop("eval_share") is None
    assert v3["mining"]["negative_pool"] == "positives" and v2["mining"].pop("negative_pool") is None
    for d in (v3, v2):
        d.pop("name"), d.pop("description")
    assert default == v3
    v3["mining"].pop("negative_pool")
    assert v3 == v2


@pytest.mark.parametrize(("steps", "val"), [(20, 50), (46, 50), (60, 200), (120, 80), (323, 323), (640, 2000)])
def test_checkpoint_evaluations_cost_at_most_the_recipes_share_of_the_training(steps: int, val: int) -> None:
    """A small run (make demo: a few dozen steps, 50 validation questions) evaluates once, at its end, instead of
    spending more time scoring checkpoints than training; a large one keeps up to ``evaluations`` choices."""
    default = RECIPES["default"]
    cfg = default.training_config(100_000, max_steps=steps, val_questions=val)
    made = math.ceil(cfg.max_steps / cfg.eval_steps)  # every eval_steps, and at the last step
    assert made == default.evaluations_for(steps, val)
    assert 1 <= made <= default.evaluations
    cost = made * min(val, default.checkpoint_eval_queries) * EVAL_STEP_EQUIVALENT  # in training steps
    assert made == 1 or cost <= default.eval_share * steps
    one_more = (made + 1) * min(val, default.checkpoint_eval_queries) * EVAL_STEP_EQUIVALENT
    assert made == default.evaluations or one_more > default.eval_share * steps  # and no fewer than fit
    for name in ("v3", "v2", "v1"):  # the recipes kept to compare against evaluate as they were measured
        assert RECIPES[name].evaluations_for(steps, val) == 4


def test_recipe_show_prints_the_resolved_recipe_and_the_cli_defaults_are_the_recipes() -> None:
    from click.core import ParameterSource  # noqa: F401 - the CLI uses it to tell given options from defaults

    from rag_rerank.cli.training import mine_cmd, train_cmd

    shown = json.loads(CliRunner().invoke(main, ["recipe", "show"]).output)
    assert shown == RECIPES["default"].to_dict()
    assert json.loads(CliRunner().invoke(main, ["recipe", "show", "v1"]).output)["first_stage"]["tune"] is False
    r = RECIPES["default"]
    defaults = {p.name: p.default for p in train_cmd.params}
    assert defaults["loss"] == r.training.loss and defaults["group_size"] == r.training.train_group_size
    assert defaults["sanity_gate"] == r.training.sanity_gate and defaults["recipe"] == "default"
    assert defaults["rank_min"] == r.mining.rank_min and defaults["rank_max"] == r.mining.rank_max
    assert defaults["num_negatives"] == r.mining.num_negatives and defaults["num_random"] == r.mining.num_random
    assert defaults["relative_margin"] == r.mining.relative_margin
    assert defaults["neighbors"] == r.mining.exclude_same_doc_neighbors
    assert {p.name: p.default for p in mine_cmd.params}["group_size"] == r.training.train_group_size


def test_readme_python_example_runs(tmp_path: Path, stub: StubOpenAIServer, tiny_cross_encoder_dir: Path,
                                    tiny_bi_encoder_dir: Path) -> None:
    """The README's first Python block, run as written, with adapt's model and LLM defaults set to tiny ones."""
    import functools
    import types

    block = (REPO / "README.md").read_text(encoding="utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) <= 5
    _two_docs(tmp_path / "docs")
    tiny = types.SimpleNamespace(**{n: getattr(rr, n) for n in rr.__all__ if n != "__version__"})
    tiny.adapt = functools.partial(rr.adapt, llm="openai:stub", base_url=stub.base_url, max_chunks=6, max_steps=2,
                                   base_model=str(tiny_cross_encoder_dir), bi_encoder=str(tiny_bi_encoder_dir))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {"rr": tiny}
        exec(block.replace("import rag_rerank as rr\n", ""), namespace)  # noqa: S102 - the README's own code
    finally:
        os.chdir(cwd)
    assert (tmp_path / "runs" / "mydocs" / "summary.json").is_file()


@pytest.mark.slow
def test_cli_adapt_two_sample_documents_offline_with_the_embedded_models(tmp_path: Path) -> None:
    """The issue's bar: offline, embedded models, 12 chunks, 8 steps; loads in ST and HF; a shipped system."""
    docs = _two_docs(tmp_path / "docs")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rag_rerank", "adapt", str(docs), "--out", str(out),
                           "--max-chunks", "12", "--max-steps", "8"], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["shipped_system"] in report["systems"] and TUNED in report["systems"]
    assert f"{report['shipped_system']}_vs_{TUNED}" in report["delta"]
    assert "VERDICT (validation):" in proc.stderr and "shipped system:" in proc.stdout


def test_a_budget_run_trains_the_steps_it_planned(tmp_path: Path, stub: StubOpenAIServer,
                                                  tiny_cross_encoder_dir: Path, tiny_bi_encoder_dir: Path) -> None:
    """`--budget-minutes` (what `make demo` runs): measured throughput, a plan that trains (not 1 step, as the demo
    once was) and keeps enough validation questions when the corpus has them, and a deadline that lets it finish."""
    from rag_rerank.adaptation.plan import BUDGET_MIN_STEPS

    result = rr.adapt(_two_docs(tmp_path / "docs"), tmp_path / "run", llm="openai:stub", base_url=stub.base_url,
                      base_model=str(tiny_cross_encoder_dir), bi_encoder=str(tiny_bi_encoder_dir), max_chunks=30,
                      budget_minutes=1.0, echo=lambda _: None)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    summary = json.loads(result.summary_path.read_text())
    assert plan["throughput"].endswith("measured now") and plan["budget_minutes"] == 1.0
    assert plan["steps"] >= BUDGET_MIN_STEPS
    assert summary["training"]["steps"] == plan["steps"]  # the deadline did not cut what the plan asked for


def test_the_default_fills_its_budget_with_steps_past_the_datas_own_length(tmp_path: Path, stub: StubOpenAIServer,
                                                                    tiny_cross_encoder_dir: Path,
                                                                    tiny_bi_encoder_dir: Path) -> None:
    """fill_budget (the default since demo_v7.json): the plan's steps are trained even past the data's own length (the
    60-step floor here), up to the recipe's max_steps; v6 would stop at 60."""
    from dataclasses import replace

    recipe = replace(RECIPES["default"], max_steps=75)
    rr.adapt(_two_docs(tmp_path / "docs"), tmp_path / "run", llm="openai:stub", base_url=stub.base_url,
             base_model=str(tiny_cross_encoder_dir), bi_encoder=str(tiny_bi_encoder_dir), max_chunks=30,
             budget_minutes=6.0, recipe=recipe, echo=lambda _: None)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert RECIPES["v6"].steps_for(summary["data"]["per_split"]["train"]) == 60
    assert plan["steps"] == 75 and summary["training"]["steps"] == 75


def test_the_budget_probe_times_the_step_training_runs_with_the_recipes_attention_dropout(
        tiny_cross_encoder_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The planner times the step the recipe trains: with its attention dropout (off in the default, which lets the
    fused attention kernel run). Timed with the model's own 0.1, `make demo` planned 7.0 s per step on a CPU where
    the default trains at 1.5 s, and so trained the 20-step floor instead of the recipe's 60."""
    import logging
    import re

    from rag_rerank.adaptation.calibrate import measure_step

    texts = ["the cat sat on the mat near the door", "dogs bark at night in the old town"] * 4
    with caplog.at_level(logging.INFO, logger="rag_rerank"):
        default_s = measure_step(str(tiny_cross_encoder_dir), RECIPES["default"], texts, steps=1)
    assert RECIPES["default"].training.attention_dropout == 0.0 and default_s > 0
    assert re.search(r"attention dropout 0 in [1-9]\d* attention blocks", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rag_rerank"):
        measure_step(str(tiny_cross_encoder_dir), RECIPES["v5"], texts, steps=1)  # the model's own dropout
    assert "attention dropout" not in caplog.text and "measured" in caplog.text


def test_the_budget_probe_times_the_chunks_not_the_llm_start(tmp_path: Path) -> None:
    """The planner's chunk timing is the chunks' own wall time, not the call's: a local LLM server's start and the
    first imports once doubled `make demo`'s estimate. Against a real HTTP server with a fixed latency per answer
    (this call also pays the first chunking's imports, seconds here), the rate is within that latency per answer
    (one at a time, or 8 at a time); and the chunks measured are done, so the run resumes after them."""
    from rag_rerank.adaptation.calibrate import measure_chunks

    docs, n = _two_docs(tmp_path / "docs"), 6
    with StubOpenAIServer(delay=0.25) as slow:
        per_chunk = measure_chunks(docs, tmp_path / "ds", RECIPES["default"], "openai:stub", slow.base_url, n, seed=0)
        asked = slow.n_requests
    assert asked >= n
    # at most the answers' latency one after another, at least with the OpenAI path's 8 requests at a time
    assert 0.25 * asked / n / 8 <= per_chunk <= 0.25 * asked / n * 1.35
    with StubOpenAIServer(delay=0.25) as again:
        rr.create_qa_dataset(docs, tmp_path / "ds", llm="openai:stub", base_url=again.base_url, seed=0, max_chunks=n,
                             show_progress_bar=False, **RECIPES["default"].generation.kwargs())
        assert again.n_requests == 0


def test_the_shipped_fusion_carries_a_query_guard_from_the_training_questions(run) -> None:
    """The default's query guard: 1.5 times the longest training or validation question, and the question form
    (every one of them reads as a question), saved in fusion.json, the same guard the test report applied (and the
    postprocessor serves: tests/test_llamaindex.py)."""
    import math

    from rag_rerank.generate.questions import reads_as_question
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.rerank.fusion import query_words

    dataset = load_qa_dataset(run.dataset_dir)
    trained = [json.loads(line)["query"] for line in (run.reranker_dir / "train_groups.jsonl").open()]
    validated = list(dataset.split("validation")[1].values())
    expected = math.ceil(RECIPES["default"].query_guard * max(map(query_words, trained + validated)))
    assert all(map(reads_as_question, trained + validated))  # the question filter's work
    assert load_fusion(run.reranker_dir).max_query_words == expected
    assert load_fusion(run.reranker_dir).query_form == "question"
    guard = json.loads((run.report_dir / "report.json").read_text())["settings"]["query_guard"]
    assert guard == {"reranker": {"max_query_words": expected, "query_form": "question", "guarded": 0, "too_long": 0,
                                  "not_a_question": 0, "queries": len(dataset.split("test")[1])}}  # like training
