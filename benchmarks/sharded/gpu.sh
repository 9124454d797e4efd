#!/usr/bin/env bash
# Sharded (train.sharding=fsdp) against replicated training on one machine with several GPUs:
# step time and peak memory per process, a teacher 4-8x the student's size.
#   benchmarks/sharded/gpu.sh [OUT_DIR] [extra options of sharded.py, e.g. --teacher-layers 24]
# NPROC (default: every GPU nvidia-smi lists) sets the number of processes.
set -euo pipefail
out="${1:-benchmarks/results/sharded}"
shift || true
nproc="${NPROC:-$(nvidia-smi -L | wc -l)}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
for mode in none fsdp; do
  torchrun --nproc_per_node "$nproc" "$here/sharded.py" --sharding "$mode" --out "$out/$mode.json" "$@"
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for mode in ("none", "fsdp"):
    r = json.loads((out / f"{mode}.json").read_text())
    p = r["processes"]
    print(f"{mode:5s} {r['world_size']} x {r['device']}: median step {r['median_step_s']:.3f} s, "
          f"peak memory {max(x['peak_memory_bytes'] for x in p) / 2**30:.2f} GiB, "
          f"teacher held {max(x['teacher_bytes_held'] for x in p) / 2**30:.2f} GiB per process "
          f"(teacher {r['teacher_parameters'] / 1e6:.0f} M, student {r['student_parameters'] / 1e6:.0f} M parameters)")
PY
