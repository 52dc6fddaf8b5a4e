"""The table of log kinds (core/logs.py) is the one place a log is declared: the run-format doc
has a section for each, each writer writes its file, a run writes only files the table (or the
run directory's fixed files) names, and every record holds the keys the table requires."""

import inspect
import json
import re

import pytest

from conftest import ROOT
from minitrain.core import config, logs, observe, probes, rundir
from minitrain.core.train import train

FIXED = {rundir.CONFIG, rundir.TOKENIZER, rundir.SUMMARY, rundir.CHECKPOINT, rundir.LOCK}


def test_the_run_format_doc_has_a_section_for_each_file_and_no_other():
    doc = (ROOT / "docs/run-format.md").read_text(encoding="utf-8")
    headed = set(re.findall(r"^## `([\w.]+)`", doc, flags=re.M))
    assert headed == {k.name for k in logs.LOGS} | FIXED


@pytest.mark.parametrize("kind", logs.LOGS, ids=lambda k: k.name)
def test_each_writer_writes_its_file(kind):
    cls = getattr(observe, kind.writer, None) or getattr(probes, kind.writer)
    constant = next(c for c in dir(logs) if c.isupper() and getattr(logs, c) == kind.name)
    assert f"rundir.{constant})" in inspect.getsource(cls.__init__)
    assert kind.trim in ("lines", "step", "records")


def test_a_run_writes_the_tables_files_with_their_keys(tmp_path):
    cfg = config.load(ROOT / "experiments/19-control/config.yaml", [
        "data.vocab_size=400", "data.batch_size=8", "model.n_layer=1", "model.n_embd=32",
        "model.n_head=2", "train.steps=6", "train.eval_every=3", "optimizer.warmup_steps=2",
        "train.extra_logs=[token_losses, moments]", "train.checkpoint_every=3"])
    train(cfg, tmp_path / "run", progress=False)
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert written <= {k.name for k in logs.LOGS} | FIXED
    for kind in logs.LOGS:
        if kind.always or kind.name in ("moments.jsonl", "token_losses.bin"):
            assert kind.name in written
        if kind.name in written and kind.keys:
            lines = (tmp_path / "run" / kind.name).read_text(encoding="utf-8").splitlines()
            assert lines and all(set(kind.keys) <= json.loads(x).keys() for x in lines)
