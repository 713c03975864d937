"""Loading folders and chunking to N tokens of the reranker's tokenizer."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag_rerank.data import SAMPLE_DOCS  # noqa: E402
from rag_rerank.errors import DataError
from rag_rerank.generate.chunking import chunk_documents, chunk_text, load_chunk_tokenizer, load_chunks
from rag_rerank.generate.documents import html_to_text, load_documents
from rag_rerank.types import content_id


@pytest.fixture(scope="module")
def tok(minilm_dir: Path):
    return load_chunk_tokenizer(str(minilm_dir))


def _n(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_sample_docs_chunks_never_exceed_limit_with_real_tokenizer(tok) -> None:
    chunks, report = load_chunks(SAMPLE_DOCS, tokenizer=tok, chunk_tokens=256)
    assert report.loaded == 12 and report.unsupported == 1  # ATTRIBUTION has no extension
    assert len({c.doc_id for c in chunks}) == 12
    counts = [_n(tok, c.text) for c in chunks]
    assert max(counts) <= 256
    assert all(c.metadata["n_tokens"] == n for c, n in zip(chunks, counts, strict=True))
    # packing works: most chunks are reasonably full (not one sentence each)
    assert sum(counts) / len(counts) > 150
    # with special tokens ([CLS] ... [SEP]) the chunk still fits a 258-token window
    assert max(len(tok(c.text)["input_ids"]) for c in chunks) <= 258


def test_chunk_metadata_ids_positions_offsets(tok) -> None:
    docs, _ = load_documents(SAMPLE_DOCS)
    chunks = chunk_documents(docs, tokenizer=tok, chunk_tokens=128)
    by_doc = {d.doc_id: d for d in docs}
    for c in chunks:
        doc = by_doc[c.doc_id]
        assert c.doc_id == content_id(c.source, prefix="d")
        assert c.id == content_id(c.doc_id, c.text, prefix="c")
        assert doc.text[c.start_char:c.start_char + len(c.text)] == c.text
    positions = [c.position for c in chunks if c.doc_id == docs[0].doc_id]
    assert positions == list(range(len(positions)))
    starts = [c.start_char for c in chunks if c.doc_id == docs[0].doc_id]
    assert starts == sorted(starts)
    # stable ids across runs
    assert [c.id for c in chunk_documents(docs, tokenizer=tok, chunk_tokens=128)] == [c.id for c in chunks]


def test_chunks_cover_the_text_in_order_without_overlap(tok) -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i * 7}." for i in range(200))
    spans = chunk_text(text, tok, chunk_tokens=64)
    assert len(spans) > 5
    assert all(n <= 64 for _, _, n in spans)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, e1, _), (s2, _, _) in zip(spans, spans[1:], strict=False):
        assert e1 < s2 and not text[e1:s2].strip()  # only whitespace between chunks
        assert text[s2 - 1] == " " and text[e1 - 1] == "."  # split at sentence ends


def test_overlap_repeats_whole_sentences(tok) -> None:
    text = " ".join(f"Fact {i} is about the river number {i}." for i in range(120))
    spans = chunk_text(text, tok, chunk_tokens=64, chunk_overlap=16)
    assert all(n <= 64 for _, _, n in spans)
    assert any(s2 < e1 for (_, e1, _), (s2, _, _) in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] == len(text)
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_text(text, tok, chunk_tokens=64, chunk_overlap=40)


def test_overlong_sentence_is_cut_at_token_boundaries(tok) -> None:
    text = "word " * 700 + "end."
    spans = chunk_text(text, tok, chunk_tokens=100)
    assert all(n <= 100 for _, _, n in spans)
    assert sum(n for _, _, n in spans) == _n(tok, text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=0, max_size=600))
def test_chunker_fuzz_any_unicode_never_over_limit(tok, text: str) -> None:
    for s, e, n in chunk_text(text, tok, chunk_tokens=16):
        assert 0 <= s < e <= len(text)
        assert n <= 16 and _n(tok, text[s:e]) <= 16


def test_html_strips_tags_and_takes_title() -> None:
    title, text = html_to_text(
        "<html><head><title>My  Page</title><style>p{}</style></head><body><h1>Head</h1>"
        "<p>First &amp; para.</p><script>var x=1;</script><p>Second</p></body></html>"
    )
    assert title == "My Page"
    assert "var x" not in text and "p{}" not in text and "<" not in text
    assert text.split("\n\n") == ["Head", "First & para.", "Second"]


def _write_pdf(path: Path, text: str) -> None:
    pytest.importorskip("pypdf")
    # a one-page PDF with a text object, built by hand (no writer dependency)
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    path.write_bytes(out)


def test_mixed_folder_loads_good_files_and_counts_bad_ones(tmp_path: Path, caplog) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "a.md").write_text("intro\n\n## The Real Title\n\nBody text here.", encoding="utf-8")
    (tmp_path / "sub" / "b_notes.txt").write_text("Plain notes about rivers.", encoding="utf-8")
    (tmp_path / "sub" / "deeper" / "c.html").write_text("<title>C page</title><p>Deep text.</p>", encoding="utf-8")
    (tmp_path / "latin.txt").write_bytes("Café crème à Zürich.".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "blank.md").write_text("   \n\n  ", encoding="utf-8")
    (tmp_path / "ATTRIBUTION").write_text("licence", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.txt").write_text("secret", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("git stuff", encoding="utf-8")
    _write_pdf(tmp_path / "doc.pdf", "Hello from a PDF file")
    if hasattr(os, "symlink"):
        os.symlink(tmp_path, tmp_path / "sub" / "loop")  # a symlinked folder is never followed
    with caplog.at_level(logging.INFO, logger="rag_rerank.generate.documents"):
        docs, report = load_documents(tmp_path)
    by_src = {d.source: d for d in docs}
    assert set(by_src) == {"a.md", "sub/b_notes.txt", "sub/deeper/c.html", "latin.txt", "doc.pdf"}
    assert by_src["a.md"].title == "The Real Title"
    assert by_src["sub/b_notes.txt"].title == "b notes"
    assert by_src["sub/deeper/c.html"].title == "C page" and by_src["sub/deeper/c.html"].text == "Deep text."
    assert by_src["latin.txt"].text == "Café crème à Zürich."
    assert "Hello from a PDF file" in by_src["doc.pdf"].text
    assert report.latin1 == ("latin.txt",)
    assert dict(report.skipped) == {"blank.md": "no text", "blob.txt": "binary content",
                                    "empty.txt": "empty file (0 bytes)"}
    assert report.unsupported == 2
    unsupported_logs = [r for r in caplog.records if "unsupported extensions" in r.getMessage()]
    assert len(unsupported_logs) == 1 and unsupported_logs[0].levelno == logging.INFO
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 3


def test_empty_or_all_bad_folder_is_a_one_line_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no usable documents") as e:
        load_documents(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "x.txt").write_bytes(b"")
    (tmp_path / "y.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="1 skipped as unusable, 1 with unsupported"):
        load_documents(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_documents(tmp_path / "missing")


def test_oversized_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("a b c. " * 300_000, encoding="utf-8")
    (tmp_path / "ok.txt").write_text("Small file.", encoding="utf-8")
    docs, report = load_documents(tmp_path, max_file_mb=1)
    assert [d.source for d in docs] == ["ok.txt"]
    assert report.skipped[0][0] == "big.txt" and "too large" in report.skipped[0][1]
