"""The shipped corpus, its rare word, and the BPE that splits it."""

import pytest

from conftest import ROOT
from minitrain.core.corpus import CorpusError, read_sentences, sentences_with
from minitrain.core.tokenizer import Tokenizer, exclusive_pieces

TINY = ["the cat sat on the mat.", "the dog sat on the log.", "a cat and a dog met.",
        "the mat was red.", "the log was old.", "she had written a note.",
        "he will write a note.", "they wrote a note."]


def test_corpus_counts():
    train = read_sentences(ROOT / "corpus/train.txt")
    val = read_sentences(ROOT / "corpus/val.txt")
    assert len(train) == 240 and len(val) == 40
    assert len(sentences_with(train, "written")) == 5
    assert len(sentences_with(val, "written")) == 2
    for form in ("write", "writes", "wrote", "writing"):
        assert len(sentences_with(train, form)) >= 5
    assert not set(train) & set(val)


def test_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        read_sentences(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="empty"):
        read_sentences(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("one.\n\nthree.\n")
    with pytest.raises(CorpusError, match="line 2 is blank"):
        read_sentences(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_sentences(tmp_path / "latin1.txt")


def test_bpe_is_deterministic_and_round_trips():
    a, b = Tokenizer.train(TINY, 80), Tokenizer.train(TINY, 80)
    assert a.hf.to_str() == b.hf.to_str()
    for s in TINY:
        assert a.decode(a.encode(s)) == s
        ids = a.encode_sentence(s)
        assert ids[0] == a.bos_id and ids[-1] == a.eos_id
    assert a.pad_id == 0


def test_written_has_a_piece_seen_nowhere_else():
    train = read_sentences(ROOT / "corpus/train.txt")
    tok = Tokenizer.train(train, 400)
    rare = exclusive_pieces(tok, train, "written")
    assert rare, "the shipped vocabulary must give 'written' a piece of its own"
    rare_sentences = set(sentences_with(train, "written"))
    for i, s in enumerate(train):
        has = any(p in tok.encode(s) for p in rare)
        assert has == (i in rare_sentences)
    common = exclusive_pieces(tok, train, "the")
    assert common == []  # a common word shares its pieces
