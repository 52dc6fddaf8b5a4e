# minitrain tasks. `just --list` shows them.
python := env("PYTHON", ".venv/bin/python")
seed := env("seed", "42")
grad_clip := env("grad_clip", "1.0")

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
      --set seed={{seed}} --set optimizer.grad_clip="$clip"

# compare two run directories: terminal summary and a PNG of panels
phase-19-compare a="experiments/19-control" b="experiments/19-break-no-clip":
    {{python}} -m minitrain compare {{a}} {{b}}

# the whole exercise: control, break, compare
phase-19:
    seed={{seed}} grad_clip=1.0 {{just_executable()}} phase-19-train
    seed={{seed}} grad_clip=inf {{just_executable()}} phase-19-train
    {{just_executable()}} phase-19-compare

# the test suite (CPU, a few minutes at most)
test *args:
    {{python}} -m pytest {{args}}

lint:
    {{python}} -m ruff check src tests
