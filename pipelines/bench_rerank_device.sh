#!/usr/bin/env bash
# bench_rerank.py on a lent GPU machine (its GPU, then its CPU at all cores and at 2 threads), as measured for
# pipelines/results/bench_rerank_h200_{gpu,cpu16,cpu2}.json. Two steps:
#
#   bash pipelines/bench_rerank_device.sh prepare runs/arguana_next/default/reranker   # here, fills .dev/ (git-ignored)
#   bash pipelines/bench_rerank_device.sh run                                           # there, with .dev carried
#   bash pipelines/bench_rerank_device.sh ab    # there: the GPU rows before/after the truncate fix (..._gpu_ab.json)
#   bash pipelines/bench_rerank_device.sh auto  # there: auto measuring fp32 against bf16 on the GPU (..._gpu_auto.json)
#   bash pipelines/bench_rerank_device.sh order # there: fresh rows in alternating order on the GPU (..._gpu_order.json;
#                                               # needs .dev/model16/train_groups.jsonl: head -130 of the model's own)
#   bash pipelines/bench_rerank_device.sh distill [EPOCHS]  # there: a 3-layer student of .dev/teacher16 (the SQuAD
#       headline's reranker as fp16, with its train_groups.jsonl.gz), trained on the GPU and sent back as fp16 in
#       parts; here `cat model16.part*` rebuilds it, and distill_benchmark.py judges it (no FAISS there)
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
run|ab|auto|order|distill)
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAG_RERANK_SHARED=$PWD/.dev/shared
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl || exit 3
  export PYTHONPATH=$PWD:/tmp/site
  [ -d .dev/model16 ] || [ "$1" = distill ] || exit 4
  [ -d .dev/model16 ] && python3 - <<'PY'
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
  if [ "$1" = distill ]; then
    python3 - "${2:-4}" "$out" <<'PY' 2>&1 | grep -v "Loading\|sharded\|it/s]\|s/it]" | tail -15
import gzip, json, logging, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from rag_rerank.train.distill import DistillConfig, distill_reranker
logging.basicConfig(level=logging.INFO)
src, teacher = Path(".dev/teacher16"), Path("/tmp/teacher")
teacher.mkdir(exist_ok=True)
for f in src.iterdir():
    if f.name not in ("model.safetensors", "train_groups.jsonl.gz"):
        shutil.copy(f, teacher / f.name)
sd = load_file(src / "model.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, teacher / "model.safetensors",
          metadata={"format": "pt"})
(teacher / "train_groups.jsonl").write_bytes(gzip.decompress((src / "train_groups.jsonl.gz").read_bytes()))
epochs, out = float(sys.argv[1]), Path(sys.argv[2]) / "student"
res = distill_reranker(teacher, "/tmp/student", config=DistillConfig(layers=3, epochs=epochs))
out.mkdir(parents=True)  # at most 8 files of 16 MiB come back: the weights as fp16 in 15 MiB parts, the config
shutil.copy("/tmp/student/config.json", out / "config.json")  # (the tokenizer and the rest are the teacher's)
sd = load_file("/tmp/student/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, "/tmp/student16.safetensors",
          metadata={"format": "pt"})
blob = Path("/tmp/student16.safetensors").read_bytes()
for i in range(0, len(blob), 15 << 20):
    (out / f"model16.part{i // (15 << 20)}").write_bytes(blob[i:i + (15 << 20)])
(out / "distill.json").write_text(json.dumps({**res.to_dict(), "device": "the lent H200 GPU",
                                              "sent_back_as": "fp16"}, indent=2))
print("DONE", res.to_dict())
PY
    exit 0
  fi
  if [ "$1" = ab ]; then  # the GPU rows with Reranker before (1f4fc5a) and after the truncate fix, alternating
    mkdir -p /tmp/old && cp -r pipelines rag_rerank /tmp/old/ && cp .dev/old_reranker.py /tmp/old/rag_rerank/rerank/reranker.py
    B="pipelines/bench_rerank.py --models minilm --minilm-model /tmp/model --minilm-queries 20 --minilm-top100-queries 2 --device cuda --backends st-predict torch auto"
    for i in 1 2; do
      (cd /tmp/old && PYTHONPATH=/tmp/old:/tmp/site timeout 50 python3 $B --out "$out/gpu_old_$i.json" > "$out/old_$i.log" 2>&1); echo "old $i rc=$?"
      timeout 50 python3 $B --out "$out/gpu_new_$i.json" > "$out/new_$i.log" 2>&1; echo "new $i rc=$?"
    done
    exit 0
  fi
  if [ "$1" = order ]; then  # each row a fresh Reranker (or CrossEncoder.predict), alternating, on the GPU
    timeout 240 python3 pipelines/backend_order_check.py --model /tmp/model --device cuda --pairs 600 \
      --order st-predict auto torch st-predict auto torch torch-bf16 st-predict auto \
      --out "$out/bench_rerank_h200_gpu_order.json" 2>&1 | grep -v "Loading\|sharded" | tail -12
    exit 0
  fi
  if [ "$1" = auto ]; then  # the GPU rows twice, then auto's own choice on the GPU, and its test where pytest is
    B="python3 pipelines/bench_rerank.py --models minilm --minilm-model /tmp/model --minilm-queries 20 --minilm-top100-queries 2 --device cuda --backends st-predict torch torch-bf16 auto"
    timeout 90 $B --out "$out/bench_rerank_h200_gpu_auto.json" > "$out/gpu_auto_1.log" 2>&1; echo "gpu 1 rc=$?"
    timeout 90 $B --out "$out/bench_rerank_h200_gpu_auto_2.json" > "$out/gpu_auto_2.log" 2>&1; echo "gpu 2 rc=$?"
    RAG_RERANK_CACHE=/tmp/rrcache timeout 60 python3 -c "
import logging; logging.basicConfig(level=logging.INFO)
from rag_rerank.rerank.reranker import Reranker
rr = Reranker('/tmp/model', device='cuda')
print('CHOICE', rr.config.backend, rr.effective_precision, rr.backend_choice.reason(), rr.backend_choice.machine)
" 2>&1 | grep -v Loading | tail -3
    if python3 -c "import pytest" 2>/dev/null; then
      timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_backend_auto.py -k gpu 2>&1 | grep -E "^E |Error|passed|failed|error" | head -12
    else echo "no pytest there"; fi
    grep -h "bench_rerank\|auto ->" "$out"/*.log | cut -c1-400
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
