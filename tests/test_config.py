"""Configs: every shipped one validates; bad ones fail with one line naming file and key."""

import math
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from minitrain.core import config
from minitrain.core.config import ConfigError

SHIPPED = sorted(ROOT.glob("experiments/*/config.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_every_shipped_config_validates(path):
    cfg = config.load(path)
    assert (ROOT / cfg.data.train).is_file() and (ROOT / cfg.data.val).is_file()


def test_phase19_pair_differs_only_in_grad_clip():
    a = yaml.safe_load((ROOT / "experiments/19-control/config.yaml").read_text())
    b = yaml.safe_load((ROOT / "experiments/19-break-no-clip/config.yaml").read_text())
    assert a["optimizer"].pop("grad_clip") == 1.0
    assert b["optimizer"].pop("grad_clip") is None
    assert a == b
    cfg = config.load(ROOT / "experiments/19-break-no-clip/config.yaml")
    assert cfg.optimizer.grad_clip is None


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,key,what", [
    ("optimizer: {grad_clip: -1}", "optimizer.grad_clip", "positive"),
    ("optimizer: {grad_clip: lots}", "optimizer.grad_clip", "expected a number"),
    ("optimizer: {lr: [1]}", "optimizer.lr", "expected a number"),
    ("model: {n_layer: 2.5}", "model.n_layer", "expected an integer"),
    ("model: {n_embd: 30, n_head: 4}", "model.n_embd", "divisible"),
    ("model: {tie_weights: 1}", "model.tie_weights", "true or false"),
    ("optimiser: {lr: 1}", "optimiser", "unknown key"),
    ("optimizer: {momentun: 0.9}", "optimizer.momentun", "unknown key"),
    ("optimizer: {clip_mode: norm}", "optimizer.clip_mode", "one of"),
    ("optimizer: {clip_z: 2, clip_mode: value}", "optimizer.clip_z", "global"),
    ("optimizer: {skip_z: -1}", "optimizer.skip_z", "positive"),
    ("optimizer: {name: adam}", "optimizer.name", "adamw, sgd"),
    ("data: {sampler: sorted}", "data.sampler", "one of"),
    ("data: 3", "data", "expected a mapping"),
    ("train: {device: gpu}", "train.device", "one of cpu, cuda, auto"),
    ("train: {dtype: half}", "train.dtype", "one of float32, bfloat16, float16"),
    ("train: {compile: yes please}", "train.compile", "true or false"),
])
def test_bad_values_name_file_and_key(tmp_path, text, key, what):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: {key}:") and what in msg and "\n" not in msg


def test_overrides_go_through_validation(tmp_path):
    p = _write(tmp_path, "optimizer: {grad_clip: 1.0}")
    assert config.load(p, ["optimizer.grad_clip=inf"]).optimizer.grad_clip is None
    assert config.load(p, ["optimizer.grad_clip=null"]).optimizer.grad_clip is None
    assert config.load(p, ["optimizer.grad_clip=0.5", "seed=7"]).seed == 7
    assert config.load(p, ["optimizer.betas=[0.9, 0.99]"]).optimizer.betas == [0.9, 0.99]
    with pytest.raises(ConfigError, match="optimizer.grad_clip: must be a positive"):
        config.load(p, ["optimizer.grad_clip=-2"])
    with pytest.raises(ConfigError, match="optimizer.gradclip: unknown key"):
        config.load(p, ["optimizer.gradclip=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        config.load(p, ["seed"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(_write(tmp_path, "model: {n_layer: 2"))
    assert math.isclose(config.load(_write(tmp_path, "")).optimizer.lr, 3e-3)


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    p = _write(tmp_path, "optimizer: {grad_clip: -1}")
    r = subprocess.run([sys.executable, "-m", "minitrain", "train", str(p), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "optimizer.grad_clip" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_gpt2_small_config_is_gpt2_small_shaped():
    """GPT-2 small's shape on our BPE: the vocabulary it asks for is what the BPE reaches on
    the corpus, and the parameter count is GPT-2's formula with that vocabulary."""
    import torch

    from minitrain.core.corpus import read_sentences
    from minitrain.core.model import GPT
    from minitrain.core.tokenizer import Tokenizer

    cfg = config.load(ROOT / "experiments/gpt2-small/config.yaml")
    m = cfg.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (12, 12, 768, 1024)
    assert cfg.train.device == "cuda" and cfg.train.dtype == "bfloat16"
    tok = Tokenizer.train(read_sentences(ROOT / cfg.data.train), cfg.data.vocab_size)
    assert tok.vocab_size == cfg.data.vocab_size
    with torch.device("meta"):  # shapes only: no 350 MB of weights
        n_params = sum(p.numel() for p in GPT(m, tok.vocab_size).parameters())
    V, T, C, L = tok.vocab_size, m.block_size, m.n_embd, m.n_layer
    assert n_params == V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C == 87_386_880


def test_a_section_built_in_code_is_checked_too():
    """Validation runs wherever a config is built, not only when a file is loaded; "no clip"
    has one spelling however it is written."""
    from minitrain.core.config import ModelConfig, OptimizerConfig, clip_threshold

    with pytest.raises(ConfigError, match=r"^optimizer\.grad_clip: must be a positive"):
        OptimizerConfig(grad_clip=-1.0)
    assert OptimizerConfig(grad_clip=math.inf).grad_clip is None
    assert clip_threshold(math.inf) is None and clip_threshold(0.5) == 0.5
    with pytest.raises(ConfigError, match=r"^model\.kind: 'mlp' cannot read"):
        config.Config(model=ModelConfig(kind="mlp"))
    with pytest.raises(ConfigError, match=r"^my\.yaml: optimizer\.grad_clip: must be"):
        config.from_dict({"optimizer": {"grad_clip": 0}}, "my.yaml")
