"""The QA dataset on disk: output lock, per-chunk checkpoint, splits by document, final files, loading.

Layout of ``OUT/`` (written by :func:`rag_rerank.generate.dataset.create_qa_dataset`):

- ``corpus.jsonl``: every chunk, ``{_id, title, text, doc_id, source, position, start_char, n_tokens}``;
- ``queries.jsonl``: ``{_id, text, chunk_id, doc_id, split}``;
- ``qrels/{train,validation,test}.tsv``: split by document;
- ``hf_dataset/``: a ``datasets.DatasetDict`` (``query_id, question, chunk_id, doc_id, positive``);
- ``llamaindex_qa.json``: LlamaIndex ``EmbeddingQAFinetuneDataset`` (``queries, corpus, relevant_docs``);
- ``manifest.json``: LLM, prompt hash, settings, counts, usage, timings, ``failed_chunks``, input hashes;
- ``checkpoint.jsonl``: one raw LLM result per chunk, appended as it arrives (the resume cache).

Example:
    >>> ds = load_qa_dataset("out/qa")  # doctest: +SKIP
    >>> len(ds.queries), sorted(ds.qrels)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_rerank.errors import DataError
from rag_rerank.generate.questions import FilterConfig, filter_questions, parse_questions
from rag_rerank.io import (
    iter_jsonl,
    load_corpus,
    load_qrels,
    load_queries,
    read_json,
    save_corpus,
    save_qrels,
    save_queries,
    write_json,
)
from rag_rerank.types import Chunk, Corpus, Qrels, Queries, content_id

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.jsonl"
MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")
NO_QUESTION = "no usable question"  # the failure reason of a chunk the LLM answered without one


@dataclass(frozen=True)
class QADatasetSummary:
    """What a :func:`create_qa_dataset` run produced (also in ``manifest.json``)."""

    out_dir: str
    n_chunks: int
    n_questions: int
    n_documents: int
    counts: dict[str, Any] = field(default_factory=dict)
    failed_chunks: tuple[tuple[str, str], ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    requests_this_run: int = 0
    no_op: bool = False

    @property
    def ok(self) -> bool:
        """True when every selected chunk got an answer (no failed chunks)."""
        return not self.failed_chunks


@dataclass(frozen=True)
class QADataset:
    """A generated QA dataset, loaded back: BEIR dicts per split plus chunk metadata."""

    corpus: Corpus
    queries: Queries
    qrels: dict[str, Qrels]
    chunks: dict[str, dict[str, Any]] = field(default_factory=dict)
    query_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> tuple[Corpus, Queries, Qrels]:
        """``(corpus, queries, qrels)`` of one split; the corpus is always the whole corpus."""
        if name not in self.qrels:
            raise DataError(f"unknown split {name!r}; this dataset has {sorted(self.qrels)}")
        qrels = self.qrels[name]
        return self.corpus, {q: t for q, t in self.queries.items() if q in qrels}, qrels


def read_checkpoint(path: Path) -> list[dict[str, Any]]:
    """The checkpoint's records, tolerating a torn last line (a run killed mid-write)."""
    if not path.is_file():
        return []
    return list(iter_jsonl(path, skip_bad_tail=True))


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line, flushed and fsynced; a torn last line is cut off first."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = path.read_bytes()
                f.truncate(data.rfind(b"\n") + 1)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


SPLIT_POLICY = "questions-v2"  # recorded in the manifest settings: a new policy rewrites the splits on a rerun
MIN_SPLIT_QUESTIONS = 50  # validation and test get at least this many questions when the data allows it
MIN_DOCUMENTS_TO_SPLIT_BY = 20  # fewer documents than this: split by blocks of neighbouring chunks instead
BLOCK_CHUNKS = 4  # chunks per block when splitting by chunk


def split_targets(n_questions: int, ratios: Sequence[float]) -> tuple[int, int]:
    """Questions wanted in validation and test: their share of ``ratios``, but at least ``MIN_SPLIT_QUESTIONS`` each
    when there are 5x that many questions (else a fifth each), so a small corpus still gets usable splits.

    Example:
        >>> [split_targets(n, (0.8, 0.1, 0.1)) for n in (3000, 300, 60)]
        [(300, 300), (50, 50), (12, 12)]
    """
    total = sum(ratios)
    floor = min(MIN_SPLIT_QUESTIONS, round(0.2 * n_questions))
    val = max(round(n_questions * ratios[1] / total), floor if ratios[1] > 0 else 0)
    test = max(round(n_questions * ratios[2] / total), floor if ratios[2] > 0 else 0)
    return val, test


def assign_splits(chunks: Sequence[Chunk], questions_per_chunk: dict[str, int], ratios: Sequence[float],
                  seed: int) -> tuple[dict[str, str], str]:
    """``({chunk_id: split}, unit)``: train / validation / test, sized by questions, split by document when there
    are enough documents, else by blocks of neighbouring chunks.

    Units (a document, or ``BLOCK_CHUNKS`` consecutive chunks of one document, so a chunk's neighbours stay in its
    split) are taken in a seeded order: test until it has its target of questions (:func:`split_targets`), then
    validation, then the rest is train. Train is never empty when there is more than one unit with questions.

    Example:
        >>> cs = [Chunk(id=f"c{i}", text="t", doc_id=f"d{i % 3}", source="s", position=i // 3) for i in range(12)]
        >>> split, unit = assign_splits(cs, {c.id: 1 for c in cs}, (0.8, 0.1, 0.1), seed=0)
        >>> unit, sorted(set(split.values()))
        ('chunk-block', ['test', 'train', 'validation'])
    """
    docs = sorted({c.doc_id for c in chunks})
    by_document = len(docs) >= MIN_DOCUMENTS_TO_SPLIT_BY
    units: dict[str, list[Chunk]] = {}
    for c in chunks:
        key = c.doc_id if by_document else f"{c.doc_id}#{c.position // BLOCK_CHUNKS}"
        units.setdefault(key, []).append(c)
    order = sorted(units, key=lambda u: (content_id(str(seed), u), u))
    n_q = {u: sum(questions_per_chunk.get(c.id, 0) for c in cs) for u, cs in units.items()}
    val_target, test_target = split_targets(sum(n_q.values()), ratios)
    with_questions = [u for u in order if n_q[u] > 0]
    out: dict[str, str] = {}
    got = {"test": 0, "validation": 0}
    left = len(with_questions)  # units with questions not yet assigned
    for u in order:
        split = "train"
        spare = left > 1 or n_q[u] == 0  # the last unit with questions always goes to train
        left -= n_q[u] > 0
        for name, target in (("test", test_target), ("validation", val_target)):
            if got[name] < target and spare:
                split = name
                got[name] += n_q[u]
                break
        for c in units[u]:
            out[c.id] = split
    return out, "document" if by_document else "chunk-block"


def write_outputs(
    out: Path, *, all_chunks: Sequence[Chunk], chunks: Sequence[Chunk], records: dict[str, dict], n: int,
    seed: int, split_ratios: Sequence[float], filter_config: FilterConfig, manifest_base: dict[str, Any],
    timings: dict[str, float], requests_this_run: int,
) -> QADatasetSummary:
    """Parse + filter every checkpointed answer, split by document, and write all files atomically."""
    seen: set[str] = set()
    by_line = not filter_config.require_question  # style mode: one query a line, whatever its punctuation
    dropped: Counter[str] = Counter()
    returned = 0
    failed: list[tuple[str, str]] = []
    rows: list[dict[str, Any]] = []
    usage = Counter()
    for c in chunks:
        rec = records.get(c.id)
        if rec is None:
            failed.append((c.id, "no result (interrupted before this chunk was asked)"))
            continue
        usage.update({k: rec.get(k, 0) for k in ("prompt_tokens", "completion_tokens")})
        candidates = [q for t in rec.get("texts", []) for q in parse_questions(t, by_line=by_line)]
        returned += len(candidates)
        if rec.get("status") != "ok":
            failed.append((c.id, str(rec.get("reason", "failed"))))
            dropped.update(filter_questions(candidates, c.text, limit=n, config=filter_config)[1])
            continue
        kept, why = filter_questions(candidates, c.text, limit=n, config=filter_config, seen=seen)
        dropped.update(why)
        for q in kept:
            rows.append({"query_id": content_id(c.id, q, prefix="q"), "question": q, "chunk_id": c.id,
                         "doc_id": c.doc_id, "positive": c.text})
    per_chunk = Counter(r["chunk_id"] for r in rows)
    chunk_split, unit = assign_splits(chunks, per_chunk, split_ratios, seed)
    for r in rows:
        r["split"] = chunk_split[r["chunk_id"]]
    qrels = {s: {r["query_id"]: {r["chunk_id"]: 1} for r in rows if r["split"] == s} for s in SPLITS}
    for s in SPLITS:
        if not qrels[s]:
            logger.warning("split %r has no questions (too few questions for split_ratios=%s)", s, split_ratios)

    save_corpus(out / "corpus.jsonl", {c.id: {"title": c.title, "text": c.text} for c in all_chunks}, extra={
        c.id: {"doc_id": c.doc_id, "source": c.source, "position": c.position, "start_char": c.start_char,
               "n_tokens": c.metadata.get("n_tokens")} for c in all_chunks})
    save_queries(out / "queries.jsonl", {r["query_id"]: r["question"] for r in rows}, extra={
        r["query_id"]: {"chunk_id": r["chunk_id"], "doc_id": r["doc_id"], "split": r["split"]} for r in rows})
    for s in SPLITS:
        save_qrels(out / "qrels" / f"{s}.tsv", qrels[s])
    _save_hf(out / "hf_dataset", rows)
    write_json(out / "llamaindex_qa.json", {
        "queries": {r["query_id"]: r["question"] for r in rows},
        "corpus": {c.id: c.text for c in all_chunks},
        "relevant_docs": {r["query_id"]: [r["chunk_id"]] for r in rows},
        "mode": "text",
    })
    counts = {
        "documents": len({c.doc_id for c in all_chunks}), "chunks_total": len(all_chunks),
        "chunks_selected": len(chunks), "chunks_with_questions": len({r["chunk_id"] for r in rows}),
        "asked": n * len(chunks), "returned": returned, "kept": len(rows),
        "dropped_by_reason": dict(sorted(dropped.items())),
        "per_split": {s: len(qrels[s]) for s in SPLITS},
        "split_unit": unit,
        "documents_per_split": {s: len({c.doc_id for c in chunks if chunk_split[c.id] == s}) for s in SPLITS},
    }
    manifest = {
        **manifest_base, "status": "partial" if failed else "complete", "counts": counts,
        "usage": dict(usage), "timings": {**timings, "requests_this_run": requests_this_run},
        "failed_chunks": [{"chunk_id": cid, "reason": why} for cid, why in failed],
    }
    write_json(out / MANIFEST, manifest)
    return QADatasetSummary(
        out_dir=str(out), n_chunks=len(chunks), n_questions=len(rows), n_documents=counts["documents"],
        counts=counts, failed_chunks=tuple(failed), prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"], seconds=timings.get("total_seconds", 0.0),
        requests_this_run=requests_this_run,
    )


def _save_hf(path: Path, rows: list[dict[str, Any]]) -> None:
    """``DatasetDict.save_to_disk`` into a temp folder, then swapped into place."""
    import datasets

    cols = ("query_id", "question", "chunk_id", "doc_id", "positive")
    features = datasets.Features({c: datasets.Value("string") for c in cols})
    dd = datasets.DatasetDict({
        s: datasets.Dataset.from_dict({c: [r[c] for r in rows if r["split"] == s] for c in cols}, features=features)
        for s in SPLITS
    })
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    from datasets.utils import logging as dlog

    was_enabled = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        dd.save_to_disk(str(tmp), num_shards={s: 1 for s in SPLITS})  # 1 shard: empty splits load back
    finally:
        if was_enabled:
            dlog.enable_progress_bar()
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_qa_dataset(out_dir: str | os.PathLike) -> QADataset:
    """Load a dataset written by ``create_qa_dataset``: corpus, queries, qrels per split, chunk metadata.

    Raises:
        DataError: when ``out_dir`` is not a generated dataset (names the missing file).

    Example:
        >>> ds = load_qa_dataset("out/qa")  # doctest: +SKIP
        >>> corpus, queries, qrels = ds.split("train")  # doctest: +SKIP
    """
    out = Path(out_dir)
    for name in ("corpus.jsonl", "queries.jsonl", *(f"qrels/{s}.tsv" for s in SPLITS)):
        if not (out / name).is_file():
            raise DataError(f"{out}: missing {name}; run `rag-rerank generate DOCS --out {out}` first")
    meta_keys = ("doc_id", "source", "position", "start_char", "n_tokens")
    chunks = {str(r["_id"]): {k: r.get(k) for k in meta_keys} for r in iter_jsonl(out / "corpus.jsonl")}
    query_info = {str(r["_id"]): {k: r.get(k) for k in ("chunk_id", "doc_id", "split")}
                  for r in iter_jsonl(out / "queries.jsonl")}
    manifest = read_json(out / MANIFEST) if (out / MANIFEST).is_file() else {}
    return QADataset(
        corpus=load_corpus(out / "corpus.jsonl"), queries=load_queries(out / "queries.jsonl"),
        qrels={s: load_qrels(out / "qrels" / f"{s}.tsv") for s in SPLITS}, chunks=chunks,
        query_info=query_info, manifest=manifest,
    )
