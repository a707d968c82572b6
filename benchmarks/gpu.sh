#!/usr/bin/env bash
# GPU benchmarks in one go: training throughput and MFU of `original`, `sae128` and `liae256` (the
# largest model in configs/) at bfloat16 and float32 over batch 64-512, then conversion fps (decode
# and encode on the CPU, the model on the GPU), merged into OUTDIR/gpu.json and OUTDIR/gpu.md.
#
#   bash benchmarks/gpu.sh OUTDIR            (from the repository root; see benchmarks/README.md)
#
# Needs: python with jax[cuda], flax, optax, orbax-checkpoint and OpenCV; the other dependencies
# (benchmarks/gpu_requirements.txt) are installed from WHEELS (default ./wheels) into OUTDIR/site
# when missing.
# Settings (environment variables):
#   PEAK_BF16=989 PEAK_FP32=495   dense TFLOP/s of one GPU (H100/H200 SXM: bf16, TF32 - jax's
#                                 default float32 precision for convs and dots on GPUs)
#   CONFIGS="original sae128 liae256"  DTYPES="bfloat16 float32"  BATCHES="64 128 256 512"
#   BATCHES_FP32=$BATCHES         float32's batches (fewer to fit a short lease: compilation is
#                                 most of a cell's time)
#   STEPS=5 WARMUP=1              timed and untimed steps per cell (compilation excluded)
#   BUDGET_S=540                  wall-clock budget: every part runs under `timeout` with what is
#                                 left, parts past it are skipped and reported (a device lease of
#                                 10 minutes a command fits); order: bf16 cells, conversion, float32
#   VIDEO_A, VIDEO_B              videos for the conversion run (default: shared/data/videos/
#                                 obama.mp4 and man_glasses.mp4, here or in ../shared)
#   CONVERT_FRAMES=0:300 CONVERT_BATCH=64 SKIP_CONVERT=1
#   PROFILE=1                     also trace 3 steps of each bf16 cell and report the device
#                                 time per category (train_throughput.py --profile) in gpu.md
#   JAXSWAP_GPU_SMOKE=1           CPU smoke test of this script: tiny config, batch 2, 1 step,
#                                 no GPU required (checks the plumbing, not the figures)
set -euo pipefail

die() { echo "gpu.sh: error: $*" >&2; exit 2; }
note() { echo "gpu.sh: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: bash benchmarks/gpu.sh OUTDIR (run from the repository root)"
[[ -f jaxswap/train.py && -f benchmarks/train_throughput.py ]] \
  || die "run from the repository root (no jaxswap/train.py in $(pwd))"
ROOT=$(pwd)
mkdir -p "$1/logs" || die "cannot create $1"
OUT=$(cd "$1" && pwd)
PY=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # no pip install: keep the image's jax

SMOKE=${JAXSWAP_GPU_SMOKE:-0}
PEAK_BF16=${PEAK_BF16:-989}
PEAK_FP32=${PEAK_FP32:-495}
DTYPES=${DTYPES:-"bfloat16 float32"}
BUDGET_S=${BUDGET_S:-540}
REPORT_RESERVE_S=20  # kept for the report at the end
left() {  # seconds left for the parts (at least 1: `timeout` needs a positive limit)
  local l=$((BUDGET_S - REPORT_RESERVE_S - SECONDS))
  echo $((l < 1 ? 1 : l))
}
if [[ $SMOKE == 1 ]]; then
  CONFIGS=${CONFIGS:-tiny}; BATCHES=${BATCHES:-2}; STEPS=${STEPS:-1}; WARMUP=${WARMUP:-0}
  CONVERT_CONFIG=tiny; CONVERT_FRAMES=${CONVERT_FRAMES:-0:8}; CONVERT_BATCH=${CONVERT_BATCH:-4}
  EVERY_N=1
else
  CONFIGS=${CONFIGS:-"original sae128 liae256"}; BATCHES=${BATCHES:-"64 128 256 512"}
  STEPS=${STEPS:-5}; WARMUP=${WARMUP:-1}
  CONVERT_CONFIG=original; CONVERT_FRAMES=${CONVERT_FRAMES:-0:300}
  CONVERT_BATCH=${CONVERT_BATCH:-64}; EVERY_N=${EVERY_N:-5}
fi

# --- 1. Dependencies -------------------------------------------------------------------------
command -v "$PY" >/dev/null || die "no '$PY' on PATH (set PYTHON=...)"
"$PY" - <<'EOF' || die "the image must provide jax (with CUDA), flax, optax, orbax-checkpoint, OpenCV"
import jax, flax, optax, orbax.checkpoint, cv2  # noqa: F401
EOF
missing() {  # import names of jaxswap's other dependencies that do not import
  "$PY" - "$@" <<'EOF'
import importlib, sys
for name in sys.argv[1:]:
  try:
    importlib.import_module(name)
  except Exception:  # noqa: BLE001 - any failure means: install it
    print(name)
EOF
}
TRAIN_MODULES="ml_collections absl dm_pix tensorflow_datasets array_record etils tqdm tensorboardX importlib_resources"
CONVERT_MODULES="mediapipe imageio_ffmpeg"
need=$(missing $TRAIN_MODULES $CONVERT_MODULES)
if [[ -n $need ]]; then
  WHEELS=${WHEELS:-$ROOT/wheels}
  note "missing modules: $(echo $need); installing from $WHEELS"
  [[ -d $WHEELS ]] || die "no wheel folder $WHEELS for: $(echo $need) (see benchmarks/README.md, GPU)"
  # Into a folder of its own, without dependency resolution: the image's packages (its protobuf,
  # OpenCV, jax) stay installed and untouched, and mediapipe's pins on OpenCV/sounddevice (never
  # imported here) do not fail the install. The import check below says what is still missing.
  "$PY" -m pip install --no-index --no-deps --no-compile --find-links "$WHEELS" \
    --target "$OUT/site" -r "$ROOT/benchmarks/gpu_requirements.txt" \
    > "$OUT/logs/pip.log" 2>&1 || note "pip install failed, see $OUT/logs/pip.log"
  export PYTHONPATH="$PYTHONPATH:$OUT/site"
  still=$(missing $TRAIN_MODULES)
  [[ -z $still ]] || die "still missing after pip: $(echo $still) (see $OUT/logs/pip.log)"
fi

# --- 2. The device ---------------------------------------------------------------------------
if [[ $SMOKE == 1 ]]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  note "SMOKE mode: configs '$CONFIGS', batch $BATCHES, $STEPS step(s); figures are meaningless"
else
  command -v nvidia-smi >/dev/null && nvidia-smi -L | tee "$OUT/logs/nvidia-smi.txt" >&2 || true
  "$PY" -c "import jax; b = jax.default_backend(); assert b == 'gpu', b" 2>"$OUT/logs/backend.txt" \
    || die "jax does not see a GPU ($(tail -1 "$OUT/logs/backend.txt")); set JAXSWAP_GPU_SMOKE=1 for a CPU smoke test"
fi
"$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" \
  | tee "$OUT/logs/jax.txt" >&2

# --- 3. Training throughput (a function: bf16 cells run before conversion, float32 after) ----
BATCHES_FP32=${BATCHES_FP32:-$BATCHES}
failed=()
for cfg in $CONFIGS; do [[ -f configs/$cfg.py ]] || die "no configs/$cfg.py"; done
train_cells() {  # $1 = dtype
  local dtype=$1 peak cfg name rc b batches batch_args=()
  case $dtype in
    bfloat16) peak=$PEAK_BF16; batches=$BATCHES
              [[ ${PROFILE:-0} == 1 ]] && batch_args+=(--profile "$OUT/profile" --profile-steps 3) ;;
    float32) peak=$PEAK_FP32; batches=$BATCHES_FP32 ;;
    *) die "DTYPES: $dtype is not bfloat16 or float32" ;;
  esac
  for b in $batches; do batch_args+=(--batch "$b"); done
  for cfg in $CONFIGS; do
    name="train_${cfg}_${dtype}"
    if (( $(left) < 30 )); then
      note "SKIPPED (budget BUDGET_S=$BUDGET_S spent): $name"; failed+=("$name (budget)"); continue
    fi
    note "training step: $cfg $dtype batch $batches (peak $peak TFLOP/s, $(left) s left) -> $name.json"
    rc=0
    timeout --signal=INT --kill-after=10 "$(left)" "$PY" benchmarks/train_throughput.py \
      --config "configs/$cfg.py" --dtype "$dtype" "${batch_args[@]}" --peak-tflops "$peak" \
      --steps "$STEPS" --warmup "$WARMUP" --keep-going --json "$OUT/$name.json" \
      > "$OUT/logs/$name.log" 2>&1 || rc=$?
    if (( rc != 0 )); then
      note "FAILED (exit $rc; 124/130/137: stopped at the budget, rows measured so far kept): $name, see $OUT/logs/$name.log"
      failed+=("$name")
    fi
  done
}

# --- 4. Conversion ---------------------------------------------------------------------------
find_video() {  # first existing of shared/data/videos/$1 here or next to the checkout
  for d in "$ROOT/shared/data/videos" "$ROOT/../shared/data/videos"; do
    [[ -f $d/$1 ]] && { echo "$d/$1"; return; }
  done
  return 0
}
convert_part() {
  if [[ $SMOKE == 1 ]]; then
    VIDEO_A=${VIDEO_A:-$(find_video short_16frames.mp4)}
    VIDEO_B=${VIDEO_B:-$(dirname "${VIDEO_A:-.}")/../photos/id01}
  else
    VIDEO_A=${VIDEO_A:-$(find_video obama.mp4)}
    VIDEO_B=${VIDEO_B:-$(find_video man_glasses.mp4)}
  fi
  if [[ ${SKIP_CONVERT:-0} == 1 ]]; then
    note "conversion skipped (SKIP_CONVERT=1)"; return
  elif [[ -z ${VIDEO_A:-} || ! -e $VIDEO_A || -z ${VIDEO_B:-} || ! -e $VIDEO_B ]]; then
    note "conversion skipped: set VIDEO_A and VIDEO_B (no shared/data/videos found)"
    failed+=("convert (no videos)"); return
  elif [[ -n $(missing $CONVERT_MODULES) ]]; then
    note "conversion skipped: $(echo $(missing $CONVERT_MODULES)) not importable"
    failed+=("convert (mediapipe/imageio-ffmpeg missing)"); return
  elif (( $(left) < 60 )); then
    note "SKIPPED (budget BUDGET_S=$BUDGET_S spent): conversion"; failed+=("convert (budget)"); return
  fi
  # convert_fps reads the faces from the alignments prepare wrote for VIDEO_A (every EVERY_N-th
  # frame, the rest filled in along the track), as the CPU figures do: detecting on the fly
  # would time mediapipe on the host's CPU (26 ms a 720p frame on the H200's host, 4 Dec).
  note "conversion: dataset from $VIDEO_A + $VIDEO_B, a 2-step $CONVERT_CONFIG run, then convert_fps"
  local work="$OUT/convert_work" size
  size=$("$PY" -c "
import importlib.util as u; s = u.spec_from_file_location('c', 'configs/$CONVERT_CONFIG.py')
m = u.module_from_spec(s); s.loader.exec_module(m); print(m.get_config().image_size)")
  if timeout --kill-after=10 "$(left)" "$PY" -m jaxswap.prepare --a "$VIDEO_A" --b "$VIDEO_B" \
        --output "$work/data" --size "$size" --every-n "$EVERY_N" --quiet \
        > "$OUT/logs/convert_prepare.log" 2>&1 \
     && timeout --kill-after=10 "$(left)" "$PY" -m jaxswap.train \
        --config "configs/$CONVERT_CONFIG.py" --workdir "$work/run" \
        --config.data.dir="$work/data" --config.data.name=jaxswap_faces --config.steps=2 \
        --config.batch_size=8 --config.checkpoint_every=2 --config.preview_every=2 \
        --config.log_every=1 --config.preview_faces=2 > "$OUT/logs/convert_train.log" 2>&1 \
     && align=$(ls "$work"/data/extracted/a/*/alignments.json | head -1) \
     && timeout --kill-after=10 "$(left)" "$PY" benchmarks/convert_fps.py --input "$VIDEO_A" \
        --workdir "$work/run" --frames "$CONVERT_FRAMES" --batch "$CONVERT_BATCH" --repeat 1 \
        --alignments "$align" --json "$OUT/convert.json" > "$OUT/logs/convert_fps.log" 2>&1; then
    cat "$OUT/logs/convert_fps.log" >&2
  else
    note "FAILED: conversion (see $OUT/logs/convert_*.log); continuing"
    failed+=("convert")
  fi
}

for dtype in $DTYPES; do
  if [[ $dtype == bfloat16 ]]; then train_cells bfloat16; fi
done
convert_part
for dtype in $DTYPES; do
  if [[ $dtype != bfloat16 ]]; then train_cells "$dtype"; fi
done

# --- 5. One JSON and a table -----------------------------------------------------------------
"$PY" benchmarks/gpu_report.py "$OUT" --peak-bf16 "$PEAK_BF16" --peak-fp32 "$PEAK_FP32" \
  --smoke "$SMOKE" || die "gpu_report.py failed"
if [[ ${#failed[@]} -gt 0 ]]; then
  note "finished with failures: ${failed[*]}"
  exit 1
fi
note "done: $OUT/gpu.json, $OUT/gpu.md"
