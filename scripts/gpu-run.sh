#!/usr/bin/env bash
# One prepared run for a lent GPU machine (PyTorch and JAX with CUDA, no TensorFlow, no internet):
#   1. the engine matrix: --devices cpu,gpu, every installed backend, --engine keras,native,
#      batch 128 and 512, fp32 and bf16;
#   2. PyTorch's native step through torch.compile(mode="reduce-overhead") on the GPU, beside
#      step 1's explicit CUDA graph of the eager step (which of the two is faster);
#   3. the notebook's 26-epoch run (--profile seed) on the GPU with the engine fastest in step 1
#      at the notebook's batch 128, fp32;
#   4. with CIFAR-10 only (a target needs real accuracy): time to accuracy, --profile seed-tta in
#      bf16 with 5 seeds, for JAX (Keras and native) and PyTorch's native engine (Keras on
#      PyTorch is left out for time: about 2 minutes a seed on an H100).
# All land in one directory (one bench run directory each) to commit under results/published/.
# Sized for about 10 minutes of GPU time; nothing here needs the machine to be quiet.
#
# Usage: scripts/gpu-run.sh [OUT_DIR]      (default results/published/<date>-engines-gpu)
#   GPU_RUN_DRY=1   dry run on this machine's CPU: --devices cpu, batch 128 only, a few steps, a
#                   seed run of a few steps; no torch.compile run (it compiles for minutes on a CPU)
#   CIFAR10_DIR     CIFAR-10 (python layout); absent, every cell trains on synthetic data
#                   (timings hold, accuracy is not measured: CIFAR-10 is 163 MB and a lent
#                   machine receives at most 64 MiB)
#   PYTHON          the interpreter (default python3)
# Keras is not on the GPU image: carry it as wheels in .whl/ (see docs/method.md, "Engines");
# this script installs whatever .whl/ holds into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=${GPU_RUN_DRY:-0}
OUT=${1:-results/published/$(date -u +%F)-engines-gpu}

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

if [ "$DRY" = 1 ]; then
    devices=cpu; gpu=cpu; batches=128; steps=4; warmup=1; seed_epochs=(--epochs 1 --steps 4 --warmup 1 --eval-images 256)
    tta=(--epochs 1 --steps 4 --warmup 1 --eval-every 0.5 --target-accuracy 0.11 --eval-images 256 --repeats 2)
else
    devices=cpu,gpu; gpu=gpu; batches=128,512; steps=40; warmup=10; seed_epochs=()
    tta=(--repeats 5)
fi
backends=$("$PY" -c "import importlib.util as u; print(','.join(b for b in ('tensorflow', 'jax', 'torch') if u.find_spec(b)))" \
           2>/dev/null || true)
if [ -z "$backends" ] || ! "$PY" -c "import bench.session" 2>/dev/null; then
    echo "gpu-run: $PY cannot import the harness with a backend (tensorflow, jax or torch); install it" \
         "(pip install '.[jax,torch]') or set PYTHON to the interpreter that has them" >&2
    exit 2
fi
if [ -n "${CIFAR10_DIR:-}" ] && [ -d "$CIFAR10_DIR" ]; then
    data=(--data cifar10 --data-dir "$CIFAR10_DIR" --no-download)
else
    data=(--data synthetic)
fi
[ -e "$OUT" ] && { echo "gpu-run: $OUT exists; give another OUT_DIR" >&2; exit 2; }
mkdir -p "$OUT"
echo "gpu-run: backends $backends, devices $devices, ${data[*]}, into $OUT"
bench() { "$PY" -m bench run --no-peak "$@"; }

bench --devices "$devices" --backend "$backends" --engine keras,native --precision fp32,mixed_bfloat16 \
      --batch-sizes "$batches" --steps "$steps" --warmup "$warmup" "${data[@]}" --out "$OUT/matrix" || true

if [[ ,$backends, == *,torch,* ]] && [ "$DRY" != 1 ]; then
    bench --devices "$gpu" --backend torch --engine native --jit-compile on --precision fp32,mixed_bfloat16 \
          --batch-sizes 128,512 --steps "$steps" --warmup "$warmup" "${data[@]}" --out "$OUT/torch-compile" || true
fi

# the fastest backend and engine on the GPU at batch 128, fp32 (the notebook's settings)
read -r backend engine < <("$PY" - "$OUT/matrix/runs.csv" "$gpu" <<'PYEOF'
import sys
import pandas as pd
runs = pd.read_csv(sys.argv[1])
device_type = "GPU" if sys.argv[2] == "gpu" else "CPU"
ok = runs[(runs.status == "ok") & (runs.device_type == device_type) & (runs.batch_size == 128)
          & (runs.precision == "fp32")]
if ok.empty:
    sys.exit("gpu-run: no fp32 batch-128 cell finished on the device; no seed run")
best = ok.loc[ok.images_per_s.idxmax()]
print(best.backend, best.engine)
PYEOF
)
echo "gpu-run: the seed run trains with $backend, engine $engine"
bench --profile seed --devices "$gpu" --backend "$backend" --engine "$engine" "${seed_epochs[@]}" \
      "${data[@]}" --split seed --out "$OUT/seed" || true

if [ "${data[1]}" = cifar10 ]; then
    if [[ ,$backends, == *,jax,* ]]; then
        bench --profile seed-tta --devices "$gpu" --backend jax --engine keras,native --precision mixed_bfloat16 \
              "${tta[@]}" "${data[@]}" --out "$OUT/tta-jax" || true
    fi
    if [[ ,$backends, == *,torch,* ]]; then
        bench --profile seed-tta --devices "$gpu" --backend torch --engine native --precision mixed_bfloat16 \
              "${tta[@]}" "${data[@]}" --out "$OUT/tta-torch" || true
    fi
else
    echo "gpu-run: no CIFAR-10 (CIFAR10_DIR): no time-to-accuracy run (a target needs real accuracy)"
fi
echo "gpu-run: done; commit $OUT"
