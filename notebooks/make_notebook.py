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
# rag-rerank end to end: your documents → a fine-tuned reranker → cited answers

This notebook adapts a reranker to a folder of documents with **no human labels**, on the embedded, offline
defaults:

1. **Synthetic questions.** The embedded SmolLM2 (llama.cpp) writes questions for chunks of `sample_docs/`; the
   questions are filtered and split *by document* into train / validation / test.
2. **Index, fine-tune, evaluate.** A hybrid first stage (BM25 + MiniLM/FAISS) retrieves candidates; hard
   negatives are mined from it; `embedded:minilm-ce` is fine-tuned for a few dozen steps; the synthetic test
   split (held-out documents) compares the first stage with the reranked order.
3. **Answer with sources.** The fine-tuned model plugs into a LlamaIndex query engine: hybrid retriever →
   `RagRerankPostprocessor` → SmolLM2, which answers citing numbered sources.

It runs in a few minutes on an idle 2-core CPU. Everything is written under one run folder (default
`runs/notebook` in the repository, or `$RAG_RERANK_NOTEBOOK_OUT`); a rerun reuses what is there (LLM answers,
index, model), so delete the folder to start over. The same chain is the `rag-rerank demo` command.

> **Read the numbers as a demo of the mechanics, not of quality.** A short CPU fine-tune of a small cross-encoder
> on a few dozen questions written by a 135M-parameter LLM, scored on a handful of held-out questions, has
> confidence intervals wider than any effect. The headline quality benchmark (SQuAD, hundreds of queries,
> paired confidence intervals) is `make benchmark-quality`."""

PARAMETERS = """\
# Settings: small on purpose, so the whole notebook runs in minutes on a CPU.
MAX_CHUNKS = 12  # chunks to write questions for (a deterministic subset of the documents)
QUESTIONS_PER_CHUNK = 2
TRAIN_STEPS = 40  # reranker optimiser steps
MAX_LENGTH = 160  # tokens per (question, passage) pair during training
SEED = 0
LLM = "embedded"  # or "openai:MODEL" together with BASE_URL (any OpenAI-compatible server)
BASE_URL = None
DOCS = None  # None: the repository's sample_docs/
OUT = None  # None: $RAG_RERANK_NOTEBOOK_OUT, else runs/notebook in the repository"""

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
logging.getLogger("rag_rerank").setLevel(logging.INFO)

import rag_rerank  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()  # no weight-loading reports
transformers.logging.disable_progress_bar()


def find_repo() -> Path:
    """The folder holding sample_docs/: the working directory, one of its parents, or the package's checkout."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents, Path(rag_rerank.__file__).resolve().parents[1]):
        if (folder / "sample_docs").is_dir():
            return folder
    raise FileNotFoundError("sample_docs/ not found: open this notebook from the rag-rerank repository, or set DOCS")


REPO = find_repo()
DOCS = Path(DOCS or REPO / "sample_docs")
OUT = Path(OUT or os.environ.get("RAG_RERANK_NOTEBOOK_OUT") or REPO / "runs" / "notebook")
OUT.mkdir(parents=True, exist_ok=True)
dataset_dir, index_dir, model_dir, report_dir = OUT / "dataset", OUT / "index", OUT / "reranker", OUT / "report"
print(f"rag-rerank {rag_rerank.__version__}\\ndocuments: {DOCS}\\noutputs:   {OUT}")'''

STEP1 = """\
## 1. Synthetic questions from your documents

`create_qa_dataset` chunks every document (256 tokens of the reranker's tokenizer), asks the LLM for
`QUESTIONS_PER_CHUNK` questions per selected chunk, and keeps only questions that pass the filters (a question
mark, a sensible length, on-topic for their chunk, not a duplicate). Documents, not questions, are split into
train / validation / test, so the test questions come from documents the reranker never sees in training.
Every raw LLM answer is checkpointed: a rerun asks nothing it already has."""

GENERATE = """\
from rag_rerank.qa_generation import create_qa_dataset, load_qa_dataset

summary = create_qa_dataset(DOCS, dataset_dir, llm=LLM, base_url=BASE_URL, questions_per_chunk=QUESTIONS_PER_CHUNK,
                            max_chunks=MAX_CHUNKS, seed=SEED)
print(f"{summary.n_questions} questions from {summary.n_chunks} chunks of {summary.n_documents} documents; "
      f"{summary.requests_this_run} LLM requests this run, {len(summary.failed_chunks)} chunk(s) without a question")"""

MANIFEST_MD = """\
`manifest.json` records what happened: how many questions were asked for, returned and kept, why the others were
dropped, and how many landed in each split (plus the LLM, the prompt hash and every setting)."""

MANIFEST = """\
data = load_qa_dataset(dataset_dir)
counts = data.manifest["counts"]
print(json.dumps({k: counts[k] for k in ("documents", "chunks_total", "chunks_selected", "asked", "returned", "kept",
                                         "per_split", "documents_per_split", "dropped_by_reason")}, indent=2))"""

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
## 2. Index, fine-tune (short), evaluate

* **Index**: BM25 and `embedded:minilm` embeddings in FAISS over *all* chunks, fused (hybrid). This is the first
  stage the reranker reorders.
* **Fine-tune**: for each training question, hard negatives are mined from the hybrid candidates (with guards
  against passages that also answer it), and `embedded:minilm-ce` is trained with a listwise loss for
  `TRAIN_STEPS` steps. The validation split is scored before and after; a sanity gate flags a collapsed model.
* **Evaluate**: on the test split, the hybrid top 20 is reranked and compared with every first stage on the same
  queries, with bootstrap confidence intervals. Positives are never injected: the hybrid recall@20 is the ceiling
  the reranker cannot exceed."""

INDEX = """\
from rag_rerank.retrieval import build_index, load_index

index = load_index(index_dir) if (index_dir / "config.json").is_file() else build_index(data.corpus, index_dir)
print(f"hybrid index over {len(index.corpus)} chunks in {index_dir}")"""

FINETUNE = """\
from rag_rerank.finetune import finetune

training_json = OUT / "training.json"
if (model_dir / "config.json").is_file() and training_json.is_file():
    training = json.loads(training_json.read_text())
    print(f"reusing {model_dir} (delete it to retrain)")
else:
    result = finetune(dataset_dir, model_dir, index_dir=index_dir, max_steps=TRAIN_STEPS, max_length=MAX_LENGTH,
                      sanity_gate="warn", command="notebooks/end_to_end.ipynb")
    training = {"verdict": result.verdict, "steps": result.steps, "wall_time_s": round(result.wall_time_s, 1),
                "first_stage": result.first_stage, "eval_before": result.eval_before,
                "eval_after": result.eval_after, "train_loss": result.train_loss}
    training_json.write_text(json.dumps(training, indent=2))
print(training["verdict"])


def by_metric(scores: dict) -> dict:
    return {name.rsplit("_", 1)[-1]: value for name, value in scores.items()}  # "val_base_mrr@10" -> "mrr@10"


pd.DataFrame({"hybrid first stage": by_metric(training["first_stage"]),
              "reranker before": by_metric(training["eval_before"]),
              "reranker after": by_metric(training["eval_after"])}).round(3).rename_axis("validation split")"""

EVALUATE = """\
from IPython.display import Image, Markdown, display

from rag_rerank.report import evaluate_systems, markdown_table, write_report

split = "test" if data.qrels["test"] else "validation"  # tiny runs can leave the test split empty
corpus, queries, qrels = data.split(split)
report = evaluate_systems(corpus, queries, qrels, index=index, rerankers={"finetuned": model_dir},
                          n_resamples=2000, seed=SEED)
paths = write_report(report, report_dir)
print(f"{report['queries']} {split} questions; ceiling (hybrid recall@20): {report['ceiling']['recall@20']:.3f}; "
      f"report: {paths['markdown']}")
display(Markdown(markdown_table(report)))"""

PLOT_MD = """\
First stage against reranked, from the same report (`metrics.png`; the error bars are 95% bootstrap intervals),
and where the gold passage ended up in each ranking (`gold_rank_hist.png`)."""

PLOTS = """\
display(Image(filename=str(paths["metrics_png"])))
display(Image(filename=str(paths["gold_rank_png"])))"""

CAVEAT = """\
**How to read this.** `embedded:minilm-ce` is MiniLM's encoder with a new, random scoring head, and here it
learns from a dozen or two training questions for 40 steps: it memorises them and does not generalise, so expect
the verdict DID NOT HELP or COLLAPSED and `hybrid+finetuned` *below* the hybrid first stage. The sanity gate is
set to `warn`, so the notebook carries on and shows every step (the default, `stop`, ends training early and says
so). With a handful of test questions, one question moves MRR@10 by a large step and the intervals span most of
the scale. What the run does show is that every piece works on your own documents, offline: questions, splits,
mining, training with a before/after check, and a report that puts the reranker next to its first stage and its
ceiling. For a real measure of quality use more chunks (`MAX_CHUNKS = None` asks for all of them, best with a
faster LLM via `LLM = "openai:..."`), more steps, and the SQuAD benchmark: `make benchmark-quality`."""

STEP3 = """\
## 3. Plug the reranker into LlamaIndex

`RagRerankPostprocessor` is a LlamaIndex node postprocessor: put it after any retriever. Here it reorders the
top 20 hybrid candidates (from `RagRerankHybridRetriever`) for a held-out test question and keeps 3. Scores are
sigmoid-normalised reranker scores; the hybrid rank shows how far the reranker moved each passage (a reranker from
this short run can move the wrong ones up, as above)."""

POSTPROCESS = """\
from rag_rerank.integrations.llamaindex import RagRerankHybridRetriever, RagRerankPostprocessor

qid = sorted(queries)[0]
question, gold = queries[qid], next(iter(qrels[qid]))
retriever = RagRerankHybridRetriever(index, similarity_top_k=20)
postprocessor = RagRerankPostprocessor(model=str(model_dir), top_n=3)
candidates = retriever.retrieve(question)
reranked = postprocessor.postprocess_nodes(candidates, query_str=question)
print(f"Q: {question}\\n")
first_ids = [n.node.node_id for n in candidates]
for n in reranked:
    mark = " <- the passage the question was written from" if n.node.node_id == gold else ""
    print(f"{n.score:.3f}  (hybrid rank {first_ids.index(n.node.node_id) + 1:>2})  [{n.node.metadata['title']}] "
          f"{n.node.get_content()[:90]}...{mark}")"""

ENGINE_MD = """\
`open_query_engine` builds the whole recipe -- hybrid retriever → fine-tuned reranker → LLM -- and, for the
embedded LLM, starts llama.cpp's server for the duration of the `with` block (and stops it afterwards, also on
errors). The answer cites its sources by number; `format_answer` prints the answer and the numbered sources. A
135M-parameter LLM writes short, sometimes clumsy answers: the point is the retrieval, which you can check
against the sources."""

ENGINE = """\
from rag_rerank.integrations.llamaindex import format_answer, open_query_engine

with open_query_engine(index, reranker=str(model_dir), top_n=3, similarity_top_k=20, llm=LLM,
                       base_url=BASE_URL) as engine:
    response = engine.query(question)
answer = format_answer(response)
(OUT / "answer.md").write_text(f"Q: {question}\\n\\n{answer}\\n", encoding="utf-8")
print(f"Q: {question}\\n\\n{answer}")
print("\\nthe gold passage is among the sources:", gold in [n.node.node_id for n in response.source_nodes])"""

NEXT = """\
## Next

* Your own documents: set `DOCS` (and `OUT`) in the settings cell, or run `rag-rerank demo --docs DIR --out DIR`.
  The stages are also separate commands: `rag-rerank generate | index | mine | train | evaluate`.
* Use the model anywhere LlamaIndex takes a node postprocessor:
  `RagRerankPostprocessor(model="runs/notebook/reranker", top_n=5)`.
* Measure quality properly: `make benchmark-quality`."""


def build() -> nbformat.NotebookNode:
    """The notebook, with stable cell ids and no outputs."""
    cells = [
        ("md", INTRO), ("code", PARAMETERS), ("code", SETUP),
        ("md", STEP1), ("code", GENERATE), ("md", MANIFEST_MD), ("code", MANIFEST), ("code", QUESTIONS),
        ("code", ONE_EXAMPLE),
        ("md", STEP2), ("code", INDEX), ("code", FINETUNE), ("code", EVALUATE), ("md", PLOT_MD), ("code", PLOTS),
        ("md", CAVEAT),
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
