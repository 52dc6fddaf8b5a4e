"""Packed rows (`data.pack`): windows of the joined sentences, every position a real token; the
sentence of each target, the spans, the token log and the reports agree with the corpus; rows
are independent; the samplers stay seeded; the refused combinations read as one line."""

import copy
import json

import numpy as np
import pytest
import torch

from conftest import ROOT
from minitrain import cli
from minitrain.core import config, datasets, rundir, zoo
from minitrain.core.corpus import read_sentences
from minitrain.core.data import IGNORE, Packed, encode_corpus, make_batch
from minitrain.core.model import token_losses
from minitrain.core.train import train
from minitrain.reports.text import training_sentences

CONFIG = ROOT / "experiments/19-control/config.yaml"
SMALL = [f"data.train={ROOT / 'corpus/train.txt'}", f"data.val={ROOT / 'corpus/val.txt'}",
         "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.eval_every=6",
         "optimizer.warmup_steps=2", "data.sampler=shuffle"]


def _cfg(*extra):
    return config.load(CONFIG, [*SMALL, *extra])


@pytest.fixture(scope="module")
def packed():
    """The packed dataset and the encoded corpus it was built from."""
    cfg = _cfg("data.pack=true")
    ds = datasets.build(cfg)
    enc = encode_corpus(ds.tokenizer, read_sentences(cfg.data.train), cfg.model.block_size, "")
    return cfg, ds, enc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short packed run: 12 steps of 12 windows under shuffle draw every window once."""
    out = tmp_path_factory.mktemp("packed") / "run"
    cfg = _cfg("data.pack=true", "train.steps=12", "train.checkpoint_every=0")
    train(cfg, out, progress=False)
    return cfg, rundir.load_run(out)


def test_rows_are_whole_windows_and_join_back_into_the_stream(packed):
    cfg, ds, enc = packed
    T = cfg.model.block_size
    stream = [t for ids in enc for t in ids]
    b = ds.batch(list(range(ds.n)))
    assert b.x.shape == b.y.shape == (ds.n, T) and (b.y != IGNORE).all()
    assert (b.x != ds.tokenizer.pad_id).all() and ds.row_len == T
    windows = torch.cat([b.x, b.y[:, -1:]], dim=1)  # each row's block_size + 1 tokens
    assert windows.flatten().tolist() == stream[: ds.n * (T + 1)]
    assert ds.summary["packed"] == {"rows": ds.n, "tokens_dropped": len(stream) % (T + 1)}
    assert len(ds.full.x) == len(enc)  # the whole-set losses stay per sentence


def test_sentence_and_spans_name_each_targets_sentence(packed):
    cfg, ds, enc = packed
    owner = [s for s, ids in enumerate(enc) for _ in ids]
    W = cfg.model.block_size + 1
    ids = [5, 0, 5, ds.n - 1]
    b = ds.batch(ids)
    for row, k in enumerate(ids):  # target at pos p is stream token k * W + 1 + p
        assert b.sentence[row].tolist() == owner[k * W + 1:(k + 1) * W]
        from_spans = [s for s, start, end in b.spans[row] for _ in range(start, end)]
        assert from_spans == b.sentence[row].tolist()
        assert all(a[2] == c[1] and a[0] != c[0] for a, c in zip(b.spans[row], b.spans[row][1:]))
    touched = [s for row in b.spans for s, _, _ in row]
    assert b.sentence_ids == list(dict.fromkeys(touched))
    moved = b.to(torch.device("cpu"))
    assert torch.equal(moved.sentence, b.sentence) and moved.spans == b.spans


def test_unpacked_batches_are_make_batchs():
    cfg = _cfg()
    ds = datasets.build(cfg)
    enc = encode_corpus(ds.tokenizer, read_sentences(cfg.data.train), cfg.model.block_size, "")
    ids = [3, 1, 4, 1, 5]
    a, b = ds.batch(ids), make_batch(enc, ids, ds.tokenizer.pad_id)
    assert a.sentence_ids == b.sentence_ids and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.sentence is None and a.spans is None and "packed" not in ds.summary
    assert ds.row_len == 0 and ds.n == len(enc)


def test_the_tail_shorter_than_a_window_is_dropped():
    rows = Packed([[1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 2]], block_size=3)
    assert rows.windows.tolist() == [[1, 5, 6, 2], [1, 7, 2, 1]] and rows.tokens_dropped == 3
    b = rows.batch([1])
    assert b.sentence.tolist() == [[1, 1, 2]] and b.spans == [[[1, 0, 2], [2, 2, 3]]]


@pytest.mark.parametrize("kind", ["random", "shuffle"])
def test_samplers_draw_windows_seeded(packed, kind):
    cfg, ds, _ = packed
    cfg = copy.deepcopy(cfg)
    cfg.data.sampler = kind

    def draws(seed):
        cfg.seed = seed
        s = datasets.sampler(cfg, ds)
        return [s.next_ids() for _ in range(20)]

    a = draws(1)
    assert a == draws(1) and a != draws(2)
    assert all(0 <= i < ds.n for ids in a for i in ids)
    if kind == "shuffle":  # an epoch is every window once
        first = [i for ids in a for i in ids][: ds.n]
        assert sorted(first) == list(range(ds.n))


def test_the_logs_agree_with_the_corpus(run, packed):
    _, ds, enc = packed
    cfg, r = run
    owner = np.array([s for s, ids in enumerate(enc) for _ in ids])
    stream = np.array([t for ids in enc for t in ids])
    W = cfg.model.block_size + 1
    tl = r.token_losses()
    assert len(tl) == 12 * 12 * cfg.model.block_size  # every position scored
    for line in r.batches:
        step = tl[tl["step"] == line["step"]]
        spans = line["spans"]
        for row, row_spans in enumerate(spans):
            recs = step[step["row"] == row]
            recs = recs[np.argsort(recs["pos"])]
            k = next(k for k in range(ds.n)  # the window whose tokens this row holds
                     if (stream[k * W:(k + 1) * W - 1] == recs["token"]).all())
            assert (recs["target"] == stream[k * W + 1:(k + 1) * W]).all()
            assert (recs["sentence"] == owner[k * W + 1:(k + 1) * W]).all()
            assert [s for s, a, b in row_spans for _ in range(a, b)] == recs["sentence"].tolist()
        ids = list(dict.fromkeys(s for row in spans for s, _, _ in row))
        assert line["sentence_ids"] == ids
        tracked = set(r.summary["tracked_sentences"]["written"])
        assert line["words"] == {"written": sum(i in tracked for i in ids)}


def test_rows_are_independent(run):
    """Step 0's logged losses, row by row, are those of the initial model on that window
    alone: nothing crosses from one row into the next."""
    cfg, r = run
    torch.manual_seed(cfg.seed)  # as train.setup, before the model is built
    V = r.summary["vocab_size"]
    model = zoo.build(cfg.model, V, V)
    tl = r.token_losses(0)
    for row in range(cfg.data.batch_size):
        recs = tl[tl["row"] == row]
        recs = recs[np.argsort(recs["pos"])]
        x, y = torch.tensor(recs["token"][None]).long(), torch.tensor(recs["target"][None]).long()
        with torch.no_grad():
            alone = token_losses(model(x), y, IGNORE)[0].numpy()
        np.testing.assert_allclose(recs["loss"], alone, rtol=1e-5, atol=1e-6)


def test_the_reports_rebuild_the_sentences(run, packed):
    _, _, enc = packed
    _, r = run
    got = training_sentences(r)
    assert len(got) > 0.9 * len(enc)  # left out: a sentence whose EOS the window cut skips
    assert all(pieces == tuple(enc[s][1:]) for s, pieces in got.items())


@pytest.mark.parametrize("extra", [
    ["data.sampler=arrival"], ["data.sampler=arrival-seen"], ["data.sampler=arrival-spread"],
    ["data.sampler=spread"], ["data.kind=toy-tokens", "model.kind=embed-linear"],
    ["data.kind=tabular", "model.kind=mlp"],
])
def test_refused_combinations_are_one_line(tmp_path, capsys, extra):
    sets = [a for item in ["data.pack=true", *extra] for a in ("--set", item)]
    code = cli.main(["train", str(CONFIG), *sets, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "data.pack" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_summary_says_what_was_packed(run):
    _, r = run
    summary = json.loads((r.path / rundir.SUMMARY).read_text())
    assert summary["packed"]["rows"] > 0 and summary["packed"]["tokens_dropped"] >= 0
