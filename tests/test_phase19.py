"""The flagship exercise, for real: the shipped phase-19 configs reproduce the spike, the
control contains it, so does Run B with the clip switched on at the arrival, the 'seen from
the start' ablation has no spike, and each compare block on the exercise page is what these
runs give (the page's eight runs, trained once for the module)."""

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from minitrain.core import config
from minitrain.core.rundir import load_run
from minitrain.core.train import train
from minitrain.reports import pages
from minitrain.reports.compare import markdown, report
from minitrain.reports.measure import norm_ratios

PAGE = ROOT / "experiments/19-break-no-clip/README.md"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phase19")
    out = {}
    # the page's runs (its compare blocks), 19-clip-0.5 as `grad_clip=0.5 just phase-19-train`
    # makes it: the control with the clip at 0.5
    made = {name: (name, []) for name in (
        "19-control", "19-break-no-clip", "19-ablate-seen", "19-clip-at-arrival",
        "19-ablate-spread", "19-handout-control", "19-handout-batches")}
    made["19-clip-0.5"] = ("19-control", ["optimizer.grad_clip=0.5"])
    for name, (folder, sets) in made.items():
        cfg = config.load(ROOT / f"experiments/{folder}/config.yaml", sets)
        train(cfg, tmp / name, progress=False)
        out[name] = load_run(tmp / name)
    return out


def _rise(run, step):
    whole = run.column("train_loss")
    before = whole[:step][np.isfinite(whole[:step])][-1]
    return np.nanmax(whole[step:step + 150]) - before


def test_break_spikes_and_control_contains_it(runs):
    a, b = runs["19-control"], runs["19-break-no-clip"]
    words = [x["words"]["written"] for x in b.batches]
    step = int(np.argmax(words))
    assert words[step] >= 3
    ratios = norm_ratios(b)
    assert ratios[step] >= 10 and int(np.nanargmax(ratios)) == step
    assert _rise(b, step) >= max(2 * _rise(a, step), 0.3)
    assert np.nanmax(a.column("grad_norm_post_clip")) <= 1.0 + 1e-6


def test_the_clip_as_a_guard_is_run_b_until_the_arrival_and_contains_it(runs):
    """Clip 1.0 switched on at the arrival: the same model as Run B (the same batch losses and
    norms up to and including the arrival's batch, the same whole-set losses before it), and
    most of Run B's whole-set rise is gone."""
    b, g = runs["19-break-no-clip"], runs["19-clip-at-arrival"]
    step = int(np.argmax([x["words"]["written"] for x in b.batches]))
    for key in ("loss", "grad_norm_pre_clip"):  # measured before the step's update
        np.testing.assert_array_equal(g.column(key)[:step + 1], b.column(key)[:step + 1])
    np.testing.assert_array_equal(g.column("train_loss")[:step], b.column("train_loss")[:step])
    clip = g.column("clip_factor")
    assert (clip[:step] == 1.0).all() and clip[step] < 1.0  # idle before, acts at the arrival
    assert np.nanmax(g.column("grad_norm_post_clip")[step:]) <= 1.0 + 1e-6
    assert _rise(b, step) >= 0.3 and _rise(g, step) < 0.25 * _rise(b, step)


def test_the_guard_branched_from_run_b_is_the_guard_trained_from_scratch(runs, tmp_path):
    """`just phase-19` starts the guard from Run B's checkpoint at the arrival (train
    --branch-from): the 100 steps it trains give the from-scratch run's bytes."""
    from minitrain.tools.branch import train_from

    cfg = config.load(ROOT / "experiments/19-clip-at-arrival/config.yaml")
    summary, how = train_from(runs["19-break-no-clip"].path, cfg, tmp_path / "g")
    assert how.endswith("at step 1200") and summary["resumed_at_step"] == 1200
    for name in ("metrics.jsonl", "batches.jsonl", "moments.jsonl", "token_losses.bin"):
        assert (tmp_path / "g" / name).read_bytes() == \
            (runs["19-clip-at-arrival"].path / name).read_bytes(), name


def test_the_clip_diagnose_suggests_contains_it_too(runs, tmp_path):
    """diagnose suggests a clip from the run's own norms (p90 of the 100 before the spike);
    switched on at the arrival, on Run B's model, it contains the damage like clip 1.0."""
    from minitrain.reports.diagnose import diagnose

    b = runs["19-break-no-clip"]
    spike = next(s for s in diagnose(b.path)["spikes"] if s["step"] == 1200)
    before = b.column("grad_norm_pre_clip")[1100:1200]
    assert np.median(before) < spike["suggested_clip"] < before.max()
    cfg = config.load(ROOT / "experiments/19-clip-at-arrival/config.yaml",
                      [f"optimizer.grad_clip={spike['suggested_clip']}"])
    train(cfg, tmp_path / "suggested", progress=False)
    assert _rise(load_run(tmp_path / "suggested"), 1200) < 0.25 * _rise(b, 1200)


def test_seen_from_the_start_no_spike(runs):
    b, seen = runs["19-break-no-clip"], runs["19-ablate-seen"]
    step = int(np.argmax([x["words"]["written"] for x in b.batches]))
    assert seen.batches[step]["words"]["written"] == 5  # the same all-rare batch...
    assert norm_ratios(seen)[step] < 3  # ...is not a spike once the word is known
    for run, jump in ((seen, False), (b, True)):  # nor does the batch's own loss jump
        loss = run.column("loss")
        assert (loss[step] > 3 * np.median(loss[step - 20:step])) == jump
    # the whole-set loss is not claimed: in seed 42 on some CPUs it surges from ~75 steps
    # before the arrival with no norm spike (the sweep's "not rare" row: a base rate)


def _numbers(block: str) -> dict[str, list[float]]:
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0]:
            rows[cells[0]] = [float(c) for c in cells[1:] if re.fullmatch(r"-?[\d.e+-]+", c)]
    return rows


@pytest.mark.parametrize("a,b", [("19-control", "19-break-no-clip"),
                                 ("19-break-no-clip", "19-clip-at-arrival"),
                                 ("19-break-no-clip", "19-ablate-seen"),
                                 ("19-break-no-clip", "19-ablate-spread"),
                                 ("19-control", "19-clip-0.5"),
                                 ("19-handout-control", "19-handout-batches")])
def test_page_numbers_come_from_these_runs(runs, tmp_path, a, b):
    key = f"{a}-vs-{b}"
    page = PAGE.read_text(encoding="utf-8")
    block = page.split(f"<!-- measured:{key} -->")[1].split(f"<!-- /measured:{key} -->")[0]
    published = _numbers(block)
    fresh = _numbers(markdown(report(runs[a].path, runs[b].path, tmp_path)))
    assert published.keys() == fresh.keys() and len(published) > 15
    assert pages.made_on(PAGE), "the page says where its blocks were made"
    rel, floor = pages.tolerance(PAGE), pages.floor(PAGE)  # 2% on the machine the page names
    for row, values in fresh.items():
        assert values == pytest.approx(published[row], rel=rel, abs=floor), row


def test_the_split_reading_says_what_its_numbers_say():
    from minitrain.reports.compare import split_reading

    def said(w, c, r):
        return split_reading("R", {"whole_rise": w, "whole_rise, common sentences": c,
                                   "whole_rise, rare sentences": r})

    assert said(0.857, 1.009, -4.237) == ("R: whole-set rise +0.857; its common sentences rise "
                                          "(+1.01: forgotten), its rare ones fall (-4.24: "
                                          "learned).")
    assert said(0.043, 0.226, -1.81).startswith("R: no whole-set rise above 0.1 (+0.043), yet "
                                                "its common sentences rise (+0.226")
    assert said(0.05, 0.02, -0.05) == ("R: no whole-set rise above 0.1 (+0.05); its common "
                                       "sentences hold (+0.02), its rare ones hold (-0.05).")
    assert "its rare ones rise (+2)" in said(0.3, 0.05, 2.0)
    assert split_reading("R", {"whole_rise": 0.5}) is None  # a run without the split


_NUMBER = r"[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?"


def test_the_pages_split_readings_are_its_numbers():
    """Each generated line under a compare block's table, against that table's numbers."""
    from minitrain.reports.compare import split_reading

    checked = 0
    for key in sorted(pages.blocks(PAGE)):
        block = pages.block_text(PAGE, key)
        if "whole_rise, common sentences" not in block:
            continue
        head = [c.strip() for c in block.split("\n| |")[1].split("\n")[0].strip("|").split("|")]
        table = _numbers(block)
        lines = [ln[2:] for ln in block.splitlines() if ln.startswith("- ")]
        for i, name in enumerate(head):
            fields = ("whole_rise", "whole_rise, common sentences", "whole_rise, rare sentences")
            s = {f: table[f][i] for f in fields}
            mine = split_reading(name, s)
            theirs = [ln for ln in lines if ln.startswith(f"{name}:")]
            assert len(theirs) == 1, (key, name)
            assert re.sub(_NUMBER, "#", theirs[0]) == re.sub(_NUMBER, "#", mine), (key, name)
            assert [float(x) for x in re.findall(_NUMBER, theirs[0].split(name, 1)[1])] == \
                pytest.approx([float(x) for x in re.findall(_NUMBER, mine.split(name, 1)[1])],
                              rel=5e-3), (key, name)
            checked += 1
    assert checked >= 8  # the compare blocks of the page's runs


def test_the_handout_table_is_what_the_runs_give(runs):
    """The page's handout-vs-ours block: its words are these runs' (every number masked), its
    numbers theirs within 2%; the recover/NaN row quotes the sweep's table."""
    from minitrain.exercises import handout

    sweep = handout.read_sweep(ROOT / "experiments" / handout.SWEEP, PAGE)
    a, b, c = (runs[handout.RUNS[k]] for k in "abc")
    fresh = handout.markdown(handout.rows(a, b, c, sweep), b.config["seed"])
    key = handout.BLOCK
    page = PAGE.read_text(encoding="utf-8")
    published = page.split(f"<!-- measured:{key} -->\n")[1].split(f"\n<!-- /measured:{key}")[0]
    number = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
    # `▁written`'s rank among the loss carriers: no. 1 with AVX2 kernels, no. 2 with AVX512
    # ones (behind '▁in'), checked here; the rest of the numbers to the page's tolerance
    rank = r"`▁written` is loss carrier no\. [12] at step 1200"
    assert re.search(rank, published) and re.search(rank, fresh)
    published, fresh = (re.sub(rank, "the rank", t) for t in (published, fresh))
    assert re.sub(number, "#", published) == re.sub(number, "#", fresh)
    mine, theirs = (np.array(re.findall(number, t), float) for t in (published, fresh))
    np.testing.assert_allclose(mine, theirs, rtol=pages.tolerance(PAGE), atol=pages.floor(PAGE))
    assert "`tten` is not a piece" in fresh
    assert handout.code_break() in published  # the line numbers exactly: the source's today


def test_recovery_is_counted_only_after_a_rise_to_recover_from(runs):
    """compare's table and the sweep's: 'no rise' for a whole-set rise up to MIN_RISE (Run C's),
    steps or never above it (Run B's); the sweep's cells take their recovery medians and
    not-back counts over the runs that rose, and say so under the table."""
    from minitrain.exercises.phase19 import cell_table
    from minitrain.exercises.phase19 import markdown as sweep_markdown
    from minitrain.reports.measure import MIN_RISE, summarise

    back = "whole back within 10% of rise, steps"
    b, g = (summarise(runs[n], 1200) for n in ("19-break-no-clip", "19-clip-at-arrival"))
    assert 0 < g["whole_rise"] <= MIN_RISE and g[back] == "no rise"
    assert b["whole_rise"] > MIN_RISE and b[back] != "no rise"
    run = {"status": "completed", "diverged": False}
    rows = [{"cell": "x", **run, "whole_rise": r, "recovery_steps": s}
            for r, s in ((0.5, 40), (0.3, None), (0.05, "no rise"), (-0.02, "no rise"))]
    rows += [{"cell": "y", **run, "whole_rise": 0.04, "recovery_steps": "no rise"}]
    x, y = cell_table(rows)
    assert (x["rise > 0.1"], x["median recovery steps"], x["not back by the end"]) == (2, 40, 1)
    assert (y["rise > 0.1"], y["median recovery steps"], y["not back by the end"]) == (
        0, "no rise", 0)
    assert "| y | 1 |" in sweep_markdown([x, y]) and "rise > 0.1 only" in sweep_markdown([x, y])


def test_the_pages_words_about_the_norms_hold(runs):
    """The exercise page's prose, against these runs: clip 1.0 is 'about three times the
    ordinary norm' of Run B and 'near Run A's usual norm'; Run A 'clips most of its
    ordinary steps'."""
    from minitrain.reports.measure import summarise

    a, b = (summarise(runs[n], 1200) for n in ("19-control", "19-break-no-clip"))
    assert 2.5 <= 1.0 / b["baseline_median"] <= 3.5
    assert 0.75 < a["baseline_median"] < 1.25  # 0.89 with AVX2 kernels, 1.03 with AVX512
    assert a["clipped_steps_before"] > 0.5


def test_the_diagnostic_ladder_holds_rung_by_rung(runs):
    """The page's diagnostic ladder, each rung's claim checked on fresh runs of Run A and B
    (rung 6's cause is test_diagnose_names_the_cause_of_each_run's)."""
    from minitrain.reports.measure import MIN_RISE, sentence_texts, summarise, top_tokens

    ladder = PAGE.read_text(encoding="utf-8").split("## Diagnostic ladder")[1].split("\n## ")[0]
    a, b = runs["19-control"], runs["19-break-no-clip"]
    step = 1200
    # 1. loss panel: both batch losses jump at the spike; only Run B's whole-set loss climbs
    for run in (a, b):
        loss = run.column("loss")
        assert loss[step] > 3 * np.median(loss[step - 20:step]), run.name
    sa, sb = summarise(a, step), summarise(b, step)
    assert sb["whole_rise"] > MIN_RISE >= sa["whole_rise"]
    assert "only Run B's\n   thick whole-set line climbs" in ladder
    # 2. norm panel: Run B's pre-clip norm jumps and stays raised; Run A's post-clip line never
    # goes above 1.0; Run B's post-clip line is its pre-clip line
    g = b.column("grad_norm_pre_clip")
    assert g[step] > 5 * np.median(g[step - 50:step])
    assert np.median(g[step + 1:step + 31]) > 1.5 * np.median(g[step - 50:step])
    assert np.nanmax(a.column("grad_norm_post_clip")) <= 1.0 + 1e-6
    np.testing.assert_array_equal(b.column("grad_norm_post_clip"), g)
    assert "never goes above 1.0" in ladder and "is its pre-clip line" in ladder
    # 3. batch composition: five "written" sentences in the spike batch
    assert b.batches[step]["words"] == {"written": 5}
    assert sum("written" in text for _, text in sentence_texts(b, step)) == 5
    assert '`"words": {"written": 5}`' in ladder
    # 4. per-token losses: a right tail, and ▁written among the top pieces
    tl = b.token_losses(step)["loss"]
    assert np.max(tl) > 10 * np.median(tl)
    assert "▁written" in [piece for piece, _, _ in top_tokens(b, step)]
    # 5. Adam's moments: v of the ▁written rows jumps at the spike, the input row's from
    # exactly 0, and neither comes back within 2x by the run's end
    assert sb["v jump x [▁written wte]"] == "from 0" and sb["v jump x [▁written head]"] > 10
    assert sb["v back within 2x, steps [▁written head]"] is None
    assert "does not come back within the run" in ladder


def test_diagnose_names_step_batch_piece_and_word(runs):
    from minitrain.reports.diagnose import diagnose

    b = diagnose(runs["19-break-no-clip"].path)
    spike = next(s for s in b["spikes"] if s["step"] == 1200)
    assert "grad_norm" in spike["kind"] and spike["ratio"] >= 10 and spike["clip"] is None
    assert spike["batch"]["words"] == {"written": 5}
    carrier = next(c for c in spike["loss_carriers"] if c["piece"] == "▁written")
    assert carrier["words"] == ["written"] and carrier["usual_loss"] is None
    head = next(m for m in spike["moments"] if m["table"] == "head")
    assert head["v_jump"] > 10
    assert spike["whole_loss"]["worst_after"] > spike["whole_loss"]["before"] + 0.3
    seen = diagnose(runs["19-ablate-seen"].path)
    assert all(s["step"] != 1200 for s in seen["spikes"])


def test_diagnose_names_the_cause_of_each_run(runs):
    """Run B: the rare batch with no clip; the control, the guarded run and the 'seen from the
    start' ablation: healthy (from the logs; the test in test_catalogue swaps configs)."""
    from minitrain.exercises.causes import diagnose

    named = {name: diagnose(runs[name].path)["cause"] for name in (
        "19-break-no-clip", "19-control", "19-clip-at-arrival", "19-ablate-seen")}
    assert named["19-break-no-clip"]["name"] == "no-clip-rare-batch"
    assert "step 1200" in named["19-break-no-clip"]["evidence"][0]
    for name in ("19-control", "19-clip-at-arrival", "19-ablate-seen"):
        assert named[name]["name"] == "healthy", (name, named[name])


def test_postmortem_fills_the_measured_placeholders(runs):
    from minitrain.reports.diagnose import diagnose
    from minitrain.reports.postmortem import postmortem

    b, a = runs["19-break-no-clip"], runs["19-control"]
    text = postmortem(diagnose(b.path), a.path)
    for measured in ("{spike_step}", "{grad_norm_pre_clip}", "{ratio}", "{top_tokens}",
                     "{whole_loss_before}", "{whole_loss_worst}", "{v_jump}", "{config_diff}"):
        assert measured not in text
    assert "At step 1200 of `19-break-no-clip`" in text
    assert "optimizer.grad_clip: 1.0 -> None" in text
    assert "{root_cause}" in text  # judgement is left to the author


def test_adam_memory_checked_on_run_b_matches_the_theory_page(runs):
    """On steps where the rare input row gets no gradient, m and v shrink by exactly b1 and
    b2; the theory page's measured block is this run's."""
    from minitrain.reports.diagnose import moment_decay, moment_decay_markdown

    d = moment_decay(runs["19-break-no-clip"], 1200)
    wte = next(r for r in d["rows"] if r["table"] == "wte")
    assert wte["quiet_steps"] > 50
    assert wte["m_ratio_max_error"] < 1e-5 and wte["v_ratio_max_error"] < 1e-5
    first = wte["trace"][1:]
    first = first[:next((i for i, t in enumerate(first) if t["grad"]), len(first))]
    assert first and all(t["m_over_m_spike"] == pytest.approx(t["b1_k"], abs=1e-5)
                         for t in first)  # until its next gradient, m is the spike's echo
    theory = ROOT / "theory/02-optimizer-and-schedule.md"
    block = pages.block_text(theory, "moment-decay").strip()
    # the page names the run as its recipe does (`just phase-19-report`)
    recipe = {**d, "run": "experiments/19-break-no-clip"}
    fresh = moment_decay_markdown(recipe, "Run B").strip()
    if pages.made_on(theory) == pages.machine():
        assert block == fresh
    else:  # the same words; the numbers within what another CPU's rounding moves them
        number = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
        assert re.sub(number, "#", block) == re.sub(number, "#", fresh)
        mine, theirs = (np.array(re.findall(number, t), float) for t in (block, fresh))
        np.testing.assert_allclose(mine, theirs, rtol=pages.OTHER_MACHINE, atol=1e-12)


def test_adams_largest_move_at_the_arrival_is_its_bound(runs):
    """theory/02 section 7: a coordinate the spike dominates moves by
    sqrt(1 - b2^t) (1 - b1) / sqrt(1 - b2) lr, clip or no clip (the SGD lab's first point)."""
    predicted = (1 - 0.998**1201) ** 0.5 * 0.1 / 0.002**0.5 * 0.006
    for name in ("19-control", "19-break-no-clip"):
        assert runs[name].metrics[1200]["update_max"] == pytest.approx(predicted, rel=0.01)


def test_the_handouts_code_edit_trains_run_b(runs, tmp_path):
    """The handout's edit, verbatim, in a copy of the project: `clip_factor = 1.0` in place of
    the clip line of src/minitrain/loop.py, then `seed=42 grad_clip=1.0 just phase-19-train`.
    The run's config still says clip 1.0, yet it trains as Run B, step for step; unedited, the
    same command is Run A, which differs."""
    import os
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "minitrain"
    for part in ("src", "corpus", "justfile"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, copy / part)
    (copy / "experiments/19-control").mkdir(parents=True)
    shutil.copy(ROOT / "experiments/19-control/config.yaml", copy / "experiments/19-control")
    loop = copy / "src/minitrain/loop.py"
    line = "clip_factor = min(1.0, self.clip / (g_norm + 1e-12))"
    code = loop.read_text(encoding="utf-8")
    assert code.count(f"            {line}\n") == 1  # the handout's line, literally, once
    loop.write_text(code.replace(f"            {line}\n", "            clip_factor = 1.0\n"),
                    encoding="utf-8")
    just = shutil.which("just", path=str(Path(sys.executable).parent)) or shutil.which("just")
    env = {**os.environ, "seed": "42", "grad_clip": "1.0", "PYTHON": sys.executable,
           "PYTHONPATH": str(copy / "src")}  # the copy's minitrain, before the installed one
    subprocess.run([just, "phase-19-train"], cwd=copy, env=env, check=True,
                   capture_output=True)
    edited = load_run(copy / "experiments/19-control")
    assert edited.config["optimizer"]["grad_clip"] == 1.0
    b, a = runs["19-break-no-clip"], runs["19-control"]
    assert len(edited.metrics) == len(b.metrics) == len(a.metrics)
    for key in ("loss", "grad_norm_pre_clip", "train_loss"):
        np.testing.assert_array_equal(edited.column(key), b.column(key), err_msg=key)
    assert not np.array_equal(a.column("loss"), b.column("loss"))
