"""One interface over the data kinds (`data.kind`): the training examples as batches, the whole
training and held-out sets, and which examples are tracked (rare). The loop sees only this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minitrain.core import synthetic
from minitrain.core.config import Config, ConfigError
from minitrain.core.corpus import CorpusError, read_sentences, sentences_with
from minitrain.core.data import Batch, Packed, Sampler, encode_corpus, make_batch
from minitrain.core.mixer import MixtureSampler
from minitrain.core.tokenizer import Tokenizer, exclusive_pieces


@dataclass
class Dataset:
    n: int  # training examples; ids 0..n-1 (sentence ids for the corpus)
    batch: Callable[[list[int]], Batch]
    full: Batch  # every training example
    full_val: Batch  # every held-out example
    n_out: int  # size of the model's output: vocabulary or classes
    n_in: int  # vocabulary read (token kinds) or features (tabular)
    tracked: dict[str, set[int]]  # name -> ids of the tracked examples (rare word, rare token)
    pieces: dict[str, int]  # tracked vocabulary rows: name -> row id
    names: list[str] | None = None  # class names (synthetic kinds); None for the corpus
    tokenizer: Tokenizer | None = None  # corpus only
    summary: dict = field(default_factory=dict)  # extra summary.json fields
    source_of: list[str] | None = None  # mixture: each training example's source name
    source_ids: list[list[int]] | None = None  # mixture: the example ids of each source

    def rare_ids(self) -> set[int]:
        """The ids of every tracked example (any tracked word or token)."""
        return set().union(*self.tracked.values()) if self.tracked else set()
    row_len: int = 0  # packed: the training rows' length (block_size); 0: as long as `full`'s


VAL_EVERY = 10  # mixture: every 10th line of each source is held out (val_loss)


def build(cfg: Config) -> Dataset:
    kinds = {"corpus": _corpus, "toy-tokens": _toy, "tabular": _tabular, "mixture": _mixture}
    return kinds[cfg.data.kind](cfg)


def sampler(cfg: Config, ds: Dataset):
    """The batch stream: the mixer for a mixture, else the sampler `data.sampler` names."""
    d = cfg.data
    if d.kind == "mixture":
        return MixtureSampler(ds.source_ids, list(dict.fromkeys(ds.source_of)), d.batch_size,
                              cfg.seed, d.schedule, d.phase_min, d.phase_max, d.lead_share,
                              d.bandit_gamma)
    # packed, the ids are windows: the rare sentences are not among them (nor sampled apart)
    rare_ids = ds.rare_ids() if not d.pack else set()
    return Sampler(ds.n, d.batch_size, d.sampler, cfg.seed, rare_ids, d.arrive_step,
                   d.arrive_gap)


def _rows(x: torch.Tensor, y: torch.Tensor) -> Callable[[list[int]], Batch]:
    """Batches of single examples: targets (B, 1), so the token-loss path is the corpus one."""
    def batch(ids: list[int]) -> Batch:
        index = torch.tensor(ids, dtype=torch.long)
        xs = x[index].unsqueeze(1) if x.dtype == torch.long else x[index]
        return Batch(list(ids), xs, y[index].unsqueeze(1))
    return batch


def _tokenizer(sentences: list[str], vocab_size: int, source: str) -> Tokenizer:
    most = Tokenizer.most_pieces(sentences)
    if vocab_size > most:
        raise ConfigError(f"data.vocab_size: {vocab_size} is more than {source} can give "
                          f"(fewer than {most} pieces: its characters, the specials and one "
                          "per possible merge)")
    return Tokenizer.train(sentences, vocab_size)


def _corpus(cfg: Config) -> Dataset:
    d = cfg.data
    sentences, val_sentences = read_sentences(d.train), read_sentences(d.val)
    tok = _tokenizer(sentences, d.vocab_size, d.train)
    enc = encode_corpus(tok, sentences, cfg.model.block_size, d.train)
    enc_val = encode_corpus(tok, val_sentences, cfg.model.block_size, d.val)
    tracked = {w: set(sentences_with(sentences, w)) for w in d.tracked_words}
    pieces_of = {w: exclusive_pieces(tok, sentences, w) for w in d.tracked_words}
    n, batch, packed = len(enc), lambda ids: make_batch(enc, ids, tok.pad_id), {}
    if d.pack:
        rows = _packed(enc, cfg.model.block_size, d.train)
        n, batch = rows.n, rows.batch
        packed = {"packed": {"rows": rows.n, "tokens_dropped": rows.tokens_dropped}}
    return Dataset(
        n=n, batch=batch, row_len=cfg.model.block_size if d.pack else 0,
        # the whole-set losses stay per sentence, unpacked: they mean what an unpacked run's do
        full=make_batch(enc, list(range(len(enc))), tok.pad_id),
        full_val=make_batch(enc_val, list(range(len(enc_val))), tok.pad_id),
        n_out=tok.vocab_size, n_in=tok.vocab_size, tracked=tracked,
        pieces={tok.piece(p): p for ps in pieces_of.values() for p in ps}, tokenizer=tok,
        summary={"vocab_size": tok.vocab_size,
                 "tracked_pieces": {w: [tok.piece(p) for p in ps] for w, ps in pieces_of.items()},
                 "tracked_sentences": {w: sorted(s) for w, s in tracked.items()}, **packed})


def _packed(enc: list[list[int]], block_size: int, source: str) -> Packed:
    rows = Packed(enc, block_size)
    if not rows.n:
        raise ConfigError(f"data.pack: {source} holds {rows.tokens_dropped} tokens, fewer than "
                          f"one row of model.block_size + 1 ({block_size + 1})")
    return rows


def _mixture(cfg: Config) -> Dataset:
    """The sources, each split into training lines and held-out lines (every VAL_EVERY-th),
    concatenated in the order given; one BPE over all training lines."""
    d = cfg.data
    sentences, val_sentences, source_of, source_ids, counts = [], [], [], [], {}
    for path in d.sources:
        name = Path(path).stem
        if name in counts:
            raise CorpusError(f"{path}: two sources named {name!r} (file names must differ)")
        lines = read_sentences(path)
        train = [s for i, s in enumerate(lines) if i % VAL_EVERY != VAL_EVERY - 1]
        val_sentences += [s for i, s in enumerate(lines) if i % VAL_EVERY == VAL_EVERY - 1]
        source_ids.append(list(range(len(sentences), len(sentences) + len(train))))
        sentences += train
        source_of += [name] * len(train)
        counts[name] = {"path": path, "train": len(train), "val": len(lines) - len(train)}
    tok = _tokenizer(sentences, d.vocab_size, "data.sources")
    enc = encode_corpus(tok, sentences, cfg.model.block_size, "data.sources")
    enc_val = encode_corpus(tok, val_sentences, cfg.model.block_size, "data.sources (held out)")
    return Dataset(
        n=len(enc), batch=lambda ids: make_batch(enc, ids, tok.pad_id),
        full=make_batch(enc, list(range(len(enc))), tok.pad_id),
        full_val=make_batch(enc_val, list(range(len(enc_val))), tok.pad_id),
        n_out=tok.vocab_size, n_in=tok.vocab_size, tracked={}, pieces={}, tokenizer=tok,
        summary={"vocab_size": tok.vocab_size, "sources": counts},
        source_of=source_of, source_ids=source_ids)


def _toy(cfg: Config) -> Dataset:
    d = cfg.data
    x, y = synthetic.toy_tokens(d.n_samples, d.rare_fraction, cfg.seed)
    xv, yv = synthetic.toy_balanced(d.n_val)
    rare_tok = synthetic.TOY_RARE_TOKEN
    name = synthetic.TOY_VOCAB[rare_tok]
    rare = set(torch.nonzero((x == rare_tok) | (y == rare_tok)).flatten().tolist())
    batch = _rows(x, y)
    V = len(synthetic.TOY_VOCAB)
    return Dataset(
        n=len(x), batch=batch, full=batch(list(range(len(x)))),
        full_val=_rows(xv, yv)(list(range(len(xv)))), n_out=V, n_in=V,
        tracked={name: rare}, pieces={name: rare_tok}, names=list(synthetic.TOY_VOCAB),
        summary={"vocab_size": V, "vocab": list(synthetic.TOY_VOCAB),
                 "tracked_sentences": {name: sorted(rare)},
                 "pairs": {f"{synthetic.TOY_VOCAB[a]}->{synthetic.TOY_VOCAB[b]}":
                           int(((x == a) & (y == b)).sum()) for a, b in synthetic.TOY_PAIRS}})


def _tabular(cfg: Config) -> Dataset:
    d = cfg.data
    x, y, xv, yv, stats = synthetic.tabular(d.n_samples, d.n_val, d.n_features, d.n_classes,
                                            cfg.seed)
    batch = _rows(x, y)
    names = [f"class {c}" for c in range(d.n_classes)]
    return Dataset(
        n=len(x), batch=batch, full=batch(list(range(len(x)))),
        full_val=_rows(xv, yv)(list(range(len(xv)))), n_out=d.n_classes, n_in=d.n_features,
        tracked={}, pieces={}, names=names,
        summary={"vocab_size": d.n_classes, "vocab": names,
                 "class_counts": torch.bincount(y, minlength=d.n_classes).tolist(),
                 "feature_mean_after": float(x.mean()), "feature_std_after": float(x.std()),
                 **stats})
