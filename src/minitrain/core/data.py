"""Sentences -> token ids -> batches: the seeded samplers, padded (B, T) tensors, and packed
rows (`data.pack`: windows of one token stream)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minitrain.core.corpus import CorpusError
from minitrain.core.tokenizer import Tokenizer

IGNORE = -1  # target id of padding: left out of the loss


@dataclass
class Batch:
    sentence_ids: list[int]  # packed: the distinct sentences touched, in order of first sight
    x: torch.Tensor  # (B, T) input ids, padded with PAD
    y: torch.Tensor  # (B, T) next-token targets, IGNORE at padding
    sentence: torch.Tensor | None = None  # packed: (B, T) sentence id of each target token
    spans: list[list[list[int]]] | None = None  # packed: per row [sentence_id, start, end)

    def to(self, device: torch.device) -> Batch:
        sentence = None if self.sentence is None else self.sentence.to(device)
        return Batch(self.sentence_ids, self.x.to(device), self.y.to(device), sentence,
                     self.spans)


def encode_corpus(tok: Tokenizer, sentences: list[str], block_size: int,
                  name: str) -> list[list[int]]:
    encoded = [tok.encode_sentence(s) for s in sentences]
    for i, ids in enumerate(encoded):
        if len(ids) - 1 > block_size:
            raise CorpusError(
                f"{name}: line {i + 1} is {len(ids)} tokens with BOS/EOS, longer than "
                f"model.block_size + 1 ({block_size + 1})"
            )
    return encoded


def make_batch(encoded: list[list[int]], ids: list[int], pad_id: int) -> Batch:
    T = max(len(encoded[i]) for i in ids) - 1
    x = torch.full((len(ids), T), pad_id, dtype=torch.long)
    y = torch.full((len(ids), T), IGNORE, dtype=torch.long)
    for row, i in enumerate(ids):
        seq = torch.tensor(encoded[i])
        x[row, : len(seq) - 1] = seq[:-1]
        y[row, : len(seq) - 1] = seq[1:]
    return Batch(list(ids), x, y)


class Packed:
    """The sentences (each BOS ... EOS) joined in order into one token stream, cut into
    consecutive windows of block_size + 1 tokens: row k is x = window[:-1], y = window[1:].

    As in GPT-2's training a row may span a sentence boundary: no position is padding, and the
    EOS/BOS pair marks the boundary; attention stays within the row (rows are independent),
    so a row's start sees no context, even mid-sentence. The stream's tail shorter than a
    window is dropped (`tokens_dropped`), as is the transition between two windows (the last
    token of one is not the first input of the next)."""

    def __init__(self, encoded: list[list[int]], block_size: int):
        W = block_size + 1
        stream = torch.tensor([t for ids in encoded for t in ids], dtype=torch.long)
        owner = torch.repeat_interleave(torch.arange(len(encoded)),
                                        torch.tensor([len(ids) for ids in encoded]))
        self.n = len(stream) // W  # windows
        self.tokens_dropped = len(stream) - self.n * W
        self.windows = stream[: self.n * W].view(self.n, W)
        self.owner = owner[: self.n * W].view(self.n, W)  # sentence id of each token

    def batch(self, ids: list[int]) -> Batch:
        index = torch.tensor(ids, dtype=torch.long)
        w = self.windows[index]
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        sentence = self.owner[index, 1:]  # a position's sentence: its target token's
        spans = [_runs(row) for row in sentence.tolist()]
        touched = dict.fromkeys(s for row in spans for s, _, _ in row)
        return Batch(list(touched), x, y, sentence, spans)


def _runs(row: list[int]) -> list[list[int]]:
    """[value, start, end) of each run of equal values in `row`."""
    out = []
    for pos, s in enumerate(row):
        if out and out[-1][0] == s:
            out[-1][2] = pos + 1
        else:
            out.append([s, pos, pos + 1])
    return out


class Sampler:
    """Seeded stream of sentence-id batches. `rare_ids` are the sentences holding a tracked word.

    random:   batch_size ids drawn uniformly, with replacement.
    shuffle:  a fresh permutation every epoch, cut into consecutive batches.
    spread:   like random, but at most one rare sentence per batch (a second rare draw is
              replaced by a draw among the others): stratified batching.
    arrival:  the rare sentences are held back (batches draw from the others only) until
              `arrive_step`, whose batch holds all of them, the rest of it drawn as usual;
              afterwards draws are over all sentences with the spread rule. Models new data
              reaching a model that has learned everything else.
    arrival-seen:   ablation: the rare sentences are in the stream from step 0 (spread rule)
              and the same all-rare batch comes at `arrive_step`.
    arrival-spread: ablation: held back as in arrival, then one rare sentence per batch every
              `arrive_gap` steps from `arrive_step` on, never two together.
    """

    def __init__(self, n: int, batch_size: int, kind: str, seed: int, rare_ids=(),
                 arrive_step: int = 0, arrive_gap: int = 25):
        self.n, self.batch_size, self.kind = n, batch_size, kind
        self.rare = sorted(set(rare_ids))
        self.common = [i for i in range(n) if i not in set(self.rare)]
        self.arrive_step, self.arrive_gap = arrive_step, arrive_gap
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0
        self._epoch: list[int] = []

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "step": self.step, "epoch": list(self._epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.step, self._epoch = state["step"], list(state["epoch"])

    def observe(self, loss: float) -> None:  # the mixer's bandit reads the loss; not these
        pass

    def _common(self, k: int) -> list[int]:
        return [self.common[j] for j in torch.randint(len(self.common), (k,), generator=self.gen)]

    def _at_most_one_rare(self, ids: list[int]) -> list[int]:
        out, seen = [], False
        for i in ids:
            if i in self.rare:
                if seen:
                    i = self._common(1)[0]
                seen = True
            out.append(i)
        return out

    def next_ids(self) -> list[int]:
        B, kind, step = self.batch_size, self.kind, self.step
        self.step += 1
        if kind == "shuffle":
            if len(self._epoch) < B:
                self._epoch += torch.randperm(self.n, generator=self.gen).tolist()
            ids, self._epoch = self._epoch[:B], self._epoch[B:]
            return ids
        if kind == "random":
            return torch.randint(self.n, (B,), generator=self.gen).tolist()
        held = kind in ("arrival", "arrival-spread") and step < self.arrive_step
        if held:
            return self._common(B)
        if kind == "arrival-spread":
            k, due = divmod(step - self.arrive_step, self.arrive_gap)
            last = self.arrive_step + self.arrive_gap * len(self.rare)
            if step < last:  # until the last one has arrived, rare ones come only on schedule
                return ([self.rare[k]] if due == 0 else []) + self._common(B - (due == 0))
        if kind in ("arrival", "arrival-seen") and step == self.arrive_step:
            return self.rare + self._common(max(0, B - len(self.rare)))
        return self._at_most_one_rare(torch.randint(self.n, (B,), generator=self.gen).tolist())
