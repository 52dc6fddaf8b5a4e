// The dashboard's step selector (reports/dashboard.py writes the data this reads): draws the
// figures, and for the chosen step the histogram, the batch, the top pieces and m/v around it.
"use strict";
const D = JSON.parse(document.getElementById("dash-data").textContent);
const AROUND = 40;  // steps either side in the m/v panel
const cfg = { displaylogo: false, responsive: true };
const timeDivs = [];
let current = null, pending = null;

const fmt = (x) => (x === null || x === undefined) ? "n/a" : Number(x).toPrecision(4).replace(/\.?0+$/, "");

function drawFigures() {
  const done = [];
  for (const f of D.figures) {
    const div = document.getElementById(f.id);
    done.push(Plotly.newPlot(div, f.fig.data, f.fig.layout, cfg).then(() => {
      if (!f.time) return;
      div.baseShapes = (f.fig.layout.shapes || []).slice();
      timeDivs.push(div);
      div.on("plotly_click", (ev) => ev.points.length && setStep(Math.round(ev.points[0].x)));
    }));
  }
  return Promise.all(done);
}

function stepLine(s) {
  return { type: "line", x0: s, x1: s, yref: "paper", y0: 0, y1: 1,
           line: { color: "#000", width: 1.5 } };
}

function histogram(s) {
  if (!document.getElementById("fig-hist")) return Promise.resolve();
  const e = D.edges, centers = [], width = e[1] - e[0];
  for (let k = 0; k + 1 < e.length; k++) centers.push((e[k] + e[k + 1]) / 2);
  const traces = [];
  D.runs.forEach((r, i) => {
    if (!r.hist || s >= r.steps) return;
    traces.push({ type: "bar", name: r.name, x: centers, y: r.hist.counts[s], width: width,
                  marker: { color: D.colors[i % D.colors.length] }, opacity: 0.6 });
  });
  const layout = { template: "none", height: 320, barmode: "overlay",
                   title: { text: `per-token loss at step ${s} (positions per bin, log)`, font: { size: 14 } },
                   xaxis: { title: { text: "loss (nats)" }, range: [e[0], e[e.length - 1]] },
                   yaxis: { type: "log", title: { text: "positions" }, dtick: 1 },
                   margin: { l: 60, r: 20, t: 36, b: 40 }, legend: { orientation: "h", y: -0.18, yanchor: "top" } };
  if (!traces.length) layout.annotations = [{ text: "no per-token losses logged", showarrow: false,
                                              xref: "paper", yref: "paper", x: 0.5, y: 0.5 }];
  return Plotly.react("fig-hist", traces, layout, cfg);
}

function around(s) {
  if (!document.getElementById("fig-around")) return Promise.resolve();
  const lo = Math.max(0, s - AROUND), traces = [];
  D.runs.forEach((r, i) => {
    r.moments.forEach((m, j) => {
      const hi = Math.min(m.y.length, s + AROUND + 1), x = [], y = [];
      for (let t = lo; t < hi; t++) { x.push(t); y.push(m.y[t] > 0 ? m.y[t] : null); }
      traces.push({ type: "scatter", mode: "lines+markers", name: `${r.name} ${m.label}`, x, y,
                    marker: { size: 3 }, line: { color: D.colors[i % D.colors.length],
                    dash: ["solid", "dot", "dash", "dashdot"][j % 4], width: 1.2 } });
    });
  });
  const layout = { template: "none", height: 320, shapes: [stepLine(s)],
                   title: { text: `Adam's m and v of the tracked rows around step ${s} (log)`, font: { size: 14 } },
                   xaxis: { title: { text: "step" } }, yaxis: { type: "log", dtick: 1 },
                   margin: { l: 60, r: 20, t: 36, b: 40 }, legend: { orientation: "h", y: -0.18, yanchor: "top", font: { size: 10 } } };
  if (!traces.length) layout.annotations = [{ text: "no tracked rows logged", showarrow: false,
                                              xref: "paper", yref: "paper", x: 0.5, y: 0.5 }];
  return Plotly.react("fig-around", traces, layout, cfg);
}

function el(tag, cls, text) {
  const x = document.createElement(tag);
  if (cls) x.className = cls;
  if (text !== undefined) x.textContent = text;
  return x;
}

function stepText(s) {
  D.runs.forEach((r, i) => {
    const tail = document.getElementById(`tail-${i}`), ol = document.getElementById(`batch-${i}`);
    const top = document.getElementById(`top-${i}`);
    ol.replaceChildren(); top.replaceChildren();
    if (s >= r.steps) { tail.textContent = `no step ${s} in this run (${r.steps} steps)`; return; }
    if (r.hist) {
      const h = r.hist;
      tail.innerHTML = "";
      tail.append("largest per-token loss ", el("b", "max", fmt(h.max[s])), " nats; mean ",
                  el("span", "mean", fmt(h.mean[s])), " over ", el("span", "positions", String(h.positions[s])),
                  " positions" + (h.nonfinite[s] ? `; ${h.nonfinite[s]} not finite` : ""));
    } else tail.textContent = "per-token losses not logged (train.extra_logs)";
    r.batch[s].forEach((sid, j) => {
      const li = el("li");
      li.dataset.sid = sid;
      li.append(el("span", "sid", `[${sid}]`));
      if (r.sources) li.append(el("span", "src", r.sources[s][j]));
      const t = el("span", "text");
      const known = r.sentences[sid];
      if (known !== undefined) t.innerHTML = known; else t.textContent = "(text not logged)";
      li.append(t);
      ol.append(li);
    });
    if (r.top) {
      const head = el("tr");
      ["piece", "summed loss", "positions"].forEach((h) => head.append(el("th", "", h)));
      top.append(head);
      for (const [piece, sum, n] of r.top[s]) {
        const tr = el("tr");
        tr.append(el("td", "piece", JSON.stringify(piece)), el("td", "sum", fmt(sum)), el("td", "n", String(n)));
        top.append(tr);
      }
    }
  });
}

function render() {
  const s = pending;
  pending = null;
  current = s;
  document.getElementById("step-slider").value = s;
  document.getElementById("step-input").value = s;
  stepText(s);
  const work = [histogram(s), around(s)];
  for (const div of timeDivs) work.push(Plotly.relayout(div, { shapes: div.baseShapes.concat([stepLine(s)]) }));
  history.replaceState(null, "", `#step=${s}`);
  return Promise.all(work).then(() => { document.body.dataset.step = String(s); });
}

function setStep(s) {
  s = Math.max(0, Math.min(D.steps - 1, Math.round(Number(s))));
  if (!Number.isFinite(s)) return Promise.resolve();
  const first = pending === null;
  pending = s;
  return first ? new Promise((ok) => requestAnimationFrame(() => render().then(ok))) : Promise.resolve();
}

function controls() {
  const slider = document.getElementById("step-slider"), input = document.getElementById("step-input");
  slider.max = input.max = D.steps - 1;
  slider.addEventListener("input", () => setStep(slider.value));
  input.addEventListener("change", () => setStep(input.value));
  const sel = document.getElementById("event-select");
  D.events.forEach((evs, i) => evs.forEach((e) => {
    const o = el("option", "", `${D.runs[i].name}: step ${e.step} (${e.kind})`);
    o.value = e.step;
    sel.append(o);
  }));
  sel.addEventListener("change", () => sel.value !== "" && setStep(sel.value));
  document.querySelectorAll("button.jump").forEach((b) => b.addEventListener("click", () => setStep(b.dataset.step)));
}

window.dashboard = { setStep, step: () => current, data: D };
drawFigures().then(() => {
  controls();
  const m = /step=(\d+)/.exec(location.hash);
  return setStep(m ? m[1] : D.start);
}).then(() => { document.body.dataset.ready = "1"; });
