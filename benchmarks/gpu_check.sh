#!/usr/bin/env bash
# The GPU measurements of the throughput work, as one script for one short run on a GPU machine
# (eroseg, snakemake and segmentation-models-pytorch installed, repository root as working dir):
#   1. the embedded default through `snakemake --profile workflow/profiles/gpu` (one GPU, the
#      profile's 4 job slots): wall time, GPU busy share sampled by nvidia-smi every 0.5 s, tables
#      (results/synthetic/tables) packed into $OUT/tables.tgz to compare with a CPU run;
#   2. batched whole-image evaluation at VOC sizes (benchmarks/bench_eval_batching.py) on CUDA;
#   3. fixed start-up cost of an eroseg process (benchmarks/bench_startup.py);
#   4. the GPU tests (pytest -m gpu).
# Each step has its own time limit so that one slow step does not hide the others.
# Usage: OUT=some/folder bash benchmarks/gpu_check.sh
# Knobs (environment): PIPELINE_LIMIT, BATCH_LIMIT, STARTUP_LIMIT, TEST_LIMIT (seconds per step), SKIP
# (steps to leave out, e.g. SKIP="2 4"), SNAKEMAKE_ARGS (extra snakemake
# arguments), BATCH_IMAGES, BATCH_ARGS (default --amp; "--threads 16" for fp32).
set -u
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
want() { [[ " ${SKIP:-} " != *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if want 1; then
echo "== 1. embedded default through the gpu profile"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/smi.csv" &
smi=$!
t0=$(date +%s.%N)
timeout "${PIPELINE_LIMIT:-300}" snakemake --profile workflow/profiles/gpu ${SNAKEMAKE_ARGS:-} > "$OUT/snakemake.log" 2>&1
rc=$?
t1=$(date +%s.%N)
kill "$smi" 2>/dev/null
$PY - "$OUT/smi.csv" "$t0" "$t1" "$rc" <<'PYEOF'
import sys
rows = [l.split(",") for l in open(sys.argv[1]) if l.strip() and "," in l]
util = [float(r[0]) for r in rows if r[0].strip().replace(".", "").isdigit()]
mem = [float(r[1]) for r in rows if r[1].strip().replace(".", "").isdigit()]
wall = float(sys.argv[3]) - float(sys.argv[2])
print(f"pipeline rc={sys.argv[4]} wall={wall:.1f} s")
if util:
    busy = sum(u > 0 for u in util) / len(util)
    print(f"GPU utilization over {len(util)} samples: mean {sum(util)/len(util):.1f} %, "
          f"samples with any kernel running {100*busy:.0f} %, peak memory {max(mem):.0f} MiB")
PYEOF
grep -c "^localrule\|^rule " "$OUT/snakemake.log" | sed 's/^/jobs started: /'
tail -3 "$OUT/snakemake.log"
tar czf "$OUT/tables.tgz" results/synthetic/tables results/synthetic/benchmarks results/synthetic/logs 2>/dev/null

fi
if want 2; then
echo "== 2. batched whole-image evaluation at VOC sizes"
timeout "${BATCH_LIMIT:-150}" $PY benchmarks/bench_eval_batching.py --device cuda --scale 1 \
    --images "${BATCH_IMAGES:-96}" --batch 16 --arch DeepLabV3 --encoder resnet50 --classes 21 ${BATCH_ARGS:---amp}

fi
if want 3; then
echo "== 3. start-up cost"
timeout "${STARTUP_LIMIT:-45}" $PY benchmarks/bench_startup.py --repeat 3

fi
if want 4; then
echo "== 4. GPU tests"
timeout "${TEST_LIMIT:-90}" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_attacks_gpu.py 2>&1 | tail -15
fi
