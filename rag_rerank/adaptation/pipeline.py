"""``adapt``: documents in, an adapted reranker out, with the system it ships measured on held-out questions.

The chain, each stage resumable (a rerun after a crash or Ctrl-C continues where it stopped)::

    RUN_DIR/dataset/         generate: synthetic questions, split by questions (BEIR, HF, LlamaIndex, manifest)
    RUN_DIR/index/           index: BM25 + bi-encoder hybrid over the chunks
    RUN_DIR/bi_encoder/      optional: the fine-tuned bi-encoder, kept only if it helps on validation
    RUN_DIR/first_stage.json the tuned first stage (fusion chosen on validation)
    RUN_DIR/train_groups.jsonl  mine: hard negatives from the tuned first stage
    RUN_DIR/reranker/        train + fusion: the model, fusion.json (alpha, tuned first stage) and a model card
    RUN_DIR/report/          evaluate: the synthetic test split, shipped system first
    RUN_DIR/summary.json     what was done, the verdict, the test gain with its CI, stage times

Every setting comes from a :class:`~rag_rerank.train.recipes.Recipe`; ``RUN_DIR/run.json`` records it, and a
rerun with other settings is refused rather than mixed in.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rag_rerank.adaptation.first_stage import FirstStageChoice, tune_on_validation
from rag_rerank.adaptation.plan import Plan, load_throughput, make_plan, save_throughput, training_key
from rag_rerank.adaptation.runfolder import RunFolder
from rag_rerank.errors import DataError
from rag_rerank.io import read_json
from rag_rerank.rerank.fusion import TUNED, FusionChoice, load_fusion
from rag_rerank.train.recipes import Recipe, get_recipe

logger = logging.getLogger(__name__)

__all__ = ["AdaptResult", "adapt"]


@dataclass(frozen=True)
class AdaptResult:
    """What :func:`adapt` produced. ``verdict`` is the validation verdict on the shipped system; ``test_gain`` its
    gain over the tuned first stage on the held-out synthetic test split (MRR@10, with a 95% CI)."""

    run_dir: Path
    dataset_dir: Path
    index_dir: Path
    reranker_dir: Path
    report_dir: Path
    summary_path: Path
    verdict: str
    shipped_system: str
    alpha: float
    first_stage: dict[str, Any]
    test_gain: dict[str, Any] | None
    wall_s: float


def adapt(
    docs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    recipe: str | Recipe = "default",
    llm: str = "embedded",
    base_url: str | None = None,
    base_model: str | None = None,
    bi_encoder: str | None = None,
    max_chunks: int | None = None,
    max_steps: int | None = None,
    budget_minutes: float | None = None,
    seed: int = 0,
    query_examples: Any = None,
    distill: int | None = None,
    stop_after: str | None = None,
    echo: Callable[[str], None] | None = None,
    show_progress_bar: bool | None = None,
) -> AdaptResult | None:
    """Adapt a reranker to the documents in ``docs_dir``, with no human labels.

    Args:
        docs_dir: a folder of .txt, .md, .html and .pdf files.
        out_dir: the run folder (see the module docstring); a rerun resumes it.
        recipe: a recipe name (``rag-rerank recipe show``) or a :class:`Recipe`.
        llm, base_url: the question writer: ``"embedded"`` (SmolLM2, offline) or ``"openai:MODEL"`` (+ endpoint).
        base_model, bi_encoder: override the recipe's reranker base and bi-encoder.
        max_chunks, max_steps: cap the chunks asked and the training steps (small runs, tests).
        budget_minutes: measure this machine's throughput, then size chunks and steps to fit (a recipe with
            ``fill_budget``, the default, trains as many steps as the time left allows, up to its ``max_steps``);
            training stops with the best checkpoint so far when the budget is spent.
        seed: seeds generation, splits and training.
        query_examples: 5-50 queries of the kind your system receives (a file path, a list or a
            :class:`rag_rerank.generate.style.QueryStyle`): synthetic queries are written in their style.
        distill: distil the fine-tuned reranker into a student with this many layers, and serve the student when
            its fused validation MRR@10 is within 0.005 of the teacher's (:mod:`rag_rerank.train.distill`).
        stop_after: stop after this stage (``generate``, ``index``, ``bi_encoder``, ``first_stage``, ``mine`` or
            ``train``) and return ``None``; a rerun without it continues (experiments on the same data use it).
        echo: where the plan, the stages and the verdict are written (default: the module logger).

    Returns:
        An :class:`AdaptResult`.

    Raises:
        DataError: an empty folder or one without supported documents. RagRerankError: ``out_dir`` cannot be
            written, is in use, or was made by another recipe or other settings.

    Example:
        >>> run = adapt("docs/", "runs/mydocs")  # doctest: +SKIP
        >>> print(run.verdict)  # doctest: +SKIP
    """
    from rag_rerank.generate.dataset import resolve_style
    from rag_rerank.generate.documents import load_documents
    from rag_rerank.generate.llm import parse_llm_spec

    t0, started = time.perf_counter(), time.time()
    say = echo or logger.info
    recipe = get_recipe(recipe)
    base_model = base_model or recipe.base_model
    bi_encoder = bi_encoder or recipe.bi_encoder
    load_documents(docs_dir)  # an empty or unusable folder fails here, before anything is written
    style = resolve_style(query_examples)
    # what the run's results depend on (the endpoint of a remote LLM is not: its answers are cached by model)
    identity = {"recipe": recipe.to_dict(), "docs_dir": str(Path(docs_dir).resolve()), "llm": llm,
                "base_model": base_model, "bi_encoder": bi_encoder, "max_chunks": max_chunks,
                "max_steps": max_steps, "budget_minutes": budget_minutes, "seed": seed}
    if style:
        identity["query_examples"] = style.fingerprint
    if distill:
        identity["distill"] = distill
    run = RunFolder(out_dir, identity)
    llm_kind = parse_llm_spec(llm)[0] if llm != "client" else "remote"
    with run.locked():
        plan = run.plan or _plan(docs_dir, run, recipe, llm, base_url, base_model, max_chunks, max_steps,
                                 budget_minutes, seed, llm_kind, style, say)
        say(plan.describe())
        # an over-budget plan (the fewest chunks and steps that can show anything) keeps its own estimate
        deadline = None if budget_minutes is None else \
            started + max(budget_minutes * 60.0, plan.est_total_s) - plan.est_other_s / 2
        run.stage("generate", lambda: _generate(docs_dir, run, recipe, llm, base_url, plan.chunks, seed, style,
                                                show_progress_bar), say)
        if stop_after == "generate":
            return None
        run.stage("index", lambda: _index(run, bi_encoder), say)
        if stop_after == "index":
            return None
        index_dir = run.stage("bi_encoder", lambda: _bi_encoder(run, recipe, bi_encoder, say), say)
        if stop_after == "bi_encoder":
            return None
        first = FirstStageChoice(**run.stage("first_stage", lambda: asdict(_first_stage(run, recipe, index_dir)),
                                             say))
        if stop_after == "first_stage":
            return None
        n_groups = run.stage("mine", lambda: _mine(run, recipe, index_dir, first.settings), say)
        if stop_after == "mine":
            return None
        manifest = read_json(run.dataset_dir / "manifest.json")  # the dataset's counts and generation timings
        n_val = manifest.get("counts", {}).get("per_split", {}).get("validation")
        fill = plan.budget_minutes is not None and recipe.fill_budget  # the plan's steps, past the data's epochs
        training = recipe.training_config(n_groups, None if fill else plan.steps, val_questions=n_val,
                                          steps=plan.steps if fill else None)
        run.stage("train", lambda: _train(run, recipe, base_model, index_dir, first, training, deadline,
                                          show_progress_bar), say)
        if stop_after == "train":
            return None
        choice = load_fusion(run.reranker_dir)
        if choice is None:
            raise DataError(f"{run.reranker_dir}: training left no fusion.json; delete the folder and rerun")
        served = run.reranker_dir
        if distill and choice.improved:
            student = run.stage("distill", lambda: _distill(run, recipe, index_dir, first, choice, distill), say)
            served = run.student_dir if student["kept"] else served
        report = run.stage("evaluate", lambda: _evaluate(run, recipe, index_dir, first, choice, served), say)
        summary = _summary(run, recipe, plan, first, choice, report, llm_kind, base_model, training, manifest)
        run.write_summary(summary)
        _record_throughput(run, llm_kind, recipe, base_model, manifest)
    say(f"\nVERDICT (validation): {choice.verdict(TUNED)}")
    note = choice.guard_note(style.examples, "of your example queries") if style else None
    if note:
        say(note)
    say(_test_line(summary))
    levers = _next_line(choice, summary, llm_kind, base_model)
    if levers:
        say(levers)
    return AdaptResult(
        run_dir=run.path, dataset_dir=run.dataset_dir, index_dir=Path(index_dir), reranker_dir=served,
        report_dir=run.report_dir, summary_path=run.summary_path, verdict=choice.verdict(TUNED),
        shipped_system=summary["shipped_system"], alpha=choice.alpha, first_stage=first.settings,
        test_gain=summary["test"].get("shipped_vs_first_stage"), wall_s=round(time.perf_counter() - t0, 1),
    )


# ------------------------------------------------------------------------------------------- stages


def _plan(docs_dir: Any, run: RunFolder, recipe: Recipe, llm: str, base_url: str | None, base_model: str,
          max_chunks: int | None, max_steps: int | None, budget_minutes: float | None, seed: int, llm_kind: str,
          style: Any, say: Callable[[str], None]) -> Plan:
    from rag_rerank.generate.chunking import load_chunks

    chunks, _ = load_chunks(docs_dir, chunk_tokens=recipe.generation.chunk_tokens)
    tp = load_throughput(llm_kind, training_key(recipe, base_model))
    s_chunk, s_step, source, done = tp.s_per_chunk, tp.s_per_step, tp.source, 0
    if budget_minutes is not None:
        from rag_rerank.adaptation.calibrate import measure_chunks, measure_step

        say("measuring this machine's throughput for the budget (a few chunks and two training steps) ...")
        done = min(len(chunks), 8)
        s_chunk = measure_chunks(docs_dir, run.dataset_dir, recipe, llm, base_url, done, seed, style)
        s_step = measure_step(base_model, recipe, [c.text for c in chunks[:64]])
        source = "measured now"
    plan = make_plan(len(chunks), recipe, s_per_chunk=s_chunk, s_per_step=s_step, max_chunks=max_chunks,
                     max_steps=max_steps, budget_minutes=budget_minutes, chunks_done=done, source=source)
    run.save_plan(plan)
    return plan


def _generate(docs_dir: Any, run: RunFolder, recipe: Recipe, llm: str, base_url: str | None, chunks: int,
              seed: int, style: Any, show_progress_bar: bool | None) -> dict[str, Any]:
    from rag_rerank.generate.dataset import create_qa_dataset

    summary = create_qa_dataset(docs_dir, run.dataset_dir, llm=llm, base_url=base_url, seed=seed, max_chunks=chunks,
                                show_progress_bar=show_progress_bar, retry_failed=False, query_examples=style,
                                **recipe.generation.kwargs())
    if summary.failed_chunks:
        logger.warning("%d chunk(s) got no usable question (see %s/manifest.json); going on without them",
                       len(summary.failed_chunks), run.dataset_dir)
    if summary.n_questions == 0:
        raise DataError(f"{docs_dir}: the LLM wrote no usable question for {summary.n_chunks} chunk(s); check the "
                        f"LLM ({llm}) and {run.dataset_dir}/manifest.json")
    return {"chunks": summary.n_chunks, "questions": summary.n_questions, "failed_chunks": len(summary.failed_chunks)}


def _index(run: RunFolder, bi_encoder: str) -> str:
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.models import cache_dir
    from rag_rerank.retrieval.store import build_index

    # embeddings are cached per model and text: another run (recipe, examples) on the same documents encodes nothing
    build_index(load_qa_dataset(run.dataset_dir).corpus, run.index_dir, bi_encoder=bi_encoder,
                cache_dir=cache_dir() / "embeddings")
    return str(run.index_dir)


def _bi_encoder(run: RunFolder, recipe: Recipe, bi_encoder: str, say: Callable[[str], None]) -> str:
    settings = recipe.bi_encoder_stage
    if not settings.enabled:
        return str(run.index_dir)
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.retrieval.store import build_index
    from rag_rerank.train.bi_encoder import choose_bi_encoder, finetune_bi_encoder

    dataset = load_qa_dataset(run.dataset_dir)
    tuned_dir, tuned_index = run.path / "bi_encoder", run.path / "index-bi"
    finetune_bi_encoder(run.dataset_dir, tuned_dir, index_dir=run.index_dir, base_model=bi_encoder,
                        mining=recipe.mining, epochs=settings.epochs, batch_size=settings.batch_size,
                        learning_rate=settings.learning_rate, seed=recipe.training.seed)
    build_index(dataset.corpus, tuned_index, bi_encoder=str(tuned_dir))
    choice = choose_bi_encoder(dataset, run.index_dir, tuned_index, recipe.max_eval_queries)
    say(f"  bi-encoder: validation hybrid MRR@10 {choice.base['hybrid']:.4f} -> {choice.tuned['hybrid']:.4f}: "
        + ("kept" if choice.used else "not kept"))
    return str(tuned_index if choice.used else run.index_dir)


def _first_stage(run: RunFolder, recipe: Recipe, index_dir: str) -> FirstStageChoice:
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.retrieval.store import load_index

    return tune_on_validation(load_qa_dataset(run.dataset_dir), load_index(index_dir), recipe.first_stage,
                              recipe.max_eval_queries)


def _mine(run: RunFolder, recipe: Recipe, index_dir: str, first_stage: dict[str, Any]) -> int:
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.io import write_jsonl
    from rag_rerank.retrieval.store import load_index
    from rag_rerank.train.finetune import mine_split

    index = load_index(index_dir).with_fusion(**first_stage)
    mined = mine_split(load_qa_dataset(run.dataset_dir), index, "train", mining=recipe.mining,
                       group_size=recipe.training.train_group_size)
    if not mined.groups:
        raise DataError(f"{run.dataset_dir}: no training groups could be built; generate questions for more chunks")
    return write_jsonl(run.groups_path, mined.groups)


def _train(run: RunFolder, recipe: Recipe, base_model: str, index_dir: str, first: FirstStageChoice, training: Any,
           deadline: float | None, show_progress_bar: bool | None) -> dict[str, Any]:
    from dataclasses import replace

    from rag_rerank.train.finetune import finetune
    from rag_rerank.train.guards import DeadlineCallback

    cfg = replace(training, resume_from_checkpoint=True, show_progress_bar=show_progress_bar)
    callbacks = [DeadlineCallback(deadline)] if deadline is not None else None
    result = finetune(run.dataset_dir, run.reranker_dir, recipe=recipe, index_dir=index_dir, base_model=base_model,
                      training=cfg, groups=run.groups_path,
                      first_stage=first.settings, command="rag-rerank adapt", callbacks=callbacks)
    return {"steps": result.steps, "wall_s": round(result.wall_time_s, 1), "reranker_alone": result.verdict,
            "eval_before": result.eval_before, "eval_after": result.eval_after, "first_stage": result.first_stage,
            "s_per_step": result.step_seconds or round(result.wall_time_s / max(result.steps, 1), 3),
            "precision": result.data_summary.get("precision")}


def _distill(run: RunFolder, recipe: Recipe, index_dir: str, first: FirstStageChoice, choice: FusionChoice,
             layers: int) -> dict[str, Any]:
    import shutil

    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.retrieval.store import load_index
    from rag_rerank.train.distill import DistillConfig, compare_on_validation, distill_reranker
    from rag_rerank.train.finetune import validation_run

    result = distill_reranker(run.reranker_dir, run.student_dir, config=DistillConfig(layers=layers))
    val = validation_run(load_qa_dataset(run.dataset_dir), load_index(index_dir).with_fusion(**first.settings),
                         top_k=recipe.top_k, max_queries=recipe.max_eval_queries)
    check = compare_on_validation(run.reranker_dir, run.student_dir, *val, alpha=choice.alpha, top_k=recipe.top_k)
    if check["kept"]:  # served like the teacher: at the same fusion weight
        shutil.copyfile(run.reranker_dir / "fusion.json", run.student_dir / "fusion.json")
    logger.info("student (%d layers): fused validation MRR@10 %.4f vs teacher %.4f: %s", layers,
                check["student_mrr@10"], check["teacher_mrr@10"], "served" if check["kept"] else "not served")
    return {**result.to_dict(), "validation": check, "kept": check["kept"]}


def _evaluate(run: RunFolder, recipe: Recipe, index_dir: str, first: FirstStageChoice,
              choice: FusionChoice, served: Path) -> dict[str, Any]:
    from rag_rerank.evaluate.compare import evaluate_systems
    from rag_rerank.evaluate.report import write_report
    from rag_rerank.generate.store import load_qa_dataset
    from rag_rerank.retrieval.store import load_index

    corpus, queries, qrels = load_qa_dataset(run.dataset_dir).split("test")
    if not queries:
        logger.warning("the test split has no questions: no held-out evaluation")
        return {}
    reranked = TUNED  # the tuned first stage (the RRF default when there was too little data to tune)
    shown = choice.alpha if choice.improved else choice.best_alpha  # what fusion would do, even when not shipped
    shipped = f"{reranked}+reranker@{choice.alpha:g}" if choice.improved else reranked
    result = evaluate_systems(corpus, queries, qrels, index=load_index(index_dir), index_dir=index_dir,
                              rerankers={"reranker": str(served)}, alpha={"reranker": shown},
                              query_guard={"reranker": choice.guard},
                              first_stage_tuned=first.settings, top_k=recipe.top_k, shipped_system=shipped,
                              n_resamples=10000)
    result.command = "rag-rerank adapt"
    write_report(result, run.report_dir)
    return result.to_dict()


# ------------------------------------------------------------------------------------------- summary


def _delta(report: dict[str, Any], system: str, baseline: str) -> dict[str, Any] | None:
    d = report.get("delta", {}).get(f"{system}_vs_{baseline}", {}).get("mrr@10")
    return None if d is None else {"metric": "mrr@10", **d}


def _summary(run: RunFolder, recipe: Recipe, plan: Plan, first: FirstStageChoice, choice: FusionChoice,
             report: dict[str, Any], llm_kind: str, base_model: str, training: Any,
             manifest: dict[str, Any]) -> dict[str, Any]:
    shipped = report.get("shipped_system") or TUNED
    test: dict[str, Any] = {"queries": report.get("queries", 0), "systems": report.get("systems", {})}
    if report:
        test["shipped_vs_first_stage"] = _delta(report, shipped, TUNED)
        test["shipped_vs_hybrid"] = _delta(report, shipped, "hybrid")
    return {
        "verdict": choice.verdict(TUNED), "status": choice.status, "shipped_system": shipped,
        "alpha": choice.alpha, "first_stage": asdict(first), "fusion": asdict(choice), "test": test,
        "data": {k: manifest.get("counts", {}).get(k) for k in ("documents", "chunks_total", "chunks_selected",
                                                              "kept", "per_split", "split_unit",
                                                              "dropped_by_reason")},
        "training": {**run.stage_result("train"), "config": asdict(training)},
        "plan": plan.to_dict(), "recipe": recipe.to_dict(), "base_model": base_model, "llm": llm_kind,
        "stage_wall_s": run.stage_times(), "wall_s": round(sum(run.stage_times().values()), 1),
        "generation_llm_s": _generation_seconds(run),
        "student": run.stage_result("distill"),
        "paths": {"dataset": str(run.dataset_dir), "report": str(run.report_dir),
                  "reranker": str(run.student_dir if run.stage_result("distill").get("kept") else run.reranker_dir)},
    }


def _generation_seconds(run: RunFolder) -> float:
    """Seconds the LLM spent on this dataset's chunks, over every run that asked (the checkpoint records them), so
    a dataset whose answers came from the cache still shows what generating it costs."""
    from rag_rerank.generate.store import CHECKPOINT, read_checkpoint

    records = {r["chunk_id"]: r for r in read_checkpoint(run.dataset_dir / CHECKPOINT)}
    return round(sum(float(r.get("seconds", 0.0)) for r in records.values()), 1)


def _test_line(summary: dict[str, Any]) -> str:
    test = summary["test"]
    gain = test.get("shipped_vs_first_stage")
    if not test.get("queries") or gain is None:
        return "TEST: no held-out synthetic test questions; nothing measured."
    shipped = summary["shipped_system"]
    if shipped == TUNED:
        return (f"TEST ({test['queries']} held-out synthetic questions): the shipped system is the first stage "
                f"({shipped}), MRR@10 {test['systems'][shipped]['mrr@10']:.4f}; the reranker is not used.")
    lo, hi = gain["ci95"]
    ok = "the CI excludes 0" if lo > 0 or hi < 0 else "the CI includes 0: no gain shown"
    return (f"TEST ({test['queries']} held-out synthetic questions): {shipped} MRR@10 "
            f"{test['systems'][shipped]['mrr@10']:.4f}, {gain['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}] over the "
            f"tuned first stage ({ok}).")


def _next_line(choice: FusionChoice, summary: dict[str, Any], llm_kind: str, base_model: str) -> str | None:
    """When validation refused the reranker: one line on what can change that for this run (None when shipped)."""
    from rag_rerank.train.config import has_new_head

    if choice.improved:
        return None
    data = summary.get("data") or {}
    total, asked = data.get("chunks_total"), data.get("chunks_selected")
    levers = []
    if total and asked and asked < total:
        levers.append(f"ask questions for all {total} chunks (this run asked {asked}: --max-chunks, --budget-minutes)")
    levers.append(f"more documents ({choice.queries} validation questions can show only a large gain; a gain of a "
                  "few hundredths needs a few hundred questions)")
    if llm_kind == "embedded":
        levers.append("a stronger question writer: --llm openai:MODEL (OPENAI_API_KEY), or a vLLM/Ollama server "
                      "with --base-url")
    try:
        new_head = has_new_head(base_model)
    except (OSError, ValueError):  # a base that no longer resolves: say nothing about it
        new_head = False
    if new_head:
        levers.append("a trained reranker to start from: --base-model BAAI/bge-reranker-base (from the Hugging Face "
                      "hub)")
    return "NEXT: the reranker was not shipped; what can change that (rag-rerank adapt): " + "; ".join(levers) + "."


def _record_throughput(run: RunFolder, llm_kind: str, recipe: Recipe, base_model: str,
                       manifest: dict[str, Any]) -> None:
    timings = manifest.get("timings", {})
    asked = timings.get("requests_this_run") or 0
    s_chunk = timings.get("llm_seconds", 0) / asked if asked >= 8 else None
    train = run.stage_result("train")
    # optimiser steps only (TrainResult.step_seconds); a run of fewer steps is too short a sample to keep
    step = train.get("s_per_step") if train.get("steps", 0) >= 20 else None
    save_throughput(llm_kind, training_key(recipe, base_model), s_chunk, step)
