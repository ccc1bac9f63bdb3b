#!/usr/bin/env bash
# The GPU paths in one call (under 8 minutes on one GPU): tests/test_cuda.py, the embedding bench on the
# device (plain sentence-transformers vs dgamix fp32 / fp16, same texts) and the cluster bench's torch tree
# descent (what `dgamix cluster --device` runs) on 1M vectors against the numpy descent. Figures go to
# $OUT (default bench/micro/results/gpu/) as JSON, and are printed.
#
#   bash bench/gpu_smoke.sh                      # on a machine with a CUDA GPU
#   DEVICE=cpu SCALE=tiny bash bench/gpu_smoke.sh  # dry run on the CPU (the test suite runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-full}
OUT=${OUT:-bench/micro/results/gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$SCALE" = tiny ]; then
  EMBED=(--docs 12 --repeat 1 --bf16-docs 12 --precisions fp32)
  CLUSTER=(--n 20000 --levels 8,8 --components 50 --shard-size 10000 --flat-queries 200 --assign-n 5000 --niter 5)
  TESTS=(-m "not slow")
else
  EMBED=(--docs 1536 --repeat 3)
  CLUSTER=(--n 1000000 --levels 64,64,64 --assign-n 1000000 --niter 10)
  TESTS=()
fi
"$PY" -c "import torch, sys; ok = '$DEVICE' == 'cpu' or torch.cuda.is_available(); \
print('device:', '$DEVICE', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'); sys.exit(0 if ok else 3)" \
  || { echo "error: DEVICE=$DEVICE but torch sees no CUDA device" >&2; exit 2; }
t0=$(date +%s)
if [ -z "${SKIP_TESTS:-}" ]; then  # the suite's own dry run sets it: test_cuda.py runs in the suite anyway
  echo "== tests/test_cuda.py"
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py "${TESTS[@]}" 2>&1 | tail -n 3
fi
echo "== embedding on $DEVICE: plain vs dgamix, max_seq_length 128"
"$PY" -m bench.micro.embed --part kernel --device "$DEVICE" "${EMBED[@]}" --out "$OUT/embed.json"
echo "== tree descent on $DEVICE"
"$PY" -m bench.micro.cluster --device "$DEVICE" "${CLUSTER[@]}" --out "$OUT/cluster.json" | grep -E "^(fit|assign)"
echo "gpu smoke finished in $(( $(date +%s) - t0 )) s; figures in $OUT/"
