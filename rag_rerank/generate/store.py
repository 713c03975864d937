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


def split_documents(doc_ids: Sequence[str], ratios: Sequence[float], seed: int) -> dict[str, str]:
    """Assign documents to train/validation/test deterministically; train is never empty.

    Shares use the largest-remainder method over documents ordered by a seeded hash.

    Example:
        >>> sorted(split_documents(["a", "b"], (0.8, 0.1, 0.1), 0).values())
        ['train', 'train']
    """
    docs = sorted(set(doc_ids), key=lambda d: (content_id(str(seed), d), d))
    total = sum(ratios)
    exact = [len(docs) * r / total for r in ratios]
    sizes = [int(x) for x in exact]
    for i in sorted(range(3), key=lambda i: (-(exact[i] - sizes[i]), i))[: len(docs) - sum(sizes)]:
        sizes[i] += 1
    if docs and sizes[0] == 0:
        j = max(range(1, 3), key=lambda i: sizes[i])
        sizes[j] -= 1
        sizes[0] += 1
    out, k = {}, 0
    for name, size in zip(SPLITS, sizes, strict=True):
        for d in docs[k:k + size]:
            out[d] = name
        k += size
    return out


def write_outputs(
    out: Path, *, all_chunks: Sequence[Chunk], chunks: Sequence[Chunk], records: dict[str, dict], n: int,
    seed: int, split_ratios: Sequence[float], filter_config: FilterConfig, manifest_base: dict[str, Any],
    timings: dict[str, float], requests_this_run: int,
) -> QADatasetSummary:
    """Parse + filter every checkpointed answer, split by document, and write all files atomically."""
    seen: set[str] = set()
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
        candidates = [q for t in rec.get("texts", []) for q in parse_questions(t)]
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
    doc_split = split_documents([c.doc_id for c in chunks], split_ratios, seed)
    for r in rows:
        r["split"] = doc_split[r["doc_id"]]
    qrels = {s: {r["query_id"]: {r["chunk_id"]: 1} for r in rows if r["split"] == s} for s in SPLITS}
    for s in SPLITS:
        if not qrels[s]:
            logger.warning("split %r has no questions (too few documents for split_ratios=%s)", s, split_ratios)

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
        "documents_per_split": {s: sum(1 for v in doc_split.values() if v == s) for s in SPLITS},
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
