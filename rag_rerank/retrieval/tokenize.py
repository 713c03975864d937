"""The BM25 tokenizer: lowercase ``\\w+`` words by default, Unicode-safe, optional stopwords and stemming.

- Text is NFKC-normalised first, so composed and decomposed accents (``café`` / ``cafe`` + U+0301) and
  full-width forms give the same tokens. ``strip_accents=True`` also folds ``café`` to ``cafe``.
- Chinese and Japanese have no spaces, so ``\\w+`` would swallow a whole sentence as one token; runs of
  Han / Hiragana / Katakana are split into overlapping character bigrams (``cjk="bigram"``, the default, as
  Lucene's CJKAnalyzer does) or single characters (``cjk="char"``). Korean Hangul is spaced, so it stays words.
- Emoji and punctuation are not word characters and are dropped. Nothing here raises on odd input.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rag_rerank.errors import ConfigError, missing_extra

# Han (incl. extension A and compatibility), Hiragana, Katakana (incl. half-width and phonetic extensions).
_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_CJK_RE = re.compile(f"[{_CJK}]")
_CJK_SPLIT_RE = re.compile(f"[{_CJK}]+|[^{_CJK}]+")

#: A compact English stopword list (NLTK's, without contractions); ``stopwords="english"`` selects it.
ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours yourself yourselves
    """.split()
)


@dataclass(frozen=True)
class Tokenizer:
    """A configurable, picklable word tokenizer for BM25.

    Attributes:
        pattern: regex whose matches are the tokens (default ``\\w+``).
        lowercase: lowercase (``str.lower``) before matching.
        normalization: Unicode normal form applied first (``"NFKC"``), or ``None`` to skip.
        strip_accents: fold accented letters to their base letter (``é`` -> ``e``).
        cjk: how to split runs of Chinese/Japanese characters: ``"bigram"``, ``"char"`` or ``"none"``.
        stopwords: ``"english"``, an iterable of words (compared after lowercasing), or ``None``.
        stemmer: a Snowball language for PyStemmer (``"english"``), a callable ``str -> str``, or ``None``.
        min_length: drop tokens shorter than this many characters.

    Example:
        >>> Tokenizer()("Où est le Café? 東京都")
        ['où', 'est', 'le', 'café', '東京', '京都']
        >>> Tokenizer(stopwords="english")("The cat and the hat")
        ['cat', 'hat']
    """

    pattern: str = r"\w+"
    lowercase: bool = True
    normalization: str | None = "NFKC"
    strip_accents: bool = False
    cjk: str = "bigram"
    stopwords: str | frozenset[str] | None = None
    stemmer: str | Callable[[str], str] | None = None
    min_length: int = 1
    _regex: Any = field(init=False, repr=False, compare=False)
    _stop: frozenset[str] = field(init=False, repr=False, compare=False)
    _stem: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cjk not in ("bigram", "char", "none"):
            raise ConfigError(f"cjk={self.cjk!r}: use 'bigram', 'char' or 'none'")
        if self.normalization not in (None, "NFC", "NFKC", "NFD", "NFKD"):
            raise ConfigError(f"normalization={self.normalization!r}: use NFC, NFKC, NFD, NFKD or None")
        try:
            regex = re.compile(self.pattern)
        except re.error as e:
            raise ConfigError(f"tokenizer pattern {self.pattern!r} is not a valid regex: {e}") from e
        stop = self.stopwords
        if isinstance(stop, str):
            if stop != "english":
                raise ConfigError(f"stopwords={stop!r}: use 'english', a collection of words, or None")
            words = ENGLISH_STOPWORDS
        else:
            words = frozenset(w.lower() if self.lowercase else w for w in (stop or ()))
            object.__setattr__(self, "stopwords", words or None)
        object.__setattr__(self, "_regex", regex)
        object.__setattr__(self, "_stop", words)
        object.__setattr__(self, "_stem", _make_stemmer(self.stemmer))

    def __call__(self, text: str) -> list[str]:
        """Tokenize one text; ``None`` or non-strings are treated as ``str(text)`` (``None`` -> ``[]``)."""
        if text is None:
            return []
        if not isinstance(text, str):
            text = str(text)
        if self.normalization:
            text = unicodedata.normalize(self.normalization, text)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        if self.lowercase:
            text = text.lower()
        if self._regex.groups:  # a pattern with groups: keep the whole match, not the groups
            tokens = [m.group(0) for m in self._regex.finditer(text)]
        else:
            tokens = self._regex.findall(text)
        if self.cjk != "none" and _CJK_RE.search(text):
            tokens = [t for tok in tokens for t in self._split_cjk(tok)]
        if self._stop:
            tokens = [t for t in tokens if t not in self._stop]
        if self._stem is not None:
            tokens = [self._stem(t) for t in tokens]
        if self.min_length > 1:
            tokens = [t for t in tokens if len(t) >= self.min_length]
        return tokens

    def tokenize_many(self, texts: Iterable[str]) -> list[list[str]]:
        """Tokenize a batch of texts.

        Example:
            >>> Tokenizer().tokenize_many(["a b", ""])
            [['a', 'b'], []]
        """
        return [self(t) for t in texts]

    def _split_cjk(self, token: str) -> list[str]:
        if not _CJK_RE.search(token):
            return [token]
        out: list[str] = []
        for part in _CJK_SPLIT_RE.findall(token):
            if not _CJK_RE.match(part):
                out.append(part)
            elif self.cjk == "char" or len(part) == 1:
                out.extend(part)
            else:
                out.extend(part[i : i + 2] for i in range(len(part) - 1))
        return out

    def to_config(self) -> dict[str, Any]:
        """A JSON-serialisable description (for index persistence).

        Raises:
            ValueError: when the stemmer is a callable, which cannot be saved.

        Example:
            >>> Tokenizer.from_config(Tokenizer().to_config()) == Tokenizer()
            True
        """
        if callable(self.stemmer):
            raise ConfigError(
                "a tokenizer with a callable stemmer cannot be saved; use a PyStemmer language name (e.g. 'english')"
            )
        stop = self.stopwords
        return {
            "pattern": self.pattern,
            "lowercase": self.lowercase,
            "normalization": self.normalization,
            "strip_accents": self.strip_accents,
            "cjk": self.cjk,
            "stopwords": stop if isinstance(stop, str) or stop is None else sorted(stop),
            "stemmer": self.stemmer,
            "min_length": self.min_length,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_config`'s output."""
        cfg = dict(config)
        if isinstance(cfg.get("stopwords"), list):
            cfg["stopwords"] = frozenset(cfg["stopwords"])
        return cls(**cfg)


def _make_stemmer(stemmer: str | Callable[[str], str] | None) -> Callable[[str], str] | None:
    if stemmer is None:
        return None
    if callable(stemmer):
        return stemmer
    try:
        import Stemmer  # PyStemmer
    except ImportError as e:
        raise missing_extra("PyStemmer", "stemming") from e
    try:
        return Stemmer.Stemmer(stemmer).stemWord
    except KeyError as e:
        raise ConfigError(f"stemmer={stemmer!r}: PyStemmer knows {sorted(Stemmer.algorithms())}") from e
