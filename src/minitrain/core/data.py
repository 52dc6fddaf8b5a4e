"""Sentences -> token ids -> batches: the seeded samplers and padded (B, T) tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minitrain.core.corpus import CorpusError
from minitrain.core.tokenizer import Tokenizer

IGNORE = -1  # target id of padding: left out of the loss


@dataclass
class Batch:
    sentence_ids: list[int]
    x: torch.Tensor  # (B, T) input ids, padded with PAD
    y: torch.Tensor  # (B, T) next-token targets, IGNORE at padding

    def to(self, device: torch.device) -> Batch:
        return Batch(self.sentence_ids, self.x.to(device), self.y.to(device))


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
