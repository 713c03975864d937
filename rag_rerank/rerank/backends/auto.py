"""``backend="auto"``: the fastest backend that ranks like fp32 torch, measured on this machine for this model.

Which backend is fastest depends on the CPU (on one machine with AVX512_BF16 and VNNI, OpenVINO bf16 ran at 2.6x
``CrossEncoder.predict``; on another, without native bf16, it ran at 0.7x), so it is measured, not assumed:

1. the probe: up to 8 queries x 8 passages of the model's own data (the folder's ``train_groups.jsonl``, which
   ``adapt``/``train`` write), else of the packaged sample documents (8 times over on a GPU);
2. every installed backend (torch, and torch-bf16 where the CPU has native bf16; onnx and onnx-int8 with
   ``rag-rerank[onnx]``; openvino, openvino-int8, and openvino-bf16 where the CPU has native bf16, with
   ``rag-rerank[openvino]``) scores the probe three times after a warm-up; its time is the fastest run (the least
   disturbed by other work on the machine);
3. the per-query Spearman correlation of each backend's scores with fp32 torch's must be at least 0.99, and the
   backend at least as fast as torch; the fastest of those wins (torch always qualifies);
4. the choice is cached per model (a hash of its weights), settings and machine (CPU model and flags, threads,
   runtime versions) in the rag-rerank cache, and logged with its reasons.

On a GPU the candidates are fp32 torch and torch under bf16 autocast (where the GPU supports bf16), chosen by the
same rule, and the GPU's name is part of the machine key: bf16 is not always faster there (on an H200, MiniLM-L6
under bf16 autocast reranked at 0.85x fp32 ``CrossEncoder.predict``). A model that is not a saved folder (an
in-memory ``CrossEncoder``) gets torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_rerank.io import read_json, write_json
from rag_rerank.models import cache_dir

logger = logging.getLogger(__name__)

__all__ = ["MIN_SPEARMAN", "BackendChoice", "candidates", "choose_backend", "machine_info", "machine_key",
           "build_as_probed", "probe_pairs"]

MIN_SPEARMAN = 0.99
PROBE_QUERIES, PROBE_DOCS = 8, 8
# on a GPU the probe is scored 8 times over (512 pairs): with 64 pairs, bf16 autocast measured 1.07-1.18x fp32 on an
# H200, and 0.8x on 600 pairs (bench_rerank_h200_gpu_auto.json)
GPU_PROBE_REPEAT = 8
CHOICE_VERSION = "3"  # 2: torch-bf16 joined the candidates; 3: GPUs choose too


@dataclass(frozen=True)
class BackendChoice:
    """The backend chosen, and the measurements behind it (seconds per probe, Spearman vs fp32 torch)."""

    backend: str
    seconds: dict[str, float] = field(default_factory=dict)
    spearman: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    machine: str = ""
    cached: bool = False

    def reason(self) -> str:
        base = self.seconds.get("torch")
        speed = ", ".join(f"{b} {base / s:.2f}x" for b, s in self.seconds.items() if base and s)
        why = "; ".join(f"{b}: {r}" for b, r in self.rejected.items())
        return f"backend auto -> {self.backend} (speed vs torch: {speed}{'; not used: ' + why if why else ''})"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The CPU model, its SIMD flags (AVX, AMX, FMA, SSE4), the threads this process may use and the runtime
    versions: what a speed measurement depends on, recorded next to every speed figure. On a GPU ``device``, its
    name too (``gpu``).

    Example:
        >>> sorted(machine_info())
        ['cpu', 'flags', 'threads', 'versions']
    """
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.readlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
        flags = sorted(f for f in next((ln for ln in lines if ln.startswith("flags")), "").split()
                       if f.startswith(("avx", "amx", "fma", "sse4")))
    except OSError:
        model = platform.processor()
    versions = {}
    for pkg in ("torch", "onnxruntime", "openvino"):
        if importlib.util.find_spec(pkg) is not None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:  # pragma: no cover
                pass
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": model, "flags": flags, "threads": threads, "versions": versions}
    if not device.startswith("cpu"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    return info


def machine_key(device: str = "cpu") -> str:
    """:func:`machine_info` as one string (the backend choice cache's key)."""
    m = machine_info(device)
    versions = " ".join(f"{k}={v}" for k, v in m["versions"].items())
    gpu = f" | gpu={m['gpu']}" if "gpu" in m else ""
    return f"{m['cpu']} | {' '.join(m['flags'])} | threads={m['threads']} | {versions}{gpu}"


def candidates(device: str = "cpu") -> list[str]:
    """The backends installed here for ``device``, in the order they are tried (torch, the reference, first)."""
    from rag_rerank.rerank.backends.base import native_cpu_bf16

    if not device.startswith("cpu"):  # the exported backends run on CPU only
        import torch

        return ["torch", "torch-bf16"] if device.startswith("cuda") and torch.cuda.is_bf16_supported() else ["torch"]
    out = ["torch", "torch-bf16"] if native_cpu_bf16() else ["torch"]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        out += ["onnx", "onnx-int8"]
    if importlib.util.find_spec("openvino"):
        out.append("openvino")
        if importlib.util.find_spec("nncf"):
            out.append("openvino-int8")
        from rag_rerank.rerank.backends.openvino import native_bf16

        if native_bf16():
            out.append("openvino-bf16")
    return out


def _spearman_per_query(a: np.ndarray, b: np.ndarray, sizes: Sequence[int]) -> float:
    """Mean over queries of the Spearman correlation of two score vectors (a constant query counts as 1)."""
    from scipy.stats import spearmanr

    values, start = [], 0
    for n in sizes:
        x, y = a[start:start + n], b[start:start + n]
        start += n
        if n < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
            values.append(1.0 if np.allclose(x, y, atol=1e-6) or n < 2 else 0.0)
            continue
        values.append(float(spearmanr(x, y).statistic))
    return float(np.mean(values))


def probe_pairs(model_dir: Path) -> tuple[list[tuple[str, str]], list[int]]:
    """``(pairs, passages per query)`` for the probe: the model's own groups, else the packaged sample docs."""
    groups_file = model_dir / "train_groups.jsonl"
    groups: list[tuple[str, list[str]]] = []
    if groups_file.is_file():
        with groups_file.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                groups.append((row["query"], [row["positive"], *row.get("negatives", [])][:PROBE_DOCS]))
                if len(groups) >= PROBE_QUERIES:
                    break
    if not groups:
        from rag_rerank.data import SAMPLE_DOCS

        texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE_DOCS.glob("*.*")) if p.suffix in (".md", ".txt")]
        paras = [p.strip() for t in texts for p in t.split("\n\n") if len(p.split()) > 30]
        for i in range(min(PROBE_QUERIES, len(paras))):
            query = " ".join(paras[i].split()[:10])
            groups.append((query, [paras[(i + j * 3) % len(paras)] for j in range(PROBE_DOCS)]))
    pairs = [(q, d) for q, docs in groups for d in docs]
    return pairs, [len(docs) for _, docs in groups]


def build_as_probed(name: str, model_dir: Path, build: Callable[..., Any], *, has_calibration: bool) -> Any:
    """Build backend ``name`` exactly as the probe measures it: ``openvino-int8`` for a model with no data of its
    own (no ``train_groups.jsonl``, no ``calibration_pairs``) calibrates on the probe's pairs, both while probing
    and when serving the choice (cached or not), so the served model is the measured one."""
    if has_calibration or name != "openvino-int8" or (model_dir / "train_groups.jsonl").is_file():
        return build(name)
    return build(name, calibration_pairs=probe_pairs(model_dir)[0])


def choose_backend(model_dir: Path, settings_key: str, build: Callable[[str, list[tuple[str, str]]], Any],
                   score: Callable[[Any, list[tuple[str, str]]], np.ndarray], device: str = "cpu") -> BackendChoice:
    """Measure every installed backend on the probe and choose (or read the cached choice).

    Args:
        model_dir: the saved model folder.
        settings_key: what else changes scores or speed (max length, batch size, activation, ...).
        build: ``(name, probe pairs) -> backend`` (as :func:`rag_rerank.rerank.backends.create_backend` makes it;
            the probe pairs can calibrate int8 when the model has no data of its own).
        score: ``(backend, pairs) -> scores``, the Reranker's own scoring through that backend.
        device: where the model runs (``cpu``, ``cuda``, ...): it decides the candidates and keys the cache.
    """
    from rag_rerank.rerank.backends.base import weights_fingerprint

    machine = machine_key(device)
    key = hashlib.sha256(json.dumps([CHOICE_VERSION, weights_fingerprint(model_dir), settings_key, machine],
                                    sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "backend-choices" / f"{key}.json"
    if path.is_file():
        try:
            choice = BackendChoice(**{**read_json(path), "cached": True})
            logger.info("%s [cached for this model and machine]", choice.reason())
            return choice
        except (TypeError, ValueError) as e:  # a damaged or older cache entry: measure again
            logger.debug("ignoring %s: %s", path, e)
    pairs, sizes = probe_pairs(model_dir)
    if not device.startswith("cpu"):  # 64 pairs are two batches, which say little of a GPU's throughput
        pairs, sizes = pairs * GPU_PROBE_REPEAT, sizes * GPU_PROBE_REPEAT
    seconds: dict[str, float] = {}
    spearman: dict[str, float] = {}
    rejected: dict[str, str] = {}
    reference = None
    for name in candidates(device):
        try:
            backend = build(name, pairs)
            got = score(backend, pairs)  # warm-up (and the scores compared)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                score(backend, pairs)
                times.append(time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 - a backend that cannot serve this model is not a candidate
            rejected[name] = f"failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
            continue
        seconds[name] = round(min(times), 4)
        if reference is None:
            reference = got
        spearman[name] = round(_spearman_per_query(reference, got, sizes), 4)
    base = seconds["torch"]
    eligible = {}
    for name, s in seconds.items():
        if spearman[name] < MIN_SPEARMAN:
            rejected[name] = f"per-query Spearman {spearman[name]:.3f} < {MIN_SPEARMAN}"
        elif s > base and name != "torch":
            rejected[name] = f"slower than torch ({base / s:.2f}x)"
        else:
            eligible[name] = s
    best = min(eligible, key=lambda n: (eligible[n], n != "torch"))
    choice = BackendChoice(backend=best, seconds=seconds, spearman=spearman, rejected=rejected, machine=machine)
    try:
        write_json(path, {k: v for k, v in asdict(choice).items() if k != "cached"})
    except OSError as e:  # a read-only cache only means measuring again next time
        logger.debug("backend choice not cached: %s", e)
    logger.info(choice.reason())
    return choice
