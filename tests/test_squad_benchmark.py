"""The headline chain (pipelines/squad_benchmark.py --quick): embedded LLM -> bi-encoder -> reranker -> report.

Checks the chain runs end to end on a small SQuAD slice and writes the documented result shape; the scores
of so small a run mean nothing and are not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_headline_chain(squad_beir: Path, tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    out = tmp_path / "headline.json"
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "squad_benchmark.py"), "--quick", "--data",
                           str(squad_beir), "--work", str(tmp_path / "work"), "--out", str(out),
                           "--n-resamples", "300"], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["queries"] == 40 and "squad_benchmark.py --quick" in res["command"]
    alpha = res["fusion"]["alpha"]
    fused = f"hybrid+finetuned@{alpha:g}"
    assert res["headline_system"] == fused
    assert {"bm25", "dense", "hybrid", "hybrid+finetuned", fused} <= set(res["systems"])
    for name in ("hybrid+finetuned_vs_hybrid", f"{fused}_vs_hybrid"):
        d = res["delta"][name]
        assert {"mrr@10", "ndcg@10", "recall@100", "ci95", "p"} <= set(d)
        assert d["ci95"][0] <= d["mrr@10"] <= d["ci95"][1]
    assert res["data"]["questions"] > 0 and res["synthetic_test"]["queries"] > 0
    assert (tmp_path / "work" / "reranker" / "fusion.json").is_file()
    # a rerun resumes: every stage is found done, and the same numbers come out
    again = subprocess.run([sys.executable, str(REPO / "pipelines" / "squad_benchmark.py"), "--quick", "--data",
                            str(squad_beir), "--work", str(tmp_path / "work"), "--out", str(out),
                            "--n-resamples", "300"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(out.read_text())["systems"] == res["systems"]
    curve = res["validation_curve"]
    assert [r["steps"] for r in curve] == [3.0, 6.0] and all(0 <= r["MRR@10"] <= 1 for r in curve)

    # the ablation reads the same work folder: one row per kept checkpoint, exactly one of them shipped
    abl = tmp_path / "ablation.json"
    cmd = [sys.executable, str(REPO / "pipelines" / "squad_ablation.py"), "--model",
           f"quick={tmp_path / 'work' / 'reranker'}", "--work", str(tmp_path / "work"), "--data", str(squad_beir),
           "--real-queries", "12", "--val-queries", "8", "--top-k", "5", "--n-resamples", "200", "--out", str(abl)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(abl.read_text())["rows"]
    assert [r["id"] for r in rows] == ["quick@3", "quick@6"] and sum(r["shipped"] for r in rows) == 1
    for r in rows:
        a = r["synthetic_val"]["chosen_alpha"]
        fused_real = r["real"]["systems"][f"fused@{a:g}"]["mrr@10"]
        assert fused_real == pytest.approx(r["real"]["oracle_mrr@10_by_alpha"][f"{a:g}"])
        assert r["real"]["oracle_mrr@10_by_alpha"]["0"] == pytest.approx(r["real"]["systems"]["hybrid"]["mrr@10"])
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=600).returncode == 0
    assert json.loads(abl.read_text())["rows"] == rows


def _stsb_as_beir(stsb: Path, out: Path) -> Path:
    """A second, different corpus in BEIR form: STS-b dev sentences (news, captions, forums; no titles).

    Queries are the first sentences of pairs that humans scored >= 4 (near paraphrases); the relevant document is
    the pair's second sentence; the corpus is every distinct second sentence.
    """
    docs: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: list[tuple[str, str]] = []
    for line in (stsb / "sts-dev.csv").read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) < 7:
            continue
        score, s1, s2 = float(cols[4]), cols[5].strip(), cols[6].strip()
        doc_id = docs.setdefault(s2, f"sts-{len(docs)}")
        if score >= 4.0 and s1 not in queries.values():
            qid = f"q{len(queries)}"
            queries[qid] = s1
            qrels.append((qid, doc_id))
    out.mkdir(parents=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for t, i in docs.items()))
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (out / "qrels").mkdir()
    rows = "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return out


@pytest.mark.slow
def test_quick_chain_runs_unchanged_on_a_second_corpus(tmp_path: Path) -> None:
    """Issue 6's generalisation: the same command on a different BEIR folder (STS-b sentences) needs no change."""
    from conftest import STSB

    if not (STSB / "sts-dev.csv").is_file():
        pytest.skip(f"STS-b not found at {STSB}")
    pytest.importorskip("xllamacpp")
    beir = _stsb_as_beir(STSB, tmp_path / "stsb-beir")
    out = tmp_path / "stsb.json"
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "squad_benchmark.py"), "--quick", "--data",
                           str(beir), "--work", str(tmp_path / "work"), "--out", str(out), "--no-bi-encoder",
                           "--n-resamples", "200"], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["queries"] == 40
    assert {"bm25", "dense", "hybrid", "hybrid+finetuned"} <= set(res["systems"])
    # the documents really are the STS sentences (written as files, one per document, titled by id)
    assert len(list((tmp_path / "work" / "docs").rglob("*.txt"))) >= 40
