"""Sentences -> token ids -> batches: the seeded samplers and padded (B, T) tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minitrain.corpus import CorpusError
from minitrain.tokenizer import Tokenizer

IGNORE = -1  # target id of padding: left out of the loss


@dataclass
class Batch:
    sentence_ids: list[int]
    x: torch.Tensor  # (B, T) input ids, padded with PAD
    y: torch.Tensor  # (B, T) next-token targets, IGNORE at padding


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


class Sampler:
    """Seeded stream of sentence-id batches.

    random: each batch draws batch_size ids uniformly, with replacement (the default: any
            batch may, by chance, hold several rare sentences).
    shuffle: a fresh permutation every epoch, cut into consecutive batches.
    spread: like random, but a batch takes at most one sentence from `rare_ids`; a second
            rare draw is replaced by a fresh draw among the others (stratified batching).
    """

    def __init__(self, n: int, batch_size: int, kind: str, seed: int, rare_ids=()):
        self.n, self.batch_size, self.kind = n, batch_size, kind
        self.rare = set(rare_ids)
        self.common = [i for i in range(n) if i not in self.rare]
        self.gen = torch.Generator().manual_seed(seed)
        self._epoch: list[int] = []

    def next_ids(self) -> list[int]:
        B = self.batch_size
        if self.kind == "shuffle":
            if len(self._epoch) < B:
                self._epoch += torch.randperm(self.n, generator=self.gen).tolist()
            ids, self._epoch = self._epoch[:B], self._epoch[B:]
            return ids
        ids = torch.randint(self.n, (B,), generator=self.gen).tolist()
        if self.kind == "spread":
            seen_rare = False
            for k, i in enumerate(ids):
                if i in self.rare:
                    if seen_rare:
                        j = int(torch.randint(len(self.common), (1,), generator=self.gen))
                        ids[k] = self.common[j]
                    seen_rare = True
        return ids
