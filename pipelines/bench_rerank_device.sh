#!/usr/bin/env bash
# bench_rerank.py on a lent GPU machine (its GPU, then its CPU at all cores and at 2 threads), as measured for
# pipelines/results/bench_rerank_h200_{gpu,cpu16,cpu2}.json. Two steps:
#
#   bash pipelines/bench_rerank_device.sh prepare runs/arguana_next/default/reranker   # here, fills .dev/ (git-ignored)
#   bash pipelines/bench_rerank_device.sh run                                           # there, with .dev carried
#   bash pipelines/bench_rerank_device.sh ab    # there: the GPU rows before/after the truncate fix (..._gpu_ab.json)
#
# Why the preparation: the device machine has no network and takes at most 64 MiB of files per call. Its image has
# torch, transformers, sentence-transformers, onnx and onnxruntime but not datasets (sentence-transformers imports
# it), its pure-Python needs or rank_bm25; those travel as wheels. The fine-tuned MiniLM reranker (91 MB in fp32)
# travels as fp16 and is cast back to fp32 there: every backend there scores those fp32 weights, so the speed and
# parity figures hold for them. OpenVINO (a 59 MB wheel) does not fit beside the model, so its rows say "failed:
# ImportError" there. Needs `echo /.dev/ >> .git/info/exclude` once.
set -u
case "${1:-}" in
prepare)
  model=${2:?a fine-tuned reranker folder}
  py=${PYTHON:-.venv/bin/python}
  rm -rf .dev/model16 .dev/whl .dev/shared && mkdir -p .dev/whl .dev/shared/data/squad
  cp -r ../shared/data/squad/beir .dev/shared/data/squad/
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .dev/whl \
    rank-bm25==0.2.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  git show 1f4fc5a:rag_rerank/rerank/reranker.py > .dev/old_reranker.py  # Reranker before the truncate fix (ab)
  $py - "$model" <<'PY'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(".dev/model16")
dst.mkdir(parents=True)
for f in src.iterdir():
    if f.is_file() and f.name not in ("model.safetensors", "train_groups.jsonl", "fusion.json"):
        shutil.copy(f, dst / f.name)
sd = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
PY
  du -sh .dev ;;
run|ab)
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAG_RERANK_SHARED=$PWD/.dev/shared
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl || exit 3
  export PYTHONPATH=$PWD:/tmp/site
  python3 - <<'PY' || exit 4
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(".dev/model16"), Path("/tmp/model")
dst.mkdir(exist_ok=True)
for f in src.iterdir():
    if f.name != "model.safetensors":
        shutil.copy(f, dst / f.name)
sd = load_file(src / "model.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
PY
  out=${OUT:-pipelines/results}
  if [ "$1" = ab ]; then  # the GPU rows with Reranker before (1f4fc5a) and after the truncate fix, alternating
    mkdir -p /tmp/old && cp -r pipelines rag_rerank /tmp/old/ && cp .dev/old_reranker.py /tmp/old/rag_rerank/rerank/reranker.py
    B="pipelines/bench_rerank.py --models minilm --minilm-model /tmp/model --minilm-queries 20 --minilm-top100-queries 2 --device cuda --backends st-predict torch auto"
    for i in 1 2; do
      (cd /tmp/old && PYTHONPATH=/tmp/old:/tmp/site timeout 50 python3 $B --out "$out/gpu_old_$i.json" > "$out/old_$i.log" 2>&1); echo "old $i rc=$?"
      timeout 50 python3 $B --out "$out/gpu_new_$i.json" > "$out/new_$i.log" 2>&1; echo "new $i rc=$?"
    done
    exit 0
  fi
  (nvidia-smi; lscpu; nproc) > "$out/machine.txt" 2>&1
  B="python3 pipelines/bench_rerank.py --models minilm --minilm-model /tmp/model --minilm-queries 20 --minilm-top100-queries 2"
  timeout 90 $B --device cuda --backends st-predict torch torch-bf16 auto --out "$out/bench_rerank_h200_gpu.json" > "$out/gpu.log" 2>&1; echo "gpu rc=$?"
  timeout 150 $B --out "$out/bench_rerank_h200_cpu16.json" > "$out/cpu16.log" 2>&1; echo "cpu16 rc=$?"
  timeout 200 $B --threads 2 --out "$out/bench_rerank_h200_cpu2.json" > "$out/cpu2.log" 2>&1; echo "cpu2 rc=$?"
  grep -h "bench_rerank\|auto ->" "$out"/*.log | cut -c1-400 ;;
*)
  echo "usage: $0 prepare MODEL_DIR | run | ab" >&2; exit 2 ;;
esac
