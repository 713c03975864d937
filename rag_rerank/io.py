"""Files on disk: atomic files and folders, run locks, BEIR folders, JSONL and TREC run files.

Every write goes to a temporary file (or folder) beside the target and is renamed over it, so a crash never
leaves a half-written file. Temporary files are created with mode ``0o666`` and folders with ``0o777``, so the
kernel applies the process umask as for any other file: nothing here reads or changes the umask. Readers name
the file and line of any malformed record.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rag_rerank.errors import DataError, RagRerankError
from rag_rerank.types import Corpus, Qrels, Queries, Run, ranked

logger = logging.getLogger(__name__)


def _temp_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{secrets.token_hex(4)}")


def _create_temp_file(path: Path) -> tuple[int, Path]:
    """An exclusive new file beside ``path``, mode 0o666 minus the umask (as ``open(path, "w")`` would make)."""
    for _ in range(100):
        tmp = _temp_name(path, "tmp")
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a temporary file", str(path.parent))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``.

    Example:
        >>> with atomic_write("out.json") as f:  # doctest: +SKIP
        ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp_file(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, replaceable: Callable[[Path], bool] | None = None, what: str = "folder"
) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success it replaces ``path`` (rename), else it is removed.

    Args:
        path: the folder to write.
        replaceable: decides whether an existing, non-empty ``path`` may be replaced (default: never).
        what: what the folder holds, for the refusal message.

    Raises:
        DataError: when ``path`` exists and may not be replaced.

    Example:
        >>> with atomic_dir("idx") as tmp:  # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    path = Path(path)
    if path.exists() and (
        not path.is_dir() or (any(path.iterdir()) and not (replaceable is not None and replaceable(path)))
    ):
        raise DataError(f"{path} exists and is not a {what}; refusing to overwrite it. Choose another --out folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, "tmp")
    os.mkdir(tmp, 0o777)  # the umask applies, as for any new folder
    try:
        yield tmp
        old = None
        if path.exists():
            old = _temp_name(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder/.lock`` while a run writes into ``folder``.

    The lock is ``flock`` on an open file, so the kernel releases it when the holder dies, however it dies
    (SIGKILL, a zombie nobody reaps, a container without an init process): a killed run never locks out its own
    resume. The holder's pid is written in the file, for the message a second run gets.

    Raises:
        RagRerankError: when another live process holds the lock.

    Example:
        >>> with run_lock("out/qa"):  # doctest: +SKIP
        ...     pass
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no flock; concurrent runs are the user's business
        logger.warning("no file locking on this platform: do not run two jobs on %s at once", folder)
        yield path
        return
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = path.read_text(encoding="utf-8").strip() or "?"
            except OSError:
                holder = "?"
            raise RagRerankError(
                f"{folder} is in use by another {what} (pid {holder}, lock {path}); wait for it to finish, or use "
                "another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not unlinked by a holder that just finished
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)  # closing releases the flock


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a parse error names the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg}); fix or delete the file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start}); fix or delete the file") from e
    except RecursionError as e:
        raise DataError(f"{path}: JSON nested too deeply; fix or delete the file") from e


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records as JSON Lines, atomically. Returns the number written."""
    n = 0
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def _lines(path: Path, skip_bad_tail: bool = False) -> Iterator[tuple[int, str, bool]]:
    """``(line number, text, is_unterminated_last_line)`` per line, decoded as UTF-8 line by line.

    Raises:
        DataError: naming the file and line of bytes that are not UTF-8 (an unterminated last line
            just ends the iteration when ``skip_bad_tail``).
    """
    raw = path.read_bytes().splitlines(keepends=True)
    for i, b in enumerate(raw, 1):
        torn = i == len(raw) and not b.endswith((b"\n", b"\r"))
        try:
            line = b.decode("utf-8")
        except UnicodeDecodeError as e:
            if skip_bad_tail and torn:
                return
            raise DataError(f"{path}: line {i}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from e
        yield i, line, torn


def _iter_jsonl_numbered(path: Path, skip_bad_tail: bool) -> Iterator[tuple[int, dict]]:
    for i, line, torn in _lines(path, skip_bad_tail):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            if skip_bad_tail and torn:
                return
            why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise DataError(f"{path}: line {i}: invalid JSON ({why})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {i}: expected a JSON object, got {type(obj).__name__}")
        yield i, obj


def iter_jsonl(path: str | os.PathLike, *, skip_bad_tail: bool = False) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file, skipping blank lines.

    Args:
        path: the file.
        skip_bad_tail: tolerate a truncated *last* line (a checkpoint cut by a crash); a bad line
            anywhere else is still an error.

    Raises:
        DataError: naming the file and line of a malformed record (bad JSON, not an object, not UTF-8).
    """
    for _, obj in _iter_jsonl_numbered(Path(path), skip_bad_tail):
        yield obj


def _require(obj: dict, keys: tuple[str, ...], path: Path, line: int) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{path}: line {line}: missing field(s) {missing}; BEIR records need {list(keys)}")


def load_corpus(path: str | os.PathLike) -> Corpus:
    """Load a BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``)."""
    path = Path(path)
    corpus: Corpus = {}
    for i, rec in _iter_jsonl_numbered(path, False):
        _require(rec, ("_id", "text"), path, i)
        corpus[str(rec["_id"])] = {"title": str(rec.get("title") or ""), "text": str(rec["text"])}
    return corpus


def load_queries(path: str | os.PathLike) -> Queries:
    """Load a BEIR ``queries.jsonl`` (``_id``, ``text``)."""
    path = Path(path)
    queries: Queries = {}
    for i, rec in _iter_jsonl_numbered(path, False):
        _require(rec, ("_id", "text"), path, i)
        queries[str(rec["_id"])] = str(rec["text"])
    return queries


def load_qrels(path: str | os.PathLike) -> Qrels:
    """Load a BEIR qrels TSV (``query-id  corpus-id  score``, with or without a header)."""
    path = Path(path)
    qrels: Qrels = {}
    # Split on tabs, unquoted, as save_qrels writes them (csv quoting would merge lines at a stray '"').
    for i, line, _ in _lines(path):
        row = line.rstrip("\r\n").split("\t")
        if not line.strip() or (i == 1 and row[0] in ("query-id", "query_id", "qid")):
            continue
        if len(row) < 3:
            raise DataError(f"{path}: line {i}: expected 3 tab-separated columns, got {len(row)}")
        try:
            rel = int(float(row[2]))
        except (ValueError, OverflowError) as e:
            raise DataError(f"{path}: line {i}: relevance {row[2]!r} is not a finite number") from e
        qrels.setdefault(row[0], {})[row[1]] = rel
    return qrels


def load_beir(folder: str | os.PathLike, split: str = "test") -> tuple[Corpus, Queries, Qrels]:
    """Load a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``.

    Only the queries that have qrels in ``split`` are returned.
    """
    folder = Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / name).is_file():
            raise DataError(f"{folder}: missing {name}; expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    corpus = load_corpus(folder / "corpus.jsonl")
    qrels = load_qrels(folder / "qrels" / f"{split}.tsv")
    queries = {q: t for q, t in load_queries(folder / "queries.jsonl").items() if q in qrels}
    return corpus, queries, qrels


def save_corpus(path: str | os.PathLike, corpus: Corpus, extra: dict[str, dict] | None = None) -> int:
    """Write a BEIR ``corpus.jsonl``; ``extra[doc_id]`` adds fields (e.g. ``metadata``)."""
    extra = extra or {}
    return write_jsonl(
        path,
        ({"_id": d, "title": v.get("title", ""), "text": v["text"], **extra.get(d, {})} for d, v in corpus.items()),
    )


def save_queries(path: str | os.PathLike, queries: Queries, extra: dict[str, dict] | None = None) -> int:
    """Write a BEIR ``queries.jsonl``."""
    extra = extra or {}
    return write_jsonl(path, ({"_id": q, "text": t, **extra.get(q, {})} for q, t in queries.items()))


def save_qrels(path: str | os.PathLike, qrels: Qrels) -> None:
    """Write a BEIR qrels TSV with its header."""
    with atomic_write(path) as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in qrels:
            for d, rel in qrels[q].items():
                f.write(f"{q}\t{d}\t{rel}\n")


def save_run(path: str | os.PathLike, run: Run, tag: str = "rag-rerank", top_k: int | None = None) -> None:
    """Write a TREC run file: ``qid Q0 docid rank score tag``, ranked by ``(-score, doc_id)``."""
    with atomic_write(path) as f:
        for q in run:
            for rank, (d, s) in enumerate(ranked(run[q], top_k), 1):
                f.write(f"{q} Q0 {d} {rank} {s:.6f} {tag}\n")


def load_run(path: str | os.PathLike) -> Run:
    """Read a TREC run file into a ``Run``."""
    path = Path(path)
    run: Run = {}
    for i, line, _ in _lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise DataError(f"{path}: line {i}: expected 'qid Q0 docid rank score [tag]'")
        try:
            run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
        except ValueError as e:
            raise DataError(f"{path}: line {i}: score {parts[4]!r} is not a number") from e
    return run


def export_documents(corpus: Corpus, out_dir: str | os.PathLike) -> int:
    """Write each record of a BEIR corpus as a text file ``out_dir/<id>/<title>.txt`` (idempotent).

    Turns a BEIR corpus into the folder of documents that :func:`rag_rerank.create_qa_dataset` and
    ``rag-rerank adapt`` read: the loader takes each title from the file name. Files whose text is already
    there are not rewritten. Returns the number of documents.

    Example:
        >>> export_documents({"d1": {"title": "Paris", "text": "Paris is in France."}}, "docs")  # doctest: +SKIP
        1
    """
    out = Path(out_dir)
    n = 0
    for doc_id in sorted(corpus):
        doc = corpus[doc_id]
        name = (doc.get("title") or doc_id).replace("/", "_").replace("\\", "_")[:120] + ".txt"
        path = out / doc_id / name
        if not path.is_file() or path.read_text(encoding="utf-8") != doc["text"]:
            with atomic_write(path) as f:
                f.write(doc["text"])
        n += 1
    return n
