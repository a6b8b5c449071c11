#!/usr/bin/env bash
# 2 workers on 127.0.0.1 versus one process, tiny GAN and tiny U-Net, same global batch.
# Prints images/s from each run's metrics.json. Usage: bash experiments/bench_workers.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-$(mktemp -d)}
GAN="--preset tiny --steps 8 --set model.size=64 --set model.ngf=8 --set model.ndf=8 --set model.num_D=1
     --set train.batch_size=4 --set data.n_phantom=6 --set train.verbose=0 --set train.n_samples=2
     --set train.checkpoint_every=100 --set train.sample_every=100"
SEG="--preset tiny --epochs 1 --set model.base_filters=4 --set model.max_filters=16 --set data.n_phantom=8
     --set train.batch_size=4 --set train.steps_per_epoch=8 --set train.n_overlays=1"
lscpu | grep 'Model name' || true
/usr/bin/time -f "gan 2 workers: %e s wall" python experiments/launch_workers.py --workers 2 --log-dir "$OUT/logs-gan" -- gan $GAN --strategy multiworker --run-dir "$OUT/gan-2w"
/usr/bin/time -f "gan 1 process: %e s wall" python -m cardigan_tf.train gan $GAN --run-dir "$OUT/gan-1p" > "$OUT/gan-1p.log" 2>&1
/usr/bin/time -f "seg 2 workers: %e s wall" python experiments/launch_workers.py --workers 2 --log-dir "$OUT/logs-seg" -- seg $SEG --strategy multiworker --run-dir "$OUT/seg-2w"
/usr/bin/time -f "seg 1 process: %e s wall" python -m cardigan_tf.train seg $SEG --run-dir "$OUT/seg-1p" > "$OUT/seg-1p.log" 2>&1
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for run in ("gan-2w", "gan-1p"):
    m = json.load(open(f"{out}/{run}/metrics.json"))
    print(f"{run}: {m['images_per_s']:.2f} images/s (after the first, traced step), wall {m['wall_s']:.1f} s in fit")
for run in ("seg-2w", "seg-1p"):
    m = json.load(open(f"{out}/{run}/metrics.json"))
    print(f"{run}: {m['train_images_per_second']} images/s (whole fit incl. tracing and validation), "
          f"{m['train_seconds_this_session']} s in fit")
PY
