"""The headline chain (pipelines/quality_benchmark.py --quick): embedded LLM -> bi-encoder -> reranker -> report.

Checks the chain runs end to end on a small SQuAD slice and writes the documented result shape; the scores
of so small a run mean nothing and are not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rag_rerank.train.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_headline_chain(squad_beir: Path, tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    out = tmp_path / "headline.json"
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "quality_benchmark.py"), "--quick", "--data",
                           str(squad_beir), "--work", str(tmp_path / "work"), "--out", str(out),
                           "--n-resamples", "300"], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["queries"] == 40 and "quality_benchmark.py --quick" in res["command"]
    headline = res["headline_system"]
    assert headline in res["systems"] and next(iter(res["systems"])) == headline  # the shipped system, first
    assert {"bm25", "dense", "hybrid", "first_stage_tuned", "first_stage_tuned+reranker"} <= set(res["systems"])
    for base in ("hybrid", "first_stage_tuned"):
        d = res["delta"][f"{headline}_vs_{base}"]
        assert {"mrr@10", "ndcg@10", "recall@100", "ci95", "p"} <= set(d)
        assert d["ci95"][0] <= d["mrr@10"] <= d["ci95"][1]
    assert res["settings"]["recipe"]["name"] == "default" and res["data"]["kept"] > 0
    assert res["synthetic_test"]["queries"] > 0
    assert (tmp_path / "work" / "default" / "reranker" / "fusion.json").is_file()
    # a rerun resumes: every stage is found done, and the same numbers come out
    again = subprocess.run([sys.executable, str(REPO / "pipelines" / "quality_benchmark.py"), "--quick", "--data",
                            str(squad_beir), "--work", str(tmp_path / "work"), "--out", str(out),
                            "--n-resamples", "300"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(out.read_text())["systems"] == res["systems"]
    assert "done earlier" in again.stderr
    curve = res["validation_curve"]
    assert [r["steps"] for r in curve][-1] == 6.0 and all(0 <= r["MRR@10"] <= 1 for r in curve)

    # the ablation reads the same work folder: one row per kept checkpoint, exactly one of them shipped
    abl = tmp_path / "ablation.json"
    cmd = [sys.executable, str(REPO / "pipelines" / "squad_ablation.py"), "--model",
           f"quick={tmp_path / 'work' / 'default' / 'reranker'}", "--work", str(tmp_path / "work"), "--data",
           str(squad_beir), "--real-queries", "12", "--val-queries", "8", "--top-k", "5", "--n-resamples", "200",
           "--splits", "20", "--out", str(abl)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(abl.read_text())
    rows = result["rows"]
    # the default recipe evaluates (and keeps) only as many checkpoints as its evaluation budget allows: one here
    kept = list((tmp_path / "work" / "default" / "reranker" / "checkpoints").glob("checkpoint-*"))
    assert len(rows) == len(kept) >= 1 and sum(r["shipped"] for r in rows) == 1
    for r in rows:
        a = r["synthetic_val"]["chosen_alpha"]
        fused_real = r["real"]["systems"][f"fused@{a:g}"]["mrr@10"]
        assert fused_real == pytest.approx(r["real"]["oracle_mrr@10_by_alpha"][f"{a:g}"])
        # every alpha rule: its split-half picks (validation only), its pick on all of validation, and the real
        # score of that pick; the row's shipped alpha is the chosen rule's
        rules = r["alpha_rules"]
        default_rule = get_recipe("default").alpha_rule or "best"  # --alpha-rule's default
        assert set(rules) == {"best", "bagged"} and r["synthetic_val"]["rule"] == default_rule
        assert rules[default_rule]["alpha"] == a
        for rule in rules.values():
            assert sum(rule["split_half_picks"].values()) == 20
            assert rule["real_mrr@10"] == pytest.approx(r["real"]["oracle_mrr@10_by_alpha"][f"{rule['alpha']:g}"])
        delta = rules["bagged"]["real_vs_best"]["mrr@10"]["delta"]
        assert delta == pytest.approx(rules["bagged"]["real_mrr@10"] - rules["best"]["real_mrr@10"])
    assert result["rule_choice"]["chosen"] in ("best", "bagged") and result["rule_choice"]["rows"] == len(rows)
    assert result["machine"]["cpu"]  # speed and time figures name their machine
    # --final-only: one row per model folder, and each later row paired with the first on the same questions
    abl2 = tmp_path / "ablation_final.json"
    cmd2 = [*cmd[:-1], str(abl2), "--final-only", "--model", f"checkpoint={kept[0]}", "--alpha-rule", "best"]
    proc = subprocess.run(cmd2, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = json.loads(abl2.read_text())["rows"]
    assert (first["model"], second["model"]) == ("quick", "checkpoint") and first["step"] is None
    for r in (first, second):  # the shipped alpha is the best rule's
        assert r["synthetic_val"]["rule"] == "best"
        assert r["synthetic_val"]["chosen_alpha"] == r["alpha_rules"]["best"]["alpha"]
    fused = [r["real"]["systems"][f"fused@{r['synthetic_val']['chosen_alpha']:g}"]["mrr@10"] for r in (first, second)]
    paired = second["real"]["vs_first_row"]
    assert paired["against"] == "quick" and paired["mrr@10"]["delta"] == pytest.approx(fused[1] - fused[0])
    assert paired["mrr@10"]["ci95"][0] <= paired["mrr@10"]["delta"] <= paired["mrr@10"]["ci95"][1]
    # and on validation, where a choice between rows is made: the shipped systems' fused validation scores
    paired_val = second["synthetic_val"]["vs_first_row"]
    assert paired_val["against"] == "quick" and paired_val["mrr@10"]["delta"] == pytest.approx(
        second["synthetic_val"]["fused_mrr@10"] - first["synthetic_val"]["fused_mrr@10"])
    for r in (first, second):  # why validation shipped that alpha: the pick's gain, and the CI the gate reads
        sv = r["synthetic_val"]
        assert sv["by_alpha"]["0"] == pytest.approx(sv["first_stage_mrr@10"])
        assert sv["gain"] == pytest.approx(sv["by_alpha"][f"{sv['candidate_alpha']:g}"] - sv["by_alpha"]["0"])
        assert (sv["gain_ci95"][0] > 0) == (sv["status"] == "improved")
    # a row reused from an earlier file that lacks those facts gets them from the cached scores, unchanged
    saved = json.loads(abl2.read_text())
    for r in saved["rows"]:
        for k in ("candidate_alpha", "gain", "gain_ci95", "by_alpha"):
            del r["synthetic_val"][k]
    abl2.write_text(json.dumps(saved))
    proc = subprocess.run(cmd2, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(abl2.read_text())
    assert [r["synthetic_val"] for r in again["rows"]] == [first["synthetic_val"], second["synthetic_val"]]
    assert [r["wall_s"] for r in again["rows"]] == [first["wall_s"], second["wall_s"]]  # reused, not recomputed
