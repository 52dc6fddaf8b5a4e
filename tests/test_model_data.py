"""The GPT and the batches: loss at init, causality, overfitting one batch, seeded samplers."""

import math

import torch

from minitrain.core.config import ModelConfig
from minitrain.core.data import IGNORE, Sampler, make_batch
from minitrain.core.model import GPT, token_losses
from minitrain.core.optim import AdamW


def _model(V=50, tie=True):
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, tie_weights=tie), V)


def test_loss_at_init_is_about_ln_v():
    m = _model()
    x, y = torch.randint(3, 50, (8, 12)), torch.randint(3, 50, (8, 12))
    loss = token_losses(m(x), y, IGNORE).mean()
    assert abs(loss.item() - math.log(50)) < 0.1


def test_causal_and_padding_does_not_leak():
    m = _model(tie=False)
    x = torch.randint(3, 50, (1, 10))
    y = x.clone()
    y[0, 6:] = torch.randint(3, 50, (4,))
    torch.testing.assert_close(m(x)[0, :6], m(y)[0, :6])
    tied = _model()
    assert m.head.weight is not m.wte.weight and tied.head.weight is tied.wte.weight


def test_batches_pad_and_ignore():
    enc = [[1, 5, 6, 2], [1, 7, 2]]
    b = make_batch(enc, [0, 1], pad_id=0)
    assert b.x.tolist() == [[1, 5, 6], [1, 7, 0]]
    assert b.y.tolist() == [[5, 6, 2], [7, 2, IGNORE]]


def test_single_batch_overfits():
    m = _model()
    enc = [[1, *torch.randint(3, 50, (10,)).tolist(), 2] for _ in range(4)]
    b = make_batch(enc, [0, 1, 2, 3], 0)
    opt = AdamW(m.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    for _ in range(150):
        loss = token_losses(m(b.x), b.y, IGNORE).sum() / (b.y != IGNORE).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # all that is left is the first token after BOS: 4 equally likely sentences, ln 4 nats
    first = token_losses(m(b.x), b.y, IGNORE)[:, 0].mean()
    assert abs(first.item() - math.log(4)) < 0.05
    assert loss.item() < (math.log(4) * 4 + 0.1) / int((b.y != IGNORE).sum())


def test_samplers_are_seeded_and_spread_keeps_rare_apart():
    rare = {3, 17, 40, 41, 99}
    for kind in ("random", "shuffle", "spread"):
        a, b = Sampler(120, 8, kind, 42, rare), Sampler(120, 8, kind, 42, rare)
        assert [a.next_ids() for _ in range(50)] == [b.next_ids() for _ in range(50)]
    s = Sampler(120, 8, "spread", 0, rare)
    assert all(sum(i in rare for i in s.next_ids()) <= 1 for _ in range(2000))
    sh = Sampler(120, 8, "shuffle", 0)
    assert sorted(i for _ in range(15) for i in sh.next_ids()) == list(range(120))


def test_arrival_samplers():
    rare = [3, 17, 40, 41, 99]

    def stream(kind, steps=160):
        s = Sampler(120, 12, kind, 42, rare, arrive_step=100, arrive_gap=10)
        return [s.next_ids() for _ in range(steps)]

    def n_rare(ids):
        return sum(i in rare for i in ids)

    held = stream("arrival")
    assert all(n_rare(b) == 0 for b in held[:100])
    assert sorted(held[100][:5]) == rare and len(held[100]) == 12
    assert all(n_rare(b) <= 1 for b in held[101:])
    seen = stream("arrival-seen")
    assert sum(n_rare(b) for b in seen[:100]) > 10 and n_rare(seen[100]) == 5
    spread = stream("arrival-spread")
    arrivals = [(step, ids[0]) for step, ids in enumerate(spread) if n_rare(ids)]
    assert arrivals[:5] == [(100 + 10 * k, r) for k, r in enumerate(rare)]
    assert all(n_rare(b) <= 1 for b in spread)
