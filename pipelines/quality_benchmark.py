"""Quality on real human queries: ``adapt`` on a BEIR corpus as the user's documents, measured on its real queries.

    python pipelines/quality_benchmark.py                       # SQuAD, the headline (make benchmark-quality)
    python pipelines/quality_benchmark.py --corpus arguana      # ArguAna: a default run and a run with examples
    python pipelines/quality_benchmark.py --quick               # the same chain on a small slice (CI smoke run)
    python pipelines/quality_benchmark.py --recipe v1           # the 0.1 recipe, for comparison

The corpus plays the user's documents. No human query or label is used for training or for any choice: everything is
chosen by ``adapt`` on the *synthetic* validation split, with the recipe's settings (recorded as
``settings.recipe``). This script only adds data sizes and the real-query evaluation:

1. docs: each corpus record becomes a ``.txt`` file under ``WORK/docs`` (:func:`rag_rerank.io.export_documents`);
2. ``adapt(WORK/docs, WORK/<run>, recipe=...)`` per run: questions, index, tuned first stage, mining, training,
   fusion and the synthetic test report. ``--seed-checkpoint`` reuses an earlier run's LLM answers. The run
   ``examples`` passes ``--examples N`` real queries (seeded, from outside the evaluated sample) as
   ``query_examples``, so the LLM writes queries in their style;
3. real queries: a seeded sample of the corpus's human queries (the same sample for every run), with the shipped
   system (the tuned first stage, the reranker, the fusion weight from ``fusion.json``), and paired bootstrap CIs
   against the RRF hybrid and against the tuned first stage.

Presets (``--corpus``): ``squad`` (SQuAD v1.1 dev: 2,067 passages, 1,000 questions, MRR@10, every chunk asked;
writes ``pipelines/results/squad_headline.json``) and ``arguana`` (BEIR ArguAna: 8,674 arguments, 500 argument
queries, nDCG@10 with a query's own id dropped from its results as BEIR does, a seeded subset of the chunks asked;
writes ``pipelines/results/arguana.json`` as ``{"runs": {"default": ..., "examples": ...}}``).

Resumable: a rerun continues ``adapt`` and reuses a finished evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_rerank import adapt
from rag_rerank.evaluate.compare import evaluate_systems, sample_query_ids
from rag_rerank.evaluate.report import write_report
from rag_rerank.io import atomic_write, export_documents, load_beir, read_json, write_json
from rag_rerank.models import cache_dir
from rag_rerank.rerank.backends.auto import machine_info
from rag_rerank.rerank.fusion import TUNED, load_fusion
from rag_rerank.retrieval.store import build_index, load_index
from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
logger = logging.getLogger("quality_benchmark")


@dataclass(frozen=True)
class Preset:
    """A corpus and how it is measured."""

    data: Path
    metric: str
    metrics: tuple[str, ...]
    eval_queries: int
    max_chunks: int | None
    exclude_self: bool
    runs: tuple[str, ...]
    out: str
    llm_note: str = "embedded (SmolLM2-135M-Instruct Q4_1)"


PRESETS = {
    "squad": Preset(DATA / "squad" / "beir", "mrr@10", ("mrr@10", "ndcg@10", "recall@10", "recall@100", "hit@1"),
                    1000, None, False, ("default",), "squad_headline.json"),
    "arguana": Preset(DATA / "arguana", "ndcg@10", ("ndcg@10", "mrr@10", "recall@10", "recall@100"),
                      500, 400, True, ("default", "examples"), "arguana.json"),
}
QUICK = {"max_chunks": 40, "max_steps": 6, "eval_queries": 40}


def _curve(model_dir: Path) -> list[dict[str, float]]:
    """The reranking evaluator's synthetic-validation rows written while training (step, MRR@10, ...)."""
    import csv

    rows: list[dict[str, float]] = []
    for path in sorted((model_dir / "eval").glob("reranking_evaluation_*.csv")):
        with path.open(encoding="utf-8") as f:
            rows += [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return rows


def _real(args: argparse.Namespace, preset: Preset, run: Any, data: tuple[dict, dict, dict], size: dict,
          work: Path, report_dir: Path) -> dict[str, Any]:
    """The shipped system and its baselines on the real queries (reused when done for this model)."""
    corpus, queries, qrels = data
    fusion = load_fusion(run.reranker_dir)
    recipe = get_recipe(args.recipe)
    real_index = work / "index-real"
    bi = read_json(Path(run.index_dir) / "config.json")["bi_encoder"]
    if not (real_index / "config.json").is_file() or read_json(real_index / "config.json")["bi_encoder"] != bi:
        build_index(corpus, real_index, bi_encoder=bi, cache_dir=cache_dir() / "embeddings")
    shown = fusion.alpha if fusion.improved else fusion.best_alpha
    key = {"model": str(run.reranker_dir), "fusion": fusion.alpha, "first_stage": fusion.first_stage,
           "query_guard": fusion.max_query_words, **({"query_form": fusion.query_form} if fusion.query_form else {}),
           "sample": size["eval_queries"], "seed": args.seed, "n_resamples": args.n_resamples, "bi_encoder": bi,
           "queries": len(queries)}
    saved = report_dir / "report.json"
    if saved.is_file() and read_json(saved).get("extra", {}).get("resume_key") == key:
        return read_json(saved)
    start = time.perf_counter()
    result = evaluate_systems(corpus, queries, qrels, index=load_index(real_index), index_dir=real_index,
                              rerankers={"reranker": str(run.reranker_dir)}, alpha={"reranker": shown},
                              query_guard={"reranker": fusion.guard},
                              first_stage_tuned=fusion.first_stage, top_k=recipe.top_k, metrics=preset.metrics,
                              shipped_system=run.shipped_system, exclude_self=preset.exclude_self,
                              sample=size["eval_queries"], seed=args.seed, n_resamples=args.n_resamples)
    result.extra["resume_key"] = key
    result.extra["wall_s"] = round(time.perf_counter() - start, 1)  # kept, so a reused evaluation reports its time
    write_report(result, report_dir)
    return result.to_dict()


def _examples(queries: dict[str, str], qrels: dict, n: int, seed: int, evaluated: set[str]) -> list[str]:
    """A seeded sample of ``n`` real query ids used as style examples, drawn from outside the evaluated sample (so
    they are never evaluated, and every run is evaluated on the same queries whichever runs are given)."""
    usable = sorted(q for q in qrels if q in queries and q not in evaluated)
    if len(usable) < n:
        raise SystemExit(f"--examples {n}: only {len(usable)} real queries lie outside the {len(evaluated)} evaluated; "
                         "lower --examples or --eval-queries")
    return sorted(random.Random(f"examples-{seed}").sample(usable, n))


def _one_run(args: argparse.Namespace, preset: Preset, name: str, work: Path, data: tuple[dict, dict, dict],
             size: dict, example_ids: list[str], docs_s: float) -> dict[str, Any]:
    """``adapt`` then the real-query evaluation for one run; the result shaped like the SQuAD headline."""
    corpus, queries, _ = data
    run_dir = work / name
    examples = None
    if name == "examples":
        examples = work / f"{name}_query_examples.txt"  # beside the run folder: adapt takes only an empty new one
        if not examples.is_file():
            with atomic_write(examples) as f:
                f.write("\n".join(" ".join(queries[q].split()) for q in example_ids) + "\n")
    if args.seed_checkpoint and not (run_dir / "dataset" / "checkpoint.jsonl").is_file():
        (run_dir / "dataset").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.seed_checkpoint, run_dir / "dataset" / "checkpoint.jsonl")
    run = adapt(work / "docs", run_dir, recipe=args.recipe, seed=args.seed, max_chunks=size["max_chunks"],
                max_steps=size["max_steps"], stop_after=args.stop_after, query_examples=examples, echo=logger.info)
    if run is None:
        return {}
    s = time.perf_counter()
    real = _real(args, preset, run, data, size, work, work / f"report-{name}")
    real_s = real.get("extra", {}).get("wall_s", round(time.perf_counter() - s, 1))
    summary = read_json(run.summary_path)
    m = preset.metric
    out = {
        "headline_system": real["shipped_system"],
        "metric": m,
        "queries": real["queries"],
        "systems": real["systems"],
        "systems_ci95": real["systems_ci95"],
        "delta": {k: {mm: v[mm]["delta"] for mm in v} | {"ci95": v[m]["ci95"], "p": v[m]["p"]}
                  for k, v in real["delta"].items()},
        "delta_detail": real["delta"],
        "fusion": summary["fusion"],
        "first_stage": summary["first_stage"],
        "verdict_on_validation": summary["verdict"],
        # the fused system's query guard on the real queries (None: the recipe has none)
        "query_guard": real["settings"].get("query_guard", {}).get("reranker"),
        "validation_curve": _curve(run.reranker_dir),
        "ceiling": real["ceiling"],
        "gold_rank_histogram": real["gold_rank_histogram"],
        "synthetic_test": summary["test"],
        "data": {"documents": len(corpus), **summary["data"]},
        "training": summary["training"],
        "settings": {"recipe": summary["recipe"], "eval_queries": size["eval_queries"], "seed": args.seed,
                     "max_chunks": size["max_chunks"], "max_steps": size["max_steps"], "llm": preset.llm_note,
                     "query_examples": len(example_ids) if examples else None,
                     "exclude_self": preset.exclude_self, "evaluation": real["settings"]},
        # generation: the LLM's time over every chunk (the checkpoint records it), even when reused from a cache
        "stage_wall_s": {"docs": docs_s, **summary["stage_wall_s"],
                         "generate": max(summary["stage_wall_s"].get("generate", 0.0), summary["generation_llm_s"]),
                         "evaluate_real": real_s},
    }
    out["wall_s"] = round(sum(out["stage_wall_s"].values()), 1)
    h = out["headline_system"]
    d = real["delta"].get(f"{h}_vs_hybrid", {}).get(m, {})
    t = real["delta"].get(f"{h}_vs_{TUNED}", {}).get(m, {})
    logger.info("%s, real queries (%s): hybrid %.4f, %s %.4f, %s %.4f (%+.4f vs hybrid %s; %+.4f vs tuned %s)",
                name, m, real["systems"]["hybrid"][m], TUNED, real["systems"][TUNED][m], h, real["systems"][h][m],
                d.get("delta", 0), d.get("ci95"), t.get("delta", 0), t.get("ci95"))
    if out["query_guard"]:
        g = out["query_guard"]
        logger.info("%s: the query guard served %d of %d real queries by the tuned first stage (more than %s words: "
                    "%d; not a question: %d)", name, g["guarded"], g["queries"], g["max_query_words"],
                    g.get("too_long", g["guarded"]), g.get("not_a_question", 0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="squad", choices=sorted(PRESETS), help="The preset (see the docstring).")
    ap.add_argument("--quick", action="store_true", help="The same chain on a small slice (CI smoke run).")
    ap.add_argument("--recipe", default="default", help="The recipe adapt runs (rag-rerank recipe show NAME).")
    ap.add_argument("--data", type=Path, default=None, help="The preset's BEIR folder, elsewhere.")
    ap.add_argument("--runs", default=None, help="Comma-separated runs: default, examples (preset's by default).")
    ap.add_argument("--examples", type=int, default=10, help="Real queries given as style examples (run examples).")
    ap.add_argument("--max-chunks", type=int, default=None, help="Chunks asked (preset's by default).")
    ap.add_argument("--eval-queries", type=int, default=None, help="Real queries evaluated (preset's by default).")
    ap.add_argument("--work", type=Path, default=None, help="Work folder (default runs/<corpus>_<recipe>[_quick]).")
    ap.add_argument("--out", type=Path, default=None, help="Result JSON.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of generation, splits, training and the real sample.")
    ap.add_argument("--n-resamples", type=int, default=10000, help="Bootstrap resamples.")
    ap.add_argument("--stop-after", default=None, choices=("generate", "index", "first_stage", "mine", "train"),
                    help="Stop adapt after this stage (experiments reuse the data); a rerun without it continues.")
    ap.add_argument("--seed-checkpoint", type=Path, default=None,
                    help="An earlier generation's checkpoint.jsonl: its LLM answers are reused (same LLM, prompt and "
                         "sampling settings), so generation costs nothing.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rag_rerank").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    preset = PRESETS[args.corpus]
    size = dict(QUICK) if args.quick else {"max_chunks": preset.max_chunks, "max_steps": None,
                                            "eval_queries": preset.eval_queries}
    size["max_chunks"] = args.max_chunks or size["max_chunks"]
    size["eval_queries"] = args.eval_queries or size["eval_queries"]
    names = tuple(args.runs.split(",")) if args.runs else preset.runs
    unknown = set(names) - {"default", "examples"}
    if unknown:
        raise SystemExit(f"--runs {args.runs}: unknown run(s) {sorted(unknown)}; use default and/or examples")
    suffix = "_quick" if args.quick else ""
    work = (args.work or REPO / "runs" / f"{args.corpus}_{args.recipe}{suffix}").resolve()  # resume keys hold paths
    out_json = args.out or (work / f"{args.corpus}{suffix}.json" if args.quick
                            else REPO / "pipelines" / "results" / preset.out)
    data_dir = args.data or preset.data
    if not (data_dir / "corpus.jsonl").is_file():
        raise SystemExit(f"{data_dir}: no BEIR folder (corpus.jsonl missing); pass --data DIR")
    t0 = time.perf_counter()
    corpus, queries, qrels = load_beir(data_dir)
    # the evaluated queries: the same seeded sample for every run (evaluate_systems draws it the same way); the
    # style examples come from the other queries
    eval_ids = sample_query_ids(qrels, queries, size["eval_queries"], args.seed)
    example_ids = _examples(queries, qrels, args.examples, args.seed, set(eval_ids)) if "examples" in names else []
    if args.quick:  # a slice: the documents of the evaluated queries and a few more
        keep = sorted({d for q in eval_ids for d in qrels[q] if d in corpus} | set(sorted(corpus)[:size["max_chunks"]]))
        corpus = {d: corpus[d] for d in keep}
    s = time.perf_counter()
    export_documents(corpus, work / "docs")
    docs_s = round(time.perf_counter() - s, 1)
    runs = {}
    for name in names:
        runs[name] = _one_run(args, preset, name, work, (corpus, queries, qrels), size, example_ids, docs_s)
        if not runs[name]:
            logger.info("--stop-after %s: stopped; rerun without it to continue", args.stop_after)
            return 0
    command = "python " + " ".join(shlex.quote(a) for a in ["pipelines/quality_benchmark.py", *sys.argv[1:]])
    note = ("No human query or label was used for training or any choice. wall_s sums each stage's time in the run "
            "that did its work (stages resume).")
    if args.corpus == "squad" and names == ("default",):  # the headline file keeps its flat shape
        out = {**runs["default"], "command": command, "note": note}
    else:
        # runs of one recipe given separately accumulate in one file; another recipe's file is replaced
        before = read_json(out_json) if out_json.is_file() else {}
        if before.get("corpus") == args.corpus and isinstance(before.get("runs"), dict) and all(
                r.get("settings", {}).get("recipe", {}).get("name") == args.recipe for r in before["runs"].values()):
            runs = {**before["runs"], **runs}
            commands = {**before.get("commands", {}), **dict.fromkeys(names, command)}
        else:
            if before:
                logger.warning("%s holds runs of another corpus or recipe: replacing it", out_json)
            before, commands = {}, dict.fromkeys(names, command)
        out = {"corpus": args.corpus, "runs": runs,
               "example_query_ids": example_ids or before.get("example_query_ids", []), "commands": commands,
               "note": note + " The example queries are drawn from outside the evaluated sample, which is the same "
                       "for every run.",
               "wall_s": round(sum(r["wall_s"] for r in runs.values()), 1)}
    out["this_invocation_wall_s"] = round(time.perf_counter() - t0, 1)
    out["machine"] = machine_info()  # where this invocation ran (stages it found done ran where they ran)
    write_json(out_json, out)
    logger.info("wrote %s", out_json)
    shipped = {n: r.get("headline_system") for n, r in out.get("runs", {"default": out}).items()}
    print(json.dumps({"shipped_system": shipped, "wall_s": out["wall_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
