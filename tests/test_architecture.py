"""The package's shape: no import cycles, no private reaches, short modules, a fast public face, a thin CLI."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "rag_rerank"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
FACES = {name for name, p in MODULES.items() if p.name == "__init__.py"}


def _resolve(module: str, name: str | None) -> str | None:
    """The module an import really reaches: a submodule, or (for a lazy face) the module that defines the name."""
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    if module in FACES and name is not None and module != "rag_rerank":
        lazy = getattr(getattr(importlib.import_module(module), "__getattr__", None), "lazy_names", {})
        return lazy.get(name, module)
    return module if module in MODULES else None


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every rag_rerank import in a file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rag_rerank") and not node.level:
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("rag_rerank")]
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES if name not in FACES}
    for name, path in MODULES.items():
        if name in FACES:
            continue  # a package face names its pieces; it is not a dependency of anything
        for module, imported, _ in _imports(path):
            target = _resolve(module, imported)
            if target is not None and target not in FACES and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    assert sum(map(len, graph.values())) > 50  # the walker sees the real imports
    assert "rag_rerank.rerank.runs" in graph["rag_rerank.evaluate.compare"]
    assert _cycles(graph) == []


def test_no_private_name_is_imported_across_modules() -> None:
    bad = [f"{path.relative_to(REPO)}:{line} imports {module}.{name}"
           for path in [*MODULES.values(), *REPO.glob("pipelines/*.py")]
           for module, name, line in _imports(path)
           if name and name.startswith("_") and name != "__version__" and module != "rag_rerank._lazy"
           or (module.rsplit(".", 1)[-1].startswith("_") and module != "rag_rerank._lazy")]
    assert bad == []


def test_no_module_is_over_the_line_limit() -> None:
    long = {str(p.relative_to(REPO)): n for p in MODULES.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_import_is_light_and_the_public_api_is_there() -> None:
    code = ("import sys, json, rag_rerank as rr; before = 'torch' in sys.modules; "
            "names = [rr.Reranker, rr.create_qa_dataset, rr.load_qa_dataset, rr.finetune, rr.build_index, "
            "rr.load_index, rr.evaluate_systems, rr.RerankerTrainingConfig, rr.MiningConfig, rr.DataError]; "
            "print(json.dumps({'torch_at_import': before, 'torch_after_names': 'torch' in sys.modules, "
            "'all': sorted(rr.__all__)}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)
    assert out == {"torch_at_import": False, "torch_after_names": False, "all": out["all"]}
    assert {"adapt", "create_qa_dataset", "load_qa_dataset", "build_index", "load_index", "finetune", "Reranker",
            "evaluate_systems", "Recipe", "RagRerankError", "__version__"} <= set(out["all"])
    assert len(out["all"]) <= 20  # a small face


def test_no_public_name_is_shadowed_by_a_subpackage() -> None:
    """A public name that is also a submodule's name (``rag_rerank.adapt``, the function, and a package of that name)
    turns into the module as soon as anything imports that submodule: ``rr.adapt(...)`` then raised "'module' object
    is not callable" after ``import rag_rerank.adapt.plan``."""
    import rag_rerank

    shadowed = [n for n in rag_rerank.__all__ if (PKG / n).is_dir() or (PKG / f"{n}.py").is_file()]
    assert shadowed == []
    code = ("import importlib, pkgutil, rag_rerank as rr, inspect; "
            "[importlib.import_module(m.name) for m in pkgutil.iter_modules(rr.__path__, 'rag_rerank.') if m.ispkg]; "
            "print([n for n in rr.__all__ if inspect.ismodule(getattr(rr, n))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


IMPORTABLE = sorted(n for n in MODULES if not any(s in n for s in ("integrations", "_llama_server", "__main__")))


def test_importing_every_module_leaves_logging_stdout_and_umask_alone() -> None:
    code = ("import importlib, logging, os, sys, pkgutil, rag_rerank; "
            "root = logging.getLogger(); state = (root.level, list(root.handlers), sys.stdout, os.umask(0o022)); "
            "os.umask(state[3]); "
            f"names = {IMPORTABLE!r}; "
            "[importlib.import_module(n) for n in names]; "
            "after = (root.level, list(root.handlers), sys.stdout, os.umask(0o022)); "
            "print(state == after)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_every_cli_option_has_help_text() -> None:
    from rag_rerank.cli import main

    missing = []

    def walk(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}")
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip() and p.name != "help":
                missing.append(f"{path} {p.opts[0]}")

    walk(main, "rag-rerank")
    assert missing == []


@pytest.mark.slow
def test_the_wheel_carries_the_sample_docs_and_demo_defaults_to_them(tmp_path: Path) -> None:
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path / "w")],
                   check=True, timeout=600, capture_output=True)
    wheel = next((tmp_path / "w").glob("rag_rerank-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "rag_rerank/data/sample_docs/Geology.md" in names and "rag_rerank/data/sample_docs/ATTRIBUTION" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=600, capture_output=True)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    help_text = subprocess.run([sys.executable, "-m", "rag_rerank", "demo", "--help"], capture_output=True,
                               text=True, env=env, timeout=120, check=True,
                               cwd=tmp_path).stdout  # not the repo: `-m` puts the working folder first on sys.path
    default = help_text.split("[default:")[1].split("]")[0].strip()
    docs = Path("".join(default.split()))  # click wraps a long default over lines, inside words too
    assert docs.is_dir() and (docs / "Geology.md").is_file()
    assert target in docs.parents and REPO not in docs.parents  # the installed copy, not the source tree
