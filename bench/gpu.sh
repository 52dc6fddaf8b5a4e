#!/usr/bin/env bash
# The checks that need a GPU, in one go. Parts (all by default, or name some):
#   tests   the CUDA tests (tests/test_cuda.py; AdamW against torch on CUDA)
#   bench   `just bench` on the GPU: the two benchmark models and the GPT-2-small-shaped config,
#           and GPT-2 small again at a batch that gives the GPU something to do
#   phase19 Run A and Run B on the GPU, Run B twice (does it repeat byte for byte?), compared
# Run from the repository root on a CUDA machine whose python3 has torch (no venv needed: src/
# goes on PYTHONPATH). Logs and results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/minitrain-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg

env_info() {
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  nproc
}

tests() {
  timeout 200 $PY -m pytest -o addopts= -q -rs -p no:cacheprovider tests/test_cuda.py \
    tests/test_optim.py tests/test_observe.py 2>&1 | tee "$OUT/cuda-tests.log"
}

bench() {
  local r=0
  timeout 240 $PY -m minitrain.tools.bench --device cuda --models phase-19,larger,gpt2-small \
    --out "$OUT" 2>&1 | tee "$OUT/bench.log" || r=1
  # our corpus gives rows of ~13 pieces, so batch 32 leaves an H100 idle; 512 rows show what
  # the same model does with more work per step
  timeout 120 $PY -m minitrain.tools.bench --device cuda --models gpt2-small --repeats 1 \
    --set data.batch_size=512 --out "$OUT/b512" 2>&1 | tee "$OUT/b512.log" || r=1
  return $r
}

phase19() {
  local runs=/tmp/minitrain-gpu-runs
  local gpu=(--set train.device=cuda --force --quiet)
  (
    set -e  # a failed run, or Run B not repeating byte for byte, fails the part
    $PY -m minitrain train experiments/19-control/config.yaml --out $runs/gpu-A "${gpu[@]}"
    for b in gpu-B gpu-B-again; do
      $PY -m minitrain train experiments/19-control/config.yaml --out $runs/$b "${gpu[@]}" \
        --set optimizer.grad_clip=null
    done
    for f in metrics.jsonl moments.jsonl token_losses.bin; do
      cmp $runs/gpu-B/$f $runs/gpu-B-again/$f
      echo "Run B on the GPU twice: $f identical"
    done
    $PY -m minitrain compare $runs/gpu-A $runs/gpu-B
    $PY -m minitrain diagnose $runs/gpu-B
  ) 2>&1 | tee "$OUT/phase19.log"
}

env_info 2>&1 | tee "$OUT/env.txt"
rc=0  # a part whose command failed fails the whole script (each pipes into tee)
for part in "${@:-tests bench phase19}"; do
  for p in $part; do "$p" || { echo "gpu.sh: part $p failed" >&2; rc=1; }; done
done
exit $rc
