# minitrain tasks. `just --list` shows them.
python := env("PYTHON", ".venv/bin/python")
seed := env("seed", "42")
grad_clip := env("grad_clip", "1.0")
# whole-set losses on a second thread: faster with a core to spare, slower when runs share them
log_thread := env("log_thread", "true")

# create .venv and install minitrain with its dev tools (CPU torch from requirements.txt)
setup:
    test -x {{python}} || python3 -m venv .venv
    {{python}} -m pip install -q -r requirements.txt -e ".[dev]"

# one phase-19 run: seed and grad_clip from the environment (inf or null = no clip)
phase-19-train:
    #!/usr/bin/env bash
    set -euo pipefail
    case "{{grad_clip}}" in
      1|1.0)              dir=experiments/19-control ;;
      inf|null|none|off)  dir=experiments/19-break-no-clip ;;
      *)                  dir=experiments/19-clip-{{grad_clip}} ;;
    esac
    clip="{{grad_clip}}"; case "$clip" in none|off) clip=null ;; esac
    {{python}} -m minitrain train experiments/19-control/config.yaml --out "$dir" --force \
      --set seed={{seed}} --set optimizer.grad_clip="$clip" --set train.log_thread={{log_thread}}

# Run B with the clip switched on at the arrival (clip 1.0 from step 1200): the clip as a guard;
# it starts from Run B's checkpoint at the arrival when that provably trains the same steps
[doc("Run B with the clip from the arrival (step 1200), branched from Run B's checkpoint")]
phase-19-guard:
    {{python}} -m minitrain train experiments/19-clip-at-arrival/config.yaml --force \
      --set seed={{seed}} --set train.log_thread={{log_thread}} \
      --branch-from experiments/19-break-no-clip

# compare two runs: terminal summary, a PNG of panels and the pair's HTML dashboard (its path)
phase-19-compare a="experiments/19-control" b="experiments/19-break-no-clip":
    {{python}} -m minitrain compare {{a}} {{b}}
    {{python}} -m minitrain dashboard {{a}} {{b}}

# the whole exercise: control, break, the break with the clip from the arrival; compare, dashboards
phase-19:
    #!/usr/bin/env bash
    set -euo pipefail
    # everything two at a time, one core each (so no second thread per run); progress lines
    # interleave, the reports print in order
    py="{{python}} -m minitrain" b=experiments/19-break-no-clip g=experiments/19-clip-at-arrival
    log=$(mktemp -d); trap 'rm -rf "$log"' EXIT
    together() {  # run each command in the background, wait for all; fail if any failed
      local pids=() status=0
      for c in "$@"; do bash -o pipefail -c "$c" & pids+=($!); done
      for p in "${pids[@]}"; do wait "$p" || status=1; done
      return $status
    }
    export seed={{seed}} log_thread=false
    together "grad_clip=1.0 {{just_executable()}} phase-19-train 2>&1 | cat" \
             "grad_clip=inf {{just_executable()}} phase-19-train 2>&1 | cat"
    together "{{just_executable()}} phase-19-guard 2>&1 | cat" \
             "$py compare experiments/19-control $b > $log/ab" "$py dashboard experiments/19-control $b > $log/abd"
    together "$py compare $b $g > $log/bg" "$py dashboard $b $g > $log/bgd"
    cat $log/ab $log/abd $log/bg $log/bgd

# the test suite (CPU, a few minutes at most)
test *args:
    {{python}} -m pytest {{args}}

# ruff over src and tests
lint:
    {{python}} -m ruff check src tests

# the ablations that show the cause ("written" seen from the start; the rare sentences spread
# out), the handout's original random-batch pair, and the clip-0.5 fix
[doc("the ablations that show the cause, the handout's random-batch pair, and the clip-0.5 fix")]
phase-19-ablations:
    #!/usr/bin/env bash
    set -euo pipefail
    for exp in 19-ablate-seen 19-ablate-spread 19-handout-control 19-handout-batches; do
      {{python}} -m minitrain train experiments/$exp/config.yaml --force --quiet
    done
    seed={{seed}} grad_clip=0.5 {{just_executable()}} phase-19-train

# rerun everything and refill the measured blocks of the exercise page from the runs
phase-19-report: phase-19 phase-19-ablations
    #!/usr/bin/env bash
    set -euo pipefail
    page=experiments/19-break-no-clip/README.md
    {{python}} -m minitrain compare experiments/19-control experiments/19-break-no-clip --page $page
    {{python}} -m minitrain compare experiments/19-break-no-clip experiments/19-clip-at-arrival \
      --page $page
    for exp in 19-ablate-seen 19-ablate-spread; do
      {{python}} -m minitrain compare experiments/19-break-no-clip experiments/$exp --page $page
    done
    {{python}} -m minitrain compare experiments/19-control experiments/19-clip-0.5 --page $page
    {{python}} -m minitrain compare experiments/19-handout-control experiments/19-handout-batches \
      --page $page
    {{python}} -m minitrain diagnose experiments/19-break-no-clip \
      --moments-page theory/02-optimizer-and-schedule.md --label "Run B" > /dev/null
    {{python}} -m minitrain.exercises.handout --page $page > /dev/null  # the handout beside ours
    {{python}} -m minitrain.reports.pages --command "just phase-19-report" $page \
      theory/02-optimizer-and-schedule.md

# Run B over 20 seeds and the fixes (experiments/19-sweep/sweep.yaml); resumable; fills the
# sweep block of the exercise page
[doc("Run B over 20 seeds and the fixes (experiments/19-sweep); resumable; fills the page's block")]
phase-19-sweep *args:
    {{python}} -m minitrain sweep experiments/19-sweep/sweep.yaml \
      --page experiments/19-break-no-clip/README.md \
      --page theory/02-optimizer-and-schedule.md {{args}}

# Run B and the clip switched on at the arrival (1.0, 3.0) over 20 seeds
# (experiments/19-sweep-guard/sweep.yaml); resumable; fills the sweep-guard block of the page
[doc("Run B and the clip switched on at the arrival (1.0, 3.0) over 20 seeds; resumable")]
phase-19-sweep-guard *args:
    {{python}} -m minitrain sweep experiments/19-sweep-guard/sweep.yaml \
      --page experiments/19-break-no-clip/README.md {{args}}

# speed against plain PyTorch; writes bench/results.md and bench/results.json
bench *args:
    {{python}} -m minitrain.tools.bench {{args}}

# bench/gpu.sh: the CUDA tests, the GPU benchmark, Run A and B on the GPU; output in $OUT
gpu-checks *parts:
    PYTHON={{python}} bash bench/gpu.sh {{parts}}

# lab: the three clip modes on real phase-19 gradients; fills experiments/clip-geometry/README.md
lab-clip-geometry:
    {{python}} -m minitrain train experiments/clip-geometry/config.yaml --force --quiet
    {{python}} -m minitrain report clip-geometry experiments/clip-geometry \
      --page experiments/clip-geometry/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-clip-geometry" experiments/clip-geometry/README.md \
      --held-by "\`just check-labs\` holds"

# lab 1: the toy next-token model at 99:1 and 80:20, without and with the clip; pictures and page
lab-toy-rare-samples:
    {{python}} -m minitrain sweep experiments/toy-rare-samples/sweep.yaml --force
    {{python}} -m minitrain report toy-rare-samples experiments/toy-rare-samples/runs \
      --page experiments/toy-rare-samples/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-toy-rare-samples" experiments/toy-rare-samples/README.md \
      --held-by "\`just check-labs\` holds"

# lab 2: the tabular classifier with and without the clip; table, plot and page
lab-tabular:
    {{python}} -m minitrain sweep experiments/tabular-classifier/sweep.yaml --force
    {{python}} -m minitrain report tabular-classifier experiments/tabular-classifier/runs \
      --page experiments/tabular-classifier/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-tabular" experiments/tabular-classifier/README.md \
      --held-by "\`just check-labs\` holds"

# lab 4: a deep MLP at depths 4, 16, 64, init gains 0.5, 1, 2, plain and residual + LayerNorm,
# without and with the clip; per-layer gradient picture and page
[doc("lab 4: a deep MLP over depth, init gain and residual + LayerNorm, clip off and on; page")]
lab-depth:
    rm -rf experiments/depth-explosion/runs
    {{python}} -m minitrain sweep experiments/depth-explosion/sweep.yaml
    {{python}} -m minitrain report depth-explosion experiments/depth-explosion/runs \
      --page experiments/depth-explosion/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-depth" experiments/depth-explosion/README.md \
      --held-by "\`just check-labs\` holds"

# lab (issue 5): Run B's arrival under SGD + momentum and under AdamW, clip off and on
lab-sgd:
    {{python}} -m minitrain sweep experiments/19-sgd/sweep.yaml --page experiments/19-sgd/README.md
    {{python}} -m minitrain report sgd-vs-adam experiments/19-sgd/runs \
      --page experiments/19-sgd/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-sgd" experiments/19-sgd/README.md \
      --held-by "\`just check-labs\` holds"

# lab (issue 5): warm-up, the clip and the largest step any weight takes; fills its README
lab-warmup:
    {{python}} -m minitrain sweep experiments/warmup-bound/sweep.yaml --force
    {{python}} -m minitrain report warmup-bound experiments/warmup-bound/runs \
      --page experiments/warmup-bound/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-warmup" experiments/warmup-bound/README.md \
      --held-by "\`just check-labs\` holds"

# lab (issue 5): fp32, bf16 and fp16 (loss scaling) forward passes on Run B; fills its README
lab-numerics:
    {{python}} -m minitrain sweep experiments/numerics/sweep.yaml --page experiments/numerics/README.md
    {{python}} -m minitrain report numerics experiments/numerics/runs \
      --page experiments/numerics/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-numerics" experiments/numerics/README.md \
      --held-by "\`just check-labs\` holds"

# lab: a mixture of three sources whose weights shift every 7-42 steps (seeded and Exp3 bandit),
# without and with the clip; the boundaries picture and experiments/source-shifts/README.md
[doc("lab: loss and norm bumps at data-source shifts (seeded, Exp3 bandit), clip off and on; page")]
lab-source-shifts:
    {{python}} -m minitrain sweep experiments/source-shifts/sweep.yaml --force
    {{python}} -m minitrain report source-shifts experiments/source-shifts/runs \
      --page experiments/source-shifts/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-source-shifts" experiments/source-shifts/README.md \
      --held-by "\`just check-labs\` holds"

# lab: the same shifts at three model sizes, without and with the clip, two seeds; damage
# against parameter count in experiments/capacity/README.md
[doc("lab: the same source shifts at three model sizes, clip off and on, two seeds; page")]
lab-capacity:
    {{python}} -m minitrain sweep experiments/capacity/sweep.yaml --force
    {{python}} -m minitrain report capacity experiments/capacity/runs \
      --page experiments/capacity/README.md
    {{python}} -m minitrain.reports.pages --command "just lab-capacity" experiments/capacity/README.md \
      --held-by "\`just check-labs\` holds"

# rerun labs (default: all) and hold each page's measured blocks to the shipped ones: 2% on
# the machine its made-on block names, 25% elsewhere; the shipped pages are put back unless
# keep=1 (then each page is the rerun's, stamped). Exit 1 when a page moved
[doc("rerun labs and hold their pages' blocks to the shipped ones (2% same machine, else 25%)")]
check-labs *labs:
    #!/usr/bin/env bash
    set -uo pipefail
    declare -A folder=([clip-geometry]=clip-geometry [toy-rare-samples]=toy-rare-samples
      [tabular]=tabular-classifier [depth]=depth-explosion [sgd]=19-sgd [warmup]=warmup-bound
      [numerics]=numerics [source-shifts]=source-shifts [capacity]=capacity)
    labs="{{labs}}"
    labs=${labs:-"clip-geometry toy-rare-samples tabular depth warmup source-shifts sgd numerics capacity"}
    saved=$(mktemp -d); moved=""
    for lab in $labs; do
      [ -n "${folder[$lab]:-}" ] || { echo "check-labs: no lab $lab (one of: ${!folder[*]})"; exit 2; }
      page=experiments/${folder[$lab]}/README.md
      cp "$page" "$saved/$lab.md"
      start=$SECONDS
      if {{just_executable()}} lab-$lab > "$saved/$lab.log" 2>&1; then
        echo "lab-$lab: $((SECONDS - start)) s"
        {{python}} -m minitrain.reports.pages --check "$saved/$lab.md" "$page" || moved="$moved $lab"
      else
        echo "lab-$lab failed (log: $saved/$lab.log)"; moved="$moved $lab"
      fi
      [ "${keep:-0}" = 1 ] || cp "$saved/$lab.md" "$page"
    done
    [ -z "$moved" ] || { echo "moved or failed:$moved"; exit 1; }

# the handout's own setup (random batches of 8) over 20 seeds, clip off and on; fills its page block
phase-19-handout-sweep *args:
    {{python}} -m minitrain sweep experiments/19-handout-sweep/sweep.yaml \
      --page experiments/19-break-no-clip/README.md {{args}}

# train one exercise of the break/fix catalogue (control, break, fix) and fill its page; all: every one
exercise name="all":
    {{python}} -m minitrain exercise run {{name}}

# a blind round of the course's three breaks, shuffled by a fresh seed, into OUT (experiments/break-it/README.md)
break-it out="break-it-round":
    {{python}} -m minitrain exercise blind --out {{out}} --seed $(date +%s)

# three blind rounds of all five breaks (seeds 0, 1, 2), named by diagnose: the catalogue page's table
break-it-rounds:
    #!/usr/bin/env bash
    set -euo pipefail
    for s in 0 1 2; do
      test -f out/rounds/seed-$s/SEALED || {{python}} -m minitrain exercise blind \
        --out out/rounds/seed-$s --seed $s --breaks all
    done
    {{python}} -m minitrain exercise rounds out/rounds/seed-0 out/rounds/seed-1 out/rounds/seed-2 \
      --page experiments/break-it/README.md
