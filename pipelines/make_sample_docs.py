"""Rebuild sample_docs/ from SQuAD v1.1 dev: the 12 shortest articles, paragraphs joined in order.

Usage: python pipelines/make_sample_docs.py [--squad ../shared/data/squad/dev-v1.1.json] [--n 12]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ATTRIBUTION = """# Attribution

The files in this folder are whole Wikipedia articles rebuilt from the SQuAD v1.1 development set
(Rajpurkar et al., 2016, "SQuAD: 100,000+ Questions for Machine Comprehension of Text"): each file is one
article, its paragraphs joined in their original order, with the article title as a heading. Nothing else
was changed. Made by `python pipelines/make_sample_docs.py`.

- Source: SQuAD v1.1 dev, `dev-v1.1.json` (sha256 95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9),
  https://rajpurkar.github.io/SQuAD-explorer/
- Text: Wikipedia contributors, licensed CC BY-SA.
- Dataset license: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).

These derived files are shared under the same license, CC BY-SA 4.0.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--squad", default="../shared/data/squad/dev-v1.1.json")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--out", default="sample_docs")
    args = ap.parse_args()
    data = json.loads(Path(args.squad).read_text(encoding="utf-8"))["data"]
    articles = sorted(data, key=lambda a: (sum(len(p["context"]) for p in a["paragraphs"]), a["title"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, art in enumerate(articles[: args.n]):
        title = art["title"].replace("_", " ")
        body = "\n\n".join(p["context"].strip() for p in art["paragraphs"])
        ext = "md" if i % 2 == 0 else "txt"  # both formats, so the loader is exercised on each
        text = f"# {title}\n\n{body}\n" if ext == "md" else f"{title}\n\n{body}\n"
        (out / f"{art['title']}.{ext}").write_text(text, encoding="utf-8")
    (out / "ATTRIBUTION").write_text(ATTRIBUTION, encoding="utf-8")


if __name__ == "__main__":
    main()
