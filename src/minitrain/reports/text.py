"""What a corpus run says and what it could have learnt: the training sentences rebuilt from
its per-token log, the lowest whole-set loss a causal model can reach on them, and text drawn
from its checkpoint (`minitrain sample`)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from minitrain.core import restore, rundir
from minitrain.core.rundir import RunDirError


def training_sentences(run: rundir.Run) -> dict[int, tuple[int, ...]]:
    """Sentence id -> its pieces after BOS, EOS last, as the token-loss log saw them (a
    sentence never drawn is absent)."""
    if not (run.path / rundir.TOKEN_LOSSES).is_file():
        raise RunDirError(f"{run.path}: no {rundir.TOKEN_LOSSES} (train.extra_logs): the "
                          "training sentences cannot be read back")
    tl = run.token_losses()
    first = tl[np.unique(tl[["sentence", "pos"]], return_index=True)[1]]  # one per position
    if run.config.get("data", {}).get("pack"):
        tok = run.tokenizer()
        return _packed_sentences(first, tok.bos_id, tok.eos_id)
    out: dict[int, list[int]] = defaultdict(list)
    for rec in first[np.lexsort((first["pos"], first["sentence"]))]:
        out[int(rec["sentence"])].append(int(rec["target"]))
    return {s: tuple(p) for s, p in out.items()}


def _packed_sentences(first: np.ndarray, bos: int, eos: int) -> dict[int, tuple[int, ...]]:
    """Packed rows (data.pack): `pos` is a row position. A sentence sits at fixed positions of
    one window, or of two in a row: its head from its BOS target (or from a row whose first
    input is BOS), then its tail from a row's start, whose first input is the piece the cut
    between windows left unscored. A sentence with a window never drawn is left out, as is one
    whose EOS is that unscored piece."""
    recs = first[np.lexsort((first["pos"], first["sentence"]))]
    starts = np.flatnonzero(np.r_[True, recs["sentence"][1:] != recs["sentence"][:-1]])
    out = {}
    for a, b in zip(starts, np.r_[starts[1:], len(recs)]):
        pos, target, token = (recs[k][a:b].tolist() for k in ("pos", "target", "token"))
        if bos in target:  # the head starts mid-row: the tail, if any, is at positions before it
            i = target.index(bos)
            pieces = target[i + 1:]
            if pieces[-1:] != [eos] and i and pos[0] == 0:
                pieces += [token[0], *target[:i]]
        else:  # the sentence starts a row, or its head's window was never drawn
            pieces = target if pos[0] == 0 and token[0] == bos else []
        if pieces[-1:] == [eos]:
            out[int(recs["sentence"][a])] = tuple(pieces)
    return out


def memorisation_floor(sentences: dict[int, tuple[int, ...]]) -> float:
    """The lowest mean token loss a causal model can have on these sentences: where several
    sentences share a prefix, the next piece is uncertain even to a model that has memorised
    every one of them (each sentence and position counted once, as the whole-set loss does)."""
    nexts: dict[tuple, Counter] = defaultdict(Counter)
    for pieces in sentences.values():
        for p, t in enumerate(pieces):
            nexts[pieces[:p]][t] += 1
    total, n = 0.0, 0
    for pieces in sentences.values():
        for p, t in enumerate(pieces):
            c = nexts[pieces[:p]]
            total -= math.log(c[t] / sum(c.values()))
            n += 1
    return total / n if n else math.nan


def sample(path: str | Path, prompt: str = "", tokens: int = 40, temperature: float = 0.8,
           n: int = 1, seed: int = 0) -> dict:
    """`n` texts from the run's checkpoint after BOS + `prompt`: greedy at temperature 0,
    seeded otherwise. Each: its text, whether it ended with EOS, whether it is a training
    sentence word for word (judged on pieces, from the run's own logs)."""
    if tokens < 1 or n < 1 or not temperature >= 0:
        raise RunDirError("sample: --tokens and --n must be at least 1, --temperature >= 0")
    path = Path(path)
    run = rundir.load_run(path)
    model, step = restore.final_model(path)  # first: it refuses a run that writes no text
    tok = run.tokenizer()
    known = set(training_sentences(run).values()) if \
        (path / rundir.TOKEN_LOSSES).is_file() else set()
    gen = torch.Generator().manual_seed(seed)
    start = [tok.bos_id, *tok.encode(prompt)]
    texts = []
    for _ in range(n):
        new = model.generate(start, tokens, temperature, tok.eos_id, gen)
        ended = bool(new) and new[-1] == tok.eos_id
        whole = tuple(start[1:] + new)
        texts.append({"text": tok.decode(start[1:] + [i for i in new if i != tok.eos_id]),
                      "ends_with_eos": ended, "training_sentence": ended and whole in known})
    return {"run": str(path), "checkpoint_step": step, "prompt": prompt,
            "temperature": temperature, "seed": seed, "samples": texts,
            "eos_share": sum(t["ends_with_eos"] for t in texts) / n,
            "training_share": sum(t["training_sentence"] for t in texts) / n
            if known else None}


def print_samples(result: dict, as_json: bool = False) -> None:
    if as_json:
        import json

        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    how = "greedy" if result["temperature"] == 0 else \
        f"temperature {result['temperature']:g}, seed {result['seed']}"
    print(f"{result['run']}: checkpoint at step {result['checkpoint_step']}, {how}")
    for s in result["samples"]:
        mark = "training sentence" if s["training_sentence"] else \
            ("ends with EOS" if s["ends_with_eos"] else "no EOS")
        print(f"  [{mark}] {s['text']}")
    share = result["training_share"]
    print(f"end with EOS: {result['eos_share']:.0%}; training sentences word for word: "
          f"{'not known (no token-loss log)' if share is None else f'{share:.0%}'}")
