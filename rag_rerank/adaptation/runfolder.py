"""The run folder of ``adapt``: its identity (recipe and settings), its lock, the plan and the stages done.

``run.json`` records what the folder was made with. A rerun with the same settings resumes: finished stages are
skipped (``stages.json`` records each one's result and time), an interrupted one starts again (each stage is
itself resumable or cheap). A rerun with other settings is refused with the setting that differs, so nothing
already done is lost or silently mixed with another recipe (a recipe's name and description are not settings).

A stage's time counts its interrupted attempts too: one that ends by an exception (an error, Ctrl-C, or SIGTERM
under the CLI) is recorded in ``interrupted.json`` and added when the stage finishes (``interrupted_s``); only a
process killed outright (SIGKILL, power loss) loses its attempt's time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rag_rerank.errors import DataError, RagRerankError
from rag_rerank.io import read_json, run_lock, write_json

logger = logging.getLogger(__name__)

__all__ = ["RunFolder", "finished_stage", "tuned_first_stage"]


# a recipe's name and description are labels: a recipe renamed or promoted (``next`` became ``default``) with the
# same settings resumes the runs made under its old name
_LABELS = ("recipe.name", "recipe.description")


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if f"{prefix}{key}" in _LABELS:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return out


def _recipe_named(recorded: dict[str, Any] | None) -> str | None:
    """The name of a recipe whose settings are ``recorded`` (a run made before a recipe was changed or renamed)."""
    from rag_rerank.train.recipes import RECIPES

    if not isinstance(recorded, dict):
        return None
    return next((name for name, r in RECIPES.items() if not _differences({"recipe": recorded},
                                                                          {"recipe": r.to_dict()})), None)


def _new_or_seeded(path: Path) -> bool:
    """An empty folder, or one holding only ``dataset/checkpoint.jsonl``: an earlier generation's answers, put there
    to be reused (the generation cache is keyed by LLM, prompt and sampling settings, so only matching answers are)."""
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        return True
    if [p.name for p in entries] != ["dataset"] or not entries[0].is_dir():
        return False
    return [p.name for p in entries[0].iterdir() if not p.name.startswith(".")] == ["checkpoint.jsonl"]


def finished_stage(path: str | os.PathLike, name: str) -> Any:
    """The recorded result of stage ``name`` of the ``adapt`` run folder ``path`` (read only, no lock taken).

    Example:
        >>> finished_stage("runs/mydocs", "mine")  # the training groups it mined  # doctest: +SKIP
        2578

    Raises:
        DataError: naming the folder and the fix, when it is not an ``adapt`` run folder finished through ``name``.
    """
    return _finished_stages(path, name)[name]["result"]


def tuned_first_stage(path: str | os.PathLike, through: str = "first_stage") -> dict[str, Any]:
    """The tuned first stage's fusion settings of the ``adapt`` run folder ``path``, checking in the same read that
    the run is finished through stage ``through`` (e.g. ``"mine"``, for a script that reads its training groups).

    Example:
        >>> tuned_first_stage("runs/mydocs", through="mine")  # doctest: +SKIP
        {'fusion': 'weighted', 'norm': 'zscore', 'weights': [0.5, 0.5]}

    Raises:
        DataError: as :func:`finished_stage`.
    """
    return _finished_stages(path, through)["first_stage"]["result"]["settings"]


def _finished_stages(path: str | os.PathLike, name: str) -> dict[str, Any]:
    path = Path(path)
    stages = read_json(path / "stages.json") if (path / "stages.json").is_file() else {}
    if name not in stages:
        raise DataError(f"{path} is not an adapt run folder finished through its {name!r} stage; run "
                        f"`rag-rerank adapt DOCS --out {path}` (or `adapt(..., stop_after={name!r})`) first")
    return stages


class RunFolder:
    """A run folder; see the module docstring.

    Raises:
        RagRerankError: when the folder cannot be written, or holds a run made with other settings.
    """

    def __init__(self, path: str | os.PathLike, identity: dict[str, Any]) -> None:
        self.path = Path(path)
        self.identity = identity
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-"):
                pass
        except OSError as e:
            raise RagRerankError(f"--out {self.path} cannot be written ({e.strerror or e}); pass a folder you can "
                                 "write to") from e
        if (self.path / "run.json").is_file():
            old = read_json(self.path / "run.json")
            diff = _differences(old, identity)
            if diff:
                named = _recipe_named(old.get("recipe")) if all(d.startswith("recipe.") for d in diff) else None
                how = f"add --recipe {named} (its settings) to resume it" if named else \
                    "rerun with the same settings to resume it"
                raise RagRerankError(
                    f"{self.path} holds a run made with other settings ({'; '.join(diff[:3])}); {how}, or pass "
                    "another --out")
        elif not _new_or_seeded(self.path):
            raise RagRerankError(f"--out {self.path} is not empty and is not an adapt run folder; pass a new or empty "
                                 "folder")

    # ------------------------------------------------------------------ paths
    dataset_dir = property(lambda self: self.path / "dataset")
    index_dir = property(lambda self: self.path / "index")
    reranker_dir = property(lambda self: self.path / "reranker")
    student_dir = property(lambda self: self.path / "student")
    report_dir = property(lambda self: self.path / "report")
    groups_path = property(lambda self: self.path / "train_groups.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunFolder]:
        """Hold the folder's lock (a second run on it is refused) and record its identity."""
        with run_lock(self.path, "adapt run"):
            if not (self.path / "run.json").is_file():
                write_json(self.path / "run.json", self.identity)
            yield self

    # ------------------------------------------------------------------ plan
    @property
    def plan(self) -> Any:
        """The plan recorded by the first run (a rerun keeps it), or ``None``."""
        from rag_rerank.adaptation.plan import Plan

        path = self.path / "plan.json"
        if not path.is_file():
            return None
        data = read_json(path)
        data.pop("est_total_s", None)
        return Plan(**data)

    def save_plan(self, plan: Any) -> None:
        write_json(self.path / "plan.json", plan.to_dict())

    # ------------------------------------------------------------------ stages
    def _stages(self) -> dict[str, Any]:
        path = self.path / "stages.json"
        return read_json(path) if path.is_file() else {}

    def stage(self, name: str, work: Callable[[], Any], say: Callable[[str], None]) -> Any:
        """Run ``work`` unless ``name`` finished in an earlier run; its (JSON) result is recorded and returned."""
        stages = self._stages()
        if name in stages:
            say(f"[{name}] done earlier ({stages[name]['seconds']:.0f} s), skipped")
            return stages[name]["result"]
        say(f"[{name}] ...")
        start = time.perf_counter()
        interrupted_path = self.path / "interrupted.json"
        interrupted = read_json(interrupted_path) if interrupted_path.is_file() else {}
        try:
            result = work()
        except BaseException:
            interrupted[name] = round(interrupted.get(name, 0.0) + time.perf_counter() - start, 1)
            write_json(interrupted_path, interrupted)
            raise
        earlier = interrupted.pop(name, 0.0)
        seconds = round(time.perf_counter() - start + earlier, 1)
        stages = self._stages()
        stages[name] = {"result": result, "seconds": seconds, **({"interrupted_s": earlier} if earlier else {})}
        write_json(self.path / "stages.json", stages)
        if earlier:
            write_json(interrupted_path, interrupted)
        say(f"[{name}] done in {seconds:.0f} s" + (f" ({earlier:.0f} s of it in interrupted runs)" if earlier else ""))
        return result

    def stage_result(self, name: str) -> Any:
        return self._stages().get(name, {}).get("result") or {}

    def stage_times(self) -> dict[str, float]:
        return {name: s["seconds"] for name, s in self._stages().items()}

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)
