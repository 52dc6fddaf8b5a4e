"""`minitrain dashboard RUN [RUN...]`: one self-contained HTML page of one or more run
directories, plotly.js inside it (it opens without a network). Time-axis panels (losses,
norms with the clip, lr, update size, Adam's m and v, the labs' logs), diagnose's events
on every time axis, and a step selector whose per-step data dashsteps.py precomputes."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import yaml
from plotly.io.json import to_json_plotly

from minitrain.core.rundir import Run, RunDirError, load_run
from minitrain.reports import dashlabs, dashsteps
from minitrain.reports.measure import spike_step

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
LAYOUT = dict(template="none", height=320, margin=dict(l=60, r=20, t=36, b=30),
              legend=dict(font=dict(size=10), orientation="h", y=-0.18, yanchor="top"),
              xaxis=dict(title=dict(text="step", standoff=4), gridcolor="#eee"),
              yaxis=dict(gridcolor="#eee"), hovermode="x")


def default_out(runs: list[Run]) -> Path:
    """Beside the last run, as compare puts its picture: dashboard.html, or for several runs
    dashboard-A-vs-B.html."""
    if len(runs) == 1:
        return runs[0].path / "dashboard.html"
    return runs[-1].path / f"dashboard-{'-vs-'.join(r.name for r in runs)}.html"


def write(runs: list[Path], out: Path | None = None, blind: bool = False) -> Path:
    """Write the dashboard of `runs` to `out` (default: default_out) and return its path.
    `blind` leaves out every config and summary value (and the clip threshold, a config
    value): what a learner diagnoses from is what the run measured."""
    if not runs:
        raise RunDirError("dashboard: give at least one run directory")
    loaded = [load_run(p) for p in runs]
    if len({r.path.resolve() for r in loaded}) != len(loaded):
        raise RunDirError("dashboard: a run directory is named twice")
    out = Path(out) if out else default_out(loaded)
    page = render(loaded, blind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def render(runs: list[Run], blind: bool = False) -> str:
    events = [dashsteps.events(r, blind) for r in runs]
    figures = time_figures(runs, blind) + dashlabs.figures(runs, COLORS, LAYOUT)
    for f in figures:
        if f["time"]:
            _mark_events(f["fig"], events)
    edges = dashsteps.edges(runs)
    spike = spike_step(*runs)
    data = {
        "runs": [dashsteps.step_data(r, edges) for r in runs], "edges": edges,
        "colors": COLORS, "events": events,
        "start": spike if spike is not None else len(runs[0].metrics) - 1,
        "steps": max(len(r.metrics) for r in runs),
        "figures": [{"id": f["id"], "time": f["time"], "fig": f["fig"].to_plotly_json()}
                    for f in figures],
    }
    # '</' inside a script element would end it early
    blob = to_json_plotly(data).replace("</", "<\\/")
    from plotly.offline import get_plotlyjs

    names = ", ".join(r.name for r in runs)
    parts = [
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>",
        f"<title>minitrain dashboard: {html.escape(names)}</title>",
        f"<style>{_asset('dashboard.css')}</style>",
        f"<script>{get_plotlyjs()}</script></head><body>",
        f"<header><h1>{html.escape(names)}</h1>{_headline(runs, blind)}</header>",
        _events_html(runs, events),
        "<h2>Over the run</h2><p class=hint>Click a point on any time axis to select its step."
        "</p><section class=grid>",
        *(f"<div class=fig id={f['id']}></div>" for f in figures if not f.get("lab")),
        "</section>", _step_panel(runs),
        *(["<h2>Lab logs</h2><section class=grid>", *(f"<div class=fig id={f['id']}></div>"
           for f in figures if f.get("lab")), "</section>"]
          if any(f.get("lab") for f in figures) else []),
        _config_html(runs, blind),
        f"<script type=application/json id=dash-data>{blob}</script>",
        f"<script>{_asset('dashboard.js')}</script></body></html>\n",
    ]
    return "\n".join(parts)


def _asset(name: str) -> str:
    return resources.files("minitrain").joinpath("templates", name).read_text(encoding="utf-8")


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)  # half the bytes; the page needs no more digits


def _fig(title: str, log: bool = False, ytitle: str = "") -> go.Figure:
    fig = go.Figure(layout=LAYOUT)
    fig.update_layout(title=dict(text=title, font=dict(size=14)))
    fig.update_yaxes(title=ytitle, type="log" if log else "linear")
    return fig


def _line(fig, run: Run, i: int, y, name: str, dash: str = "solid", width: float = 1.2,
          mode: str = "lines", opacity: float = 1.0, x=None) -> None:
    y = np.asarray(y, float)
    if not np.isfinite(y).any():
        return
    x = np.arange(len(y)) if x is None else np.asarray(x)
    ok = np.isfinite(y) if mode != "lines" or dash != "solid" else slice(None)
    fig.add_trace(go.Scatter(
        x=x[ok], y=_f32(y[ok]), name=f"{run.name} {name}", mode=mode, opacity=opacity,
        legendgroup=run.name, line=dict(color=COLORS[i % len(COLORS)], dash=dash, width=width),
        marker=dict(size=4)))


def time_figures(runs: list[Run], blind: bool) -> list[dict]:
    """The panels over steps every run has (metrics.jsonl), and Adam's tracked rows."""
    loss = _fig("loss", ytitle="nats")
    norm = _fig("gradient norm (log): pre-clip, post-clip, clip", log=True)
    clipf = _fig("clip factor (post / pre)")
    lr = _fig("learning rate")
    upd = _fig("update size (log): L2 norm and largest single change", log=True)
    mom = _fig("Adam's m (L2 norm) and v (mean) of the tracked rows (log)", log=True)
    for i, run in enumerate(runs):
        _line(loss, run, i, run.column("loss"), "batch", width=0.8, opacity=0.5)
        _line(loss, run, i, run.column("train_loss"), "whole train set", dash="dash")
        _line(loss, run, i, run.column("val_loss"), "whole val set", dash="dot")
        _line(loss, run, i, dashsteps.tracked_loss(run), "batch: tracked-word sentences",
              mode="markers")
        pre, post = run.column("grad_norm_pre_clip"), run.column("grad_norm_post_clip")
        _line(norm, run, i, pre, "pre-clip")
        _line(norm, run, i, post, "post-clip", dash="dot")
        clipped = np.where(run.column("clip_factor") < 1 - 1e-9, pre, np.nan)
        _line(norm, run, i, clipped, "clipped step", mode="markers")
        clip = run.config["optimizer"].get("grad_clip")
        if clip is not None and not blind:
            first = run.config["optimizer"].get("clip_from_step") or 0
            _line(norm, run, i, [clip, clip], f"clip threshold {clip:g}", dash="dash",
                  width=1, x=[first, len(pre) - 1])
        _line(clipf, run, i, run.column("clip_factor"), "clip factor")
        _line(lr, run, i, run.column("lr"), "lr")
        _line(upd, run, i, run.column("update_norm"), "update L2 norm")
        _line(upd, run, i, run.column("update_max"), "largest change", dash="dot")
        for j, m in enumerate(dashsteps.moments(run)):
            y = np.array([np.nan if v is None else v for v in m["y"]], float)
            _line(mom, run, i, np.where(y > 0, y, np.nan), m["label"],
                  dash=("solid", "dot", "dash", "dashdot")[j % 4])
    figs = [("fig-loss", loss), ("fig-norm", norm), ("fig-clip", clipf), ("fig-lr", lr),
            ("fig-update", upd), ("fig-moments", mom)]
    return [{"id": k, "time": True, "fig": f} for k, f in figs if f.data]


def _mark_events(fig: go.Figure, events: list[list[dict]]) -> None:
    """A dotted line and a hoverable marker at each event's step, in its run's colour."""
    for i, evs in enumerate(events):
        c = COLORS[i % len(COLORS)]
        for e in evs:
            fig.add_vline(x=e["step"], line=dict(color=c, dash="dot", width=1))
            fig.add_annotation(x=e["step"], y=1.0, yref="paper", text="▼", showarrow=False,
                               font=dict(color=c, size=12), hovertext=e["text"],
                               yanchor="bottom")


def _headline(runs: list[Run], blind: bool) -> str:
    rows = []
    for i, r in enumerate(runs):
        what = f"{len(r.metrics)} steps logged"
        if not blind:
            d, m = r.config.get("data", {}), r.config.get("model", {})
            what = (f"{r.summary.get('status', '?')}, {what}; data {d.get('kind', 'corpus')}, "
                    f"model {m.get('kind', 'gpt')}")
        rows.append(f"<li><span class=swatch style='background:{COLORS[i % len(COLORS)]}'>"
                    f"</span><code>{html.escape(str(r.path))}</code>: {html.escape(what)}</li>")
    return f"<ul class=runs>{''.join(rows)}</ul>"


def _events_html(runs: list[Run], events: list[list[dict]]) -> str:
    items = [f"<li><button class=jump data-step={e['step']}>step {e['step']}</button> "
             f"<b>{html.escape(r.name)}</b>: {html.escape(e['text'])}</li>"
             for r, evs in zip(runs, events) for e in evs]
    body = f"<ul id=event-list>{''.join(items)}</ul>" if items else \
        "<p id=event-list>diagnose finds no spike in these runs.</p>"
    return f"<h2>Events diagnose finds</h2>{body}"


def _step_panel(runs: list[Run]) -> str:
    """The selector and, per run, the step's text; a panel no run has a log for is left out."""
    tokens = any(len(r.token_losses()) for r in runs)
    cols = []
    for i, r in enumerate(runs):
        top = "<h4>pieces carrying the most loss</h4>" if tokens else ""
        cols.append(
            f"<div class=steprun data-run={i}><h3 style='color:{COLORS[i % len(COLORS)]}'>"
            f"{html.escape(r.name)}</h3><p class=tail id=tail-{i}></p>"
            f"<h4>the batch's sentences</h4><ol class=sentences id=batch-{i}></ol>"
            f"{top}<table class=top id=top-{i}></table></div>")
    hist = "<div class=fig id=fig-hist></div>" if tokens else ""
    around = "<div class=fig id=fig-around></div>" if any(r.tracked_rows() for r in runs) else ""
    return (
        "<h2>One step</h2><section id=step-panel><div class=controls>"
        "<label>step <input type=range id=step-slider min=0 step=1></label>"
        "<input type=number id=step-input min=0 step=1> <select id=event-select>"
        "<option value=''>jump to an event…</option></select></div>"
        f"<div class=grid>{hist}{around}</div><div class=stepruns>{''.join(cols)}</div></section>")


def _config_html(runs: list[Run], blind: bool) -> str:
    if blind:  # not in the file at all: page source shows nothing either
        return ("<details id=config><summary>config and summary</summary><p>hidden: this is "
                "a blind round.</p></details>")
    parts = []
    for r in runs:
        cfg = yaml.safe_dump(r.config, sort_keys=False, allow_unicode=True)
        summ = json.dumps(r.summary, indent=2, ensure_ascii=False)
        parts.append(f"<h3>{html.escape(r.name)}</h3><div class=cols><pre class=cfg>"
                     f"{html.escape(cfg)}</pre><pre class=summary>{html.escape(summ)}</pre></div>")
    return f"<details id=config><summary>config and summary</summary>{''.join(parts)}</details>"
