"""The only user of `tokenizers`: train a BPE on the corpus, save, load, encode, decode."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIALS = [PAD, BOS, EOS, UNK]  # PAD is id 0


class Tokenizer:
    def __init__(self, hf: _HFTokenizer):
        self.hf = hf
        self.pad_id, self.bos_id, self.eos_id = (hf.token_to_id(t) for t in (PAD, BOS, EOS))

    @classmethod
    def train(cls, sentences: list[str], vocab_size: int) -> Tokenizer:
        hf = _HFTokenizer(models.BPE(unk_token=UNK))
        # split on spaces, then split punctuation off, so a word tokenizes the same everywhere
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()]
        )
        hf.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False
        )
        hf.train_from_iterator(sentences, trainer=trainer)
        return cls(hf)

    @staticmethod
    def most_pieces(sentences: list[str]) -> int:
        """More pieces than a BPE over `sentences` can have: the specials, every character (and
        the word marker), and one per merge, each of which removes at least one symbol from the
        text. A vocab_size above it cannot be reached, and a very large one makes the trainer
        abort the process allocating for it."""
        chars = set("".join(sentences))
        return len(SPECIALS) + len(chars) + 1 + sum(len(s) + 1 for s in sentences)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(_HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_sentence(self, text: str) -> list[int]:
        """BOS + pieces + EOS: the unit every batch is made of."""
        return [self.bos_id, *self.encode(text), self.eos_id]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)

    def piece(self, i: int) -> str:
        return self.hf.id_to_token(i)

    def word_pieces(self, word: str) -> list[int]:
        """The pieces of `word` as it appears after a space, mid-sentence."""
        return self.encode(f"a {word}")[len(self.encode("a")):]


def exclusive_pieces(tok: Tokenizer, sentences: list[str], word: str) -> list[int]:
    """Pieces of `word` that occur in the corpus only inside `word`: the rare pieces to track."""
    pieces = tok.word_pieces(word)
    total = Counter(i for s in sentences for i in tok.encode(s))
    inside = Counter()
    for s in sentences:
        for w in s.split():
            if w.strip(".,?!;:").lower() == word.lower():
                inside.update(tok.word_pieces(w.strip(".,?!;:")))
    return [p for p in dict.fromkeys(pieces) if total[p] and total[p] == inside[p]]
