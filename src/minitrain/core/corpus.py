"""The corpus: sentence files (one per line, line number = sentence id) and tracked words."""

from __future__ import annotations

import re
from pathlib import Path


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file."""


def read_sentences(path: str | Path) -> list[str]:
    """Every line of a UTF-8 file, stripped; blank lines are an error (they would shift ids)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorpusError(f"{path}: corpus file not found") from None
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror}") from None
    lines = text.splitlines()
    if not lines:
        raise CorpusError(f"{path}: corpus is empty")
    sentences = []
    for i, line in enumerate(lines):
        if not line.strip():
            raise CorpusError(f"{path}: line {i + 1} is blank (sentence ids are line numbers)")
        sentences.append(line.strip())
    return sentences


def word_pattern(word: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)


def sentences_with(sentences: list[str], word: str) -> list[int]:
    """Ids of the sentences that contain `word` as a whole word (case-insensitive)."""
    pat = word_pattern(word)
    return [i for i, s in enumerate(sentences) if pat.search(s)]
