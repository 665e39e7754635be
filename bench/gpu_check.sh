#!/usr/bin/env bash
# The GPU checks, in one pass, on a machine with one CUDA device:
#   0. bench/gpu_probe.py: attention kernels alone, the compiled model per attention kernel and QKV layout, a profile
#   1. the real trainer on autoresearch-50m (bf16 autocast + torch.compile, the probe's fastest attention kernel), then the doctor on that run
#   2. a 4-run research campaign on `small` with --gpus 0: training and the lab's scoring in the
#      sandbox with the GPU passed through
#   3. bench/throughput.py on autoresearch-50m and gpt2-124m (MFU against the vendor peak)
#   4. train.parallel=fsdp on `small` under torchrun (bf16 mixed-precision policy, per-block compile,
#      sharded checkpoints), then a resume of it from its next-to-last checkpoint
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
if has probe; then
    step probe "${PROBE_LIMIT:-330}" $PY bench/gpu_probe.py --seconds "${PROBE_SECONDS:-6}"
    cp bench/results/gpu-probe-*.json "$OUT/" 2>/dev/null
    # the trainer below runs with the attention kernel of the probe's fastest variant
    ATTN=$($PY -c "import json,glob; r=json.load(open(sorted(glob.glob('bench/results/gpu-probe-*.json'))[-1]))['variants']; print(max(r, key=lambda v: v['tokens_per_s'])['variant'].split('+')[0])" 2>/dev/null || echo auto)
    echo "train.attention=$ATTN" | tee -a "$summary"
fi
has train && step train-ar50m 150 $PY -m pretrainlab train --recipe autoresearch-50m --set budget.seconds="${TRAIN_SECONDS:-30}" \
    --set train.attention="$ATTN" --out "$OUT/ws/runs/ar50m" --json
has doctor && step doctor-ar50m 40 $PY -m pretrainlab doctor "$OUT/ws/runs/ar50m" --json
has campaign && step campaign-small "${CAMPAIGN_LIMIT:-170}" $PY -m pretrainlab research start --recipe small --gpus 0 \
    --parallel 1 --budget-runs 4 --seeds 2 --run-budget 10s --strategy random --name gpu-smoke --json
has throughput && step throughput "${THROUGHPUT_LIMIT:-200}" $PY bench/throughput.py --recipes ${RECIPES:-autoresearch-50m gpt2-124m} \
    --seconds "${SECONDS_EACH:-10}"
if has fsdp; then
    step fsdp-small 240 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m pretrainlab train --recipe small \
        --set train.parallel=fsdp --set train.compile=true --set budget.seconds="${FSDP_SECONDS:-20}" --set train.ckpt_every=50 \
        --out "$OUT/ws/runs/fsdp-small" --json
    rm -rf "$(ls -d "$OUT"/ws/runs/fsdp-small/ckpt/step_* | tail -n 1)"  # resume from the checkpoint before the last
    step fsdp-resume 240 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m pretrainlab train \
        --resume "$OUT/ws/runs/fsdp-small" --json
fi
cp bench/results/throughput-*cuda*.json "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tar.gz" -C "$OUT" --exclude logs.tar.gz --exclude ckpt --exclude '*.pt' --exclude '*.bin' . 2>/dev/null
echo "== summary"
cat "$summary"
grep -h '^|' "$OUT/throughput.log" 2>/dev/null
