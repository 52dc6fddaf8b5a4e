"""The dashboard in a real browser (the system's chromium, driven by playwright): the page
of a short phase-19-like pair and of a toy lab run loads with nothing fetched from a network,
and what its step selector shows for a step (the batch's sentences, the histogram and its
tail) is what the run directory logged. Skips only when no browser is found, and fails
instead where MINITRAIN_REQUIRE_BROWSER=1 (CI). MINITRAIN_DOCS_SCREENSHOT=1 also redraws
docs/dashboard.png from experiments/19-control and 19-break-no-clip when they hold runs."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from minitrain.cli import main
from minitrain.core import config
from minitrain.core.rundir import load_run
from minitrain.core.train import train
from minitrain.reports import dashboard
from minitrain.reports.measure import sentence_texts, spike_step

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PAIR = ["train.steps=160", "data.arrive_step=120", "train.eval_every=40",
        "train.eval_dense=false", "train.checkpoint_every=0"]


def _chromium() -> str | None:
    found = os.environ.get("MINITRAIN_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        exe = None
    if exe is None:
        why = "no chromium (apt-get install -y chromium) or no playwright (pip install -e '.[dev]')"
        if os.environ.get("MINITRAIN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MINITRAIN_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Run A and Run B of phase 19, cut short: the five rare sentences arrive at step 120."""
    tmp = tmp_path_factory.mktemp("pair")
    for name, clip in (("control", "1.0"), ("no-clip", "null")):
        cfg = config.load(ROOT / "experiments/19-control/config.yaml",
                          [*PAIR, f"optimizer.grad_clip={clip}"])
        train(cfg, tmp / name, progress=False)
    return load_run(tmp / "control"), load_run(tmp / "no-clip")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "toy"
    cfg = config.load(ROOT / "experiments/toy-rare-samples/config.yaml",
                      ["train.steps=80", "data.n_samples=100", "data.rare_fraction=0.05"])
    train(cfg, out, progress=False)
    return load_run(out)


def _open(browser, html: Path, step: int | None = None):
    """The page, ready, with every request that is not the file itself refused and noted."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    seen, errors = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url.startswith("file://"):
            return r.continue_()
        seen.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(html.resolve().as_uri() + (f"#step={step}" if step is not None else ""))
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert not seen, f"the page asked the network for {seen[:3]}"
    assert not errors, errors
    return page


def _move(page, step: int) -> None:
    """Drag the slider's value to `step`, as a user would, and wait for the panels."""
    page.locator("#step-slider").fill(str(step))
    page.wait_for_selector(f"body[data-step='{step}']", timeout=10_000)


def _check_step(page, run, i: int, step: int) -> None:
    """What the page shows of run `i` at `step` against the run directory's logs."""
    li = page.locator(f"#batch-{i} li")
    assert [int(x) for x in li.evaluate_all("els => els.map(e => e.dataset.sid)")] == \
        run.batches[step]["sentence_ids"]
    assert page.locator(f"#batch-{i} li .text").all_inner_texts() == \
        [t for _, t in sentence_texts(run, step)]
    losses = run.token_losses(step)["loss"]
    edges = np.array(page.evaluate("window.dashboard.data.edges"))
    shown = page.evaluate(f"Array.from(document.getElementById('fig-hist').data[{i}].y)")
    assert shown == np.histogram(losses, bins=edges)[0].tolist()
    last = max(k for k, n in enumerate(shown) if n)  # the tail: the highest non-empty bin
    assert edges[last] <= losses.max() <= edges[last + 1]
    assert float(page.locator(f"#tail-{i} .max").inner_text()) == \
        pytest.approx(float(losses.max()), rel=1e-3)


def test_the_pairs_dashboard_shows_each_steps_batch_and_histogram(browser, pair, tmp_path):
    a, b = pair
    html = dashboard.write([a.path, b.path], tmp_path / "pair.html")
    assert html.stat().st_size < 8e6
    page = _open(browser, html)
    spike = spike_step(a, b)
    assert page.evaluate("window.dashboard.step()") == spike  # the page opens on it
    arrival = next(s for s, x in enumerate(b.batches) if x["words"]["written"] == 5)
    for step in (arrival, spike, 3):
        _move(page, step)
        for i, run in enumerate(pair):
            _check_step(page, run, i, step)
    _move(page, arrival)
    marks = page.locator("#batch-1 mark").all_inner_texts()
    assert len(marks) >= 5 and set(marks) == {"written"}  # the tracked word, highlighted
    top = page.locator("#top-1 td.piece").all_inner_texts()
    assert top[0] == '"▁written"'  # the never-seen word carries the most loss
    page.locator("#step-input").fill("7")
    page.locator("#step-input").dispatch_event("change")
    page.wait_for_selector("body[data-step='7']")
    page.screenshot(path=tmp_path / "pair.png", full_page=True)
    assert (tmp_path / "pair.png").stat().st_size > 50_000
    assert "optimizer:" in html.read_text(encoding="utf-8")  # the config panel


def test_a_lab_runs_dashboard_has_its_panels(browser, toy, tmp_path):
    html = dashboard.write([toy.path], tmp_path / "toy.html")
    page = _open(browser, html)
    for fig in ("fig-classes", "fig-geometry", "fig-rank", "fig-moments"):
        assert page.evaluate(f"document.getElementById('{fig}').data.length") > 0, fig
    rare = next(s for s, x in enumerate(toy.batches) if x["words"].get("B"))  # a rare sample
    _move(page, rare)
    _check_step(page, toy, 0, rare)
    assert page.locator("#batch-0 mark").all_inner_texts() == ["B"]


def test_blind_leaves_config_and_summary_out_and_missing_logs_drop_panels(toy, tmp_path, capsys):
    out = tmp_path / "blind.html"
    assert main(["dashboard", str(toy.path), "--blind", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "blind round" in text
    for secret in ("grad_clip", "rare_fraction", "final_train_loss", "clip threshold"):
        assert secret not in text, secret
    assert f"dashboard: {out}" in capsys.readouterr().out
    bare = tmp_path / "bare"
    cfg = config.load(ROOT / "experiments/toy-rare-samples/config.yaml",
                      ["train.steps=20", "data.n_samples=40", "train.extra_logs=[]"])
    train(cfg, bare, progress=False)
    text = dashboard.write([bare], tmp_path / "bare.html").read_text(encoding="utf-8")
    assert "id=fig-loss" in text and "id=fig-hist" not in text and "id=fig-moments" not in text
    assert main(["dashboard", str(tmp_path / "nothing-here")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_docs_screenshot_of_the_real_pair(browser):
    """Redraws docs/dashboard.png from the phase-19 pair when asked to and the runs are there."""
    runs = [ROOT / "experiments/19-control", ROOT / "experiments/19-break-no-clip"]
    if os.environ.get("MINITRAIN_DOCS_SCREENSHOT") != "1":
        pytest.skip("set MINITRAIN_DOCS_SCREENSHOT=1 to redraw docs/dashboard.png")
    if not all((r / "metrics.jsonl").is_file() for r in runs):
        pytest.skip("no phase-19 runs in experiments/ (just phase-19)")
    html = dashboard.write(runs)
    page = _open(browser, html)
    page.screenshot(path=ROOT / "docs/dashboard.png", full_page=True)
