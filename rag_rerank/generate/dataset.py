"""``create_qa_dataset``: synthetic questions per chunk from an LLM, filtered, split by document, resumable.

Flow: load + chunk a folder (:mod:`rag_rerank.generate.chunking`) -> ask the LLM for N questions per chunk
(one request per chunk; concurrent for remote servers; prompts in :mod:`rag_rerank.generate.prompts`) -> append
each raw answer to ``OUT/checkpoint.jsonl`` as it arrives (flush + fsync) -> parse and filter
(:mod:`rag_rerank.generate.questions`) -> split -> write BEIR files, a ``DatasetDict``, LlamaIndex JSON and
``manifest.json`` atomically (:mod:`rag_rerank.generate.store`).

The checkpoint doubles as the cache: a record is keyed by (LLM model, prompt hash, sampling
settings, chunk id), so a rerun re-asks nothing it already has, a killed run continues where it
stopped, and a rerun retries only the failed chunks. Document text is only ever placed inside the
user message, so it can never change the chat structure.

Example:
    >>> summary = create_qa_dataset("sample_docs", "out/qa", max_chunks=4)  # doctest: +SKIP
    >>> summary.n_questions, summary.failed_chunks  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rag_rerank.errors import ConfigError, LLMError
from rag_rerank.generate.chunking import DEFAULT_TOKENIZER, chunk_documents
from rag_rerank.generate.documents import load_documents
from rag_rerank.generate.llm import LLMClient, open_llm, parse_llm_spec
from rag_rerank.generate.prompts import (
    FEW_SHOT,
    QUESTION_PROMPT,
    STYLE_PROMPT,
    STYLE_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    build_messages,
    check_prompt,
)
from rag_rerank.generate.questions import FilterConfig, filter_questions, parse_questions
from rag_rerank.generate.store import (
    CHECKPOINT,
    MANIFEST,
    NO_QUESTION,
    SPLIT_POLICY,
    QADatasetSummary,
    append_record,
    read_checkpoint,
    write_outputs,
)
from rag_rerank.generate.style import QueryStyle, load_query_examples
from rag_rerank.io import read_json, run_lock
from rag_rerank.types import Chunk, content_id

logger = logging.getLogger(__name__)


def select_chunks(chunks: Sequence[Chunk], max_chunks: int | None, seed: int) -> list[Chunk]:
    """A deterministic subset (by seeded hash of the chunk id), kept in document order."""
    if max_chunks is None or max_chunks >= len(chunks):
        return list(chunks)
    if max_chunks < 1:
        raise ConfigError(f"max_chunks={max_chunks} must be >= 1 (or None for all chunks)")
    chosen = set(sorted((c.id for c in chunks), key=lambda i: content_id(str(seed), i))[:max_chunks])
    return [c for c in chunks if c.id in chosen]


def resolve_style(query_examples: QueryStyle | str | os.PathLike | Sequence[str] | None) -> QueryStyle | None:
    """A :class:`QueryStyle` from a file path, a list of example queries, or one as it is (``None`` stays None)."""
    if query_examples is None or isinstance(query_examples, QueryStyle):
        return query_examples
    if isinstance(query_examples, (str, os.PathLike)):
        return load_query_examples(query_examples)
    return QueryStyle(tuple(" ".join(str(q).split()) for q in query_examples if str(q).strip()))


def _ask(
    llm: LLMClient, chunk: Chunk, n: int, prompt: dict[str, Any], seed: int, rounds: int, sampling: dict[str, Any],
    filter_config: FilterConfig,
) -> dict[str, Any]:
    """Ask for one chunk's questions; re-ask (next seed) when an answer has no usable question."""
    msgs = build_messages(chunk.text, n, title=chunk.title, **prompt)
    by_line = not filter_config.require_question
    rec: dict[str, Any] = {"chunk_id": chunk.id, "texts": [], "prompt_tokens": 0, "completion_tokens": 0,
                           "attempts": 0}
    t0 = time.perf_counter()
    for r in range(rounds):
        try:
            c = llm.complete(msgs, seed=seed + r, **sampling)
        except LLMError as e:
            rec.update(status="failed", reason=str(e).splitlines()[0][:200])
            break
        rec["texts"].append(c.text)
        rec["prompt_tokens"] += c.prompt_tokens
        rec["completion_tokens"] += c.completion_tokens
        rec["attempts"] += c.attempts
        if filter_questions(parse_questions(c.text, by_line=by_line), chunk.text, limit=n, config=filter_config)[0]:
            rec.update(status="ok")
            break
    else:
        preview = " ".join(rec["texts"][-1].split())[:60] if rec["texts"] else ""
        rec.update(status="failed", reason=f"{NO_QUESTION} in {rounds} answer(s) (last: {preview!r})")
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


@contextlib.contextmanager
def _client(llm: str | LLMClient, base_url: str | None, concurrency: int, **settings: Any) -> Iterator[LLMClient]:
    if isinstance(llm, LLMClient):
        yield llm
        return
    kind, _ = parse_llm_spec(llm)
    parallel = concurrency if kind == "embedded" else 1
    if kind == "embedded" and concurrency > 1:
        logger.warning("embedded LLM with %d slots: generation is no longer reproducible for a seed", parallel)
    with open_llm(llm, base_url=base_url, parallel=parallel, **settings) as client:
        yield client


def create_qa_dataset(
    docs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    llm: str | LLMClient = "embedded",
    base_url: str | None = None,
    questions_per_chunk: int = 2,
    concurrency: int | None = None,
    prompt: str | None = None,
    seed: int = 0,
    chunk_tokens: int = 256,
    chunk_overlap: int = 0,
    tokenizer: str = DEFAULT_TOKENIZER,
    max_chunks: int | None = None,
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    temperature: float = 0.2,
    max_tokens: int | None = None,
    request_timeout: float = 60.0,
    max_retries: int = 4,
    rounds: int = 2,
    abort_after_failures: int = 25,
    filter_config: FilterConfig | None = None,
    show_progress_bar: bool | None = None,
    retry_failed: bool = True,
    query_examples: QueryStyle | str | os.PathLike | Sequence[str] | None = None,
) -> QADatasetSummary:
    """Create a synthetic QA dataset from a folder of documents, resumably.

    Args:
        docs_dir: folder of .txt/.md/.html/.pdf files (recursive).
        out_dir: output folder (BEIR files, ``hf_dataset/``, ``llamaindex_qa.json``, ``manifest.json``).
        llm: ``"embedded"``, ``"openai:MODEL"``, a ``.gguf`` path, or an open :class:`LLMClient`.
        base_url: OpenAI-compatible endpoint for ``openai:MODEL``.
        questions_per_chunk: questions asked for (and kept at most) per chunk.
        concurrency: requests in flight; default 1 for the embedded LLM (reproducible), 8 otherwise.
        prompt: user-message template with ``{chunk}`` and optionally ``{n}``, ``{title}`` and, with query
            examples, ``{examples}`` (default :data:`QUESTION_PROMPT`, or :data:`STYLE_PROMPT` with examples).
        seed: sampling seed sent with every request; also seeds the subset and the split.
        chunk_tokens / chunk_overlap / tokenizer: chunking (tokens of the reranker's tokenizer).
        max_chunks: ask for a deterministic subset of this many chunks (demos, CI).
        split_ratios: train/validation/test shares of the *questions* (validation and test get at least 50 each
            when the data allows); split by document, or by blocks of neighbouring chunks for a small corpus
            (:func:`rag_rerank.generate.store.assign_splits`; ``manifest.json`` says which).
        temperature / max_tokens / request_timeout / max_retries: LLM request settings; the low default
            temperature kept the most questions with SmolLM2 (see the README); ``max_tokens`` defaults
            to ``40 * questions_per_chunk + 40`` (stops runaway repetition), more with long example queries.
        rounds: answers asked per chunk at most, when an answer has no usable question.
        abort_after_failures: stop asking after this many requests fail in a row (server down; a chunk answered
            without a usable question does not count); the rest are listed as failed and retried by the next run.
        filter_config: question filter bounds.
        show_progress_bar: tqdm bar; ``None`` shows it when there are 10+ chunks to ask.
        retry_failed: ask again for chunks that got no usable question in an earlier run (default).
            ``False`` keeps those as they are and asks only chunks never answered (request errors, aborted
            runs), so a finished dataset stays exactly as it is for the pipelines that trained on it.
        query_examples: 5-50 queries of the kind the user's system receives (a ``.txt``/``.jsonl`` file, a list,
            or a :class:`QueryStyle`): the LLM writes queries in their style and the filters judge by style, not
            WH-words (:mod:`rag_rerank.generate.style`). ``None``: questions, as before.

    Returns:
        A :class:`QADatasetSummary`; ``failed_chunks`` lists chunks with no usable question.

    Raises:
        DataError: no usable documents. RagRerankError: ``out_dir`` is locked by a live run.
        ConfigError: an invalid setting.

    Example:
        >>> s = create_qa_dataset("docs", "out", llm="openai:gpt-4o-mini", max_chunks=50)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    style = resolve_style(query_examples)
    prompt = prompt or (STYLE_PROMPT if style else QUESTION_PROMPT)
    check_prompt(prompt, style=style is not None)
    if questions_per_chunk < 1:
        raise ConfigError(f"questions_per_chunk={questions_per_chunk} must be >= 1")
    if len(split_ratios) != 3 or min(split_ratios) < 0 or split_ratios[0] <= 0:
        raise ConfigError(f"split_ratios={split_ratios} must be 3 non-negative shares with train > 0")
    out = Path(out_dir)
    max_tokens = max_tokens or (style.max_tokens(questions_per_chunk) if style else 40 * questions_per_chunk + 40)
    if style:
        filter_config = style.filter_config(filter_config)
    filter_config = filter_config or FilterConfig()
    system, few_shot = (STYLE_SYSTEM_PROMPT, ()) if style else (SYSTEM_PROMPT, FEW_SHOT)
    prompt_parts = {"prompt": prompt, "system": system, "few_shot": few_shot,
                    "examples": style.prompt_examples() if style else ()}
    if isinstance(llm, LLMClient):
        spec, model, url = "client", llm.settings.model, llm.settings.base_url
    else:
        kind, model = parse_llm_spec(llm)
        spec, url = llm, base_url if kind == "openai" else None
    concurrency = concurrency or (1 if spec != "client" and parse_llm_spec(spec)[0] == "embedded" else 8)
    prompt_hash = content_id(system, prompt, repr(few_shot), *prompt_parts["examples"], length=16)
    gen_key = content_id(model, prompt_hash, str(questions_per_chunk), str(seed), str(temperature),
                         str(max_tokens), str(rounds), length=16)
    settings = {
        "questions_per_chunk": questions_per_chunk, "seed": seed, "chunk_tokens": chunk_tokens,
        "chunk_overlap": chunk_overlap, "tokenizer": tokenizer, "max_chunks": max_chunks,
        "split_ratios": list(split_ratios), "split_policy": SPLIT_POLICY, "temperature": temperature,
        "max_tokens": max_tokens,
        "request_timeout": request_timeout, "max_retries": max_retries, "rounds": rounds,
        "concurrency": concurrency, "filter": asdict(filter_config),
        "query_style": {"source": style.source, "examples": len(style.examples), "sha": style.fingerprint}
        if style else None,
    }
    docs, report = load_documents(docs_dir)  # before the lock: no usable documents leaves no empty OUT behind
    with run_lock(out, "generate run"):
        docs_hash = content_id(*(f"{d.source}\x1e{d.text}" for d in docs), length=32)
        run_key = content_id(gen_key, docs_hash, repr(sorted(settings.items())), length=32)
        done = _finished_manifest(out, run_key, allow_failed=not retry_failed)
        if done is not None:
            logger.info("%s is complete for these inputs and settings; nothing to do", out)
            return done
        all_chunks = chunk_documents(docs, tokenizer=tokenizer, chunk_tokens=chunk_tokens,
                                     chunk_overlap=chunk_overlap, show_progress_bar=show_progress_bar)
        chunks = select_chunks(all_chunks, max_chunks, seed)
        records = {r["chunk_id"]: r for r in read_checkpoint(out / CHECKPOINT) if r.get("key") == gen_key}
        pending = [c for c in chunks if records.get(c.id, {}).get("status") != "ok"
                   and (retry_failed or not _unusable(records.get(c.id, {})))]
        logger.info("%d chunk(s) from %d document(s); %d selected, %d to ask (%d from the checkpoint)",
                    len(all_chunks), len(docs), len(chunks), len(pending), len(chunks) - len(pending))
        t_llm, chunks_seconds = time.perf_counter(), 0.0
        if pending:
            settings_llm = {"seed": seed, "temperature": temperature, "max_tokens": max_tokens,
                            "timeout": request_timeout, "max_retries": max_retries}
            disable = len(pending) < 10 if show_progress_bar is None else not show_progress_bar
            with _client(llm, base_url, concurrency, **settings_llm) as client:
                t_ready = time.perf_counter()  # an embedded LLM server has started: the chunks' time begins
                bar = tqdm(total=len(pending), desc="generating", unit="chunk", disable=disable)
                sampling = {"temperature": temperature, "max_tokens": max_tokens}
                _run_pending(client, pending, records, out, gen_key, questions_per_chunk, prompt_parts, seed,
                             rounds, sampling, filter_config, concurrency, abort_after_failures, bar)
                bar.close()
                chunks_seconds = time.perf_counter() - t_ready
        llm_seconds = time.perf_counter() - t_llm
        summary = write_outputs(
            out, all_chunks=all_chunks, chunks=chunks, records=records, n=questions_per_chunk, seed=seed,
            split_ratios=split_ratios, filter_config=filter_config,
            manifest_base={
                "run_key": run_key,
                "llm": {"spec": spec, "model": model, "base_url": _safe_url(url)},
                "prompt": {"hash": prompt_hash, "system": system, "user": prompt,
                           "few_shot": [list(x) for x in few_shot], "examples": list(prompt_parts["examples"])},
                "settings": settings,
                "inputs": {"docs_dir": str(docs_dir), "documents_sha256": docs_hash,
                           "files": {d.source: content_id(d.text, length=64) for d in docs},
                           "load_report": report.as_dict()},
            },
            timings={"llm_seconds": round(llm_seconds, 3), "chunks_seconds": round(chunks_seconds, 3),
                     "total_seconds": round(time.perf_counter() - t_start, 3)},
            requests_this_run=len(pending),
        )
    return summary


def _run_pending(
    client: LLMClient, pending: list[Chunk], records: dict[str, dict], out: Path, gen_key: str, n: int,
    prompt: dict[str, Any], seed: int, rounds: int, sampling: dict[str, Any], filter_config: FilterConfig,
    concurrency: int, abort_after: int, bar: Any,
) -> None:
    """Ask for every pending chunk; checkpoint each result as it arrives; stop early if the server is gone."""
    streak = 0
    aborted = False
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="qa") as pool:
        futures = {pool.submit(_ask, client, c, n, prompt, seed, rounds, sampling, filter_config): c
                   for c in pending}
        try:
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                rec = {"key": gen_key, **fut.result()}
                records[rec["chunk_id"]] = rec
                append_record(out / CHECKPOINT, rec)
                bar.update(1)
                # only request failures count: a chunk the LLM answered without a usable question means the server
                # is up (retrying known-bad chunks in a row must not look like an outage)
                streak = streak + 1 if rec["status"] != "ok" and not _unusable(rec) else 0
                if streak >= abort_after and not aborted:
                    aborted = True
                    logger.error("%d chunks failed in a row (last: %s); stopping. Rerun to retry them.",
                                 streak, rec.get("reason"))
                    for f in futures:
                        f.cancel()
        finally:
            for f in futures:
                f.cancel()
    for fut, c in futures.items():
        if fut.cancelled() and c.id not in records:
            records[c.id] = {"key": gen_key, "chunk_id": c.id, "status": "failed", "texts": [],
                             "reason": f"not attempted: aborted after {abort_after} consecutive failures"}


def _safe_url(url: str | None) -> str | None:
    """An endpoint without credentials or query string, fit for a manifest."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    host = p.hostname or ""
    netloc = host + (f":{p.port}" if p.port else "")
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def _unusable(record: dict[str, Any]) -> bool:
    """True for a chunk the LLM answered without a usable question (not a request error or an abort)."""
    return record.get("status", "failed") == "failed" and str(record.get("reason", "")).startswith(NO_QUESTION)


def _finished_manifest(out: Path, run_key: str, allow_failed: bool = False) -> QADatasetSummary | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        m = read_json(path)
    except Exception:  # noqa: BLE001 - a damaged manifest just means "rebuild"
        return None
    failed = m.get("failed_chunks") or []
    unusable_only = all(_unusable(f) for f in failed)
    if m.get("run_key") != run_key or m.get("status") not in ("complete", "partial"):
        return None
    if failed and not (allow_failed and unusable_only):
        return None
    c = m.get("counts", {})
    return QADatasetSummary(
        out_dir=str(out), n_chunks=c.get("chunks_selected", 0), n_questions=c.get("kept", 0),
        n_documents=c.get("documents", 0), counts=c, prompt_tokens=m.get("usage", {}).get("prompt_tokens", 0),
        completion_tokens=m.get("usage", {}).get("completion_tokens", 0), seconds=0.0, no_op=True,
        failed_chunks=tuple((f["chunk_id"], f["reason"]) for f in failed),
    )

