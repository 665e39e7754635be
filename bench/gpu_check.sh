#!/usr/bin/env bash
# The GPU checks, in one pass, on a machine with one CUDA device:
#   0. bench/gpu_probe.py: attention kernels alone and in the compiled model, and a profile of one step
#   1. the real trainer on autoresearch-50m (bf16 autocast + torch.compile; ATTN sets train.attention, default auto),
#      then the doctor on that run; `traintorch`: the same run with train.kernels=torch (the plain ops for
#      QK-norm + RoPE instead of model/kernels.py's Triton kernels); `trainmaxat`: the same run with
#      train.compile_mode=max-autotune; `train124`: the trainer on gpt2-124m
#   2. a 4-run research campaign on `small` with --gpus 0: training and the lab's scoring in the
#      sandbox with the GPU passed through
#   3. bench/throughput.py on autoresearch-50m and gpt2-124m (MFU against the vendor peak)
#   4. train.parallel=fsdp on `small` under torchrun (bf16 mixed-precision policy, per-block compile, NCCL),
#      preempted with SIGTERM once it trains (it writes its sharded checkpoint), then resumed from it
# Needs the BPE corpora prepared under $PRETRAINLAB_HOME (default ./.gpuhome):
#   PRETRAINLAB_HOME=$PWD/.gpuhome pretrainlab data prepare --builtin --tokenizer bpe:8192   (and bpe:50257)
# STEPS picks a subset (default: probe train doctor campaign throughput fsdp); RECIPES and SECONDS_EACH set the
# throughput bench's recipes and timed seconds. Logs and results go to $OUT (default /tmp/gpu-check); a one-line-per-step summary prints last.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT/ws"
export PRETRAINLAB_HOME=${PRETRAINLAB_HOME:-$PWD/.gpuhome} PYTHONUNBUFFERED=1 PRETRAINLAB_WORKSPACE=$OUT/ws
export PYTHONPATH=$PWD/src${EXTRA_SITE:+:$EXTRA_SITE}
PY=${PY:-python3}
summary="$OUT/summary.txt"
: >"$summary"

step() {  # step NAME TIMEOUT_S CMD...
    local name=$1 limit=$2 t0 rc
    shift 2
    t0=$(date +%s)
    echo "== $name: $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - t0))s" | tee -a "$summary"
    tail -n 6 "$OUT/$name.log"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
    $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    command -v bwrap || echo "no bwrap"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

STEPS=${STEPS:-probe train doctor campaign throughput fsdp}
has() { [[ " $STEPS " == *" $1 "* ]]; }
ATTN=${ATTN:-auto}
# PROBE_ARGS: more for the probe, e.g. "--kernels cudnn --compile-mode max-autotune-no-cudagraphs"
has probe && step probe "${PROBE_LIMIT:-240}" $PY bench/gpu_probe.py --seconds "${PROBE_SECONDS:-6}" ${PROBE_ARGS:-}
cp bench/results/gpu-probe-*.json "$OUT/" 2>/dev/null
has train && step train-ar50m 150 $PY -m pretrainlab train --recipe autoresearch-50m --set budget.seconds="${TRAIN_SECONDS:-30}" \
    --set train.attention="$ATTN" --out "$OUT/ws/runs/ar50m" --json
has traintorch && step train-ar50m-torch 150 $PY -m pretrainlab train --recipe autoresearch-50m --set budget.seconds="${TRAIN_SECONDS:-30}" \
    --set train.attention="$ATTN" --set train.kernels=torch --out "$OUT/ws/runs/ar50m-torch" --json
has trainmaxat && step train-ar50m-maxat "${MAXAT_LIMIT:-200}" $PY -m pretrainlab train --recipe autoresearch-50m \
    --set budget.seconds="${TRAIN_SECONDS:-30}" --set train.attention="$ATTN" --set train.compile_mode=max-autotune \
    --out "$OUT/ws/runs/ar50m-maxat" --json
has doctor && step doctor-ar50m 40 $PY -m pretrainlab doctor "$OUT/ws/runs/ar50m" --json
has campaign && step campaign-small "${CAMPAIGN_LIMIT:-170}" $PY -m pretrainlab research start --recipe small --gpus 0 \
    --parallel 1 --budget-runs 4 --seeds 2 --run-budget 10s --strategy random --name gpu-smoke --json
has throughput && step throughput "${THROUGHPUT_LIMIT:-200}" $PY bench/throughput.py --recipes ${RECIPES:-autoresearch-50m gpt2-124m} \
    --seconds "${SECONDS_EACH:-10}"
if has fsdp; then  # FSDP2 on NCCL: preempted (SIGTERM to the torchrun group) once training runs, then resumed from its shards
    run="$OUT/ws/runs/fsdp-small"
    t0=$(date +%s)
    setsid $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m pretrainlab train --recipe small \
        --set train.parallel=fsdp --set train.compile=true --set budget.seconds=40 --out "$run" --json >"$OUT/fsdp-small.log" 2>&1 &
    pid=$!
    rows() { cat "$run/metrics.jsonl" 2>/dev/null | grep -c '"step"'; }
    until [ "$(rows)" -ge 30 ] || [ $(($(date +%s) - t0)) -gt 150 ]; do sleep 1; done
    kill -TERM -- -"$pid"
    wait "$pid"
    echo "fsdp-small rc=$? $(($(date +%s) - t0))s (SIGTERM after $(rows) rows)" | tee -a "$summary"
    tail -n 4 "$OUT/fsdp-small.log"
    step fsdp-resume 200 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m pretrainlab train --resume "$run" --json
fi
has train124 && step train-124m 200 $PY -m pretrainlab train --recipe gpt2-124m --set budget.seconds="${TRAIN_SECONDS:-30}" \
    --set train.attention="$ATTN" --set eval.tokens_per_domain=65536 --out "$OUT/ws/runs/124m" --json
cp bench/results/throughput-*cuda*.json "$OUT/" 2>/dev/null
for r in "$OUT"/ws/runs/*/; do [ -f "$r/summary.json" ] && cp "$r/summary.json" "$OUT/summary-$(basename "$r").json"; done
tar czf "$OUT/logs.tar.gz" -C "$OUT" --exclude logs.tar.gz --exclude ckpt --exclude '*.pt' --exclude '*.bin' . 2>/dev/null
echo "== summary"
cat "$summary"
grep -h '^|' "$OUT/throughput.log" 2>/dev/null
