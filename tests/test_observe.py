"""The observers' fast paths against the plain code they replace: the same bytes."""

import json
import math

import pytest
import torch

from minitrain.core import rundir, zoo
from minitrain.core.config import ModelConfig
from minitrain.core.observe import MomentLog
from minitrain.core.optim import SGD, AdamW
from minitrain.core.record import StepRecord
from minitrain.core.rundir import SLOT, LineTemplate


def _dumps(obj):
    return json.dumps(rundir.clean(obj), separators=(",", ":"))


@pytest.mark.parametrize("numbers", [
    [3, 0.1, -2.5e-12, 1e300, 7, 1 / 3],
    [3, math.nan, math.inf, -math.inf, 7, 0.0],
    [3, 1e308, 1e308, 1.0, 7, -0.0],  # a sum that overflows: still the right bytes
])
def test_line_template_writes_json_dumps_bytes(numbers):
    def record(x):
        return {"step": x[0], "a%s b": {"\u2581written": x[1], "%": x[2]}, "c": [[x[3], x[4]]],
                "d": {"e": x[5], "fixed": 12}}
    assert LineTemplate(record([SLOT] * 6)).fill(numbers) == _dumps(record(numbers))
    with pytest.raises(ValueError):
        LineTemplate(record([SLOT] * 6)).fill(numbers[:-1])


def _reference_moments(opt, names, tables, tracked, step):
    """The moments line as the plain per-tensor code wrote it (one torch op per number)."""
    has_v = opt.v is not None
    tensors = {}
    for i, name in enumerate(names):
        t = {"grad_norm": float(torch.linalg.vector_norm(opt.params[i].grad)),
             "m_norm": float(torch.linalg.vector_norm(opt.m[i]))}
        if has_v:
            t.update(v_norm=float(torch.linalg.vector_norm(opt.v[i])), v_max=float(opt.v[i].max()))
        tensors[name] = t
    index = {id(p): i for i, p in enumerate(opt.params)}
    out = {p: {"id": r} for p, r in tracked.items()}
    top = []
    for table, w in tables.items():
        k = index[id(w)]
        row_norms = torch.linalg.vector_norm(w.grad, dim=1)
        if table == "wte":
            vals, idx = torch.topk(row_norms, min(5, len(row_norms)))
            top = [[int(i), float(x)] for x, i in zip(vals, idx)]
        for p, r in tracked.items():
            row = {"grad_norm": float(row_norms[r]),
                   "m_norm": float(torch.linalg.vector_norm(opt.m[k][r]))}
            if has_v:
                row.update(v_mean=float(opt.v[k][r].mean()), v_max=float(opt.v[k][r].max()))
            out[p][table] = row
    return _dumps({"step": step, "tensors": tensors, "tracked": out, "top_grad_rows": top})


@pytest.mark.parametrize("make_opt", [lambda ps: AdamW(ps, lr=0.01, grad_clip=0.5),
                                      lambda ps: SGD(ps, lr=0.01, grad_clip=0.5)])
@pytest.mark.parametrize("tracked", [{"\u2581written": 7, "x": 3}, {}])
@pytest.mark.parametrize("tie", [False, True])
def test_moment_log_writes_the_plain_codes_bytes(tmp_path, make_opt, tracked, tie):
    torch.manual_seed(0)
    model = zoo.build(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, tie_weights=tie),
                      30, 30)
    opt = make_opt(list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    tables = zoo.vocab_tables(model)
    log = MomentLog(tmp_path, opt, names, tables, tracked)
    expected = []
    for step in range(3):
        x = torch.randint(0, 30, (4, 8))
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        stats = opt.step()
        log.on_step(StepRecord(step, 0.01, loss.item(), stats, None, None, 32, 1.0))
        expected.append(_reference_moments(opt, names, tables, tracked, step))
    log.close()
    assert (tmp_path / rundir.MOMENTS).read_text().splitlines() == expected
