"""Write ``notebooks/end_to_end.ipynb`` from the cells below, with no outputs.

The notebook is generated so that its source can be reviewed as plain Python, and so that the committed
file never carries outputs. Edit the cells here, then regenerate:

    .venv/bin/python notebooks/make_notebook.py           # write the notebook
    .venv/bin/python notebooks/make_notebook.py --check   # exit 1 if the committed file is stale

Run it (offline, on the embedded models) with ``.venv/bin/jupyter execute notebooks/end_to_end.ipynb``
(nbclient), or open it in Jupyter. ``tests/test_notebook.py`` executes it in the slow suite.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().with_name("end_to_end.ipynb")

INTRO = """\
# rag-rerank end to end: your documents → an adapted reranker → cited answers

This notebook adapts a reranker to a folder of documents with **no human labels**, on the embedded, offline
defaults, with one call: `rag_rerank.adapt`, the same code path as `rag-rerank adapt` and `make demo`.

1. **Synthetic questions.** The embedded SmolLM2 (llama.cpp) writes questions for chunks of the packaged sample
   documents; the questions are filtered and split into train / validation / test.
2. **First stage, fine-tune, fusion, evaluation.** A hybrid first stage (BM25 + MiniLM/FAISS) is tuned on the
   validation questions; hard negatives are mined from it; `embedded:minilm-ce` is fine-tuned; how much to trust
   it (the fusion weight) is chosen on validation with a confidence interval; the held-out test split compares
   the shipped system with the tuned first stage.
3. **Answer with sources.** The adapted model plugs into a LlamaIndex query engine that serves exactly what was
   measured: tuned first stage → `RagRerankPostprocessor` (fused as chosen) → SmolLM2, citing numbered sources.

Everything is written under one run folder (default `runs/notebook`, or `$RAG_RERANK_NOTEBOOK_OUT`); a rerun
resumes it, so delete the folder to start over. The settings below keep the run to minutes on a CPU: read its
numbers as a demo of the mechanics. With so few questions the verdict is honest about it ("NOT ENOUGH VALIDATION
DATA"); `rag-rerank demo` sizes a larger run to a time budget, and `make benchmark-quality` measures quality."""

PARAMETERS = """\
# Sizes only: every other setting comes from the recipe (rag-rerank recipe show default).
MAX_CHUNKS = 12  # chunks to write questions for (a seeded subset of the documents)
MAX_STEPS = 8  # reranker training steps at most
RECIPE = "default"
SEED = 0
LLM = "embedded"  # or "openai:MODEL" together with BASE_URL (any OpenAI-compatible server)
BASE_URL = None
DOCS = None  # None: the sample documents packaged with rag-rerank
OUT = None  # None: $RAG_RERANK_NOTEBOOK_OUT, else runs/notebook"""

SETUP = '''\
import json
import logging
import os
import warnings
from pathlib import Path

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")  # embedded models only: never reach for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

import rag_rerank as rr  # noqa: E402
import transformers  # noqa: E402
from rag_rerank.data import SAMPLE_DOCS  # noqa: E402

transformers.logging.set_verbosity_error()  # no weight-loading reports
transformers.logging.disable_progress_bar()

DOCS = Path(DOCS or SAMPLE_DOCS)
OUT = Path(OUT or os.environ.get("RAG_RERANK_NOTEBOOK_OUT") or "runs/notebook")
print(f"rag-rerank {rr.__version__}\\ndocuments: {DOCS}\\noutputs:   {OUT}")'''

STEP1 = """\
## 1. Adapt: one call, resumable

`adapt` prints its plan, runs each stage (a rerun skips the finished ones), and ends with the verdict decided on
the validation split and the shipped system's result on the held-out test split."""

ADAPT = """\
run = rr.adapt(DOCS, OUT, recipe=RECIPE, llm=LLM, base_url=BASE_URL, max_chunks=MAX_CHUNKS, max_steps=MAX_STEPS,
               seed=SEED, echo=print)
print(f"\\nshipped system: {run.shipped_system} (alpha {run.alpha:g}); first stage: {run.first_stage}")"""

MANIFEST_MD = """\
## 2. What the LLM wrote

`manifest.json` records what happened: how many questions were asked for, returned and kept, why the others were
dropped, and how many landed in each split (plus the LLM, the prompt hash and every setting)."""

MANIFEST = """\
data = rr.load_qa_dataset(run.dataset_dir)
counts = data.manifest["counts"]
print(json.dumps({k: counts[k] for k in ("documents", "chunks_total", "chunks_selected", "asked", "returned", "kept",
                                         "per_split", "split_unit", "dropped_by_reason")}, indent=2))"""

QUESTIONS = """\
import pandas as pd

pd.set_option("display.max_colwidth", 100)
questions = pd.DataFrame(
    [{"split": info["split"], "document": data.corpus[info["chunk_id"]]["title"], "question": data.queries[qid]}
     for qid, info in data.query_info.items()]
).sort_values(["split", "document"], ignore_index=True)
questions.groupby("split", group_keys=False).head(4)"""

ONE_EXAMPLE = """\
# One question next to the passage it was written from (its only relevant document).
qid = sorted(data.queries)[0]
chunk = data.corpus[data.query_info[qid]["chunk_id"]]
print(f"Q: {data.queries[qid]}\\n\\n[{chunk['title']}] {chunk['text'][:600]}...")"""

STEP2 = """\
## 3. The report: shipped system against the tuned first stage

`report/` holds the test split's comparison: the shipped system first, the RRF hybrid and the tuned first stage
as baselines, paired bootstrap confidence intervals, and the first stage's recall@20 as the ceiling (positives
are never injected). `summary.json` says the same in one place."""

REPORT = """\
from IPython.display import Image, Markdown, display

summary = json.loads(run.summary_path.read_text())
print(summary["verdict"])
display(Markdown((run.report_dir / "report.md").read_text().split("![metrics]")[0]))"""

PLOTS = """\
display(Image(filename=str(run.report_dir / "metrics.png")))
display(Image(filename=str(run.report_dir / "gold_rank_hist.png")))"""

STEP3 = """\
## 4. Serve it in LlamaIndex

`RagRerankPostprocessor(model=...)` serves the system that was measured: when the model folder has a
`fusion.json`, it fuses the reranker's scores with the retrieval scores at the chosen weight (with weight 0 it
keeps the first stage's order and does not even run the model). `RagRerankHybridRetriever` with the tuned first
stage gives it the same candidates the evaluation reranked."""

POSTPROCESS = """\
from rag_rerank.integrations.llamaindex import RagRerankHybridRetriever, RagRerankPostprocessor

_, test_queries, test_qrels = data.split("test" if data.qrels["test"] else "validation")
qid = sorted(test_queries)[0]
question, gold = test_queries[qid], next(iter(test_qrels[qid]))
retriever = RagRerankHybridRetriever(run.index_dir, similarity_top_k=20, first_stage=run.first_stage)
postprocessor = RagRerankPostprocessor(model=str(run.reranker_dir), top_k=3)
candidates = retriever.retrieve(question)
reranked = postprocessor.postprocess_nodes(candidates, query_str=question)
print(f"Q: {question}  (fusion weight {postprocessor.fusion_alpha})\\n")
first_ids = [n.node.node_id for n in candidates]
for n in reranked:
    mark = " <- the passage the question was written from" if n.node.node_id == gold else ""
    print(f"{n.score:+.3f}  (first-stage rank {first_ids.index(n.node.node_id) + 1:>2})  "
          f"[{n.node.metadata['title']}] {n.node.get_content()[:80]}...{mark}")"""

ENGINE_MD = """\
`open_query_engine` builds the whole recipe -- tuned first stage → adapted reranker → LLM -- and, for the embedded
LLM, starts llama.cpp's server for the duration of the `with` block (and stops it afterwards, also on errors).
The answer cites its sources by number; `format_answer` prints the answer and the numbered sources. A
135M-parameter LLM writes short, sometimes clumsy answers: the point is the retrieval, which you can check
against the sources."""

ENGINE = """\
from rag_rerank.integrations.llamaindex import format_answer, open_query_engine

with open_query_engine(run.index_dir, reranker=str(run.reranker_dir), top_k=3, similarity_top_k=20, llm=LLM,
                       base_url=BASE_URL) as engine:
    response = engine.query(question)
answer = format_answer(response)
(OUT / "answer.md").write_text(f"Q: {question}\\n\\n{answer}\\n", encoding="utf-8")
print(f"Q: {question}\\n\\n{answer}")
print("\\nthe gold passage is among the sources:", gold in [n.node.node_id for n in response.source_nodes])"""

NEXT = """\
## Next

* Your own documents: set `DOCS` (and `OUT`), or run `rag-rerank adapt DOCS --out RUN --budget-minutes 60`.
* A larger, time-boxed run on the samples: `rag-rerank demo` (`make demo`).
* Measure quality properly: `make benchmark-quality` (SQuAD's real questions)."""


def build() -> nbformat.NotebookNode:
    """The notebook, with stable cell ids and no outputs."""
    cells = [
        ("md", INTRO), ("code", PARAMETERS), ("code", SETUP),
        ("md", STEP1), ("code", ADAPT), ("md", MANIFEST_MD), ("code", MANIFEST), ("code", QUESTIONS),
        ("code", ONE_EXAMPLE),
        ("md", STEP2), ("code", REPORT), ("code", PLOTS),
        ("md", STEP3), ("code", POSTPROCESS), ("md", ENGINE_MD), ("code", ENGINE),
        ("md", NEXT),
    ]
    nb = new_notebook(metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    for i, (kind, source) in enumerate(cells):
        text = textwrap.dedent(source).strip("\n")
        cell = new_markdown_cell(text) if kind == "md" else new_code_cell(text)
        cell["id"] = f"cell-{i:02d}"
        if source is PARAMETERS:
            cell["metadata"]["tags"] = ["parameters"]  # papermill-style parameters cell
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render() -> str:
    """The notebook file's exact text."""
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the notebook differs from these cells")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = NOTEBOOK.read_text(encoding="utf-8") if NOTEBOOK.is_file() else ""
        if current != text:
            print(f"{NOTEBOOK} is stale: run python notebooks/make_notebook.py", file=sys.stderr)
            return 1
        print(f"{NOTEBOOK} is up to date")
        return 0
    NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
