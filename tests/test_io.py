"""Files: atomic writes, BEIR/JSONL/TREC round trips, and errors that name the file and line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag_rerank.errors import DataError, RagRerankError
from rag_rerank.io import (
    atomic_write,
    iter_jsonl,
    load_beir,
    load_qrels,
    load_run,
    read_json,
    run_lock,
    save_corpus,
    save_qrels,
    save_queries,
    save_run,
    write_json,
    write_jsonl,
)
from rag_rerank.types import content_id, ranked


def test_atomic_write_leaves_old_file_intact_on_error(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write('{"v": 2, "partial":')
            raise RuntimeError("crash mid-write")
    assert read_json(target) == {"v": 1}
    assert os.listdir(tmp_path) == ["x.json"]  # no temp file left behind


def test_jsonl_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3"):
        list(iter_jsonl(p))


def test_jsonl_torn_last_line_is_tolerated_only_when_asked(tmp_path):
    p = tmp_path / "ckpt.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert [r["a"] for r in iter_jsonl(p, skip_bad_tail=True)] == [1, 2]
    with pytest.raises(DataError, match="line 3"):
        list(iter_jsonl(p))


def test_jsonl_non_object_line_is_an_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="expected a JSON object"):
        list(iter_jsonl(p))


def test_beir_round_trip(tmp_path):
    corpus = {"d1": {"title": "T1", "text": "alpha"}, "d2": {"title": "", "text": "béta ünïcode"}}
    queries = {"q1": "what is alpha?", "q2": "unused"}
    qrels = {"q1": {"d1": 1}}
    save_corpus(tmp_path / "corpus.jsonl", corpus)
    save_queries(tmp_path / "queries.jsonl", queries)
    save_qrels(tmp_path / "qrels" / "test.tsv", qrels)
    c, q, r = load_beir(tmp_path)
    assert c == corpus
    assert q == {"q1": "what is alpha?"}  # only queries judged in the split
    assert r == qrels


def test_beir_missing_file_names_it(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d", "text": "x"}])
    with pytest.raises(DataError, match="queries.jsonl"):
        load_beir(tmp_path)


def test_corpus_record_without_id_is_an_error(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d", "text": "x"}, {"text": "no id"}])
    from rag_rerank.io import load_corpus

    with pytest.raises(DataError, match=r"line 2: missing field\(s\) \['_id'\]"):
        load_corpus(tmp_path / "corpus.jsonl")


def test_qrels_bad_relevance_names_line(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\thigh\n")
    with pytest.raises(DataError, match="line 3"):
        load_qrels(p)


def test_run_file_round_trip_and_deterministic_ties(tmp_path):
    run = {"q1": {"b": 1.0, "a": 1.0, "c": 2.0}, "q2": {"x": 0.5}}
    save_run(tmp_path / "run.trec", run, tag="t")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[:3] == ["q1 Q0 c 1 2.000000 t", "q1 Q0 a 2 1.000000 t", "q1 Q0 b 3 1.000000 t"]
    assert load_run(tmp_path / "run.trec") == run


def test_ranked_sorts_by_score_then_id():
    assert ranked({"b": 1.0, "a": 1.0, "c": 3.0}) == [("c", 3.0), ("a", 1.0), ("b", 1.0)]
    assert ranked({"b": 1.0, "a": 1.0}, top_k=1) == [("a", 1.0)]


def test_content_id_is_stable_and_separates_parts():
    assert content_id("ab", "c") == content_id("ab", "c")
    assert content_id("ab", "c") != content_id("a", "bc")
    assert content_id("x", prefix="c").startswith("c") and len(content_id("x", prefix="c")) == 17


def test_atomic_write_gives_normal_permissions(tmp_path):
    write_json(tmp_path / "x.json", {})
    mode = (tmp_path / "x.json").stat().st_mode & 0o777
    assert mode & 0o044  # readable by group/others under a normal umask, not mkstemp's 0600


_HOLDER = """
import sys, time
from rag_rerank.io import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold_lock(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_run_lock_refuses_a_live_holder_naming_its_pid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        with pytest.raises(RagRerankError, match=f"pid {holder.pid}"), run_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out) as path:  # released by the kernel when the holder died
        assert path.read_text() == str(os.getpid())
    assert not (out / ".lock").exists()


def test_run_lock_is_free_at_once_after_sigkill_even_while_the_holder_is_an_unreaped_zombie(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = _hold_lock(out)
    os.kill(holder.pid, signal.SIGKILL)
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{holder.pid}/stat").read_text().split(")")[1].split()[0] != "Z":  # not reaped: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(holder.pid, 0)  # a pid-liveness check still sees the zombie as alive...
        with run_lock(out):  # ...but the lock went with the process
            assert (out / ".lock").read_text() == str(os.getpid())
    finally:
        holder.wait()
