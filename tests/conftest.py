"""Shared fixtures: tiny models built locally from the packaged tokenizer, and the real-data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Rerankers default to backend="auto" (measure every installed backend once per model and machine). The suite
# builds many tiny models, so it uses torch unless a test asks for "auto" (tests/test_backend_auto.py).
os.environ.setdefault("RAG_RERANK_BACKEND", "torch")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAG_RERANK_SHARED", REPO.parent / "shared"))
SQUAD_BEIR = SHARED / "data" / "squad" / "beir"
STSB = SHARED / "data" / "stsbenchmark"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Materialised models go to a per-session cache unless the caller set one (CI shares it)."""
    if "RAG_RERANK_CACHE" not in os.environ:
        os.environ["RAG_RERANK_CACHE"] = str(tmp_path_factory.mktemp("rag-rerank-cache"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from rag_rerank.models import resolve_model_path

    return resolve_model_path("embedded:minilm")


def _tiny_bert(tokenizer_dir: Path, out: Path, num_labels: int | None) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=num_labels or 1,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg) if num_labels else BertModel(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A 2-layer, 32-d BERT cross-encoder (1 label) with the MiniLM tokenizer: seconds to train."""
    return _tiny_bert(minilm_dir, tmp_path_factory.mktemp("tiny-ce"), num_labels=1)


@pytest.fixture(scope="session")
def tiny_bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A 2-layer, 32-d BERT wrapped as a sentence-transformers bi-encoder (mean pooling, normalised)."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # pragma: no cover - sentence-transformers 5
        from sentence_transformers import models

    raw = _tiny_bert(minilm_dir, tmp_path_factory.mktemp("tiny-bert"), num_labels=None)
    word = models.Transformer(str(raw), max_seq_length=256)
    get_dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    dim = get_dim()
    pool = models.Pooling(dim, pooling_mode="mean")
    st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    out = tmp_path_factory.mktemp("tiny-bi")
    st.save(str(out))
    return out


@pytest.fixture(scope="session")
def squad_beir() -> Path:
    """The real SQuAD v1.1 dev BEIR folder from ../shared (CI always has it)."""
    if not (SQUAD_BEIR / "corpus.jsonl").is_file():
        pytest.skip(f"real data not found at {SQUAD_BEIR}; set RAG_RERANK_SHARED")
    return SQUAD_BEIR


@pytest.fixture(scope="session")
def make_sharp_cross_encoder(tiny_cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Factory: the tiny cross-encoder with its head rescaled (logit' = 1000 * (logit - mean logit over `pairs`)).

    The untrained tiny model gives nearly equal scores for every pair (sigmoid spread ~1e-4); a parity
    check at atol=1e-5 on such scores would pass even for a permuted output. Rescaling spreads them.
    """

    def make(pairs: list[tuple[str, str]]) -> Path:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tiny_cross_encoder_dir), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(str(tiny_cross_encoder_dir), local_files_only=True)
        with torch.no_grad():
            enc = tok([q for q, _ in pairs], [d for _, d in pairs], padding=True, return_tensors="pt")
            mean_logit = model(**enc).logits.mean()
            model.classifier.weight.mul_(1000.0)
            model.classifier.bias.sub_(mean_logit).mul_(1000.0)
        out = tmp_path_factory.mktemp("sharp-ce")
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return out

    return make
